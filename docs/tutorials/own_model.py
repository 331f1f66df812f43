# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Bring your own model
#
# Any Keras classifier that maps images in [0, 1] to logits trains through `RobustModel`. Here a
# functional model with batch norm, defined below, is trained with ATENT (Jagatap et al. 2022),
# first through `RobustModel` in this notebook, then through `runners/train.py`, which imports the
# module that registers it (`--import`).

# %%
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from tfrobust import data, methods, models
from tfrobust.robust_model import RobustModel

keras.utils.set_random_seed(0)
WORK = Path(tempfile.mkdtemp(prefix="tfrobust-own-model-"))  # everything written goes here
sys.path.insert(0, str(WORK))
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "runners" / "train.py").exists())

# %% [markdown]
# ## The model, in a module
#
# A factory `(input_shape, num_classes, *, mean, std) -> keras.Model`, registered under a name with
# `models.register`. `mean` and `std` are the training split's per-channel statistics when the
# caller normalizes (the runner's `--normalize`, on by default); the model then normalizes inside,
# so attacks and the exported SavedModel work on raw [0, 1] pixels. The model returns logits, not
# probabilities.

# %%
# %%writefile {WORK}/my_models.py
import keras

from tfrobust import models


@models.register("bn_cnn", min_input_size=8)
def build_bn_cnn(input_shape, num_classes, *, mean=None, std=None):
    """Two conv-batch-norm-ReLU blocks, global average pooling and a dense layer."""
    inputs = keras.Input(input_shape)
    x = inputs
    if mean is not None and std is not None:
        x = keras.layers.Normalization(mean=mean, variance=[s * s for s in std])(x)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="bn_cnn")


# %% [markdown]
# Importing the module registers the factory: `build_model` now takes its name, and checks the
# class count, the input size and the statistics for it as for a built-in architecture.

# %%
import my_models  # noqa: F401  (registers bn_cnn)

train, val, test, info = data.datasets("digits", batch_size=64, validation_size=200)
classifier = models.build_model("bn_cnn", info.image_shape, info.num_classes, mean=info.mean, std=info.std,
                                seed=0)
classifier.summary()
try:
    models.build_model("bn_cnn", (4, 4, 1), 10)
except models.ModelError as e:
    print("refused:", e)

# %% [markdown]
# ## ATENT through `RobustModel`
#
# ATENT trains on the exponentially averaged loss of L Langevin samples around each input
# (`attack.steps` = L). Its reference samples with batch norm in training mode: the method says so
# in `reference_bn_mode`, which the runner's `--attack_bn_mode=auto` takes and which is passed here.

# %%
atent = methods.get("atent")
attack = methods.AttackConfig(eps=0.1, step_size=0.025, steps=5, bn_mode=atent.reference_bn_mode)
model = RobustModel(classifier, methods.build("atent", attack))
model.compile(optimizer=keras.optimizers.Adam(2e-3))
model.fit(train, epochs=3, steps_per_epoch=info.steps_per_epoch, validation_data=val, verbose=2)
scores = model.evaluate(test, return_dict=True, verbose=0)  # clean and PGD-20, inference mode
print(f"test: clean {scores['clean_accuracy']:.3f}, PGD-20 {scores['adv_accuracy']:.3f}")

# %% [markdown]
# ## The same model in the runner
#
# `--import=my_models` (found from the current directory) registers `bn_cnn` before the flags are
# read, so `--model=bn_cnn` is a valid choice. The run directory is the same as for a built-in model:
# checkpoints, TensorBoard logs, the SavedModel and `summary.json`.

# %%
run = WORK / "run"
proc = subprocess.run([sys.executable, str(ROOT / "runners" / "train.py"), "--import=my_models", "--model=bn_cnn",
                       "--method=atent", "--epochs=2", "--attack_steps=5", "--optimizer=adam", "--lr=0.002",
                       "--eval_examples=200", "--verbose=2", f"--output_dir={run}"],
                      cwd=WORK, capture_output=True, text=True)
print(proc.stdout[proc.stdout.index("Run: "):] if proc.returncode == 0 else proc.stderr[-3000:])
summary = json.loads((run / "summary.json").read_text())
print({k: summary[k] for k in ("clean_accuracy", "adv_accuracy")})
