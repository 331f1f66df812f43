"""Distribution: every method's step on two replicas equals the same step on one device, and two
worker processes (MultiWorkerMirroredStrategy over 127.0.0.1) train together like one process.

The multi-device tests run in subprocesses: splitting the CPU into logical devices and
configuring a multi-worker cluster must both happen before TensorFlow runs its first op.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfrobust import distribute, training

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

_EQUIVALENCE_SCRIPT = textwrap.dedent("""
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from tfrobust import data, methods, models, rng
    from tfrobust import robust_model as robust_model_lib

    splits = data.load("digits")
    x = np.asarray(splits.x_train[:16], np.float32)
    y = splits.y_train[:16].astype(np.int32)
    attack = methods.AttackConfig(eps=0.1, step_size=0.04, steps=2)
    # One MirroredStrategy per process: two instances can collide on collective instance keys.
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one = tf.distribute.OneDeviceStrategy("/cpu:0")

    def step(strategy, name):
        # tiny_cnn: no batch norm and no dropout, whose per-replica statistics and masks would
        # legitimately differ from one device's.
        with strategy.scope():
            classifier = models.build_model("tiny_cnn", splits.image_shape, 10, seed=0)
            model = robust_model_lib.RobustModel(classifier, methods.build(name, attack), weight_decay=0.01, seed=3)
            model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
        before = classifier.get_weights()
        model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, steps_per_epoch=1, verbose=0)
        after = classifier.get_weights()
        return after, max(float(np.abs(a - b).max()) for a, b in zip(after, before))

    def diff(a, b):
        return max(float(np.abs(u - v).max()) for u, v in zip(a, b))

    out = {}
    for name in sorted(methods.REGISTRY):
        w_one, moved = step(one, name)
        w_two, _ = step(mirrored, name)
        out[name] = {"diff": diff(w_one, w_two), "moved": moved}

    # What the test must be able to catch.
    # 1. Noise drawn per replica instead of for the global batch (PGD-AT's uniform start).
    consistent = rng._batch_consistent
    rng._batch_consistent = lambda sample, shape: sample(shape)
    out["control_noise"] = {"diff": diff(step(one, "pgd_at")[0], step(mirrored, "pgd_at")[0])}
    rng._batch_consistent = consistent
    # 2. A per-replica mean instead of the global-batch average: N-times-too-large updates.
    average = tf.nn.compute_average_loss
    tf.nn.compute_average_loss = lambda per_example: tf.reduce_mean(per_example)
    out["control_mean"] = {"diff": diff(step(one, "standard")[0], step(mirrored, "standard")[0])}
    tf.nn.compute_average_loss = average
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def equivalence():
    proc = subprocess.run([sys.executable, "-c", _EQUIVALENCE_SCRIPT], env=_env(), capture_output=True,
                          text=True, timeout=600)
    return _result(proc)


@pytest.mark.parametrize("method", ["standard", "pgd_at", "trades", "mart", "mimae", "atent"])
def test_one_step_on_two_replicas_equals_one_device(equivalence, method):
    got = equivalence[method]
    assert got["moved"] > 1e-3, got  # the step changed the weights visibly
    assert got["diff"] < 1e-5, got


def test_the_equivalence_check_catches_per_replica_noise_and_a_per_replica_mean(equivalence):
    assert equivalence["control_noise"]["diff"] > 1e-4, equivalence["control_noise"]
    assert equivalence["control_mean"]["diff"] > 1e-4, equivalence["control_mean"]


# -- two worker processes ----------------------------------------------------------------------

_WORKER_SCRIPT = textwrap.dedent("""
    import json, sys
    import keras, numpy as np
    from tfrobust import training

    output_dir, strategy, dump = sys.argv[1:4]

    class Dump(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            np.savez(dump, *[v.numpy() for v in self.model.classifier.trainable_variables])

    # MIMAE: its batch-level mutual information needs the cross-worker sum of the K x K joint.
    config = training.TrainConfig(method="mimae", method_options={"lambda_mi": 2.0}, epochs=1, batch_size=32,
                                  train_examples=192, attack_steps=2, eval_steps=2, eval_examples=64,
                                  validation_size=64, checkpoint_every_steps=4, output_dir=output_dir,
                                  strategy=strategy, verbose=0)
    result = training.train(config, extra_callbacks=[Dump()])
    print("RESULT" + json.dumps({"steps": result.steps, "traces": result.train_step_traces,
                                 "adv_accuracy": result.adv_accuracy}))
""")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_together_like_one_process(tmp_path):
    run = tmp_path / "run"
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _WORKER_SCRIPT, str(run), "multi_worker", str(tmp_path / f"w{index}.npz")],
            env=_env(TF_CONFIG=tf_config, TMPDIR=str(worker_tmp)), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    # The single-process reference runs meanwhile (a third process on a 2-core machine).
    single = subprocess.run([sys.executable, "-c", _WORKER_SCRIPT, str(tmp_path / "single"), "one_device",
                             str(tmp_path / "single.npz")], env=_env(), capture_output=True, text=True,
                            timeout=600)
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            results.append(_result(subprocess.CompletedProcess(p.args, p.returncode, out, err)))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    reference = _result(single)
    assert results[0] == results[1]
    assert results[0]["steps"] == reference["steps"] == 192 // 32
    assert results[0]["traces"] == 1
    chief, worker, one = (np.load(tmp_path / f) for f in ("w0.npz", "w1.npz", "single.npz"))
    for key in chief:
        np.testing.assert_array_equal(chief[key], worker[key])
        np.testing.assert_allclose(chief[key], one[key], rtol=1e-5, atol=1e-6)
    # Only the chief wrote the run directory; the other worker's temporary copies are gone.
    assert sorted(os.listdir(run)) == ["checkpoints", "config.json", "logs", "savedmodel", "summary.json"]
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("-6")
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
