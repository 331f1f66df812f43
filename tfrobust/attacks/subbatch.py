"""The examples of a batch an attack still works on.

An attack (APGD's restarts and target classes, Square's queries) stops attacking an example once
it is misclassified: it gathers the rows of the
examples still attacked into a sub-batch, attacks those, and scatters the results back. With
`compact=False` the sub-batch is the whole batch, so shapes stay static (XLA needs that).
"""

from __future__ import annotations

import tensorflow as tf


def misclassified(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """[B] bool: the prediction argmax_k z_k differs from the label."""
    return tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))


def examples_to_attack(active: tf.Tensor, compact: bool) -> tf.Tensor:
    """int64 positions of the examples an attack works on next: those where `active` [B] is true
    (`compact`: a dynamic count, which XLA cannot compile), or all of them (static shapes)."""
    if compact:
        return tf.where(active)[:, 0]
    return tf.range(tf.shape(active, out_type=tf.int64)[0])


def gather_examples(value: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """Rows `index` of a per-example value ([B, ...]); a scalar (the same for every example) as it is."""
    return value if value.shape.rank == 0 else tf.gather(value, index)


def scatter_examples(value: tf.Tensor, index: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    """`value` [B, ...] with its rows `index` replaced by `rows` (the inverse of gather_examples)."""
    return tf.tensor_scatter_nd_update(value, index[:, None], rows)
