"""A training run: a `TrainConfig` in; a trained, checkpointed, exported and evaluated model out.

This is the whole job of `runners/train.py`, as a library call:

    result = tfrobust.training.train(TrainConfig(method="atent", dataset="mnist", model="small_cnn"))

The settings are defined in `tfrobust.config`; the run directory's layout and the rules for
continuing a run are in `tfrobust.rundir`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Sequence

import keras
import tensorflow as tf

from tfrobust import callbacks as callbacks_lib
from tfrobust import data, distribute, evaluation, export, files, methods, models, rundir
from tfrobust.config import TrainConfig, validate
from tfrobust.errors import ConfigError, RunWriteError
from tfrobust.methods.base import AttackConfig
from tfrobust.robust_model import RobustModel, default_eval_attack

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


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """The learning rate: a constant, or a per-step piecewise-constant or cosine schedule."""
    if config.lr_schedule == "piecewise":
        boundaries = [e * steps_per_epoch for e in config.lr_decay_epochs]
        values = [config.lr * config.lr_decay_factor**i for i in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=config.epochs * steps_per_epoch)
    return config.lr


def build_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = learning_rate(config, steps_per_epoch)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.SGD(lr, momentum=config.momentum, nesterov=config.nesterov)


def attack_config(config: TrainConfig) -> AttackConfig:
    """The training attack; batch-norm mode 'auto' takes the method's reference mode."""
    bn_mode = config.attack_bn_mode
    if bn_mode == "auto":
        bn_mode = methods.get(config.method).reference_bn_mode
    return AttackConfig(eps=config.eps, step_size=config.step_size, steps=config.attack_steps,
                        norm=config.norm, bn_mode=bn_mode)


def _verbosity(config: TrainConfig) -> int | str:
    return "auto" if config.verbose is None else config.verbose


def train(config: TrainConfig, extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Run (or continue) the training run `config` describes. Raises ConfigError or DataError on
    bad input before anything in an existing run directory is changed."""
    validate(config)
    try:  # the method checks its hyperparameters: before anything is loaded or written
        method = methods.build(config.method, attack_config(config), config.method_options)
    except ValueError as e:
        raise ConfigError(f"method {config.method}: {e}") from None
    # The strategy first: MultiWorkerMirroredStrategy must exist before any other TensorFlow op.
    try:
        strategy = distribute.make_strategy(config.strategy)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    chief = distribute.is_chief(strategy)
    splits = data.load(config.dataset, data_dir=config.data_dir,
                       validation_size=_validation_size(config.validation_size), seed=config.seed)
    if config.train_examples:
        splits = dataclasses.replace(splits, x_train=splits.x_train[: config.train_examples],
                                     y_train=splits.y_train[: config.train_examples])
    steps_per_epoch = data.steps_per_epoch(len(splits.x_train), config.batch_size)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the "
                          f"{strategy.num_replicas_in_sync} replicas")
    resuming = rundir.prepare_on_chief(config, strategy)
    run_dir = config.run_dir()
    # Non-chief workers write their share of checkpoints and the export to a private temporary
    # directory (deleted at the end) and nothing else.
    write_dir = distribute.worker_dir(run_dir, strategy)
    try:
        return _train(config, method, extra_callbacks, strategy, splits, steps_per_epoch, resuming, write_dir)
    except (OSError, tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError) as e:
        if isinstance(e, tf.errors.ResourceExhaustedError) and not _is_disk_error(e):
            raise  # out of memory, not a write
        where = getattr(e, "filename", None) or run_dir
        reason = files.os_error_text(e) if isinstance(e, OSError) else " ".join(e.message.split())[:200]
        raise RunWriteError(f"writing {where!r} failed: {reason}; the last checkpoint in "
                            f"{os.path.join(run_dir, 'checkpoints')!r} is intact: free space or fix permissions, "
                            "then rerun the same command to continue") from None
    finally:
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)


def _train(config: TrainConfig, method: methods.Method, extra_callbacks: Sequence[keras.callbacks.Callback],
           strategy: tf.distribute.Strategy, splits: data.Splits, steps_per_epoch: int, resuming: bool,
           write_dir: str) -> TrainResult:
    run_dir = config.run_dir()
    chief = distribute.is_chief(strategy)

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("float32" if config.mixed_precision == "none" else config.mixed_precision)

    with strategy.scope():
        mean, std = (splits.mean, splits.std) if config.normalize else (None, None)
        classifier = models.build_model(config.model, splits.image_shape, splits.num_classes, mean=mean, std=std,
                                        depth=config.wrn_depth, width=config.wrn_width)
        robust = RobustModel(classifier, method, weight_decay=config.weight_decay, seed=config.seed,
                             eval_attack=default_eval_attack(method.attack, config.eval_steps),
                             eps_warmup_steps=round(config.eps_warmup_epochs * steps_per_epoch),
                             monitor_clean=config.monitor_clean)
        jit = "auto" if config.jit_compile is None else config.jit_compile
        robust.compile(optimizer=build_optimizer(config, steps_per_epoch), jit_compile=jit)
        checkpoint = tf.train.Checkpoint(model=classifier, optimizer=robust.optimizer)
        manager = tf.train.CheckpointManager(checkpoint, os.path.join(write_dir, "checkpoints"), max_to_keep=3)
        # Every worker restores the chief's checkpoint (multi-worker runs need a shared output_dir).
        latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")) if resuming else None
        if latest:
            checkpoint.restore(latest).assert_existing_objects_matched()

    done = int(robust.optimizer.iterations.numpy())
    start_epoch, skip = divmod(done, steps_per_epoch)
    if distribute.broadcast_from_chief(strategy, done) != done:
        raise ConfigError(f"this worker restored optimizer step {done} but the chief another one; multi-worker "
                          "runs need an output_dir that every worker sees")
    if resuming and chief:
        print(f"Continuing {run_dir} at epoch {start_epoch + 1}, batch {skip} (optimizer step {done}).")

    augment = data.is_cifar_like(splits) if config.augment is None else config.augment
    x_show, y_show = (splits.x_val, splits.y_val) if len(splits.x_val) else (splits.x_test, splits.y_test)
    show = next(iter(data.eval_dataset(x_show, y_show, batch_size=8, limit=8)))
    logdir = os.path.join(run_dir, "logs")
    summaries = [  # the chief's alone
        callbacks_lib.TensorBoard(logdir, update_freq=config.log_every_steps),
        callbacks_lib.AdversarialImages(os.path.join(logdir, "images"), show[0].numpy(), show[1].numpy()),
    ] if chief else []
    callbacks = [
        callbacks_lib.StopOnNonFiniteLoss(),
        callbacks_lib.Throughput(config.batch_size),
        *summaries,
        callbacks_lib.StepCheckpoint(manager, config.checkpoint_every_steps),
        *extra_callbacks,
    ]
    validation = (data.eval_dataset(splits.x_val, splits.y_val, batch_size=config.batch_size)
                  if len(splits.x_val) else None)
    history: dict[str, list[float]] = {}

    def fit(first_epoch: int, last_epoch: int, skip_batches: int) -> None:
        stream = data.train_stream(splits.x_train, splits.y_train, batch_size=config.batch_size, seed=config.seed,
                                   start_epoch=first_epoch, skip_batches=skip_batches, augment=augment,
                                   autotune=config.autotune)
        h = robust.fit(stream, initial_epoch=first_epoch, epochs=last_epoch,
                       steps_per_epoch=steps_per_epoch - skip_batches, validation_data=validation, shuffle=False,
                       callbacks=callbacks, verbose=_verbosity(config))
        for k, v in h.history.items():
            history.setdefault(k, []).extend(float(x) for x in v)

    if start_epoch < config.epochs and skip:  # finish the interrupted epoch first
        fit(start_epoch, start_epoch + 1, skip)
        start_epoch += 1
    if start_epoch < config.epochs:
        fit(start_epoch, config.epochs, 0)

    export_path = export.export_classifier(classifier, os.path.join(write_dir, "savedmodel"))
    if not chief:  # its copy is deleted; the run's export is the chief's
        export_path = os.path.abspath(os.path.join(run_dir, "savedmodel"))
    limit = config.eval_examples or None
    test = data.eval_dataset(splits.x_test, splits.y_test, batch_size=max(config.batch_size, 100), limit=limit)
    final = robust.evaluate(test, verbose=0, return_dict=True)
    n_eval = min(len(splits.x_test), limit or len(splits.x_test))
    result = TrainResult(run_dir=run_dir, export_path=export_path, clean_accuracy=float(final["clean_accuracy"]),
                         adv_accuracy=float(final["adv_accuracy"]), eval_examples=n_eval,
                         steps=int(robust.optimizer.iterations.numpy()),
                         train_step_traces=robust.train_step_traces, history=history)
    if config.eval_suite != "none" and chief:
        report = evaluation.robust_accuracy(
            classifier, (splits.x_test, splits.y_test), attacks=config.eval_suite, eps_values=[config.eps],
            norm=config.norm, limit=limit, seed=config.seed, verbose=_verbosity(config) in (1, "auto"))
        report.save(os.path.join(run_dir, "evaluation"))
        result.suite_accuracy = {**{label: acc[0] for label, acc in report.accuracy.items()},
                                 "worst_case": report.worst_case[0]}
        result.suite_checks_passed = report.passed
    summary = dataclasses.asdict(result)
    summary["eval_attack"] = dataclasses.asdict(robust.eval_attack)
    if chief:
        files.write_json(os.path.join(run_dir, rundir.SUMMARY_FILE), summary)
    return result


def _is_disk_error(error: tf.errors.OpError) -> bool:
    text = error.message.lower()
    return "no space" in text or "save" in text or "write" in text


def _validation_size(value: float) -> float | int:
    """Flags carry one number: below 1 a fraction of the training split, else a count."""
    return value if value < 1 else int(value)
