"""Tests for ATENT: the Langevin step (`tfrobust.attacks.langevin`) and the method
(`tfrobust.methods.atent`), on tiny models."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrobust import losses, rng  # noqa: E402
from tfrobust.attacks import langevin  # noqa: E402
from tfrobust.methods import AttackConfig, LossOutput, StepContext, build  # noqa: E402
from tfrobust.methods.pgd_at import PgdAt  # noqa: E402
from tfrobust.robust_model import RobustModel  # noqa: E402

SHAPE = (6, 6, 1)
CLASSES = 3
BATCH = 8


def tiny_model(seed: int = 0, batch_norm: bool = True) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(h))


def batch(seed: int = 0, lo: float = 0.0, hi: float = 1.0):
    r = np.random.default_rng(seed)
    x = r.uniform(lo, hi, size=(BATCH, *SHAPE)).astype(np.float32)
    y = (np.arange(BATCH) % CLASSES).astype(np.int32)
    return tf.constant(x), tf.constant(y)


def robust_model(method, model, weight_decay=0.0, seed=0, lr=0.1):
    rm = RobustModel(model, method, weight_decay=weight_decay, seed=seed)
    rm.compile(optimizer=keras.optimizers.SGD(lr))
    return rm


# -- the Langevin step ---------------------------------------------------------------------------

def test_linf_step_without_noise_is_a_projected_sign_step():
    x, _ = batch(0, 0.2, 0.8)
    x_prev = x + 0.05
    grad = tf.random.stateless_normal(x.shape, [1, 2])
    out = langevin.langevin_step(x_prev, x, grad, step_size=0.1, noise=0.0, gamma=0.5, norm="linf",
                                 eps=0.08, project=True)
    expected = np.clip(x.numpy() + np.clip(0.05 + 0.1 * np.sign(grad.numpy()), -0.08, 0.08), 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)  # gamma plays no part in l-inf


def test_l2_step_without_noise_has_the_pull_back():
    x, _ = batch(0, 0.2, 0.8)
    x_prev = x + 0.01 * tf.random.stateless_normal(x.shape, [3, 4])
    grad = tf.random.stateless_normal(x.shape, [1, 2])
    out = langevin.langevin_step(x_prev, x, grad, step_size=0.1, noise=0.0, gamma=0.25, norm="l2",
                                 project=False)
    g = grad.numpy()
    unit = g / np.sqrt((g ** 2).sum(axis=(1, 2, 3), keepdims=True))
    expected = x_prev.numpy() + 0.1 * unit + 0.25 * (x.numpy() - x_prev.numpy())
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_step_noise_is_seeded_gaussian_with_scale_noise_sqrt_2_step():
    x = tf.fill([64, 8, 8, 1], 0.5)
    grad = tf.zeros_like(x)  # sign(0) = 0: only the noise moves the point
    kw = dict(step_size=0.02, noise=0.5, norm="linf", project=False)
    a = langevin.langevin_step(x, x, grad, seed=tf.constant([7, 0]), **kw)
    b = langevin.langevin_step(x, x, grad, seed=tf.constant([7, 0]), **kw)
    c = langevin.langevin_step(x, x, grad, seed=tf.constant([8, 0]), **kw)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())
    z = (a.numpy() - 0.5) / (0.5 * np.sqrt(2 * 0.02))
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.05


def _stochat_linf_path(x, start, signs, noise, eps, step, ep):
    """StochAT's l-inf iterates (`adversarial/functional.py`, projector on) given each step's gradient
    sign and Gaussian draw, in float32 as PyTorch computes them: `x_adv += sign(grad) * step`, then
    `x_adv += ep * np.sqrt(2 * step) * randn` (the scale a float64 number, rounded to float32 where
    it meets the draw), then `utils.project` (torch.max(torch.min(x_adv, x + eps), x - eps)) and
    clamp(0, 1)."""
    step32, eps32, scale = np.float32(step), np.float32(eps), np.float32(ep * np.sqrt(2 * step))
    x_adv, path = start, []
    for sign, draw in zip(signs, noise):
        x_adv = x_adv + sign * step32
        x_adv = x_adv + scale * draw
        x_adv = np.clip(np.maximum(np.minimum(x_adv, x + eps32), x - eps32), np.float32(0), np.float32(1))
        path.append(x_adv)
    return path


@pytest.mark.parametrize("ep", [1e-4, 0.05])
def test_float32_langevin_steps_on_the_official_signs_are_stochats_bit_for_bit(ep, monkeypatch):
    """ATENT's sampler in float32, fed the reference's gradient signs and noise draws, gives its
    iterates exactly: the projection's arithmetic (`ball.project`) and the noise scale's rounding
    (`langevin.noise_scale`) are the reference's."""
    r = np.random.default_rng(3)
    x = (r.integers(0, 256, size=(8, 28, 28, 1)) / 255).astype(np.float32)
    x[r.uniform(size=x.shape) < 0.5] = 0.0
    steps, eps, step = 20, 0.3, 0.02
    start = x + np.float32(eps) * np.sign(r.standard_normal(size=x.shape)).astype(np.float32)  # not clipped
    signs = r.choice(np.array([-1.0, 0.0, 1.0], np.float32), p=[0.45, 0.1, 0.45], size=(steps, *x.shape))
    draws = r.standard_normal(size=(steps, *x.shape)).astype(np.float32)
    official = _stochat_linf_path(x, start, signs, draws, eps, step, ep)
    x_adv = tf.constant(start)
    for t in range(steps):
        monkeypatch.setattr(langevin.rng, "normal", lambda seed, like, t=t: tf.constant(draws[t]))
        x_adv = langevin.langevin_step(x_adv, tf.constant(x), tf.constant(signs[t]), step_size=step, noise=ep,
                                       norm="linf", seed=tf.constant([0, t]), eps=eps, project=True)
        differ = int((x_adv.numpy() != official[t]).sum())
        assert differ == 0, f"step {t + 1}: {differ} of {x.size} components differ from StochAT's iterate"


def test_the_noise_scale_is_rounded_once_as_the_reference_rounds_it():
    x = tf.zeros([2, 1], tf.float32)
    assert langevin.noise_scale(1e-4, 0.02, x).numpy() == np.float32(1e-4 * np.sqrt(2 * 0.02))
    per_example = langevin.noise_scale(1e-4, tf.constant([0.02, 0.01], tf.float32), x).numpy()
    np.testing.assert_allclose(per_example.ravel(), [2e-5, 1e-4 * np.sqrt(0.02)], rtol=1e-7)


def test_iterate_weights_are_the_exponential_average():
    np.testing.assert_allclose(langevin.iterate_weights(3, 0.9), [0.9 * 0.01, 0.9 * 0.1, 0.9])
    assert langevin.iterate_weights(4, 1.0) == [0.0, 0.0, 0.0, 1.0]


# -- the method ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PgdAtNoStart(PgdAt):
    """PGD-AT without a random start (test-only)."""

    def attack_inputs(self, ctx, x, y):
        return self.pgd(ctx, x, y, start="none")


def test_one_noiseless_langevin_step_with_alpha_1_equals_pgd_at():
    attack = AttackConfig(eps=0.1, step_size=0.05, steps=1)
    x, y = batch(1)
    final = {}
    for name, method in {
        "atent": build("atent", attack, dict(noise=0.0, alpha=1.0, start="none")),
        "pgd_at": PgdAtNoStart(attack=attack),
    }.items():
        model = tiny_model(0)
        rm = robust_model(method, model, weight_decay=0.01)
        rm.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        final[name] = model.get_weights()
    start = tiny_model(0).get_weights()
    assert not np.allclose(final["atent"][0], start[0])
    for a, b in zip(final["atent"], final["pgd_at"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def all_graphs_gradients(method, model, seed, x, y, weight_decay):
    """The reference ATENT update: all L iterates' forward graphs in one tape, one backward pass.

    The sampler is written out here from the paper's equations (the seeds follow the method's
    convention: split(seed) -> (start, noise), iterate l draws from fold_in(noise, l))."""
    a = method.attack
    start_seed, noise_seed = tf.unstack(rng.split(seed, 2))
    x_l = x + a.eps * tf.sign(rng.normal(start_seed, x))  # not clipped before the first gradient (StochAT)
    steps = a.steps
    with tf.GradientTape() as tape:
        total = tf.zeros([BATCH])
        for l in range(1, steps + 1):
            with tf.GradientTape() as inner:
                inner.watch(x_l)
                ce = losses.cross_entropy(model(x_l, training=False), y)
            g = inner.gradient(ce, x_l)
            x_l = x_l + a.step_size * tf.sign(g) + method.noise * np.sqrt(2 * a.step_size) * rng.normal(
                rng.fold_in(noise_seed, l), x_l)
            if method.projection == "every" or (method.projection == "last" and l == steps):
                x_l = x + tf.clip_by_value(x_l - x, -a.eps, a.eps)
            x_l = tf.stop_gradient(tf.clip_by_value(x_l, 0.0, 1.0))
            weight = method.alpha * (1 - method.alpha) ** (steps - l)
            total += weight * losses.cross_entropy(model(x_l, training=True), y)
        loss = tf.reduce_mean(total)
        loss += weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in model.trainable_variables])
    return total, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("projection", ["every", "last"])
def test_accumulated_gradients_equal_the_all_graphs_gradients(projection):
    attack = AttackConfig(eps=0.1, step_size=0.04, steps=3)
    method = build("atent", attack, dict(noise=0.3, projection=projection))
    model = tiny_model(0)
    rm = robust_model(method, model, weight_decay=0.01)
    x, y = batch(2)
    seed = tf.constant([11, 5], tf.int64)
    initial = model.get_weights()

    ref_total, ref_grads = all_graphs_gradients(method, model, seed, x, y, weight_decay=0.01)
    after_reference = model.get_weights()  # batch-norm statistics moved L times
    model.set_weights(initial)

    @tf.function
    def accumulated():
        ctx = StepContext(model, seed)
        out, grads, x_last = method.gradients(ctx, x, y, rm._differentiate)
        return vars(out), grads, x_last

    out, grads, x_last = accumulated()
    out = LossOutput(**out)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-5, atol=1e-5)
    assert max(float(tf.reduce_max(tf.abs(r))) for r in ref_grads) > 1e-3
    np.testing.assert_allclose(out.per_example.numpy(), ref_total.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.terms["atent_loss"].numpy(), ref_total.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        out.terms["last_ce"].numpy(),
        losses.cross_entropy(out.adv_logits, y).numpy(), rtol=1e-6)
    assert out.adv_logits.shape == (BATCH, CLASSES) and x_last.shape == x.shape
    for a, b in zip(model.get_weights(), after_reference):  # same batch-norm updates, same order
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_weight_decay_is_added_once():
    attack = AttackConfig(eps=0.1, step_size=0.04, steps=3)
    method = build("atent", attack, dict(noise=0.0))
    x, y = batch(3)
    grads = {}
    for wd in (0.0, 0.5):
        model = tiny_model(0, batch_norm=False)
        rm = robust_model(method, model, weight_decay=wd)
        ctx = StepContext(model, tf.constant([1, 2], tf.int64))
        grads[wd] = method.gradients(ctx, x, y, rm._differentiate)[1]
    for v, g0, g1 in zip(model.trainable_variables, grads[0.0], grads[0.5]):
        np.testing.assert_allclose(g1.numpy() - g0.numpy(), 0.5 * v.numpy(), rtol=1e-4, atol=1e-6)


def test_seeded_runs_repeat_and_the_seed_matters():
    attack = AttackConfig(eps=0.1, step_size=0.04, steps=2)
    method = build("atent", attack, dict(noise=0.2))
    x, y = batch(4)
    weights = []
    for seed in (3, 3, 4):
        model = tiny_model(0)
        rm = robust_model(method, model, seed=seed)
        rm.fit(tf.concat([x, x], 0), tf.concat([y, y], 0), batch_size=BATCH, epochs=1, shuffle=False,
               verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(weights[0], weights[1]):
        np.testing.assert_array_equal(a, b)
    assert not all(np.allclose(a, c) for a, c in zip(weights[0], weights[2]))


def _samples(norm, projection, eps, step, steps=4):
    method = build("atent", AttackConfig(eps=eps, step_size=step, steps=steps, norm=norm),
                   dict(noise=0.05, projection=projection, gamma=0.0))
    x, y = batch(5, 0.3, 0.7)  # away from the pixel bounds, so clipping does not project
    ctx = StepContext(tiny_model(0), tf.constant([9, 9], tf.int64))
    delta = (method.attack_inputs(ctx, x, y) - x).numpy().reshape(BATCH, -1)
    return np.abs(delta).max(axis=1) if norm == "linf" else np.sqrt((delta ** 2).sum(axis=1))


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.05, 0.03), ("l2", 0.3, 0.3)])
def test_samples_stay_in_the_ball_unless_projection_is_never(norm, eps, step):
    for projection in ("every", "last"):
        size = _samples(norm, projection, eps, step)
        assert (size <= eps * (1 + 1e-5)).all(), projection
        assert (size >= 0.5 * eps).all()  # and they move
    assert (_samples(norm, "never", eps, step) > eps * 1.5).any()


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError):
        build("atent", AttackConfig(), dict(projection="sometimes"))
    with pytest.raises(ValueError):
        build("atent", AttackConfig(), dict(start="uniform"))
    with pytest.raises(ValueError):
        build("atent", AttackConfig(steps=0))
    with pytest.raises(ValueError):
        build("atent", AttackConfig(), dict(alpha=0.0))
