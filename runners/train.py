"""Train a classifier with an adversarial training method.

    python runners/train.py --method=atent
    python runners/train.py --flagfile=flags/mnist_trades.cfg --output_dir=runs/trades

Flags in, one `tfrobust.training.train` call out. A bad flag value ends with one line on stderr
and exit code 2; an existing run directory is continued (same configuration), or refused.
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags, logging

from tfrobust import cli

with cli.native_stderr_captured():
    from tfrobust import data, distribute, evaluation, methods, models, training
    from tfrobust.callbacks import NonFiniteLossError
    from tfrobust.export import ExportError

_DEFAULTS = training.TrainConfig()
_D = lambda name: getattr(_DEFAULTS, name)  # noqa: E731

flags.DEFINE_enum("method", _D("method"), sorted(methods.REGISTRY), "Training method.")
flags.DEFINE_string("dataset", _D("dataset"), "digits (offline default), a TFDS name "
                    f"({', '.join(data.TFDS_NAMES)}) or npz:PATH.")
flags.DEFINE_string("data_dir", _D("data_dir"), "TFDS data directory.")
flags.DEFINE_float("validation_size", _D("validation_size"), "Held out from train for per-epoch robust "
                   "validation: a fraction below 1, else a count; 0 for none.", lower_bound=0)
flags.DEFINE_integer("train_examples", _D("train_examples"), "Use only the first N training examples (0: all).",
                     lower_bound=0)
flags.DEFINE_enum("augment", _D("augment"), ["auto", "true", "false"], "Pad-4 crop and flip; auto: for 32x32 colour data.")
flags.DEFINE_enum("model", _D("model"), list(models.MODEL_NAMES), "Architecture.")
flags.DEFINE_bool("normalize", _D("normalize"), "Normalize inputs by the training set's channel mean/std inside the model.")
flags.DEFINE_integer("wrn_depth", _D("wrn_depth"), "wide_resnet depth (6k+4).", lower_bound=10)
flags.DEFINE_integer("wrn_width", _D("wrn_width"), "wide_resnet width factor.", lower_bound=1)
flags.DEFINE_integer("epochs", _D("epochs"), "Training epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", _D("batch_size"), "Global batch size (split across replicas).", lower_bound=1)
flags.DEFINE_enum("optimizer", _D("optimizer"), list(training.OPTIMIZERS), "Optimizer.")
flags.DEFINE_float("lr", _D("lr"), "Initial learning rate.", lower_bound=0)
flags.DEFINE_float("momentum", _D("momentum"), "SGD momentum.", lower_bound=0, upper_bound=0.999999)
flags.DEFINE_bool("nesterov", _D("nesterov"), "Nesterov momentum.")
flags.DEFINE_enum("lr_schedule", _D("lr_schedule"), list(training.LR_SCHEDULES), "Learning-rate schedule.")
flags.DEFINE_list("lr_decay_epochs", [], "piecewise: epochs at which the rate is multiplied by lr_decay_factor.")
flags.DEFINE_float("lr_decay_factor", _D("lr_decay_factor"), "piecewise decay factor.", lower_bound=0, upper_bound=1)
flags.DEFINE_float("weight_decay", _D("weight_decay"), "Coupled L2 weight decay (PyTorch SGD's).", lower_bound=0)
flags.DEFINE_float("eps", _D("eps"), "Perturbation budget (pixels in [0, 1]).", lower_bound=0)
flags.DEFINE_float("step_size", _D("step_size"), "Training attack step size.", lower_bound=0)
flags.DEFINE_integer("attack_steps", _D("attack_steps"), "Training attack steps (ATENT: Langevin steps).", lower_bound=0)
flags.DEFINE_enum("norm", _D("norm"), ["linf", "l2"], "Threat model norm.")
flags.DEFINE_enum("attack_bn_mode", _D("attack_bn_mode"), list(training.ATTACK_BN_MODES),
                  "Batch-norm/dropout mode while attacking in training; auto: the method's reference.")
flags.DEFINE_float("eps_warmup_epochs", _D("eps_warmup_epochs"), "Ramp the training attack's eps and step size "
                   "linearly from 0 to --eps over this many epochs (0: no ramp). Evaluation uses the full eps.",
                   lower_bound=0)
flags.DEFINE_integer("eval_steps", _D("eval_steps"), "PGD steps of validation and the final test evaluation.", lower_bound=0)
flags.DEFINE_enum("eval_suite", _D("eval_suite"), ["none", *sorted(evaluation.SUITES)],
                  "After training, also run this evaluation suite (quick: PGD-20; standard: APGD-CE + APGD-T; "
                  "full: + Square) at --eps on the eval_examples, with its sanity checks; report in RUN/evaluation.")
flags.DEFINE_integer("eval_examples", _D("eval_examples"), "Test examples in the final evaluation (0: all).", lower_bound=0)
flags.DEFINE_integer("seed", _D("seed"), "Seed of data order, initialization and attack noise.")
flags.DEFINE_bool("deterministic", _D("deterministic"), "Enable TensorFlow op determinism (slower).")
flags.DEFINE_string("output_dir", _D("output_dir"), "Run directory (default runs/METHOD-DATASET).")
flags.DEFINE_bool("overwrite", _D("overwrite"), "Replace an existing run in output_dir.")
flags.DEFINE_bool("resume", _D("resume"), "Continue an unfinished run found in output_dir.")
flags.DEFINE_integer("log_every_steps", _D("log_every_steps"), "TensorBoard step-level scalars every N steps.", lower_bound=1)
flags.DEFINE_integer("checkpoint_every_steps", _D("checkpoint_every_steps"),
                     "Also checkpoint every N steps (0: epoch ends only).", lower_bound=0)
flags.DEFINE_enum("strategy", _D("strategy"), list(distribute.STRATEGIES), "Distribution strategy.")
flags.DEFINE_enum("jit_compile", _D("jit_compile"), ["auto", "true", "false"], "XLA-compile the train step.")
flags.DEFINE_enum("mixed_precision", _D("mixed_precision"), list(training.MIXED_PRECISION), "Mixed-precision policy.")
flags.DEFINE_bool("autotune", _D("autotune"), "tf.data autotuning (off by default: on 2-core hosts it can stall a core).")
flags.DEFINE_enum("verbose", _D("verbose"), ["auto", "0", "1", "2"], "Keras verbosity: 1 progress bars, 2 a line per epoch.")


def _define_method_flags() -> list[str]:
    """One flag per method hyperparameter (e.g. --beta, --lambda_mi); unset means the method's default."""
    defined = []
    for name, cls in sorted(methods.REGISTRY.items()):
        for field in dataclasses.fields(cls):
            if field.name == "attack" or field.name in flags.FLAGS:
                continue
            default = field.default
            helptext = field.metadata.get("help", f"{name} hyperparameter") + f" (default {default!r})"
            choices = field.metadata.get("choices")
            if choices:
                flags.DEFINE_enum(field.name, None, list(choices), helptext)
            elif isinstance(default, bool):
                flags.DEFINE_bool(field.name, None, helptext)
            elif isinstance(default, int):
                flags.DEFINE_integer(field.name, None, helptext)
            elif isinstance(default, float):
                flags.DEFINE_float(field.name, None, helptext)
            else:
                flags.DEFINE_string(field.name, None, helptext)
            defined.append(field.name)
    return defined


_METHOD_FLAGS = _define_method_flags()
FLAGS = flags.FLAGS


def config_from_flags() -> training.TrainConfig:
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(training.TrainConfig)
              if f.name in FLAGS and f.name != "lr_decay_epochs"}
    try:
        values["lr_decay_epochs"] = tuple(int(e) for e in FLAGS.lr_decay_epochs)
    except ValueError:
        raise training.ConfigError(f"lr_decay_epochs must be integers, got {FLAGS.lr_decay_epochs}") from None
    wanted = methods.hyperparameters(FLAGS.method)
    foreign = [n for n in _METHOD_FLAGS if n not in wanted and FLAGS[n].value is not None]
    if foreign:
        raise training.ConfigError(f"method {FLAGS.method} does not take --{', --'.join(foreign)}; "
                                   f"it takes {['--' + n for n in wanted] or 'no method flags'}")
    values["method_options"] = {n: FLAGS[n].value for n in wanted if FLAGS[n].value is not None}
    return training.TrainConfig(**values)


def fail(message: object, code: int = 2):
    cli.fail("train.py", message, code)


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines drown the progress bars
    try:
        config = config_from_flags()
        result = training.train(config)
    except (training.ConfigError, data.DataError, models.ModelError, ExportError, evaluation.EvaluationError) as e:
        fail(e)
    except NonFiniteLossError as e:
        fail(e, code=3)
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to continue from the last checkpoint", code=130)
    a = config
    print(f"\nRun: {result.run_dir}  ({result.steps} steps, train step traced {result.train_step_traces}x)")
    print(f"Test accuracy on {result.eval_examples} examples: clean {100 * result.clean_accuracy:.2f}%, "
          f"PGD-{a.eval_steps} ({a.norm} eps {a.eps:g}) {100 * result.adv_accuracy:.2f}%")
    if result.suite_accuracy is not None:
        attacks = ", ".join(f"{k} {100 * v:.2f}%" for k, v in result.suite_accuracy.items())
        checks = "all sanity checks passed" if result.suite_checks_passed else "SANITY CHECKS WARN: read the report"
        print(f"Suite {a.eval_suite}: {attacks}; {checks} ({os.path.join(result.run_dir, 'evaluation', 'report.md')})")
    print(f"SavedModel: {result.export_path}")
    print(f"TensorBoard: tensorboard --logdir {os.path.join(result.run_dir, 'logs')}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser("train.py"))
