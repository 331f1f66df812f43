"""The math of each training objective, as short pure functions on logits.

Every function returns per-example values (shape [B]) unless it says otherwise, so the caller
decides how to average them (under a distribution strategy: over the global batch). Nothing here
knows about models, attacks or training.

Dtypes: every function computes in the dtype of its logits (`as_float`): float64 logits give
float64 losses (`keras.config.set_floatx("float64")`), float32 logits float32, and only half-precision
logits (a mixed-precision model whose logits layer is not float32) are widened to float32.
"""

from __future__ import annotations

import tensorflow as tf

_HALF = (tf.float16, tf.bfloat16)


def as_float(values: tf.Tensor) -> tf.Tensor:
    """`values` in the dtype losses are computed in: its own float dtype, float16/bfloat16 widened
    to float32 (softmax and logarithms of half-precision logits underflow)."""
    values = tf.convert_to_tensor(values)
    return tf.cast(values, tf.float32) if values.dtype in _HALF else values


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy CE(z, y) per example."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=as_float(logits)
    )


def kl_divergence(p_logits: tf.Tensor, q_logits: tf.Tensor) -> tf.Tensor:
    """KL(p || q) per example, with p = softmax(p_logits), q = softmax(q_logits).

    Computed from log-softmax on both sides: softmax underflows in float32 and a log of it gives
    NaN gradients (TRADES, Zhang et al. 2019, eq. 5, uses this KL with p the natural prediction).
    """
    log_p = tf.nn.log_softmax(as_float(p_logits))
    log_q = tf.nn.log_softmax(as_float(q_logits))
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def true_class_mask(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """[B, K] boolean mask of the true class (tf.one_hot cannot make booleans directly)."""
    return tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1]) > 0.5


def mart_boosted_cross_entropy(adv_logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """MART's boosted CE (Wang et al. 2020, eq. 6): CE(z', y) - log(1 - max_{k != y} p'_k).

    The constants 1.0001 and 1e-12 are the reference implementation's guards against log(0).
    """
    adv_probs = tf.nn.softmax(as_float(adv_logits))
    true_mask = true_class_mask(labels, adv_probs)
    best_wrong = tf.reduce_max(tf.where(true_mask, -tf.ones_like(adv_probs), adv_probs), axis=-1)
    return cross_entropy(adv_logits, labels) - tf.math.log(1.0001 - best_wrong + 1e-12)


def mart_weighted_kl(clean_logits: tf.Tensor, adv_logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """MART's regularizer (Wang et al. 2020, eq. 7): KL(p(x) || p(x')) * (1 - p_y(x)) per example."""
    clean_probs = tf.nn.softmax(as_float(clean_logits))
    true_prob = tf.gather(clean_probs, tf.cast(labels, tf.int32), batch_dims=1)
    return kl_divergence(clean_logits, adv_logits) * (1.0000001 - true_prob)


def logit_mae(clean_logits: tf.Tensor, adv_logits: tf.Tensor) -> tf.Tensor:
    """Mean absolute error between clean and adversarial logits, per example (MIMAE-AT's MAE term)."""
    diff = as_float(clean_logits) - as_float(adv_logits)
    return tf.reduce_mean(tf.abs(diff), axis=-1)


def prediction_joint(p: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
    """Unnormalized joint of two prediction variables over a batch: sum_i p_i q_i^T, shape [K, K].

    A sum over examples, so the global-batch joint is the all-reduce SUM of per-replica joints.
    """
    return tf.matmul(as_float(p), as_float(q), transpose_a=True)


def mutual_information(joint: tf.Tensor, symmetric: bool = True, floor: float = 1e-8) -> tf.Tensor:
    """Mutual information I(P) of the K x K joint from `prediction_joint` (a scalar in [0, log K]).

    The estimator of Invariant Information Clustering (Ji et al. 2019, eq. 3): normalize the batch
    joint, optionally symmetrize it, floor it to keep the logarithms finite, and sum
    P_ij (log P_ij - log P_i. - log P_.j). MIMAE-AT (Atsague et al. 2021) maximizes this between the
    natural and adversarial predictions; their exact estimator is not public (see docs/methods.md).
    """
    joint = joint / tf.reduce_sum(joint)
    if symmetric:
        joint = 0.5 * (joint + tf.transpose(joint))
    joint = tf.maximum(joint, floor)
    row = tf.reduce_sum(joint, axis=1, keepdims=True)
    col = tf.reduce_sum(joint, axis=0, keepdims=True)
    return tf.reduce_sum(joint * (tf.math.log(joint) - tf.math.log(row) - tf.math.log(col)))
