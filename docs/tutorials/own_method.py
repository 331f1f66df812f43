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
# # Write your own method
#
# A training method in tfrobust says two things: which inputs to train on (the attack) and which
# loss to take on them. Here is a new one in about 30 lines, PGD-AT (Madry et al. 2018) whose
# cross-entropy on the PGD examples targets label-smoothed labels (Szegedy et al. 2016). It is
# registered, trained with `fit`, evaluated with APGD, and checked by the runner like a built-in.
#
# ## The `Method` contract
#
# A method is a frozen dataclass subclassing `tfrobust.methods.Method`; its fields are its
# hyperparameters (besides `attack`, the threat model), each made with `tfrobust.settings.setting`,
# which gives it a help line, bounds and, in the runner, a flag. It implements:
#
# - `attack_inputs(ctx, x, y)`: the adversarial training inputs (or None). It runs **outside** the
#   weight-gradient tape, so the attack's graph is not kept for the backward pass. `self.pgd(...)`
#   runs PGD in the method's threat model with the model in the attack's batch-norm mode.
# - `loss(ctx, x, y, x_adv)`: a `LossOutput` with the loss **per example**, each term to log, and
#   the clean and adversarial logits if it computed them (for the accuracy metrics). It runs
#   **inside** the tape. `ctx.logits(x, training=True)` calls the model.
# - `gradients(ctx, x, y, differentiate)`: the default calls the two above; override it only for
#   an update that is not one loss (ATENT's sum over Langevin iterates).
#
# Around it, `RobustModel.train_step` makes the `StepContext` (the model, a fresh stateless seed per
# step, the eps warm-up's scale, the optimizer step), averages the per-example loss over the
# *global* batch (so it is right under `tf.distribute`), adds weight decay and loss scaling, applies
# the gradients, and logs the loss, each term and the clean and adversarial accuracy. The method
# never sees the optimizer.

# %%
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from tfrobust import data, evaluation, methods, models
from tfrobust.errors import ConfigError
from tfrobust.robust_model import RobustModel

keras.utils.set_random_seed(0)
WORK = Path(tempfile.mkdtemp(prefix="tfrobust-own-method-"))  # everything written goes here
sys.path.insert(0, str(WORK))
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "runners" / "train.py").exists())

# %% [markdown]
# ## The method, in a module
#
# It goes in a module so that the runner can import it too (`--import=my_method`).

# %%
# %%writefile {WORK}/my_method.py
import dataclasses

import tensorflow as tf

from tfrobust import losses, methods
from tfrobust.settings import setting


@methods.register
@dataclasses.dataclass(frozen=True)
class PgdAtSmooth(methods.Method):
    """PGD-AT on label-smoothed targets: (1 - s) CE(z(x'), y) + s mean_k CE(z(x'), k)."""

    smoothing: float = setting(0.1, "Label smoothing s of the adversarial CE.", low=0, high=1, high_open=True)

    name = "pgd_at_smooth"           # --method=pgd_at_smooth
    term_names = ("adv_ce", "uniform_ce")
    reference_bn_mode = "train"      # attack in the model's training mode, as Madry's code does

    def attack_inputs(self, ctx, x, y):
        return self.pgd(ctx, x, y, start="uniform", clip_start=True)

    def loss(self, ctx, x, y, x_adv):
        logits = ctx.logits(x_adv, training=True)
        adv_ce = losses.cross_entropy(logits, y)  # the library's per-example CE
        uniform_ce = -tf.reduce_mean(tf.nn.log_softmax(logits), axis=1)
        return methods.LossOutput(per_example=(1 - self.smoothing) * adv_ce + self.smoothing * uniform_ce,
                                  terms={"adv_ce": adv_ce, "uniform_ce": uniform_ce}, adv_logits=logits)


# %% [markdown]
# Importing the module registers the method; a second method under the same name is refused.

# %%
import my_method

print(methods.hyperparameters("pgd_at_smooth"))
try:
    methods.register(my_method.PgdAtSmooth)
except ConfigError as e:
    print("refused:", e)

# %% [markdown]
# ## Training and evaluating it
#
# `methods.build` checks the hyperparameters against their bounds, as for a built-in method.

# %%
try:
    methods.build("pgd_at_smooth", methods.AttackConfig(), {"smoothing": 1.0})
except ConfigError as e:
    print("refused:", e)

train, val, test, info = data.datasets("digits", batch_size=64, validation_size=200)
classifier = models.build_model("tiny_cnn", info.image_shape, info.num_classes, mean=info.mean, std=info.std,
                                seed=0)
attack = methods.AttackConfig(eps=0.1, step_size=0.025, steps=5, bn_mode=my_method.PgdAtSmooth.reference_bn_mode)
model = RobustModel(classifier, methods.build("pgd_at_smooth", attack, {"smoothing": 0.1}))
model.compile(optimizer=keras.optimizers.Adam(2e-3))
history = model.fit(train, epochs=3, steps_per_epoch=info.steps_per_epoch, validation_data=val, verbose=2)
scores = model.evaluate(test, return_dict=True, verbose=0)
print(f"test: clean {scores['clean_accuracy']:.3f}, PGD-20 {scores['adv_accuracy']:.3f}")

# %% [markdown]
# APGD-CE and APGD-T (Croce and Hein 2020) on 200 test images, every attack on every example:

# %%
splits = data.load("digits")
report = evaluation.robust_accuracy(classifier, (splits.x_test.astype(np.float32), splits.y_test),
                                    attacks="apgd", eps_values=[0.1], limit=200, checks=None)
print(report.to_markdown())

# %% [markdown]
# ## In the runner
#
# `--import=my_method` imports the module before the flags are read: `--method=pgd_at_smooth` is a
# choice and `--smoothing` a flag with its help and bounds. A bad value is one line and exit code 2,
# before anything is written.

# %%
def train_py(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "runners" / "train.py"), *flags], cwd=WORK,
                          capture_output=True, text=True)


helpfull = train_py("--import=my_method", "--helpfull").stdout
print("\n".join(line for line in helpfull.splitlines() if "smoothing" in line.lower()))
refused = train_py("--import=my_method", "--method=pgd_at_smooth", "--smoothing=1.5")
print(f"exit code {refused.returncode}: {refused.stderr.strip()}")
