"""Tests for APGD-CE / APGD-T (`tfrobust.attacks.apgd`), Square (`tfrobust.attacks.square`) and
the DLR losses, on a tiny CNN trained here on scikit-learn's 8x8 digits (cached per module)."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from conftest import digits_arrays  # noqa: E402

from tfrobust import losses  # noqa: E402
from tfrobust.attacks import apgd, gradients, objectives, pgd, square  # noqa: E402
from tfrobust.evaluation import AttackSpec, attack_function  # noqa: E402


@pytest.fixture(scope="module")
def digits(digits_cnn):
    model = digits_cnn
    _, _, x_test, y_test = digits_arrays()
    logits_fn = lambda x: model(x, training=False)  # noqa: E731
    return model, logits_fn, tf.constant(x_test), tf.constant(y_test)


def compiled(attack, *args, **kwargs):
    """Run `attack(*args, **kwargs)` inside a tf.function (eager while-loops are slow)."""
    return tf.function(functools.partial(attack, *args, **kwargs))()


def accuracy(logits_fn, x, y) -> float:
    return float(np.mean(np.argmax(logits_fn(x).numpy(), -1) == y.numpy()))


def n_errors(logits_fn, x, y) -> int:
    return int(np.sum(np.argmax(logits_fn(x).numpy(), -1) != y.numpy()))


# --- pure math ------------------------------------------------------------------------------


def test_checkpoints_follow_the_paper_recursion():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0 + 1e-9:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert apgd.checkpoints(100) == [round(100 * q) for q in p[1:]]
    assert apgd.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd.checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]  # intervals of at least one step


def test_dlr_losses_match_their_formulas_and_are_scale_invariant():
    logits = tf.constant([[4.0, 1.0, 3.0, 0.0, -1.0], [0.0, 5.0, 2.0, 1.0, 0.5]])
    labels = tf.constant([0, 0])
    # example 0: correct, sorted 4, 3, 1, 0: -(4 - 3) / (4 - 1); example 1: wrong, -(0 - 5) / (5 - 1)
    np.testing.assert_allclose(objectives.dlr(logits, labels).numpy(), [-1 / 3, 5 / 4], rtol=1e-5)
    targets = tf.constant([3, 2])
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    expected = [-(4 - 0) / (4 - (1 + 0) / 2), -(0 - 2) / (5 - (1 + 0.5) / 2)]
    np.testing.assert_allclose(objectives.dlr_targeted(logits, labels, targets).numpy(), expected, rtol=1e-5)
    for fn in (lambda z: objectives.dlr(z, labels), lambda z: objectives.dlr_targeted(z, labels, targets)):
        np.testing.assert_allclose(fn(7.0 * logits + 3.0).numpy(), fn(logits).numpy(), rtol=1e-4)


def test_square_p_schedule_is_the_published_one():
    def p(i, n, rescale=False):
        return float(square.p_selection(0.8, tf.constant(i), n, rescale))

    assert p(0, 10000) == pytest.approx(0.8)
    assert p(10, 10000) == pytest.approx(0.8)
    assert p(11, 10000) == pytest.approx(0.4)
    assert p(51, 10000) == pytest.approx(0.2)
    assert p(201, 10000) == pytest.approx(0.1)
    assert p(9000, 10000) == pytest.approx(0.8 / 512)
    # AutoAttack (resc_schedule=False): the 10,000-query points also for shorter runs
    assert p(2, 1000) == pytest.approx(0.8)
    assert p(999, 1000) == pytest.approx(0.8 / 16)
    assert p(4999, 5000) == pytest.approx(0.8 / 128)
    assert p(2, 1000, rescale=True) == pytest.approx(0.4)  # rescaled: 2 of 1000 is 20 of 10,000


def test_bad_arguments_are_rejected():
    x = tf.zeros([2, 8, 8, 1])
    y = tf.constant([0, 1])
    three_classes = lambda z: tf.reshape(z, [2, -1])[:, :3]  # noqa: E731
    with pytest.raises(ValueError, match="4 classes"):
        apgd.apgd_targeted(three_classes, x, y, eps=0.1, steps=2)
    with pytest.raises(ValueError, match="norm"):
        square.square(three_classes, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="loss"):
        apgd.apgd(three_classes, x, y, eps=0.1, loss="kl")


# --- on the trained digits model ------------------------------------------------------------


def test_model_is_a_reasonable_classifier(digits):
    _, logits_fn, x, y = digits
    assert accuracy(logits_fn, x, y) > 0.9


@pytest.mark.parametrize("eps", [0.12, 0.15])
def test_apgd_ce_finds_at_least_as_many_errors_as_pgd20(digits, eps):
    _, logits_fn, x, y = digits
    x_pgd = compiled(pgd.pgd, logits_fn, x, y, eps=eps, step_size=2.5 * eps / 20, steps=20, seed=1,
                     keep_best=True)
    x_apgd = compiled(apgd.apgd, logits_fn, x, y, eps=eps, steps=100, seed=1)
    print(f"eps {eps}: errors clean {n_errors(logits_fn, x, y)}, pgd-20 {n_errors(logits_fn, x_pgd, y)}, "
          f"apgd-ce-100 {n_errors(logits_fn, x_apgd, y)}")
    assert n_errors(logits_fn, x_apgd, y) >= n_errors(logits_fn, x_pgd, y) > n_errors(logits_fn, x, y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_attack_stays_in_the_eps_ball_and_in_the_unit_box(digits, norm):
    _, logits_fn, x, y = digits
    x, y = x[:48], y[:48]
    base = 0.1 if norm == "linf" else 0.8
    eps = tf.constant(np.linspace(0.5, 2.0, 48) * base, tf.float32)  # per-example budgets
    names = {"fgsm": None, "pgd": 8, "pgd_margin": 8, "apgd_ce": 10, "apgd_t": 6, "square": 60}
    for name, steps in names.items():
        if name == "square" and norm == "l2":
            continue
        spec = AttackSpec(name, steps=steps, **({"n_target_classes": 3} if name == "apgd_t" else {}))
        x_adv = attack_function(spec, logits_fn, norm)(x, y, eps, tf.constant([3, 4], tf.int64)).numpy()
        delta = (x_adv - x.numpy()).reshape(48, -1)
        size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
        assert np.all(size <= eps.numpy() * (1 + 1e-5) + 1e-6), (name, float(np.max(size / eps.numpy())))
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, name
    # cleverhans takes a Python eps only
    spec = AttackSpec("cleverhans_pgd", steps=5)
    x_adv = attack_function(spec, logits_fn, norm)(x, y, base, tf.constant([0, 0], tf.int64)).numpy()
    delta = (x_adv - x.numpy()).reshape(48, -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
    assert np.all(size <= base * (1 + 1e-5) + 1e-6) and x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_seeds_repeat_and_differ(digits):
    _, logits_fn, x, y = digits
    x, y = x[:64], y[:64]
    runs = {  # one trace each, the seed is a tensor argument
        "apgd": tf.function(lambda s: apgd.apgd(logits_fn, x, y, eps=0.1, steps=8, seed=s)),
        "apgd_t": tf.function(lambda s: apgd.apgd_targeted(logits_fn, x, y, eps=0.1, steps=5,
                                                           n_target_classes=2, seed=s)),
        "square": tf.function(lambda s: square.square(logits_fn, x, y, eps=0.1, n_queries=30, seed=s)),
    }
    for name, run in runs.items():
        a, b, c = (run(tf.constant(s, tf.int64)).numpy() for s in (7, 7, 8))
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert not np.array_equal(a, c), name


def test_apgd_traces_once_for_all_eps_values(digits):
    _, logits_fn, x, y = digits
    x, y = x[:32], y[:32]
    fn = tf.function(lambda a, b, e: apgd.apgd(logits_fn, a, b, eps=e, steps=5, seed=0))
    for eps in (0.05, 0.1, 0.2):
        fn(x, y, tf.constant(eps))
    assert fn.experimental_get_tracing_count() == 1


def _counting(logits_fn):
    """`logits_fn` that also adds the number of rows it is called on to a counter."""
    rows = tf.Variable(0, dtype=tf.int64)

    def counted(z):
        rows.assign_add(tf.shape(z, out_type=tf.int64)[0])
        return logits_fn(z)

    return counted, rows


@pytest.mark.parametrize("attack", ["apgd_ce", "apgd_t", "square"])
def test_attacks_work_only_on_examples_not_yet_fooled(digits, attack):
    """With `compact` (AutoAttack's scheme) APGD's runs and Square's queries go to the examples
    that neither the clean input nor an earlier run or query fooled: the model sees fewer rows
    than when the whole batch is attacked, and the attack is as strong."""
    _, logits_fn, x, y = digits
    counted, rows = _counting(logits_fn)
    attacks = {
        "apgd_ce": functools.partial(apgd.apgd, eps=0.1, steps=10, restarts=3),
        "apgd_t": functools.partial(apgd.apgd_targeted, eps=0.1, steps=10, n_target_classes=4),
        "square": functools.partial(square.square, eps=0.15, n_queries=200),
    }
    seen, errors = {}, {}
    for compact in (True, False):
        rows.assign(0)
        x_adv = compiled(attacks[attack], counted, x, y, seed=3, compact=compact)
        seen[compact], errors[compact] = int(rows.numpy()), n_errors(logits_fn, x_adv, y)
        # an example the model already gets wrong is returned untouched
        wrong_clean = np.argmax(logits_fn(x).numpy(), -1) != y.numpy()
        np.testing.assert_array_equal(x_adv.numpy()[wrong_clean], x.numpy()[wrong_clean])
    print(attack, "rows seen (compact, whole batch):", seen[True], seen[False], "errors:", errors)
    assert seen[True] < 0.8 * seen[False]
    assert errors[True] >= errors[False] - 0.02 * len(y)  # different random draws, same attack


def test_apgd_run_returns_a_misclassified_point_or_its_best_loss_point(digits):
    _, logits_fn, x, y = digits
    eps = 0.08
    x_out, fooled, best = tf.function(lambda a, b: apgd.apgd_run(
        logits_fn, a, b, eps=tf.constant(eps), steps=30, norm="linf",
        objective=losses.cross_entropy, seed=tf.constant([1, 2], tf.int64)))(x, y)
    logits = logits_fn(x_out)
    wrong = np.argmax(logits.numpy(), -1) != y.numpy()
    np.testing.assert_array_equal(wrong, fooled.numpy())
    assert 0 < wrong.sum() < len(wrong)
    kept = ~fooled.numpy()  # the loss at the returned point is the best loss recorded
    ce = losses.cross_entropy(logits, y).numpy()
    np.testing.assert_allclose(ce[kept], best.numpy()[kept], rtol=1e-4, atol=1e-5)
    # and it beats the clean loss
    assert np.all(ce[kept] >= losses.cross_entropy(logits_fn(x), y).numpy()[kept] - 1e-5)


def test_square_breaks_scaled_logits_that_mask_gradients(digits):
    """Logits times 1e4 saturate the softmax: CE gradients vanish, PGD stalls; Square (margin
    only) and APGD-T (DLR is scale invariant) are not fooled by it."""
    _, logits_fn, x, y = digits
    scaled = lambda z: 1e4 * logits_fn(z)  # noqa: E731
    eps = 0.15
    clean = accuracy(logits_fn, x, y)
    acc_pgd = accuracy(scaled, compiled(pgd.pgd, scaled, x, y, eps=eps, step_size=eps / 8, steps=20,
                                        seed=0, keep_best=True), y)
    acc_square = accuracy(scaled, compiled(square.square, scaled, x, y, eps=eps, n_queries=300, seed=0), y)
    acc_apgd_t = accuracy(scaled, compiled(apgd.apgd_targeted, scaled, x, y, eps=eps, steps=20,
                                           n_target_classes=3, seed=0), y)
    acc_apgd_t_plain = accuracy(logits_fn, compiled(apgd.apgd_targeted, logits_fn, x, y, eps=eps, steps=20,
                                                    n_target_classes=3, seed=0), y)
    print(f"clean {clean:.3f} pgd {acc_pgd:.3f} square {acc_square:.3f} apgd_t {acc_apgd_t:.3f} "
          f"(unscaled {acc_apgd_t_plain:.3f})")
    assert acc_pgd > clean - 0.05  # masked: PGD barely moves
    assert acc_square < acc_pgd - 0.2
    assert acc_apgd_t < acc_pgd - 0.2
    assert abs(acc_apgd_t - acc_apgd_t_plain) <= 0.03


def test_zero_gradient_models_do_not_crash_the_attacks(digits):
    """tf.round has no gradient (None): the attacks must see zeros, not crash."""
    _, logits_fn, x, y = digits
    x, y = x[:32], y[:32]
    rounded = lambda z: logits_fn(tf.round(z * 4.0) / 4.0)  # noqa: E731
    grad, _, _ = gradients.input_gradient(rounded, losses.cross_entropy, x, y)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) == 0.0
    for x_adv in (pgd.fgsm(rounded, x, y, eps=0.1),
                  pgd.pgd(rounded, x, y, eps=0.1, step_size=0.02, steps=3, seed=0),
                  apgd.apgd(rounded, x, y, eps=0.1, steps=5, seed=0),
                  apgd.apgd(rounded, x, y, eps=0.5, norm="l2", steps=5, seed=0)):
        assert np.all(np.isfinite(x_adv.numpy()))


def _interior_peak_run() -> np.ndarray:
    """APGD (100 steps, l-inf eps 0.2) on a one-pixel toy whose objective peaks inside the ball at
    0.56 (the start is 0.5): fixed steps of 2 eps only bounce between the ball's faces, so only the
    halving (and restart from the best point) gets close. Returns |x' - peak| per example."""
    peak, eps = 0.56, 0.2
    x = tf.fill([64, 1, 1, 1], 0.5)
    y = tf.ones([64], tf.int32)

    def logits_fn(z):  # class 0's logit peaks at z = peak; class 1 always wins, never fooled
        z0 = -100.0 * tf.square(tf.reshape(z, [-1]) - peak)
        return tf.stack([z0, tf.zeros_like(z0)], axis=1)

    x_out, fooled, _ = tf.function(lambda: apgd.apgd_run(
        logits_fn, x, y, eps=tf.constant(eps), steps=100, norm="linf",
        objective=losses.cross_entropy, seed=tf.constant([5, 6], tf.int64)))()
    assert not fooled.numpy().any()
    return np.abs(x_out.numpy() - peak).ravel()


def test_step_size_halving_converges_to_an_interior_maximum():
    # measured: 4e-4 with the schedule, 2e-2 with the step size frozen at 2 eps
    assert _interior_peak_run().max() < 0.002


def test_apgd_run_halves_its_step_size_at_the_checkpoints_function_gives(monkeypatch):
    """apgd_run takes its halving points from `checkpoints` (the function the recursion test
    checks), not from a copy of the schedule: replacing it changes the attack."""
    reference = apgd.checkpoints(100)
    unpatched = _interior_peak_run()
    asked, errors = [], {}
    for name, points in (("none", []), ("first only", reference[:1]), ("reference", reference)):
        monkeypatch.setattr(apgd, "checkpoints", lambda steps, p=points: asked.append(steps) or list(p))
        errors[name] = _interior_peak_run()
    assert asked == [100, 100, 100]
    np.testing.assert_array_equal(errors["reference"], unpatched)
    # measured max |x' - peak|: none 2.0e-2 (the step stays 2 eps), first only 1.0e-2, reference 4e-4
    assert errors["none"].max() > 0.01
    assert errors["first only"].max() < 0.75 * errors["none"].max()
    assert errors["reference"].max() < 0.1 * errors["first only"].max()


def _peak_run_with(monkeypatch, points, steps, **flags) -> np.ndarray:
    monkeypatch.setattr(apgd, "checkpoints", lambda n: list(points))
    peak, x, y = 0.56, tf.fill([64, 1, 1, 1], 0.5), tf.ones([64], tf.int32)

    def logits_fn(z):
        z0 = -100.0 * tf.square(tf.reshape(z, [-1]) - peak)
        return tf.stack([z0, tf.zeros_like(z0)], axis=1)

    x_out, _, _ = tf.function(lambda: apgd.apgd_run(
        logits_fn, x, y, eps=tf.constant(0.2), steps=steps, norm="linf", objective=losses.cross_entropy,
        seed=tf.constant([5, 6], tf.int64), **flags))()
    return x_out.numpy().ravel()


def test_apgd_schedule_details_default_to_the_reference_code(monkeypatch):
    """AutoAttack's check_oscillation halves at `increases <= rho * k` and counts the first step
    against 0; `strict_rho` and `compare_start` (the paper's `<`, the start's loss) change the run
    only at a checkpoint whose condition they decide."""
    # one checkpoint after the first step: CE > 0 always counts as an increase against 0, so the
    # reference never halves there; against the start, the examples whose first step lost do
    ref = _peak_run_with(monkeypatch, [1], 3)
    np.testing.assert_array_equal(ref, _peak_run_with(monkeypatch, [1], 3, compare_start=False, strict_rho=False))
    assert not np.array_equal(ref, _peak_run_with(monkeypatch, [1], 3, compare_start=True))
    # an interval of 4 steps: exactly 3 increases halves in the reference, not with the paper's `<`
    ref4 = _peak_run_with(monkeypatch, [4], 8)
    assert not np.array_equal(ref4, _peak_run_with(monkeypatch, [4], 8, strict_rho=True))
    # without checkpoints neither flag matters
    none = _peak_run_with(monkeypatch, [], 8)
    np.testing.assert_array_equal(none, _peak_run_with(monkeypatch, [], 8, strict_rho=True, compare_start=True))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_starts_on_the_surface_of_the_ball_as_autoattack(norm, monkeypatch):
    """AutoAttack's APGD starts at x + eps t / ||t|| (`autopgd_base.py`, attack_single_run): on the
    ball's surface, not inside it; apgd_run takes its start from there."""
    from tfrobust.attacks import ball

    starts = []
    original = ball.random_start

    def recording(x, eps, norm_, kind, seed, **kwargs):
        out = original(x, eps, norm_, kind, seed, **kwargs)
        starts.append(kind)
        return out

    x = tf.fill([64, 4, 4, 1], 0.5)  # eps 0.2 around 0.5: no start is clipped
    start = ball.random_start(x, 0.2, norm, "sphere", tf.constant([3, 4], tf.int64)) - x
    flat = tf.reshape(start, [64, -1]).numpy()
    size = np.abs(flat).max(1) if norm == "linf" else np.sqrt((flat**2).sum(1))
    np.testing.assert_allclose(size, 0.2, rtol=1e-6)
    inside = ball.random_start(x, 0.2, norm, "uniform", tf.constant([3, 4], tf.int64)) - x
    flat = tf.reshape(inside, [64, -1]).numpy()
    assert (np.abs(flat).max(1) if norm == "linf" else np.sqrt((flat**2).sum(1))).min() < 0.2 * (1 - 1e-3)

    monkeypatch.setattr(ball, "random_start", recording)
    apgd.apgd_run(lambda z: tf.reshape(z, [64, -1])[:, :3], x, tf.zeros([64], tf.int32), eps=tf.constant(0.2),
                  steps=2, norm=norm, objective=losses.cross_entropy, seed=tf.constant([5, 6], tf.int64))
    assert starts == ["sphere"]
