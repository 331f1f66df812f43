"""MIMAE's batch-level mutual information under MirroredStrategy (two logical CPU devices) and on
one device, from the same weights, plus a control whose joint is per replica (what the test must
catch); prints RESULT{"one": ..., "two": ..., "local": ...}. Run by tests/test_methods.py.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
# The devices are split before anything else touches TensorFlow.
import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfrobust import distribute  # noqa: E402
from tfrobust.methods import AttackConfig, build  # noqa: E402
from tfrobust.robust_model import RobustModel  # noqa: E402

r = np.random.default_rng(0)
x = r.uniform(0, 1, size=(8, 6, 6, 1)).astype(np.float32)
y = np.array([0, 0, 0, 1, 1, 2, 2, 2], np.int32)  # halves with different class mixes
method = build("mimae", AttackConfig(eps=0.1, step_size=0.04, steps=2),
               {"lambda_mi": 5.0, "lambda_mae": 0.5})


def run(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6, 6, 1))
        h = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
        # Large output weights: confident, varied predictions, so the MI is far from 0.
        init = keras.initializers.RandomNormal(stddev=2.0, seed=0)
        model = keras.Model(inputs, keras.layers.Dense(3, kernel_initializer=init)(h))
        rm = RobustModel(model, method, weight_decay=0.01, seed=1)
        rm.compile(optimizer=keras.optimizers.SGD(1.0))
    logs = rm.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    return {"mi": logs["mi"][-1], "loss": logs["loss"][-1], "adv_ce": logs["adv_ce"][-1],
            "weights": [w.tolist() for w in model.get_weights()]}


# One MirroredStrategy for both mirrored runs: two instances in a process can collide on
# collective instance keys.
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
one = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
two = run(mirrored)
distribute.global_sum = lambda t: t  # what the test must catch: a per-replica joint
local = run(mirrored)
print("RESULT" + json.dumps({"one": one, "two": two, "local": local}))
