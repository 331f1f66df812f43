"""Keras callbacks of a training run: throughput, adversarial image grids, step checkpoints,
and stopping on a non-finite loss with the step named."""

from __future__ import annotations

import math
import time

import keras
import numpy as np
import tensorflow as tf

from tfrobust.errors import TfrobustError


class NonFiniteLossError(TfrobustError, RuntimeError):
    """Training produced a NaN or infinite loss (the runners exit with code 3)."""

    exit_code = 3


class Throughput(keras.callbacks.Callback):
    """Adds `images_per_second` (training examples per wall-clock second) to the epoch logs.

    Place it before the TensorBoard callback so the value is written with the other scalars.
    """

    def __init__(self, global_batch_size: int):
        super().__init__()
        self.global_batch_size = global_batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._steps:
            elapsed = time.perf_counter() - self._start
            logs["images_per_second"] = self._steps * self.global_batch_size / elapsed


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first step whose loss is NaN or infinite, naming that step."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = int(self.model.optimizer.iterations.numpy())
            raise NonFiniteLossError(
                f"the training loss became {float(loss)} at optimizer step {step} (batch {batch} of the "
                "epoch); lower the learning rate or check the data and method weights"
            )


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback that writes every epoch, whatever `update_freq` is.

    With an integer `update_freq=N`, Keras 3 (keras/src/callbacks/tensorboard.py) enters
    `tf.summary.record_if(step % N == 0)` for the current train batch in `_push_writer`, and leaves
    that switch on until the next batch: the epoch scalars written in `on_epoch_end`, the validation
    scalars written in `on_test_end` and any summary another callback writes at epoch end are then
    dropped unless the epoch's last step is a multiple of N. Here those writes record always, the
    batch scalars still every N steps.

    Keras also counts batch scalars from 0 at each `fit` call; here they are numbered by the
    optimizer step, so a resumed run writes step k at the same step as an uninterrupted one.
    """

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        iterations = getattr(self.model.optimizer, "iterations", None)
        if iterations is not None:
            self._global_train_batch = int(iterations.numpy())

    def on_test_end(self, logs=None):
        with tf.summary.record_if(True):
            super().on_test_end(logs)

    def on_epoch_end(self, epoch, logs=None):
        with tf.summary.record_if(True):
            super().on_epoch_end(epoch, logs)


class StepCheckpoint(keras.callbacks.Callback):
    """Saves a `tf.train.CheckpointManager` every `every_steps` steps and at each epoch end.

    Checkpoints are numbered by the optimizer step, so a restored run knows exactly where it is.
    TensorFlow writes a checkpoint's files before it updates the `checkpoint` index file, so a
    crash mid-write leaves the previous checkpoint as the latest one.
    """

    def __init__(self, manager: tf.train.CheckpointManager, every_steps: int = 0):
        super().__init__()
        self.manager = manager
        self.every_steps = every_steps

    def _save(self):
        step = int(self.model.optimizer.iterations.numpy())
        if self.manager.latest_checkpoint is None or not self.manager.latest_checkpoint.endswith(f"-{step}"):
            self.manager.save(checkpoint_number=step)

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps and int(self.model.optimizer.iterations.numpy()) % self.every_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()


def image_grid(clean: np.ndarray, adversarial: np.ndarray, eps: float) -> np.ndarray:
    """One image [1, 3H, N*W, C]: clean row, adversarial row, perturbation row (scaled to +-eps).

    The perturbation is shown as 0.5 + delta / (2 eps), so mid-grey is no change.
    """
    delta = adversarial - clean
    scale = 2.0 * max(float(np.abs(delta).max()), eps, 1e-12)
    rows = [clean, adversarial, np.clip(0.5 + delta / scale, 0.0, 1.0)]
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)[None]


class AdversarialImages(keras.callbacks.Callback):
    """Writes a grid of clean inputs, their PGD examples and the perturbations every epoch."""

    def __init__(self, logdir: str, images: np.ndarray, labels: np.ndarray):
        super().__init__()
        self.writer = tf.summary.create_file_writer(logdir)
        self.images = tf.constant(images, tf.float32)
        self.labels = tf.constant(labels, tf.int32)

    def on_epoch_end(self, epoch, logs=None):
        adversarial = self.model.adversarial_examples(self.images, self.labels).numpy()
        grid = image_grid(self.images.numpy(), adversarial, self.model.eval_attack.eps)
        # record_if(True): a TensorBoard callback with an integer update_freq leaves its
        # every-N-steps switch on at epoch end, which would drop this summary.
        with self.writer.as_default(), tf.summary.record_if(True):
            tf.summary.image("clean_adversarial_perturbation", grid, step=epoch)
        self.writer.flush()
