"""Tests for `tfrobust.evaluation`: robust accuracy, the per-example worst case, the
gradient-masking sanity checks and the report files, on a tiny CNN trained here on scikit-learn's
8x8 digits (cached per module; the evaluations shared by several tests are cached too)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from conftest import digits_arrays  # noqa: E402

from tfrobust import evaluation as ev  # noqa: E402
from tfrobust import export  # noqa: E402
from tfrobust.evaluation import AttackSpec, CheckSettings, robust_accuracy  # noqa: E402

EPS = [0.05, 0.1, 0.2]
CHEAP_CHECKS = CheckSettings(few_steps=5, many_steps=25, cleverhans_steps=10, large_eps_steps=10,
                             square_queries=300)
ATTACKS = [
    AttackSpec("fgsm"),
    AttackSpec("pgd", steps=10),
    AttackSpec("apgd_ce", steps=30),
    AttackSpec("apgd_t", steps=15, n_target_classes=3),
    AttackSpec("square", steps=300),
]


@pytest.fixture(scope="module")
def model(digits_cnn):
    return digits_cnn


@pytest.fixture(scope="module")
def test_set():
    _, _, x_test, y_test = digits_arrays()
    return x_test, y_test


@pytest.fixture(scope="module")
def report(model, test_set):
    """The normally trained model under five attacks at three eps, with every check."""
    return robust_accuracy(lambda x: model(x, training=False), test_set, attacks=ATTACKS,
                           eps_values=EPS, norm="linf", batch_size=128, seed=0,
                           check_settings=CHEAP_CHECKS, keep_adversarial=True)


@pytest.fixture(scope="module")
def masked_report(model, test_set):
    """Logits times 1e4: the softmax saturates and CE gradients vanish (gradient masking)."""
    return robust_accuracy(lambda x: 1e4 * model(x, training=False), test_set,
                           attacks=[AttackSpec("pgd", steps=10), AttackSpec("square", steps=300)],
                           eps_values=[0.1, 0.2], batch_size=128, seed=0, check_settings=CHEAP_CHECKS)


def predict(model, x: np.ndarray) -> np.ndarray:
    return np.argmax(model.predict(x, batch_size=512, verbose=0), axis=-1)


def test_report_figures(report):
    print("\n" + report.to_markdown())
    print("seconds per 360 examples:", {k: [round(t, 2) for t in v] for k, v in report.seconds.items()})
    assert report.n_examples == 360
    assert report.clean_accuracy > 0.9
    assert report.attack_labels == ["fgsm", "pgd-10", "apgd_ce-30", "apgd_t-15", "square-300"]


def test_worst_case_is_at_most_every_attack_and_clean(report):
    for j in range(len(EPS)):
        for label in report.attack_labels:
            assert report.worst_case[j] <= report.accuracy[label][j]
        assert report.worst_case[j] <= report.clean_accuracy
    # (that it is the per-example worst case, not the lowest accuracy, is checked by the recount)


def test_report_numbers_equal_a_recount(report, model, test_set):
    x, y = test_set
    clean = predict(model, x) == y
    np.testing.assert_array_equal(report.clean_correct, clean)
    assert report.clean_accuracy == pytest.approx(clean.mean())
    worst = np.broadcast_to(clean, (len(EPS), len(y))).copy()
    for label in report.attack_labels:
        for j in range(len(EPS)):
            recount = predict(model, report.adversarial[label][j]) == y
            np.testing.assert_array_equal(report.correct[label][j], recount, err_msg=f"{label} eps {EPS[j]}")
            assert report.accuracy[label][j] == pytest.approx(recount.mean())
            worst[j] &= recount
    np.testing.assert_array_equal(report.worst_correct, worst)
    assert report.worst_case == pytest.approx(list(worst.mean(axis=1)))


def test_adversarial_examples_stay_in_the_ball_and_the_box(report, test_set):
    x, _ = test_set
    for label, advs in report.adversarial.items():
        for j, eps in enumerate(EPS):
            assert np.abs(advs[j] - x).max() <= eps + 1e-6, label
            assert advs[j].min() >= 0.0 and advs[j].max() <= 1.0, label


def test_normally_trained_model_passes_every_check(report):
    assert report.checks_run == list(ev.CHECK_NAMES)
    assert not report.checks_skipped
    for check in report.checks:
        assert check["status"] == "pass", check
        assert check["detail"]
    assert report.passed


def test_gradient_masking_model_trips_the_checks(masked_report, report):
    print("\n" + masked_report.to_markdown())
    # PGD looks strong (high accuracy), the black-box attack is far stronger
    pgd_acc = masked_report.accuracy["pgd-10"]
    square_acc = masked_report.accuracy["square-300"]
    assert pgd_acc[1] > square_acc[1] + 0.2
    assert masked_report.check("black_box")["status"] == "warn"
    assert "gradient masking" in masked_report.check("black_box")["detail"]
    assert masked_report.check("large_eps")["status"] == "warn"
    assert not masked_report.passed
    # the same checks passed on the unmasked model
    assert report.check("black_box")["status"] == report.check("large_eps")["status"] == "pass"


def test_rounding_front_end_trips_the_checks(model, test_set):
    """tf.round has no gradient: attacks see zeros (not a crash), Square and large eps warn."""
    rounded = lambda x: model(tf.round(x * 4.0) / 4.0, training=False)  # noqa: E731
    rep = robust_accuracy(rounded, test_set, attacks=[AttackSpec("pgd", steps=5)], eps_values=[0.15],
                          batch_size=180, limit=180, seed=0,
                          checks=["large_eps", "black_box", "cleverhans_agreement"],
                          check_settings=CHEAP_CHECKS)
    assert rep.checks_run == ["large_eps", "black_box", "cleverhans_agreement"]
    assert rep.check("black_box")["status"] == "warn"
    assert rep.check("large_eps")["status"] == "warn"


def test_seeds_repeat_results(model, test_set):
    attacks = [AttackSpec("pgd", steps=3), AttackSpec("apgd_ce", steps=5), AttackSpec("square", steps=40)]

    def run(seed):
        return robust_accuracy(lambda x: model(x, training=False), test_set, attacks=attacks,
                               eps_values=[0.1], batch_size=64, limit=100, seed=seed, checks=None)

    first, again, other = run(3), run(3), run(4)
    for label in first.attack_labels:
        np.testing.assert_array_equal(first.correct[label], again.correct[label])
    assert first.accuracy == again.accuracy
    assert other.seed == 4 and first.checks == [] and first.checks_run == []


def test_one_trace_per_attack_and_padding_does_not_change_results(model, test_set):
    x, y = test_set
    logits_fn = lambda z: model(z, training=False)  # noqa: E731
    attacks = [AttackSpec("fgsm"), AttackSpec("pgd", steps=3, random_start=False)]  # deterministic
    # 150 examples in batches of 64: the last batch (22) is padded
    padded = robust_accuracy(logits_fn, (x, y), attacks=attacks, eps_values=[0.05, 0.1], batch_size=64,
                             limit=150, checks=None)
    exact = robust_accuracy(logits_fn, (x, y), attacks=attacks, eps_values=[0.05, 0.1], batch_size=50,
                            limit=150, checks=None)
    assert padded.traces == {"fgsm": 1, "pgd-3": 1}  # 3 batches x 2 eps, one trace
    for label in padded.attack_labels:
        np.testing.assert_array_equal(padded.correct[label], exact.correct[label])
    # a tf.data pipeline (batched or not) gives the same numbers as arrays
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(40)
    from_ds = robust_accuracy(logits_fn, batched, attacks=attacks, eps_values=[0.05, 0.1], batch_size=64,
                              limit=150, checks=None)
    unbatched = robust_accuracy(model, tf.data.Dataset.from_tensor_slices((x, y)), attacks=attacks,
                                eps_values=[0.05, 0.1], batch_size=64, limit=150, checks=None)
    for rep in (from_ds, unbatched):
        assert rep.n_examples == 150
        for label in padded.attack_labels:
            np.testing.assert_array_equal(padded.correct[label], rep.correct[label])


def test_xla_evaluation_runs_apgd_on_static_shapes(model, test_set):
    """Under jit_compile the APGD runs attack whole batches (XLA cannot compile the dynamic
    sub-batches of the default compaction); the two agree to within a few examples."""
    attacks = [AttackSpec("apgd_ce", steps=10, restarts=2), AttackSpec("apgd_t", steps=10, n_target_classes=3)]
    kwargs = dict(attacks=attacks, eps_values=[0.1], batch_size=64, limit=128, seed=0, checks=None)
    logits_fn = lambda x: model(x, training=False)  # noqa: E731
    xla = robust_accuracy(logits_fn, test_set, jit_compile=True, **kwargs)
    plain = robust_accuracy(logits_fn, test_set, **kwargs)
    assert xla.traces == {"apgd_ce-10x2": 1, "apgd_t-10": 1}
    for label in plain.attack_labels:
        assert abs(xla.accuracy[label][0] - plain.accuracy[label][0]) <= 4 / 128, label


def test_l2_evaluation_runs_every_attack_and_check(model, test_set):
    """Every attack of the table supports l2 now (Square included), so the black-box check runs."""
    rep = robust_accuracy(lambda x: model(x, training=False), test_set,
                          attacks=["pgd", AttackSpec("apgd_ce", steps=10), AttackSpec("square", steps=100)],
                          eps_values=[0.5, 1.0], norm="l2", batch_size=128, limit=128, seed=0,
                          checks=["budget", "eps_monotonic", "black_box"])
    assert rep.attack_labels == ["pgd-20", "apgd_ce-10", "square-100"]
    assert not rep.skipped_attacks and not rep.checks_skipped
    assert rep.checks_run == ["budget", "eps_monotonic", "black_box"]
    assert rep.check("budget")["status"] == "pass" and rep.check("black_box")["status"] == "pass"
    assert max(max(v) for v in rep.max_perturbation.values()) <= 1.0 + 1e-5
    assert rep.accuracy["apgd_ce-10"][1] < rep.accuracy["apgd_ce-10"][0] < rep.clean_accuracy
    assert rep.accuracy["square-100"][0] < rep.clean_accuracy


def test_savedmodel_logits_fn_gives_the_same_report(model, test_set, tmp_path):
    path = export.export_classifier(model, str(tmp_path / "export"))
    logits_fn = export.load_logits_fn(path)
    kwargs = dict(attacks=[AttackSpec("fgsm"), AttackSpec("apgd_ce", steps=5)], eps_values=[0.1],
                  batch_size=100, limit=100, seed=0, checks=None)
    from_saved = robust_accuracy(logits_fn, test_set, **kwargs)
    from_keras = robust_accuracy(lambda x: model(x, training=False), test_set, **kwargs)
    for label in from_keras.attack_labels:
        assert abs(from_saved.accuracy[label][0] - from_keras.accuracy[label][0]) <= 0.02


def test_report_files(report, tmp_path):
    path = report.to_json(str(tmp_path / "out" / "report.json"), per_example=True)
    data = json.loads(open(path).read())
    for key in ("attacks", "eps_values", "accuracy", "worst_case", "clean_accuracy", "checks",
                "checks_run", "n_examples", "seed", "norm", "seconds"):
        assert key in data, key
    assert data["n_examples"] == 360 and data["eps_values"] == EPS
    assert data["accuracy"]["apgd_ce-30"] == report.accuracy["apgd_ce-30"]
    assert {a["label"] for a in data["attacks"]} == set(report.attack_labels)
    assert data["attacks"][3]["n_target_classes"] == 3 and data["attacks"][2]["steps"] == 30
    assert sum(data["per_example"]["worst_correct"][1]) == round(report.worst_case[1] * 360)

    markdown = report.to_markdown()
    assert "| attack | eps=0.05 | eps=0.1 | eps=0.2 |" in markdown
    assert "**worst case**" in markdown and "| black_box | pass |" in markdown
    assert f"{100 * report.accuracy['square-300'][2]:.2f}" in markdown

    png = report.plot(str(tmp_path / "plot.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    logdir = report.write_tensorboard(str(tmp_path / "tb"), step=3)
    events = [name for name in os.listdir(logdir) if name.startswith("events.out.tfevents")]
    assert events
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, events[0])):
        for value in event.summary.value:
            tags.add(value.tag)
            assert event.step == 3
    assert "robust_accuracy/worst_case/eps_0.1" in tags and "clean_accuracy" in tags
    assert "robust_accuracy/apgd_t-15/eps_0.2" in tags


def test_attack_specs_and_suites():
    assert [a.display for a in ev.SUITES["quick"]] == ["pgd-20"]
    assert [a.name for a in ev.SUITES["apgd"]] == ["apgd_ce", "apgd_t"]
    assert [a.name for a in ev.SUITES["apgd_square"]] == ["apgd_ce", "apgd_t", "square"]
    assert [a.display for a in ev.resolve_attacks("apgd_square")] == ["apgd_ce-100", "apgd_t-100", "square-1000"]
    assert [a.display for a in ev.resolve_attacks("autoattack")] == ["apgd_ce-100", "apgd_t-100", "fab_t-100",
                                                                     "square-5000"]
    assert [a.display for a in ev.resolve_attacks(["quick", "fgsm"])] == ["pgd-20", "fgsm"]
    with pytest.raises(ev.EvaluationError, match="unknown attack"):
        AttackSpec("cw")
    with pytest.raises(ev.EvaluationError, match="step_size"):
        AttackSpec("apgd_ce", step_size=0.1)
    with pytest.raises(ev.EvaluationError, match="random_start"):
        AttackSpec("fab_t", random_start=True)
    with pytest.raises(ev.EvaluationError, match="exactly 1"):
        AttackSpec("fgsm", steps=3)
    with pytest.raises(ev.EvaluationError, match="unique"):
        ev.resolve_attacks(["pgd", AttackSpec("pgd", steps=20)])
    with pytest.raises(ev.EvaluationError, match="eps"):
        robust_accuracy(lambda x: x, (np.zeros([2, 8, 8, 1]), np.zeros(2, int)), attacks="fgsm",
                        eps_values=[0.0])
    with pytest.raises(ev.EvaluationError, match="checks"):
        robust_accuracy(lambda x: x, (np.zeros([2, 8, 8, 1]), np.zeros(2, int)), attacks="fgsm",
                        eps_values=[0.1], checks=["nope"])
