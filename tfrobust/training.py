"""A training run: a `TrainConfig` in; a trained, checkpointed, exported and evaluated model out.

This is the whole job of `runners/train.py`, as a library call:

    result = tfrobust.training.train(TrainConfig(method="atent", dataset="mnist", model="small_cnn"))

The settings are defined in `tfrobust.config`; the run directory's layout and the rules for
continuing a run are in `tfrobust.rundir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
from collections.abc import Sequence

import keras
import tensorflow as tf

from tfrobust import (
    __version__,
    averaging,
    checkpoints,
    compat,
    data,
    distribute,
    evaluation,
    export,
    files,
    hparams,
    methods,
    models,
    precision,
    rundir,
)
from tfrobust import callbacks as callbacks_lib
from tfrobust import config as config_lib
from tfrobust.config import TrainConfig, attack_config, validate
from tfrobust.errors import ConfigError, RunWriteError
from tfrobust.methods.base import AttackConfig
from tfrobust.robust_model import RobustModel, default_eval_attack, method_config

BEST_DIR = rundir.BEST_DIR  # the best-validation checkpoint and best.json
_COLLAPSE_PROBE_IMAGES = 10_000  # at most this many test images judge a collapse when there is no validation split

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "attack_config", "build_optimizer", "learning_rate",
           "train", "validate"]


@dataclasses.dataclass
class TrainResult:
    run_dir: str
    export_path: str
    clean_accuracy: float
    adv_accuracy: float
    eval_examples: int
    steps: int
    train_step_traces: int
    history: dict[str, list[float]]
    # with eval_suite: the suite's accuracy per attack and its worst case, at eps, on the same
    # test examples; the full report is in run_dir/evaluation
    suite_accuracy: dict[str, float] | None = None
    suite_checks_passed: bool | None = None
    # with a validation split: the epoch (from 1) of the best validation PGD accuracy, that accuracy,
    # and the best model's test accuracy (clean and PGD; its export is savedmodel_best/)
    best_epoch: int | None = None
    best_val_adv_accuracy: float | None = None
    best_clean_accuracy: float | None = None
    best_adv_accuracy: float | None = None
    best_export_path: str | None = None
    stopped_epoch: int | None = None  # early stopping ended the run after this epoch
    # catastrophic overfitting: the epochs whose validation PGD accuracy fell more than
    # --overfit_drop below the best so far
    overfitting: list[dict] = dataclasses.field(default_factory=list)
    # the epochs that ended collapsed (`callbacks.CollapseDetector`): {epoch, majority_share, loss_at_chance}
    collapsed_epochs: list[dict] = dataclasses.field(default_factory=list)


class CyclicLR(keras.optimizers.schedules.LearningRateSchedule):
    """The one-cycle triangle of the fast-adversarial-training recipes (Wong et al. 2020, PyTorch's
    `CyclicLR` with base 0 in `CIFAR10/train_fgsm.py`; N-FGSM's `train.py`): at optimizer step t,
    lr(t) = peak_lr * max(0, min(t / peak_step, (total - t) / (total - peak_step))).
    The first step runs at rate 0, as PyTorch's scheduler does."""

    def __init__(self, peak_lr: float, peak_step: float, total_steps: float):
        self.peak_lr, self.peak_step, self.total_steps = float(peak_lr), float(peak_step), float(total_steps)

    def __call__(self, step):
        t = tf.cast(step, tf.float32)
        up = t / max(self.peak_step, 1e-9)
        down = (self.total_steps - t) / max(self.total_steps - self.peak_step, 1e-9)
        return self.peak_lr * tf.maximum(0.0, tf.minimum(up, down))

    def get_config(self):
        return {"peak_lr": self.peak_lr, "peak_step": self.peak_step, "total_steps": self.total_steps}


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """The learning rate: a constant, or a per-step piecewise-constant or cosine schedule."""
    if config.lr_schedule == "piecewise":
        boundaries = [e * steps_per_epoch for e in config.lr_decay_epochs]
        values = [config.lr * config.lr_decay_factor**i for i in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    if config.lr_schedule == "cyclic":
        total = config.epochs * steps_per_epoch
        return CyclicLR(config.lr, (config.lr_peak_epoch or config.epochs / 2) * steps_per_epoch, total)
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=config.epochs * steps_per_epoch)
    return config.lr


def build_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = learning_rate(config, steps_per_epoch)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.SGD(lr, momentum=config.momentum, nesterov=config.nesterov)


def _verbosity(config: TrainConfig) -> int | str:
    return "auto" if config.verbose is None else config.verbose


def train(config: TrainConfig, extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Run (or continue) the training run `config` describes. Raises ConfigError or DataError on
    bad input before anything in an existing run directory is changed."""
    validate(config)
    method = methods.build(config.method, attack_config(config), config.method_options)  # validated above
    # The strategy first: MultiWorkerMirroredStrategy must exist before any other TensorFlow op.
    try:
        strategy = distribute.make_strategy(config.strategy)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    chief = distribute.is_chief(strategy)
    if chief and config.verbose != 0:
        print(f"Loading {config.dataset} ...", flush=True)
    splits = data.load(config.dataset, data_dir=config.data_dir,
                       validation_size=_validation_size(config.validation_size), seed=config.seed)
    if config.train_examples:
        splits = dataclasses.replace(splits, x_train=splits.x_train[: config.train_examples],
                                     y_train=splits.y_train[: config.train_examples])
    steps_per_epoch = data.steps_per_epoch(len(splits.x_train), config.batch_size)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the "
                          f"{strategy.num_replicas_in_sync} replicas")
    try:  # the model must fit the data: checked before the run directory is touched
        models.check_model(config.model, splits.image_shape, splits.num_classes,
                           mean=splits.mean if config.normalize else None,
                           std=splits.std if config.normalize else None, depth=config.wrn_depth, width=config.wrn_width)
    except models.ModelError as e:
        raise ConfigError(f"--model={config.model}: {e}") from None
    resuming, lock = rundir.prepare_on_chief(config, strategy)
    run_dir = config.run_dir()
    # Non-chief workers write their share of checkpoints and the export to a private temporary
    # directory (deleted at the end) and nothing else.
    write_dir = distribute.worker_dir(run_dir, strategy)
    try:
        with _process_settings(config):
            return _train(config, method, extra_callbacks, strategy, splits, steps_per_epoch, resuming, write_dir)
    except (OSError, tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError) as e:
        if isinstance(e, tf.errors.ResourceExhaustedError) and not _is_disk_error(e):
            raise  # out of memory, not a write
        raise RunWriteError(_write_failure(e, run_dir)) from None
    finally:
        if lock is not None:
            lock.release()
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)


# What a failed write's TensorFlow message may hold; the one line keeps it.
_OS_REASONS = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO))


def _write_failure(error: Exception, run_dir: str) -> str:
    """The one line of a write that failed mid-run: the path, the OS's reason, the checkpoint a
    rerun continues from (if any), and how to continue, also on another disk."""
    where = getattr(error, "filename", None) or run_dir
    if isinstance(error, OSError):
        reason = files.os_error_text(error)
    else:
        text = " ".join(error.message.split())
        reason = next((r for r in _OS_REASONS if r.lower() in text.lower()), text[:300])
    try:
        latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    except (OSError, tf.errors.OpError):
        latest = None
    where_ckpt = os.path.join(run_dir, "checkpoints")
    resume = (f"the last complete checkpoint is {os.path.basename(latest)!r} in {where_ckpt!r}" if latest else
              "no checkpoint was complete yet, so a rerun starts the training again")
    return (f"writing {where!r} failed: {reason}; {resume}. Free space or fix permissions and rerun the same command "
            f"to continue, or move the run to a disk with space (mv {run_dir} NEW_DIR) and rerun with "
            "--output_dir=NEW_DIR")


def _train(config: TrainConfig, method: methods.Method, extra_callbacks: Sequence[keras.callbacks.Callback],
           strategy: tf.distribute.Strategy, splits: data.Splits, steps_per_epoch: int, resuming: bool,
           write_dir: str) -> TrainResult:
    run_dir = config.run_dir()
    chief = distribute.is_chief(strategy)

    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        mean, std = (splits.mean, splits.std) if config.normalize else (None, None)
        classifier = models.build_model(config.model, splits.image_shape, splits.num_classes, mean=mean, std=std,
                                        depth=config.wrn_depth, width=config.wrn_width)
        weight_average = (averaging.WeightAverage(classifier, config.ema_decay,
                                                  round(config.ema_start_epoch * steps_per_epoch))
                          if config.weight_averaging == "ema" else None)
        robust = RobustModel(classifier, method, weight_decay=config.weight_decay, seed=config.seed,
                             eval_attack=default_eval_attack(method.attack, config.eval_steps, config.eval_step_size),
                             eps_warmup_steps=round(config.eps_warmup_epochs * steps_per_epoch),
                             weight_average=weight_average, monitor_clean=config.monitor_clean,
                             monitor_clean_fraction=config.monitor_clean_fraction)
        jit = "auto" if config.jit_compile is None else config.jit_compile
        robust.compile(optimizer=build_optimizer(config, steps_per_epoch), jit_compile=jit)
        # The epoch's running metrics travel in mid-epoch checkpoints (checkpoints of earlier
        # versions lack them: `metric_state` is optional on restore).
        metric_state = callbacks_lib.MetricState(robust.metrics)
        parts = {"model": classifier, "optimizer": robust.optimizer, "metric_state": metric_state}
        if weight_average is not None:  # the averages beside the raw weights (`model`)
            parts["weight_average"] = weight_average
        checkpoint = tf.train.Checkpoint(**parts)
        manager = tf.train.CheckpointManager(checkpoint, os.path.join(write_dir, "checkpoints"), max_to_keep=3)
        # Every worker restores the chief's checkpoint (multi-worker runs need a shared output_dir),
        # which the chief has checked (`rundir.prepare`: damaged ones are set aside).
        latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")) if resuming else None
        if latest:
            checkpoints.restore(parts, latest, optional=("metric_state",))

    done = int(robust.optimizer.iterations.numpy())
    start_epoch, skip = divmod(done, steps_per_epoch)
    # A mid-epoch restart without the epoch's running metrics: its record covers only batches skip..
    metrics_lost = bool(skip) and start_epoch < config.epochs and int(metric_state.step.numpy()) != done
    if distribute.broadcast_from_chief(strategy, done) != done:
        raise ConfigError(f"this worker restored optimizer step {done} but the chief another one; multi-worker "
                          "runs need an output_dir that every worker sees")
    if chief and config.verbose != 0:
        print(banner(config, method, splits, strategy, steps_per_epoch,
                     resumed_at=(start_epoch, skip, done) if resuming else None), flush=True)
    elif chief and resuming:  # quiet, but a continued run says so
        print(f"Continuing {run_dir} at epoch {start_epoch + 1}, batch {skip} (optimizer step {done})."
              if start_epoch < config.epochs else f"Finishing {run_dir}: training done (optimizer step {done}).")
    if metrics_lost and chief and config.verbose != 0:
        print(f"note: the checkpoint holds no running metrics of epoch {start_epoch + 1}; its record averages "
              f"batches {skip}-{steps_per_epoch - 1} only (history.json: partial_from_batch)", flush=True)

    augment = data.is_cifar_like(splits) if config.augment is None else config.augment
    x_show, y_show = (splits.x_val, splits.y_val) if len(splits.x_val) else (splits.x_test, splits.y_test)
    show = next(iter(data.eval_dataset(x_show, y_show, batch_size=8, limit=8)))
    logdir = os.path.join(run_dir, "logs")
    summaries = [  # the chief's alone
        callbacks_lib.TensorBoard(logdir, update_freq=config.log_every_steps),
        callbacks_lib.AdversarialImages(os.path.join(logdir, "images"), show[0].numpy(), show[1].numpy()),
    ] if chief else []
    validation = (data.eval_dataset(splits.x_val, splits.y_val, batch_size=config.batch_size)
                  if len(splits.x_val) else None)
    best = callbacks_lib.BestRobustCheckpoint(
        os.path.join(write_dir, BEST_DIR), checkpoint=checkpoint, patience=config.early_stopping_patience,
        overfit_drop=config.overfit_drop, export_path=os.path.join(write_dir, "savedmodel_best"),
        state_file=os.path.join(run_dir, BEST_DIR, callbacks_lib.BestRobustCheckpoint.STATE_FILE),
        write_state=chief, verbose=chief) if validation is not None else None
    epoch_test = callbacks_lib.EpochTest(
        lambda: _epoch_test_accuracy(config, robust, splits)) if config.epoch_test_examples else None
    epoch_history = callbacks_lib.EpochHistory(os.path.join(run_dir, rundir.HISTORY_FILE), write=chief,
                                               partial_from_batch=skip if metrics_lost else None)
    # Collapse is judged on the validation images, else the test images (predictions only, no labels).
    probe, probe_what = (((splits.x_val, splits.y_val), "validation images") if len(splits.x_val) else
                         ((splits.x_test, splits.y_test), "test images"))
    collapse = callbacks_lib.CollapseDetector(
        evaluation.load_arrays(probe, _COLLAPSE_PROBE_IMAGES)[0], splits.num_classes, what=probe_what,
        logdir=os.path.join(logdir, "train") if chief else None, verbose=chief)
    callbacks = [
        callbacks_lib.Throughput(config.batch_size),  # its clock stops before the epoch's test
        *([epoch_test] if epoch_test else []),  # before the progress bar, the writers and the checkpoint
        collapse,  # likewise: its figures go to the writers
        callbacks_lib.RunProgress(config.epochs),
        callbacks_lib.StopOnNonFiniteLoss(),
        *summaries,
        callbacks_lib.StepCheckpoint(manager, config.checkpoint_every_steps, metric_state=metric_state,
                                     resume_metrics=bool(skip)),
        *([best] if best else []),
        epoch_history,
        *([callbacks_lib.StopOnCollapse(epoch_history, config.stop_on_collapse)] if config.stop_on_collapse else []),
        *extra_callbacks,
    ]

    def fit(first_epoch: int, last_epoch: int, skip_batches: int) -> None:
        stream = data.train_stream(splits.x_train, splits.y_train, batch_size=config.batch_size, seed=config.seed,
                                   start_epoch=first_epoch, skip_batches=skip_batches, augment=augment,
                                   autotune=config.autotune)
        robust.fit(stream, initial_epoch=first_epoch, epochs=last_epoch,
                   steps_per_epoch=steps_per_epoch - skip_batches, validation_data=validation, shuffle=False,
                   callbacks=callbacks, verbose=_verbosity(config))

    def stopped(epochs_done: int) -> bool:  # early stopping, also when a stopped run is rerun
        return best is not None and best.patience_exhausted(epochs_done)

    if start_epoch < config.epochs and skip:  # finish the interrupted epoch first
        fit(start_epoch, start_epoch + 1, skip)
        start_epoch += 1
    if start_epoch < config.epochs and not stopped(start_epoch):
        fit(start_epoch, config.epochs, 0)

    limit = config.eval_examples or None
    with robust.evaluated_weights():  # the weight averages, with averaging on
        export_path = export.export_classifier(classifier, os.path.join(write_dir, "savedmodel"))
        clean_acc, adv_acc = _final_test_accuracy(config, classifier, robust.eval_attack, splits, limit)
    if not chief:  # its copy is deleted; the run's export is the chief's
        export_path = os.path.abspath(os.path.join(run_dir, "savedmodel"))
    n_eval = min(len(splits.x_test), limit or len(splits.x_test))
    result = TrainResult(run_dir=run_dir, export_path=export_path, clean_accuracy=clean_acc,
                         adv_accuracy=adv_acc, eval_examples=n_eval,
                         steps=int(robust.optimizer.iterations.numpy()),
                         train_step_traces=robust.train_step_traces, history=epoch_history.history(),
                         collapsed_epochs=callbacks_lib.collapsed_epochs(epoch_history.epochs))
    if config.eval_suite != "none" and chief:
        with robust.evaluated_weights():
            report = evaluation.robust_accuracy(
                classifier, (splits.x_test, splits.y_test), attacks=config.eval_suite, eps_values=[config.eps],
                norm=config.norm, limit=limit, seed=config.seed, verbose=_verbosity(config) in (1, "auto"))
        report.save(os.path.join(run_dir, "evaluation"))
        result.suite_accuracy = {**{label: acc[0] for label, acc in report.accuracy.items()},
                                 "worst_case": report.worst_case[0]}
        result.suite_checks_passed = report.passed
    best_checkpoint = _best_checkpoint(best, run_dir)
    if best_checkpoint:
        _evaluate_best(result, best, best_checkpoint, checkpoint, robust, config, splits, limit, steps_per_epoch)
    if chief:
        hparams.write(logdir, config_lib.to_json(config), _final_metrics(result), result.steps, trial_id=run_dir)
    summary = dataclasses.asdict(result)
    summary["eval_attack"] = dataclasses.asdict(robust.eval_attack)
    summary["epochs"] = config.epochs  # what the run was finished for (a rerun may ask for more)
    if chief:
        files.write_json(os.path.join(run_dir, rundir.SUMMARY_FILE), summary)
    return result


def banner(config: TrainConfig, method: methods.Method, splits: data.Splits, strategy: tf.distribute.Strategy,
           steps_per_epoch: int, resumed_at: tuple[int, int, int] | None = None) -> str:
    """What is about to run, in a few lines: method and hyperparameters, threat model and training
    attack, model, data sizes, run directory (fresh or continued where), devices."""
    a = method.attack
    options = ", ".join(f"{k}={v}" for k, v in method_config(method)["options"].items())
    attack = ("no attack (clean inputs)" if method.name == "standard" else
              f"{a.steps} steps of {a.step_size:g}, model in {a.bn_mode} mode while attacking")
    h, w, c = splits.image_shape
    where = "new run"
    if resumed_at and resumed_at[0] >= config.epochs:
        where = f"training done (optimizer step {resumed_at[2]}); finishing its export and evaluation"
    elif resumed_at:
        where = (f"continuing at epoch {resumed_at[0] + 1}/{config.epochs}, batch {resumed_at[1]} "
                 f"(optimizer step {resumed_at[2]})")
    precision = config.dtype if config.mixed_precision == "none" else config.mixed_precision
    return "\n".join([
        f"tfrobust {__version__}: {method.name}" + (f" ({options})" if options else ""),
        f"  threat model: {config.norm} eps {config.eps:g}; training attack: {attack}",
        f"  model: {config.model}, {'normalized inside' if config.normalize else 'raw [0, 1] inputs'}, {precision}",
        f"  data: {config.dataset}, {len(splits.x_train):,} train / {len(splits.x_val):,} validation / "
        f"{len(splits.x_test):,} test images of {h}x{w}x{c}, {splits.num_classes} classes; "
        f"{steps_per_epoch} steps of {config.batch_size} per epoch, {config.epochs} epochs",
        f"  run: {config.run_dir()} ({where})",
        f"  devices: {strategy.num_replicas_in_sync} replica(s) ({distribute.describe(strategy)})",
    ])


def _best_checkpoint(best: callbacks_lib.BestRobustCheckpoint | None, run_dir: str) -> str | None:
    """The best checkpoint this process evaluates: the one it saved (the chief's is the run's, another
    worker's is its private copy of the same save), else the run's: a continued multi-worker run whose
    new epochs were not better leaves the other workers no copy of their own (the chief wrote it in an
    earlier process), and every worker must report the same best model."""
    if best is None:
        return None
    return best.latest_checkpoint or tf.train.latest_checkpoint(os.path.join(run_dir, BEST_DIR))


def _evaluate_best(result: TrainResult, best: callbacks_lib.BestRobustCheckpoint, path: str,
                   checkpoint: tf.train.Checkpoint,
                   robust: RobustModel, config: TrainConfig, splits: data.Splits, limit: int | None,
                   steps_per_epoch: int) -> None:
    """Fill in the best model's figures: restore its checkpoint (the last model is exported and
    evaluated by now) and evaluate it on the same test examples with the same PGD."""
    checkpoint.restore(path).expect_partial()
    with robust.evaluated_weights():
        clean, adv = _final_test_accuracy(config, robust.classifier, robust.eval_attack, splits, limit)
    done = result.steps // steps_per_epoch
    result.best_epoch, result.best_val_adv_accuracy = best.best_epoch, best.best_value
    result.best_clean_accuracy, result.best_adv_accuracy = clean, adv
    result.best_export_path = os.path.abspath(os.path.join(result.run_dir, "savedmodel_best"))
    result.stopped_epoch = done if done < config.epochs and best.patience_exhausted(done) else None
    result.overfitting = list(best.overfitting)


def _final_metrics(result: TrainResult) -> dict[str, float]:
    """The HParams metrics: test accuracies of the last (and best) model, and the suite's."""
    metrics = {"test/clean_accuracy": result.clean_accuracy, "test/adv_accuracy": result.adv_accuracy}
    if result.best_clean_accuracy is not None:
        metrics.update({"test/best_clean_accuracy": result.best_clean_accuracy,
                        "test/best_adv_accuracy": result.best_adv_accuracy})
    for attack, accuracy in (result.suite_accuracy or {}).items():
        metrics[f"suite/{attack}"] = accuracy
    return metrics


@contextlib.contextmanager
def _process_settings(config: TrainConfig):
    """The process-wide settings a run needs (floatx, the dtype policy, op determinism), set for the
    whole run and restored afterwards, so a later run or test in the same process starts clean."""
    # floatx before anything is built: models, metrics, attacks and the input pipelines follow it.
    policy = None if config.mixed_precision == "none" else config.mixed_precision
    with precision.floatx(config.dtype, policy), compat.op_determinism(config.deterministic):
        yield


def _final_test_accuracy(config: TrainConfig, classifier: keras.Model, attack: AttackConfig, splits: data.Splits,
                         limit: int | None) -> tuple[float, float]:
    """(clean, PGD) accuracy on the test examples by the evaluation package's PGD, the attack `test_step`
    validates with: PGD-eval_steps, step 2.5 eps / steps, uniform start, inference mode (with eps 0
    the PGD accuracy is the clean one)."""
    batch_size = max(config.batch_size, 100)
    if not attack.eps > 0:
        x, y = evaluation.load_arrays((splits.x_test, splits.y_test), limit)
        clean = float((classifier.predict(x, batch_size=batch_size, verbose=0).argmax(-1) == y).mean())
        return clean, clean
    spec = evaluation.AttackSpec("pgd", steps=attack.steps, step_size=attack.step_size or None, random_start=True)
    report = evaluation.robust_accuracy(classifier, (splits.x_test, splits.y_test), attacks=[spec],
                                        eps_values=[attack.eps], norm=attack.norm, batch_size=batch_size,
                                        limit=limit, seed=config.seed + 1, checks=None)
    return report.clean_accuracy, report.accuracy[spec.display][0]


def _epoch_test_accuracy(config: TrainConfig, robust: RobustModel, splits: data.Splits) -> dict[str, float]:
    """The per-epoch test figures of --epoch_test_examples: clean accuracy on every test image, and
    PGD accuracy (the final evaluation's attack) on the first N."""
    with robust.evaluated_weights():
        x, y = evaluation.load_arrays((splits.x_test, splits.y_test), None)
        predicted = robust.classifier.predict(x, batch_size=max(config.batch_size, 100), verbose=0).argmax(-1)
        _, adv = _final_test_accuracy(config, robust.classifier, robust.eval_attack, splits, config.epoch_test_examples)
    return {"test_clean_accuracy": float((predicted == y).mean()), "test_adv_accuracy": adv}


def _is_disk_error(error: tf.errors.OpError) -> bool:
    text = error.message.lower()
    return "no space" in text or "save" in text or "write" in text


def _validation_size(value: float) -> float | int:
    """Flags carry one number: below 1 a fraction of the training split, else a count."""
    return value if value < 1 else int(value)
