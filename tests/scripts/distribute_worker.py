"""A short MIMAE training run: `distribute_worker.py OUTPUT_DIR STRATEGY DUMP.npz`.

Run twice with TF_CONFIG (strategy multi_worker: two workers of one cluster) and once alone
(one_device) by tests/test_distribute.py. Writes the final trainable weights to DUMP.npz and prints
RESULT{"steps", "traces", "adv_accuracy"}. MIMAE because its batch-level mutual information needs
the cross-worker sum of the K x K joint.
"""

import json
import sys

import keras
import numpy as np

from tfrobust import training

output_dir, strategy, dump = sys.argv[1:4]


class Dump(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        np.savez(dump, *[v.numpy() for v in self.model.classifier.trainable_variables])


config = training.TrainConfig(method="mimae", method_options={"lambda_mi": 2.0}, epochs=1, batch_size=32,
                              train_examples=192, attack_steps=2, eval_steps=2, eval_examples=64,
                              validation_size=64, checkpoint_every_steps=4, output_dir=output_dir,
                              strategy=strategy, verbose=0)
result = training.train(config, extra_callbacks=[Dump()])
print("RESULT" + json.dumps({"steps": result.steps, "traces": result.train_step_traces,
                             "adv_accuracy": result.adv_accuracy}))
