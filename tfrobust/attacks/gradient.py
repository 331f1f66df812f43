"""Gradient attacks: projected gradient descent (Madry et al. 2018) and FGSM, l-inf and l2.

Pure functions of `(logits_fn, x, y)`: `logits_fn` maps a batch of images to float32 logits and
decides the model's mode (evaluation attacks pass `training=False`). eps and step size may be
Python numbers, scalar tensors or per-example [B] tensors. Everything is traceable inside
`tf.function`, with or without XLA, and draws its randomness from a stateless seed.
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from tfrobust import rng
from tfrobust.attacks import objectives as objectives_lib

LogitsFn = Callable[[tf.Tensor], tf.Tensor]
NORMS = ("linf", "l2")
RANDOM_STARTS = ("uniform", "normal", "corner", "none")
_TINY = 1e-12


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def per_example(value: float | tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """A scalar or [B] value broadcastable against the batch `x` (shape [B, 1, 1, 1] or [])."""
    value = tf.cast(tf.convert_to_tensor(value), x.dtype)
    if value.shape.rank == 1:
        value = tf.reshape(value, [-1] + [1] * (x.shape.rank - 1))
    return value


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


def l2_norm(v: tf.Tensor) -> tf.Tensor:
    """Per-example l2 norm, shape [B, 1, 1, 1]."""
    axes = list(range(1, v.shape.rank))
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True) + _TINY)


def misclassified(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """[B] bool: the prediction differs from the label."""
    return tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))


def project(x_adv: tf.Tensor, x: tf.Tensor, eps: tf.Tensor, norm: str) -> tf.Tensor:
    """Project `x_adv` onto the eps ball around `x` (no pixel clipping)."""
    delta = x_adv - x
    if norm == "linf":
        delta = tf.clip_by_value(delta, -eps, eps)
    else:
        delta = delta * tf.minimum(1.0, eps / l2_norm(delta))
    return x + delta


def ascent_direction(grad: tf.Tensor, norm: str) -> tf.Tensor:
    """The steepest-ascent direction of unit size for the norm: sign for l-inf, g/||g|| for l2."""
    if norm == "linf":
        return tf.sign(grad)
    return grad / l2_norm(grad)


def random_start(
    x: tf.Tensor, eps: tf.Tensor, norm: str, kind: str, seed: tf.Tensor, std: float = 0.001
) -> tf.Tensor:
    """A starting point near `x`.

    'uniform': uniform in the ball (Madry); 'normal': x + std N(0, I) (TRADES and MART);
    'corner': an l-inf corner x + eps sign(N(0, I)), or for l2 a Gaussian direction scaled to norm
    eps (ATENT); 'none': x itself.
    """
    if kind == "none":
        return x
    noise = rng.normal(seed, x)
    if kind == "normal":
        return x + std * noise
    if kind == "corner":
        return x + eps * (tf.sign(noise) if norm == "linf" else noise / l2_norm(noise))
    if kind == "uniform":
        if norm == "linf":
            return x + rng.uniform(seed, x, -1.0, 1.0) * eps
        # Uniform in the l2 ball: a Gaussian direction and a radius eps * u^(1/d).
        dim = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), x.dtype)
        u = rng.uniform(rng.fold_in(seed, 1), l2_norm(noise))
        return x + noise / l2_norm(noise) * eps * tf.pow(u, 1.0 / dim)
    raise ValueError(f"unknown random start {kind!r}; expected one of {RANDOM_STARTS}")


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
    logits_fn: LogitsFn,
    objective: objectives_lib.Objective,
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


def pgd(
    logits_fn: LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: float | tf.Tensor,
    step_size: float | tf.Tensor,
    steps: int | tf.Tensor,
    norm: str = "linf",
    objective: objectives_lib.Objective = objectives_lib.cross_entropy,
    start: str = "uniform",
    start_std: float = 0.001,
    seed: int | tf.Tensor | None = None,
    keep_best: bool = False,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> tf.Tensor:
    """Adversarial examples by `steps` projected steepest-ascent steps on `objective`.

    With `keep_best` every example returns the iterate with the highest objective seen (one more
    forward pass; evaluation wants this), otherwise the last iterate (the training recipes).
    """
    check_norm(norm)
    x = tf.convert_to_tensor(x, tf.float32)
    eps = per_example(eps, x)
    step_size = per_example(step_size, x)
    seed = rng.as_seed(seed)
    x_adv = tf.clip_by_value(project(random_start(x, eps, norm, start, seed, start_std), x, eps, norm),
                             clip_min, clip_max)

    def step(x_adv):
        grad, loss, _ = input_gradient(logits_fn, objective, x_adv, y)
        moved = x_adv + step_size * ascent_direction(grad, norm)
        return tf.clip_by_value(project(moved, x, eps, norm), clip_min, clip_max), loss

    if not keep_best:
        _, x_adv = tf.while_loop(
            lambda i, _: i < steps, lambda i, xa: (i + 1, step(xa)[0]), (tf.constant(0), x_adv)
        )
        return tf.stop_gradient(x_adv)

    def body(i, x_adv, best, best_loss):
        moved, loss = step(x_adv)
        better = loss > best_loss
        best = tf.where(tf.reshape(better, [-1] + [1] * (x.shape.rank - 1)), x_adv, best)
        return i + 1, moved, best, tf.maximum(loss, best_loss)

    neg_inf = tf.fill(tf.shape(y), -float("inf"))
    _, x_adv, best, best_loss = tf.while_loop(
        lambda i, *_: i < steps, body, (tf.constant(0), x_adv, x_adv, neg_inf)
    )
    last_loss = objective(logits_fn(x_adv), y)
    better = tf.reshape(last_loss > best_loss, [-1] + [1] * (x.shape.rank - 1))
    return tf.stop_gradient(tf.where(better, x_adv, best))


def fgsm(
    logits_fn: LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: float | tf.Tensor,
    norm: str = "linf",
    objective: objectives_lib.Objective = objectives_lib.cross_entropy,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> tf.Tensor:
    """Fast gradient (sign) method (Goodfellow et al. 2015): one full-size step from `x`."""
    return pgd(logits_fn, x, y, eps=eps, step_size=eps, steps=1, norm=norm, objective=objective,
               start="none", clip_min=clip_min, clip_max=clip_max)
