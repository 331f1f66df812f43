"""Evaluate the robustness of an exported classifier, with gradient-masking sanity checks.

    python runners/evaluate.py --model=runs/pgd_at-digits                  # a training run directory
    python runners/evaluate.py --model=path/to/savedmodel --dataset=mnist --eps=0.1,0.2,0.3 --suite=apgd_square
    python runners/evaluate.py --model=runs/pgd_at-digits --suite=autoattack   # AutoAttack, standard version

Writes report.json, report.md, accuracy_vs_eps.png and TensorBoard scalars to --output_dir and
prints the table. Flags in, one `tfrobust.evaluation.robust_accuracy` call out. Flags are parsed and
checked (suite, attacks, eps), and a run's config.json read (`tfrobust.evaluation.model_source`),
before TensorFlow is imported, so a bad one is reported within a second. A damaged config.json or
SavedModel is one line and exit code 2, before anything is written; each report file is written whole
or not at all.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from tfrobust import cli, evaluation, files  # no TensorFlow until main has checked the flags
from tfrobust.errors import TfrobustError
from tfrobust.evaluation import model_source
from tfrobust.layout import LOCK_FILE

flags.DEFINE_string("model", None, "A training run directory, or an exported SavedModel directory.")
flags.DEFINE_string("dataset", None, "Dataset (as for train.py); default: the run's dataset, else digits.")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_enum("suite", "apgd", sorted(evaluation.SUITES),
                  "; ".join(f"{k}: {v}" for k, v in evaluation.SUITE_HELP.items()) + ".")
flags.DEFINE_list("attacks", [], f"Attacks instead of the suite, from {', '.join(evaluation.ATTACK_NAMES)}; "
                  "each on every example.")
flags.DEFINE_integer("square_queries", None, "Queries of the Square attack in the suite (default: the suite's, "
                     "5,000 in autoattack, 1,000 in apgd_square).", lower_bound=1)
flags.DEFINE_list("eps", [], "Perturbation budgets (pixels in [0, 1]); default: the run's eps, else 0.1.")
flags.DEFINE_enum("norm", None, ["linf", "l2"], "Threat model norm; default: the run's, else linf.")
flags.DEFINE_integer("examples", 1000, "Evaluate the first N test examples (0: all).", lower_bound=0)
flags.DEFINE_integer("batch_size", 256, "Examples per compiled attack batch.", lower_bound=1)
flags.DEFINE_enum("checks", "all", ["all", "none"], "Run the gradient-masking sanity checks.")
flags.DEFINE_integer("seed", 0, "Seed of the attacks' random starts.")
flags.DEFINE_string("output_dir", None, "Where to write the report; default: MODEL/evaluation (run directory) "
                    "or MODEL-evaluation (SavedModel).")
flags.DEFINE_bool("overwrite", False, "Replace an existing report in output_dir.")
flags.DEFINE_bool("verbose", True, "Progress bars.")
flags.DEFINE_enum("dtype", None, ["float32", "float64"], "Compute dtype of the attacks and losses (the model "
                  "runs in the dtype it was exported in); default: the run's dtype, else float32.")
FLAGS = flags.FLAGS


def fail(message: object, code: int = 2):
    cli.fail("evaluate.py", message, code)


def _source() -> model_source.ModelSource:
    """What --model names; the run's settings that a flag overrides are neither read nor checked."""
    overridden = [name for name in model_source.EVALUATION_SETTINGS if FLAGS[name].value not in (None, [])]
    try:
        return model_source.resolve(FLAGS.model, overridden)
    except TfrobustError as e:
        fail(e)


def _eps_values(source: model_source.ModelSource) -> list[float]:
    try:
        values = [float(e) for e in FLAGS.eps] or [float(source.settings.get("eps", 0.1))]
    except ValueError:
        fail(f"--eps must be a comma-separated list of numbers, got {','.join(FLAGS.eps)}")
    norm = FLAGS.norm or source.settings.get("norm", "linf")
    bad = [e for e in values if e < 0 or (norm == "linf" and e > 1)]
    if bad and not FLAGS.eps:  # the run's eps (checked for its own norm), under --norm=linf
        fail(f"{source.config_path}'s eps {bad[0]:g} is above 1, the most for linf (pixels are in [0, 1]); "
             "give --eps")
    if bad:
        fail(f"--eps values must be in [0, 1] for linf (pixels are in [0, 1]) and >= 0 for l2, got {bad}")
    return values


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    if not FLAGS.model:
        fail("--model is required: a training run directory or a SavedModel directory")
    source = _source()  # a damaged config.json is reported here, before TensorFlow is imported
    run_settings = source.settings
    eps_values = _eps_values(source)
    norm = FLAGS.norm or run_settings.get("norm", "linf")
    attacks = FLAGS.attacks or FLAGS.suite
    try:
        specs = evaluation.with_square_queries(evaluation.resolve_attacks(attacks), FLAGS.square_queries)
    except TfrobustError as e:
        fail(e)
    out = FLAGS.output_dir or source.default_output_dir
    if source.config_path:  # a training run: read it while it trains, but write into it only when no one does
        run_dir = os.path.dirname(source.config_path)
        holder = files.lock_holder(os.path.join(run_dir, LOCK_FILE))
        if holder and os.path.realpath(out).startswith(os.path.realpath(run_dir) + os.sep):
            fail(f"run {run_dir!r} is in use by {holder}: its model can be evaluated, but not into the run; "
                 "pass --output_dir elsewhere")
    with cli.native_stderr_captured():
        from tfrobust import data, export, precision
    try:
        files.check_output_dir(out, evaluation.REPORT_FILES, FLAGS.overwrite, what="--output_dir")
    except TfrobustError as e:
        fail(e)
    with precision.floatx(FLAGS.dtype or run_settings.get("dtype", "float32")):
        try:
            sequential = not FLAGS.attacks and FLAGS.suite in evaluation.SEQUENTIAL_SUITES
            logits_fn = export.load_logits_fn(source.savedmodel)  # a damaged SavedModel: ExportError, one line
            dataset = FLAGS.dataset or run_settings.get("dataset", "digits")
            splits = data.load(dataset, data_dir=FLAGS.data_dir or run_settings.get("data_dir"))
            expected = logits_fn.input_shape
            if expected is not None and tuple(splits.image_shape) != tuple(expected):
                fail(f"dataset {dataset} has images of shape {splits.image_shape}, the model takes {expected}")
            report = evaluation.robust_accuracy(
                logits_fn, (splits.x_test, splits.y_test), attacks=specs, eps_values=eps_values, norm=norm,
                batch_size=FLAGS.batch_size, limit=FLAGS.examples or None, seed=FLAGS.seed,
                checks="all" if FLAGS.checks == "all" else None, sequential=sequential,
                model_path=FLAGS.model, dataset=dataset, verbose=FLAGS.verbose)
        except (TfrobustError, ValueError) as e:
            fail(e)
    try:
        report.save(out)  # each file atomically: a failed write leaves no partial report
    except OSError as e:
        fail(f"writing the report to {e.filename or out!r} failed: {files.os_error_text(e)}", code=4)
    print(report.to_markdown())
    print(f"Report: {out}/report.json, report.md, accuracy_vs_eps.png")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser("evaluate.py"))
