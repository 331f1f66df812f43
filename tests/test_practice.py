"""Robust-training practice (issue 11): the best-robust checkpoint and early stopping, the
catastrophic-overfitting report, weight averaging (EMA) and its exact resume, the single-step
methods fgsm_rs and n_fgsm, and the TensorBoard HParams record."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import script
from tensorboard.plugins.hparams import plugin_data_pb2

from tfrobust import averaging, data, export, losses, methods, models, training
from tfrobust.attacks import pgd
from tfrobust.methods import AttackConfig, StepContext, build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE, CLASSES, BATCH = (6, 6, 1), 3, 24


def _tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(keras.layers.Flatten()(h)))


def _batch(seed=0):
    r = np.random.default_rng(seed)
    x = r.uniform(0.0, 1.0, size=(BATCH, *SHAPE)).astype(np.float32)
    x[: BATCH // 2] = np.round(x[: BATCH // 2])  # pixels at 0 and 1, where the [0, 1] clip acts
    return tf.constant(x), tf.constant((np.arange(BATCH) % CLASSES).astype(np.int32))


def _mean_ce(model, x, y):
    return float(tf.reduce_mean(losses.cross_entropy(model(x, training=False), y)))


# -- fgsm_rs and n_fgsm ---------------------------------------------------------------------------

def test_fgsm_rs_is_one_pgd_step_from_a_uniform_start_stays_in_the_ball_and_raises_the_loss():
    model, (x, y) = _tiny_model(), _batch()
    attack = AttackConfig(eps=0.1, step_size=0.125, steps=1, bn_mode="eval")
    ctx = StepContext(model, tf.constant([5, 6], tf.int64))
    x_adv = build("fgsm_rs", attack).attack_inputs(ctx, x, y)
    delta = (x_adv - x).numpy()
    assert np.abs(delta).max() <= 0.1 + 1e-6 and x_adv.numpy().min() >= 0 and x_adv.numpy().max() <= 1
    assert np.abs(delta).max() > 0.099  # a full step, clipped at the ball's surface
    assert _mean_ce(model, x_adv, y) > _mean_ce(model, x, y) + 0.01
    # With the start clipped (the CIFAR-10 reference) it is PGD-1 of step alpha from a uniform start.
    reference = pgd.pgd(lambda v: model(v, training=False), x, y, eps=0.1, step_size=0.125, steps=1,
                        start="uniform", seed=ctx.seed)
    np.testing.assert_allclose(x_adv.numpy(), reference.numpy(), atol=1e-6)
    # The MNIST reference does not clip the start: a different point, still in the ball and in [0, 1].
    unclipped = build("fgsm_rs", attack, {"clip_start": False}).attack_inputs(ctx, x, y).numpy()
    assert np.abs(unclipped - x.numpy()).max() <= 0.1 + 1e-6 and 0 <= unclipped.min() and unclipped.max() <= 1
    assert not np.allclose(unclipped, x_adv.numpy())


def test_n_fgsm_leaves_the_ball_up_to_its_documented_radius_and_raises_the_loss():
    model, (x, y) = _tiny_model(), _batch()
    attack = AttackConfig(eps=0.05, step_size=0.05, steps=1, bn_mode="eval")
    ctx = StepContext(model, tf.constant([7, 8], tf.int64))
    method = build("n_fgsm", attack)
    assert method.radius() == pytest.approx(3 * 0.05)  # k eps + alpha with k = 2, alpha = eps
    x_adv = method.attack_inputs(ctx, x, y).numpy()
    delta = np.abs(x_adv - x.numpy())
    assert delta.max() <= method.radius() + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert delta.max() > 2.5 * 0.05  # no projection: well outside the eps ball
    assert _mean_ce(model, tf.constant(x_adv), y) > _mean_ce(model, x, y) + 0.01
    clipped = build("n_fgsm", attack, {"nfgsm_clip": 1.0})
    assert clipped.radius() == pytest.approx(0.05)
    assert np.abs(clipped.attack_inputs(ctx, x, y).numpy() - x.numpy()).max() <= 0.05 + 1e-6


def test_fast_methods_are_registered_with_their_hyperparameters():
    assert methods.hyperparameters("fgsm_rs") == ("clip_start",)
    assert methods.hyperparameters("n_fgsm") == ("noise_radius", "nfgsm_clip")
    assert methods.get("fgsm_rs").reference_bn_mode == methods.get("n_fgsm").reference_bn_mode == "train"


# -- best checkpoint, early stopping, overfitting report, HParams ------------------------------------

class _Sabotage(keras.callbacks.Callback):
    """Keeps epoch 1's weights, then zeroes every trainable weight after each step from epoch 2 on:
    the validation PGD accuracy falls to chance, deterministically."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.kept = [v.numpy() for v in self.model.classifier.weights]
            self.val_adv = logs["val_adv_accuracy"]

    def on_train_batch_end(self, batch, logs=None):
        if self.model.optimizer.iterations.numpy() > self.steps_per_epoch:
            for v in self.model.classifier.trainable_variables:
                v.assign(tf.zeros_like(v))


def _small(tmp_path, **overrides):
    base = dict(method="fgsm_rs", train_examples=320, batch_size=32, epochs=5, eps=0.03, step_size=0.0375,
                attack_steps=1, eval_steps=2, eval_examples=64, validation_size=128, lr=0.1,
                checkpoint_every_steps=1, output_dir=str(tmp_path / "run"), verbose=0, seed=0)
    base.update(overrides)
    return training.TrainConfig(**base)


def test_best_checkpoint_survives_rotation_early_stopping_and_the_overfitting_report(tmp_path, digits):
    sabotage = _Sabotage()
    sabotage.steps_per_epoch = 10
    result = training.train(_small(tmp_path, early_stopping_patience=2, method_options={"clip_start": True}),
                            extra_callbacks=[sabotage])
    run = result.run_dir
    assert sabotage.val_adv > 0.35, "epoch 1 must be clearly better than chance for this test to mean anything"
    # epoch 1 is the best; epochs 2 and 3 are not: patience 2 stops after epoch 3
    assert (result.best_epoch, result.stopped_epoch, result.steps) == (1, 3, 30)
    assert len(result.history["val_adv_accuracy"]) == 3
    state = json.load(open(os.path.join(run, "checkpoints", "best", "best.json")))
    assert (state["epoch"], state["step"]) == (1, 10) and state["value"] == pytest.approx(sabotage.val_adv)
    # rotation removed the rolling step-10 checkpoint; the best one is still there
    rolling = tf.train.get_checkpoint_state(os.path.join(run, "checkpoints")).all_model_checkpoint_paths
    assert [p.rsplit("-", 1)[1] for p in rolling] == ["28", "29", "30"]
    assert tf.train.latest_checkpoint(os.path.join(run, "checkpoints", "best")).endswith("best-10")
    # the best checkpoint and savedmodel_best hold epoch 1's weights
    x = np.asarray(digits.x_test[:32], np.float32)
    splits = data.load("digits", validation_size=128, seed=0)
    splits = dataclasses.replace(splits, x_train=splits.x_train[:320], y_train=splits.y_train[:320])  # the run's
    keras.utils.set_random_seed(1)
    kept = models.build_model("tiny_cnn", splits.image_shape, splits.num_classes, mean=splits.mean, std=splits.std)
    for v, value in zip(kept.weights, sabotage.kept):
        v.assign(value)
    expected = kept(x, training=False).numpy()
    restored = models.build_model("tiny_cnn", splits.image_shape, splits.num_classes, mean=splits.mean, std=splits.std)
    tf.train.Checkpoint(model=restored).restore(
        tf.train.latest_checkpoint(os.path.join(run, "checkpoints", "best"))).expect_partial()
    np.testing.assert_allclose(restored(x, training=False).numpy(), expected, atol=1e-5)
    best_logits = export.load_logits_fn(os.path.join(run, "savedmodel_best"))(x).numpy()
    np.testing.assert_allclose(best_logits, expected, atol=1e-5)
    last_logits = export.load_logits_fn(os.path.join(run, "savedmodel"))(x).numpy()
    assert not np.allclose(last_logits, expected, atol=1e-3)
    # summary.json: the last and the best model, and the collapse
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["best_adv_accuracy"] > summary["adv_accuracy"] + 0.2
    assert summary["best_clean_accuracy"] > summary["clean_accuracy"] + 0.2
    assert summary["stopped_epoch"] == 3
    assert [e["epoch"] for e in summary["overfitting"]] == [2, 3]
    assert summary["overfitting"][0]["best_epoch"] == 1
    # HParams: the configuration and the final accuracies, readable by the dashboard's plugin
    session, metrics = _hparams_events(os.path.join(run, "logs", "hparams"))
    assert session.hparams["method"].string_value == "fgsm_rs"
    assert session.hparams["early_stopping_patience"].number_value == 2
    assert session.hparams["eps"].number_value == pytest.approx(0.03)
    assert session.hparams["method_options.clip_start"].bool_value is True
    assert session.hparams["lr_decay_epochs"].string_value == ""
    assert metrics["test/adv_accuracy"] == pytest.approx(result.adv_accuracy)
    assert metrics["test/best_adv_accuracy"] == pytest.approx(result.best_adv_accuracy)


def _hparams_events(directory):
    session, config, metrics = None, None, {}
    for name in os.listdir(directory):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    plugin = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if plugin.HasField("session_start_info"):
                        session = plugin.session_start_info
                    if plugin.HasField("experiment"):
                        config = plugin.experiment
                elif value.tag.startswith(("test/", "suite/")):
                    metrics[value.tag] = float(tf.make_ndarray(value.tensor))
    assert session is not None and config is not None
    assert {h.name for h in config.hparam_infos} == set(session.hparams)
    assert {m.name.tag for m in config.metric_infos} == set(metrics)
    return session, metrics


def test_early_stopping_needs_a_validation_split(tmp_path):
    with pytest.raises(training.ConfigError, match="early_stopping_patience needs a validation split"):
        training.train(_small(tmp_path, early_stopping_patience=1, validation_size=0))
    assert not os.path.exists(tmp_path / "run")


# -- weight averaging ---------------------------------------------------------------------------------

class _Interrupt(Exception):
    pass


class _StopAt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise _Interrupt


class _Iterates(keras.callbacks.Callback):
    """The averaged variables before training and after every step."""

    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_begin(self, logs=None):
        if not self.values:
            self.values.append([v.numpy() for v in averaging.averaged_variables(self.model.classifier)])

    def on_train_batch_end(self, batch, logs=None):
        self.values.append([v.numpy() for v in averaging.averaged_variables(self.model.classifier)])


def _averages(run):
    splits = data.load("digits", validation_size=64, seed=0)
    splits = dataclasses.replace(splits, x_train=splits.x_train[:320], y_train=splits.y_train[:320])  # the run's
    classifier = models.build_model("tiny_cnn", splits.image_shape, splits.num_classes, mean=splits.mean,
                                    std=splits.std)
    average = averaging.WeightAverage(classifier)
    tf.train.Checkpoint(model=classifier, weight_average=average).restore(
        tf.train.latest_checkpoint(os.path.join(run, "checkpoints"))).assert_existing_objects_matched()
    return classifier, average


def test_weight_averaging_resumes_exactly_equals_the_ema_of_the_iterates_and_is_exported(tmp_path, digits):
    # 10 steps an epoch, 3 epochs; averaging from step 5; interrupted at step 14 (last checkpoint 12):
    # the rerun resumes mid-epoch 2 and calls fit twice.
    flags = dict(method="pgd_at", train_examples=320, batch_size=32, epochs=3, attack_steps=2, eval_steps=2,
                 eval_examples=64, validation_size=64, checkpoint_every_steps=3, deterministic=True, verbose=0,
                 weight_averaging="ema", ema_decay=0.8, ema_start_epoch=0.5)
    iterates = _Iterates()
    whole = training.train(training.TrainConfig(output_dir=str(tmp_path / "whole"), **flags),
                           extra_callbacks=[iterates])
    broken = training.TrainConfig(output_dir=str(tmp_path / "broken"), **flags)
    with pytest.raises(_Interrupt):
        training.train(broken, extra_callbacks=[_StopAt(14)])
    resumed = training.train(broken)
    assert resumed.steps == whole.steps == 30 and len(resumed.history["loss"]) == 3  # epoch 1 kept, then two fits
    a_model, a_avg = _averages(whole.run_dir)
    b_model, b_avg = _averages(resumed.run_dir)
    for u, v in zip(a_avg.averages + a_model.weights, b_avg.averages + b_model.weights):
        np.testing.assert_array_equal(u.numpy(), v.numpy())
    # an independent EMA of the recorded iterates: copies up to step 5, then d avg + (1 - d) w
    assert len(iterates.values) == 31
    expected = [np.array(v) for v in iterates.values[0]]
    for n, values in enumerate(iterates.values[1:], start=1):
        expected = values if n <= 5 else [np.float32(0.8) * e + np.float32(0.2) * w for e, w in zip(expected, values)]
    for got, want in zip(a_avg.averages, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a_avg.averages[0].numpy(), iterates.values[-1][0])  # it does average
    # the raw weights stay in the checkpoint; savedmodel/ holds the averages
    for raw, last in zip(a_model.weights, iterates.values[-1]):
        np.testing.assert_array_equal(raw.numpy(), last)
    x = np.asarray(digits.x_test[:16], np.float32)
    with a_avg.swapped_in():
        averaged_logits = a_model(x, training=False).numpy()
    np.testing.assert_allclose(export.load_logits_fn(whole.export_path)(x).numpy(), averaged_logits, atol=1e-5)
    np.testing.assert_array_equal(a_model.weights[1].numpy(), iterates.values[-1][1])  # swapped back


def test_weight_averaging_under_mirrored_strategy_equals_one_device():
    """The averages update inside the replicated step (ONLY_FIRST_REPLICA variables) and evaluate swaps
    them in from the cross-replica context: two replicas give one device's averages and scores."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, script("ema_mirrored.py")], env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    got = json.loads(lines[-1][len("RESULT"):])
    assert got["avg_vs_raw"] > 1e-3, got  # the averages are not the weights
    assert got["averages"] < 1e-5 and got["weights"] < 1e-5 and got["loss"] < 1e-5, got


def test_best_robust_checkpoint_in_a_users_own_fit_and_its_state_survives_a_restart(tmp_path, digits):
    from tfrobust.callbacks import BestRobustCheckpoint
    from tfrobust.robust_model import RobustModel
    keras.utils.set_random_seed(0)
    classifier = models.build_model("tiny_cnn", digits.image_shape, digits.num_classes)
    model = RobustModel(classifier, build("standard", AttackConfig(eps=0.02, step_size=0.01, steps=2)))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x, y = np.asarray(digits.x_train[:256], np.float32), digits.y_train[:256].astype(np.int32)
    val = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(64)
    best = BestRobustCheckpoint(str(tmp_path / "best"), patience=1, export_path=str(tmp_path / "savedmodel_best"),
                                verbose=False)
    history = model.fit(x, y, batch_size=32, epochs=3, validation_data=val, callbacks=[best], verbose=0)
    values = history.history["val_adv_accuracy"]
    assert best.best_epoch == 1 + int(np.argmax(values)) and best.best_value == pytest.approx(max(values))
    saved = json.load(open(tmp_path / "best" / "best.json"))
    assert saved["epoch"] == best.best_epoch and saved["step"] == 8 * best.best_epoch
    reread = BestRobustCheckpoint(str(tmp_path / "best"), patience=1)  # a restarted run
    assert (reread.best_epoch, reread.best_value) == (best.best_epoch, best.best_value)
    assert reread.patience_exhausted(best.best_epoch + 1) and not reread.patience_exhausted(best.best_epoch)
    restored = models.build_model("tiny_cnn", digits.image_shape, digits.num_classes)
    tf.train.Checkpoint(model=restored).restore(best.latest_checkpoint).expect_partial()
    probe = np.asarray(digits.x_test[:8], np.float32)
    np.testing.assert_allclose(export.load_logits_fn(str(tmp_path / "savedmodel_best"))(probe).numpy(),
                               restored(probe, training=False).numpy(), atol=1e-5)


def test_epoch_test_figures_are_the_models_test_accuracy_each_epoch_in_history_and_tensorboard(tmp_path, digits):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _small(tmp_path, epochs=2, epoch_test_examples=40, eval_step_size=0.01, checkpoint_every_steps=0)
    result = training.train(config)
    with open(os.path.join(result.run_dir, "history.json")) as f:
        epochs = json.load(f)["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    # the last epoch's clean figure is the exported (last) model's accuracy on every test image
    logits = export.load_logits_fn(result.export_path)
    expected = float((np.argmax(logits(tf.constant(digits.x_test)).numpy(), -1) == digits.y_test).mean())
    assert epochs[-1]["test_clean_accuracy"] == pytest.approx(expected, abs=1e-9)
    assert all(0 <= e["test_adv_accuracy"] <= 1 and e["test_seconds"] > 0 for e in epochs)
    with open(os.path.join(result.run_dir, "summary.json")) as f:
        assert json.load(f)["eval_attack"]["step_size"] == 0.01
    events = EventAccumulator(os.path.join(result.run_dir, "logs", "train")).Reload()
    for tag in ("epoch_test_clean_accuracy", "epoch_test_adv_accuracy"):
        written = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
        assert written == [(i, pytest.approx(r[tag.removeprefix("epoch_")])) for i, r in enumerate(epochs)]
