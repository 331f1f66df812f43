"""Sanity checks of an evaluation: signs of gradient masking and of models the attacks cannot judge,
one small function per check, in the table CHECKS.

From Carlini et al. 2019 ("On Evaluating Adversarial Robustness", Sec. 5): the perturbations stay in
the budget, accuracy falls with eps, a large eps breaks the model, more steps do not help the model,
iterative attacks beat FGSM, a black-box attack does not beat the white-box ones, and our PGD agrees
with an independent one (cleverhans). From AutoAttack (fra31/auto-attack `autoattack/checks.py`):
randomized outputs (`check_randomized`: 5 calls on one batch, normalized outputs differing by more
than 1e-4, or a different number correct), probability outputs instead of logits
(`check_range_output`), dynamic models (`check_dynamic`: the forward pass computes gradients; here
also: it writes variables), zero input gradients (`check_zero_gradients`), and, for the sequential
AutoAttack, Square lowering the robust accuracy left by the white-box attacks by more than 0.2 points
(`check_square_sr`). A check returns (passed, detail) or raises `Skip`; a failed check is a warning
in the report, not an error.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from tfrobust.attacks import gradients, objectives
from tfrobust.evaluation.runner import Runner
from tfrobust.evaluation.table import AttackSpec


@dataclasses.dataclass(frozen=True)
class CheckSettings:
    """Settings of the sanity checks (cheap by default).

    tolerance: accuracy slack (fraction) in every comparison.
    large_eps: eps of the large-eps PGD (None: 0.5 for l-inf, 0.5 sqrt(d) for l2: both balls then
        contain the all-gray image); large_eps_max_accuracy: the most that PGD may leave.
    few_steps / many_steps: the PGD pair of the more-steps check.
    cleverhans_steps: steps of our PGD and cleverhans' PGD (same start x, same step size).
    square_queries: queries of the Square attack run for the black-box check when the evaluated
        attacks do not include one.
    square_drop: how much Square may lower the accuracy left by the attacks before it in the
        sequential AutoAttack (AutoAttack's `check_square_sr`: 0.002).
    randomized_calls / randomized_tolerance: AutoAttack's `check_randomized` (5 calls, 1e-4).
    check_eps: eps of the single-eps checks (None: the middle of eps_values).
    """

    tolerance: float = 0.01
    large_eps: float | None = None
    large_eps_steps: int = 20
    large_eps_max_accuracy: float = 0.1
    few_steps: int = 10
    many_steps: int = 50
    cleverhans_steps: int = 10
    square_queries: int = 500
    square_drop: float = 0.002
    randomized_calls: int = 5
    randomized_tolerance: float = 1e-4
    check_eps: float | None = None


class Skip(Exception):
    """The check does not apply; the message says why."""


@dataclasses.dataclass
class Context:
    """What the checks read: the runner (model, data, attacks), the evaluated attacks and their
    results (`accuracy[label][j]`, largest perturbation `dist[label][j]`, largest step outside the box
    `range_excess[label]`), the mode ('per_attack' or 'sequential') and the settings."""

    runner: Runner
    specs: list[AttackSpec]
    eps_values: list[float]
    accuracy: dict[str, list[float]]
    dist: dict[str, list[float]]
    range_excess: dict[str, float]
    mode: str
    settings: CheckSettings
    _extra: dict[tuple[str, float], float] = dataclasses.field(default_factory=dict)

    @property
    def check_eps(self) -> float:
        if self.settings.check_eps is not None:
            return self.settings.check_eps
        ordered = sorted(self.eps_values)
        return ordered[len(ordered) // 2]

    def accuracy_of(self, spec: AttackSpec, eps: float) -> float:
        """Accuracy under an extra attack on every example (cached)."""
        key = (spec.display, float(eps))
        if key not in self._extra:
            x_adv, _ = self.runner.attack(spec, eps, title=f"  {spec.display} at eps={eps:g}")
            self._extra[key] = float(np.mean(self.runner.predict(x_adv) == self.runner.y))
        return self._extra[key]

    def first_batch(self) -> tuple[tf.Tensor, tf.Tensor]:
        n = self.runner.batch_size
        return tf.constant(self.runner.x[:n]), tf.constant(self.runner.y[:n])

    def pgd(self, steps: int, suffix: str = "") -> AttackSpec:
        return AttackSpec("pgd", steps=steps, label=f"check:pgd-{steps}{suffix}")


def _pct(a: float) -> str:
    return f"{100 * a:.2f}%"


def softmax_output(ctx: Context) -> tuple[bool, str]:
    x, _ = ctx.first_batch()
    out = ctx.runner.logits_fn(x).numpy()
    probabilities = out.max() < 1 + 1e-5 and out.min() > -1e-5 and np.all(np.abs(out.sum(-1) - 1) < 1e-5)
    if probabilities:
        return False, ("the outputs look like probabilities (in [0, 1], rows sum to 1): the attacks need "
                       "logits (the softmax saturates and masks gradients)")
    return True, f"outputs in [{out.min():.3g}, {out.max():.3g}], not a probability distribution"


def randomized(ctx: Context) -> tuple[bool, str]:
    x, y = ctx.first_batch()
    outs, correct = [], []
    for _ in range(ctx.settings.randomized_calls):
        z = ctx.runner.logits_fn(x).numpy().astype(np.float64)
        correct.append(int(np.sum(z.argmax(-1) == y.numpy())))
        outs.append(z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-10))
    diff = max(float(np.linalg.norm(a - b, axis=-1).max()) for i, a in enumerate(outs) for b in outs[i + 1:])
    ok = len(set(correct)) == 1 and diff <= ctx.settings.randomized_tolerance
    detail = (f"{ctx.settings.randomized_calls} calls on {int(x.shape[0])} examples: "
              f"largest change of the normalized outputs {diff:.2g}, correct {sorted(set(correct))}")
    if not ok:
        detail = "randomized outputs (attack with expectation over transformation): " + detail
    return ok, detail


_WRITE_OPS = ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp")


def dynamic(ctx: Context) -> tuple[bool, str]:
    spec = tf.TensorSpec([None, *ctx.runner.x.shape[1:]], ctx.runner.x.dtype)
    graph_def = tf.function(ctx.runner.logits_fn).get_concrete_function(spec).graph.as_graph_def()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    grads = sorted({n.name for n in nodes if "gradient_tape/" in n.name or n.name.startswith("gradients/")
                    or n.op == "SymbolicGradient"})
    writes = sorted({n.name for n in nodes if n.op in _WRITE_OPS or n.op.startswith("ResourceApply")})
    if grads or writes:
        what = " and ".join(w for w, found in (("computes gradients", grads), ("writes variables", writes)) if found)
        return False, (f"dynamic model: its forward pass {what} ({', '.join((grads + writes)[:3])}); "
                       "the evaluation with fixed-model attacks may be insufficient")
    return True, f"the forward pass ({len(nodes)} graph nodes) computes no gradients and writes no variables"


def zero_gradients(ctx: Context) -> tuple[bool, str]:
    x, y = ctx.first_batch()
    grad, _, _ = tf.function(functools.partial(gradients.input_gradient, ctx.runner.logits_fn,
                                               objectives.cross_entropy))(x, y)
    zero = np.abs(grad.numpy().reshape(len(grad), -1)).sum(-1) == 0
    detail = f"{int(zero.sum())} of {len(zero)} examples have an all-zero input gradient of the cross-entropy"
    if zero.any():
        detail += " (gradient-based attacks cannot move them: masking?)"
    return not zero.any(), detail


def budget(ctx: Context) -> tuple[bool, str]:
    limit = {e: e * (1 + 1e-5) + 1e-6 for e in ctx.eps_values}
    worst = {label: max(d / limit[e] for d, e in zip(ds, ctx.eps_values)) for label, ds in ctx.dist.items()}
    outside = max(ctx.range_excess.values())
    ok = all(w <= 1.0 for w in worst.values()) and outside <= 1e-6
    r = ctx.runner
    return ok, ("largest perturbation / eps: " + ", ".join(f"{k} {v:.4f}" for k, v in worst.items())
                + f"; largest step outside [{r.clip_min:g}, {r.clip_max:g}]: {outside:.2g}")


def eps_monotonic(ctx: Context) -> tuple[bool, str]:
    if len(ctx.eps_values) < 2:
        raise Skip("needs at least two eps values")
    order = np.argsort(ctx.eps_values)
    rises = {label: float(np.max(np.diff(np.asarray(a)[order]))) for label, a in ctx.accuracy.items()}
    tol = ctx.settings.tolerance
    return all(r <= tol for r in rises.values()), ("largest rise of accuracy with eps: " + ", ".join(
        f"{k} {100 * v:+.2f} pts" for k, v in rises.items()) + f" (tolerance {100 * tol:.1f})")


def large_eps(ctx: Context) -> tuple[bool, str]:
    s = ctx.settings
    big = s.large_eps
    if big is None:
        big = 0.5 if ctx.runner.norm == "linf" else 0.5 * math.sqrt(float(np.prod(ctx.runner.x.shape[1:])))
    a = ctx.accuracy_of(ctx.pgd(s.large_eps_steps, "-large"), big)
    return a <= s.large_eps_max_accuracy, (f"PGD-{s.large_eps_steps} at eps={big:g}: accuracy {_pct(a)} "
                                           f"(expected <= {_pct(s.large_eps_max_accuracy)})")


def more_steps(ctx: Context) -> tuple[bool, str]:
    s, eps = ctx.settings, ctx.check_eps
    a_few, a_many = ctx.accuracy_of(ctx.pgd(s.few_steps), eps), ctx.accuracy_of(ctx.pgd(s.many_steps), eps)
    return a_many <= a_few + s.tolerance, (f"eps={eps:g}: PGD-{s.few_steps} {_pct(a_few)}, "
                                           f"PGD-{s.many_steps} {_pct(a_many)}")


def iterative_vs_fgsm(ctx: Context) -> tuple[bool, str]:
    tol, eps_values = ctx.settings.tolerance, ctx.eps_values
    fgsm = next((s for s in ctx.specs if s.name == "fgsm"), AttackSpec("fgsm", label="check:fgsm"))
    iterative = [s for s in ctx.specs if s.row.white_box and s.row.iterative]
    if ctx.mode == "sequential":
        iterative = iterative[:1]  # later stages report the accuracy left after all earlier ones

    def fgsm_accuracy(j, eps):
        return ctx.accuracy[fgsm.display][j] if fgsm in ctx.specs else ctx.accuracy_of(fgsm, eps)

    parts, ok = [], True
    if iterative:
        for j, eps in enumerate(eps_values):
            a_fgsm = fgsm_accuracy(j, eps)
            for s in iterative:
                a = ctx.accuracy[s.display][j]
                ok &= a <= a_fgsm + tol
                parts.append(f"eps={eps:g} {s.display} {_pct(a)} vs fgsm {_pct(a_fgsm)}")
    else:
        eps = ctx.check_eps
        a_fgsm = fgsm_accuracy(eps_values.index(eps), eps) if eps in eps_values else ctx.accuracy_of(fgsm, eps)
        pgd_few = ctx.pgd(ctx.settings.few_steps)
        a = ctx.accuracy_of(pgd_few, eps)
        ok = a <= a_fgsm + tol
        parts.append(f"eps={eps:g} {pgd_few.display} {_pct(a)} vs fgsm {_pct(a_fgsm)}")
    return ok, "; ".join(parts)


def black_box(ctx: Context) -> tuple[bool, str]:
    tol, eps_values = ctx.settings.tolerance, ctx.eps_values
    squares = [s for s in ctx.specs if not s.row.white_box]
    white = [s for s in ctx.specs if s.row.white_box]
    if ctx.mode == "sequential" and squares and white:
        labels = [s.display for s in ctx.specs]
        k = labels.index(squares[0].display)
        before = labels[k - 1] if k else None
        parts, ok = [], True
        for j, eps in enumerate(eps_values):
            a_before = ctx.accuracy[before][j] if before else 1.0
            drop = a_before - ctx.accuracy[squares[0].display][j]
            ok &= drop <= ctx.settings.square_drop
            parts.append(f"eps={eps:g} {squares[0].display} lowered the robust accuracy by {100 * drop:.2f} pts")
        detail = "; ".join(parts) + f" (at most {100 * ctx.settings.square_drop:.1f} expected)"
        if not ok:
            detail = "black-box attack found what the white-box ones missed (gradient masking?): " + detail
        return ok, detail
    parts, ok = [], True
    pairs = list(enumerate(eps_values)) if squares else [(None, ctx.check_eps)]
    for j, eps in pairs:
        if squares:
            a_sq, sq_name = min(ctx.accuracy[s.display][j] for s in squares), squares[0].display
        else:
            sq = AttackSpec("square", steps=ctx.settings.square_queries,
                            label=f"check:square-{ctx.settings.square_queries}")
            a_sq, sq_name = ctx.accuracy_of(sq, eps), sq.display
        jj = j if j is not None else (eps_values.index(eps) if eps in eps_values else None)
        if white and jj is not None:
            strongest = min(white, key=lambda s: ctx.accuracy[s.display][jj])
            a_wb, wb_name = ctx.accuracy[strongest.display][jj], strongest.display
        else:
            pgd_many = ctx.pgd(ctx.settings.many_steps)
            a_wb, wb_name = ctx.accuracy_of(pgd_many, eps), pgd_many.display
        ok &= a_sq >= a_wb - tol
        parts.append(f"eps={eps:g} {sq_name} {_pct(a_sq)} vs strongest white-box {wb_name} {_pct(a_wb)}")
    detail = "; ".join(parts)
    return ok, detail if ok else "black-box attack stronger than white-box (gradient masking?): " + detail


def cleverhans_agreement(ctx: Context) -> tuple[bool, str]:
    try:
        import cleverhans.tf2.attacks.projected_gradient_descent  # noqa: F401
    except ImportError as err:  # pragma: no cover - cleverhans is a dependency
        raise Skip(f"cleverhans not importable: {err}") from None
    if ctx.runner.x.dtype != np.float32:  # its fast_gradient_method casts x to float32
        raise Skip(f"cleverhans computes in float32 only; the images are {ctx.runner.x.dtype}")
    n, eps = ctx.settings.cleverhans_steps, ctx.check_eps
    ours = AttackSpec("pgd", steps=n, random_start=False, label=f"check:pgd-{n}-nostart")
    theirs = AttackSpec("cleverhans_pgd", steps=n, random_start=False, label=f"check:cleverhans_pgd-{n}")
    a_ours, a_theirs = ctx.accuracy_of(ours, eps), ctx.accuracy_of(theirs, eps)
    return abs(a_ours - a_theirs) <= max(ctx.settings.tolerance, 0.01), (
        f"eps={eps:g}, {n} steps, no random start: ours {_pct(a_ours)}, cleverhans {_pct(a_theirs)}")


CHECKS: dict[str, Callable[[Context], tuple[bool, str]]] = {
    "softmax_output": softmax_output,
    "randomized": randomized,
    "dynamic": dynamic,
    "zero_gradients": zero_gradients,
    "budget": budget,
    "eps_monotonic": eps_monotonic,
    "large_eps": large_eps,
    "more_steps": more_steps,
    "iterative_vs_fgsm": iterative_vs_fgsm,
    "black_box": black_box,
    "cleverhans_agreement": cleverhans_agreement,
}
CHECK_NAMES = tuple(CHECKS)


def run_checks(ctx: Context, wanted: list[str]) -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
    """(records {name, status 'pass'|'warn', detail}, names run, names skipped -> why), in CHECKS order."""
    records, ran, skipped = [], [], {}
    progress = ctx.runner.progress
    for name, check in CHECKS.items():
        if name not in wanted:
            continue
        progress.log(f"Check {name} ...")
        start = time.perf_counter()
        try:
            ok, detail = check(ctx)
        except Skip as why:
            skipped[name] = str(why)
            progress.log(f"Check {name}: skipped ({why})")
            continue
        ran.append(name)
        records.append({"name": name, "status": "pass" if ok else "warn", "detail": detail})
        progress.log(f"Check {name}: {'pass' if ok else 'WARN'} ({time.perf_counter() - start:.1f} s): {detail}")
    return records, ran, skipped
