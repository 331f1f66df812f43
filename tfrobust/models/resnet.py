"""CIFAR-style ResNet-18 and pre-activation ResNet-18.

References:

* K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
  Recognition", CVPR 2016 (BasicBlock ResNet).
* K. He, X. Zhang, S. Ren, J. Sun, "Identity Mappings in Deep Residual
  Networks", ECCV 2016 (pre-activation ResNet).
* CIFAR variants as in Kuang Liu's github.com/kuangliu/pytorch-cifar
  (``models/resnet.py``, ``models/preact_resnet.py``): 3x3 stride-1 stem conv
  with 64 channels and no max-pool, stages of [2, 2, 2, 2] blocks with 64/128/
  256/512 channels and strides 1/2/2/2, average pooling, one linear layer.
* The pre-activation net adds the final BN-ReLU before pooling that He et al.
  (2016) prescribe and that the adversarial-training PreActResNet-18 of
  E. Wong, L. Rice, J. Z. Kolter, "Fast is better than free", ICLR 2020, and
  L. Rice, E. Wong, J. Z. Kolter, "Overfitting in adversarially robust deep
  learning", ICML 2020 use; Kuang Liu's file omits it.

Layer names follow the PyTorch module names (``layer2_0_conv1`` is
``layer2[0].conv1``) so weights can be ported. Stride-2 3x3 convs use an
explicit 1-pixel ``ZeroPadding2D`` + ``valid`` padding, exactly PyTorch's
``padding=1``; Keras' ``same`` would pad only bottom/right and sample a grid
shifted by one pixel relative to the 1x1 shortcut. The references set no
initializer, so every layer gets PyTorch's defaults: conv and linear weights
U(+-1/sqrt(fan_in)) (``kaiming_uniform_(a=sqrt(5))``), the linear bias
U(+-1/sqrt(fan_in)), batch norm weight 1 and bias 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from ._common import (
    batch_norm,
    check_min_size,
    check_num_classes,
    functional_model,
    input_stem,
    logits_layer,
    torch_default_bias,
    torch_default_kernel,
)

# Three stride-2 stages must each halve a dimension of at least 2 (8 -> 4 -> 2 -> 1).
MIN_INPUT_SIZE: int = 8

# (stage name, planes, first stride), two blocks per stage for ResNet-18.
_STAGES: tuple[tuple[str, int, int], ...] = (
    ("layer1", 64, 1),
    ("layer2", 128, 2),
    ("layer3", 256, 2),
    ("layer4", 512, 2),
)
_BLOCKS_PER_STAGE: int = 2


def conv3x3(x: keras.KerasTensor, filters: int, stride: int, name: str) -> keras.KerasTensor:
    """3x3 conv without bias, PyTorch ``padding=1`` semantics for any stride."""
    if stride == 1:
        return keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                   kernel_initializer=torch_default_kernel(), name=name)(x)
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(
        filters, 3, strides=stride, padding="valid", use_bias=False,
        kernel_initializer=torch_default_kernel(), name=name,
    )(x)


def conv1x1(x: keras.KerasTensor, filters: int, stride: int, name: str) -> keras.KerasTensor:
    """1x1 projection conv without bias (PyTorch ``padding=0``)."""
    return keras.layers.Conv2D(
        filters, 1, strides=stride, padding="valid", use_bias=False,
        kernel_initializer=torch_default_kernel(), name=name,
    )(x)


def _linear(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    """The final ``nn.Linear`` with PyTorch's default weight and bias."""
    return logits_layer(num_classes, name="linear", kernel_initializer=torch_default_kernel(),
                        bias_initializer=torch_default_bias(x.shape[-1]))(x)


def _basic_block(
    x: keras.KerasTensor, in_planes: int, planes: int, stride: int, name: str
) -> keras.KerasTensor:
    """Post-activation BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
    out = conv3x3(x, planes, stride, f"{name}_conv1")
    out = batch_norm(f"{name}_bn1")(out)
    out = keras.layers.ReLU(name=f"{name}_relu1")(out)
    out = conv3x3(out, planes, 1, f"{name}_conv2")
    out = batch_norm(f"{name}_bn2")(out)
    if stride != 1 or in_planes != planes:
        shortcut = conv1x1(x, planes, stride, f"{name}_shortcut_conv")
        shortcut = batch_norm(f"{name}_shortcut_bn")(shortcut)
    else:
        shortcut = x
    out = keras.layers.Add(name=f"{name}_add")([out, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu2")(out)


def _preact_block(
    x: keras.KerasTensor, in_planes: int, planes: int, stride: int, name: str
) -> keras.KerasTensor:
    """PreActBlock: conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut.

    The projection shortcut (1x1 conv, no BN) takes the pre-activated input;
    the identity shortcut takes the raw input, as in the reference.
    """
    pre = batch_norm(f"{name}_bn1")(x)
    pre = keras.layers.ReLU(name=f"{name}_relu1")(pre)
    if stride != 1 or in_planes != planes:
        shortcut = conv1x1(pre, planes, stride, f"{name}_shortcut_conv")
    else:
        shortcut = x
    out = conv3x3(pre, planes, stride, f"{name}_conv1")
    out = batch_norm(f"{name}_bn2")(out)
    out = keras.layers.ReLU(name=f"{name}_relu2")(out)
    out = conv3x3(out, planes, 1, f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


def _stages(x: keras.KerasTensor, block, in_planes: int) -> keras.KerasTensor:
    for stage, planes, first_stride in _STAGES:
        for j in range(_BLOCKS_PER_STAGE):
            x = block(x, in_planes, planes, first_stride if j == 0 else 1, f"{stage}_{j}")
            in_planes = planes
    return x


def build_resnet18(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> keras.Model:
    """Build the CIFAR ResNet-18 of kuangliu/pytorch-cifar (BasicBlocks [2, 2, 2, 2]).

    conv1 3x3/64 -> bn1 -> ReLU -> 4 stages -> global average pooling (the
    reference's ``avg_pool2d(out, 4)`` on a 32x32 input) -> linear. For 32x32x3
    and 10 classes: 11,173,962 trainable parameters (+9,600 BN moving stats).
    """
    check_num_classes(num_classes)
    check_min_size("resnet18", input_shape, MIN_INPUT_SIZE)
    inputs, x = input_stem(input_shape, mean, std)
    x = conv3x3(x, 64, 1, "conv1")
    x = batch_norm("bn1")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = _stages(x, _basic_block, 64)
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = _linear(x, num_classes)
    return functional_model(inputs, logits, name="resnet18")


def build_preact_resnet18(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> keras.Model:
    """Build the CIFAR pre-activation ResNet-18 (PreActBlocks [2, 2, 2, 2]).

    conv1 3x3/64 (no BN) -> 4 stages -> bn -> ReLU -> global average pooling ->
    linear. For 32x32x3 and 10 classes: 11,172,170 trainable parameters
    (+7,808 BN moving stats); without the final BN (Kuang Liu's file) it would
    be 11,171,146.
    """
    check_num_classes(num_classes)
    check_min_size("preact_resnet18", input_shape, MIN_INPUT_SIZE)
    inputs, x = input_stem(input_shape, mean, std)
    x = conv3x3(x, 64, 1, "conv1")
    x = _stages(x, _preact_block, 64)
    x = batch_norm("bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = _linear(x, num_classes)
    return functional_model(inputs, logits, name="preact_resnet18")
