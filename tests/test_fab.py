"""Tests for FAB-T (`tfrobust.attacks.fab`): the box-constrained hyperplane projections against an
independent solver, near-minimal perturbations on linear models (closed-form distances), the eps
check, and the trained digits CNN."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
import tensorflow as tf
from conftest import digits_logits

from tfrobust.attacks.fab import fab_targeted, project_l2, project_linf
from tfrobust.precision import floatx


def compiled(attack, *args, **kwargs):
    return tf.function(functools.partial(attack, *args, **kwargs))()


def _solve_by_bisection(t, w, b, norm):
    """The minimal-norm step to <w, t + d> = b inside [0, 1]^N from the optimality conditions, by
    bisection on the multiplier: l-inf d_i = -sign(w_i) min(lam, room_i), l2 d = clip(t - lam w) - t
    (w flipped so that <w, t> >= b); the box corner when the hyperplane is out of reach."""
    out = np.zeros_like(t)
    for i in range(len(t)):
        ti, wi, bi = t[i].astype(np.float64), w[i].astype(np.float64), float(b[i])
        if wi @ ti - bi < 0:
            wi, bi = -wi, -bi

        def step(lam, ti=ti, wi=wi):
            if norm == "linf":
                room = np.where(wi < 0, 1 - ti, ti)
                return -np.sign(wi) * np.minimum(lam, room)
            return np.clip(ti - lam * wi, 0, 1) - ti

        hi = 1.0 if norm == "linf" else 1e6
        if wi @ (ti + step(hi)) - bi > 0:  # unreachable: the corner
            out[i] = step(hi)
            continue
        lo = 0.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if wi @ (ti + step(mid)) - bi > 0 else (lo, mid)
        out[i] = step(hi)
    return out


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projections_match_an_independent_solver(norm):
    rng = np.random.default_rng(0)
    n, dim = 64, 50
    t = rng.uniform(0, 1, (n, dim)).astype(np.float32)
    t[:, :10] = np.round(t[:, :10])  # pixels on the box faces, as in images
    w = rng.normal(size=(n, dim)).astype(np.float32)
    w[:8, :5] = 0.0  # coordinates the hyperplane does not see
    # targets near the point (box inactive), farther (box binding) and out of reach
    b = (np.sum(w * t, 1) + rng.normal(size=n) * np.concatenate([
        np.full(24, 0.2), np.full(24, 3.0), np.full(16, 40.0)])).astype(np.float32)
    project = project_linf if norm == "linf" else project_l2
    d = project(tf.constant(t), tf.constant(w), tf.constant(b)).numpy()
    expected = _solve_by_bisection(t, w, b, norm)
    np.testing.assert_allclose(d, expected, atol=2e-4)
    assert np.all(t + d >= -1e-6) and np.all(t + d <= 1 + 1e-6)
    reach = np.abs(np.sum(w * (t + d), 1) - b) < 1e-3
    assert reach[:24].all() and reach.sum() < n  # the near ones are reached, some are out of reach
    # the bisection's case is covered: reached with some coordinates at a face and others inside it
    moved = np.abs(expected) > 1e-6
    at_face = moved & ((np.abs(t + expected) < 1e-6) | (np.abs(t + expected - 1) < 1e-6))
    assert np.sum(reach & at_face.any(1) & (moved & ~at_face).any(1)) >= 10


def _linear_problem(num_classes=10, n=40, seed=0):
    """A linear classifier z = W vec(x) + c on 4x4x2 inputs in the middle of the box, labels its own
    predictions (all clean-correct), and the closed-form least distance to misclassification."""
    rng = np.random.default_rng(seed)
    dim = 32
    weights = rng.normal(size=(dim, num_classes)).astype(np.float32)
    bias = rng.normal(size=num_classes).astype(np.float32) * 0.1
    x = rng.uniform(0.35, 0.65, (n, 4, 4, 2)).astype(np.float32)
    logits = x.reshape(n, dim) @ weights + bias
    y = np.argmax(logits, 1).astype(np.int32)

    def least_distance(norm):
        # distance to the halfspace z_t >= z_y is (z_y - z_t) / ||w_y - w_t||_dual; minimum over t
        dual = 1 if norm == "linf" else 2
        dist = np.full(n, np.inf)
        for k in range(num_classes):
            gap = logits[np.arange(n), y] - logits[:, k]
            wd = np.linalg.norm((weights[:, y] - weights[:, [k]]).T, ord=dual, axis=1)
            dist = np.where(k == y, dist, np.minimum(dist, gap / np.maximum(wd, 1e-12)))
        return dist

    def logits_fn(v):  # in v's dtype (the weights are float32 numbers, exact in float64)
        return tf.matmul(tf.reshape(v, [-1, dim]), tf.constant(weights, v.dtype)) + tf.constant(bias, v.dtype)

    return logits_fn, tf.constant(x), tf.constant(y), least_distance


def _norms(delta, norm):
    flat = delta.reshape(len(delta), -1)
    return np.abs(flat).max(1) if norm == "linf" else np.sqrt((flat ** 2).sum(1))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_is_near_minimal_on_a_linear_model(norm):
    """With eps 1.1 x the closed-form least distance FAB-T fools every example (all 9 targets of 10
    classes are tried); with 0.99 x it fools none, and returns x unchanged."""
    logits_fn, x, y, least_distance = _linear_problem()
    dist = least_distance(norm)
    # the box [0, 1] must not bind for the closed form to hold
    assert np.all(dist < (0.3 if norm == "linf" else 0.3 * np.sqrt(2))), dist.max()
    eps = tf.constant(1.1 * dist, tf.float32)
    x_adv = compiled(fab_targeted, logits_fn, x, y, eps=eps, norm=norm, n_iter=100).numpy()
    pred = np.argmax(logits_fn(x_adv).numpy(), 1)
    found = _norms(x_adv - x.numpy(), norm)
    assert np.all(pred != y.numpy())
    assert np.all(found <= 1.1 * dist * (1 + 1e-5))
    assert np.all(found >= dist * (1 - 1e-4))
    print(norm, "found / least distance: max", (found / dist).max(), "mean", (found / dist).mean())

    x_same = compiled(fab_targeted, logits_fn, x, y, eps=tf.constant(0.99 * dist, tf.float32),
                      norm=norm, n_iter=100).numpy()
    np.testing.assert_array_equal(x_same, x.numpy())


def test_fab_t_uses_the_top_non_true_class_first():
    """One target: the result lies on the far side of the boundary with the highest-logit other class,
    at about its distance |z_y - z_t| / ||w_y - w_t||_1 (not the other classes')."""
    logits_fn, x, y, _ = _linear_problem(num_classes=5, n=16, seed=1)
    logits = logits_fn(x).numpy()
    x_adv = compiled(fab_targeted, logits_fn, x, y, eps=1.0, norm="linf", n_target_classes=1).numpy()
    others = np.where(np.eye(5)[y.numpy()] > 0, -np.inf, logits)
    top = np.argmax(others, 1)
    adv_logits = logits_fn(x_adv).numpy()
    assert np.all(np.argmax(adv_logits, 1) != y.numpy())
    rows = np.arange(len(top))
    assert np.all(adv_logits[rows, top] >= adv_logits[rows, y.numpy()] - 1e-5)


@pytest.fixture(scope="module")
def digits(digits_cnn):
    return digits_logits(digits_cnn, 64)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
def test_fab_t_stays_in_the_ball_and_box_and_fools_the_cnn(digits, norm, eps):
    logits_fn, x, y = digits
    x_adv = compiled(fab_targeted, logits_fn, x, y, eps=eps, norm=norm, n_iter=30,
                     n_target_classes=3).numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.all(_norms(x_adv - x.numpy(), norm) <= eps * (1 + 1e-5))
    pred = np.argmax(logits_fn(x_adv).numpy(), 1)
    clean = np.argmax(logits_fn(x).numpy(), 1)
    changed = np.any(x_adv != x.numpy(), axis=(1, 2, 3))
    assert np.all(pred[changed] != y.numpy()[changed])  # only successes are returned
    acc_clean, acc_adv = np.mean(clean == y.numpy()), np.mean(pred == y.numpy())
    print(norm, "clean", acc_clean, "fab-t", acc_adv)
    assert acc_adv < acc_clean - 0.2


def test_restarts_and_compaction_give_valid_results(digits):
    logits_fn, x, y = digits
    outs = [compiled(fab_targeted, logits_fn, x, y, eps=0.1, n_iter=10, n_target_classes=2, restarts=2,
                     seed=3, compact=c).numpy() for c in (True, False)]
    for x_adv in outs:
        assert np.all(np.abs(x_adv - x.numpy()).max(axis=(1, 2, 3)) <= 0.1 + 1e-6)
    # the first run of each target starts at x and is deterministic: compacting changes nothing there
    errors = [np.sum(np.argmax(logits_fn(o).numpy(), 1) != y.numpy()) for o in outs]
    assert abs(errors[0] - errors[1]) <= 3


# -- float64 end to end, and mixed precision --------------------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projections_in_float64_are_exact_to_float64(norm):
    """float64 points, normals and offsets (not float32 numbers): the projections return float64 and
    agree with the float64 solver to 1e-10; a float32 step anywhere inside would miss by ~1e-8."""
    rng = np.random.default_rng(1)
    n, dim = 48, 40
    t = rng.uniform(0, 1, (n, dim))
    t[:, :8] = np.round(t[:, :8])
    w = rng.normal(size=(n, dim))
    b = np.sum(w * t, 1) + rng.normal(size=n) * np.concatenate([np.full(16, 0.2), np.full(16, 3.0), np.full(16, 40.0)])
    project = project_linf if norm == "linf" else project_l2
    d = project(tf.constant(t), tf.constant(w), tf.constant(b))
    assert d.dtype == tf.float64
    np.testing.assert_allclose(d.numpy(), _solve_by_bisection(t, w, b, norm), rtol=0, atol=1e-10)


def _tiny_margin_problem(norm, distance=1e-9, n=16, seed=0):
    """Two classes on 4x4x2 float64 inputs, logits (1, 1 + g(v)), g linear, every example at
    `distance` (in `norm`) from the boundary g = 0, on the class-0 side. x lies off the float32 grid
    and the logits sit at 1, so a float32 cast of the images (spacing 6e-8 near 0.5) or of the
    logits (spacing 1.2e-7 near 1) cannot see the boundary."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=32)
    dual = np.abs(w).sum() if norm == "linf" else np.sqrt((w ** 2).sum())
    offset = 0.5 * w.sum()  # g(v) = <v, w> - offset is 0 at the box centre
    x = rng.uniform(0.4, 0.6, (n, 32))
    # move each x along w so that g(x) = -distance ||w||_dual (in float64)
    x -= ((x @ w - offset + distance * dual) / (w @ w))[:, None] * w[None, :]
    assert x.min() > 0.1 and x.max() < 0.9

    def logits_fn(v):
        g = tf.reshape(v, [-1, 32]) @ tf.constant(w[:, None], v.dtype) - offset
        return tf.concat([tf.ones_like(g), 1.0 + g], axis=1)

    return logits_fn, tf.constant(x.reshape(n, 4, 4, 2)), tf.zeros([n], tf.int32)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_in_float64_finds_a_boundary_below_float32_resolution(float64, norm):
    """Every example is 1e-9 from the boundary and eps is 1e-8: in float64 FAB-T fools all of them
    within eps; a float32 round trip of the images, the iterate or the logits fools none (mutations
    tried by hand; the projections' float64 accuracy is the test above)."""
    logits_fn, x, y = _tiny_margin_problem(norm)
    assert np.all(np.argmax(logits_fn(x).numpy(), 1) == 0)
    x_adv = compiled(fab_targeted, logits_fn, x, y, eps=1e-8, norm=norm, n_iter=5)
    assert x_adv.dtype == tf.float64
    x_adv = x_adv.numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.all(np.argmax(logits_fn(tf.constant(x_adv)).numpy(), 1) == 1)
    found = _norms(x_adv - x.numpy(), norm)
    assert np.all(found <= 1e-8) and np.all(found >= 1e-9 * (1 - 1e-6)), found


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_fools_the_same_examples_in_float64_and_float32(norm):
    """The linear problem with eps 1.1 x the least distance for even examples and 0.9 x for odd
    ones: float32 and float64 runs (same weights) fool exactly the even ones."""
    logits_fn, x, y, least_distance = _linear_problem(n=20)
    dist = least_distance(norm)
    scale = np.where(np.arange(len(dist)) % 2 == 0, 1.1, 0.9)
    fooled = {}
    for dtype in ("float32", "float64"):
        with floatx(dtype):
            x_d = tf.cast(x, dtype)
            x_adv = compiled(fab_targeted, logits_fn, x_d, y, eps=tf.constant(scale * dist, dtype), norm=norm)
            assert x_adv.dtype == dtype
            fooled[dtype] = np.argmax(logits_fn(x_adv).numpy(), 1) != y.numpy()
    np.testing.assert_array_equal(fooled["float32"], np.arange(len(dist)) % 2 == 0)
    np.testing.assert_array_equal(fooled["float64"], fooled["float32"])


def test_fab_t_widens_half_precision_logits(digits):
    """A model whose logits are float16 (mixed precision): the attack runs in its images' float32."""
    logits_fn, x, y = digits

    def half(v):
        return tf.cast(logits_fn(v), tf.float16)

    x_adv = compiled(fab_targeted, half, x, y, eps=0.1, n_iter=10, n_target_classes=2)
    assert x_adv.dtype == tf.float32
    assert np.all(np.abs(x_adv.numpy() - x.numpy()).max(axis=(1, 2, 3)) <= 0.1 + 1e-6)
    assert np.mean(np.argmax(half(x_adv).numpy(), 1) != y.numpy()) > np.mean(np.argmax(half(x).numpy(), 1) != y.numpy())
