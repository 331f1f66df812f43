"""Tests for the Square attack as AutoAttack runs it (`tfrobust.attacks.square`): the reference's
window sides and l2 pattern, the eps ball, and the l2 version on the trained digits CNN."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import conv_model, digits_arrays, digits_logits

from tfrobust.attacks.square import eta, p_halvings, square, square_run, window_sides
from tfrobust.precision import floatx


def compiled(attack, *args, **kwargs):
    return tf.function(functools.partial(attack, *args, **kwargs))()


def test_window_sides_follow_the_reference_formula():
    # round(sqrt(p HW)) with p = 0.8 / 2^k; l2: at least 3 and odd; at most the image side
    assert window_sides(0.8, 28, 28, 1, "linf") == [25, 18, 13, 9, 6, 4, 3, 2, 2, 1]
    assert window_sides(0.8, 28, 28, 1, "l2") == [25, 19, 13, 9, 7, 5, 3, 3, 3, 3]
    assert window_sides(0.8, 32, 32, 3, "linf") == [29, 20, 14, 10, 7, 5, 4, 3, 2, 1]
    assert window_sides(1.0, 8, 8, 1, "linf")[0] == 8  # capped at the image


def test_p_halvings_count_the_fixed_points():
    its = [0, 10, 11, 50, 51, 200, 201, 4000, 4001, 4999]
    got = [int(p_halvings(tf.constant(i), 5000)) for i in its]
    assert got == [0, 0, 1, 1, 2, 2, 3, 6, 7, 7]


def test_eta_is_the_reference_pattern():
    top = np.array([0.25, 1.25, 0.25])  # ring distances 1, 0, 1: 1/4 and 1 + 1/4
    bottom = np.array([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]])
    expected = np.concatenate([top[None] / np.linalg.norm(top), -bottom / np.linalg.norm(bottom)])
    np.testing.assert_allclose(eta(3), expected / np.linalg.norm(expected), rtol=1e-12)
    for s in (1, 4, 7):
        assert np.linalg.norm(eta(s)) == pytest.approx(1.0)
        assert eta(s).shape == (s, s)


@pytest.fixture(scope="module")
def digits(digits_cnn):
    return digits_logits(digits_cnn, 96)


def _accuracy(logits_fn, x, y):
    return float(np.mean(np.argmax(logits_fn(x).numpy(), -1) == y.numpy()))


def test_l2_start_has_norm_eps_inside_the_box():
    """The l2 start (grid of eta blocks) is scaled to norm eps exactly when [0, 1] does not clip."""
    x = tf.fill([4, 28, 28, 1], 0.5)
    y = tf.zeros([4], tf.int32)
    def logits_fn(v):
        return tf.concat([tf.ones([tf.shape(v)[0], 1]) * 100.0, tf.zeros([tf.shape(v)[0], 9])], 1)
    x_best, margin = square_run(logits_fn, x, y, eps=tf.constant(0.5), norm="l2", n_queries=1, seed=tf.constant([1, 2]))
    norms = np.sqrt(np.sum((x_best - x).numpy() ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(norms, 0.5, rtol=1e-5)
    assert np.all(margin.numpy() == 100.0)
    delta = (x_best - x).numpy()[..., 0]
    assert np.all(delta[:, 0, :] == 0) and np.all(delta[:, 26:, :] == 0)  # blocks cover rows 1..25


@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("linf", 0.15)])
def test_square_stays_in_the_ball_and_box_and_lowers_accuracy(digits, norm, eps):
    logits_fn, x, y = digits
    x_adv = compiled(square, logits_fn, x, y, eps=eps, norm=norm, n_queries=300, seed=0).numpy()
    delta = (x_adv - x.numpy()).reshape(len(x_adv), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
    assert np.all(size <= eps * (1 + 1e-5))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    clean, adv = _accuracy(logits_fn, x, y), _accuracy(logits_fn, tf.constant(x_adv), y)
    print(norm, "clean", clean, "square", adv)
    assert adv < clean - 0.25
    # only misclassified points are returned; the rest is x itself
    pred = np.argmax(logits_fn(x_adv).numpy(), -1)
    np.testing.assert_array_equal(x_adv[pred == y.numpy()], x.numpy()[pred == y.numpy()])


def test_more_queries_find_more(digits):
    logits_fn, x, y = digits
    acc = [_accuracy(logits_fn, compiled(square, logits_fn, x, y, eps=0.6, norm="l2", n_queries=q, seed=1), y)
           for q in (5, 200)]
    assert acc[1] < acc[0]


def test_linf_draws_one_window_and_sign_for_the_whole_batch():
    """As the reference: after one iteration every example carries the same window, at a corner in
    [0, H - s), set to x + eps sign with the same sign (its l-inf start differs per example)."""
    calls = tf.Variable(0.0)

    def always_better(v):  # the margin falls at every query, so every candidate is kept
        calls.assign_add(1.0)
        n = tf.shape(v)[0]
        return tf.concat([tf.fill([n, 1], 100.0 - calls), tf.zeros([n, 9])], axis=1)

    x = tf.fill([64, 28, 28, 1], 0.5)
    y = tf.zeros([64], tf.int32)
    x_best, _ = tf.function(lambda: square_run(always_better, x, y, eps=tf.constant(0.1), n_queries=1,
                                               seed=tf.constant([5, 6])))()
    x_best = x_best.numpy()[..., 0]
    same = np.all(np.abs(x_best - x_best[:1]) < 1e-6, axis=0)  # [H, W]: where all examples agree
    rows, cols = np.nonzero(same)
    side = window_sides(0.8, 28, 28, 1, "linf")[0]
    assert same.sum() == side * side
    assert rows.max() - rows.min() == side - 1 and cols.max() - cols.min() == side - 1
    assert rows.min() < 28 - side and cols.min() < 28 - side
    window = x_best[0][same]
    assert np.allclose(np.abs(window - 0.5), 0.1) and np.ptp(window) < 1e-6  # one sign (one channel)


# -- float64 end to end, and mixed precision --------------------------------------------------------

def _sum_model(need: np.ndarray, n_pixels: int = 64):
    """Two classes on 8x8x1 float64 images, logits (1000, 1000 + g(v)) with g(v) = sum(v - 1/2), and x
    off the float32 grid with g(x) = -need: a perturbation fools x once it adds more than `need` to the
    pixel sum. The logits sit at 1000, so float32 logits (spacing 6e-5) could not see g."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.3, 0.7, (len(need), n_pixels))
    x -= ((x - 0.5).sum(1) + need)[:, None] / n_pixels

    def logits_fn(v):
        g = tf.reduce_sum(v - 0.5, axis=[1, 2, 3])[:, None]
        return tf.concat([tf.fill(tf.shape(g), tf.constant(1000.0, v.dtype)), 1000.0 + g], axis=1)

    return logits_fn, tf.constant(x.reshape(-1, 8, 8, 1)), tf.zeros([len(need)], tf.int32)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_in_float64_works_below_float32_resolution(float64, norm):
    """eps = 1e-8 and margins of order 1e-8 at logits of 1000: in float64 Square fools every example
    within eps, in [0, 1]; a float32 round trip of the images (x + 1e-8 rounds back to x near 1/2)
    or of the logits and margins fools none."""
    eps = 1e-8
    reach = 64 * eps if norm == "linf" else 8 * eps  # the largest sum a perturbation of norm eps adds
    logits_fn, x, y = _sum_model(np.full(8, 0.2 * reach))
    assert np.all(np.argmax(logits_fn(x).numpy(), 1) == 0)
    x_adv = compiled(square, logits_fn, x, y, eps=eps, norm=norm, n_queries=300, seed=0)
    assert x_adv.dtype == tf.float64
    x_adv = x_adv.numpy()
    delta = (x_adv - x.numpy()).reshape(len(x_adv), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
    assert np.all(size <= eps + 1e-15) and x_adv.min() >= 0.0 and x_adv.max() <= 1.0  # 1e-15: float64 near 1/2
    assert np.all(np.argmax(logits_fn(tf.constant(x_adv)).numpy(), 1) == 1)


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.5)])
def test_square_fools_the_same_examples_in_float64_and_float32(norm, eps):
    """A fixed random linear model (float32 numbers, exact in float64): float32 and float64 runs of
    the same seed draw the same signs and windows, so they fool the same examples with the same
    points (up to float32 rounding)."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 10)).astype(np.float32) * 0.3
    _, _, x_test, _ = digits_arrays()
    x = x_test[:48]
    y = np.argmax(x.reshape(48, 64) @ w, 1).astype(np.int32)  # clean-correct by construction

    def logits_fn(v):
        return tf.reshape(v, [-1, 64]) @ tf.constant(w, v.dtype)

    out = {}
    for dtype in ("float32", "float64"):
        with floatx(dtype):
            x_adv = compiled(square, logits_fn, tf.constant(x, dtype), tf.constant(y), eps=eps, norm=norm,
                             n_queries=100, seed=2)
            assert x_adv.dtype == dtype
            out[dtype] = x_adv.numpy(), np.argmax(logits_fn(x_adv).numpy(), 1) != y
    print(norm, "fooled", out["float32"][1].sum(), "of", len(y))
    assert 0 < out["float32"][1].sum() < len(y)
    np.testing.assert_array_equal(out["float64"][1], out["float32"][1])
    np.testing.assert_allclose(out["float64"][0], out["float32"][0], atol=1e-6)


def test_square_widens_half_precision_logits(digits):
    """A model whose logits are float16 (mixed precision): the attack runs in its images' float32."""
    logits_fn, x, y = digits

    def half(v):
        return tf.cast(logits_fn(v), tf.float16)

    x_adv = compiled(square, half, x, y, eps=0.15, n_queries=50, seed=0)
    assert x_adv.dtype == tf.float32
    assert np.all(np.abs(x_adv.numpy() - x.numpy()).max(axis=(1, 2, 3)) <= 0.15 + 1e-6)
    assert _accuracy(half, x_adv, y) < _accuracy(half, x, y)


def test_fab_t_and_square_through_the_evaluation_in_float64(float64):
    """robust_accuracy with FAB-T and Square (few steps) and the sanity checks on a float64 Keras model:
    a report whose adversarial examples are float64, within eps and [0, 1], and accuracies below clean."""
    from tfrobust.evaluation import AttackSpec, robust_accuracy

    x_train, y_train, x_test, y_test = digits_arrays()
    net = conv_model((8, 8, 1), 10)
    assert net.compute_dtype == "float64"
    net.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x_train.astype(np.float64), y_train, epochs=5, batch_size=64, verbose=0)
    attacks = [AttackSpec("fab_t", steps=10, n_target_classes=3), AttackSpec("square", steps=100)]
    report = robust_accuracy(net, (x_test, y_test), attacks=attacks, eps_values=[0.1], limit=64, keep_adversarial=True)
    x = x_test[:64].astype(np.float64)
    print("clean", report.clean_accuracy, report.accuracy)
    assert report.clean_accuracy > 0.7
    for label, adversarial in report.adversarial.items():
        assert adversarial.dtype == np.float64, label
        assert np.abs(adversarial[0] - x).max() <= 0.1 + 1e-15
        assert 0 <= adversarial.min() <= adversarial.max() <= 1
        assert report.accuracy[label][0] < report.clean_accuracy
    # the sanity checks ran in float64 too, but for cleverhans' PGD, which computes in float32 only
    assert "cleverhans_agreement" not in report.checks_run and len(report.checks_run) >= 8
    assert "float32 only" in report.checks_skipped["cleverhans_agreement"]
