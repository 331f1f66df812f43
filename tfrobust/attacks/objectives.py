"""What an attack maximizes: functions `(logits, labels) -> per-example loss` ([B]), and the
model an attack differentiates: a `LogitsFn` mapping a batch of images to logits (the compute dtype:
float32, or float64 under `keras.config.set_floatx("float64")`).

Objectives that need more than the adversarial logits (the clean prediction) are built by a
factory that closes over it, so every attack sees the same two-argument signature; the targeted
DLR takes its target classes as a third argument and APGD-T closes over them.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from tfrobust import losses

# A batch of images -> logits in the compute dtype; it decides the model's mode (evaluation attacks run the
# model with training=False).
LogitsFn = Callable[[tf.Tensor], tf.Tensor]
Objective = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

cross_entropy: Objective = losses.cross_entropy


def logits_in(logits: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """`logits` in the dtype an attack computes in (its images' dtype): a float16/bfloat16 model under
    mixed precision, or a float32 model fed float64 images, gives narrower logits, widened here
    exactly; logits already in `dtype` are returned as they are. FAB-T and Square cast nothing else."""
    logits = tf.convert_to_tensor(logits)
    return logits if logits.dtype == dtype else tf.cast(logits, dtype)


def margin(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Carlini-Wagner margin max_{k != y} z_k - z_y per example (positive when misclassified)."""
    logits = losses.as_float(logits)
    true_mask = losses.true_class_mask(labels, logits)
    true_logit = tf.reduce_sum(tf.where(true_mask, logits, tf.zeros_like(logits)), axis=-1)
    other_best = tf.reduce_max(tf.where(true_mask, tf.constant(-float("inf"), logits.dtype), logits), axis=-1)
    return other_best - true_logit


def _sorted_logits(logits: tf.Tensor, count: int) -> tf.Tensor:
    """The `count` largest logits per example, largest first (shape [B, count])."""
    return tf.math.top_k(losses.as_float(logits), k=count, sorted=True).values


def dlr(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Difference of logits ratio (Croce & Hein 2020, eq. 6), the quantity APGD-DLR maximizes.

    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12) with z_pi the logits sorted in decreasing
    order; positive when misclassified, invariant to shifting and rescaling the logits. Needs at
    least 3 classes.
    """
    logits = losses.as_float(logits)
    top = _sorted_logits(logits, 3)
    return margin(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: tf.Tensor, labels: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Targeted DLR (Croce & Hein 2020, eq. 7), maximized by APGD-T.

    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12) for the target class t. Needs at least
    4 classes.
    """
    logits = losses.as_float(logits)
    top = _sorted_logits(logits, 4)
    true_logit = tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)
    target_logit = tf.gather(logits, tf.cast(targets, tf.int32), batch_dims=1)
    scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12
    return -(true_logit - target_logit) / scale


def kl_from(clean_logits: tf.Tensor) -> Objective:
    """KL(p(x) || p(x')) to a fixed clean prediction: the TRADES attack objective."""
    clean_logits = tf.stop_gradient(clean_logits)
    return lambda logits, labels: losses.kl_divergence(clean_logits, logits)
