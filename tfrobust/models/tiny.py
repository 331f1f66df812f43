"""``tiny_cnn``: a small, fast CNN (the default for scikit-learn's 8x8 digits).

Not a published architecture: a minimal conv-conv-pool-dense net meant for
quick experiments and tests. Keras default initializers throughout.
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

MIN_INPUT_SIZE: int = 8


def build_tiny_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> keras.Model:
    """Build ``tiny_cnn``.

    conv 32 3x3 same ReLU -> conv 64 3x3 same ReLU -> maxpool 2 -> flatten ->
    dense 128 ReLU -> dense ``num_classes`` (float32 logits). Inputs must be at
    least 8x8. Returns a functional model mapping [0, 1] pixels to logits.
    """
    check_num_classes(num_classes)
    check_min_size("tiny_cnn", input_shape, MIN_INPUT_SIZE)
    inputs, x = input_stem(input_shape, mean, std)
    layers = keras.layers
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    logits = logits_layer(num_classes, name="logits")(x)
    return functional_model(inputs, logits, name="tiny_cnn")
