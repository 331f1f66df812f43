"""One training step of every registered method on two replicas (MirroredStrategy over two
logical CPU devices) and on one device, from the same weights; prints RESULT{method: {"diff":
max |w_two - w_one|, "moved": max |w_one - w_before|}, ..., "control_noise": ..., "control_mean": ...}.

The two controls break what the equivalence depends on, to show the comparison can fail:
noise drawn per replica instead of for the global batch, and a per-replica mean loss.
Run by tests/test_distribute.py.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfrobust import data, methods, models, rng  # noqa: E402
from tfrobust import robust_model as robust_model_lib  # noqa: E402

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
