"""Fault tolerance: a run killed with SIGKILL mid-epoch and rerun ends exactly like an uninterrupted
one; checkpoints and exports are never left half-written; a NaN loss stops the run with the step
named, one line and a non-zero exit code."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import script

from tfrobust import export, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "runners", "train.py")


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    return env


def _runner(*args, timeout=300):
    return subprocess.run([sys.executable, RUNNER, *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout)


# 320 training examples in batches of 32: 10 steps per epoch, 2 epochs; checkpoints every 3 steps
# and at epoch ends (3, 6, 9, 10, 12, 15, ...).
_FLAGS = ["--method=pgd_at", "--train_examples=320", "--batch_size=32", "--epochs=2", "--attack_steps=3",
          "--eval_steps=2", "--eval_examples=64", "--validation_size=64", "--checkpoint_every_steps=3",
          "--deterministic", "--verbose=0"]

def _checkpoint_values(run_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")))
    names = [n for n in reader.get_variable_to_shape_map() if "save_counter" not in n]
    return {n: reader.get_tensor(n) for n in names}


def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run(tmp_path):
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    # The runner's run, SIGKILLed right after optimizer step 14 (epoch 2, batch 4; the last
    # checkpoint is step 12, so two steps of work are lost).
    env = dict(_env(), KILL_AT="14")
    killed = subprocess.Popen([sys.executable, script("killed_train.py"), *_FLAGS, f"--output_dir={broken}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    uninterrupted = _runner(*_FLAGS, f"--output_dir={whole}")  # meanwhile
    out, err = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, (out, err[-3000:])
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert tf.train.latest_checkpoint(os.path.join(broken, "checkpoints")).endswith("ckpt-12")
    assert not os.path.exists(os.path.join(broken, "summary.json"))

    rerun = _runner(*_FLAGS, f"--output_dir={broken}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "at epoch 2, batch 2 (optimizer step 12)" in rerun.stdout
    done, reference = (json.load(open(os.path.join(d, "summary.json"))) for d in (broken, whole))
    assert done["steps"] == reference["steps"] == 20
    assert done["train_step_traces"] == 1
    a, b = _checkpoint_values(broken), _checkpoint_values(whole)
    assert a.keys() == b.keys() and any("optimizer" in k for k in a)
    for name in a:  # model, optimizer slots and step counter, bit for bit
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert done["adv_accuracy"] == reference["adv_accuracy"]
    # The epoch record, too: the running metrics travelled in ckpt-12, so epoch 2 averages all its
    # batches, as the uninterrupted run's does (the clock's figures aside).
    a, b = (json.load(open(os.path.join(d, "history.json")))["epochs"] for d in (broken, whole))
    timing = ("images_per_second", "test_seconds")
    assert [{k: v for k, v in e.items() if k not in timing} for e in a] == \
        [{k: v for k, v in e.items() if k not in timing} for e in b]


def test_nan_loss_stops_the_run_with_the_step_named(tmp_path):
    run = tmp_path / "run"
    # lr 1e38 overflows float32 within two steps. With lr 1e30 the loss stayed finite here
    # (2.9e29, dead ReLUs; measured on this 2-core host, also at the commit that wrote the test).
    proc = _runner("--method=standard", "--lr=1e38", "--momentum=0", "--train_examples=256", "--batch_size=32",
                   "--epochs=2", "--validation_size=0", "--checkpoint_every_steps=1", "--verbose=0",
                   f"--output_dir={run}")
    assert proc.returncode == 3, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("train.py: error: the training loss became") and "optimizer step 2" in lines[0]
    assert "Traceback" not in proc.stderr
    # The non-finite step was not checkpointed; nothing claims the run finished.
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert latest.endswith("ckpt-1")
    reader = tf.train.load_checkpoint(latest)
    assert all(np.isfinite(reader.get_tensor(n)).all() for n in reader.get_variable_to_shape_map()
               if reader.get_variable_to_dtype_map()[n].is_floating)
    assert not (run / "summary.json").exists() and not (run / "savedmodel").exists()


# -- atomic writes ----------------------------------------------------------------------------

def test_sigkill_while_saving_leaves_the_latest_checkpoint_whole(tmp_path):
    """TensorFlow writes a checkpoint's data and index before the `checkpoint` state file names it."""
    rng = np.random.default_rng(0)
    for trial in range(3):
        directory = str(tmp_path / f"ckpt{trial}")
        proc = subprocess.Popen([sys.executable, script("checkpoint_saver.py"), directory], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        saved = 0
        while saved < 3:  # wait for a few saves, then kill at a random moment of the next ones
            line = proc.stdout.readline()
            assert line, "the saver died"
            saved = int(line)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        latest = tf.train.latest_checkpoint(directory)
        step = int(latest.rsplit("-", 1)[1])
        value = tf.train.load_checkpoint(latest).get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE")
        assert step >= 3 and (value == step).all()


def test_export_is_written_atomically(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    classifier = models.build_model("tiny_cnn", (8, 8, 1), 10)
    path = str(tmp_path / "savedmodel")
    export.export_classifier(classifier, path)
    x = np.random.default_rng(0).random((4, 8, 8, 1), np.float32)
    before = export.load_logits_fn(path)(x).numpy()

    def crash(self, directory, **kwargs):  # a crash half-way through writing the new export
        os.makedirs(os.path.join(directory, "variables"))
        open(os.path.join(directory, "saved_model.pb"), "wb").write(b"trunc")
        raise OSError("disk full")

    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", crash)  # the backend's class
    for v in classifier.trainable_variables:
        v.assign(v + 1.0)
    with pytest.raises(OSError, match="disk full"):
        export.export_classifier(classifier, path)
    with pytest.raises(OSError):
        export.export_classifier(classifier, str(tmp_path / "fresh"))
    assert sorted(os.listdir(tmp_path)) == ["savedmodel"]  # no staging directory, no half export
    np.testing.assert_array_equal(export.load_logits_fn(path)(x).numpy(), before)  # the old one intact


# -- a run survives what happens to its files (issue 25) ------------------------------------------
# One finished two-epoch run (10 steps per epoch: ckpt-10, ckpt-20) is made once; every test damages
# a copy of it the way a user's disk, editor or second terminal would, and reruns it asking for a
# third epoch, which continues it.

_RUN = ["--method=pgd_at", "--train_examples=320", "--batch_size=32", "--attack_steps=2", "--eval_steps=2",
        "--eval_examples=20", "--validation_size=0", "--verbose=0"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("base") / "run")
    proc = _runner(*_RUN, "--epochs=2", f"--output_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def _copy(finished_run, tmp_path, name="run"):
    import shutil
    target = str(tmp_path / name)
    shutil.copytree(finished_run, target)
    return target


def _stderr_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.strip()]


def _listing(root):
    """Every file under `root` and its bytes (the lock file aside: it names its last holder)."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name == ".lock":
                continue
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_a_truncated_newest_checkpoint_is_set_aside_and_the_previous_one_used(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    ckpts = os.path.join(run, "checkpoints")
    data = [f for f in os.listdir(ckpts) if f.startswith("ckpt-20.data")][0]
    os.truncate(os.path.join(ckpts, data), 600)
    proc = _runner(*_RUN, "--epochs=3", f"--output_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at epoch 2, batch 0 (optimizer step 10)" in proc.stdout
    warning = [line for line in _stderr_lines(proc) if "damaged" in line]
    assert len(warning) == 1 and "ckpt-20" in warning[0] and "ckpt-10" in warning[0], proc.stderr
    assert os.path.getsize(os.path.join(ckpts, "corrupt-" + data)) == 600  # kept, out of the rotation
    assert json.load(open(os.path.join(run, "summary.json")))["steps"] == 30


def test_when_no_checkpoint_restores_the_rerun_refuses_and_keeps_every_file(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    ckpts = os.path.join(run, "checkpoints")
    for f in os.listdir(ckpts):
        if ".data-" in f:
            os.truncate(os.path.join(ckpts, f), 100)
    before = _listing(run)
    proc = _runner(*_RUN, "--epochs=3", f"--output_dir={run}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = _stderr_lines(proc)
    assert len(lines) == 1 and "no checkpoint" in lines[0] and "ckpt-20" in lines[0] and "ckpt-10" in lines[0]
    assert _listing(run) == before


def test_a_garbage_checkpoint_list_is_rebuilt_never_a_restart_from_step_0(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    with open(os.path.join(run, "checkpoints", "checkpoint"), "w") as f:
        f.write("\x00garbage{{{ not a checkpoint state")
    proc = _runner(*_RUN, "--epochs=3", f"--output_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at epoch 3, batch 0 (optimizer step 20)" in proc.stdout
    lines = _stderr_lines(proc)  # one line: TensorFlow's own ParseError log is held back
    assert len(lines) == 1 and "rebuilt" in lines[0], proc.stderr
    assert json.load(open(os.path.join(run, "summary.json")))["steps"] == 30


def test_a_run_is_its_contents_moved_or_named_with_a_trailing_slash(finished_run, tmp_path):
    moved = _copy(finished_run, tmp_path, "moved elsewhere")  # a space, too
    proc = _runner(*_RUN, "--epochs=3", f"--output_dir={moved}/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at epoch 3, batch 0 (optimizer step 20)" in proc.stdout
    assert json.load(open(os.path.join(moved, "config.json")))["output_dir"] == moved + "/"
    assert os.path.exists(os.path.join(moved, "checkpoints", "ckpt-30.index"))


def test_a_second_process_on_a_training_run_exits_at_once_naming_the_first(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    first = subprocess.Popen([sys.executable, RUNNER, *_RUN, "--epochs=200", f"--output_dir={run}"],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # the first holds the lock once its lock file names it
            try:
                if json.load(open(os.path.join(run, ".lock")))["pid"] == first.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.5)
        before = _listing(os.path.join(run, "logs"))
        second = _runner(*_RUN, "--epochs=200", f"--output_dir={run}")
        assert second.returncode == 2, second.stderr[-3000:]
        lines = _stderr_lines(second)
        assert len(lines) == 1 and f"in use by PID {first.pid}" in lines[0], lines
        writers = {re.search(r"\.(\d+)\.\d+\.v2$", f).group(1) for f in _listing(os.path.join(run, "logs"))}
        assert writers <= {str(first.pid)} | {re.search(r"\.(\d+)\.\d+\.v2$", f).group(1) for f in before}
        # evaluate.py may read the run while it trains, but not write its report into it.
        evaluate = subprocess.run([sys.executable, os.path.join(ROOT, "runners", "evaluate.py"), f"--model={run}"],
                                  capture_output=True, text=True, env=_env(), timeout=120)
        assert evaluate.returncode == 2 and f"in use by PID {first.pid}" in evaluate.stderr, evaluate.stderr
        assert not os.path.exists(os.path.join(run, "evaluation"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # The kernel released the killed run's lock: the same command continues it.
    third = _runner(*_RUN, "--epochs=3", f"--output_dir={run}")
    assert third.returncode in (0, 2), third.stderr[-3000:]
    assert "in use" not in third.stderr


def test_leftovers_of_a_failed_first_write_do_not_make_the_directory_foreign(tmp_path, monkeypatch):
    from tfrobust import config, files, rundir

    run = tmp_path / "run"
    run.mkdir()

    def full(*args, **kwargs):
        raise OSError(28, os.strerror(28))

    with monkeypatch.context() as m:  # the first write of config.json meets a full disk
        m.setattr(os, "replace", full)
        with pytest.raises(Exception, match="No space left on device"):
            rundir.prepare(config.TrainConfig(output_dir=str(run)))
    assert [e for e in os.listdir(run) if e.startswith(".tmp-")] == []  # the temporary file is gone
    (run / ".tmp-abc123").write_text('{"half": ')  # what a killed write leaves
    lock = rundir.RunLock(str(run))
    assert rundir.prepare(config.TrainConfig(output_dir=str(run)), lock) is False  # a fresh run, not "foreign"
    lock.release()
    assert sorted(os.listdir(run)) == [".lock", "config.json"]
    assert files.matches(".lock", rundir.RUN_ENTRIES)


def test_a_label_of_two_billion_is_refused_before_anything_is_written(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(64) % 10
    labels[5] = 2_000_000_000
    np.savez(tmp_path / "big.npz", x_train=images, y_train=labels, x_test=images[:8], y_test=labels[:8] % 10)
    proc = _runner("--method=standard", f"--dataset=npz:{tmp_path / 'big.npz'}", "--validation_size=0",
                   f"--output_dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = _stderr_lines(proc)
    assert len(lines) == 1 and "2000000000" in lines[0] and "2,000,000,001 classes" in lines[0], lines
    assert not os.path.exists(tmp_path / "run")


def test_a_model_too_big_for_the_images_is_refused_before_anything_is_written(tmp_path):
    proc = _runner("--method=standard", "--model=small_cnn", f"--output_dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = _stderr_lines(proc)
    assert len(lines) == 1 and "too small" in lines[0], lines
    assert not os.path.exists(tmp_path / "run")


def test_a_damaged_history_is_kept_aside_with_one_warning(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    path = os.path.join(run, "history.json")
    damaged = open(path, "rb").read()[:50]
    open(path, "wb").write(damaged)
    proc = _runner(*_RUN, "--epochs=3", f"--output_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [line for line in _stderr_lines(proc) if "history.json" in line]
    assert len(warning) == 1 and "history.json.corrupt-1" in warning[0], proc.stderr
    assert open(path + ".corrupt-1", "rb").read() == damaged
    assert [e["epoch"] for e in json.load(open(path))["epochs"]] == [3]


def test_a_run_killed_after_training_finishes_its_evaluation(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    os.remove(os.path.join(run, "summary.json"))  # killed after the last epoch, before its summary
    proc = _runner(*_RUN, "--epochs=2", "--verbose=2", f"--output_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training done (optimizer step 20)" in proc.stdout and "epoch 3/2" not in proc.stdout
    assert json.load(open(os.path.join(run, "summary.json")))["steps"] == 20


def test_the_write_failure_line_keeps_the_os_reason_and_names_a_checkpoint_only_if_there_is_one(tmp_path):
    from tfrobust import training

    run = str(tmp_path / "run")
    os.makedirs(os.path.join(run, "checkpoints"))
    cause = "; ".join(["Failed to write to a very long path " + "x" * 60] * 4) + ": No space left on device"
    line = training._write_failure(tf.errors.ResourceExhaustedError(None, None, cause), run)
    assert "No space left on device" in line and "no checkpoint was complete yet" in line
    assert "--output_dir=NEW_DIR" in line
    line = training._write_failure(OSError(30, os.strerror(30), os.path.join(run, "history.json")), run)
    assert "Read-only file system" in line and "history.json" in line


def test_a_damaged_best_checkpoint_is_set_aside_and_the_best_chosen_again(tmp_path):
    run = str(tmp_path / "run")
    flags = [*_RUN[:-2], "--validation_size=64", "--verbose=0", f"--output_dir={run}"]
    first = _runner(*flags, "--epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    best = os.path.join(run, "checkpoints", "best")
    data = [f for f in os.listdir(best) if ".data-" in f][0]
    os.truncate(os.path.join(best, data), 100)
    proc = _runner(*flags, "--epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _stderr_lines(proc)
    assert len(lines) == 1 and "best checkpoint" in lines[0] and "set aside" in lines[0], lines
    assert os.path.getsize(os.path.join(best, "corrupt-" + data)) == 100
    assert json.load(open(os.path.join(run, "summary.json")))["best_epoch"] == 2
