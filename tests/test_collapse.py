"""Collapse detection (issue 20): a run sitting at a constant prediction says so on the console, in
TensorBoard and in summary.json, and `--stop_on_collapse=N` ends it with exit code 5."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from tfrobust import callbacks, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "runners", "train.py")


class _Host(keras.Model):
    """What the detector sees of a RobustModel: a classifier and an optimizer step."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier


def _epoch(detector, losses, capsys=None):
    """Run the detector through one epoch whose steps have these losses (Keras hands callbacks the
    running mean); the epoch's logs."""
    detector.on_epoch_begin(0)
    for b, _ in enumerate(losses):
        detector.on_train_batch_end(b, {"loss": float(np.mean(losses[: b + 1]))})
    logs = {"loss": float(np.mean(losses))}
    detector.on_epoch_end(0, logs)
    return logs


def _constant_classifier(digits, cls: int = 3):
    """A digits CNN whose last layer is zero but for its bias: it predicts `cls` for every image."""
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input(digits.image_shape), keras.layers.Conv2D(4, 3, activation="relu"),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
    kernel, bias = net.layers[-1].get_weights()
    bias[cls] = 1.0
    net.layers[-1].set_weights([np.zeros_like(kernel), bias])
    return net


def test_detector_fires_on_a_constant_classifier_and_says_what_helps(digits, tmp_path, capsys):
    detector = callbacks.CollapseDetector(np.asarray(digits.x_test, np.float32), 10, what="test images",
                                          logdir=str(tmp_path))
    detector.set_model(_Host(_constant_classifier(digits, cls=3)))
    logs = _epoch(detector, [2.0, 1.5, 1.2])  # the loss moved: only the prediction criterion
    assert logs["collapse"] == 1.0 and logs["majority_share"] == 1.0 and logs["collapse_loss_at_chance"] == 0.0
    line = [s for s in capsys.readouterr().out.splitlines() if s.strip()]
    assert len(line) == 1
    assert line[0].startswith("Collapse at epoch 1: the model predicts class 3 for 100.0% of "
                              f"{len(digits.x_test):,} test images;")
    assert "--eps_warmup_epochs" in line[0] and "natural cross-entropy" in line[0] and "--lr" in line[0]
    # the same line as a TensorBoard text summary
    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    (event,) = acc.Tensors("collapse")
    assert event.step == 0 and event.tensor_proto.string_val[0].decode() == line[0]


def test_detector_fires_on_a_loss_that_sat_at_log_k_and_not_on_one_that_left_it(digits_cnn, digits, capsys):
    detector = callbacks.CollapseDetector(np.asarray(digits.x_test, np.float32), 10)
    detector.set_model(_Host(digits_cnn))  # a trained model: predictions spread over the classes
    log_k = math.log(10)
    logs = _epoch(detector, [log_k * (1 + 0.009 * (-1) ** i) for i in range(40)])
    assert logs["collapse"] == 1.0 and logs["collapse_loss_at_chance"] == 1.0 and logs["majority_share"] < 0.5
    assert "the training loss stayed within 1% of log(10) = 2.303 all epoch" in capsys.readouterr().out
    # one step 2% away is enough to leave the band
    losses = [log_k] * 39 + [log_k * 0.98]
    logs = _epoch(detector, losses)
    assert logs["collapse"] == 0.0 and logs["collapse_loss_at_chance"] == 0.0
    assert capsys.readouterr().out == ""


def test_detector_is_silent_on_a_trained_model(digits_cnn, digits, capsys):
    detector = callbacks.CollapseDetector(np.asarray(digits.x_test, np.float32), 10)
    detector.set_model(_Host(digits_cnn))
    logs = _epoch(detector, [1.0, 0.5, 0.3])
    assert logs["collapse"] == 0.0 and logs["majority_share"] < 0.5
    assert capsys.readouterr().out == ""


def _mnist_like_npz(digits, path, n_train=256, n_test=128):
    """The digits at 28x28 (each pixel 3x3, padded by 2) for the SmallCNN, whose last layer starts at
    zero as in the TRADES reference."""
    def up(x):
        x = np.kron(np.asarray(x, np.float32), np.ones((1, 3, 3, 1), np.float32))
        return (255 * np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))).astype(np.uint8)
    np.savez(path, x_train=up(digits.x_train[:n_train]), y_train=digits.y_train[:n_train].astype(np.uint8),
             x_test=up(digits.x_test[:n_test]), y_test=digits.y_test[:n_test].astype(np.uint8))
    return f"npz:{path}"


def test_a_run_whose_loss_sits_at_chance_says_so_and_records_it(tmp_path, digits, capsys):
    """SmallCNN with its zero last layer and a learning rate too small to move it: every training
    loss stays at log 10 (its argmax still varies from image to image: the loss criterion alone)."""
    dataset = _mnist_like_npz(digits, tmp_path / "d.npz")
    config = training.TrainConfig(method="standard", dataset=dataset, model="small_cnn", epochs=2, batch_size=64,
                                  lr=1e-12, validation_size=0, eval_steps=1, eval_examples=32,
                                  output_dir=str(tmp_path / "run"), verbose=0)
    result = training.train(config)
    assert [e["epoch"] for e in result.collapsed_epochs] == [1, 2]
    assert all(e["loss_at_chance"] for e in result.collapsed_epochs)
    out = capsys.readouterr().out
    assert out.count("Collapse at epoch") == 2
    assert "the training loss stayed within 1% of log(10) = 2.303 all epoch" in out
    summary = json.load(open(os.path.join(result.run_dir, "summary.json")))
    assert summary["collapsed_epochs"] == result.collapsed_epochs
    history = json.load(open(os.path.join(result.run_dir, "history.json")))["epochs"]
    assert [e["collapse"] for e in history] == [1.0, 1.0]
    acc = event_accumulator.EventAccumulator(os.path.join(result.run_dir, "logs", "train"),
                                             size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    assert [e.step for e in acc.Tensors("collapse")] == [0, 1]


def _majority_npz(digits, path, cls=4):
    """The digits with 15 of every 16 training labels replaced by `cls` (each class still present)."""
    y_train = np.asarray(digits.y_train).copy()
    keep = np.arange(len(y_train)) % 16 == 0
    y_train[~keep] = cls
    np.savez(path, x_train=(255 * np.asarray(digits.x_train)).astype(np.uint8), y_train=y_train.astype(np.uint8),
             x_test=(255 * np.asarray(digits.x_test)).astype(np.uint8), y_test=np.asarray(digits.y_test, np.uint8))
    return f"npz:{path}"


def test_a_run_that_learned_a_constant_prediction_says_so(tmp_path, digits, capsys):
    config = training.TrainConfig(method="standard", dataset=_majority_npz(digits, tmp_path / "m.npz"), epochs=2,
                                  batch_size=64, validation_size=0, eval_steps=1, eval_examples=32,
                                  output_dir=str(tmp_path / "run"), verbose=0)
    result = training.train(config)
    assert [e["epoch"] for e in result.collapsed_epochs] == [1, 2]
    assert all(e["majority_share"] >= 0.9 and not e["loss_at_chance"] for e in result.collapsed_epochs)
    out = capsys.readouterr().out
    share = 100 * result.collapsed_epochs[1]["majority_share"]
    n = len(digits.x_test)
    assert f"Collapse at epoch 2: the model predicts class 4 for {share:.1f}% of {n:,} test images;" in out


def test_a_trained_run_records_no_collapse(tmp_path):
    result = training.train(training.TrainConfig(method="standard", epochs=2, batch_size=64, validation_size=64,
                                                 eval_steps=1, eval_examples=64, output_dir=str(tmp_path / "r"),
                                                 verbose=0))
    assert result.collapsed_epochs == []
    assert result.history["collapse"] == [0.0, 0.0] and max(result.history["majority_share"]) < 0.5
    assert json.load(open(os.path.join(result.run_dir, "summary.json")))["collapsed_epochs"] == []


@pytest.mark.slow
def test_stop_on_collapse_ends_the_run_with_exit_code_5_and_a_rerun_can_continue(tmp_path, digits):
    dataset = _mnist_like_npz(digits, tmp_path / "d.npz")
    out = tmp_path / "run"
    args = [sys.executable, RUNNER, "--method=standard", f"--dataset={dataset}", "--model=small_cnn", "--epochs=3",
            "--batch_size=64", "--lr=1e-12", "--validation_size=0", "--eval_steps=1", "--eval_examples=32",
            f"--output_dir={out}", "--verbose=0"]
    first = subprocess.run([*args, "--stop_on_collapse=2"], capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 5, first.stderr[-2000:]
    assert first.stdout.count("Collapse at epoch") == 2
    error = first.stderr.strip().splitlines()[-1]
    assert "stopped after 2 collapsed epoch(s) in a row (--stop_on_collapse=2), at epoch 2" in error
    assert not (out / "summary.json").exists()
    assert len(json.load(open(out / "history.json"))["epochs"]) == 2
    second = subprocess.run([*args, "--stop_on_collapse=0"], capture_output=True, text=True, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.load(open(out / "summary.json"))
    assert [e["epoch"] for e in summary["collapsed_epochs"]] == [1, 2, 3]
