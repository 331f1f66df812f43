"""RobustModel: one trace per run, loss scaling, weight decay, eval mode, and PGD-AT vs standard."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import batch

from tfrobust import data, losses, methods, models
from tfrobust.robust_model import RobustModel

ATTACK = methods.AttackConfig(eps=0.1, step_size=0.025, steps=10)


def _fit(splits, method, epochs, seed=0, jit=False, weight_decay=0.0):
    keras.utils.set_random_seed(seed)
    classifier = models.build_model("tiny_cnn", splits.image_shape, splits.num_classes)
    model = RobustModel(classifier, methods.build(method, ATTACK), weight_decay=weight_decay, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), jit_compile=jit)
    steps = data.steps_per_epoch(len(splits.x_train), 64)
    stream = data.train_stream(splits.x_train, splits.y_train, batch_size=64, seed=seed)
    model.fit(stream, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False)
    return model


@pytest.fixture(scope="module")
def trained(digits):
    return {m: _fit(digits, m, epochs=12) for m in ("standard", "pgd_at")}


def test_pgd_at_is_clearly_more_robust_than_standard(trained, digits):
    test = data.eval_dataset(digits.x_test, digits.y_test, batch_size=120)
    scores = {m: model.evaluate(test, verbose=0, return_dict=True) for m, model in trained.items()}
    # Measured (12 epochs, eps 0.1, PGD-20): standard about 0.93 clean / 0.55 PGD, pgd_at about 0.93 / 0.78.
    assert scores["standard"]["clean_accuracy"] > 0.85 and scores["pgd_at"]["clean_accuracy"] > 0.85
    assert scores["pgd_at"]["adv_accuracy"] > scores["standard"]["adv_accuracy"] + 0.10
    assert scores["standard"]["adv_accuracy"] < scores["standard"]["clean_accuracy"] - 0.15


@pytest.mark.parametrize("jit", [False, True])
def test_train_step_traced_once_per_run(digits, jit):
    model = _fit(digits, "pgd_at", epochs=2, jit=jit)
    assert model.train_step_traces == 1


def test_metrics_name_each_term(trained):
    names = {m.name for m in trained["pgd_at"].metrics}
    assert {"loss", "adv_ce", "clean_accuracy", "adv_accuracy"} <= names


def _one_step_weights(classifier, method, x, y, weight_decay):
    model = RobustModel(classifier, methods.build(method, methods.AttackConfig(eps=0.0, steps=0)),
                        weight_decay=weight_decay)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.train_on_batch(x, y)
    return [v.numpy() for v in classifier.trainable_variables]


def test_update_is_mean_gradient_plus_coupled_weight_decay(digits):
    x, y = np.asarray(digits.x_train[:16], np.float32), digits.y_train[:16].astype(np.int32)
    keras.utils.set_random_seed(1)
    classifier = models.build_model("tiny_cnn", digits.image_shape, digits.num_classes)
    start = [v.numpy() for v in classifier.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(losses.cross_entropy(classifier(x, training=True), y))
    grads = tape.gradient(loss, classifier.trainable_variables)
    expected = [w - 0.5 * (g.numpy() + 0.01 * w) for w, g in zip(start, grads)]
    got = _one_step_weights(classifier, "standard", x, y, weight_decay=0.01)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


def test_evaluation_runs_in_inference_mode(digits):
    """evaluate() must neither update batch-norm statistics nor apply dropout."""
    keras.utils.set_random_seed(0)
    classifier = models.build_model("resnet18", (8, 8, 1), 10) if False else models.build_model(
        "small_cnn", (28, 28, 1), 10)
    x = np.random.default_rng(0).random((8, 28, 28, 1), np.float32)
    y = np.arange(8, dtype=np.int32)
    model = RobustModel(classifier, methods.build("pgd_at", ATTACK))
    model.compile(optimizer="sgd")
    before = [v.numpy() for v in classifier.variables]
    a = model.evaluate(x, y, verbose=0, return_dict=True)
    b = model.evaluate(x, y, verbose=0, return_dict=True)
    assert a == b  # dropout would make these differ
    for v0, v1 in zip(before, classifier.variables):
        np.testing.assert_array_equal(v0, v1.numpy())


def test_eps_warmup_ramps_linearly_with_the_optimizer_step(digits):
    classifier = models.build_model("tiny_cnn", digits.image_shape, digits.num_classes)
    model = RobustModel(classifier, methods.build("pgd_at", ATTACK), eps_warmup_steps=4)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    scales = []
    for step in range(6):
        model.optimizer.iterations.assign(step)
        scales.append(float(model.budget_scale()))
    assert scales == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert RobustModel(classifier, methods.build("pgd_at", ATTACK)).budget_scale() == 1.0
    with pytest.raises(ValueError, match="eps_warmup_steps"):
        RobustModel(classifier, methods.build("pgd_at", ATTACK), eps_warmup_steps=-1)


@pytest.mark.parametrize("method", ["pgd_at", "trades", "mart", "mimae", "atent"])
def test_budget_scale_shrinks_every_methods_training_attack(digits, method):
    from tfrobust.methods.base import StepContext
    classifier = models.build_model("tiny_cnn", digits.image_shape, digits.num_classes, seed=0)
    x = tf.constant(digits.x_train[:32], tf.float32)
    y = tf.constant(digits.y_train[:32], tf.int32)
    m = methods.build(method, ATTACK)
    ctx = StepContext(classifier, tf.constant([3, 4], tf.int64), budget_scale=tf.constant(0.5))
    size = np.abs(m.attack_inputs(ctx, x, y).numpy() - x.numpy()).reshape(32, -1).max(axis=1)
    assert size.max() <= 0.05 + 1e-6 and size.max() > 0.025


def _small_trained(splits, method="trades", options=None, steps=3):
    keras.utils.set_random_seed(0)
    classifier = models.build_model("tiny_cnn", splits.image_shape, splits.num_classes, mean=splits.mean,
                                    std=splits.std)
    attack = methods.AttackConfig(eps=0.1, step_size=0.05, steps=2, norm="linf", bn_mode="train")
    model = RobustModel(classifier, methods.build(method, attack, options), weight_decay=5e-4, seed=7,
                        eps_warmup_steps=10)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    stream = data.train_stream(splits.x_train, splits.y_train, batch_size=32, seed=0)
    model.fit(stream, epochs=1, steps_per_epoch=steps, verbose=0)
    return model


@pytest.mark.parametrize("method, options",
                         [("trades", {"beta": 2.5}), ("atent", {"noise": 1e-3, "projection": "last"})])
def test_keras_save_and_load_model_round_trip(tmp_path, digits, method, options):
    model = _small_trained(digits, method, options)
    path = str(tmp_path / "robust.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, RobustModel)
    assert loaded.method == model.method  # the frozen dataclass: name, hyperparameters and attack
    assert loaded.eval_attack == model.eval_attack
    assert (loaded.weight_decay, loaded.seed, loaded.eps_warmup_steps) == (5e-4, 7, 10)
    x, _ = batch(digits)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    # The optimizer comes back with its step and momentum, so training can go on.
    assert int(loaded.optimizer.iterations.numpy()) == 3
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_method_config_refuses_an_unknown_hyperparameter(digits):
    from tfrobust.robust_model import method_config, method_from_config

    config = method_config(methods.build("mart", ATTACK, {"beta": 3.0}))
    options = {"beta": 3.0, "clip_start": False}
    assert config == {"name": "mart", "options": options, "attack": dataclasses.asdict(ATTACK)}
    assert method_from_config(config) == methods.build("mart", ATTACK, {"beta": 3.0})
    with pytest.raises(ValueError, match="no hyperparameter"):
        method_from_config({**config, "options": {"lambda_mi": 1.0}})


def test_save_weights_after_fit_and_load_into_a_fresh_model(tmp_path, digits):
    model = _small_trained(digits)
    assert model.built
    path = str(tmp_path / "robust.weights.h5")
    model.save_weights(path)
    fresh = RobustModel(models.build_model("tiny_cnn", digits.image_shape, digits.num_classes, mean=digits.mean,
                                           std=digits.std), model.method)
    fresh.load_weights(path)
    x, _ = batch(digits)
    np.testing.assert_array_equal(fresh(x).numpy(), model(x).numpy())
