"""``wide_resnet``: WRN-depth-width as used by TRADES (and MART, AWP, ...).

References: S. Zagoruyko, N. Komodakis, "Wide Residual Networks", BMVC 2016;
the CIFAR adversarial-training variant of github.com/yaodongyu/TRADES,
``models/wideresnet.py`` (dropout 0; channels 16, 16k, 32k, 64k; three stages of
(depth - 4) / 6 pre-activation blocks with strides 1, 2, 2; final BN-ReLU,
average pooling, linear).

The reference also constructs an unused ``sub_block1`` that never runs in
``forward``; it is omitted here, so parameter counts match the usual
"WRN-34-10 = 46.16M" figure (46,160,474 trainable for 10 classes).

Initialization follows the reference: conv weights N(0, 2 / (k*k*out_channels))
(untruncated He-normal, fan-out), batch norm weight 1 and bias 0, linear bias
zero; the linear weight is not re-initialized there, so it keeps PyTorch's
``nn.Linear`` default U(+-1/sqrt(fan_in)).
Layer names follow the PyTorch modules (``block2_0_conv1`` is
``block2.layer[0].conv1``; the final BN is ``bn1`` and the linear ``fc``).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from ._common import (
    ModelError,
    batch_norm,
    check_min_size,
    check_num_classes,
    functional_model,
    input_stem,
    kaiming_normal,
    logits_layer,
    torch_default_kernel,
)

# Two stride-2 stages must each halve a dimension of at least 2 (4 -> 2 -> 1).
MIN_INPUT_SIZE: int = 4


def _conv(
    x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str
) -> keras.KerasTensor:
    """Bias-free conv with PyTorch padding (kernel // 2 on every side)."""
    if kernel == 3 and stride != 1:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same" if kernel == 3 else "valid"
    return keras.layers.Conv2D(
        filters, kernel, strides=stride, padding=padding, use_bias=False,
        kernel_initializer=kaiming_normal("fan_out"), name=name,  # the reference's normal_(0, sqrt(2 / n))
    )(x)


def _block(
    x: keras.KerasTensor, in_planes: int, out_planes: int, stride: int, name: str
) -> keras.KerasTensor:
    """TRADES ``BasicBlock`` (pre-activation, dropout 0).

    Equal in/out channels: ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``.
    Otherwise both branches start from ``relu(bn1(x))`` and the shortcut is a
    1x1 (strided) conv.
    """
    pre = batch_norm(f"{name}_bn1")(x)
    pre = keras.layers.ReLU(name=f"{name}_relu1")(pre)
    if in_planes == out_planes:
        shortcut = x
    else:
        shortcut = _conv(pre, out_planes, 1, stride, f"{name}_shortcut_conv")
    out = _conv(pre, out_planes, 3, stride, f"{name}_conv1")
    out = batch_norm(f"{name}_bn2")(out)
    out = keras.layers.ReLU(name=f"{name}_relu2")(out)
    out = _conv(out, out_planes, 3, 1, f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([shortcut, out])


def check_depth_width(depth: int, width: int) -> None:
    """Raise :class:`ModelError` unless depth = 6n + 4 (n >= 1) and width >= 1."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ModelError(
            f"wide_resnet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth!r}"
        )
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ModelError(f"wide_resnet width must be an integer >= 1, got {width!r}")


def build_wide_resnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    depth: int = 34,
    width: int = 10,
) -> keras.Model:
    """Build WRN-``depth``-``width`` (TRADES ``WideResNet``, dropRate 0).

    conv1 3x3/16 -> block1 (16k, stride 1) -> block2 (32k, stride 2) ->
    block3 (64k, stride 2) -> bn1 -> ReLU -> global average pooling (the
    reference's ``avg_pool2d(out, 8)`` on a 32x32 input) -> fc.
    """
    check_num_classes(num_classes)
    check_depth_width(depth, width)
    check_min_size("wide_resnet", input_shape, MIN_INPUT_SIZE)
    inputs, x = input_stem(input_shape, mean, std)
    n = (depth - 4) // 6
    channels = (16, 16 * width, 32 * width, 64 * width)
    x = _conv(x, channels[0], 3, 1, "conv1")
    in_planes = channels[0]
    for i, (planes, stride) in enumerate(zip(channels[1:], (1, 2, 2)), start=1):
        for j in range(n):
            x = _block(x, in_planes, planes, stride if j == 0 else 1, f"block{i}_{j}")
            in_planes = planes
    x = batch_norm("bn1")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = logits_layer(num_classes, name="fc", kernel_initializer=torch_default_kernel(),
                          bias_initializer="zeros")(x)
    return functional_model(inputs, logits, name=f"wrn_{depth}_{width}")
