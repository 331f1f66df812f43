"""Robust accuracy under a list of attacks and eps values, the per-example worst case, AutoAttack's
sequential standard version, and the gradient-masking sanity checks.

    report = robust_accuracy(lambda x: model(x, training=False), (x_test, y_test),
                             attacks="apgd", eps_values=[0.1, 0.2, 0.3], norm="linf")
    report = autoattack(model, (x_test, y_test), eps=0.3)          # AutoAttack, standard version
    report.save("eval/"); print(report.to_markdown())

Modules:

    table    the table of attacks (ATTACKS: name -> builder, default steps, norms, white or black
             box, iterative), AttackSpec, SUITES
    runner   the evaluated arrays and the compiled attacks run over them, batch by batch
    core     robust_accuracy (every attack on every example, or sequentially on the survivors) and
             autoattack
    checks   the sanity checks, one function per check (CHECKS)
    report   Report and its writers (JSON, Markdown, plot, TensorBoard)
    model_source  what a runner's --model names: a training run (its SavedModel and the settings in its
             config.json, checked) or a SavedModel

The model is always called in inference mode: pass `lambda x: model(x, training=False)`, a
SavedModel function from `tfrobust.export.load_logits_fn`, or a `keras.Model` (wrapped with
`training=False` here).
"""

import importlib

from tfrobust.evaluation.table import (
    ATTACK_NAMES,
    ATTACKS,
    SEQUENTIAL_SUITES,
    SUITE_HELP,
    SUITES,
    AttackRow,
    AttackSpec,
    EvaluationError,
    attack_function,
    autoattack_specs,
    resolve_attacks,
    with_square_queries,
)

# The attack table above needs no TensorFlow (the runner checks --suite and --attacks before importing
# it); the modules that run attacks are imported when one of their names is first used.
_LAZY = {"checks": ("CHECK_NAMES", "CHECKS", "CheckSettings"), "core": ("autoattack", "robust_accuracy"),
         "report": ("REPORT_FILES", "Report"), "runner": ("load_arrays",)}


def __getattr__(name: str):
    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(f"tfrobust.evaluation.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ATTACKS", "ATTACK_NAMES", "AttackRow", "AttackSpec", "CHECKS", "CHECK_NAMES", "CheckSettings",
           "EvaluationError", "REPORT_FILES", "Report", "SEQUENTIAL_SUITES", "SUITES", "SUITE_HELP",
           "attack_function", "autoattack", "autoattack_specs", "load_arrays", "resolve_attacks",
           "robust_accuracy", "with_square_queries"]
