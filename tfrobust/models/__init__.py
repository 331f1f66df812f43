"""Classifier architectures for adversarially robust training.

Every model built here is a functional ``keras.Model`` that

* takes raw float32 NHWC pixels in [0, 1],
* normalizes inside the model when per-channel ``mean``/``std`` are given
  (a fixed-statistics ``keras.layers.Normalization`` layer, kept in float32),
* returns float32 **logits** (no softmax), also under a ``mixed_float16``
  policy (the last ``Dense`` has ``dtype="float32"``),
* uses PyTorch-default BatchNorm (momentum 0.9 in Keras terms, eps 1e-5) and
  has no weight regularizers (the trainer applies weight decay).

Architectures: the rows of :data:`ARCHITECTURES`, one per name (builder, smallest input, one
line; each module's docstring names its reference). Adding one is a module and a row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras

from . import lenet5, resnet, small_cnn, tiny, wide_resnet
from ._common import (
    ModelError,
    check_input_shape,
    check_mean_std,
    check_min_size,
    check_num_classes,
)

__all__ = ["ARCHITECTURES", "MIN_INPUT_SIZES", "MODEL_NAMES", "Architecture", "ModelError", "build_model"]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One row of the table: how to build an architecture and what it accepts."""

    build: Callable[..., keras.Model]  # build(input_shape, num_classes, *, mean, std, **options)
    min_input_size: int  # smallest accepted height and width
    description: str
    options: tuple[str, ...] = ()  # keyword arguments of `build_model` this builder also takes
    check_options: Callable[..., None] | None = None  # raises ModelError on bad options


ARCHITECTURES: dict[str, Architecture] = {
    "tiny_cnn": Architecture(tiny.build_tiny_cnn, tiny.MIN_INPUT_SIZE, "small fast CNN for 8x8 digits"),
    "small_cnn": Architecture(small_cnn.build_small_cnn, small_cnn.MIN_INPUT_SIZE, "TRADES MNIST SmallCNN"),
    "lenet5": Architecture(lenet5.build_lenet5, lenet5.MIN_INPUT_SIZE, "Madry et al. MNIST-challenge CNN"),
    "resnet18": Architecture(resnet.build_resnet18, resnet.MIN_INPUT_SIZE,
                             "CIFAR ResNet-18 of kuangliu/pytorch-cifar"),
    "preact_resnet18": Architecture(resnet.build_preact_resnet18, resnet.MIN_INPUT_SIZE,
                                    "CIFAR PreAct ResNet-18"),
    "wide_resnet": Architecture(wide_resnet.build_wide_resnet, wide_resnet.MIN_INPUT_SIZE,
                                "WRN-depth-width of TRADES", options=("depth", "width"),
                                check_options=wide_resnet.check_depth_width),
}

#: Architecture names, in table order.
MODEL_NAMES: tuple[str, ...] = tuple(ARCHITECTURES)

#: Smallest accepted height/width per architecture.
MIN_INPUT_SIZES: dict[str, int] = {name: a.min_input_size for name, a in ARCHITECTURES.items()}


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    depth: int = 34,
    width: int = 10,
    seed: int | None = None,
) -> keras.Model:
    """Build the classifier ``name`` (one of :data:`MODEL_NAMES`).

    Args:
        name: architecture name.
        input_shape: ``(height, width, channels)`` of the raw [0, 1] pixels.
        num_classes: number of logits (>= 2).
        mean, std: optional per-channel statistics (length ``channels``, std > 0);
            the model then computes ``(x - mean) / std`` internally. ``None`` for
            both means no normalization; if only one is given the other
            defaults to 0 (mean) or 1 (std). The train runner passes the
            train split's statistics (``--normalize``, on by default); to build
            the same model pass ``info.mean``, ``info.std`` of ``data.datasets``.
        depth, width: WRN depth (6n + 4) and widen factor; ``wide_resnet`` only,
            ignored by the other architectures.
        seed: if not ``None``, ``keras.utils.set_random_seed(seed)`` is called
            right before the layers are created, so building twice with the
            same seed gives identical initial weights. NOTE: this (re)seeds the
            *global* Python, NumPy, TensorFlow and Keras generators as a side
            effect. With ``seed=None`` nothing is seeded; seed globally yourself.

    Returns:
        A functional ``keras.Model`` mapping pixels to float32 logits.

    Raises:
        ModelError: unknown name, malformed ``input_shape``, input too small for
            the architecture, bad WRN depth/width, ``mean``/``std`` length not
            equal to the channel count, ``std <= 0``, or ``num_classes < 2``.
    """
    if name not in ARCHITECTURES:
        raise ModelError(
            f"unknown model name {name!r}; accepted: {', '.join(MODEL_NAMES)}"
        )
    arch = ARCHITECTURES[name]
    options = {k: v for k, v in {"depth": depth, "width": width}.items() if k in arch.options}
    # Validate everything before touching the global random state.
    check_num_classes(num_classes)
    if arch.check_options is not None:
        arch.check_options(**options)
    shape = check_input_shape(input_shape)
    check_min_size(name, shape, arch.min_input_size)
    check_mean_std(mean, std, shape[2])
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ModelError(f"seed must be an integer or None, got {seed!r}")
        keras.utils.set_random_seed(seed)
    return arch.build(shape, num_classes, mean=mean, std=std, **options)
