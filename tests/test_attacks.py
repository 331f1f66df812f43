"""PGD and FGSM: threat-model constraints, strength ordering, traceability, seeding."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import batch

from tfrobust import losses
from tfrobust.attacks import ball, gradients, pgd


def _logits_fn(model):
    return lambda z: model(z, training=False)


def _ce(model, x, y):
    return float(tf.reduce_mean(losses.cross_entropy(model(x, training=False), y)))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
@pytest.mark.parametrize("start", ["uniform", "normal", "corner", "none"])
def test_pgd_stays_in_ball_and_box(tiny_classifier, digits, norm, eps, start):
    x, y = batch(digits)
    x_adv = pgd.pgd(_logits_fn(tiny_classifier), x, y, eps=eps, step_size=eps / 3, steps=5,
                    norm=norm, start=start, seed=1).numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= eps + 1e-5
    assert size.max() > eps / 2  # it actually moved


def test_per_example_eps(tiny_classifier, digits):
    x, y = batch(digits, 8)
    eps = tf.constant(np.linspace(0.0, 0.2, 8), tf.float32)
    x_adv = pgd.pgd(_logits_fn(tiny_classifier), x, y, eps=eps, step_size=0.05, steps=3, seed=0).numpy()
    size = np.abs(x_adv - x).reshape(8, -1).max(1)
    assert np.all(size <= eps.numpy() + 1e-6)
    assert size[0] == 0.0


def test_pgd_beats_fgsm_and_more_steps_never_hurt(tiny_classifier, digits):
    x, y = batch(digits, 64)
    fn = _logits_fn(tiny_classifier)
    clean = _ce(tiny_classifier, x, y)
    fgsm_ce = _ce(tiny_classifier, pgd.fgsm(fn, x, y, eps=0.1), y)
    pgd_ce = {k: _ce(tiny_classifier, pgd.pgd(fn, x, y, eps=0.1, step_size=0.025, steps=k, seed=3,
                                              keep_best=True), y) for k in (5, 10, 20)}
    assert clean < fgsm_ce < pgd_ce[10]
    # Same seed: the longer run's trajectory extends the shorter one, and the best iterate is kept.
    assert pgd_ce[5] <= pgd_ce[10] + 1e-6 <= pgd_ce[20] + 2e-6


def test_fgsm_is_a_full_sign_step(tiny_classifier, digits):
    x, y = batch(digits, 16)
    x_adv = pgd.fgsm(_logits_fn(tiny_classifier), x, y, eps=0.05).numpy()
    moved = np.abs(x_adv - x)
    inside = (x > 0.05) & (x < 0.95)  # pixels the box does not clip
    # Every unclipped pixel with a non-zero gradient moves by exactly eps (ReLU can zero a few).
    assert np.all(np.isclose(moved[inside], 0.05, atol=1e-6) | (moved[inside] == 0))
    assert np.mean(np.isclose(moved[inside], 0.05, atol=1e-6)) > 0.9


@pytest.mark.parametrize("jit", [False, True])
def test_traceable_with_tensor_eps(tiny_classifier, digits, jit):
    x, y = batch(digits, 16)
    fn = _logits_fn(tiny_classifier)

    @tf.function(jit_compile=jit)
    def attack(x, y, eps, steps):
        return pgd.pgd(fn, x, y, eps=eps, step_size=eps / 4, steps=steps, seed=tf.constant([1, 2]))

    a = attack(x, y, tf.constant(0.1), tf.constant(5)).numpy()
    b = attack(x, y, tf.constant(0.05), tf.constant(3)).numpy()
    assert attack.experimental_get_tracing_count() == 1
    assert np.abs(a - x).max() <= 0.1 + 1e-6 and np.abs(b - x).max() <= 0.05 + 1e-6


def test_seeded_attacks_repeat(tiny_classifier, digits):
    x, y = batch(digits, 16)
    fn = _logits_fn(tiny_classifier)
    run = lambda s: pgd.pgd(fn, x, y, eps=0.1, step_size=0.02, steps=3, seed=s).numpy()  # noqa: E731
    assert np.array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


def test_bad_norm_is_rejected(tiny_classifier, digits):
    x, y = batch(digits, 2)
    with pytest.raises(ValueError, match="unknown norm"):
        pgd.pgd(_logits_fn(tiny_classifier), x, y, eps=0.1, step_size=0.1, steps=1, norm="l1")


def test_l2_projection_matches_closed_form():
    x = tf.zeros([2, 2, 2, 1])
    x_adv = tf.constant(np.full([2, 2, 2, 1], 3.0, np.float32))
    projected = ball.project(x_adv, x, tf.constant(1.5), "l2").numpy()
    assert np.allclose(np.linalg.norm(projected.reshape(2, -1), axis=1), 1.5, atol=1e-5)


def test_input_gradient_rescale_keeps_each_examples_direction(digits_cnn, digits):
    # digits_cnn has no batch norm, so the examples are independent and a per-example rescale
    # must give exactly the same direction as the plain float32 gradient.
    x, y = batch(digits, 64)
    x = tf.constant(x)
    plain, loss, _ = gradients.input_gradient(_logits_fn(digits_cnn), losses.cross_entropy, x, y, rescale=False)
    scaled, loss_scaled, _ = gradients.input_gradient(_logits_fn(digits_cnn), losses.cross_entropy, x, y,
                                                     rescale=True)
    np.testing.assert_allclose(loss.numpy(), loss_scaled.numpy())
    plain, scaled = plain.numpy().reshape(64, -1), scaled.numpy().reshape(64, -1)
    ratio = np.linalg.norm(scaled, axis=1) / np.linalg.norm(plain, axis=1)
    np.testing.assert_allclose(scaled, plain * ratio[:, None], rtol=1e-4, atol=1e-7 * np.abs(scaled).max())
    assert ratio.min() > 1.0  # the logit gradient's largest entry is below 1, so every row grows


# -- the l-inf path in the references' float32 arithmetic (issue 22) ---------------------------

EPS32, STEP32, STEPS32 = 0.3, 0.02, 20  # the MNIST protocol's training attack


def _official_inputs(seed=0, batch=16):
    """MNIST-like float32 images (k / 255, half of them 0, some 1), TRADES' start noise N(0, I) and
    one gradient-sign tensor per step ({-1, 0, 1}; ReLU networks give exact zeros too)."""
    r = np.random.default_rng(seed)
    x = (r.integers(0, 256, size=(batch, 28, 28, 1)) / 255).astype(np.float32)
    x[r.uniform(size=x.shape) < 0.5] = 0.0
    x[r.uniform(size=x.shape) < 0.05] = 1.0
    noise = r.standard_normal(size=x.shape).astype(np.float32)
    signs = r.choice(np.array([-1.0, 0.0, 1.0], np.float32), p=[0.45, 0.1, 0.45], size=(STEPS32, *x.shape))
    return x, noise, signs


def _official_linf_path(x, start, signs, eps, step):
    """The iterates of TRADES `trades.py` and MART `mart.py` (l_inf) given each step's gradient sign,
    in float32 as PyTorch computes them (a Python float meets a float32 tensor as float32):

        x_adv = x_adv + step_size * sign(grad)
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    """
    eps, step, zero, one = np.float32(eps), np.float32(step), np.float32(0), np.float32(1)
    x_adv, path = start, []
    for sign in signs:
        x_adv = x_adv + step * sign
        x_adv = np.clip(np.minimum(np.maximum(x_adv, x - eps), x + eps), zero, one)
        path.append(x_adv)
    return path


def _signs_fed_pgd(x, noise, signs, monkeypatch, steps=STEPS32):
    """tfrobust's PGD in float32 from TRADES' start x + 0.001 N(0, I) (not clipped), whose input
    gradient at step t is signs[t]: the objective is the linear sum(x' * signs[t])."""
    monkeypatch.setattr(pgd.rng, "normal", lambda seed, like: tf.constant(noise))
    calls = iter(range(steps))
    flat = signs.reshape(len(signs), len(x), -1)

    def objective(logits, y):
        return tf.reduce_sum(logits * flat[next(calls)], axis=-1)

    return pgd.pgd(lambda v: tf.reshape(v, [len(x), -1]), x, np.zeros(len(x), np.int32), eps=EPS32,
                   step_size=STEP32, steps=steps, start="normal", clip_start=False, objective=objective,
                   unroll=True).numpy()


def test_float32_pgd_on_the_official_signs_is_the_official_path_bit_for_bit(monkeypatch):
    """Fails with the projection x + clip(x' - x, -eps, eps): one rounding apart in a fraction of the
    components of every step, and the path drifts from there."""
    x, noise, signs = _official_inputs()
    start = x + np.float32(0.001) * noise
    official = _official_linf_path(x, start, signs, EPS32, STEP32)
    for steps in (1, STEPS32):
        ours = _signs_fed_pgd(x, noise, signs[:steps], monkeypatch, steps)
        assert ours.dtype == np.float32
        differ = int((ours != official[steps - 1]).sum())
        assert differ == 0, f"after {steps} step(s) {differ} of {ours.size} components differ from the official path"


def test_the_delta_form_would_round_differently():
    """The control: the other form of the same projection differs from the references' in float32 on
    these inputs, so the test above can tell them apart."""
    x, noise, signs = _official_inputs()
    moved = x + np.float32(0.001) * noise + np.float32(STEP32) * signs[0]
    eps = np.float32(EPS32)
    delta_form = x + np.clip(moved - x, -eps, eps)
    reference = np.minimum(np.maximum(moved, x - eps), x + eps)
    assert (delta_form != reference).mean() > 1e-3


def test_the_official_path_is_what_pytorch_computes():
    """The NumPy stand-in above equals trades.py's own PyTorch arithmetic (skipped without torch)."""
    torch = pytest.importorskip("torch")
    x, noise, signs = _official_inputs(seed=1)
    x_natural = torch.from_numpy(x)
    x_adv = x_natural + 0.001 * torch.from_numpy(noise)
    np.testing.assert_array_equal(x_adv.numpy(), x + np.float32(0.001) * noise)
    official = _official_linf_path(x, x_adv.numpy(), signs, EPS32, STEP32)
    epsilon, step_size = EPS32, STEP32
    for t, sign in enumerate(signs):
        x_adv = x_adv + step_size * torch.from_numpy(sign)
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
        np.testing.assert_array_equal(x_adv.numpy(), official[t])
