"""The two ways of running a list of attacks: every attack on every example (`per_attack`, with the
per-example worst case), or AutoAttack's sequence (`sequential`: each attack only on the examples
still robust after the clean input and the attacks before it).

Accuracy under an attack is plain accuracy on the adversarial examples it returns. The per-example
worst case counts an example as robust only if it is classified correctly clean (the zero
perturbation is in every ball) and under every attack, so it is at most the clean accuracy and at
most every single attack's accuracy. The sequential run (fra31/auto-attack `autoattack.py`,
`run_standard_evaluation`) computes the same quantity for the same attacks, but attacks at each
stage only the examples no earlier stage fooled, so a model that breaks early costs little.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import keras
import numpy as np

from tfrobust.attacks import ball
from tfrobust.attacks.objectives import LogitsFn
from tfrobust.evaluation import checks as checks_lib
from tfrobust.evaluation.report import Report, run_metadata
from tfrobust.evaluation.runner import Progress, Runner, as_logits_fn, distance, load_arrays
from tfrobust.evaluation.table import SEQUENTIAL_SUITES, AttackSpec, EvaluationError, autoattack_specs, resolve_attacks


def _validate(eps_values, batch_size, checks) -> tuple[list[float], list[str]]:
    eps_values = [float(e) for e in eps_values]
    if not eps_values or any(not e > 0 or math.isinf(e) for e in eps_values):
        raise EvaluationError(f"eps_values must be positive and finite, got {eps_values}")
    if len(set(eps_values)) != len(eps_values):
        raise EvaluationError(f"eps_values must be distinct, got {eps_values}")
    if int(batch_size) < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size}")
    if checks == "all":
        return eps_values, list(checks_lib.CHECK_NAMES)
    if checks is None:
        return eps_values, []
    wanted = [checks] if isinstance(checks, str) else list(checks)
    unknown = [c for c in wanted if c not in checks_lib.CHECK_NAMES]
    if unknown:
        raise EvaluationError(f"unknown checks {unknown}; expected some of {checks_lib.CHECK_NAMES}")
    return eps_values, wanted


def robust_accuracy(
    logits_fn: LogitsFn | keras.Model,
    dataset_or_arrays,
    *,
    attacks: str | AttackSpec | Sequence[str | AttackSpec] = "apgd",
    eps_values: Sequence[float],
    norm: str = "linf",
    batch_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
    checks: str | Sequence[str] | None = "all",
    check_settings: checks_lib.CheckSettings | None = None,
    keep_adversarial: bool = False,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    jit_compile: bool = False,
    sequential: bool | None = None,
    model_path: str | None = None,
    dataset: str | None = None,
    verbose: bool = False,
) -> Report:
    """Accuracy under each attack at each eps, the per-example worst case, and sanity checks.

    Args:
      logits_fn: images [B, H, W, C] in [0, 1] -> logits, called in inference mode (or a
        keras.Model, called with training=False).
      dataset_or_arrays: (x, y) arrays or a tf.data.Dataset of (x, y), batched or not.
      attacks: a suite name (`SUITES`: 'quick', 'apgd', 'apgd_square', 'autoattack'), attack names
        (`ATTACK_NAMES`), AttackSpecs, or a mix. Attacks that do not support `norm` are skipped
        and listed.
      eps_values: perturbation budgets.
      norm: 'linf' or 'l2'.
      batch_size: examples per compiled call.
      limit: evaluate the first `limit` examples only.
      seed: seed of every random start and search.
      checks: 'all', None (no checks), or a list from CHECK_NAMES.
      check_settings: see CheckSettings.
      keep_adversarial: keep the adversarial examples in `report.adversarial`.
      sequential: run the attacks in order, each on the examples still robust (AutoAttack); None:
        only for the suite 'autoattack' given by name.
      model_path: recorded in the report's metadata.
      dataset: recorded in the report's metadata.
      verbose: progress on the console (a line per stage and check, a bar over batches).
    """
    ball.check_norm(norm)
    eps_values, wanted = _validate(eps_values, batch_size, checks)
    if sequential is None:
        sequential = isinstance(attacks, str) and attacks in SEQUENTIAL_SUITES
    settings = check_settings or checks_lib.CheckSettings()
    specs_all = resolve_attacks(attacks)
    skipped_attacks = {s.display: f"{s.name} supports only {', '.join(s.row.norms)}" for s in specs_all
                       if norm not in s.row.norms}
    specs = [s for s in specs_all if s.display not in skipped_attacks]
    if not specs:
        raise EvaluationError(f"no attack supports norm {norm!r}: {skipped_attacks}")

    started = time.perf_counter()
    fn = as_logits_fn(logits_fn)
    x, y = load_arrays(dataset_or_arrays, limit)
    progress = Progress(verbose)
    runner = Runner(fn, x, y, norm, batch_size, seed, clip_min, clip_max, jit_compile, progress)
    mode = "sequential" if sequential else "per_attack"
    progress.log(f"Evaluating {len(x)} examples, {norm} eps {', '.join(f'{e:g}' for e in eps_values)}, "
                 f"{'sequentially' if sequential else 'each attack on every example'}: "
                 + ", ".join(s.display for s in specs))

    clean_correct = runner.predict(x) == y
    progress.log(f"Clean accuracy: {100 * clean_correct.mean():.2f}%")
    run = _run_sequential if sequential else _run_per_attack
    results = run(runner, specs, eps_values, clean_correct, keep_adversarial)
    correct, worst_correct = results["correct"], results["worst_correct"]
    accuracy = {label: [float(r.mean()) for r in rows] for label, rows in correct.items()}
    worst_case = [float(w.mean()) for w in worst_correct]
    progress.log("Robust accuracy: " + ", ".join(f"eps={e:g} {100 * a:.2f}%" for e, a in zip(eps_values, worst_case)))

    ctx = checks_lib.Context(runner, specs, eps_values, accuracy, results["dist"], results["range_excess"], mode,
                             settings)
    check_records, checks_run, checks_skipped = checks_lib.run_checks(ctx, wanted)
    return Report(
        norm=norm, eps_values=eps_values, attacks=[s.to_dict() for s in specs],
        clean_accuracy=float(clean_correct.mean()), accuracy=accuracy, worst_case=worst_case,
        n_examples=len(x), seed=int(seed), batch_size=runner.batch_size, checks=check_records,
        checks_run=checks_run, checks_skipped=checks_skipped, seconds=results["seconds"],
        max_perturbation=results["dist"], skipped_attacks=skipped_attacks, clean_correct=clean_correct,
        correct=correct, worst_correct=worst_correct, labels=y, adversarial=results["adversarial"],
        traces=runner.tracing_counts(),
        trace_seconds={k: v for k, v in runner.trace_seconds.items() if k in accuracy},
        mode=mode, attacked=results["attacked"],
        metadata=run_metadata(model=model_path, dataset=dataset, indices=np.arange(len(x))),
        total_seconds=time.perf_counter() - started)


def _range_excess(runner: Runner, x_adv: np.ndarray) -> float:
    if not len(x_adv):
        return 0.0
    return float(max(runner.clip_min - x_adv.min(), x_adv.max() - runner.clip_max, 0.0))


def _run_per_attack(runner: Runner, specs, eps_values, clean_correct, keep_adversarial) -> dict:
    x, y = runner.x, runner.y
    out = dict(correct={}, seconds={}, dist={}, range_excess={}, attacked={},
               adversarial={} if keep_adversarial else None)
    for spec in specs:
        rows, times, dists, ranges, advs = [], [], [], [], []
        for eps in eps_values:
            x_adv, elapsed = runner.attack(spec, eps)
            ok = runner.predict(x_adv) == y
            rows.append(ok)
            times.append(elapsed)
            dists.append(float(distance(x_adv, x, runner.norm).max()))
            ranges.append(_range_excess(runner, x_adv))
            if keep_adversarial:
                advs.append(x_adv)
            runner.progress.log(f"  {spec.display} at eps={eps:g}: accuracy {100 * ok.mean():.2f}% ({elapsed:.1f} s)")
        label = spec.display
        out["correct"][label] = np.stack(rows)
        out["seconds"][label], out["dist"][label], out["range_excess"][label] = times, dists, max(ranges)
        if keep_adversarial:
            out["adversarial"][label] = np.stack(advs)
    worst = np.broadcast_to(clean_correct, (len(eps_values), len(x))).copy()
    for rows in out["correct"].values():
        worst &= rows
    out["worst_correct"] = worst
    return out


def _run_sequential(runner: Runner, specs, eps_values, clean_correct, keep_adversarial) -> dict:
    """AutoAttack's `run_standard_evaluation`: per eps, start from the clean-correct examples; each
    attack runs on the examples still robust, and those it misclassifies leave the pool with its
    adversarial example. correct[label][j] are the robust flags after that stage."""
    x, y = runner.x, runner.y
    out = dict(correct={s.display: [] for s in specs}, seconds={s.display: [] for s in specs},
               dist={s.display: [] for s in specs}, range_excess={s.display: 0.0 for s in specs},
               attacked={s.display: [] for s in specs},
               adversarial={s.display: [] for s in specs} if keep_adversarial else None)
    finals = []
    for eps in eps_values:
        robust = clean_correct.copy()
        x_adv_all = x.copy()
        for k, spec in enumerate(specs):
            label = spec.display
            index = np.flatnonzero(robust)
            elapsed, largest = 0.0, 0.0
            if len(index):
                title = f"[{k + 1}/{len(specs)}] {label} at eps={eps:g} on the {len(index)} examples still robust"
                x_adv, elapsed = runner.attack(spec, eps, index=index, title=title)
                fooled = runner.predict(x_adv) != y[index]
                newly = index[fooled]
                x_adv_all[newly] = x_adv[fooled]
                robust[newly] = False
                if fooled.any():
                    largest = float(distance(x_adv[fooled], x[newly], runner.norm).max())
                out["range_excess"][label] = max(out["range_excess"][label], _range_excess(runner, x_adv))
            runner.progress.log(f"  robust accuracy after {label}: {100 * robust.mean():.2f}% "
                                f"({len(index)} attacked, {elapsed:.1f} s)")
            out["correct"][label].append(robust.copy())
            out["seconds"][label].append(elapsed)
            out["dist"][label].append(largest)
            out["attacked"][label].append(int(len(index)))
            if keep_adversarial:
                out["adversarial"][label].append(x_adv_all.copy())
        finals.append(robust)
    out["correct"] = {k: np.stack(v) for k, v in out["correct"].items()}
    if keep_adversarial:
        out["adversarial"] = {k: np.stack(v) for k, v in out["adversarial"].items()}
    out["worst_correct"] = np.stack(finals)
    return out


def autoattack(
    logits_fn: LogitsFn | keras.Model,
    dataset_or_arrays,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    square_queries: int = 5000,
    batch_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
    checks: str | Sequence[str] | None = "all",
    check_settings: checks_lib.CheckSettings | None = None,
    verbose: bool = False,
    **kwargs,
) -> Report:
    """AutoAttack's standard version (Croce & Hein 2020; fra31/auto-attack `autoattack.py`,
    `set_version('standard')` and `run_standard_evaluation`) for l-inf and l2: APGD-CE (100
    iterations), APGD-T (9 targets, 100 iterations), FAB-T (9 targets, 100 iterations) and Square
    (`square_queries`, default 5,000, p_init 0.8), one restart each, run in that order, each on the
    examples still correctly classified after the clean input and the attacks before it.

    `report.accuracy[label]` is the robust accuracy after each stage, `report.worst_case` the final
    one, `report.attacked[label]` how many examples each stage attacked. Other keyword arguments go
    to `robust_accuracy`.
    """
    eps_values = [eps] if isinstance(eps, (int, float)) else list(eps)
    return robust_accuracy(logits_fn, dataset_or_arrays, attacks=autoattack_specs(square_queries),
                           eps_values=eps_values, norm=norm, batch_size=batch_size, limit=limit, seed=seed,
                           checks=checks, check_settings=check_settings, sequential=True, verbose=verbose,
                           **kwargs)
