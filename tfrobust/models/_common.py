"""Shared pieces of the ``tfrobust.models`` builders.

Input validation, the normalizing input stem, and the layer factories every
architecture uses (PyTorch-default BatchNorm and Linear/Conv2d initializers, a logits layer
that stays in full precision under mixed precision).

Dtypes: pixels, normalization and logits are `keras.config.floatx()` (float32, or float64 after
`keras.config.set_floatx("float64")`); under a mixed-precision policy (whose floatx stays float32)
the hidden layers compute in float16/bfloat16 and the logits layer in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

from tfrobust.errors import TfrobustError

# PyTorch ``nn.BatchNorm2d`` defaults: momentum 0.1 on the *new* statistic is
# Keras momentum 0.9 on the *old* one; eps 1e-5 (Keras default is 1e-3).
BN_MOMENTUM: float = 0.9
BN_EPSILON: float = 1e-5


class ModelError(TfrobustError):
    """Invalid arguments to :func:`tfrobust.models.build_model` (one-line message)."""


def track_for_checkpoint(model: keras.Model) -> keras.Model:
    """Name each layer holding weights as a ``tf.train`` dependency of ``model``; returns ``model``.

    Under the TensorFlow backend a Keras 3 functional model reaches ``tf.train`` only through its
    ``_operations`` list (every operation, weightless ones such as the input layer included):
    ``Layer._initialize_tracker`` stores the layer and variable lists with attribute tracking off
    (keras/src/layers/layer.py). A checkpoint names each variable by its shortest path, so with the
    optimizer in it the model's weights are listed only as ``optimizer/_trainable_variables/N``,
    and a reader of the checkpoint (``tf.train.list_variables``, ``load_checkpoint``) finds nothing
    under ``model``. Here the layers with weights also become ``layer_with_weights-N`` (graph order,
    the tf.keras 2 names), each holding its variables by attribute (``_kernel``, ``gamma``,
    ``moving_mean``, ...): the weights are saved as ``model/layer_with_weights-N/...``. The
    ``_operations`` path stays, so checkpoints written before this restore as they did.
    Nested functional models are handled the same way.
    """
    for index, layer in enumerate(layer for layer in model.layers if layer.weights):
        if isinstance(layer, keras.Model) and hasattr(layer, "_operations"):
            track_for_checkpoint(layer)
        model._track_trackable(layer, name=f"layer_with_weights-{index}", overwrite=True)
    return model


def functional_model(inputs: keras.KerasTensor, outputs: keras.KerasTensor, name: str) -> keras.Model:
    """``keras.Model(inputs, outputs)`` whose weights a ``tf.train.Checkpoint`` holds (see
    :func:`track_for_checkpoint`)."""
    return track_for_checkpoint(keras.Model(inputs, outputs, name=name))


def check_num_classes(num_classes: int) -> None:
    """Raise :class:`ModelError` unless ``num_classes`` is an int >= 2."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return ``input_shape`` as an ``(H, W, C)`` tuple of positive ints or raise."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ModelError(
            f"input_shape must be (height, width, channels), got {input_shape!r}"
        ) from None
    if len(shape) != 3 or any(
        isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape
    ):
        raise ModelError(
            f"input_shape must be (height, width, channels) of positive ints, got {input_shape!r}"
        )
    return shape  # type: ignore[return-value]


def check_min_size(arch: str, input_shape: Sequence[int], min_hw: int) -> None:
    """Raise :class:`ModelError` if ``input_shape`` is malformed or H or W < ``min_hw``."""
    h, w, _ = check_input_shape(input_shape)
    if h < min_hw or w < min_hw:
        raise ModelError(
            f"input {h}x{w} is too small for {arch}: height and width must be >= {min_hw}"
        )


def _check_stats(
    what: str, values: Sequence[float], channels: int, positive: bool
) -> list[float]:
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ModelError(
            f"{what} must be a sequence of {channels} numbers, got {values!r}"
        ) from None
    if len(vals) != channels:
        raise ModelError(
            f"{what} has {len(vals)} values but the input has {channels} channel(s)"
        )
    if not all(math.isfinite(v) for v in vals):
        raise ModelError(f"{what} must be finite, got {vals}")
    if positive and any(v <= 0 for v in vals):
        raise ModelError(f"{what} must be > 0 for every channel, got {vals}")
    return vals


def check_mean_std(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> tuple[list[float], list[float]] | None:
    """Validate per-channel statistics.

    Returns ``None`` when both are ``None`` (no normalization). If only one is
    given, the other defaults to 0 (mean) or 1 (std).
    """
    if mean is None and std is None:
        return None
    mean_v = [0.0] * channels if mean is None else _check_stats("mean", mean, channels, False)
    std_v = [1.0] * channels if std is None else _check_stats("std", std, channels, True)
    return mean_v, std_v


def kaiming_normal(mode: str) -> keras.initializers.Initializer:
    """N(0, 2 / fan), *untruncated*, fan = fan_in or fan_out: ``torch.nn.init.kaiming_normal_``
    (fan_in, the TRADES SmallCNN's convs) or ``normal_(0, sqrt(2 / (k * k * out_channels)))``
    (fan_out, the WRN of the TRADES code)."""
    return keras.initializers.VarianceScaling(scale=2.0, mode=mode, distribution="untruncated_normal")


def torch_default_kernel() -> keras.initializers.Initializer:
    """PyTorch's default weight of ``nn.Linear`` and ``nn.Conv2d`` (``kaiming_uniform_(a=sqrt(5))``):
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance-scaling uniform with scale 1/3 on fan_in."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def torch_default_bias(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default bias of ``nn.Linear`` and ``nn.Conv2d``: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    with the fan-in of the layer's weight (a bias initializer does not see it, so it is passed)."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def input_stem(
    input_shape: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Create the NHWC pixel input (``keras.config.floatx()``) and the optional normalization.

    Returns ``(inputs, x)``. When statistics are given, ``x`` is
    ``(inputs - mean) / std`` computed by a fixed-statistics
    ``keras.layers.Normalization`` layer (no weights, serializable, kept in
    floatx even under a mixed-precision policy); otherwise ``x is inputs``.
    """
    shape = check_input_shape(input_shape)
    stats = check_mean_std(mean, std, shape[2])
    inputs = keras.Input(shape=shape, dtype=keras.config.floatx(), name="pixels")
    if stats is None:
        return inputs, inputs
    mean_v, std_v = stats
    norm = keras.layers.Normalization(
        mean=mean_v,
        variance=[s * s for s in std_v],
        axis=-1,
        dtype=keras.config.floatx(),
        name="normalize",
    )
    return inputs, norm(inputs)


def batch_norm(name: str) -> keras.layers.BatchNormalization:
    """BatchNormalization with PyTorch defaults (momentum 0.9 here == 0.1 there, eps 1e-5)."""
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )


def logits_layer(num_classes: int, name: str, **kwargs) -> keras.layers.Dense:
    """Final linear layer in ``keras.config.floatx()``: logits stay float32 under mixed precision
    and are float64 under floatx float64."""
    return keras.layers.Dense(num_classes, dtype=keras.config.floatx(), name=name, **kwargs)
