"""Weight averaging: an exponential moving average (EMA) of every float variable of a classifier,
updated once per optimizer step inside the compiled training step.

    n = optimizer steps done (after this step's update), w_n the variables after it
    avg_n = w_n                                  if n <= start_step
    avg_n = d * avg_{n-1} + (1 - d) * w_n        otherwise

"Every float variable" means the trainable weights and the batch-norm moving statistics, as the
reference weight-averaging codes do (Rebuffi et al. 2021, "Fixing Data Augmentation to Improve
Adversarial Robustness": deepmind-research `adversarial_robustness/jax/experiment.py` averages the
parameters and the network state; PyTorch's `swa_utils.AveragedModel(use_buffers=True)` likewise):
the averaged weights then run with statistics that belong to them.

Why not Keras' own optimizer EMA (`use_ema=True`, `ema_momentum`): Keras' `fit` ends with
`optimizer.finalize_variable_values(model.trainable_weights)`, which overwrites the raw weights with
their average. A run resumed mid-epoch calls `fit` twice (finish the interrupted epoch, then the
rest), so its second part would train on from the averaged weights and differ from an uninterrupted
run, and the raw weights are lost after every `fit`. It also averages trainable variables only (no
batch-norm statistics) from step 0 (no start epoch), and validation inside `fit` sees the raw weights.

The averages are `tf.Variable`s with `ONLY_FIRST_REPLICA` aggregation: under MirroredStrategy every
replica computes the same update from the synchronized weights and the first replica's is kept.
They are checkpointed (`tf.train.Checkpoint(weight_average=...)`), so a resumed run continues them
exactly; `swapped_in` lends them to the classifier for evaluation and export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf


def averaged_variables(model: keras.Model) -> list:
    """The variables that are averaged: every floating-point variable of `model` (weights and
    batch-norm moving statistics; integer states such as seed generators are left alone)."""
    return [v for v in model.weights if tf.as_dtype(v.dtype).is_floating]


class WeightAverage(tf.Module):
    """The EMA of `model`'s float variables (see the module docstring for the update).

    Args:
        model: the classifier being trained (built).
        decay: d in (0, 1).
        start_step: the average equals the weights up to and including this optimizer step.
    """

    def __init__(self, model: keras.Model, decay: float = 0.999, start_step: int = 0):
        super().__init__(name="weight_average")
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self._model = lambda: model  # not a tracked attribute: the checkpoint holds the model elsewhere
        self.decay = float(decay)
        self.start_step = int(start_step)
        self.averages = [
            tf.Variable(tf.convert_to_tensor(v), trainable=False, name=v.path.replace("/", "_") + "_average",
                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            for v in averaged_variables(model)
        ]

    def update(self, steps_done: tf.Tensor) -> None:
        """One EMA step after the optimizer's update number `steps_done` (its `iterations` then)."""
        averaging = tf.cast(steps_done, tf.int64) > self.start_step
        for avg, var in zip(self.averages, averaged_variables(self._model())):
            w = tf.cast(tf.convert_to_tensor(var), avg.dtype)
            avg.assign(tf.where(averaging, self.decay * avg + (1.0 - self.decay) * w, w))

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the model's variables hold the averages; the raw values come back after.
        Call from outside any replica function (eager, cross-replica), as Keras callbacks run."""
        variables = averaged_variables(self._model())
        raw = [np.array(v.numpy()) for v in variables]
        for var, avg in zip(variables, self.averages):
            var.assign(avg.numpy())
        try:
            yield
        finally:
            for var, value in zip(variables, raw):
                var.assign(value)
