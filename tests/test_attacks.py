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
