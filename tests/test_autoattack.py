"""Tests for AutoAttack's sequential standard version (`tfrobust.evaluation.autoattack`), the
AutoAttack-style sanity checks, the report's metadata and the single-eps plot, on the shared digits
CNN of conftest.py."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from conftest import digits_arrays  # noqa: E402

from tfrobust import evaluation as ev  # noqa: E402
from tfrobust.evaluation import AttackSpec, robust_accuracy  # noqa: E402

STAGES = [AttackSpec("apgd_ce", steps=10), AttackSpec("apgd_t", steps=10, n_target_classes=3),
          AttackSpec("fab_t", steps=10, n_target_classes=3), AttackSpec("square", steps=60)]


@pytest.fixture(scope="module")
def test_set():
    _, _, x_test, y_test = digits_arrays()
    return x_test, y_test


def test_autoattack_suite_is_the_standard_version():
    specs = ev.SUITES["autoattack"]
    assert [(s.name, s.resolved_steps, s.restarts) for s in specs] == [
        ("apgd_ce", 100, 1), ("apgd_t", 100, 1), ("fab_t", 100, 1), ("square", 5000, 1)]
    assert specs[1].n_target_classes == specs[2].n_target_classes == 9 and specs[3].p_init == 0.8
    assert ev.SEQUENTIAL_SUITES == ("autoattack",)
    assert "standard" not in ev.SUITES and "full" not in ev.SUITES  # the old names are gone
    assert [s.resolved_steps for s in ev.with_square_queries(specs, 700)] == [100, 100, 100, 700]
    assert {"linf", "l2"} <= set(ev.ATTACKS["square"].norms) and not ev.ATTACKS["square"].white_box
    assert ev.ATTACKS["fab_t"].white_box and ev.ATTACKS["fab_t"].default_steps == 100


class RowCounter:
    """A logits function that counts the rows the model sees: per evaluated example, the rows within
    `radius` (l-inf) of its clean image (attack iterates that stay in the eps ball: everything but
    FAB's unbounded iterates, and those too when they fall in the ball), and all rows in `total`."""

    def __init__(self, model, x, radius: float = 0.1 + 1e-5):
        self.model, self.radius = model, radius
        self.clean = tf.constant(x.reshape(len(x), -1))
        self.counts = tf.Variable(tf.zeros([len(x)], tf.int64))
        self.total = tf.Variable(tf.zeros([], tf.int64))

    def __call__(self, z):
        flat = tf.reshape(z, [tf.shape(z)[0], -1])
        d = tf.reduce_max(tf.abs(flat[:, None, :] - self.clean[None]), axis=-1)  # [rows, N]
        owner = tf.argmin(d, axis=1)
        near = tf.cast(tf.reduce_min(d, axis=1) <= self.radius, tf.int64)
        self.counts.scatter_nd_add(owner[:, None], near)
        self.total.assign_add(tf.cast(tf.shape(z)[0], tf.int64))
        return self.model(z, training=False)

    def take(self) -> tuple[np.ndarray, int]:
        out = self.counts.numpy().copy(), int(self.total.numpy())
        self.counts.assign(tf.zeros_like(self.counts))
        self.total.assign(0)
        return out


def test_each_stage_runs_only_on_the_survivors(digits_cnn, test_set):
    x, y = test_set[0][:120], test_set[1][:120]
    counter = RowCounter(digits_cnn, x)
    kwargs = dict(eps_values=[0.1], batch_size=64, seed=0, checks=None)
    full = robust_accuracy(counter, (x, y), attacks=STAGES, sequential=True, **kwargs)
    rows_full, total_full = counter.take()
    first = robust_accuracy(counter, (x, y), attacks=STAGES[:1], sequential=True, **kwargs)
    rows_first, _ = counter.take()
    robust_accuracy(counter, (x, y), attacks=STAGES, sequential=False, **kwargs)
    _, total_every = counter.take()
    print("\n" + full.to_markdown())

    clean = full.clean_correct
    after_first = full.correct["apgd_ce-10"][0]
    np.testing.assert_array_equal(after_first, first.worst_correct[0])
    # the model saw an example misclassified clean once (the clean prediction), nothing more
    assert np.all(rows_full[~clean] == 1)
    # an example the first stage fooled was never attacked again: its rows are those of stage 1 alone
    fooled_first = clean & ~after_first
    assert fooled_first.sum() >= 10
    np.testing.assert_array_equal(rows_full[fooled_first], rows_first[fooled_first])
    assert np.all(rows_full[after_first] > rows_first[after_first])
    counts = [full.attacked[s.display][0] for s in STAGES]
    assert counts[0] == clean.sum() and counts[1] == after_first.sum()
    assert counts == sorted(counts, reverse=True)
    assert total_full < 0.85 * total_every  # measured 12,413 against 16,466 rows
    # the accuracy after each stage never rises and the last one is the result
    accs = [full.accuracy[s.display][0] for s in STAGES]
    assert accs == sorted(accs, reverse=True) and full.worst_case[0] == accs[-1] < full.clean_accuracy


def test_sequential_result_equals_the_per_example_worst_case_of_the_same_attacks(digits_cnn, test_set):
    """With one example per batch each example draws the same random numbers in both modes (seeds
    follow the example), so the survivors' run must give exactly the per-example worst case."""
    kwargs = dict(attacks=STAGES, eps_values=[0.08, 0.15], batch_size=1, limit=30, seed=5, checks=None)
    logits_fn = lambda z: digits_cnn(z, training=False)  # noqa: E731
    seq = robust_accuracy(logits_fn, test_set, sequential=True, **kwargs)
    every = robust_accuracy(logits_fn, test_set, sequential=False, **kwargs)
    assert seq.mode == "sequential" and every.mode == "per_attack"
    np.testing.assert_array_equal(seq.worst_correct, every.worst_correct)
    assert seq.worst_case == every.worst_case
    running = np.broadcast_to(every.clean_correct, every.worst_correct.shape).copy()
    for spec in STAGES:
        running &= every.correct[spec.display]
        np.testing.assert_array_equal(seq.correct[spec.display], running, err_msg=spec.display)
    assert 0 < seq.worst_case[1] < seq.worst_case[0] < seq.clean_accuracy


def test_autoattack_reports_each_stage_and_its_settings(digits_cnn, test_set, tmp_path):
    rep = ev.autoattack(digits_cnn, test_set, eps=0.1, square_queries=200, limit=100, seed=0,
                        checks=["budget", "black_box", "iterative_vs_fgsm"], model_path="/models/x", dataset="digits")
    print("\n" + rep.to_markdown())
    assert rep.attack_labels == ["apgd_ce-100", "apgd_t-100", "fab_t-100", "square-200"]
    settings = {a["name"]: a for a in rep.attacks}
    assert settings["apgd_t"]["n_target_classes"] == settings["fab_t"]["n_target_classes"] == 9
    assert settings["square"]["steps"] == 200 and settings["square"]["p_init"] == 0.8
    assert rep.checks_run == ["budget", "iterative_vs_fgsm", "black_box"] and rep.passed
    assert "lowered the robust accuracy" in rep.check("black_box")["detail"]
    md = rep.to_markdown()
    assert "| after fab_t-100 |" in md and "**robust accuracy**" in md and "Examples attacked per stage" in md
    assert "fab_t-100 (steps 100, restarts 1, n_target_classes 9)" in md

    data = json.load(open(rep.to_json(str(tmp_path / "report.json"))))
    assert data["mode"] == "sequential" and data["attacked"]["apgd_ce-100"] == [round(100 * rep.clean_accuracy)]
    meta = data["metadata"]
    assert meta["model"] == "/models/x" and meta["dataset"] == "digits" and meta["n_examples"] == 100
    assert meta["indices"] == list(range(100))
    assert meta["versions"]["tensorflow"] == tf.__version__ and meta["versions"]["tfrobust"]


def test_single_eps_plot_is_a_bar_chart(digits_cnn, test_set, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.axes
    import matplotlib.image

    rep = robust_accuracy(digits_cnn, test_set, attacks=["fgsm", AttackSpec("pgd", steps=5)], eps_values=[0.1],
                          limit=100, checks=None)
    bars = []
    real_bar = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", lambda self, *a, **k: bars.append(a) or real_bar(self, *a, **k))
    path = rep.plot(str(tmp_path / "plot.png"))
    assert len(bars) == 1 and len(bars[0][1]) == 4  # clean, fgsm, pgd-5, worst case
    np.testing.assert_allclose(bars[0][1], [100 * rep.clean_accuracy, 100 * rep.accuracy["fgsm"][0],
                                            100 * rep.accuracy["pgd-5"][0], 100 * rep.worst_case[0]])
    image = matplotlib.image.imread(path)[..., :3]
    assert image.shape[0] > 200 and image.std() > 0.05  # not blank
    dark = (image.mean(-1) < 0.2).mean()
    assert dark > 0.01  # the black worst-case bar and the text
    # several eps values: lines, no bars
    bars.clear()
    multi = robust_accuracy(digits_cnn, test_set, attacks="fgsm", eps_values=[0.05, 0.1], limit=50, checks=None)
    multi.plot(str(tmp_path / "lines.png"))
    assert bars == []


# --- AutoAttack's checks -------------------------------------------------------------------


def _checks(logits_fn, test_set, names):
    return robust_accuracy(logits_fn, test_set, attacks=["fgsm"], eps_values=[0.1], limit=64, batch_size=64,
                           checks=names, seed=0)


AA_CHECKS = ["softmax_output", "randomized", "dynamic", "zero_gradients"]


def test_clean_model_passes_the_autoattack_checks(digits_cnn, test_set):
    rep = _checks(lambda z: digits_cnn(z, training=False), test_set, AA_CHECKS)
    assert rep.checks_run == AA_CHECKS
    for check in rep.checks:
        assert check["status"] == "pass", check


def test_randomized_outputs_are_flagged(digits_cnn, test_set):
    noisy = lambda z: digits_cnn(z, training=False) + tf.random.normal([tf.shape(z)[0], 10], stddev=0.5)  # noqa: E731
    rep = _checks(noisy, test_set, AA_CHECKS)
    assert rep.check("randomized")["status"] == "warn" and "randomized" in rep.check("randomized")["detail"]
    assert rep.check("softmax_output")["status"] == "pass"


def test_softmax_outputs_and_saturated_softmax_are_flagged(digits_cnn, test_set):
    probabilities = _checks(lambda z: tf.nn.softmax(digits_cnn(z, training=False)), test_set, AA_CHECKS)
    assert probabilities.check("softmax_output")["status"] == "warn"
    assert probabilities.check("randomized")["status"] == "pass"
    saturated = _checks(lambda z: 1e4 * digits_cnn(z, training=False), test_set, AA_CHECKS)
    assert saturated.check("zero_gradients")["status"] == "warn"
    assert "all-zero input gradient" in saturated.check("zero_gradients")["detail"]
    assert saturated.check("softmax_output")["status"] == "pass"


def test_rounded_inputs_have_zero_gradients(digits_cnn, test_set):
    rounded = lambda z: digits_cnn(tf.round(z * 4.0) / 4.0, training=False)  # noqa: E731
    rep = _checks(rounded, test_set, ["zero_gradients", "randomized"])
    assert rep.check("zero_gradients")["status"] == "warn"
    assert rep.check("zero_gradients")["detail"].startswith("64 of 64")
    assert rep.check("randomized")["status"] == "pass"


def test_dynamic_models_are_flagged(digits_cnn, test_set):
    def self_attacking(z):  # a defense that moves its input along its own gradient before classifying
        with tf.GradientTape() as tape:
            tape.watch(z)
            top = tf.reduce_max(digits_cnn(z, training=False), axis=-1)
        return digits_cnn(z + 0.01 * tf.sign(tape.gradient(top, z)), training=False)

    rep = _checks(self_attacking, test_set, ["dynamic"])
    assert rep.check("dynamic")["status"] == "warn" and "computes gradients" in rep.check("dynamic")["detail"]
    counter = RowCounter(digits_cnn, test_set[0][:64])
    rep = _checks(counter, test_set, ["dynamic"])
    assert rep.check("dynamic")["status"] == "warn" and "writes variables" in rep.check("dynamic")["detail"]
