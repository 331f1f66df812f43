"""Speed work (issue 13): ATENT's truncated average, the optional clean-accuracy monitor and
`RobustModel.fit` on arrays (autotuning off)."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from conftest import conv_model  # noqa: E402

from tfrobust import methods  # noqa: E402
from tfrobust.methods import AttackConfig, StepContext, build  # noqa: E402
from tfrobust.robust_model import RobustModel  # noqa: E402

SHAPE = (6, 6, 1)
CLASSES = 3
BATCH = 8


def tiny_model(seed: int = 0) -> keras.Model:
    return conv_model(SHAPE, CLASSES, seed)


def batch(seed: int = 0):
    r = np.random.default_rng(seed)
    x = r.uniform(0, 1, size=(BATCH, *SHAPE)).astype(np.float32)
    return tf.constant(x), tf.constant((np.arange(BATCH) % CLASSES).astype(np.int32))


def robust(method, model, **kwargs):
    rm = RobustModel(model, method, **kwargs)
    rm.compile(optimizer=keras.optimizers.SGD(0.1))
    return rm


# -- ATENT's truncated average --------------------------------------------------------------------

@pytest.mark.parametrize("alpha,steps,tolerance", [(0.9, 10, 5e-8), (0.9, 40, 5e-8), (0.9, 10, 1e-6),
                                                   (0.5, 6, 0.05), (0.9, 10, 0.0), (0.9, 3, 5e-8), (1.0, 5, 5e-8)])
def test_kept_iterates_is_the_smallest_k_whose_dropped_mass_is_within_the_tolerance(alpha, steps, tolerance):
    method = build("atent", AttackConfig(steps=steps), dict(alpha=alpha, atent_tolerance=tolerance))
    k = method.kept_iterates()
    dropped = lambda k: (1 - alpha) ** k - (1 - alpha) ** steps  # noqa: E731 (the closed form)
    if tolerance == 0:
        assert k == steps
        return
    assert dropped(k) <= tolerance + 1e-15 and sum(method.iterate_weights()[:steps - k]) == pytest.approx(
        dropped(k), abs=1e-15)
    assert k == 1 or dropped(k - 1) > tolerance
    if (alpha, tolerance) == (0.9, 1e-6):
        assert k == min(steps, 6)  # 0.1^6 = 1e-6
    if (alpha, tolerance) == (0.9, 5e-8):
        assert k == min(steps, 8)  # 0.1^8 = 1e-8 <= 5e-8 < 0.1^7


def recorded_gradients(method, model, x, y, seed):
    """Eagerly (tf.while_loop runs its body in Python): the update and each differentiate call's
    weighted gradient, in call order (the reference's two passes per iterate: one differentiate
    call per kept iterate)."""
    method = dataclasses.replace(method, atent_shared_forward=False)
    rm = robust(method, model)
    calls = []

    def recording(loss_fn, regularize):
        out, grads = rm._differentiate(loss_fn, regularize)
        calls.append([tf.convert_to_tensor(g).numpy() for g in grads])
        return out, grads

    _, grads, _ = method.gradients(StepContext(model, seed), x, y, recording)
    return [g.numpy() for g in grads], calls


def test_truncated_update_is_within_the_documented_bound_and_tolerance_0_is_the_full_sum():
    # alpha 0.5 so that the dropped iterates matter: weights 1/64, 1/32, 1/16, 1/8, 1/4, 1/2; at
    # tolerance 0.05 the first two (mass 3/64 = 0.5^4 - 0.5^6) are dropped.
    attack = AttackConfig(eps=0.1, step_size=0.04, steps=6, bn_mode="train")
    x, y = batch(1)
    seed = tf.constant([3, 4], tf.int64)
    full_method = build("atent", attack, dict(alpha=0.5, noise=0.1, atent_tolerance=0.0))
    cut_method = build("atent", attack, dict(alpha=0.5, noise=0.1, atent_tolerance=0.05))
    model = tiny_model(0)
    full, per_iterate = recorded_gradients(full_method, model, x, y, seed)
    cut, kept_calls = recorded_gradients(cut_method, model, x, y, seed)
    assert len(per_iterate) == 6 and len(kept_calls) == 4
    weights = full_method.iterate_weights()
    # Tolerance 0: every iterate, and the update is exactly their sum (same values, same order).
    for i, f in enumerate(full):
        np.testing.assert_array_equal(f, sum((c[i] for c in per_iterate), np.zeros_like(f)))
    # The kept iterates' gradients are the same as in the full run (the sampler is unchanged).
    for a, b in zip(kept_calls, per_iterate[2:]):
        for ga, gb in zip(a, b):
            np.testing.assert_array_equal(ga, gb)
    dropped = sum(weights[:2])
    assert dropped == pytest.approx(0.5 ** 4 - 0.5 ** 6) and dropped <= 0.05
    largest = max(max(np.abs(g).max() for g in c) / w for c, w in zip(per_iterate, weights))  # max_l |g_l|
    gap = max(np.abs(f - c).max() for f, c in zip(full, cut))
    assert 0 < gap <= dropped * largest * (1 + 1e-5)
    # the gap is exactly the dropped iterates' weighted gradients
    for i, (f, c) in enumerate(zip(full, cut)):
        np.testing.assert_allclose(f - c, per_iterate[0][i] + per_iterate[1][i], rtol=1e-4, atol=1e-7)


def test_default_tolerance_moves_the_update_by_less_than_float32_rounding():
    """alpha 0.9, L = 10: the default (5e-8) keeps 8 iterates and moves the update by less than the
    float32 rounding between two summation orders of the full sum; 1e-6 (6 iterates) by more."""
    attack = AttackConfig(eps=0.1, step_size=0.04, steps=10, bn_mode="train")
    x, y = batch(2)
    seed = tf.constant([5, 6], tf.int64)
    model = tiny_model(1)
    full, per_iterate = recorded_gradients(build("atent", attack, dict(atent_tolerance=0.0)), model, x, y, seed)
    cut, kept = recorded_gradients(build("atent", attack, dict()), model, x, y, seed)
    loose, kept_loose = recorded_gradients(build("atent", attack, dict(atent_tolerance=1e-6)), model, x, y, seed)
    assert len(kept) == 8 and len(kept_loose) == 6 and len(per_iterate) == 10
    # the same sum in the opposite order: float32 rounding of the full update
    reverse = [sum((c[i] for c in reversed(per_iterate)), np.zeros_like(f)) for i, f in enumerate(full)]
    rounding = max(np.abs(f - r).max() for f, r in zip(full, reverse))
    scale = max(np.abs(f).max() for f in full)
    gap = max(np.abs(f - c).max() for f, c in zip(full, cut))
    gap_loose = max(np.abs(f - c).max() for f, c in zip(full, loose))
    assert 0 < rounding < 1e-6 * scale
    # measured: gap 7.5e-9, rounding 3.0e-8, gap at 1e-6 2.1e-7 (largest update entry 0.25)
    assert gap < rounding < gap_loose


@pytest.mark.parametrize("tolerance,expected", [(5e-8, 8), (1e-3, 3), (0.0, 10)])
def test_truncation_cuts_the_executed_weight_gradients(tolerance, expected):
    method = build("atent", AttackConfig(eps=0.1, step_size=0.04, steps=10), dict(atent_tolerance=tolerance))
    model = tiny_model(0)
    rm = robust(method, model)
    count = tf.Variable(0)
    x, y = batch(3)

    def counting(loss_fn, regularize):
        def fn():
            count.assign_add(1)  # runs once per executed weight gradient (inside the while loops too)
            return loss_fn()
        return rm._differentiate(fn, regularize)

    step = tf.function(lambda: method.gradients(StepContext(model, tf.constant([1, 2], tf.int64)), x, y,
                                                counting)[1])
    step()
    assert int(count.numpy()) == expected
    step()
    assert int(count.numpy()) == 2 * expected


def test_tolerance_flag_is_validated():
    with pytest.raises(Exception, match="atent_tolerance"):
        build("atent", AttackConfig(steps=3), dict(atent_tolerance=-1.0))
    assert "atent_tolerance" in methods.hyperparameters("atent")


# -- the clean-accuracy monitor -------------------------------------------------------------------

class CountingModel(keras.Model):
    """The classifier, counting its executed calls on the clean batch in inference mode."""

    def __init__(self, inner, x):
        super().__init__()
        self.inner, self.x = inner, x
        self.clean_inference_calls = tf.Variable(0, trainable=False)
        self.clean_inference_images = tf.Variable(0, trainable=False)
        self.calls = tf.Variable(0, trainable=False)

    def call(self, inputs, training=False):
        self.calls.assign_add(1)
        if not training:  # the first n images of x, as the monitor takes them
            n = tf.shape(inputs)[0]
            same = tf.cast(tf.reduce_all(tf.equal(inputs, self.x[:n])), tf.int32)
            self.clean_inference_calls.assign_add(same)
            self.clean_inference_images.assign_add(same * n)
        return self.inner(inputs, training=training)


@pytest.mark.parametrize("method_name", ["pgd_at", "atent"])
def test_monitor_off_runs_no_clean_forward(method_name):
    x, y = batch(4)
    attack = AttackConfig(eps=0.1, step_size=0.04, steps=3)
    counts = {}
    for monitor in (True, False):
        model = CountingModel(tiny_model(0), x)
        rm = robust(build(method_name, attack), model, monitor_clean=monitor)
        logs = tf.function(rm.train_step)((x, y))
        counts[monitor] = (int(model.clean_inference_calls.numpy()), int(model.calls.numpy()))
        assert ("clean_accuracy" in logs) == monitor and "adv_accuracy" in logs
    assert counts[True][0] == 1 and counts[False][0] == 0  # the one inference pass on x
    assert counts[True][1] == counts[False][1] + 1


@pytest.mark.parametrize("fraction,images", [(None, 1), (0.5, 4), (1.0, 8)])
def test_the_monitor_runs_on_the_first_fraction_of_the_batch(fraction, images):
    """Default 1/8: ceil(8 / 8) = 1 image; the logged clean accuracy is the (updated) model's on
    exactly those."""
    x, y = batch(6)
    model = CountingModel(tiny_model(0), x)
    kwargs = {} if fraction is None else dict(monitor_clean_fraction=fraction)
    rm = robust(build("pgd_at", AttackConfig(eps=0.1, step_size=0.04, steps=2)), model, **kwargs)
    logs = tf.function(rm.train_step)((x, y))
    assert int(model.clean_inference_calls.numpy()) == 1 and int(model.clean_inference_images.numpy()) == images
    predicted = np.argmax(model.inner(x[:images], training=False).numpy(), axis=1)
    assert float(logs["clean_accuracy"]) == pytest.approx(np.mean(predicted == y.numpy()[:images]))


def test_the_monitor_fraction_is_checked():
    with pytest.raises(ValueError, match="monitor_clean_fraction"):
        robust(build("pgd_at", AttackConfig(steps=1)), tiny_model(0), monitor_clean_fraction=0.0)


def test_methods_that_see_x_report_clean_accuracy_without_the_extra_pass():
    x, y = batch(5)
    model = CountingModel(tiny_model(0), x)
    rm = robust(build("trades", AttackConfig(eps=0.1, step_size=0.04, steps=2)), model, monitor_clean=False)
    logs = tf.function(rm.train_step)((x, y))
    assert "clean_accuracy" in logs


def test_monitor_clean_is_a_training_setting():
    from tfrobust import config

    assert config.TrainConfig().monitor_clean is True
    assert "monitor_clean" in {s.name for s in config.SPECS if s.flag}


# -- RobustModel.fit on arrays --------------------------------------------------------------------

def test_fit_on_arrays_goes_through_a_pipeline_with_autotune_off(monkeypatch):
    from tfrobust import data

    made = []
    original = data.array_batches

    def spy(*args, **kwargs):
        dataset = original(*args, **kwargs)
        made.append(dataset)
        return dataset

    monkeypatch.setattr(data, "array_batches", spy)
    r = np.random.default_rng(0)
    x = r.uniform(0, 1, size=(50, *SHAPE)).astype(np.float32)
    y = (np.arange(50) % CLASSES).astype(np.int32)
    rm = robust(build("pgd_at", AttackConfig(eps=0.1, step_size=0.04, steps=1)), tiny_model(0))
    seen = []

    class Batches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    history = rm.fit(x, y, batch_size=16, epochs=2, validation_split=0.2, verbose=0, callbacks=[Batches()])
    # 40 training examples in batches of 16, the last partial (Keras semantics): 3 steps an epoch
    assert len(seen) == 6 and len(history.history["loss"]) == 2 and "val_adv_accuracy" in history.history
    assert len(made) == 2 and all(not d.options().autotune.enabled for d in made)
    train, val = made[1], made[0]
    assert [int(b[0].shape[0]) for b in train] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in val]), y[40:])  # the last 20%
    order = [np.concatenate([b[1].numpy() for b in train]) for _ in range(2)]
    assert sorted(order[0]) == sorted(y[:40]) and not np.array_equal(order[0], y[:40])  # shuffled


def test_fit_on_a_dataset_is_keras_fit_unchanged(monkeypatch):
    from tfrobust import data

    monkeypatch.setattr(data, "array_batches", lambda *a, **k: pytest.fail("arrays path taken"))
    x, y = batch(6)
    rm = robust(build("standard", AttackConfig(steps=0)), tiny_model(0))
    history = rm.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1


# -- ATENT's shared forward pass ------------------------------------------------------------------

def bn_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(h))
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(keras.layers.Flatten()(h)))


def one_update(method, model, rm, seed, x, y):
    """(per-example loss, weight gradients, last iterate) of one compiled ATENT update."""
    @tf.function
    def step():
        out, grads, x_last = method.gradients(StepContext(model, seed), x, y, rm._differentiate)
        return out.per_example, grads, x_last
    return step()


@pytest.mark.parametrize("projection,tolerance,norm", [("every", 0.0, "linf"), ("last", 0.0, "linf"),
                                                      ("every", 1e-3, "linf"), ("every", 0.0, "l2"),
                                                      ("last", 0.5, "linf")])
def test_shared_forward_gives_the_same_update_without_dropout(projection, tolerance, norm):
    """Without dropout the shared pass computes the same function: the same iterates and update
    (batch norm in train mode normalizes by the batch either way)."""
    attack = AttackConfig(eps=0.1 if norm == "linf" else 0.5, step_size=0.04, steps=5, norm=norm, bn_mode="train")
    x, y = batch(7)
    seed = tf.constant([8, 9], tf.int64)
    got = {}
    for shared in (False, True):
        method = build("atent", attack, dict(noise=0.1, gamma=0.05 if norm == "l2" else 0.0, projection=projection,
                                             atent_tolerance=tolerance, atent_shared_forward=shared))
        model = bn_model(0)
        rm = robust(method, model)
        loss, grads, x_last = one_update(method, model, rm, seed, x, y)
        got[shared] = (loss.numpy(), [g.numpy() for g in grads], x_last.numpy())
    np.testing.assert_allclose(got[True][2], got[False][2], atol=1e-6)
    for a, b in zip(got[True][1], got[False][1]):  # (the conv bias before batch norm has a zero gradient:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # rounding noise of 1e-6 there)
    np.testing.assert_allclose(got[True][0], got[False][0], rtol=1e-5)


@pytest.mark.parametrize("tolerance,kept", [(0.0, 10), (5e-8, 8), (1e-3, 3)])
def test_shared_forward_runs_one_pass_per_iterate(tolerance, kept):
    x, y = batch(8)
    calls = {}
    for shared in (False, True):
        method = build("atent", AttackConfig(eps=0.1, step_size=0.04, steps=10, bn_mode="train"),
                       dict(atent_tolerance=tolerance, atent_shared_forward=shared))
        model = CountingModel(tiny_model(0), x)
        rm = robust(method, model, monitor_clean=False)
        tf.function(rm.train_step)((x, y))
        calls[shared] = int(model.calls.numpy())
    assert calls[False] == 10 + kept  # L input gradients, k weight gradients
    assert calls[True] == 10 + 1  # L passes (k - 1 of them shared), and the last iterate's


def test_shared_forward_needs_the_attack_in_train_mode():
    with pytest.raises(ValueError, match="atent_shared_forward"):
        build("atent", AttackConfig(steps=3, bn_mode="eval"), dict(atent_shared_forward=True))


# -- the unrolled training attack -----------------------------------------------------------------

@pytest.mark.parametrize("norm,start", [("linf", "uniform"), ("l2", "normal")])
def test_unrolled_pgd_is_the_while_loop_pgd(norm, start):
    from tfrobust.attacks import pgd

    model = tiny_model(2)
    x, y = batch(9)
    kwargs = dict(eps=0.1 if norm == "linf" else 0.5, step_size=0.03, steps=4, norm=norm, start=start,
                  seed=tf.constant([4, 5], tf.int64))
    logits = lambda t: model(t, training=False)  # noqa: E731
    looped = tf.function(lambda: pgd.pgd(logits, x, y, **kwargs))()
    unrolled = tf.function(lambda: pgd.pgd(logits, x, y, unroll=True, **kwargs))()
    np.testing.assert_allclose(unrolled.numpy(), looped.numpy(), atol=1e-6)
    assert np.abs(unrolled.numpy() - x.numpy()).max() > 0.01
    graph = tf.function(lambda: pgd.pgd(logits, x, y, unroll=True, **kwargs)).get_concrete_function().graph
    assert not any(op.type in ("While", "StatelessWhile") for op in graph.get_operations())
