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
# # Quick start in Python
#
# TRADES (Zhang et al. 2019) on scikit-learn's 8x8 digits with Keras' `fit`, its TensorBoard
# scalars read back, AutoAttack's standard version on 100 test images, and the classifier exported
# as a SavedModel and reloaded in plain TensorFlow. It runs in about two minutes on two CPU cores.
#
# Everything it writes goes to a temporary directory.

# %%
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from IPython.display import Image, Markdown, display

from tfrobust import data, evaluation, export, methods, models
from tfrobust.robust_model import RobustModel

keras.utils.set_random_seed(0)
WORK = tempfile.mkdtemp(prefix="tfrobust-quickstart-")

# %% [markdown]
# ## Data, model, method
#
# `data.datasets` gives `tf.data` pipelines of float32 images in [0, 1]; `info` holds the image
# shape, the class count and the train split's per-channel mean and std, which `build_model` puts
# inside the model. The method is TRADES with its KL weight `beta`, attacking with a 5-step PGD in
# the l-inf ball of radius 0.1.

# %%
train, val, test, info = data.datasets("digits", batch_size=64, validation_size=200)
classifier = models.build_model("tiny_cnn", info.image_shape, info.num_classes, mean=info.mean, std=info.std,
                                seed=0)
attack = methods.AttackConfig(eps=0.1, step_size=0.025, steps=5)
model = RobustModel(classifier, methods.build("trades", attack, {"beta": 6.0}))
model.compile(optimizer=keras.optimizers.Adam(2e-3))
print(info)

# %% [markdown]
# ## Training with `fit`
#
# The attack runs inside the compiled train step. Each loss term of the method (`natural`,
# `robust`) is a metric, next to the clean and adversarial accuracy; validation attacks with PGD in
# inference mode. Keras' own TensorBoard callback writes them all.

# %%
logs = os.path.join(WORK, "logs")
history = model.fit(train, epochs=3, steps_per_epoch=info.steps_per_epoch, validation_data=val, verbose=2,
                    callbacks=[keras.callbacks.TensorBoard(logs)])
scores = model.evaluate(test, return_dict=True, verbose=0)  # clean and PGD-20 accuracy
print({k: round(float(v), 4) for k, v in scores.items()})


# %% [markdown]
# ## The TensorBoard scalars, read back
#
# `tensorboard --logdir LOGS` shows them; here they are read from the event files.

# %%
def scalars(directory: str) -> dict[str, list[float]]:
    """Tag -> values, in step order, of the scalar summaries in `directory`'s event files."""
    out: dict[str, list[float]] = {}
    for name in sorted(os.listdir(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return out


train_scalars = scalars(os.path.join(logs, "train"))
validation_scalars = scalars(os.path.join(logs, "validation"))
for tag in ("epoch_natural", "epoch_robust", "epoch_adv_accuracy"):
    print(f"train      {tag:20s}", np.round(train_scalars[tag], 4))
print(f"validation {'epoch_adv_accuracy':20s}", np.round(validation_scalars["epoch_adv_accuracy"], 4))

# %% [markdown]
# ## AutoAttack on 100 test images
#
# `evaluation.autoattack` is AutoAttack's standard version (Croce and Hein 2020): APGD-CE, APGD-T,
# FAB-T and Square, each run on the examples still robust after the ones before it, here at two
# eps so the plot has a line. The model is called in inference mode. (The sanity checks against
# gradient masking, `checks="all"`, the default, take longer; `runners/evaluate.py` runs them.)

# %%
splits = data.load("digits")
x_test = splits.x_test[:100].astype(np.float32)
y_test = splits.y_test[:100]
report = evaluation.autoattack(classifier, (x_test, y_test), eps=[0.1, 0.2], checks=None)
display(Markdown(report.to_markdown()))
display(Image(report.plot(os.path.join(WORK, "accuracy_vs_eps.png"))))
robust = dict(zip(report.eps_values, report.worst_case))
print(f"clean {report.clean_accuracy:.2f}, AutoAttack robust accuracy at eps 0.1: {robust[0.1]:.2f}")

# %% [markdown]
# ## Export, and reload in plain TensorFlow
#
# The SavedModel's `serve` takes float32 `[N, H, W, C]` images in [0, 1] and returns `logits` and
# `probabilities`. Loading it needs TensorFlow only, not tfrobust.

# %%
path = export.export_classifier(classifier, os.path.join(WORK, "savedmodel"))
reloaded = tf.saved_model.load(path)
x_all = splits.x_test.astype(np.float32)
saved_logits = reloaded.serve(tf.constant(x_all))["logits"].numpy()
keras_logits = classifier.predict(x_all, verbose=0)
same = np.array_equal(saved_logits.argmax(1), keras_logits.argmax(1))
print(f"{len(x_all)} test images: same predictions {same}, "
      f"largest logit difference {np.abs(saved_logits - keras_logits).max():.2e}")
