"""Train a classifier with an adversarial training method.

    python runners/train.py --method=atent
    python runners/train.py --flagfile=flags/mnist_trades.cfg --output_dir=runs/trades
    python runners/train.py --import=my_module --method=my_method --model=my_model

Flags in, one `tfrobust.training.train` call out. A bad flag value ends with one line on stderr
and exit code 2, within a second: every flag is parsed and checked before TensorFlow is imported (unless
a module given with --import imports it). An existing run directory is continued (same configuration),
or refused.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from tfrobust import cli, methods  # neither imports TensorFlow; tfrobust.training (which does) comes in main
from tfrobust.config import TrainConfig, validate
from tfrobust.errors import ConfigError, TfrobustError

# --import=MODULE first: the methods and models it registers become choices of --method and --model
# and bring their hyperparameter flags.
cli.import_modules("train.py", sys.argv)
cli.define_import_flag()
cli.define_flags(TrainConfig)
# One flag per method hyperparameter (e.g. --beta, --lambda_mi); unset means the method's default.
try:
    _METHOD_FLAGS = cli.define_method_flags(methods.REGISTRY)
except ConfigError as e:  # a registered method whose hyperparameter cannot be a flag
    cli.fail("train.py", e)
FLAGS = flags.FLAGS


def config_from_flags() -> TrainConfig:
    """The run the flags describe, checked (`tfrobust.config.validate`); ConfigError if it cannot run."""
    values = cli.values_from_flags(TrainConfig)
    wanted = methods.hyperparameters(FLAGS.method)
    foreign = [n for n in _METHOD_FLAGS if n not in wanted and FLAGS[n].value is not None]
    if foreign:
        raise ConfigError(f"method {FLAGS.method} does not take --{', --'.join(foreign)}; "
                          f"it takes {['--' + n for n in wanted] or 'no method flags'}")
    fixed = methods.get(FLAGS.method).fixed_steps
    if FLAGS["attack_steps"].present and fixed is not None and FLAGS.attack_steps != fixed:
        raise ConfigError(f"method {FLAGS.method} always takes {fixed} attack step(s); --attack_steps="
                          f"{FLAGS.attack_steps} would be ignored: drop it")
    values["method_options"] = cli.values_from_flags(methods.get(FLAGS.method), names=wanted)
    config = TrainConfig(**values)
    validate(config)
    return config


def fail(message: object, code: int = 2):
    cli.fail("train.py", message, code)


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines drown the progress bars
    try:
        config = config_from_flags()
        with cli.native_stderr_captured():
            from tfrobust import training
        result = training.train(config)
    except TfrobustError as e:
        fail(e, code=e.exit_code)
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to continue from the last checkpoint", code=130)
    a = config
    print(f"\nRun: {result.run_dir}  ({result.steps} steps, train step traced {result.train_step_traces}x)")
    print(f"Test accuracy on {result.eval_examples} examples: clean {100 * result.clean_accuracy:.2f}%, "
          f"PGD-{a.eval_steps} ({a.norm} eps {a.eps:g}) {100 * result.adv_accuracy:.2f}%")
    if result.best_epoch is not None:
        print(f"Best model (epoch {result.best_epoch}, validation PGD {100 * result.best_val_adv_accuracy:.2f}%): "
              f"clean {100 * result.best_clean_accuracy:.2f}%, PGD-{a.eval_steps} {100 * result.best_adv_accuracy:.2f}%"
              f"  SavedModel: {result.best_export_path}")
    if result.stopped_epoch is not None:
        print(f"Early stopping ended the run after epoch {result.stopped_epoch}.")
    for event in result.overfitting:
        print(f"CATASTROPHIC OVERFITTING suspected at epoch {event['epoch']}: validation PGD accuracy "
              f"{100 * event['value']:.2f}% (best {100 * event['best_value']:.2f}% at epoch {event['best_epoch']})")
    if result.suite_accuracy is not None:
        attacks = ", ".join(f"{k} {100 * v:.2f}%" for k, v in result.suite_accuracy.items())
        checks = "all sanity checks passed" if result.suite_checks_passed else "SANITY CHECKS WARN: read the report"
        print(f"Suite {a.eval_suite}: {attacks}; {checks} ({os.path.join(result.run_dir, 'evaluation', 'report.md')})")
    averaged = " (weight averages; raw weights: checkpoints/, object 'model')" if a.weight_averaging != "none" else ""
    print(f"SavedModel: {result.export_path}{averaged}")
    print(f"TensorBoard: tensorboard --logdir {os.path.join(result.run_dir, 'logs')}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser("train.py"))
