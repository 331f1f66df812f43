"""The table of attacks: one row per attack name, and the attack configurations (`AttackSpec`) and
suites built from it.

A row says how to build the attack (a traceable `fn(x, y, eps, seed) -> x_adv`), its default number
of steps, the norms it supports, whether it reads gradients (white box) and whether it iterates, and
which `AttackSpec` options it takes. A new attack is a module in `tfrobust/attacks/` plus one row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tfrobust.errors import TfrobustError
from tfrobust.lazy import lazy_import

if TYPE_CHECKING:
    from tfrobust.attacks.objectives import LogitsFn

# Imported on first use: the table, AttackSpec and the suites (the runner's --suite and --attacks
# checks) need no TensorFlow.
np = lazy_import("numpy")
tf = lazy_import("tensorflow")
rng = lazy_import("tfrobust.rng")
apgd = lazy_import("tfrobust.attacks.apgd")
ball = lazy_import("tfrobust.attacks.ball")
fab = lazy_import("tfrobust.attacks.fab")
objectives = lazy_import("tfrobust.attacks.objectives")
pgd = lazy_import("tfrobust.attacks.pgd")
square = lazy_import("tfrobust.attacks.square")
subbatch = lazy_import("tfrobust.attacks.subbatch")

AttackFn = Callable[["tf.Tensor", "tf.Tensor", Any, "tf.Tensor"], "tf.Tensor"]  # (x, y, eps, seed) -> x_adv


class EvaluationError(TfrobustError):
    """Bad evaluation settings or data."""


@dataclasses.dataclass(frozen=True)
class AttackRow:
    """One attack of the table.

    build(spec, logits_fn, norm, clip, compact) -> fn(x, y, eps, seed): eps a scalar or [B] tensor
        (a Python float when `python_eps`), seed [2]; `clip` is {clip_min, clip_max}; `compact`:
        attack only the examples not yet fooled, on dynamic sub-batches (False under XLA).
    default_steps: iterations (Square: queries per restart; FAB: iterations per target).
    norms: the threat models it supports.
    white_box: reads gradients; iterative: more than one gradient step.
    options: the AttackSpec fields beyond steps and restarts it takes.
    fixed_steps: the only allowed number of steps (FGSM: 1).
    python_eps: eps must be a Python number (one trace per eps).
    """

    build: Callable[..., AttackFn]
    default_steps: int
    norms: tuple[str, ...]
    white_box: bool
    iterative: bool
    options: frozenset[str] = frozenset()
    fixed_steps: int | None = None
    python_eps: bool = False


def _with_restarts(single, logits_fn, x, y, restarts: int, seed):
    """Python-unrolled restarts of `single(seed)`, keeping a misclassified result per example."""
    best = single(seed)
    for r in range(1, restarts):
        fooled = subbatch.misclassified(logits_fn(best), y)
        new = single(rng.fold_in(seed, r))
        best = tf.where(tf.reshape(fooled, [-1] + [1] * (x.shape.rank - 1)), best, new)
    return best


def _step_for(spec, eps):
    return spec.step_size if spec.step_size is not None else 2.5 * eps / spec.resolved_steps


def _build_fgsm(spec, logits_fn, norm, clip, compact):
    return lambda x, y, eps, seed: pgd.fgsm(logits_fn, x, y, eps=eps, norm=norm, **clip)


def _build_pgd(objective_name):
    def build(spec, logits_fn, norm, clip, compact):
        objective = getattr(objectives, objective_name)
        start = "uniform" if spec.resolved_random_start else "none"

        def run(x, y, eps, seed):
            def single(s):
                return pgd.pgd(logits_fn, x, y, eps=eps, step_size=_step_for(spec, eps), steps=spec.resolved_steps,
                               norm=norm, objective=objective, start=start, seed=s, keep_best=True, **clip)
            return _with_restarts(single, logits_fn, x, y, int(spec.restarts), seed)
        return run
    return build


def _build_apgd_ce(spec, logits_fn, norm, clip, compact):
    return lambda x, y, eps, seed: apgd.apgd(
        logits_fn, x, y, eps=eps, norm=norm, loss="ce", steps=spec.resolved_steps, restarts=int(spec.restarts),
        seed=seed, compact=compact, **clip)


def _build_apgd_t(spec, logits_fn, norm, clip, compact):
    return lambda x, y, eps, seed: apgd.apgd_targeted(
        logits_fn, x, y, eps=eps, norm=norm, steps=spec.resolved_steps, restarts=int(spec.restarts),
        n_target_classes=spec.n_target_classes, seed=seed, compact=compact, **clip)


def _build_fab_t(spec, logits_fn, norm, clip, compact):
    return lambda x, y, eps, seed: fab.fab_targeted(
        logits_fn, x, y, eps=eps, norm=norm, n_iter=spec.resolved_steps, restarts=int(spec.restarts),
        n_target_classes=spec.n_target_classes, seed=seed, compact=compact, **clip)


def _build_square(spec, logits_fn, norm, clip, compact):
    return lambda x, y, eps, seed: square.square(
        logits_fn, x, y, eps=eps, norm=norm, n_queries=spec.resolved_steps, p_init=spec.p_init,
        restarts=int(spec.restarts), seed=seed, compact=compact, **clip)


def _build_cleverhans_pgd(spec, logits_fn, norm, clip, compact):
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    def model_fn(z):
        # cleverhans crashes on a None input gradient (a model that rounds its input); the zero
        # term connects the input so such a gradient comes out as zeros, as in ours.
        return logits_fn(z) + 0.0 * tf.reduce_sum(z, axis=list(range(1, z.shape.rank)))[:, None]

    def run(x, y, eps, seed):
        eps = float(eps)

        def single(_):
            return projected_gradient_descent(
                model_fn, x, eps, min(float(_step_for(spec, eps)), eps), spec.resolved_steps,
                np.inf if norm == "linf" else 2, y=y, rand_init=spec.resolved_random_start,
                sanity_checks=False, **clip)
        return _with_restarts(single, logits_fn, x, y, int(spec.restarts), seed)
    return run


_BOTH = ("linf", "l2")
_PGD_OPTIONS = frozenset({"step_size", "random_start"})
ATTACKS: dict[str, AttackRow] = {
    "fgsm": AttackRow(_build_fgsm, 1, _BOTH, white_box=True, iterative=False, fixed_steps=1),
    "pgd": AttackRow(_build_pgd("cross_entropy"), 20, _BOTH, True, True, _PGD_OPTIONS),
    "pgd_margin": AttackRow(_build_pgd("margin"), 20, _BOTH, True, True, _PGD_OPTIONS),
    "apgd_ce": AttackRow(_build_apgd_ce, 100, _BOTH, True, True),
    "apgd_t": AttackRow(_build_apgd_t, 100, _BOTH, True, True, frozenset({"n_target_classes"})),
    "fab_t": AttackRow(_build_fab_t, 100, _BOTH, True, True, frozenset({"n_target_classes"})),
    "square": AttackRow(_build_square, 1000, _BOTH, white_box=False, iterative=True, options=frozenset({"p_init"})),
    "cleverhans_pgd": AttackRow(_build_cleverhans_pgd, 20, _BOTH, True, True, _PGD_OPTIONS, python_eps=True),
}
ATTACK_NAMES = tuple(ATTACKS)


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack configuration of an evaluation.

    name: a key of ATTACKS.
    steps: iterations (for 'square': queries per restart; 'fab_t': iterations per target);
        None -> the row's default_steps.
    restarts: independent random restarts; per example a misclassified result of any restart wins.
        For 'apgd_t' and 'fab_t': restarts per target class.
    step_size: absolute step for 'pgd', 'pgd_margin' and 'cleverhans_pgd' (None -> 2.5 eps / steps,
        Madry et al.; capped at eps for cleverhans).
    random_start: uniform start in the ball for the PGDs; None -> True except for 'cleverhans_pgd'
        (its random start draws from TF's global random state and so does not repeat with the
        evaluation seed). APGD and Square always start randomly, FAB-T from x.
    n_target_classes: target classes of 'apgd_t' and 'fab_t' (capped at K - 1).
    p_init: initial window fraction of 'square'.
    label: the name in reports (None -> e.g. 'pgd-20', 'apgd_t-100', 'square-5000', 'fgsm').
    """

    name: str
    steps: int | None = None
    restarts: int = 1
    step_size: float | None = None
    random_start: bool | None = None
    n_target_classes: int = 9
    p_init: float = 0.8
    label: str | None = None

    def __post_init__(self):
        if self.name not in ATTACKS:
            raise EvaluationError(f"unknown attack {self.name!r}; expected one of {ATTACK_NAMES}")
        row = ATTACKS[self.name]
        if self.steps is not None and int(self.steps) < 1:
            raise EvaluationError(f"{self.name}: steps must be >= 1, got {self.steps}")
        if row.fixed_steps is not None and self.steps not in (None, row.fixed_steps):
            raise EvaluationError(f"{self.name} takes exactly {row.fixed_steps} step(s)")
        if int(self.restarts) < 1:
            raise EvaluationError(f"{self.name}: restarts must be >= 1, got {self.restarts}")
        if self.step_size is not None:
            if "step_size" not in row.options:
                raise EvaluationError(f"{self.name} takes no step_size")
            if not self.step_size > 0:
                raise EvaluationError(f"{self.name}: step_size must be > 0, got {self.step_size}")
        if self.random_start is not None and "random_start" not in row.options:
            raise EvaluationError(f"{self.name} takes no random_start setting")
        if int(self.n_target_classes) < 1:
            raise EvaluationError("n_target_classes must be >= 1")
        if not 0.0 < self.p_init <= 1.0:
            raise EvaluationError(f"p_init must be in (0, 1], got {self.p_init}")

    @property
    def row(self) -> AttackRow:
        return ATTACKS[self.name]

    @property
    def resolved_steps(self) -> int:
        return int(self.steps) if self.steps is not None else self.row.default_steps

    @property
    def resolved_random_start(self) -> bool:
        if self.random_start is not None:
            return bool(self.random_start)
        return self.name != "cleverhans_pgd"

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        if self.row.fixed_steps is not None:
            return self.name
        text = f"{self.name}-{self.resolved_steps}"
        if self.restarts > 1:
            text += f"x{self.restarts}"
        return text

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(steps=self.resolved_steps, random_start=self.resolved_random_start, label=self.display)
        return out


def attack_function(spec: AttackSpec, logits_fn: LogitsFn, norm: str, clip_min: float = 0.0,
                    clip_max: float = 1.0, compact: bool = True) -> AttackFn:
    """A traceable `fn(x, y, eps, seed) -> x_adv` for `spec` (eps a scalar or [B]; seed [2]).

    For rows with `python_eps` (cleverhans) eps must be a Python number. `compact`: APGD, FAB-T and
    Square attack only the examples not yet misclassified, on sub-batches of dynamic size (False for
    XLA; see `apgd._runs`).
    """
    ball.check_norm(norm)
    if norm not in spec.row.norms:
        raise EvaluationError(f"{spec.name} supports only {', '.join(spec.row.norms)}")
    return spec.row.build(spec, logits_fn, norm, dict(clip_min=clip_min, clip_max=clip_max), compact)


def autoattack_specs(square_queries: int = 5000) -> list[AttackSpec]:
    """AutoAttack's standard version for l-inf and l2 (fra31/auto-attack `autoattack.py`,
    `set_version('standard')`): APGD-CE (100 iterations, 1 restart), APGD-T (9 targets, 100
    iterations, 1 restart), FAB-T (9 targets, 100 iterations, 1 restart), Square (5,000 queries,
    p_init 0.8, 1 restart), run in that order, each on the examples still robust."""
    return [AttackSpec("apgd_ce", steps=100), AttackSpec("apgd_t", steps=100, n_target_classes=9),
            AttackSpec("fab_t", steps=100, n_target_classes=9),
            AttackSpec("square", steps=int(square_queries), p_init=0.8)]


SUITES: dict[str, list[AttackSpec]] = {
    "quick": [AttackSpec("pgd", steps=20)],
    "apgd": [AttackSpec("apgd_ce"), AttackSpec("apgd_t")],
    "apgd_square": [AttackSpec("apgd_ce"), AttackSpec("apgd_t"), AttackSpec("square", steps=1000)],
    "autoattack": autoattack_specs(),
}
SEQUENTIAL_SUITES = ("autoattack",)  # run stage by stage on the examples still robust
SUITE_HELP = {
    "quick": "PGD-20",
    "apgd": "APGD-CE + APGD-T, each on every example",
    "apgd_square": "APGD-CE + APGD-T + Square-1000, each on every example",
    "autoattack": "AutoAttack's standard version: APGD-CE, APGD-T, FAB-T, Square-5000, each on the survivors",
}


def resolve_attacks(attacks: str | AttackSpec | Iterable[str | AttackSpec]) -> list[AttackSpec]:
    """AttackSpecs from a suite name, an attack name, a spec, or a list of those."""
    if isinstance(attacks, (str, AttackSpec)):
        attacks = [attacks]
    out: list[AttackSpec] = []
    for item in attacks:
        if isinstance(item, AttackSpec):
            out.append(item)
        elif item in SUITES:
            out.extend(SUITES[item])
        elif isinstance(item, str):
            out.append(AttackSpec(item))
        else:
            raise EvaluationError(f"not an attack: {item!r}")
    if not out:
        raise EvaluationError("no attacks given")
    labels = [a.display for a in out]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise EvaluationError(f"attack labels must be unique, repeated: {dupes} (set label=...)")
    return out


def with_square_queries(specs: list[AttackSpec], queries: int | None) -> list[AttackSpec]:
    """`specs` with every Square attack set to `queries` queries (None: unchanged)."""
    if queries is None:
        return list(specs)
    if int(queries) < 1:
        raise EvaluationError(f"square queries must be >= 1, got {queries}")
    return [dataclasses.replace(s, steps=int(queries)) if s.name == "square" else s for s in specs]
