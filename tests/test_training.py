"""Training runs and the train runner: outputs, resume, run-directory safety, bad input."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfrobust import data, export, models, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "runners", "train.py")


def _config(tmp_path, **overrides):
    base = dict(method="pgd_at", epochs=1, batch_size=64, attack_steps=2, eval_steps=2, eval_examples=64,
                validation_size=64, output_dir=str(tmp_path / "run"), verbose=0)
    base.update(overrides)
    return training.TrainConfig(**base)


def test_run_writes_logs_checkpoints_and_a_faithful_savedmodel(tmp_path, digits):
    result = training.train(_config(tmp_path, epochs=2))
    run = result.run_dir
    assert result.train_step_traces == 1
    assert result.steps == 2 * data.steps_per_epoch(len(digits.x_train) - 64, 64)
    assert os.listdir(os.path.join(run, "logs", "train")) and os.listdir(os.path.join(run, "logs", "images"))
    assert tf.train.latest_checkpoint(os.path.join(run, "checkpoints")).endswith(f"-{result.steps}")
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["adv_accuracy"] == pytest.approx(result.adv_accuracy)
    # The SavedModel returns the trained classifier's logits.
    loaded = tf.saved_model.load(result.export_path)
    x = np.asarray(digits.x_test[:16], np.float32)
    out = loaded.serve(tf.constant(x))
    np.testing.assert_allclose(tf.nn.softmax(out["logits"]).numpy(), out["probabilities"].numpy(), atol=1e-6)
    ckpt_model = _restored_classifier(run, data.load("digits", validation_size=64, seed=0))
    np.testing.assert_allclose(out["logits"].numpy(), ckpt_model(x, training=False).numpy(), atol=1e-5)


def _restored_classifier(run, splits):
    from tfrobust import models
    classifier = models.build_model("tiny_cnn", splits.image_shape, splits.num_classes,
                                    mean=splits.mean, std=splits.std)
    tf.train.Checkpoint(model=classifier).restore(
        tf.train.latest_checkpoint(os.path.join(run, "checkpoints"))).expect_partial()
    return classifier


def test_resume_continues_at_the_right_epoch(tmp_path):
    first = training.train(_config(tmp_path, epochs=1, method="standard"))
    os.remove(os.path.join(first.run_dir, "summary.json"))  # as if killed after epoch 1
    second = training.train(_config(tmp_path, epochs=3, method="standard"))
    assert second.steps == 3 * first.steps
    assert len(second.history["loss"]) == 3  # the whole run's history, across the resume
    assert second.history["loss"][0] == first.history["loss"][0]
    # TensorBoard's HParams dashboard shows the resumed run's configuration, not the first session's
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    accumulator = event_accumulator.EventAccumulator(os.path.join(second.run_dir, "logs", "hparams"))
    accumulator.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        accumulator.summary_metadata["_hparams_/session_start_info"].plugin_data.content).session_start_info
    assert start.hparams["epochs"].number_value == 3
    assert [e.step for e in accumulator.Tensors("test/adv_accuracy")] == [second.steps]


def test_a_run_says_what_it_runs_and_a_resumed_one_counts_the_configured_epochs(tmp_path, capsys):
    """The banner before training; a run resumed mid-epoch shows "Epoch 2/3", not the "Epoch 1/1"
    of the fit call that finishes the interrupted epoch; the history covers every epoch."""
    import keras

    class KillAtStep(keras.callbacks.Callback):  # as a kill -9 right after the mid-epoch checkpoint
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 6:
                raise KeyboardInterrupt

    config = _config(tmp_path, epochs=3, method="trades", method_options={"beta": 2.0}, train_examples=256,
                     validation_size=0, checkpoint_every_steps=2, verbose=2)
    with pytest.raises(KeyboardInterrupt):
        training.train(config, extra_callbacks=[KillAtStep()])
    first = capsys.readouterr().out
    assert "trades (beta=2.0, shared_target=False, clip_start=False)" in first
    assert "256 train / 0 validation / 360 test images of 8x8x1, 10 classes; 4 steps of 64 per epoch" in first
    assert f"run: {tmp_path / 'run'} (new run)" in first and "Epoch 1/3" in first
    result = training.train(config)
    second = capsys.readouterr().out
    assert "(continuing at epoch 2/3, batch 2 (optimizer step 6))" in second
    assert "Epoch 2/3" in second and "Epoch 3/3" in second and "Epoch 1/1" not in second
    assert result.steps == 12 and len(result.history["loss"]) == 3  # epoch 2 counted once, when it finished
    saved = json.load(open(os.path.join(result.run_dir, "summary.json")))
    assert [e["epoch"] for e in json.load(open(os.path.join(result.run_dir, "history.json")))["epochs"]] == [1, 2, 3]
    assert len(saved["history"]["loss"]) == 3


def test_finished_or_different_runs_are_not_overwritten(tmp_path):
    training.train(_config(tmp_path, method="standard"))
    with pytest.raises(training.ConfigError, match="finished run"):
        training.train(_config(tmp_path, method="standard"))
    os.remove(os.path.join(tmp_path, "run", "summary.json"))
    with pytest.raises(training.ConfigError, match="different .*method"):
        training.train(_config(tmp_path, method="pgd_at"))
    result = training.train(_config(tmp_path, method="pgd_at", overwrite=True))
    assert json.load(open(os.path.join(result.run_dir, "config.json")))["method"] == "pgd_at"


def test_foreign_directory_is_never_touched(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.tex").write_text("precious")
    with pytest.raises(training.ConfigError, match="holds no tfrobust run"):
        training.train(_config(tmp_path, overwrite=True))
    assert (tmp_path / "run" / "thesis.tex").read_text() == "precious"


def test_tfds_source_trains_with_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=256):
        result = training.train(_config(tmp_path, dataset="mnist", model="small_cnn", batch_size=32,
                                        validation_size=0, method="standard"))
    assert result.steps == 256 // 32


def test_eval_suite_at_the_end_reports_on_the_same_test_examples(tmp_path):
    result = training.train(_config(tmp_path, eval_suite="quick", eval_examples=48))
    report = json.load(open(os.path.join(result.run_dir, "evaluation", "report.json")))
    assert report["n_examples"] == 48 and report["eps_values"] == [0.1]
    assert result.suite_accuracy == {"pgd-20": report["accuracy"]["pgd-20"][0],
                                     "worst_case": report["worst_case"][0]}
    assert result.suite_checks_passed == all(c["status"] == "pass" for c in report["checks"])
    summary = json.load(open(os.path.join(result.run_dir, "summary.json")))
    assert summary["suite_accuracy"] == result.suite_accuracy
    assert os.path.isfile(os.path.join(result.run_dir, "evaluation", "accuracy_vs_eps.png"))


def _run_cli(*args, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, RUNNER, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.parametrize("args,fragment", [
    (["--epochs=0"], "epochs"),
    (["--method=nope"], "method"),
    (["--eps=-1"], "eps"),
    (["--eps=2"], "eps"),
    (["--batch_size=abc"], "batch_size"),
    (["--dataset=npz:/no/such/file.npz"], "no/such/file.npz"),
    (["--dataset=imagenet2"], "imagenet2"),
    (["--lr_schedule=piecewise"], "lr_decay_epochs"),
    (["--beta=1.0"], "beta"),  # pgd_at has no beta
    (["--eval_suite=everything"], "eval_suite"),
    (["--eps_warmup_epochs=-1"], "eps_warmup_epochs"),
    (["--eval_suite=quick", "--eps=0"], "eval_suite"),
    (["--early_stopping_patience=2", "--validation_size=0"], "early_stopping_patience"),
    (["--lr_schedule=cyclic", "--lr_peak_epoch=5", "--epochs=3"], "lr_peak_epoch"),
    (["--ema_decay=1"], "ema_decay"),
    (["stray"], "unexpected"),
])
def test_bad_flags_fail_with_one_line_and_exit_2(tmp_path, args, fragment):
    proc = _run_cli(f"--output_dir={tmp_path / 'run'}", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.slow
def test_main_job_of_the_readme(tmp_path):
    """The quick start's main job: default flags, PGD-AT on digits, under 3 minutes."""
    proc = _run_cli(f"--output_dir={tmp_path / 'run'}", "--verbose=2", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PGD-20" in proc.stdout and "traced 1x" in proc.stdout
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["clean_accuracy"] > 0.9 and summary["adv_accuracy"] > 0.6
    logits_fn = export.load_logits_fn(str(tmp_path / "run" / "savedmodel"))
    assert logits_fn(np.zeros((2, 8, 8, 1), np.float32)).shape == (2, 10)


class _FinalLogits(keras.callbacks.Callback):
    """Keeps the trained classifier's inference logits on `x` at the end of training."""

    def __init__(self, x):
        super().__init__()
        self.x, self.logits = x, None

    def on_train_end(self, logs=None):
        self.logits = self.model.classifier(self.x, training=False).numpy()


def test_checkpoint_restores_into_a_freshly_built_model(tmp_path, digits):
    x = np.asarray(digits.x_test[:32], np.float32)
    final = _FinalLogits(x)
    result = training.train(_config(tmp_path, epochs=1, method="standard"), extra_callbacks=[final])
    latest = tf.train.latest_checkpoint(os.path.join(result.run_dir, "checkpoints"))
    names = [name for name, _ in tf.train.list_variables(latest)]
    splits = data.load("digits", validation_size=64, seed=0)
    fresh = models.build_model("tiny_cnn", splits.image_shape, splits.num_classes, mean=splits.mean, std=splits.std)
    # Every weight is saved under the model entry, by layer (not only as optimizer/_trainable_variables/N).
    assert sum(name.startswith("model/layer_with_weights-") for name in names) == len(fresh.weights)
    assert not np.array_equal(fresh(x, training=False).numpy(), final.logits)
    # The natural restore into a freshly built model gives the trained logits exactly.
    tf.train.Checkpoint(model=fresh).restore(latest).expect_partial().assert_existing_objects_matched()
    np.testing.assert_array_equal(fresh(x, training=False).numpy(), final.logits)
