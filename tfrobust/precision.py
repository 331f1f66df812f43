"""The compute precision, set for a block of code and restored after it.

Keras keeps the float type in two process-wide settings: `keras.config.floatx()` (what layers,
metrics, optimizers and tfrobust's attacks and input pipelines build and cast to) and the global
dtype policy (what layers compute in). `keras.config.set_floatx("float64")` changes both for the
rest of the process, for every later model and test. `floatx` sets them for a `with` block only:

    from tfrobust import precision

    with precision.floatx("float64"):
        model = models.build_model("small_cnn", (28, 28, 1), 10)
        x_adv = attacks.pgd(lambda v: model(v, training=False), x, y, eps=0.3, step_size=0.01, steps=40)

Build, train and attack inside one block: a model built in float64 keeps its float64 variables
after the block, while attacks called outside it cast their images to the restored floatx. The
settings are still process-wide while the block runs (Keras has no per-thread floatx), so two
threads must not enter blocks of different precisions at once. `tfrobust.training.train` runs in
such a block (`TrainConfig.dtype`, `TrainConfig.mixed_precision`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras


@contextlib.contextmanager
def floatx(dtype: str, policy: str | None = None) -> Iterator[None]:
    """Inside the block, `keras.config.floatx()` is `dtype` and the global dtype policy is `policy`
    (default: `dtype`; e.g. "mixed_float16" with dtype "float32"). Both are restored when the block
    ends, also by an exception, and also when setting them fails (a bad name raises ValueError
    with the earlier settings in place)."""
    saved = keras.config.floatx(), keras.mixed_precision.global_policy()
    try:
        keras.config.set_floatx(dtype)
        keras.mixed_precision.set_global_policy(policy or dtype)
        yield
    finally:
        keras.config.set_floatx(saved[0])
        keras.mixed_precision.set_global_policy(saved[1])
