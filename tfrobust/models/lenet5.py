"""``lenet5``: the MNIST model of Madry et al.'s MNIST challenge.

Reference: A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards Deep
Learning Models Resistant to Adversarial Attacks", ICLR 2018; code
github.com/MadryLab/mnist_challenge, ``model.py`` (adapted from the TensorFlow
"Deep MNIST for experts" tutorial).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from ._common import (
    check_min_size,
    check_num_classes,
    functional_model,
    input_stem,
    logits_layer,
)

# Each of the two 2x2 max-pools must halve a dimension of at least 2.
MIN_INPUT_SIZE: int = 4


def build_lenet5(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> keras.Model:
    """Build Madry et al.'s MNIST CNN.

    conv 32 5x5 same ReLU, maxpool 2 (same), conv 64 5x5 same ReLU, maxpool 2
    (same), fc 1024 ReLU, fc ``num_classes``. The reference initializes every
    weight truncated-normal(stddev 0.1) and every bias to 0.1; so do we. For
    28x28x1 and 10 classes this has 3,274,634 parameters.
    """
    check_num_classes(num_classes)
    check_min_size("lenet5", input_shape, MIN_INPUT_SIZE)
    inputs, x = input_stem(input_shape, mean, std)
    layers = keras.layers

    def init() -> dict:
        # Reference: tf.truncated_normal(stddev=0.1) weights, tf.constant(0.1) biases.
        return {
            "kernel_initializer": keras.initializers.TruncatedNormal(stddev=0.1),
            "bias_initializer": keras.initializers.Constant(0.1),
        }

    x = layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1", **init())(x)
    x = layers.MaxPooling2D(2, padding="same", name="pool1")(x)
    x = layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2", **init())(x)
    x = layers.MaxPooling2D(2, padding="same", name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(1024, activation="relu", name="fc1", **init())(x)
    logits = logits_layer(num_classes, name="fc2", **init())(x)
    return functional_model(inputs, logits, name="lenet5")
