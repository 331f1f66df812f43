"""Tests for the TRADES, MART, MIMAE-AT and ATENT methods through `RobustModel`, on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from conftest import conv_model, script  # noqa: E402

from tfrobust import losses, methods  # noqa: E402
from tfrobust.errors import ConfigError
from tfrobust.methods import AttackConfig, StepContext, build  # noqa: E402
from tfrobust.robust_model import RobustModel  # noqa: E402

SHAPE = (6, 6, 1)
CLASSES = 3
BATCH = 12
ATTACK = AttackConfig(eps=0.1, step_size=0.04, steps=3)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(seed: int = 0) -> keras.Model:
    return conv_model(SHAPE, CLASSES, seed)


def batch(seed: int = 0):
    r = np.random.default_rng(seed)
    x = r.uniform(0.0, 1.0, size=(BATCH, *SHAPE)).astype(np.float32)
    y = (np.arange(BATCH) % CLASSES).astype(np.int32)
    return x, y


def test_registry_and_hyperparameters():
    assert {"trades", "mart", "mimae", "atent"} <= set(methods.REGISTRY)
    assert methods.hyperparameters("trades") == ("beta", "shared_target", "clip_start")
    assert methods.hyperparameters("mart") == ("beta", "clip_start")
    assert methods.hyperparameters("pgd_at") == ("clip_start",)
    assert methods.hyperparameters("mimae") == ("lambda_mi", "lambda_mae", "mi_symmetric", "natural_weight",
                                                "ramp_steps", "clip_start")
    assert methods.hyperparameters("atent") == ("noise", "gamma", "alpha", "projection", "start", "clip_start",
                                                "atent_tolerance", "atent_shared_forward")
    # each method's default is its reference's: TRADES, MART and ATENT do not clip the random start
    assert [build(n, ATTACK).clip_start for n in ("pgd_at", "trades", "mart", "mimae", "atent")] == [
        True, False, False, True, False]
    assert build("trades", ATTACK).shared_target is False
    method = build("trades", ATTACK, {"beta": 2.0})
    assert method.beta == 2.0 and method.attack == ATTACK
    with pytest.raises(ConfigError, match=r"no hyperparameter\(s\) \['betaa'\]"):  # a misspelled option
        build("trades", ATTACK, {"betaa": 1.0})
    with pytest.raises(ConfigError, match="beta must be >= 0"):
        build("trades", ATTACK, {"beta": -5.0})


def test_attacks_run_the_model_in_the_attack_configs_bn_mode():
    """`AttackConfig.bn_mode` alone decides the model's mode while attacking: the attack's logits
    are the model's in that mode, and PGD-AT's training attack differs between the two."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE)
    h = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(keras.layers.Flatten()(h)))
    x, y = batch(0)
    x = tf.constant(x + 0.5)  # batch statistics far from the initial moving ones
    ctx = StepContext(model, tf.constant([3, 4], tf.int64))
    x_adv = {}
    for mode in methods.BN_MODES:
        attack = AttackConfig(eps=0.1, step_size=0.04, steps=3, bn_mode=mode)
        np.testing.assert_allclose(ctx.attack_logits_fn(attack)(x).numpy(),
                                   model(x, training=mode == "train").numpy(), rtol=1e-5, atol=1e-6)
        x_adv[mode] = build("pgd_at", attack).attack_inputs(ctx, x, y).numpy()
    assert not np.allclose(model(x, training=True).numpy(), model(x, training=False).numpy(), atol=1e-2)
    assert not np.allclose(x_adv["train"], x_adv["eval"])
    with pytest.raises(ValueError, match="bn_mode"):
        AttackConfig(bn_mode="auto")


def test_attack_bn_mode_auto_takes_the_methods_reference_mode():
    from tfrobust import training

    def mode(method, flag):
        return training.attack_config(training.TrainConfig(method=method, attack_bn_mode=flag)).bn_mode

    assert {name: mode(name, "auto") for name in ("standard", "pgd_at", "trades", "mart", "mimae", "atent")} == {
        "standard": "eval", "pgd_at": "train", "trades": "eval", "mart": "eval", "mimae": "eval", "atent": "train"}
    assert mode("pgd_at", "eval") == "eval" and mode("trades", "train") == "train"


# (method, options, the total loss from the logged terms)
FIT_CASES = {
    "trades": ({"beta": 3.0}, lambda m: m["natural"] + 3.0 * m["robust"]),
    "mart": ({"beta": 4.0}, lambda m: m["boosted_ce"] + 4.0 * m["weighted_kl"]),
    "mimae": ({"lambda_mi": 2.0, "lambda_mae": 0.5, "natural_weight": 0.25},
              lambda m: m["adv_ce"] + 0.5 * m["mae"] + 0.25 * m["natural_ce"] - 2.0 * m["mi"]),
    "atent": ({"noise": 0.01}, lambda m: m["atent_loss"]),
}


@pytest.mark.parametrize("name", sorted(FIT_CASES))
def test_one_fit_step_reports_every_term(name):
    options, total = FIT_CASES[name]
    method = build(name, ATTACK, options)
    model = tiny_model()
    before = model.get_weights()
    rm = RobustModel(model, method, weight_decay=1e-3)
    rm.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = batch()
    history = rm.fit(x, y, batch_size=BATCH, epochs=1, verbose=0).history
    logged = {k: v[-1] for k, v in history.items()}
    for term in (*method.term_names, "loss", "clean_accuracy", "adv_accuracy"):
        assert term in logged and np.isfinite(logged[term]), (term, logged)
    assert logged["loss"] == pytest.approx(total(logged), rel=1e-5, abs=1e-6)
    assert rm.train_step_traces == 1
    assert not np.allclose(model.get_weights()[0], before[0])


def test_mimae_terms_are_what_they_say():
    method = build("mimae", ATTACK, {"lambda_mi": 1.0, "lambda_mae": 1.0, "natural_weight": 0.5})
    model = tiny_model()
    x, y = batch(1)
    ctx = StepContext(model, tf.constant([3, 4], tf.int64))
    x_adv = method.attack_inputs(ctx, x, y)
    out = method.loss(ctx, x, y, x_adv)
    z, za = model(x, training=True), model(x_adv, training=True)
    joint = losses.prediction_joint(tf.nn.softmax(z), tf.nn.softmax(za))
    np.testing.assert_allclose(out.terms["mi"].numpy(), losses.mutual_information(joint).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out.batch_loss.numpy(), -out.terms["mi"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(out.terms["mae"].numpy(), losses.logit_mae(z, za).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out.per_example.numpy(), (losses.cross_entropy(za, y) + losses.logit_mae(z, za)
                                                         + 0.5 * losses.cross_entropy(z, y)).numpy(), rtol=1e-5)
    assert np.abs(x_adv - x).max() <= ATTACK.eps + 1e-6


def test_mimae_ramp_scales_both_regularizers_by_the_step():
    method = build("mimae", ATTACK, {"lambda_mi": 2.0, "lambda_mae": 3.0, "natural_weight": 0.5, "ramp_steps": 4})
    model = tiny_model()
    x, y = batch(1)
    x_adv = method.attack_inputs(StepContext(model, tf.constant([3, 4], tf.int64)), x, y)
    for step, share in ((0, 0.25), (2, 0.75), (3, 1.0), (50, 1.0)):
        out = method.loss(StepContext(model, tf.constant([3, 4], tf.int64), step=tf.constant(step, tf.int64)),
                          x, y, x_adv)
        t = {k: v.numpy() for k, v in out.terms.items()}
        np.testing.assert_allclose(out.per_example.numpy(),
                                   t["adv_ce"] + share * 3.0 * t["mae"] + 0.5 * t["natural_ce"], rtol=1e-5)
        np.testing.assert_allclose(float(out.batch_loss), -share * 2.0 * t["mi"], rtol=1e-5)


def _mean_kl(model, x, x_adv):
    return float(tf.reduce_mean(losses.kl_divergence(model(x, training=False), model(x_adv, training=False))))


def test_trades_attack_increases_the_kl():
    method = build("trades", AttackConfig(eps=0.1, step_size=0.03, steps=5))
    model = tiny_model()
    x, y = batch(2)
    ctx = StepContext(model, tf.constant([5, 6], tf.int64))
    x_start = method.pgd(ctx, x, y, steps=0, start="normal")  # TRADES' start x + 0.001 N(0, I)
    x_adv = method.attack_inputs(ctx, x, y)
    assert 0 < np.abs(x_start - x).max() < 0.01
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
    start_kl, adv_kl = _mean_kl(model, x, x_start), _mean_kl(model, x, x_adv)
    assert adv_kl > 100 * start_kl and adv_kl > 1e-3, (start_kl, adv_kl)


def test_mart_attack_increases_the_cross_entropy():
    method = build("mart", AttackConfig(eps=0.1, step_size=0.03, steps=5))
    model = tiny_model()
    x, y = batch(3)
    x_adv = method.attack_inputs(StepContext(model, tf.constant([5, 6], tf.int64)), x, y)
    ce = lambda inputs: float(tf.reduce_mean(losses.cross_entropy(model(inputs, training=False), y)))  # noqa: E731
    assert ce(x_adv) > ce(x) + 0.05




def test_mimae_batch_mi_under_mirrored_strategy_equals_one_device():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, script("mimae_mirrored.py")], env=env, capture_output=True,
                          text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT"):])
    one, two, local = result["one"], result["two"], result["local"]
    assert one["mi"] == pytest.approx(two["mi"], rel=1e-5, abs=1e-6)
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5, abs=1e-6)
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)
    # Without the all-reduce each replica would use its own half-batch joint: visibly different.
    assert one["mi"] > 0.05, one["mi"]
    assert abs(local["mi"] - one["mi"]) > 1e-2
    assert not all(np.allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)
                   for a, b in zip(one["weights"], local["weights"]))
