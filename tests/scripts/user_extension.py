"""A user's module as `runners/train.py --import=user_extension` imports it (tests/test_extension.py):
it registers a training method, PGD-AT on label-smoothed targets, and a model factory, a small CNN
with batch norm. Like a user's module it imports no TensorFlow until a model is built or a step runs,
so the runner still checks every flag before TensorFlow starts.
"""

from __future__ import annotations

import dataclasses

from tfrobust import methods, models
from tfrobust.lazy import lazy_import
from tfrobust.settings import setting

tf = lazy_import("tensorflow")
keras = lazy_import("keras")
losses = lazy_import("tfrobust.losses")


@methods.register
@dataclasses.dataclass(frozen=True)
class PgdAtSmooth(methods.Method):
    """PGD-AT (Madry et al. 2018) whose cross-entropy on the PGD examples targets labels smoothed by
    `smoothing` (Szegedy et al. 2016): (1 - s) CE(z, y) + s mean_k CE(z, k)."""

    smoothing: float = setting(0.1, "Label smoothing of the adversarial cross-entropy.", low=0, high=1,
                               high_open=True)

    name = "pgd_at_smooth"
    term_names = ("adv_ce", "smooth")

    def attack_inputs(self, ctx, x, y):
        return self.pgd(ctx, x, y, start="uniform", clip_start=True)

    def loss(self, ctx, x, y, x_adv):
        logits = ctx.logits(x_adv, training=True)
        ce = losses.cross_entropy(logits, y)  # the library's per-example CE
        smooth = -tf.reduce_mean(tf.nn.log_softmax(logits), axis=1)
        return methods.LossOutput(per_example=(1 - self.smoothing) * ce + self.smoothing * smooth,
                                  terms={"adv_ce": ce, "smooth": smooth}, adv_logits=logits)


@models.register("bn_cnn", min_input_size=8)
def build_bn_cnn(input_shape, num_classes, *, mean=None, std=None):
    """A conv-BN-ReLU CNN for 8x8 inputs."""
    inputs = keras.Input(input_shape)
    x = inputs
    if mean is not None or std is not None:  # the train split's statistics (train.py's --normalize)
        channels = input_shape[-1]
        std = std or [1.0] * channels
        x = keras.layers.Normalization(mean=mean or [0.0] * channels, variance=[s * s for s in std])(x)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="bn_cnn")
