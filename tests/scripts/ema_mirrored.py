"""Weight averaging on two replicas (MirroredStrategy over two logical CPU devices) and on one
device, from the same weights; prints RESULT{"averages", "weights", "avg_vs_raw", "loss"} (largest
differences). Run by tests/test_practice.py.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
# The devices are split before anything else touches TensorFlow.
import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfrobust import averaging, data, methods, models  # noqa: E402
from tfrobust.robust_model import RobustModel  # noqa: E402

splits = data.load("digits")
x = np.asarray(splits.x_train[:16], np.float32)
y = splits.y_train[:16].astype(np.int32)
attack = methods.AttackConfig(eps=0.1, step_size=0.04, steps=2)
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
one = tf.distribute.OneDeviceStrategy("/cpu:0")


def run(strategy):
    with strategy.scope():
        classifier = models.build_model("tiny_cnn", splits.image_shape, 10, seed=0)
        average = averaging.WeightAverage(classifier, decay=0.5, start_step=1)
        model = RobustModel(classifier, methods.build("pgd_at", attack), seed=3, weight_average=average)
        model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), epochs=1, steps_per_epoch=3, verbose=0)
    scores = model.evaluate(tf.data.Dataset.from_tensors((x, y)), verbose=0, return_dict=True)
    return [a.numpy() for a in average.averages], classifier.get_weights(), scores["loss"]




def diff(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b))


(a1, w1, l1), (a2, w2, l2) = run(one), run(mirrored)
print("RESULT" + json.dumps({"averages": diff(a1, a2), "weights": diff(w1, w2), "avg_vs_raw": diff(a1, w1),
                             "loss": abs(l1 - l2)}))
