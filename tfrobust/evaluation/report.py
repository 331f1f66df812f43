"""The results of an evaluation (`Report`) and its writers: JSON, a Markdown table, a plot and
TensorBoard scalars. `Report.save` writes REPORT_FILES through `tfrobust.files`, each file atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import platform
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from tfrobust import files

REPORT_FILES = ("report.json", "report.md", "accuracy_vs_eps.png", "logs")  # what Report.save writes
MODES = ("per_attack", "sequential")


def run_metadata(*, model: str | None, dataset: str | None, indices: np.ndarray) -> dict[str, Any]:
    """What was evaluated and with which software: the model path, the dataset, the examples
    (count and indices into the test split) and the tfrobust, TensorFlow, Keras, NumPy and Python
    versions."""
    import keras

    import tfrobust

    return {
        "model": os.path.abspath(model) if model else None,
        "dataset": dataset,
        "n_examples": int(len(indices)),
        "indices": [int(i) for i in indices],
        "versions": {"tfrobust": tfrobust.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
    }


@dataclasses.dataclass
class Report:
    """The results of `robust_accuracy` (and `autoattack`).

    mode 'per_attack': `accuracy[label][j]` is the accuracy under attack `label` at `eps_values[j]`,
    every attack run on every example; `worst_case[j]` the per-example worst case over all attacks
    (and the clean input). mode 'sequential' (AutoAttack): the attacks run in order, each only on
    the examples still robust; `accuracy[label][j]` is the robust accuracy after that stage,
    `attacked[label][j]` how many examples it attacked, and `worst_case[j]` the final robust accuracy.
    The per-example arrays (`clean_correct [N]`, `correct[label] [E, N]`, `worst_correct [E, N]`,
    `adversarial[label] [E, N, H, W, C]` when kept) stay in memory and go to JSON only on request.
    `seconds[label][j]`: wall time of the attack at `eps_values[j]`, tracing excluded
    (`trace_seconds[label]`); `max_perturbation[label][j]`: the largest perturbation norm found;
    `traces[label]`: how often each compiled attack (check attacks included) was traced.
    metadata: model path, dataset, examples and versions (`run_metadata`).
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
    mode: str = "per_attack"
    attacked: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    total_seconds: float = 0.0

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
            "mode": self.mode,
            "metadata": self.metadata,
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
            "total_seconds": self.total_seconds,
            "trace_seconds": self.trace_seconds,
            "max_perturbation": self.max_perturbation,
            "checks": self.checks,
            "checks_run": self.checks_run,
            "checks_skipped": self.checks_skipped,
        }
        if self.mode == "sequential":
            out["attacked"] = self.attacked
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
        with _naming(path):
            files.write_json(path, _jsonable(self.to_dict(per_example)))
        return path

    def to_markdown(self) -> str:
        eps_cols = [f"eps={e:g}" for e in self.eps_values]
        sequential = self.mode == "sequential"
        title = ("Robust accuracy after each attack, each run on the examples still robust (AutoAttack)"
                 if sequential else "Robust accuracy")
        lines = [
            f"{title} ({self.norm}, {self.n_examples} examples, seed {self.seed}); "
            f"clean accuracy {100 * self.clean_accuracy:.2f}%",
            "",
            "| attack | " + " | ".join(eps_cols) + " |",
            "| --- | " + " | ".join("---:" for _ in eps_cols) + " |",
        ]
        for label, accs in self.accuracy.items():
            name = f"after {label}" if sequential else label
            lines.append(f"| {name} | " + " | ".join(f"{100 * a:.2f}" for a in accs) + " |")
        final = "**robust accuracy**" if sequential else "**worst case**"
        lines.append(f"| {final} | " + " | ".join(f"**{100 * a:.2f}**" for a in self.worst_case) + " |")
        if sequential:
            lines += ["", "Examples attacked per stage: " + "; ".join(
                f"{label} {', '.join(str(n) for n in counts)}" for label, counts in self.attacked.items())]
        settings = "; ".join(_settings_text(a) for a in self.attacks)
        lines += ["", f"Attack settings: {settings}", f"Time: {self.total_seconds:.1f} s"]
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
        """Accuracy against eps, one line per attack (and the worst case); with a single eps, a
        bar per attack (a line over one point is a dot)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sequential = self.mode == "sequential"
        final = "robust accuracy" if sequential else "worst case"
        fig, ax = plt.subplots(figsize=(6, 4))
        if len(self.eps_values) == 1:
            names = ["clean", *(f"after {k}" if sequential else k for k in self.accuracy), final]
            values = [100 * self.clean_accuracy, *(100 * a[0] for a in self.accuracy.values()),
                      100 * self.worst_case[0]]
            colors = ["gray", *[f"C{i}" for i in range(len(self.accuracy))], "black"]
            bars = ax.bar(range(len(names)), values, color=colors)
            ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"Robust accuracy at eps={self.eps_values[0]:g} ({self.norm}), {self.n_examples} examples")
        else:
            eps = np.asarray(self.eps_values)
            order = np.argsort(eps)
            for label, accs in self.accuracy.items():
                ax.plot(eps[order], 100 * np.asarray(accs)[order], marker="o", label=label)
            ax.plot(eps[order], 100 * np.asarray(self.worst_case)[order], marker="s", color="black",
                    linewidth=2.5, label=final)
            ax.axhline(100 * self.clean_accuracy, color="gray", linestyle="--", label="clean")
            ax.set_xlabel(f"eps ({self.norm})")
            ax.set_title(f"Robust accuracy, {self.n_examples} examples")
            ax.legend(fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png = io.BytesIO()  # rendered whole first: a failed write leaves no half image
        fig.savefig(png, format="png", dpi=100)
        plt.close(fig)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with _naming(path):
            files.write_text(path, png.getvalue())
        return path

    def write_tensorboard(self, logdir: str, step: int = 0) -> str:
        """Scalars 'robust_accuracy/<attack>/eps_<eps>', '.../worst_case/...', 'clean_accuracy'."""
        writer = tf.summary.create_file_writer(logdir)
        # record_if(True): a fit that raised leaves Keras' TensorBoard callback's recording
        # condition in force in this thread.
        with writer.as_default(), tf.summary.record_if(True):
            tf.summary.scalar("clean_accuracy", self.clean_accuracy, step=step)
            for j, eps in enumerate(self.eps_values):
                for label, accs in self.accuracy.items():
                    tf.summary.scalar(f"robust_accuracy/{label}/eps_{eps:g}", accs[j], step=step)
                tf.summary.scalar(f"robust_accuracy/worst_case/eps_{eps:g}", self.worst_case[j], step=step)
        writer.flush()
        writer.close()
        return logdir

    def save(self, directory: str) -> dict[str, str]:  # writes REPORT_FILES
        """Write report.json, report.md, accuracy_vs_eps.png and TensorBoard scalars (logs/). Each
        file is written whole or not at all (`tfrobust.files.write_text`): a write that fails (a full
        disk) leaves the earlier report's file as it was, and raises OSError naming the file."""
        os.makedirs(directory, exist_ok=True)
        paths = {"json": os.path.join(directory, "report.json"), "markdown": os.path.join(directory, "report.md"),
                 "plot": os.path.join(directory, "accuracy_vs_eps.png"), "logs": os.path.join(directory, "logs")}
        self.to_json(paths["json"])
        with _naming(paths["markdown"]):
            files.write_text(paths["markdown"], self.to_markdown())
        self.plot(paths["plot"])
        self.write_tensorboard(paths["logs"])
        return paths


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """An OSError from writing `path` names it (a failed write() carries no file name)."""
    try:
        yield
    except OSError as e:
        if not e.filename:
            e.filename = path
        raise


def _settings_text(attack: dict[str, Any]) -> str:
    keys = [k for k in ("steps", "restarts", "n_target_classes", "p_init", "step_size") if attack.get(k) is not None]
    name = attack["name"]
    if name not in ("apgd_t", "fab_t"):
        keys = [k for k in keys if k != "n_target_classes"]
    if name != "square":
        keys = [k for k in keys if k != "p_init"]
    return f"{attack['label']} (" + ", ".join(f"{k} {attack[k]}" for k in keys) + ")"


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
