"""Robust accuracy under a list of attacks and eps values, per-example worst case, and the
gradient-masking sanity checks of Carlini et al. 2019 ("On Evaluating Adversarial Robustness").

    report = robust_accuracy(lambda x: model(x, training=False), (x_test, y_test),
                             attacks="standard", eps_values=[0.1, 0.2, 0.3], norm="linf")
    report.to_json("eval.json"); print(report.to_markdown()); report.plot("eval.png")

Every attack runs in one `tf.function` per attack configuration, traced once for the batch shape
(the last batch is padded by repeating its last example, the padding is dropped afterwards) with
eps and the seed passed as tensors, so neither a new eps nor a new batch retraces (the cleverhans
PGD takes eps only as a Python number, so it traces once per eps). The model is always called in
inference mode: pass `lambda x: model(x, training=False)`, a SavedModel function from
`tfrobust.export.load_logits_fn`, or a `keras.Model` (wrapped with `training=False` here).

Accuracy under an attack is plain accuracy on the adversarial examples it returns. The per-example
worst case counts an example as robust only if it is classified correctly clean (the zero
perturbation is in every ball) and under every attack, so it is at most the clean accuracy and at
most every single attack's accuracy.

Randomness: the seed of a batch depends on the evaluation seed, the attack's label and the batch
index, not on eps (common random numbers make the accuracy-vs-eps curves smoother), so a run repeats
exactly for the same seed, batch size and data order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import zlib
from typing import Any, Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfrobust.errors import TfrobustError
from tfrobust import losses, rng
from tfrobust.attacks import apgd, ball, objectives, pgd, square, subbatch
from tfrobust.attacks.objectives import LogitsFn

ATTACK_NAMES = ("fgsm", "pgd", "pgd_margin", "apgd_ce", "apgd_t", "square", "cleverhans_pgd")
DEFAULT_STEPS = {"fgsm": 1, "pgd": 20, "pgd_margin": 20, "apgd_ce": 100, "apgd_t": 100,
                 "square": 1000, "cleverhans_pgd": 20}
WHITE_BOX = ("fgsm", "pgd", "pgd_margin", "apgd_ce", "apgd_t", "cleverhans_pgd")
ITERATIVE_WHITE_BOX = ("pgd", "pgd_margin", "apgd_ce", "apgd_t", "cleverhans_pgd")
LINF_ONLY = ("square",)
CHECK_NAMES = ("budget", "eps_monotonic", "large_eps", "more_steps", "iterative_vs_fgsm",
               "black_box", "cleverhans_agreement")


REPORT_FILES = ("report.json", "report.md", "accuracy_vs_eps.png", "logs")  # what Report.save writes


class EvaluationError(TfrobustError):
    """Bad evaluation settings or data."""


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack configuration of an evaluation.

    name: one of ATTACK_NAMES.
    steps: iterations (for 'square': queries per restart); None -> DEFAULT_STEPS[name].
    restarts: independent random restarts; per example a misclassified result of any restart wins.
        For 'apgd_t': restarts per target class.
    step_size: absolute step for 'pgd', 'pgd_margin' and 'cleverhans_pgd' (None -> 2.5 eps / steps,
        Madry et al.; capped at eps for cleverhans); the parameter-free attacks ('apgd_ce',
        'apgd_t', 'square') and 'fgsm' (one step of size eps) take none.
    random_start: uniform start in the ball; None -> True for 'pgd'/'pgd_margin', False for
        'cleverhans_pgd' (its random start draws from TF's global random state and so does not
        repeat with the evaluation seed). APGD and Square always start randomly.
    n_target_classes: target classes of 'apgd_t' (capped at K - 1).
    p_init: initial window fraction of 'square'.
    label: the name in reports (None -> e.g. 'pgd-20', 'apgd_t-100', 'square-1000', 'fgsm').
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
        if self.name not in ATTACK_NAMES:
            raise EvaluationError(f"unknown attack {self.name!r}; expected one of {ATTACK_NAMES}")
        if self.steps is not None and int(self.steps) < 1:
            raise EvaluationError(f"{self.name}: steps must be >= 1, got {self.steps}")
        if self.name == "fgsm" and self.steps not in (None, 1):
            raise EvaluationError("fgsm takes exactly one step")
        if int(self.restarts) < 1:
            raise EvaluationError(f"{self.name}: restarts must be >= 1, got {self.restarts}")
        if self.step_size is not None:
            if self.name not in ("pgd", "pgd_margin", "cleverhans_pgd"):
                raise EvaluationError(f"{self.name} takes no step_size")
            if not self.step_size > 0:
                raise EvaluationError(f"{self.name}: step_size must be > 0, got {self.step_size}")
        if self.random_start is not None and self.name not in ("pgd", "pgd_margin", "cleverhans_pgd"):
            raise EvaluationError(f"{self.name} takes no random_start setting")
        if int(self.n_target_classes) < 1:
            raise EvaluationError("n_target_classes must be >= 1")
        if not 0.0 < self.p_init <= 1.0:
            raise EvaluationError(f"p_init must be in (0, 1], got {self.p_init}")

    @property
    def resolved_steps(self) -> int:
        return int(self.steps) if self.steps is not None else DEFAULT_STEPS[self.name]

    @property
    def resolved_random_start(self) -> bool:
        if self.random_start is not None:
            return bool(self.random_start)
        return self.name != "cleverhans_pgd"

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        if self.name == "fgsm":
            return "fgsm"
        text = f"{self.name}-{self.resolved_steps}"
        if self.restarts > 1:
            text += f"x{self.restarts}"
        return text

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(steps=self.resolved_steps, random_start=self.resolved_random_start,
                   label=self.display)
        return out


SUITES: dict[str, list[AttackSpec]] = {
    "quick": [AttackSpec("pgd", steps=20)],
    "standard": [AttackSpec("apgd_ce"), AttackSpec("apgd_t")],
    "full": [AttackSpec("apgd_ce"), AttackSpec("apgd_t"), AttackSpec("square")],
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


# ---------------------------------------------------------------------------------------------
# Attack functions


def _with_restarts(single, logits_fn, x, y, restarts: int, seed):
    """Python-unrolled restarts of `single(seed)`, keeping a misclassified result per example."""
    best = single(seed)
    for r in range(1, restarts):
        fooled = subbatch.misclassified(logits_fn(best), y)
        new = single(rng.fold_in(seed, r))
        best = tf.where(tf.reshape(fooled, [-1] + [1] * (x.shape.rank - 1)), best, new)
    return best


def attack_function(spec: AttackSpec, logits_fn: LogitsFn, norm: str,
                    clip_min: float = 0.0, clip_max: float = 1.0,
                    compact: bool = True) -> Callable[..., tf.Tensor]:
    """A traceable `fn(x, y, eps, seed) -> x_adv` for `spec` (eps a scalar or [B]; seed [2]).

    For 'cleverhans_pgd' eps must be a Python number. `compact`: APGD and Square attack only the
    examples not yet misclassified, on sub-batches of dynamic size (False for XLA; see `apgd._runs`).
    """
    ball.check_norm(norm)
    if spec.name in LINF_ONLY and norm != "linf":
        raise EvaluationError(f"{spec.name} supports only norm='linf'")
    steps, restarts = spec.resolved_steps, int(spec.restarts)
    clip = dict(clip_min=clip_min, clip_max=clip_max)

    def step_for(eps):
        return spec.step_size if spec.step_size is not None else 2.5 * eps / steps

    if spec.name == "fgsm":
        return lambda x, y, eps, seed: pgd.fgsm(logits_fn, x, y, eps=eps, norm=norm, **clip)
    if spec.name in ("pgd", "pgd_margin"):
        objective = objectives.cross_entropy if spec.name == "pgd" else objectives.margin
        start = "uniform" if spec.resolved_random_start else "none"

        def run_pgd(x, y, eps, seed):
            def single(s):
                return pgd.pgd(logits_fn, x, y, eps=eps, step_size=step_for(eps),
                               steps=steps, norm=norm, objective=objective, start=start,
                               seed=s, keep_best=True, **clip)
            return _with_restarts(single, logits_fn, x, y, restarts, seed)

        return run_pgd
    if spec.name == "apgd_ce":
        return lambda x, y, eps, seed: apgd.apgd(
            logits_fn, x, y, eps=eps, norm=norm, loss="ce", steps=steps, restarts=restarts,
            seed=seed, compact=compact, **clip)
    if spec.name == "apgd_t":
        return lambda x, y, eps, seed: apgd.apgd_targeted(
            logits_fn, x, y, eps=eps, norm=norm, steps=steps, restarts=restarts,
            n_target_classes=spec.n_target_classes, seed=seed, compact=compact, **clip)
    if spec.name == "square":
        return lambda x, y, eps, seed: square.square(
            logits_fn, x, y, eps=eps, norm=norm, n_queries=steps, p_init=spec.p_init,
            restarts=restarts, seed=seed, compact=compact, **clip)
    if spec.name == "cleverhans_pgd":
        from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

        def model_fn(z):
            # cleverhans crashes on a None input gradient (a model that rounds its input); the
            # zero term connects the input so such a gradient comes out as zeros, as in ours.
            return logits_fn(z) + 0.0 * tf.reduce_sum(z, axis=list(range(1, z.shape.rank)))[:, None]

        def run_cleverhans(x, y, eps, seed):
            eps = float(eps)

            def single(_):
                return projected_gradient_descent(
                    model_fn, x, eps, min(float(step_for(eps)), eps), steps,
                    np.inf if norm == "linf" else 2, clip_min=clip_min, clip_max=clip_max, y=y,
                    rand_init=spec.resolved_random_start, sanity_checks=False)
            return _with_restarts(single, logits_fn, x, y, restarts, seed)

        return run_cleverhans
    raise EvaluationError(f"unknown attack {spec.name!r}")  # unreachable: validated in AttackSpec


# ---------------------------------------------------------------------------------------------
# Data


def _as_logits_fn(model_or_fn) -> LogitsFn:
    if isinstance(model_or_fn, keras.Model):
        model = model_or_fn
        return lambda x: losses.as_float(model(x, training=False))
    if not callable(model_or_fn):
        raise EvaluationError("logits_fn must be callable (images -> logits)")
    return lambda x: losses.as_float(model_or_fn(x))


def _to_unit(x: np.ndarray) -> np.ndarray:
    """Images in [0, 1] of the compute dtype `keras.config.floatx()`."""
    dtype = np.dtype(keras.config.floatx())
    if x.dtype == np.uint8:
        return x.astype(dtype) / 255.0
    return x.astype(dtype)


def load_arrays(data, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x NHWC in [0, 1] of `keras.config.floatx()`, y int32) from (x, y) arrays or a tf.data.Dataset of (x, y)
    (batched or not), keeping the first `limit` examples."""
    if limit is not None and int(limit) < 1:
        raise EvaluationError(f"limit must be None or >= 1, got {limit}")
    if isinstance(data, tf.data.Dataset):
        xs, ys, count = [], [], 0
        batched = len(data.element_spec[0].shape) == 4
        for xb, yb in data:
            xb, yb = np.asarray(xb), np.asarray(yb)
            if not batched:
                xb, yb = xb[None], yb[None]
            xs.append(xb)
            ys.append(yb)
            count += len(xb)
            if limit is not None and count >= limit:
                break
        if not xs:
            raise EvaluationError("the dataset is empty")
        x, y = np.concatenate(xs), np.concatenate(ys)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
    else:
        raise EvaluationError("data must be (x, y) arrays or a tf.data.Dataset of (x, y)")
    if limit is not None:
        x, y = x[: int(limit)], y[: int(limit)]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise EvaluationError(f"expected x [N, H, W, C] and y [N] with N > 0, got {x.shape} and {y.shape}")
    x = _to_unit(x)
    if x.min() < 0.0 or x.max() > 1.0:
        hint = " (divide 0..255 images by 255)" if x.max() > 1.0 else ""
        raise EvaluationError(f"images must be in [0, 1], got [{x.min()}, {x.max()}]{hint}")
    if not np.issubdtype(y.dtype, np.integer):
        raise EvaluationError(f"labels must be integers, got {y.dtype}")
    return x, y.astype(np.int32)


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    if len(a) == size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def _distance(x_adv: np.ndarray, x: np.ndarray, norm: str) -> np.ndarray:
    d = (x_adv - x).reshape(len(x), -1)
    return np.abs(d).max(axis=1) if norm == "linf" else np.sqrt((d.astype(np.float64) ** 2).sum(axis=1))


class _Runner:
    """Runs compiled attacks batch by batch on fixed arrays and scores them."""

    def __init__(self, logits_fn, x, y, norm, batch_size, seed, clip_min, clip_max, jit_compile,
                 progbar=None):
        self.logits_fn, self.x, self.y, self.norm = logits_fn, x, y, norm
        self.batch_size = min(int(batch_size), len(x))
        self.seed, self.clip_min, self.clip_max = int(seed), clip_min, clip_max
        self.jit_compile = jit_compile
        self.progbar = progbar
        self.spans = _batches(len(x), self.batch_size)
        x_spec = tf.TensorSpec([self.batch_size, *x.shape[1:]], keras.config.floatx())
        y_spec = tf.TensorSpec([self.batch_size], tf.int32)
        self.x_spec, self.y_spec = x_spec, y_spec
        predict = lambda xb: tf.argmax(logits_fn(xb), axis=-1, output_type=tf.int32)  # noqa: E731
        self._predict = tf.function(predict, input_signature=[x_spec], jit_compile=jit_compile)
        self._compiled: dict[AttackSpec, Any] = {}
        self.trace_seconds: dict[str, float] = {}

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = []
        for start, stop in self.spans if len(x) == len(self.x) else _batches(len(x), self.batch_size):
            out.append(self._predict(_pad(x[start:stop], self.batch_size)).numpy()[: stop - start])
        return np.concatenate(out)

    def compiled(self, spec: AttackSpec):
        if spec not in self._compiled:
            fn = attack_function(spec, self.logits_fn, self.norm, self.clip_min, self.clip_max,
                                 compact=not self.jit_compile)
            # A partial, so TF's retracing detector (keyed by code object) does not count the
            # one trace of each attack configuration as retracing of one function.
            fn = functools.partial(fn)
            if spec.name == "cleverhans_pgd":  # eps must stay a Python float: one trace per eps
                self._compiled[spec] = tf.function(fn, jit_compile=self.jit_compile)
            else:
                compiled = tf.function(
                    fn, jit_compile=self.jit_compile,
                    input_signature=[self.x_spec, self.y_spec, tf.TensorSpec([], keras.config.floatx()),
                                     tf.TensorSpec([2], tf.int64)])
                start_time = time.perf_counter()
                compiled.get_concrete_function()  # trace now, so attack times exclude tracing
                self.trace_seconds[spec.display] = time.perf_counter() - start_time
                self._compiled[spec] = compiled
        return self._compiled[spec]

    def tracing_counts(self) -> dict[str, int]:
        """How often each compiled attack was traced (1 each, except cleverhans: 1 per eps)."""
        return {s.display: f.experimental_get_tracing_count() for s, f in self._compiled.items()}

    def batch_seed(self, spec: AttackSpec, batch_index: int) -> tf.Tensor:
        base = rng.fold_in(rng.as_seed(self.seed), zlib.crc32(spec.display.encode()) & 0x7FFFFFFF)
        return tf.cast(rng.fold_in(base, batch_index), tf.int64)

    def attack(self, spec: AttackSpec, eps: float) -> tuple[np.ndarray, float]:
        """Adversarial examples for all inputs and the wall time (without tracing, except for
        cleverhans, traced on the first call with each eps)."""
        fn = self.compiled(spec)
        eps_arg = float(eps) if spec.name == "cleverhans_pgd" else tf.constant(eps, keras.config.floatx())
        out = []
        start_time = time.perf_counter()
        for b, (start, stop) in enumerate(self.spans):
            xb = tf.constant(_pad(self.x[start:stop], self.batch_size))
            yb = tf.constant(_pad(self.y[start:stop], self.batch_size))
            out.append(fn(xb, yb, eps_arg, self.batch_seed(spec, b)).numpy()[: stop - start])
            if self.progbar is not None:
                self.progbar.add(1)
        return np.concatenate(out), time.perf_counter() - start_time


# ---------------------------------------------------------------------------------------------
# Report


@dataclasses.dataclass
class Report:
    """The results of `robust_accuracy`.

    accuracy[label][j] is the accuracy under attack `label` at eps_values[j]; worst_case[j] the
    per-example worst case over all attacks (and the clean input) at eps_values[j]. The per-example
    arrays (clean_correct [N], correct[label] [E, N], worst_correct [E, N], adversarial[label]
    [E, N, H, W, C] when kept) stay in memory and go to JSON only on request.
    seconds[label][j]: wall time of the attack over all examples at eps_values[j], tracing
    excluded (trace_seconds[label]; cleverhans traces inside its first call per eps).
    max_perturbation[label][j]: the largest perturbation norm found. traces[label]: how often
    each compiled attack (check attacks included) was traced.
    """

    norm: str
    eps_values: list[float]
    attacks: list[dict[str, Any]]
    clean_accuracy: float
    accuracy: dict[str, list[float]]
    worst_case: list[float]
    n_examples: int
    seed: int
    batch_size: int
    checks: list[dict[str, Any]]
    checks_run: list[str]
    checks_skipped: dict[str, str]
    seconds: dict[str, list[float]]
    max_perturbation: dict[str, list[float]]
    skipped_attacks: dict[str, str]
    clean_correct: np.ndarray
    correct: dict[str, np.ndarray]
    worst_correct: np.ndarray
    labels: np.ndarray
    adversarial: dict[str, np.ndarray] | None = None
    traces: dict[str, int] = dataclasses.field(default_factory=dict)
    trace_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def attack_labels(self) -> list[str]:
        return list(self.accuracy)

    @property
    def passed(self) -> bool:
        """True when every sanity check that ran passed."""
        return all(c["status"] == "pass" for c in self.checks)

    def check(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.checks if c["name"] == name), None)

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        out = {
            "n_examples": self.n_examples,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "norm": self.norm,
            "eps_values": list(self.eps_values),
            "attacks": self.attacks,
            "skipped_attacks": self.skipped_attacks,
            "clean_accuracy": self.clean_accuracy,
            "accuracy": self.accuracy,
            "worst_case": self.worst_case,
            "seconds": self.seconds,
            "trace_seconds": self.trace_seconds,
            "max_perturbation": self.max_perturbation,
            "checks": self.checks,
            "checks_run": self.checks_run,
            "checks_skipped": self.checks_skipped,
        }
        if per_example:
            out["per_example"] = {
                "labels": self.labels.tolist(),
                "clean_correct": self.clean_correct.astype(int).tolist(),
                "correct": {k: v.astype(int).tolist() for k, v in self.correct.items()},
                "worst_correct": self.worst_correct.astype(int).tolist(),
            }
        return out

    def to_json(self, path: str, per_example: bool = False) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(_jsonable(self.to_dict(per_example)), f, indent=2)
        return path

    def to_markdown(self) -> str:
        eps_cols = [f"eps={e:g}" for e in self.eps_values]
        lines = [
            f"Robust accuracy ({self.norm}, {self.n_examples} examples, seed {self.seed}); "
            f"clean accuracy {100 * self.clean_accuracy:.2f}%",
            "",
            "| attack | " + " | ".join(eps_cols) + " |",
            "| --- | " + " | ".join("---:" for _ in eps_cols) + " |",
        ]
        for label, accs in self.accuracy.items():
            lines.append(f"| {label} | " + " | ".join(f"{100 * a:.2f}" for a in accs) + " |")
        lines.append("| **worst case** | " + " | ".join(f"**{100 * a:.2f}**" for a in self.worst_case) + " |")
        if self.skipped_attacks:
            skipped = "; ".join(f"{k} ({v})" for k, v in self.skipped_attacks.items())
            lines += ["", "Skipped attacks: " + skipped]
        if self.checks:
            lines += ["", "| sanity check | status | detail |", "| --- | --- | --- |"]
            for c in self.checks:
                lines.append(f"| {c['name']} | {c['status']} | {c['detail']} |")
        if self.checks_skipped:
            not_run = "; ".join(f"{k} ({v})" for k, v in self.checks_skipped.items())
            lines += ["", "Checks not run: " + not_run]
        return "\n".join(lines) + "\n"

    def plot(self, path: str) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        eps = np.asarray(self.eps_values)
        order = np.argsort(eps)
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, accs in self.accuracy.items():
            ax.plot(eps[order], 100 * np.asarray(accs)[order], marker="o", label=label)
        ax.plot(eps[order], 100 * np.asarray(self.worst_case)[order], marker="s", color="black",
                linewidth=2.5, label="worst case")
        ax.axhline(100 * self.clean_accuracy, color="gray", linestyle="--", label="clean")
        ax.set_xlabel(f"eps ({self.norm})")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"Robust accuracy, {self.n_examples} examples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def write_tensorboard(self, logdir: str, step: int = 0) -> str:
        """Scalars 'robust_accuracy/<attack>/eps_<eps>', '.../worst_case/...', 'clean_accuracy'."""
        writer = tf.summary.create_file_writer(logdir)
        with writer.as_default():
            tf.summary.scalar("clean_accuracy", self.clean_accuracy, step=step)
            for j, eps in enumerate(self.eps_values):
                for label, accs in self.accuracy.items():
                    tf.summary.scalar(f"robust_accuracy/{label}/eps_{eps:g}", accs[j], step=step)
                tf.summary.scalar(f"robust_accuracy/worst_case/eps_{eps:g}", self.worst_case[j], step=step)
        writer.flush()
        writer.close()
        return logdir

    def save(self, directory: str) -> dict[str, str]:  # writes REPORT_FILES
        """Write report.json, report.md, accuracy_vs_eps.png and TensorBoard scalars (logs/)."""
        os.makedirs(directory, exist_ok=True)
        paths = {"json": os.path.join(directory, "report.json"), "markdown": os.path.join(directory, "report.md"),
                 "plot": os.path.join(directory, "accuracy_vs_eps.png"), "logs": os.path.join(directory, "logs")}
        self.to_json(paths["json"])
        with open(paths["markdown"], "w") as f:
            f.write(self.to_markdown())
        self.plot(paths["plot"])
        self.write_tensorboard(paths["logs"])
        return paths


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value


# ---------------------------------------------------------------------------------------------
# Sanity checks


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
    check_eps: float | None = None


def _record(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "status": "pass" if ok else "warn", "detail": detail}


def _pct(a: float) -> str:
    return f"{100 * a:.2f}%"


def _run_checks(runner: _Runner, specs, eps_values, acc, dist, range_excess, wanted, settings,
                skipped) -> tuple[list[dict], list[str]]:
    tol = settings.tolerance
    norm = runner.norm
    checks: list[dict] = []
    ran: list[str] = []
    eps_sorted = sorted(eps_values)
    check_eps = settings.check_eps if settings.check_eps is not None else eps_sorted[len(eps_sorted) // 2]
    extra_acc: dict[tuple[str, float], float] = {}

    def accuracy_of(spec: AttackSpec, eps: float) -> float:
        key = (spec.display, float(eps))
        if key not in extra_acc:
            x_adv, _ = runner.attack(spec, eps)
            extra_acc[key] = float(np.mean(runner.predict(x_adv) == runner.y))
        return extra_acc[key]

    def want(name: str) -> bool:
        return name in wanted

    if want("budget"):
        ran.append("budget")
        limit = {e: e * (1 + 1e-5) + 1e-6 for e in eps_values}
        worst = {label: max(d / limit[e] for d, e in zip(ds, eps_values)) for label, ds in dist.items()}
        outside = max(range_excess.values())
        ok = all(w <= 1.0 for w in worst.values()) and outside <= 1e-6
        detail = ("largest perturbation / eps: " + ", ".join(f"{k} {v:.4f}" for k, v in worst.items())
                  + f"; largest step outside [{runner.clip_min:g}, {runner.clip_max:g}]: {outside:.2g}")
        checks.append(_record("budget", ok, detail))

    if want("eps_monotonic"):
        if len(eps_values) < 2:
            skipped["eps_monotonic"] = "needs at least two eps values"
        else:
            ran.append("eps_monotonic")
            order = np.argsort(eps_values)
            rises = {}
            for label, accs in acc.items():
                a = np.asarray(accs)[order]
                rises[label] = float(np.max(np.diff(a))) if len(a) > 1 else 0.0
            ok = all(r <= tol for r in rises.values())
            detail = "largest rise of accuracy with eps: " + ", ".join(
                f"{k} {100 * v:+.2f} pts" for k, v in rises.items()) + f" (tolerance {100 * tol:.1f})"
            checks.append(_record("eps_monotonic", ok, detail))

    pgd_few = AttackSpec("pgd", steps=settings.few_steps, label=f"check:pgd-{settings.few_steps}")
    pgd_many = AttackSpec("pgd", steps=settings.many_steps, label=f"check:pgd-{settings.many_steps}")

    if want("large_eps"):
        ran.append("large_eps")
        big = settings.large_eps
        if big is None:
            big = 0.5 if norm == "linf" else 0.5 * math.sqrt(float(np.prod(runner.x.shape[1:])))
        spec = AttackSpec("pgd", steps=settings.large_eps_steps,
                          label=f"check:pgd-{settings.large_eps_steps}-large")
        a = accuracy_of(spec, big)
        checks.append(_record(
            "large_eps", a <= settings.large_eps_max_accuracy,
            f"PGD-{settings.large_eps_steps} at eps={big:g}: accuracy {_pct(a)} "
            f"(expected <= {_pct(settings.large_eps_max_accuracy)})"))

    if want("more_steps"):
        ran.append("more_steps")
        a_few, a_many = accuracy_of(pgd_few, check_eps), accuracy_of(pgd_many, check_eps)
        checks.append(_record(
            "more_steps", a_many <= a_few + tol,
            f"eps={check_eps:g}: PGD-{settings.few_steps} {_pct(a_few)}, "
            f"PGD-{settings.many_steps} {_pct(a_many)}"))

    if want("iterative_vs_fgsm"):
        ran.append("iterative_vs_fgsm")
        fgsm_spec = next((s for s in specs if s.name == "fgsm"), AttackSpec("fgsm", label="check:fgsm"))
        iterative = [s for s in specs if s.name in ITERATIVE_WHITE_BOX]
        parts, ok = [], True
        if iterative:
            for j, eps in enumerate(eps_values):
                a_fgsm = acc[fgsm_spec.display][j] if fgsm_spec in specs else accuracy_of(fgsm_spec, eps)
                for s in iterative:
                    a = acc[s.display][j]
                    ok &= a <= a_fgsm + tol
                    parts.append(f"eps={eps:g} {s.display} {_pct(a)} vs fgsm {_pct(a_fgsm)}")
        else:
            if fgsm_spec in specs and check_eps in eps_values:
                a_fgsm = acc[fgsm_spec.display][list(eps_values).index(check_eps)]
            else:
                a_fgsm = accuracy_of(fgsm_spec, check_eps)
            a = accuracy_of(pgd_few, check_eps)
            ok = a <= a_fgsm + tol
            parts.append(f"eps={check_eps:g} {pgd_few.display} {_pct(a)} vs fgsm {_pct(a_fgsm)}")
        checks.append(_record("iterative_vs_fgsm", ok, "; ".join(parts)))

    if want("black_box"):
        if norm != "linf":
            skipped["black_box"] = "the Square attack here is l-inf only"
        else:
            ran.append("black_box")
            square_specs = [s for s in specs if s.name == "square"]
            white = [s for s in specs if s.name in WHITE_BOX]
            parts, ok = [], True
            if square_specs:
                pairs = [(j, eps) for j, eps in enumerate(eps_values)]
            else:
                pairs = [(None, check_eps)]
            for j, eps in pairs:
                if square_specs:
                    a_sq = min(acc[s.display][j] for s in square_specs)
                    sq_name = square_specs[0].display
                else:
                    sq = AttackSpec("square", steps=settings.square_queries,
                                    label=f"check:square-{settings.square_queries}")
                    a_sq, sq_name = accuracy_of(sq, eps), sq.display
                if white and j is not None:
                    a_wb = min(acc[s.display][j] for s in white)
                    wb_name = min(white, key=lambda s: acc[s.display][j]).display
                elif white and eps in eps_values:
                    jj = list(eps_values).index(eps)
                    a_wb = min(acc[s.display][jj] for s in white)
                    wb_name = min(white, key=lambda s: acc[s.display][jj]).display
                else:
                    a_wb, wb_name = accuracy_of(pgd_many, eps), pgd_many.display
                ok &= a_sq >= a_wb - tol
                parts.append(f"eps={eps:g} {sq_name} {_pct(a_sq)} vs strongest white-box "
                             f"{wb_name} {_pct(a_wb)}")
            detail = "; ".join(parts)
            if not ok:
                detail = "black-box attack stronger than white-box (gradient masking?): " + detail
            checks.append(_record("black_box", ok, detail))

    if want("cleverhans_agreement"):
        try:
            import cleverhans.tf2.attacks.projected_gradient_descent  # noqa: F401
        except ImportError as err:  # pragma: no cover - cleverhans is a dependency
            skipped["cleverhans_agreement"] = f"cleverhans not importable: {err}"
        else:
            ran.append("cleverhans_agreement")
            n = settings.cleverhans_steps
            ours = AttackSpec("pgd", steps=n, random_start=False, label=f"check:pgd-{n}-nostart")
            theirs = AttackSpec("cleverhans_pgd", steps=n, random_start=False,
                                label=f"check:cleverhans_pgd-{n}")
            a_ours, a_theirs = accuracy_of(ours, check_eps), accuracy_of(theirs, check_eps)
            checks.append(_record(
                "cleverhans_agreement", abs(a_ours - a_theirs) <= max(tol, 0.01),
                f"eps={check_eps:g}, {n} steps, no random start: ours {_pct(a_ours)}, "
                f"cleverhans {_pct(a_theirs)}"))
    return checks, ran


# ---------------------------------------------------------------------------------------------
# Entry point


def robust_accuracy(
    logits_fn: LogitsFn | keras.Model,
    dataset_or_arrays,
    *,
    attacks: str | AttackSpec | Sequence[str | AttackSpec] = "standard",
    eps_values: Sequence[float],
    norm: str = "linf",
    batch_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
    checks: str | Sequence[str] | None = "all",
    check_settings: CheckSettings | None = None,
    keep_adversarial: bool = False,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    jit_compile: bool = False,
    verbose: bool = False,
) -> Report:
    """Accuracy under each attack at each eps, the per-example worst case, and sanity checks.

    Args:
      logits_fn: images [B, H, W, C] in [0, 1] -> logits, called in inference mode (or a
        keras.Model, called with training=False).
      dataset_or_arrays: (x, y) arrays or a tf.data.Dataset of (x, y), batched or not.
      attacks: a suite name ('quick', 'standard', 'full'), attack names, AttackSpecs, or a mix.
        Attacks that do not support `norm` (Square under l2) are skipped and listed.
      eps_values: perturbation budgets.
      norm: 'linf' or 'l2'.
      batch_size: examples per compiled call (the last batch is padded).
      limit: evaluate the first `limit` examples only.
      seed: seed of every random start and search.
      checks: 'all', None (no checks), or a list from CHECK_NAMES.
      check_settings: see CheckSettings.
      keep_adversarial: keep the adversarial examples in `report.adversarial`.
      verbose: show a keras Progbar over batches.
    """
    ball.check_norm(norm)
    eps_values = [float(e) for e in eps_values]
    if not eps_values or any(not e > 0 or math.isinf(e) for e in eps_values):
        raise EvaluationError(f"eps_values must be positive and finite, got {eps_values}")
    if len(set(eps_values)) != len(eps_values):
        raise EvaluationError(f"eps_values must be distinct, got {eps_values}")
    if int(batch_size) < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size}")
    if checks == "all":
        wanted = list(CHECK_NAMES)
    elif checks is None:
        wanted = []
    else:
        wanted = [checks] if isinstance(checks, str) else list(checks)
        unknown = [c for c in wanted if c not in CHECK_NAMES]
        if unknown:
            raise EvaluationError(f"unknown checks {unknown}; expected some of {CHECK_NAMES}")
    settings = check_settings or CheckSettings()

    specs_all = resolve_attacks(attacks)
    skipped_attacks = {s.display: f"{s.name} supports only linf" for s in specs_all
                       if s.name in LINF_ONLY and norm != "linf"}
    specs = [s for s in specs_all if s.display not in skipped_attacks]
    if not specs:
        raise EvaluationError(f"no attack supports norm {norm!r}: {skipped_attacks}")

    fn = _as_logits_fn(logits_fn)
    x, y = load_arrays(dataset_or_arrays, limit)
    n_batches = len(_batches(len(x), min(int(batch_size), len(x))))
    progbar = keras.utils.Progbar(len(specs) * len(eps_values) * n_batches) if verbose else None
    runner = _Runner(fn, x, y, norm, batch_size, seed, clip_min, clip_max, jit_compile, progbar)

    clean_correct = runner.predict(x) == y
    correct: dict[str, np.ndarray] = {}
    accuracy: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    dist: dict[str, list[float]] = {}
    range_excess: dict[str, float] = {}
    adversarial: dict[str, np.ndarray] | None = {} if keep_adversarial else None
    for spec in specs:
        label = spec.display
        rows, times, dists, ranges, advs = [], [], [], [], []
        for eps in eps_values:
            x_adv, elapsed = runner.attack(spec, eps)
            ok = runner.predict(x_adv) == y
            rows.append(ok)
            times.append(elapsed)
            dists.append(float(_distance(x_adv, x, norm).max()))
            ranges.append(float(max(clip_min - x_adv.min(), x_adv.max() - clip_max, 0.0)))
            if keep_adversarial:
                advs.append(x_adv)
        correct[label] = np.stack(rows)
        accuracy[label] = [float(r.mean()) for r in rows]
        seconds[label] = times
        dist[label] = dists
        range_excess[label] = max(ranges)
        if keep_adversarial:
            adversarial[label] = np.stack(advs)
    worst_correct = np.broadcast_to(clean_correct, (len(eps_values), len(x))).copy()
    for rows in correct.values():
        worst_correct &= rows
    worst_case = [float(w.mean()) for w in worst_correct]

    checks_skipped: dict[str, str] = {}
    runner.progbar = None  # the checks' extra attacks are not in the progress bar's count
    check_records, checks_run = _run_checks(runner, specs, eps_values, accuracy, dist, range_excess,
                                            wanted, settings, checks_skipped)
    return Report(
        norm=norm, eps_values=eps_values, attacks=[s.to_dict() for s in specs],
        clean_accuracy=float(clean_correct.mean()), accuracy=accuracy, worst_case=worst_case,
        n_examples=len(x), seed=int(seed), batch_size=runner.batch_size, checks=check_records,
        checks_run=checks_run, checks_skipped=checks_skipped, seconds=seconds,
        max_perturbation=dist, skipped_attacks=skipped_attacks, clean_correct=clean_correct,
        correct=correct, worst_correct=worst_correct, labels=y, adversarial=adversarial,
        traces=runner.tracing_counts(),
        trace_seconds={k: v for k, v in runner.trace_seconds.items() if k in accuracy})
