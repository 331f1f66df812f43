"""`TrainConfig`: every setting of a training run, each defined once with its help, choices, bounds
and resumability (`tfrobust.settings.setting`). The train runner's flags are generated from these
fields, `validate` checks them from the same metadata, and a run directory's config.json is
`to_json` of it.

Adding a setting is one field here (and the code that uses it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from tfrobust import settings
from tfrobust.attacks.ball import NORMS
from tfrobust.errors import ConfigError
from tfrobust.settings import setting

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "piecewise", "cosine", "cyclic")
WEIGHT_AVERAGING = ("none", "ema")
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
DTYPES = ("float32", "float64")
VERBOSITY = (0, 1, 2)
# Attacks longer than this are almost always a typo; --allow_expensive lets them run.
EXPENSIVE_ATTACK_STEPS = 1000
# The share of each batch the clean-accuracy monitor runs on for methods that never see x.
MONITOR_CLEAN_FRACTION = 0.125


def _method_names() -> list[str]:
    from tfrobust import methods
    return sorted(methods.REGISTRY)


def _attack_bn_modes() -> tuple[str, ...]:
    from tfrobust import methods
    return ("auto", *methods.BN_MODES)


def _model_names() -> tuple[str, ...]:
    from tfrobust import models
    return tuple(models.MODEL_NAMES)


def _strategies() -> tuple[str, ...]:
    from tfrobust import distribute
    return tuple(distribute.STRATEGIES)


def _eval_suites() -> tuple[str, ...]:
    from tfrobust import evaluation
    return ("none", *sorted(evaluation.SUITES))


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run. Field names are the runner's flag names."""

    method: str = setting("pgd_at", "Training method.", choices=_method_names)
    method_options: dict[str, Any] = setting(
        help="The method's hyperparameters (the runner's method flags, e.g. --beta); unset: the method's default.",
        default_factory=dict, flag=False)
    # data
    dataset: str = setting("digits", "digits (offline default), a TFDS name (mnist, fashion_mnist, cifar10, "
                           "cifar100, svhn_cropped) or npz:PATH.")
    data_dir: str | None = setting(None, "TFDS data directory.")
    validation_size: float = setting(0.1, "Held out from train for per-epoch robust validation: a fraction below "
                                     "1, else a count; 0 for none.", low=0)
    train_examples: int = setting(0, "Use only the first N training examples (0: all).", low=0)
    augment: bool | None = setting(None, "Pad-4 crop and flip; auto: for 32x32 colour data.")
    # model
    model: str = setting("tiny_cnn", "Architecture.", choices=_model_names)
    normalize: bool = setting(True, "Normalize inputs by the training set's channel mean/std inside the model.")
    wrn_depth: int = setting(34, "wide_resnet depth (6k+4).", low=10)
    wrn_width: int = setting(10, "wide_resnet width factor.", low=1)
    # optimization
    epochs: int = setting(20, "Training epochs.", low=1, resumable=True)
    batch_size: int = setting(64, "Global batch size (split across replicas).", low=1)
    optimizer: str = setting("sgd", "Optimizer.", choices=OPTIMIZERS)
    lr: float = setting(0.05, "Initial learning rate.", low=0, low_open=True)
    momentum: float = setting(0.9, "SGD momentum.", low=0, high=1, high_open=True)
    nesterov: bool = setting(False, "Nesterov momentum.")
    lr_schedule: str = setting("constant", "Learning-rate schedule.", choices=LR_SCHEDULES)
    lr_decay_epochs: tuple[int, ...] = setting((), "piecewise: epochs at which the rate is multiplied by "
                                               "lr_decay_factor.")
    lr_decay_factor: float = setting(0.1, "piecewise decay factor.", low=0, high=1, low_open=True)
    lr_peak_epoch: float = setting(0.0, "cyclic: the epoch at which the rate peaks at --lr, rising linearly from 0 "
                                   "and falling linearly to 0 at the last epoch (0: half of --epochs).", low=0)
    weight_decay: float = setting(0.0, "Coupled L2 weight decay (PyTorch SGD's).", low=0)
    weight_averaging: str = setting("none", "Keep an exponential moving average (ema) of all model variables "
                                    "(weights and batch-norm statistics); validation, the final evaluation and "
                                    "savedmodel/ use it.", choices=WEIGHT_AVERAGING)
    ema_decay: float = setting(0.999, "ema: decay d of avg <- d avg + (1 - d) w, once per step.", low=0, high=1,
                               high_open=True)
    ema_start_epoch: float = setting(0.0, "ema: the average follows the weights exactly until this epoch, then "
                                     "averages.", low=0)
    # threat model and training attack
    eps: float = setting(0.1, "Perturbation budget (pixels in [0, 1]).", low=0)
    step_size: float = setting(0.025, "Training attack step size.", low=0)
    attack_steps: int = setting(10, "Training attack steps (ATENT: Langevin steps).", low=0)
    norm: str = setting("linf", "Threat model norm.", choices=NORMS)
    attack_bn_mode: str = setting("auto", "Batch-norm/dropout mode while attacking in training; auto: the "
                                  "method's reference.", choices=_attack_bn_modes)
    eps_warmup_epochs: float = setting(0.0, "Ramp the training attack's eps and step size linearly from 0 to "
                                       "--eps over this many epochs (0: no ramp). Evaluation uses the full eps.",
                                       low=0)
    early_stopping_patience: int = setting(0, "Stop after N epochs without a better validation PGD accuracy "
                                           "(0: off; needs a validation split).", low=0, resumable=True)
    overfit_drop: float = setting(0.2, "Report catastrophic overfitting when the validation PGD accuracy falls "
                                  "more than this (a fraction, 0.2 = 20 points) below the best so far.", low=0,
                                  high=1, resumable=True)
    stop_on_collapse: int = setting(0, "End the run (exit code 5) after N collapsed epochs in a row: one class "
                                    "predicted for 90% or more of the validation (else test) images, or a training "
                                    "loss within 1% of log(K) all epoch (0: only report collapses).", low=0,
                                    resumable=True)
    eval_steps: int = setting(20, "PGD steps of validation and the final test evaluation.", low=1)
    eval_step_size: float = setting(0.0, "Step size of that PGD (0: 2.5 eps / eval_steps, Madry et al.'s).", low=0)
    epoch_test_examples: int = setting(0, "After every epoch, clean accuracy on all test images and the evaluation "
                                       "PGD on the first N of them, as test_* in history.json and TensorBoard "
                                       "(learning curves as papers plot them, not for choosing a model; 0: off).",
                                       low=0, resumable=True)
    eval_examples: int = setting(1000, "Test examples in the final evaluation (0: all).", low=0, resumable=True)
    eval_suite: str = setting("none", "After training, also run this evaluation suite at --eps on the "
                              "eval_examples, with its sanity checks; report in RUN/evaluation.",
                              choices=_eval_suites, resumable=True)
    # run
    seed: int = setting(0, "Seed of data order, initialization and attack noise.", low=0)
    deterministic: bool = setting(False, "Enable TensorFlow op determinism (slower).")
    output_dir: str = setting("", "Run directory (default runs/METHOD-DATASET). A run is its contents: moved or "
                              "copied elsewhere, it continues from there.", resumable=True)
    overwrite: bool = setting(False, "Replace an existing run in output_dir.", resumable=True)
    resume: bool = setting(True, "Continue an unfinished run found in output_dir.", resumable=True)
    log_every_steps: int = setting(50, "TensorBoard step-level scalars every N steps.", low=1, resumable=True)
    checkpoint_every_steps: int = setting(0, "Also checkpoint every N steps (0: epoch ends only).", low=0)
    allow_expensive: bool = setting(False, f"Allow attacks of more than {EXPENSIVE_ATTACK_STEPS} steps.",
                                    resumable=True)
    # speed and scale
    strategy: str = setting("auto", "Distribution strategy.", choices=_strategies)
    jit_compile: bool | None = setting(None, "XLA-compile the train step; auto: Keras' choice (off on a CPU).")
    mixed_precision: str = setting("none", "Mixed-precision policy.", choices=MIXED_PRECISION)
    dtype: str = setting("float32", "Compute dtype of models, attacks, losses and input pipelines (float64: "
                         "for reference comparisons; not with mixed precision).", choices=DTYPES)
    monitor_clean: bool = setting(True, "Log clean training accuracy; for methods that never see x (pgd_at, atent) "
                                  "it costs an inference pass on part of each batch (monitor_clean_fraction).",
                                  resumable=True)
    monitor_clean_fraction: float = setting(
        MONITOR_CLEAN_FRACTION, "The share of each batch the clean-accuracy monitor of pgd_at and atent runs on "
        "(its first images; 1: all, one inference pass per step, about 4% of a PGD-10 step).", low=0, high=1,
        low_open=True, resumable=True)
    autotune: bool = setting(False, "tf.data autotuning (off by default: on 2-core hosts it can stall a core).")
    verbose: int | None = setting(None, "Keras verbosity: 1 progress bars, 2 a line per epoch; auto: Keras' "
                                  "choice.", choices=VERBOSITY, resumable=True)

    def run_dir(self) -> str:
        name = self.dataset.replace("npz:", "npz-").replace(os.sep, "_")
        return os.path.normpath(self.output_dir or os.path.join("runs", f"{self.method}-{name}"))


SPECS = settings.specs(TrainConfig)
RESUMABLE = tuple(s.name for s in SPECS if s.resumable)


def to_json(config: TrainConfig) -> dict[str, Any]:
    """config.json's form: tri-states as their flag spelling (auto/true/false), tuples as lists."""
    d = dataclasses.asdict(config)
    for spec in SPECS:
        value = d[spec.name]
        if spec.kind is bool and spec.optional:
            d[spec.name] = settings.format_tristate(value)
        elif spec.optional and spec.choices is not None and spec.kind is int:
            d[spec.name] = settings.AUTO if value is None else str(value)
        elif spec.kind is tuple:
            d[spec.name] = list(value)
    return d


def from_json(payload: dict[str, Any]) -> TrainConfig:
    """The inverse of `to_json` (also reads the config.json of earlier versions). Unknown keys are
    an error."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(payload) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}")
    values = dict(payload)
    for spec in SPECS:
        if spec.name not in values:
            continue
        value = values[spec.name]
        if spec.kind is bool and spec.optional:
            values[spec.name] = settings.parse_tristate(value)
        elif spec.optional and spec.kind is int and isinstance(value, str):
            values[spec.name] = None if value == settings.AUTO else _int(spec.name, value)
        elif spec.kind is tuple and isinstance(value, (list, tuple)):
            values[spec.name] = tuple(_int(spec.name, v) for v in value)
    return TrainConfig(**values)


def _int(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be integers, got {value!r}") from None


def validate(config: TrainConfig) -> None:
    """Raise ConfigError (one line) for any value the run cannot use: each setting against its own
    metadata, then the rules that tie settings together, then the method's hyperparameters. Imports
    no TensorFlow, so the runner checks its flags before importing it."""
    settings.check(config)

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    decay = list(config.lr_decay_epochs)
    need(decay == sorted(set(decay)) and all(e > 0 for e in decay),
         f"lr_decay_epochs must be increasing positive epochs, got {decay}")
    need(config.lr_schedule != "piecewise" or decay, "lr_schedule=piecewise needs lr_decay_epochs")
    need(not config.early_stopping_patience or config.validation_size > 0,
         "early_stopping_patience needs a validation split (--validation_size > 0)")
    need(config.lr_schedule != "cyclic" or config.lr_peak_epoch < config.epochs,
         f"lr_peak_epoch must be below epochs ({config.epochs}), got {config.lr_peak_epoch:g}")
    need(config.norm != "linf" or config.eps <= 1,
         f"eps must be in [0, 1] for linf (pixels are in [0, 1]), got {config.eps}")
    need(config.validation_size < 1 or float(config.validation_size).is_integer(),
         f"validation_size must be a fraction below 1 or a whole count, got {config.validation_size}")
    need(config.method == "standard" or config.attack_steps == 0 or config.step_size > 0,
         f"step_size must be > 0 for an attack of {config.attack_steps} steps (or set --attack_steps=0)")
    longest = max(config.attack_steps, config.eval_steps)
    need(longest <= EXPENSIVE_ATTACK_STEPS or config.allow_expensive,
         f"an attack of {longest} steps per batch would take very long; pass --allow_expensive if you mean it")
    need(config.dtype == "float32" or config.mixed_precision == "none",
         f"dtype={config.dtype} cannot be combined with mixed_precision={config.mixed_precision}")
    need(config.eval_suite == "none" or config.eps > 0, "eval_suite needs eps > 0 (the suite attacks at --eps)")
    from tfrobust import methods
    wanted = methods.hyperparameters(config.method)
    unknown = sorted(set(config.method_options) - set(wanted))
    need(not unknown, f"method {config.method} has no hyperparameter(s) {unknown}; it takes {list(wanted)}")
    for spec in settings.specs(methods.get(config.method)):  # each against its `setting`, as the method does
        message = settings.problem(spec, config.method_options.get(spec.name, spec.default))
        need(message is None, f"method {config.method}: {message}")
    try:  # the method's own rules on the attack (e.g. ATENT's steps >= 1), still without TensorFlow
        methods.build(config.method, attack_config(config), config.method_options)
    except ValueError as e:
        raise ConfigError(f"method {config.method}: {e}") from None


def attack_config(config: TrainConfig):
    """The training attack (a `methods.AttackConfig`); batch-norm mode 'auto' takes the method's
    reference mode."""
    from tfrobust import methods

    bn_mode = config.attack_bn_mode
    if bn_mode == "auto":
        bn_mode = methods.get(config.method).reference_bn_mode
    return methods.AttackConfig(eps=config.eps, step_size=config.step_size, steps=config.attack_steps,
                                norm=config.norm, bn_mode=bn_mode)
