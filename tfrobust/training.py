"""A training run: a `TrainConfig` in; a trained, checkpointed, exported and evaluated model out.

This is the whole job of `runners/train.py`, as a library call:

    result = tfrobust.training.train(TrainConfig(method="atent", dataset="mnist", model="small_cnn"))

Run directory layout (`config.output_dir`):
    config.json      the configuration, written first; a rerun must match it to continue
    checkpoints/     tf.train checkpoints numbered by optimizer step (model, optimizer, RNG state)
    logs/            TensorBoard: train/ and validation/ scalars, images/ adversarial image grids
    savedmodel/      the exported classifier (`tfrobust.export`)
    summary.json     final clean and PGD accuracy on the test split; its presence marks a finished run
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfrobust import callbacks as callbacks_lib
from tfrobust import data, distribute, evaluation, export, methods, models
from tfrobust.methods.base import AttackConfig
from tfrobust.robust_model import RobustModel, default_eval_attack

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "piecewise", "cosine")
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
ATTACK_BN_MODES = ("auto", "train", "eval")
# Fields a rerun may change without starting a different run.
_RESUMABLE_CHANGES = ("epochs", "overwrite", "resume", "verbose", "log_every_steps", "eval_examples",
                      "eval_suite")


class ConfigError(ValueError):
    """A configuration or run directory that cannot be used; the message is one line."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run. Field names are the runner's flag names."""

    method: str = "pgd_at"
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # data
    dataset: str = "digits"
    data_dir: str | None = None
    validation_size: float = 0.1
    train_examples: int = 0  # use only the first N training examples (0: all); for quick runs
    augment: str = "auto"  # auto: pad-crop-flip for 32x32 colour data
    # model
    model: str = "tiny_cnn"
    normalize: bool = True
    wrn_depth: int = 34
    wrn_width: int = 10
    # optimization
    epochs: int = 20
    batch_size: int = 64  # global batch, split across replicas
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    lr_schedule: str = "constant"
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_factor: float = 0.1
    weight_decay: float = 0.0
    # threat model and training attack
    eps: float = 0.1
    step_size: float = 0.025
    attack_steps: int = 10
    norm: str = "linf"
    attack_bn_mode: str = "auto"  # auto: the method's reference mode
    eps_warmup_epochs: float = 0.0  # ramp the training eps linearly from 0 over this many epochs
    eval_steps: int = 20
    eval_examples: int = 1000  # test examples in the final PGD evaluation (0: all)
    eval_suite: str = "none"  # also run this evaluation suite (evaluation.SUITES) on those examples
    # run
    seed: int = 0
    deterministic: bool = False
    output_dir: str = ""
    overwrite: bool = False
    resume: bool = True
    log_every_steps: int = 50
    checkpoint_every_steps: int = 0  # 0: at epoch ends only
    # speed and scale
    strategy: str = "auto"
    jit_compile: str = "auto"
    mixed_precision: str = "none"
    autotune: bool = False
    verbose: str = "auto"

    def run_dir(self) -> str:
        name = self.dataset.replace("npz:", "npz-").replace(os.sep, "_")
        return self.output_dir or os.path.join("runs", f"{self.method}-{name}")


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


def validate(config: TrainConfig) -> None:
    """Raise ConfigError (one line) for any value the run cannot use."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(config.method in methods.REGISTRY, f"method must be one of {sorted(methods.REGISTRY)}, got {config.method!r}")
    need(config.model in models.MODEL_NAMES, f"model must be one of {list(models.MODEL_NAMES)}, got {config.model!r}")
    need(config.epochs >= 1, f"epochs must be >= 1, got {config.epochs}")
    need(config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}")
    need(config.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
    need(config.lr > 0 and math.isfinite(config.lr), f"lr must be a positive number, got {config.lr}")
    need(0 <= config.momentum < 1, f"momentum must be in [0, 1), got {config.momentum}")
    need(config.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {config.lr_schedule!r}")
    need(list(config.lr_decay_epochs) == sorted(set(config.lr_decay_epochs)) and all(e > 0 for e in config.lr_decay_epochs),
         f"lr_decay_epochs must be increasing positive epochs, got {list(config.lr_decay_epochs)}")
    need(config.lr_schedule != "piecewise" or config.lr_decay_epochs, "lr_schedule=piecewise needs lr_decay_epochs")
    need(0 < config.lr_decay_factor <= 1, f"lr_decay_factor must be in (0, 1], got {config.lr_decay_factor}")
    need(config.weight_decay >= 0, f"weight_decay must be >= 0, got {config.weight_decay}")
    need(config.norm in ("linf", "l2"), f"norm must be linf or l2, got {config.norm!r}")
    limit = 1.0 if config.norm == "linf" else float("inf")
    need(0 <= config.eps <= limit and math.isfinite(config.eps),
         f"eps must be in [0, 1] for linf (pixels are in [0, 1]) and finite >= 0 for l2, got {config.eps}")
    need(config.step_size >= 0, f"step_size must be >= 0, got {config.step_size}")
    need(config.attack_steps >= 0 and config.eval_steps >= 0, "attack_steps and eval_steps must be >= 0")
    need(config.attack_bn_mode in ATTACK_BN_MODES, f"attack_bn_mode must be one of {ATTACK_BN_MODES}, got {config.attack_bn_mode!r}")
    need(config.augment in ("auto", "true", "false"), f"augment must be auto, true or false, got {config.augment!r}")
    need(config.validation_size >= 0, f"validation_size must be >= 0, got {config.validation_size}")
    need(config.train_examples >= 0, f"train_examples must be >= 0, got {config.train_examples}")
    need(config.eps_warmup_epochs >= 0, f"eps_warmup_epochs must be >= 0, got {config.eps_warmup_epochs}")
    need(config.eval_examples >= 0, f"eval_examples must be >= 0, got {config.eval_examples}")
    suites = ("none", *evaluation.SUITES)
    need(config.eval_suite in suites, f"eval_suite must be one of {suites}, got {config.eval_suite!r}")
    need(config.eval_suite == "none" or config.eps > 0, "eval_suite needs eps > 0 (the suite attacks at --eps)")
    need(config.log_every_steps >= 1, f"log_every_steps must be >= 1, got {config.log_every_steps}")
    need(config.checkpoint_every_steps >= 0, f"checkpoint_every_steps must be >= 0, got {config.checkpoint_every_steps}")
    need(config.strategy in distribute.STRATEGIES, f"strategy must be one of {distribute.STRATEGIES}, got {config.strategy!r}")
    need(config.jit_compile in ("auto", "true", "false"), f"jit_compile must be auto, true or false, got {config.jit_compile!r}")
    need(config.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}, got {config.mixed_precision!r}")
    need(config.verbose in ("auto", "0", "1", "2"), f"verbose must be auto, 0, 1 or 2, got {config.verbose!r}")
    unknown = set(config.method_options) - set(methods.hyperparameters(config.method))
    need(not unknown, f"method {config.method} has no hyperparameter(s) {sorted(unknown)}; it takes {list(methods.hyperparameters(config.method))}")


def config_to_json(config: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["lr_decay_epochs"] = list(config.lr_decay_epochs)
    return d


def prepare_run_dir(config: TrainConfig) -> bool:
    """Create or check the run directory; True when an unfinished run there is to be continued.

    A directory that is not a tfrobust run is never touched. A finished run, or one with a
    different configuration, is replaced only with `overwrite`.
    """
    run_dir = config.run_dir()
    config_path = os.path.join(run_dir, "config.json")
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        if not os.path.isfile(config_path):
            raise ConfigError(f"output directory {run_dir!r} exists, is not empty and holds no tfrobust run; "
                              "choose another --output_dir")
        if config.overwrite:
            shutil.rmtree(run_dir)
        else:
            try:
                with open(config_path) as f:
                    saved = json.load(f)
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot read {config_path}: {e}; pass --overwrite to replace the run") from None
            current = config_to_json(config)
            changed = sorted(k for k in set(saved) | set(current)
                             if k not in _RESUMABLE_CHANGES and saved.get(k) != current.get(k))
            if os.path.exists(os.path.join(run_dir, "summary.json")) and saved.get("epochs") == config.epochs:
                raise ConfigError(f"{run_dir!r} holds a finished run; pass --overwrite to replace it, or another --output_dir")
            if changed:
                raise ConfigError(f"{run_dir!r} holds a run with different {', '.join(changed)}; "
                                  "pass --overwrite to replace it, or another --output_dir")
            if not config.resume:
                raise ConfigError(f"{run_dir!r} holds an unfinished run and --noresume was given; "
                                  "pass --overwrite to replace it")
            _write_json(config_path, config_to_json(config))
            return True
    os.makedirs(run_dir, exist_ok=True)
    _write_json(config_path, config_to_json(config))
    return False


def _write_json(path: str, payload: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


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
    if config.attack_bn_mode == "auto":
        bn_training = getattr(methods.get(config.method), "reference_attack_bn_training", False)
    else:
        bn_training = config.attack_bn_mode == "train"
    return AttackConfig(eps=config.eps, step_size=config.step_size, steps=config.attack_steps,
                        norm=config.norm, bn_training=bn_training)


def _verbosity(config: TrainConfig) -> int | str:
    return "auto" if config.verbose == "auto" else int(config.verbose)


def train(config: TrainConfig, extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Run (or continue) the training run `config` describes. Raises ConfigError or DataError on
    bad input before anything in an existing run directory is changed."""
    validate(config)
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
    resuming = _prepare_run_dir_on_chief(config, strategy)
    run_dir = config.run_dir()
    # Non-chief workers write their share of checkpoints and the export to a private temporary
    # directory (deleted at the end) and nothing else.
    write_dir = distribute.worker_dir(run_dir, strategy)
    try:
        return _train(config, extra_callbacks, strategy, splits, steps_per_epoch, resuming, write_dir)
    finally:
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)


def _prepare_run_dir_on_chief(config: TrainConfig, strategy: tf.distribute.Strategy) -> bool:
    """`prepare_run_dir` on the chief; every worker learns its verdict (fresh run or continue)."""
    status, error = 0, None  # 0: refused, 1: fresh run, 2: continue
    if distribute.is_chief(strategy):
        try:
            status = 2 if prepare_run_dir(config) else 1
        except ConfigError as e:
            error = e
    status = distribute.broadcast_from_chief(strategy, status)
    if error is not None:
        raise error
    if status == 0:
        raise ConfigError(f"the chief worker refused the run directory {config.run_dir()!r}; see its error")
    return status == 2


def _train(config: TrainConfig, extra_callbacks: Sequence[keras.callbacks.Callback],
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
        method = methods.build(config.method, attack_config(config), config.method_options)
        robust = RobustModel(classifier, method, weight_decay=config.weight_decay, seed=config.seed,
                             eval_attack=default_eval_attack(method.attack, config.eval_steps),
                             eps_warmup_steps=round(config.eps_warmup_epochs * steps_per_epoch))
        jit = {"auto": "auto", "true": True, "false": False}[config.jit_compile]
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

    augment = config.augment == "true" or (config.augment == "auto" and data.is_cifar_like(splits))
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
        _write_json(os.path.join(run_dir, "summary.json"), summary)
    return result


def _validation_size(value: float) -> float | int:
    """Flags carry one number: below 1 a fraction of the training split, else a count."""
    return value if value < 1 else int(value)
