"""A short PGD-AT run with a validation split, so the run keeps its best model:
`distribute_best.py OUTPUT_DIR STRATEGY EPOCHS LR`.

Run twice with TF_CONFIG (strategy multi_worker: two workers of one cluster) by
tests/test_distribute.py for one epoch, then twice more for two (the run continues). Prints
RESULT{"steps", "best_epoch", "best_val_adv_accuracy", "best_clean_accuracy", "best_adv_accuracy",
"best_export_path", "best_weights"}: best_weights is the sum of the absolute values of the best
checkpoint's weights as this process restores them from the run directory.
"""

import json
import sys

import numpy as np
import tensorflow as tf

from tfrobust import models, rundir, training

output_dir, strategy, epochs, lr = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
config = training.TrainConfig(method="pgd_at", epochs=epochs, batch_size=32, train_examples=128, attack_steps=2,
                              eval_steps=2, eval_examples=64, validation_size=64, lr=lr, output_dir=output_dir,
                              strategy=strategy, verbose=0)
result = training.train(config)
model = models.build_model(config.model, (8, 8, 1), 10)  # the digits default's tiny_cnn
best = tf.train.latest_checkpoint(f"{output_dir}/{rundir.BEST_DIR}")
tf.train.Checkpoint(model=model).restore(best).expect_partial()
print("RESULT" + json.dumps({
    "steps": result.steps, "best_epoch": result.best_epoch, "best_val_adv_accuracy": result.best_val_adv_accuracy,
    "best_clean_accuracy": result.best_clean_accuracy, "best_adv_accuracy": result.best_adv_accuracy,
    "best_export_path": result.best_export_path,
    "best_weights": float(sum(np.abs(w).sum() for w in model.get_weights()))}))
