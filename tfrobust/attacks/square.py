"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020), l-inf, score-based.

A black-box attack: it reads only the logits (the margin z_y - max_{k != y} z_k, which it drives
below zero) and never a gradient, so a model that masks its gradients does not slow it down. The
evaluation uses it as a gradient-masking check: if it finds more errors than the white-box attacks,
the gradients are not to be trusted.

Algorithm (paper, Algorithm 2 with the l-inf sampling of Algorithm 3): start from vertical stripes
x + eps * s (one random sign per column and channel); at each query draw, per example, a random
square window of side round(sqrt(p * H * W)) (1 <= side <= H - 1) and set the perturbation inside
it to +-eps per channel; keep the candidate if the margin decreased. p follows the published
schedule, p_init halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000 queries,
rescaled to `n_queries`. Examples already misclassified are not changed any more and, with
`compact` (the default, as in the reference code), not queried any more either.

Batched and traceable: one `tf.while_loop` over queries (stops early when the whole batch is
misclassified), stateless randomness from `seed`. Two deliberate differences from the reference
code: window corners are drawn from all H - side + 1 positions (the reference's exclusive upper
bound never places a window on the last row or column), and a window draw that would change
nothing (same signs as the current perturbation there) is replaced by its negation instead of being
redrawn in a loop.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfrobust import rng
from tfrobust.attacks import objectives
from tfrobust.attacks.ball import per_example, project
from tfrobust.attacks.objectives import LogitsFn
from tfrobust.attacks.subbatch import examples_to_attack, gather_examples, scatter_examples

# Queries (out of 10,000) after which the reference schedule halves p.
P_SCHEDULE_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(p_init: float, iteration: tf.Tensor, n_queries: int) -> tf.Tensor:
    """The fraction of pixels a window covers at `iteration` (the published schedule)."""
    it = tf.cast(iteration, tf.int64) * 10000 // max(int(n_queries), 1)
    halvings = tf.reduce_sum(tf.cast(it > tf.constant(P_SCHEDULE_POINTS, tf.int64), tf.float32))
    return p_init / tf.pow(2.0, halvings)


def _margin(logits_fn: LogitsFn, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """max_{k != y} z_k - z_y: positive when misclassified (the attack maximizes it)."""
    return objectives.margin(logits_fn(x), y)


def square_run(
    logits_fn: LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: tf.Tensor,
    n_queries: int,
    p_init: float,
    seed: tf.Tensor,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    compact: bool = True,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One Square run: (adversarial x, misclassified [B], best margin [B]); eps broadcastable.

    `compact`: each query goes to the examples not yet misclassified only (as in the reference
    code), on sub-batches of dynamic size that XLA cannot compile; without it every query covers
    the whole batch and misclassified examples discard theirs.
    """
    if x.shape.rank != 4 or None in x.shape[1:]:
        raise ValueError(f"Square attack needs NHWC images with a static shape, got {x.shape}")
    _, height, width, channels = x.shape
    n_features = height * width * channels
    def clip(v, x, eps):
        return tf.clip_by_value(project(v, x, eps, "linf"), clip_min, clip_max)

    init_seed, loop_seed = tf.unstack(rng.split(seed, 2))
    stripes = tf.sign(rng.uniform(init_seed, x[:, :1, :, :], -1.0, 1.0))
    x_best = clip(x + eps * tf.where(stripes == 0, 1.0, stripes), x, eps)
    margin_best = _margin(logits_fn, x_best, y)
    rows = tf.range(height)[None, :, None, None]
    cols = tf.range(width)[None, None, :, None]

    def cond(i, x_best, margin_best):
        return tf.logical_and(i < n_queries - 1, tf.reduce_any(margin_best <= 0.0))

    def body(i, x_best, margin_best):
        index = examples_to_attack(margin_best <= 0.0, compact)
        x_i, y_i, eps_i = tf.gather(x, index), tf.gather(y, index), gather_examples(eps, index)
        x_best_i, margin_best_i = tf.gather(x_best, index), tf.gather(margin_best, index)
        batch = tf.shape(x_i)[0]
        step_seed = rng.fold_in(loop_seed, i)
        seeds = rng.split(step_seed, 3)
        p = p_selection(p_init, i, n_queries)
        side = tf.cast(tf.round(tf.sqrt(p * n_features / channels)), tf.int32)
        side = tf.clip_by_value(side, 1, max(min(height, width) - 1, 1))
        corner_h = tf.random.stateless_uniform([batch], seeds[0], 0, height - side + 1, tf.int32)
        corner_w = tf.random.stateless_uniform([batch], seeds[1], 0, width - side + 1, tf.int32)
        top, left = corner_h[:, None, None, None], corner_w[:, None, None, None]
        window = tf.logical_and(
            tf.logical_and(rows >= top, rows < top + side),
            tf.logical_and(cols >= left, cols < left + side),
        )  # [n, H, W, 1]
        signs = tf.sign(tf.random.stateless_uniform(
            tf.stack([batch, 1, 1, channels]), seeds[2], -1.0, 1.0))
        signs = tf.where(signs == 0, 1.0, signs)
        current = x_best_i - x_i

        def candidate(sign):
            return clip(x_i + tf.where(window, eps_i * sign, current), x_i, eps_i)

        x_new = candidate(signs)
        changed = tf.reduce_any(tf.abs(x_new - x_best_i) > 1e-7, axis=[1, 2, 3])
        x_new = tf.where(changed[:, None, None, None], x_new, candidate(-signs))

        margin = _margin(logits_fn, x_new, y_i)
        improved = tf.logical_and(margin_best_i <= 0.0, margin > margin_best_i)
        x_best = scatter_examples(x_best, index, tf.where(improved[:, None, None, None], x_new, x_best_i))
        margin_best = scatter_examples(margin_best, index, tf.where(improved, margin, margin_best_i))
        return i + 1, x_best, margin_best

    _, x_best, margin_best = tf.while_loop(cond, body, (tf.constant(0), x_best, margin_best))
    return tf.stop_gradient(x_best), margin_best > 0.0, margin_best


def square(
    logits_fn: LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: float | tf.Tensor,
    norm: str = "linf",
    n_queries: int = 1000,
    p_init: float = 0.8,
    restarts: int = 1,
    seed: int | tf.Tensor | None = None,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    compact: bool = True,
) -> tf.Tensor:
    """l-inf Square attack with `n_queries` model queries per example and restart.

    Returns, per example, a misclassified point if a run found one, else the point with the
    largest margin over the runs. `compact`: query only the examples not yet misclassified
    (dynamic shapes; pass False under XLA).
    """
    if norm != "linf":
        raise ValueError(f"the Square attack here supports only norm='linf', got {norm!r}")
    if int(n_queries) < 1 or int(restarts) < 1:
        raise ValueError(f"n_queries and restarts must be >= 1, got {n_queries} and {restarts}")
    if not 0.0 < p_init <= 1.0 or math.isnan(p_init):
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    eps_b = per_example(eps, x)
    seed = rng.as_seed(seed)
    best = None
    for r in range(int(restarts)):
        out = square_run(logits_fn, x, y, eps=eps_b, n_queries=int(n_queries), p_init=p_init,
                         seed=rng.fold_in(seed, r), clip_min=clip_min, clip_max=clip_max,
                         compact=compact)
        if best is None:
            best = out
            continue
        take = tf.logical_or(tf.logical_and(out[1], tf.logical_not(best[1])),
                             tf.logical_and(tf.equal(out[1], best[1]), out[2] > best[2]))
        best = (tf.where(take[:, None, None, None], out[0], best[0]),
                tf.logical_or(best[1], out[1]), tf.where(take, out[2], best[2]))
    return best[0]
