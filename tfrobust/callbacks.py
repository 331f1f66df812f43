"""Keras callbacks of a training run: throughput, adversarial image grids, step checkpoints,
stopping on a non-finite loss with the step named, collapse detection, and the best-robust-accuracy
checkpoint with early stopping and the catastrophic-overfitting report."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfrobust import export, files
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


class EpochTest(keras.callbacks.Callback):
    """Adds the figures `evaluate()` returns (e.g. test accuracies) to every epoch's logs, and the
    seconds they took as `test_seconds`. Place it before the writers (TensorBoard, EpochHistory)
    and before the epoch's checkpoint, so a run killed while it evaluates redoes the epoch."""

    def __init__(self, evaluate):
        super().__init__()
        self.evaluate = evaluate

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            start = time.perf_counter()
            logs.update(self.evaluate())
            logs["test_seconds"] = time.perf_counter() - start


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


class CollapseError(TfrobustError, RuntimeError):
    """Training sat at a collapse for `--stop_on_collapse` epochs in a row (the runners exit with code 5)."""

    exit_code = 5


# A collapse at an epoch's end (`CollapseDetector`): one class takes this share of the predictions or more ...
COLLAPSE_MAJORITY = 0.9
# ... or every step's training loss stayed within this fraction of log(K).
COLLAPSE_LOSS_BAND = 0.01
COLLAPSE_ADVICE = ("what usually helps: an eps warm-up (--eps_warmup_epochs=1), a natural cross-entropy term "
                   "(TRADES has one; mimae: --natural_weight), a smaller --lr, or more epochs (PGD-AT at eps 0.3 "
                   "with a zero-initialized last layer can sit at chance for a whole epoch)")


class CollapseDetector(keras.callbacks.Callback):
    """Detects a collapsed classifier at the end of every epoch, says so, and adds it to the logs.

    An epoch ends collapsed when either
      * the model, in inference mode (its evaluated weights: the averages with weight averaging),
        predicts one class for `COLLAPSE_MAJORITY` (90%) or more of `images` (the run passes its
        validation images, else its test images: only predictions are counted, never labels), or
      * the training loss of every step of the epoch stayed within `COLLAPSE_LOSS_BAND` (1%) of
        log(K), the loss of a uniform prediction (each step's loss is recovered from Keras's running
        mean: m_b b - m_{b-1} (b - 1)).
    Every epoch's logs get `majority_share` (the top class's share of the predictions), `collapse`
    (1 or 0) and `collapse_loss_at_chance` (1 or 0), so they reach TensorBoard's scalars and
    history.json with the rest (place this callback before the writers). A collapsed epoch also
    prints one console line naming the symptom and what usually helps, and writes it as a text
    summary `collapse` to `logdir` (TensorBoard's Text tab), at the epoch's number (from 0, as
    Keras writes epoch scalars).
    """

    def __init__(self, images: np.ndarray, num_classes: int, *, what: str = "images", logdir: str | None = None,
                 verbose: bool = True, batch_size: int = 256):
        super().__init__()
        self.images, self.num_classes, self.what = images, int(num_classes), what
        self.logdir, self.verbose, self.batch_size = logdir, verbose, batch_size
        self._writer = self._predict = None
        self._log_k = math.log(self.num_classes)

    def on_epoch_begin(self, epoch, logs=None):
        self._steps, self._last_mean, self._all_at_chance = 0, 0.0, True

    def on_train_batch_end(self, batch, logs=None):
        mean = (logs or {}).get("loss")
        if mean is None:
            self._all_at_chance = False
            return
        mean = float(mean)
        self._steps += 1
        step_loss = self._steps * mean - (self._steps - 1) * self._last_mean
        self._last_mean = mean
        if not abs(step_loss - self._log_k) <= COLLAPSE_LOSS_BAND * self._log_k:
            self._all_at_chance = False

    def majority(self) -> tuple[int, float]:
        """(the most-predicted class, its share of the predictions on `images`)."""
        model = self.model
        classifier = getattr(model, "classifier", model)
        if self._predict is None:  # one trace per batch shape (Keras' `predict` retraces when called per epoch)
            self._predict = tf.function(lambda x: tf.argmax(classifier(x, training=False), axis=-1),
                                        reduce_retracing=True)
        weights = getattr(model, "evaluated_weights", None)
        with weights() if weights else contextlib.nullcontext():
            predicted = np.concatenate([self._predict(self.images[i: i + self.batch_size]).numpy()
                                        for i in range(0, len(self.images), self.batch_size)])
        counts = np.bincount(predicted, minlength=self.num_classes)
        return int(counts.argmax()), float(counts.max() / max(counts.sum(), 1))

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        top, share = self.majority()
        loss_at_chance = bool(self._steps) and self._all_at_chance
        collapsed = share >= COLLAPSE_MAJORITY or loss_at_chance
        logs.update(majority_share=share, collapse=float(collapsed), collapse_loss_at_chance=float(loss_at_chance))
        if not collapsed:
            return
        symptoms = []
        if share >= COLLAPSE_MAJORITY:
            symptoms.append(f"the model predicts class {top} for {100 * share:.1f}% of {len(self.images):,} "
                            f"{self.what}")
        if loss_at_chance:
            symptoms.append(f"the training loss stayed within {100 * COLLAPSE_LOSS_BAND:g}% of log({self.num_classes}) "
                            f"= {self._log_k:.3f} all epoch")
        line = f"Collapse at epoch {epoch + 1}: {' and '.join(symptoms)}; {COLLAPSE_ADVICE}."
        if self.verbose:
            print(f"\n{line}", flush=True)
        if self.logdir:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.logdir)
            with self._writer.as_default(), tf.summary.record_if(True):
                tf.summary.text("collapse", line, step=epoch)
            self._writer.flush()


def collapsed_epochs(epochs: list[dict]) -> list[dict]:
    """The collapsed epochs of a history (`EpochHistory.epochs`), as summary.json records them."""
    return [{"epoch": e["epoch"], "majority_share": e.get("majority_share"),
             "loss_at_chance": bool(e.get("collapse_loss_at_chance"))} for e in epochs if e.get("collapse")]


class StopOnCollapse(keras.callbacks.Callback):
    """Ends the run with `CollapseError` once the last `patience` epochs of `history` (an
    `EpochHistory`, so the count survives a restart) all collapsed. Place it after the checkpoint
    and the history writer: the epoch is saved before the run ends."""

    def __init__(self, history: EpochHistory, patience: int):
        super().__init__()
        self.history, self.patience = history, int(patience)

    def on_epoch_end(self, epoch, logs=None):
        recent = self.history.epochs[-self.patience:]
        if len(recent) == self.patience and all(e.get("collapse") for e in recent):
            raise CollapseError(
                f"stopped after {self.patience} collapsed epoch(s) in a row (--stop_on_collapse={self.patience}), "
                f"at epoch {epoch + 1}; the epoch is checkpointed: change the method's settings and start anew "
                "(--overwrite), or rerun with --stop_on_collapse=0 to continue as it is")


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


class MetricState(tf.Module):
    """A copy of a model's running metric states (`model.metrics`' variables) that travels in the
    mid-epoch checkpoints: an epoch resumed after a kill then averages over all its batches, as
    the uninterrupted epoch does, not only over those after the restart. `step` is the optimizer
    step the copy was taken at (-1: none)."""

    def __init__(self, metrics: Sequence[keras.metrics.Metric]):
        super().__init__(name="metric_state")
        self.values = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False)
                       for m in metrics for v in m.variables]
        self.step = tf.Variable(-1, dtype=tf.int64, trainable=False)

    def capture(self, metrics: Sequence[keras.metrics.Metric], step: int) -> None:
        for copy, variable in zip(self.values, (v for m in metrics for v in m.variables), strict=True):
            copy.assign(variable.value)
        self.step.assign(step)

    def apply(self, metrics: Sequence[keras.metrics.Metric]) -> None:
        for copy, variable in zip(self.values, (v for m in metrics for v in m.variables), strict=True):
            variable.assign(copy)


class StepCheckpoint(keras.callbacks.Callback):
    """Saves a `tf.train.CheckpointManager` every `every_steps` steps and at each epoch end.

    Checkpoints are numbered by the optimizer step, so a restored run knows exactly where it is.
    TensorFlow writes a checkpoint's files before it updates the `checkpoint` index file, so a
    crash mid-write leaves the previous checkpoint as the latest one. With `metric_state` (part of
    the manager's checkpoint), a mid-epoch checkpoint also holds the epoch's running metrics, and
    `resume_metrics=True` puts them back when the first epoch of this fit begins (after Keras has
    reset them), if they were taken at the step the run restarts from.
    """

    def __init__(self, manager: tf.train.CheckpointManager, every_steps: int = 0,
                 metric_state: MetricState | None = None, resume_metrics: bool = False):
        super().__init__()
        self.manager = manager
        self.every_steps = every_steps
        self.metric_state = metric_state
        self.resume_metrics = resume_metrics

    def _save(self, mid_epoch: bool):
        step = int(self.model.optimizer.iterations.numpy())
        if self.manager.latest_checkpoint is None or not self.manager.latest_checkpoint.endswith(f"-{step}"):
            if self.metric_state is not None:
                if mid_epoch:
                    self.metric_state.capture(self.model.metrics, step)
                else:
                    self.metric_state.step.assign(-1)
            self.manager.save(checkpoint_number=step)

    def on_epoch_begin(self, epoch, logs=None):
        if self.resume_metrics and self.metric_state is not None:
            self.resume_metrics = False
            if int(self.metric_state.step.numpy()) == int(self.model.optimizer.iterations.numpy()):
                self.metric_state.apply(self.model.metrics)

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps and int(self.model.optimizer.iterations.numpy()) % self.every_steps == 0:
            self._save(mid_epoch=True)

    def on_epoch_end(self, epoch, logs=None):
        self._save(mid_epoch=False)


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


class BestRobustCheckpoint(keras.callbacks.Callback):
    """Keeps the model with the best validation robust accuracy, stops early, and reports catastrophic
    overfitting. Add it to any `fit` of a `RobustModel` that has `validation_data`:

        best = BestRobustCheckpoint("run/checkpoints/best", patience=5, export_path="run/savedmodel_best")
        robust.fit(train, validation_data=val, epochs=30, callbacks=[best])
        tf.train.Checkpoint(model=robust.classifier).restore(best.latest_checkpoint).expect_partial()

    After every epoch whose logs hold `monitor` (`val_adv_accuracy`, the validation PGD accuracy):

    * better than the best so far (strictly): the checkpoint is saved in `directory` (a manager of
      its own keeping one checkpoint, named `best-STEP`, which the rolling checkpoints' rotation never
      touches), the evaluated classifier (the weight averages if the model keeps them) is exported
      to `export_path`, and `best.json` ({epoch, step, monitor, value, overfitting}, epochs counted
      from 1) records it, last, so a resumed run knows the best so far;
    * more than `overfit_drop` below the best: catastrophic overfitting (Wong et al. 2020 stop when
      a PGD accuracy falls by 0.2 from one epoch to the next): one console line, and the epoch is
      appended to `overfitting`;
    * with `patience` > 0, training stops once `patience` epochs have passed since the best one
      (computed from the recorded best epoch, so the count survives a restart).

    Args:
        directory: where the best checkpoint and best.json go.
        checkpoint: what to save (default: `tf.train.Checkpoint(model=classifier)`, plus the
            model's `weight_average` if it has one).
        state_file: where best.json is read from (default `directory/best.json`); `write_state=False`
            keeps it from being written (non-chief workers of a multi-worker run).
    """

    STATE_FILE = "best.json"

    def __init__(self, directory: str, *, checkpoint: tf.train.Checkpoint | None = None,
                 monitor: str = "val_adv_accuracy", patience: int = 0, overfit_drop: float = 0.2,
                 export_path: str | None = None, state_file: str | None = None, write_state: bool = True,
                 verbose: bool = True):
        super().__init__()
        if patience < 0 or not 0 <= overfit_drop <= 1:
            raise ValueError(f"patience must be >= 0 and overfit_drop in [0, 1], got {patience}, {overfit_drop}")
        self.directory = directory
        self.checkpoint = checkpoint
        self.monitor = monitor
        self.patience = int(patience)
        self.overfit_drop = float(overfit_drop)
        self.export_path = export_path
        self.write_state = write_state
        self.verbose = verbose
        self._manager = None
        state = _read_json(state_file or os.path.join(directory, self.STATE_FILE)) or {}
        self.best_epoch: int | None = state.get("epoch")
        self.best_step: int | None = state.get("step")
        self.best_value: float | None = state.get("value")
        self.overfitting: list[dict] = list(state.get("overfitting", []))
        self.stopped_epoch: int | None = None

    @property
    def latest_checkpoint(self) -> str | None:
        """The best checkpoint's path (None before the first one)."""
        return tf.train.latest_checkpoint(self.directory)

    def patience_exhausted(self, epochs_done: int) -> bool:
        """Whether early stopping has been reached once `epochs_done` epochs are complete."""
        return bool(self.patience) and self.best_epoch is not None and epochs_done - self.best_epoch >= self.patience

    def _classifier(self):
        return getattr(self.model, "classifier", self.model)

    def _get_manager(self) -> tf.train.CheckpointManager:
        if self._manager is None:
            if self.checkpoint is None:
                parts = {"model": self._classifier()}
                if getattr(self.model, "weight_average", None) is not None:
                    parts["weight_average"] = self.model.weight_average
                self.checkpoint = tf.train.Checkpoint(**parts)
            self._manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=1,
                                                       checkpoint_name="best")
        return self._manager

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value, epoch_number = float(value), epoch + 1
        step = int(self.model.optimizer.iterations.numpy())
        if self.best_value is not None and value < self.best_value - self.overfit_drop:
            event = {"epoch": epoch_number, "step": step, "value": value, "best_epoch": self.best_epoch,
                     "best_value": self.best_value}
            self.overfitting.append(event)
            if self.verbose:
                print(f"\nCatastrophic overfitting suspected: {self.monitor} fell to {100 * value:.2f}% at epoch "
                      f"{epoch_number}, from its best {100 * self.best_value:.2f}% at epoch {self.best_epoch}; "
                      f"the best model is kept in {self.directory}", flush=True)
        if self.best_value is None or value > self.best_value:
            self._get_manager().save(checkpoint_number=step)
            if self.export_path:
                weights = getattr(self.model, "evaluated_weights", None)
                with weights() if weights else contextlib.nullcontext():
                    export.export_classifier(self._classifier(), self.export_path)
            self.best_epoch, self.best_step, self.best_value = epoch_number, step, value
        self._write_state()
        if self.patience_exhausted(epoch_number):
            self.stopped_epoch = epoch_number
            self.model.stop_training = True
            if self.verbose:
                print(f"\nEarly stopping after epoch {epoch_number}: no better {self.monitor} for {self.patience} "
                      f"epoch(s) since epoch {self.best_epoch} ({100 * self.best_value:.2f}%).", flush=True)

    def _write_state(self):
        if not self.write_state:
            return
        os.makedirs(self.directory, exist_ok=True)
        files.write_json(os.path.join(self.directory, self.STATE_FILE),
                         {"epoch": self.best_epoch, "step": self.best_step, "monitor": self.monitor,
                          "value": self.best_value, "overfitting": self.overfitting})


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


class RunProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, numbered against the run's configured epochs: a run resumed mid-way
    shows "Epoch 3/20", not the "Epoch 1/1" of the `fit` call that finishes the interrupted epoch.
    It also says that the first batch traces and compiles the step, which can take a while."""

    def __init__(self, total_epochs: int):
        super().__init__()
        self.total_epochs = int(total_epochs)
        self._announced = False

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.verbose and not self._announced:  # a second fit call of the run reuses the traced step
            print("Tracing the training step (its first batch compiles the graph) ...", flush=True)
            self._announced = True


class EpochHistory(keras.callbacks.Callback):
    """Every finished epoch's logs, kept in a JSON file (`{"epochs": [...]}`, one dict per epoch,
    with its `epoch` number) so that the history of a run resumed any number of times is whole.

    `partial_from_batch` marks the first epoch of this fit as averaged only over its batches from
    that one on (a mid-epoch resume from a checkpoint without the running metrics): its record then
    says so in `partial_from_batch`."""

    NOT_METRICS = ("epoch", "partial_from_batch")

    def __init__(self, path: str | None, write: bool = True, partial_from_batch: int | None = None):
        super().__init__()
        self.path, self.write = path, write
        self.partial_from_batch = partial_from_batch
        saved = _read_json(path) if path else None
        self.epochs: list[dict] = list((saved or {}).get("epochs", []))

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": int(epoch) + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        if self.partial_from_batch:
            record["partial_from_batch"] = self.partial_from_batch
            self.partial_from_batch = None
        self.epochs = [e for e in self.epochs if e["epoch"] < record["epoch"]] + [record]
        if self.path and self.write:
            files.write_json(self.path, {"epochs": self.epochs})

    def history(self) -> dict[str, list[float]]:
        """metric -> its value at each finished epoch, in order (as `keras.callbacks.History`)."""
        out: dict[str, list[float]] = {}
        for record in self.epochs:
            for k, v in record.items():
                if k not in self.NOT_METRICS:
                    out.setdefault(k, []).append(v)
        return out
