"""``small_cnn``: the MNIST SmallCNN of TRADES.

Reference: H. Zhang, Y. Yu, J. Jiao, E. Xing, L. El Ghaoui, M. Jordan,
"Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019;
code github.com/yaodongyu/TRADES, ``models/small_cnn.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np

from ._common import (
    check_min_size,
    check_num_classes,
    functional_model,
    input_stem,
    kaiming_normal,
    logits_layer,
    torch_default_bias,
    torch_default_kernel,
)

# conv3 (valid) x2, pool 2, conv3 (valid) x2, pool 2 must leave >= 1x1:
# 16 -> 14 -> 12 -> 6 -> 4 -> 2 -> 1 (15 would give 0).
MIN_INPUT_SIZE: int = 16
# The layers with weights, named as in the reference's state_dict (`feature_extractor.conv1`, ...,
# `classifier.fc3`, without the Sequential's prefix).
TORCH_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2", "fc3")


def build_small_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> keras.Model:
    """Build the TRADES SmallCNN.

    conv32 3x3 valid ReLU, conv32 3x3 ReLU, maxpool 2, conv64 3x3 ReLU,
    conv64 3x3 ReLU, maxpool 2, flatten, fc200 ReLU, dropout 0.5, fc200 ReLU,
    fc ``num_classes``. Initialization as in the reference: convs kaiming-normal
    (fan_in, untruncated) with zero bias, the last layer's weights and biases
    zero; fc1/fc2 are not re-initialized there, so they keep PyTorch's
    ``nn.Linear`` default: weights and biases U(+-1/sqrt(fan_in)). For 28x28x1
    and 10 classes this has 312,202 parameters.
    """
    check_num_classes(num_classes)
    check_min_size("small_cnn", input_shape, MIN_INPUT_SIZE)
    inputs, x = input_stem(input_shape, mean, std)
    layers = keras.layers

    def conv(filters: int, name: str) -> keras.layers.Conv2D:
        return layers.Conv2D(
            filters, 3, padding="valid", activation="relu",
            kernel_initializer=kaiming_normal("fan_in"), bias_initializer="zeros", name=name,
        )

    x = conv(32, "conv1")(x)
    x = conv(32, "conv2")(x)
    x = layers.MaxPooling2D(2, name="maxpool1")(x)
    x = conv(64, "conv3")(x)
    x = conv(64, "conv4")(x)
    x = layers.MaxPooling2D(2, name="maxpool2")(x)
    x = layers.Flatten(name="flatten")(x)

    def linear(units: int, fan_in: int, name: str) -> keras.layers.Dense:
        return layers.Dense(units, activation="relu", kernel_initializer=torch_default_kernel(),
                            bias_initializer=torch_default_bias(fan_in), name=name)

    x = linear(200, x.shape[-1], "fc1")(x)
    x = layers.Dropout(0.5, name="drop")(x)
    x = linear(200, 200, "fc2")(x)
    logits = logits_layer(
        num_classes, name="fc3", kernel_initializer="zeros", bias_initializer="zeros"
    )(x)
    return functional_model(inputs, logits, name="small_cnn")


def _flatten_shape(model: keras.Model) -> tuple[int, int, int]:
    h, w, c = model.get_layer("flatten").input.shape[1:]
    return h, w, c


def to_torch_layout(model: keras.Model) -> dict[str, np.ndarray]:
    """The weights of a `build_small_cnn` model as the reference's SmallCNN holds them:
    {"conv1.weight": [O, I, H, W], "conv1.bias": [O], ..., "fc1.weight": [out, in], ...}.

    Conv kernels HWIO -> OIHW; dense kernels transposed; fc1's input order follows the flatten,
    (h, w, c) in Keras and (c, h, w) in PyTorch (`features.view(-1, 64 * 4 * 4)`)."""
    weights = {}
    for name in TORCH_LAYERS:
        kernel, bias = (np.asarray(w) for w in model.get_layer(name).get_weights())
        if kernel.ndim == 4:
            kernel = kernel.transpose(3, 2, 0, 1)
        else:
            if name == "fc1":
                h, w, c = _flatten_shape(model)
                kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
            kernel = kernel.T
        weights[f"{name}.weight"], weights[f"{name}.bias"] = kernel, bias
    return weights


def from_torch_layout(model: keras.Model, weights: Mapping[str, np.ndarray]) -> None:
    """Set a `build_small_cnn` model's weights from the reference SmallCNN's (`to_torch_layout`'s
    layout; a `state_dict` with its `feature_extractor.` / `classifier.` prefixes stripped), in the
    model's dtype. The inverse of `to_torch_layout`."""
    for name in TORCH_LAYERS:
        kernel, bias = np.asarray(weights[f"{name}.weight"]), np.asarray(weights[f"{name}.bias"])
        if kernel.ndim == 4:
            kernel = kernel.transpose(2, 3, 1, 0)
        else:
            kernel = kernel.T
            if name == "fc1":
                h, w, c = _flatten_shape(model)
                kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)
        layer = model.get_layer(name)
        layer.set_weights([kernel.astype(layer.kernel.dtype), bias.astype(layer.bias.dtype)])
