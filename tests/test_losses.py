"""Tests for `tfrobust.losses`: values and weight gradients against independent float64 NumPy
references (the gradient by central differences through a fixed tiny Dense model), and the
properties of the mutual-information estimator."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrobust import losses  # noqa: E402
from tfrobust.attacks import objectives  # noqa: E402

K = 4  # classes
D = 3  # input features of the tiny Dense model
B = 6  # batch


# -- float64 NumPy references, written from the papers' formulas --------------------------------

def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_kl(z_p, z_q):  # KL(softmax(z_p) || softmax(z_q)) per example
    lp, lq = np_log_softmax(z_p), np_log_softmax(z_q)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def np_mart_boosted_ce(z_adv, y):
    p = np_softmax(z_adv)
    wrong = p.copy()
    wrong[np.arange(len(y)), y] = -np.inf
    return np_ce(z_adv, y) - np.log(1.0001 - wrong.max(-1) + 1e-12)


def np_mart_weighted_kl(z, z_adv, y):
    p_true = np_softmax(z)[np.arange(len(y)), y]
    return np_kl(z, z_adv) * (1.0000001 - p_true)


def np_mae(z, z_adv):
    return np.abs(z - z_adv).mean(-1)


def np_mi(p, q, symmetric=True, floor=1e-8):
    joint = np.einsum("bi,bj->ij", p, q)
    joint = joint / joint.sum()
    if symmetric:
        joint = (joint + joint.T) / 2
    joint = np.maximum(joint, floor)
    row, col = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    return float((joint * (np.log(joint) - np.log(row) - np.log(col))).sum())


# -- a fixed tiny Dense model: z = x W + b, on clean inputs and on shifted "adversarial" ones ---

RNG = np.random.default_rng(1234)
X = RNG.normal(size=(B, D))
X_ADV = X + 0.3 * RNG.normal(size=(B, D))
Y = np.array([0, 1, 2, 3, 1, 2])
W = RNG.normal(size=(D, K))
BIAS = 0.1 * RNG.normal(size=(K,))

# Batch-mean scalar losses of (clean logits, adversarial logits, labels): (TF, NumPy).
CASES = {
    "trades_kl": (lambda z, za, y: losses.kl_divergence(z, za), lambda z, za, y: np_kl(z, za)),
    "mart_boosted_ce": (lambda z, za, y: losses.mart_boosted_cross_entropy(za, y),
                        lambda z, za, y: np_mart_boosted_ce(za, y)),
    "mart_weighted_kl": (losses.mart_weighted_kl, np_mart_weighted_kl),
    "logit_mae": (lambda z, za, y: losses.logit_mae(z, za), lambda z, za, y: np_mae(z, za)),
    "mi_symmetric": (
        lambda z, za, y: losses.mutual_information(
            losses.prediction_joint(tf.nn.softmax(z), tf.nn.softmax(za)), symmetric=True),
        lambda z, za, y: np_mi(np_softmax(z), np_softmax(za), symmetric=True)),
    "mi_plain": (
        lambda z, za, y: losses.mutual_information(
            losses.prediction_joint(tf.nn.softmax(z), tf.nn.softmax(za)), symmetric=False),
        lambda z, za, y: np_mi(np_softmax(z), np_softmax(za), symmetric=False)),
}


def np_objective(np_fn, w, b):
    return float(np.mean(np_fn(X @ w + b, X_ADV @ w + b, Y)))


def np_gradient(np_fn, w, b, h=1e-6):
    """Central differences in float64 of the batch-mean loss w.r.t. W and b."""
    grads = []
    for param in (w, b):
        g = np.zeros_like(param)
        for idx in np.ndindex(param.shape):
            orig = param[idx]
            param[idx] = orig + h
            up = np_objective(np_fn, w, b)
            param[idx] = orig - h
            down = np_objective(np_fn, w, b)
            param[idx] = orig
            g[idx] = (up - down) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("case", sorted(CASES))
def test_value_and_weight_gradient_match_float64_reference(case):
    tf_fn, np_fn = CASES[case]
    w = tf.Variable(W.astype(np.float32))
    b = tf.Variable(BIAS.astype(np.float32))
    with tf.GradientTape() as tape:
        z = tf.constant(X, tf.float32) @ w + b
        z_adv = tf.constant(X_ADV, tf.float32) @ w + b
        value = tf_fn(z, z_adv, tf.constant(Y))
        loss = tf.reduce_mean(value)
    grad_w, grad_b = tape.gradient(loss, [w, b])

    expected = np_fn(X @ W + BIAS, X_ADV @ W + BIAS, Y)
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-6)
    ref_w, ref_b = np_gradient(np_fn, W.copy(), BIAS.copy())
    assert np.abs(ref_w).max() > 1e-3  # the reference gradient is not trivially zero
    np.testing.assert_allclose(grad_w.numpy(), ref_w, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(grad_b.numpy(), ref_b, rtol=1e-4, atol=2e-6)


def test_cross_entropy_and_margin_match_reference():
    z = RNG.normal(size=(B, K)) * 3
    np.testing.assert_allclose(losses.cross_entropy(tf.constant(z, tf.float32), Y).numpy(),
                               np_ce(z, Y), rtol=1e-5, atol=1e-6)
    wrong = z.copy()
    wrong[np.arange(B), Y] = -np.inf
    np.testing.assert_allclose(objectives.margin(tf.constant(z, tf.float32), Y).numpy(),
                               wrong.max(-1) - z[np.arange(B), Y], rtol=1e-5, atol=1e-6)


def test_kl_is_finite_and_has_finite_gradients_for_saturated_logits():
    # softmax underflows to exactly 0 here; a log of it would give inf / NaN.
    z = tf.constant([[200.0, 0.0, -200.0, 0.0]])
    z_adv = tf.Variable([[-200.0, 0.0, 200.0, 0.0]])
    with tf.GradientTape() as tape:
        kl = losses.kl_divergence(z, z_adv)
    grad = tape.gradient(kl, z_adv)
    assert np.isfinite(kl.numpy()).all() and kl.numpy()[0] == pytest.approx(400.0, rel=1e-5)
    assert np.isfinite(grad.numpy()).all()
    assert losses.kl_divergence(z, z).numpy()[0] == pytest.approx(0.0, abs=1e-6)


def test_prediction_joint_is_the_sum_of_outer_products():
    p, q = np_softmax(RNG.normal(size=(B, K))), np_softmax(RNG.normal(size=(B, K)))
    expected = sum(np.outer(p[i], q[i]) for i in range(B))
    np.testing.assert_allclose(losses.prediction_joint(p, q).numpy(), expected, rtol=1e-5)


def _mi(p, q, symmetric):
    joint = losses.prediction_joint(tf.constant(p, tf.float32), tf.constant(q, tf.float32))
    return float(losses.mutual_information(joint, symmetric=symmetric))


@pytest.mark.parametrize("symmetric", [True, False])
def test_mutual_information_is_zero_for_independent_predictions(symmetric):
    # Constant uniform rows on both sides.
    uniform = np.full((8, K), 1.0 / K)
    assert _mi(uniform, uniform, symmetric) == pytest.approx(0.0, abs=1e-5)
    # Every pair of classes once: the joint is the outer product of uniform marginals.
    pairs = [(i, j) for i in range(K) for j in range(K)]
    p = np.eye(K)[[i for i, _ in pairs]]
    q = np.eye(K)[[j for _, j in pairs]]
    assert _mi(p, q, symmetric) == pytest.approx(0.0, abs=1e-5)


def test_mutual_information_is_zero_for_a_rank_one_joint():
    # p constant: the (unsymmetrized) joint is p (sum_i q_i)^T, whatever q is.
    p = np.tile(np_softmax(RNG.normal(size=(1, K))), (B, 1))
    q = np_softmax(RNG.normal(size=(B, K)) * 2)
    assert _mi(p, q, symmetric=False) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_mutual_information_is_log_k_for_identical_confident_balanced_predictions(symmetric):
    labels = np.arange(3 * K) % K
    p = np_softmax(20.0 * np.eye(K)[labels])
    assert _mi(p, p, symmetric) == pytest.approx(math.log(K), abs=1e-4)
    # Not balanced (one class twice as frequent): strictly less than log K.
    labels = np.concatenate([labels, np.zeros(3, int)])
    p = np_softmax(20.0 * np.eye(K)[labels])
    assert _mi(p, p, symmetric) < math.log(K) - 1e-2


@pytest.mark.parametrize("seed", range(5))
def test_mutual_information_is_between_zero_and_log_k(seed):
    rng = np.random.default_rng(seed)
    scale = [0.1, 1.0, 10.0, 100.0, 1000.0][seed]
    p = np_softmax(scale * rng.normal(size=(16, K)))
    q = np_softmax(scale * rng.normal(size=(16, K)))
    for symmetric in (True, False):
        for a, b in ((p, q), (p, p)):
            mi = _mi(a, b, symmetric)
            assert -1e-6 <= mi <= math.log(K) + 1e-6
            assert mi == pytest.approx(np_mi(a, b, symmetric), abs=1e-5)
