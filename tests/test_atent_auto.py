"""ATENT's automatic choices (issue 21): one shared pass per iterate on a deterministic training
forward, and a truncation tolerance that follows the compute dtype. Both leave the reference's
update (the two-pass, every-iterate sum) unchanged to float rounding, batch norm's moving
statistics included."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrobust import models, precision  # noqa: E402
from tfrobust.methods import AttackConfig, build  # noqa: E402
from tfrobust.methods.atent import FLOAT32_TOLERANCE, auto_tolerance  # noqa: E402
from tfrobust.models import forward  # noqa: E402
from tfrobust.robust_model import RobustModel  # noqa: E402

SHAPE, CLASSES, BATCH = (8, 8, 1), 3, 6


def bn_model(seed: int) -> keras.Model:
    """Conv, batch norm, conv, batch norm, dense: deterministic in training mode."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.Activation("relu")(keras.layers.BatchNormalization(momentum=0.9)(h))
    h = keras.layers.Conv2D(4, 3, strides=2)(h)
    h = keras.layers.Activation("relu")(keras.layers.BatchNormalization(momentum=0.9)(h))
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(keras.layers.Flatten()(h)))


def one_step(options: dict, steps: int, weights: list[np.ndarray]) -> list[np.ndarray]:
    """The model's weights and moving statistics after one compiled RobustModel.train_step."""
    model = bn_model(0)
    model.set_weights(weights)
    attack = AttackConfig(eps=0.1, step_size=0.04, steps=steps, bn_mode="train")
    rm = RobustModel(model, build("atent", attack, dict(noise=0.1, **options)), seed=3, monitor_clean=False)
    rm.compile(optimizer=keras.optimizers.SGD(0.5))
    r = np.random.default_rng(1)
    x = tf.constant(r.uniform(0, 1, size=(BATCH, *SHAPE)), keras.config.floatx())
    y = tf.constant(np.arange(BATCH) % CLASSES, tf.int32)
    tf.function(rm.train_step)((x, y))
    return [w.copy() for w in model.get_weights()]


@pytest.mark.parametrize("steps", [3, 20])
def test_the_default_float64_step_is_the_reference_step(steps):
    """The default (shared pass on this dropout-free model, float64 tolerance) against the
    reference's form (two passes, every iterate): weights and moving statistics to 1e-12. At
    L = 20 the default also truncates (17 of 20 iterates kept)."""
    with precision.floatx("float64"):
        weights = bn_model(0).get_weights()
        method = build("atent", AttackConfig(steps=steps, bn_mode="train"), {})
        assert method.shares_forward(bn_model(0))
        assert method.kept_iterates("float64") == (17 if steps == 20 else steps)
        default = one_step({}, steps, weights)
        reference = one_step(dict(atent_tolerance=0.0, atent_shared_forward=False), steps, weights)
        moved = max(np.abs(d - w).max() for d, w in zip(default, weights))
        assert moved > 1e-3  # the step moved the weights and the statistics
        for d, r in zip(default, reference):
            np.testing.assert_allclose(d, r, rtol=0, atol=1e-12)


def test_the_float32_default_truncates_and_keeps_batch_norm_statistics_close():
    """float32, L = 20: the default keeps 8 iterates and shares the pass; the weights and moving
    statistics stay within float32 rounding of the reference form's."""
    weights = bn_model(0).get_weights()
    default = one_step({}, 20, weights)
    reference = one_step(dict(atent_tolerance=0.0, atent_shared_forward=False), 20, weights)
    for d, r in zip(default, reference):
        np.testing.assert_allclose(d, r, rtol=1e-4, atol=1e-5)


def test_one_pass_counted_twice_is_two_passes():
    """`batch_norm_updates(model, 2)`: one training pass moves the statistics as two passes over the
    same batch do, and the momentum comes back afterwards. Counted once (what skipping the
    truncated iterates' loss passes did), the moving mean lands far from the two passes'."""
    with precision.floatx("float64"):
        model = bn_model(0)
        bn = forward.batch_norms(model)[0]
        x = tf.constant(np.random.default_rng(2).uniform(0, 1, size=(BATCH, *SHAPE)))
        start = bn.moving_mean.numpy().copy()
        model(x, training=True)
        model(x, training=True)
        twice = bn.moving_mean.numpy().copy()
        bn.moving_mean.assign(start)
        with forward.batch_norm_updates(model, 2):
            model(x, training=True)
        np.testing.assert_allclose(bn.moving_mean.numpy(), twice, rtol=0, atol=1e-15)
        assert bn.momentum == 0.9  # restored
        bn.moving_mean.assign(start)
        model(x, training=True)
        assert np.abs(bn.moving_mean.numpy() - twice).max() > 1e-3


def test_tolerance_follows_the_compute_dtype():
    assert auto_tolerance("float32") == FLOAT32_TOLERANCE
    assert auto_tolerance(tf.float64) == pytest.approx(5e-8 * 2.0 ** -29)  # 9.3e-17
    method = build("atent", AttackConfig(steps=40), {})
    assert method.atent_tolerance is None
    assert method.kept_iterates("float32") == 8 and method.kept_iterates("float64") == 17  # 0.1^17 <= 9.3e-17
    assert build("atent", AttackConfig(steps=40), dict(atent_tolerance=1e-3)).kept_iterates("float64") == 3
    with precision.floatx("float64"):
        assert method.kept_iterates() == 17


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_auto_shares_the_pass_on_every_architecture_without_dropout(name):
    shape = (28, 28, 1) if name in ("tiny_cnn", "small_cnn", "lenet5") else (32, 32, 3)
    if name == "tiny_cnn":
        shape = (8, 8, 1)
    options = dict(depth=10, width=1) if name == "wide_resnet" else {}
    model = models.build_model(name, shape, 10, **options)
    random = forward.stochastic_layers(model)
    assert bool(random) == (name == "small_cnn"), random  # SmallCNN (TRADES) has dropout; none of the others
    train = build("atent", AttackConfig(steps=3, bn_mode="train"), {})
    assert train.shares_forward(model) == (name != "small_cnn")
    # an attack in eval mode never shares (the shared pass is the training loss's), nor does a forced false
    assert not build("atent", AttackConfig(steps=3, bn_mode="eval"), {}).shares_forward(model)
    assert not build("atent", AttackConfig(steps=3, bn_mode="train"), dict(atent_shared_forward=False)).shares_forward(
        model)


def test_every_random_layer_is_seen_and_rate_zero_is_not():
    inputs = keras.Input((4,))
    h = inputs
    for layer in (keras.layers.GaussianNoise(0.1, name="noise"), keras.layers.GaussianDropout(0.1, name="gdrop"),
                  keras.layers.AlphaDropout(0.1, name="adrop"), keras.layers.Dropout(0.0, name="off")):
        h = layer(h)
    inner = keras.Model(inputs, h, name="inner")
    outer_in = keras.Input((4,))
    outer = keras.Model(outer_in, keras.layers.Dense(2)(inner(outer_in)))
    assert sorted(forward.stochastic_layers(outer)) == ["adrop", "gdrop", "noise"]  # nested model seen
    assert forward.stochastic_layers(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])) == []
