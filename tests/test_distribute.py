"""Distribution: every method's step on two replicas equals the same step on one device, and two
worker processes (MultiWorkerMirroredStrategy over 127.0.0.1) train together like one process.

The multi-device tests run tests/scripts/distribute_*.py in subprocesses: splitting the CPU into
logical devices and configuring a multi-worker cluster must both happen before TensorFlow runs its
first op.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import script

from tfrobust import distribute, methods, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _result(proc):
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT"):])


# -- one step of every method: two replicas == one device ---------------------------------------

@pytest.fixture(scope="module")
def equivalence():
    proc = subprocess.run([sys.executable, script("distribute_equivalence.py")], env=_env(), capture_output=True,
                          text=True, timeout=600)
    return _result(proc)


@pytest.mark.parametrize("method", sorted(methods.REGISTRY))
def test_one_step_on_two_replicas_equals_one_device(equivalence, method):
    got = equivalence[method]
    assert got["moved"] > 1e-3, got  # the step changed the weights visibly
    assert got["diff"] < 1e-5, got


def test_the_equivalence_check_catches_per_replica_noise_and_a_per_replica_mean(equivalence):
    assert equivalence["control_noise"]["diff"] > 1e-4, equivalence["control_noise"]
    assert equivalence["control_mean"]["diff"] > 1e-4, equivalence["control_mean"]


# -- two worker processes ----------------------------------------------------------------------

def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(args_of, worker_tmp):
    """Two worker processes of one cluster on 127.0.0.1; worker i runs `args_of(i)`."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, *args_of(index)], env=_env(TF_CONFIG=tf_config, TMPDIR=str(worker_tmp)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _worker_results(procs):
    """Each worker's RESULT, once both have ended (killed after 600 s)."""
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            results.append(_result(subprocess.CompletedProcess(p.args, p.returncode, out, err)))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def test_two_workers_train_together_like_one_process(tmp_path):
    run = tmp_path / "run"
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    procs = _start_workers(
        lambda index: [script("distribute_worker.py"), str(run), "multi_worker", str(tmp_path / f"w{index}.npz")],
        worker_tmp)
    # The single-process reference runs meanwhile (a third process on a 2-core machine).
    single = subprocess.run([sys.executable, script("distribute_worker.py"), str(tmp_path / "single"),
                             "one_device", str(tmp_path / "single.npz")], env=_env(), capture_output=True,
                            text=True, timeout=600)
    results = _worker_results(procs)
    reference = _result(single)
    assert results[0] == results[1]
    assert results[0]["steps"] == reference["steps"] == 192 // 32
    assert results[0]["traces"] == 1
    chief, worker, one = (np.load(tmp_path / f) for f in ("w0.npz", "w1.npz", "single.npz"))
    for key in chief:
        np.testing.assert_array_equal(chief[key], worker[key])
        np.testing.assert_allclose(chief[key], one[key], rtol=1e-5, atol=1e-6)
    # Only the chief wrote the run directory; the other worker's temporary copies are gone.
    assert sorted(os.listdir(run)) == [".lock", "checkpoints", "config.json", "history.json", "logs", "savedmodel",
                                      "savedmodel_best", "summary.json"]
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("-6")
    assert os.listdir(worker_tmp) == []


def test_two_workers_keep_one_best_model_and_agree_on_it(tmp_path):
    """The best checkpoint's multi-worker path: the chief writes checkpoints/best (best-STEP and
    best.json) and savedmodel_best, the other worker only its private copies (deleted at the end);
    both report the same best epoch and the same test figures of the best model. Also when the run
    continues for an epoch that is not better (a learning rate of 1e-9 keeps the weights): then the
    other worker saved no copy in this process and evaluates the chief's best checkpoint."""
    run = tmp_path / "run"
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()

    def workers(epochs):
        args = [script("distribute_best.py"), str(run), "multi_worker", str(epochs), "1e-9"]
        return _worker_results(_start_workers(lambda _: args, worker_tmp))

    first = workers(1)
    assert first[0] == first[1], first
    best = first[0]
    assert best["steps"] == 128 // 32 and best["best_epoch"] == 1
    assert best["best_clean_accuracy"] is not None and best["best_adv_accuracy"] is not None
    state = json.loads((run / "checkpoints" / "best" / "best.json").read_text())
    assert (state["epoch"], state["step"], state["value"]) == (1, 128 // 32, best["best_val_adv_accuracy"])
    assert tf.train.latest_checkpoint(str(run / "checkpoints" / "best")).endswith(f"best-{state['step']}")
    assert best["best_export_path"] == str(run / "savedmodel_best") and (run / "savedmodel_best").is_dir()
    assert os.listdir(worker_tmp) == []

    again = workers(2)
    assert again[0] == again[1], again
    assert again[0]["steps"] == 2 * (128 // 32)
    assert {k: v for k, v in again[0].items() if k != "steps"} == {k: v for k, v in best.items() if k != "steps"}
    assert json.loads((run / "checkpoints" / "best" / "best.json").read_text())["epoch"] == 1
    assert os.listdir(worker_tmp) == []


# -- in-process: names, chief, broadcast ----------------------------------------------------------

def test_strategies_by_name_and_single_process_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.make_strategy("auto").num_replicas_in_sync == 1
    one = distribute.make_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    assert distribute.is_chief(one) and not distribute.is_multi_worker(one)
    assert distribute.broadcast_from_chief(one, 7) == 7
    assert distribute.worker_dir(str(tmp_path), one) == str(tmp_path)
    with pytest.raises(ValueError, match="unknown strategy"):
        distribute.make_strategy("tpu")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.make_strategy("multi_worker")


def test_multi_worker_without_tf_config_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = training.TrainConfig(strategy="multi_worker", output_dir=str(tmp_path / "run"))
    with pytest.raises(training.ConfigError, match="TF_CONFIG"):
        training.train(config)
    assert not os.path.exists(tmp_path / "run")


def test_global_sum_is_identity_on_one_replica():
    value = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(distribute.global_sum(value).numpy(), value.numpy())
