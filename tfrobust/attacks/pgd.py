"""Projected gradient descent (Madry et al. 2018, eq. 2.1 and Sec. 2.1) and FGSM (Goodfellow et al.
2015), l-inf and l2.

Pure functions of `(logits_fn, x, y)`: `logits_fn` maps a batch of images to logits and
decides the model's mode (evaluation attacks pass `training=False`). eps and step size may be
Python numbers, scalar tensors or per-example [B] tensors. Everything is traceable inside
`tf.function`, with or without XLA, and draws its randomness from a stateless seed. One step:

    x'_{t+1} = clip_[clip_min, clip_max](Proj_{B(x, eps)}(x'_t + step_size * d(grad_x' objective)))

with d the steepest-ascent direction of the norm (`ball.ascent_direction`). Images and the
computation are in `keras.config.floatx()` (`ball.as_images`): float32, or float64 end to end.

The start x'_0 = Proj_{B(x, eps)}(random start) is clipped to the pixel range with `clip_start`
(Madry's code, and every evaluation attack); the TRADES and MART references take their first
gradient at the unclipped x + 0.001 N(0, I) and clip only from the first step on
(`clip_start=False`). The result is clipped either way.
"""

from __future__ import annotations

import tensorflow as tf

from tfrobust import rng
from tfrobust.attacks import ball, gradients, objectives


def pgd(
    logits_fn: objectives.LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: float | tf.Tensor,
    step_size: float | tf.Tensor,
    steps: int | tf.Tensor,
    norm: str = "linf",
    objective: objectives.Objective = objectives.cross_entropy,
    start: str = "uniform",
    start_std: float = 0.001,
    clip_start: bool = True,
    seed: int | tf.Tensor | None = None,
    keep_best: bool = False,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    unroll: bool = False,
) -> tf.Tensor:
    """Adversarial examples by `steps` projected steepest-ascent steps on `objective`.

    With `keep_best` every example returns the iterate with the highest objective seen (one more
    forward pass; evaluation wants this), otherwise the last iterate (the training recipes).
    With `clip_start=False` the first gradient is taken at the start point even where it leaves
    [clip_min, clip_max] (the TRADES and MART references); every step's result is clipped.

    `unroll` (with `steps` a Python int, without `keep_best`): the steps as a Python loop, one copy
    of the step per iteration in the traced graph, instead of a `tf.while_loop`. Same result; on a
    CPU with oneDNN it avoids a slow kernel: oneDNN's graph rewrite replaces a max-pool gradient by
    its own kernel only when it sees the forward max-pool's rewritten node, and inside while-loop
    bodies that failed in some processes and not others (measured, SmallCNN batch 128: the attack's
    20 MaxPoolGrad ran the generic kernel at 10-20 ms each instead of oneDNN's 1-2 ms, 15-30% of a
    PGD-10 step), while the unrolled graph got oneDNN's kernel in every run. The cost: a graph and
    a trace that grow with `steps`.
    """
    ball.check_norm(norm)
    x = ball.as_images(x)
    eps = ball.per_example(eps, x)
    step_size = ball.per_example(step_size, x)
    seed = rng.as_seed(seed)
    x_adv = ball.project(ball.random_start(x, eps, norm, start, seed, start_std), x, eps, norm)
    if clip_start:
        x_adv = tf.clip_by_value(x_adv, clip_min, clip_max)

    def step(x_adv):
        moved, loss = ascent_step(logits_fn, x_adv, y, step_size=step_size, norm=norm, objective=objective)
        return tf.clip_by_value(ball.project(moved, x, eps, norm), clip_min, clip_max), loss

    if not keep_best:
        if unroll and isinstance(steps, int):
            for _ in range(steps):
                x_adv = step(x_adv)[0]
        else:
            _, x_adv = tf.while_loop(
                lambda i, _: i < steps, lambda i, xa: (i + 1, step(xa)[0]), (tf.constant(0), x_adv)
            )
        # A no-op after a step; with steps=0 and clip_start=False it clips the start (as the
        # TRADES reference does before its loss).
        return tf.stop_gradient(tf.clip_by_value(x_adv, clip_min, clip_max))

    def body(i, x_adv, best, best_loss):
        moved, loss = step(x_adv)
        better = loss > best_loss
        best = tf.where(tf.reshape(better, [-1] + [1] * (x.shape.rank - 1)), x_adv, best)
        return i + 1, moved, best, tf.maximum(loss, best_loss)

    neg_inf = tf.fill(tf.shape(y), tf.constant(-float("inf"), x.dtype))
    _, x_adv, best, best_loss = tf.while_loop(
        lambda i, *_: i < steps, body, (tf.constant(0), x_adv, x_adv, neg_inf)
    )
    last_loss = objective(logits_fn(x_adv), y)
    better = tf.reshape(last_loss > best_loss, [-1] + [1] * (x.shape.rank - 1))
    return tf.stop_gradient(tf.clip_by_value(tf.where(better, x_adv, best), clip_min, clip_max))


def ascent_step(
    logits_fn: objectives.LogitsFn,
    x_adv: tf.Tensor,
    y: tf.Tensor,
    *,
    step_size: float | tf.Tensor,
    norm: str = "linf",
    objective: objectives.Objective = objectives.cross_entropy,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One steepest-ascent step, neither projected nor clipped: (x' + step_size * d(grad_x' objective),
    per-example objective at x'). PGD's step before its projection; the single-step training attacks
    (FGSM-RS, N-FGSM) project and clip it their own way."""
    step_size = ball.per_example(step_size, x_adv)
    grad, loss, _ = gradients.input_gradient(logits_fn, objective, x_adv, y)
    return x_adv + step_size * ball.ascent_direction(grad, norm), loss


def fgsm(
    logits_fn: objectives.LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: float | tf.Tensor,
    norm: str = "linf",
    objective: objectives.Objective = objectives.cross_entropy,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> tf.Tensor:
    """Fast gradient (sign) method (Goodfellow et al. 2015): one full-size step from `x`,
    x' = clip(x + eps * d(grad_x objective)): PGD with one step of size eps and no random start."""
    return pgd(logits_fn, x, y, eps=eps, step_size=eps, steps=1, norm=norm, objective=objective,
               start="none", clip_min=clip_min, clip_max=clip_max)
