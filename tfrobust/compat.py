"""Everything that touches private Keras or TensorFlow internals, in one place.

Each function works around one behaviour of Keras 3 / TensorFlow 2 (checked on Keras 3.15 and
TensorFlow 2.21) and names the issue or the source it depends on. When an upgrade breaks one of
them, this file is the one to read; when Keras fixes the issue, the workaround goes.

- `in_multi_worker_mode`: TensorFlow has no public test for "this strategy spans several
  processes"; Keras itself uses the private `StrategyExtended._in_multi_worker_mode()`.
- `step_logs`: under MultiWorkerMirroredStrategy Keras 3 averages a step's logs with
  `strategy.reduce("MEAN", v, axis=0)`, which needs a leading axis on every value.
- `op_determinism`: TensorFlow 2.21 exports `enable_op_determinism` but neither its test nor its
  undo, which a run needs to leave the process as it found it.
- `maybe_symbolic_build`: the override of the private `Model._maybe_symbolic_build`, which reduces
  the first input batch across replicas and fails under MultiWorkerMirroredStrategy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import keras
import tensorflow as tf


def in_multi_worker_mode(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` spans more than one process.

    Private API: `strategy.extended._in_multi_worker_mode()`, the test Keras 3 itself makes before
    reducing logs across workers (`_collective_all_reduce_multi_worker` in
    keras/src/backend/tensorflow/trainer.py); no public equivalent exists. Strategies without the
    method (the default strategy, OneDevice) are single-process.
    """
    return bool(getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)())


def step_logs(metrics: Iterable[keras.metrics.Metric]) -> dict[str, tf.Tensor]:
    """What a custom `train_step`/`test_step` returns to Keras: each metric's result, shape [1]
    under MultiWorkerMirroredStrategy and a scalar otherwise.

    Works around Keras 3's `reduce_per_replica` (keras/src/backend/tensorflow/trainer.py): on a
    multi-worker strategy it reduces every log with `strategy.reduce("MEAN", v, axis=0)`, which
    fails on a scalar (no axis 0); single-process strategies take the scalar path. Part of Keras 3's
    multi-worker `fit` breakage (keras-team/keras#20585); the condition matches Keras's own
    (`in_multi_worker_mode`).
    """
    logs = {m.name: m.result() for m in metrics}
    if in_multi_worker_mode(tf.distribute.get_strategy()):
        logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs


def maybe_symbolic_build(model: keras.Model, input_shape: tuple, iterator=None, data_batch=None) -> None:
    """The body of `model._maybe_symbolic_build` (a private Keras 3 hook that `fit`, `evaluate`
    and `predict` call first): Keras's own, except under MultiWorkerMirroredStrategy.

    There Keras reduces the first distributed input batch with `strategy.reduce("MEAN", ...)` to
    build the model symbolically, which fails across workers (keras-team/keras#20585). A model
    whose layers are built from `input_shape` needs no symbolic build: `model.build(input_shape)`
    (once) instead.
    """
    if in_multi_worker_mode(model.distribute_strategy):
        if not model.built:
            model.build(input_shape)
        return
    keras.Model._maybe_symbolic_build(model, iterator=iterator, data_batch=data_batch)


@contextlib.contextmanager
def op_determinism(enabled: bool):
    """Deterministic ops inside the block when `enabled`, restored afterwards.

    Private API: `tensorflow.python.framework.config.is_op_determinism_enabled` and
    `disable_op_determinism` (only `enable_op_determinism` is exported as
    `tf.config.experimental`).
    """
    from tensorflow.python.framework import config as tf_config

    before = tf_config.is_op_determinism_enabled()
    if enabled:
        tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if not before:
            tf_config.disable_op_determinism()
