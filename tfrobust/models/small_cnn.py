"""``small_cnn``: the MNIST SmallCNN of TRADES.

Reference: H. Zhang, Y. Yu, J. Jiao, E. Xing, L. El Ghaoui, M. Jordan,
"Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019;
code github.com/yaodongyu/TRADES, ``models/small_cnn.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

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
