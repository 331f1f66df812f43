"""Classifier architectures for adversarially robust training.

Every model built here is a functional ``keras.Model`` that

* takes raw float32 NHWC pixels in [0, 1],
* normalizes inside the model when per-channel ``mean``/``std`` are given
  (a fixed-statistics ``keras.layers.Normalization`` layer, kept in float32),
* returns float32 **logits** (no softmax), also under a ``mixed_float16``
  policy (the last ``Dense`` has ``dtype="float32"``),
* uses PyTorch-default BatchNorm (momentum 0.9 in Keras terms, eps 1e-5) and
  has no weight regularizers (the trainer applies weight decay).

Architectures (see each module's docstring for the reference):

=================  ============================================================
``tiny_cnn``       small fast CNN for 8x8 digits (:mod:`.tiny`)
``small_cnn``      TRADES MNIST SmallCNN (:mod:`.small_cnn`)
``lenet5``         Madry et al. MNIST-challenge CNN (:mod:`.lenet5`)
``resnet18``       CIFAR ResNet-18, kuangliu/pytorch-cifar (:mod:`.resnet`)
``preact_resnet18`` CIFAR PreAct ResNet-18 (:mod:`.resnet`)
``wide_resnet``    WRN-depth-width of TRADES (:mod:`.wide_resnet`)
=================  ============================================================
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from ._common import (
    ModelError,
    check_input_shape,
    check_mean_std,
    check_min_size,
    check_num_classes,
)
from .lenet5 import MIN_INPUT_SIZE as _LENET5_MIN
from .lenet5 import build_lenet5
from .resnet import MIN_INPUT_SIZE as _RESNET_MIN
from .resnet import build_preact_resnet18, build_resnet18
from .small_cnn import MIN_INPUT_SIZE as _SMALL_CNN_MIN
from .small_cnn import build_small_cnn
from .tiny import MIN_INPUT_SIZE as _TINY_MIN
from .tiny import build_tiny_cnn
from .wide_resnet import MIN_INPUT_SIZE as _WRN_MIN
from .wide_resnet import build_wide_resnet, check_depth_width

__all__ = ["MODEL_NAMES", "MIN_INPUT_SIZES", "ModelError", "build_model"]

MODEL_NAMES: tuple[str, ...] = (
    "tiny_cnn",
    "small_cnn",
    "lenet5",
    "resnet18",
    "preact_resnet18",
    "wide_resnet",
)

#: Smallest accepted height/width per architecture.
MIN_INPUT_SIZES: dict[str, int] = {
    "tiny_cnn": _TINY_MIN,
    "small_cnn": _SMALL_CNN_MIN,
    "lenet5": _LENET5_MIN,
    "resnet18": _RESNET_MIN,
    "preact_resnet18": _RESNET_MIN,
    "wide_resnet": _WRN_MIN,
}

_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "tiny_cnn": build_tiny_cnn,
    "small_cnn": build_small_cnn,
    "lenet5": build_lenet5,
    "resnet18": build_resnet18,
    "preact_resnet18": build_preact_resnet18,
}


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
    if name not in MODEL_NAMES:
        raise ModelError(
            f"unknown model name {name!r}; accepted: {', '.join(MODEL_NAMES)}"
        )
    # Validate everything before touching the global random state.
    check_num_classes(num_classes)
    if name == "wide_resnet":
        check_depth_width(depth, width)
    shape = check_input_shape(input_shape)
    check_min_size(name, shape, MIN_INPUT_SIZES[name])
    check_mean_std(mean, std, shape[2])
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ModelError(f"seed must be an integer or None, got {seed!r}")
        keras.utils.set_random_seed(seed)
    if name == "wide_resnet":
        return build_wide_resnet(
            shape, num_classes, mean=mean, std=std, depth=depth, width=width
        )
    return _BUILDERS[name](shape, num_classes, mean=mean, std=std)
