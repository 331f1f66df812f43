"""The input gradient every gradient attack steps along, and its rescale under mixed float16.

`input_gradient` differentiates the summed per-example objective of a `LogitsFn` w.r.t. the input;
attacks use only its per-example direction (sign(g) or g / ||g||), which lets it rescale each
example's gradient where float16 would flush it to zero (docs/scale.md, "Float16 underflow in the attacks").
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfrobust.attacks import objectives


@tf.custom_gradient
def _unit_rows(logits: tf.Tensor):
    """Identity forward; backward divides each example's logit gradient by its largest entry.

    Under `mixed_float16` a confident example's logit gradient (often below 1e-7) underflows to
    exactly zero once it enters the float16 layers, and the attack cannot move it. Every attack
    step uses sign(g) or g / ||g|| per example, so scaling an example's gradient by a positive
    number changes no step, only where the float16 backward pass can represent it.
    """

    def grad(upstream: tf.Tensor) -> tf.Tensor:
        largest = tf.reduce_max(tf.abs(upstream), axis=-1, keepdims=True)
        return tf.math.divide_no_nan(upstream, largest)

    return tf.identity(logits), grad


def _computes_in_float16() -> bool:
    return keras.mixed_precision.global_policy().compute_dtype == "float16"


def input_gradient(
    logits_fn: objectives.LogitsFn,
    objective: objectives.Objective,
    x: tf.Tensor,
    y: tf.Tensor,
    rescale: bool | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Gradient of the summed per-example objective w.r.t. `x`; also the loss and the logits.

    With `rescale` (default: when the Keras policy computes in float16) each example's gradient is
    rescaled by a positive factor at the float32 logits (`_unit_rows`), so float16 layers do not
    flush it to zero; its direction is kept, its size is not. Off in float32, where it is exact:
    an attack that runs batch norm in training mode couples the examples, and a per-example
    rescale would tilt the coupled direction.
    """
    if rescale is None:
        rescale = _computes_in_float16()
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = logits_fn(x)
        loss = objective(_unit_rows(logits) if rescale else logits, y)
    # A model whose output does not depend differentiably on its input (a rounding or quantizing
    # front end: tf.round has no gradient) yields None; attacks treat that as a zero gradient.
    grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return grad, loss, logits
