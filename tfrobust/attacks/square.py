"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV), l-inf and l2, as AutoAttack runs it
(reference: fra31/auto-attack `autoattack/square.py`, `SquareAttack` with p_init = 0.8,
n_queries = 5000, loss 'margin', `resc_schedule=False`, as `autoattack.py` sets it).

A black-box attack: it reads only the logits, through the margin m(x) = z_y - max_{k != y} z_k,
never a gradient, so a model that masks its gradients does not slow it down. Random search: at each
iteration a candidate is drawn from the current best point and kept if it lowers the margin (or
misclassifies); an example leaves the search once m <= 0, and with `compact` (as the reference) it
is not queried any more. One run makes one query for the start and at most `n_queries` more.

Window side: p, the fraction of the image a window covers, starts at p_init and halves after
iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (`p_selection`; AutoAttack does not
rescale these to `n_queries`, so a 5,000-query run ends at p_init / 128);
    s = round(sqrt(p H W))   (at least 1 for l-inf; for l2 at least 3 and odd), at most min(H, W).
Window corners are floor(u (H - s)) (the reference's `random_int(0, h - s)`: never the last
position, 0 when s = H).

l-inf (paper, Algorithm 2 and 3): start at clip(x + eps v, 0, 1), v a random sign per example,
column and channel (vertical stripes). Per iteration ONE window and ONE sign per channel are drawn
for the whole batch: the candidate sets the window to x +- eps (clip to the eps ball and [0, 1]).

l2 (paper, Algorithm 3 with the l2 sampling): start from a grid of s0 x s0 blocks, s0 = H // 5,
starting at (H - 5 s0) // 2, each the "meta pseudo-gaussian" eta(s0) (two stacked ring patterns of
opposite signs, sum_{k >= d} 1 / (k + 1)^2 at ring distance d; transposed with probability 1/2)
times a random sign per example and channel; the perturbation is scaled to norm eps. Per
iteration two windows W1, W2 (same side s) and one eta(s) orientation are drawn for the whole batch
and a sign per example and channel; per example and channel the new content of W1 is
    (eta(s) sign + delta_W1 / ||delta_W1||) normalized to norm sqrt(max(eps^2 - ||delta||^2, 0) / C
                                                                  + ||delta_{W1 u W2}||^2),
W2 is emptied, and the whole delta is rescaled to norm eps, then clipped to [0, 1].

Restarts (`restarts`, AutoAttack: 1) each attack the examples still correctly classified; an example
returns the first misclassified point found, else x unchanged (as the reference). Traceable: one
`tf.while_loop` over iterations, stateless randomness from `seed`.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfrobust import rng
from tfrobust.attacks import objectives
from tfrobust.attacks.apgd import _runs
from tfrobust.attacks.ball import as_images, check_norm, per_example, project
from tfrobust.attacks.objectives import LogitsFn
from tfrobust.attacks.subbatch import examples_to_attack, gather_examples, misclassified, scatter_examples

# Iterations after which the reference schedule halves p (of a 10,000-query run).
P_SCHEDULE_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_halvings(iteration: tf.Tensor, n_queries: int = 10_000, rescale: bool = False) -> tf.Tensor:
    """How many times p has been halved at `iteration` (0-based), int32. With `rescale` (the
    reference's `resc_schedule`) the iteration is first mapped to int(iteration / n_queries * 10000)."""
    it = tf.cast(iteration, tf.float64)
    if rescale:
        it = tf.floor(it / float(n_queries) * 10000.0)
    return tf.reduce_sum(tf.cast(it > tf.constant(P_SCHEDULE_POINTS, tf.float64), tf.int32))


def p_selection(p_init: float, iteration: tf.Tensor, n_queries: int = 10_000,
                rescale: bool = False) -> tf.Tensor:
    """The fraction of the image a window covers at `iteration`: p_init / 2^halvings (float64, exact)."""
    halvings = tf.cast(p_halvings(iteration, n_queries, rescale), tf.float64)
    return p_init / tf.pow(tf.constant(2.0, tf.float64), halvings)


def window_sides(p_init: float, height: int, width: int, channels: int, norm: str) -> list[int]:
    """The window side after 0, 1, ..., 9 halvings of p (Python ints, the reference's formula and
    float operations: round(sqrt(p * n_features / C)), round half to even)."""
    sides = []
    for k in range(len(P_SCHEDULE_POINTS) + 1):
        s = round(math.sqrt(p_init / 2**k * (channels * height * width) / channels))
        if norm == "linf":
            s = max(s, 1)
        else:
            s = max(s, 3)
            s += 1 - s % 2
        sides.append(min(s, min(height, width)))
    return sides


def _rings(rows: int, cols: int) -> np.ndarray:
    """`eta_rectangles` of the reference (l2): sum_{k=d}^{K-1} 1 / (k + 1)^2 with d the Chebyshev
    distance to the centre (rows // 2, cols // 2), K = max(rows, cols) // 2 + 1; unit l2 norm."""
    i = np.abs(np.arange(rows)[:, None] - rows // 2)
    j = np.abs(np.arange(cols)[None, :] - cols // 2)
    dist = np.maximum(i, j)
    out = np.zeros([rows, cols])
    for k in range(max(rows // 2, cols // 2) + 1):
        out += (dist <= k) / (k + 1) ** 2
    norm = np.sqrt(np.sum(out**2))
    return out / norm if norm > 0 else out


def eta(s: int) -> np.ndarray:
    """The reference's l2 "meta pseudo-gaussian" s x s pattern (before its random transposition):
    rings over the top s // 2 rows, minus rings over the rest, unit l2 norm."""
    out = np.concatenate([_rings(s // 2, s), -_rings(s - s // 2, s)], axis=0)
    return out / np.sqrt(np.sum(out**2))


def _placed(pattern: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    canvas = np.zeros([height + pattern.shape[0], width + pattern.shape[1]])
    canvas[top:top + pattern.shape[0], left:left + pattern.shape[1]] = pattern
    return canvas[:height, :width]


def _l2_init_blocks(height: int, width: int) -> np.ndarray:
    """[blocks, 2, H, W] float64: the reference's l2 starting grid, each block as eta(s0) and transposed
    (a block reaching past the image is cut, where the reference would fail to broadcast)."""
    s = height // 5
    start = (height - 5 * s) // 2
    pattern = eta(s)
    blocks = []
    for bi in range(height // s):
        for bj in range(width // s):
            top, left = start + bi * s, start + bj * s
            blocks.append([_placed(p, top, left, height, width) for p in (pattern, pattern.T)])
    return np.asarray(blocks, np.float64)


# The random draws that make discrete choices (signs, window corners, pattern orientations) are
# float32 uniforms whatever dtype the attack computes in: a float64 stateless draw is another
# stream (other signs, other windows), so keeping them float32 keeps float32 runs exactly as they
# were and makes a float64 run try the same candidates as the float32 run of the same seed. Their
# results (+-1, integer corners, booleans) are exact in any dtype, so no precision is lost.
_DRAW_DTYPE = tf.float32


def _signs(seed: tf.Tensor, shape, dtype: tf.DType) -> tf.Tensor:
    """sign(2u - 1) in `dtype`, u uniform in [0, 1) (drawn in `_DRAW_DTYPE`): the reference's
    `random_choice` (0 only if u = 1/2 exactly)."""
    return tf.cast(tf.sign(2.0 * tf.random.stateless_uniform(shape, seed, dtype=_DRAW_DTYPE) - 1.0), dtype)


def _corner(seed: tf.Tensor, extent: int, side: tf.Tensor) -> tf.Tensor:
    """floor(u (extent - side)): the reference's `random_int(0, extent - side)`, one per batch."""
    u = tf.random.stateless_uniform([], seed, dtype=_DRAW_DTYPE)
    return tf.cast(tf.floor(u * tf.cast(extent - side, _DRAW_DTYPE)), tf.int32)


def _l2_normalize(v: tf.Tensor, axes) -> tf.Tensor:
    return v / (tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True)) + 1e-12)


def square_run(
    logits_fn: LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: tf.Tensor,
    norm: str = "linf",
    n_queries: int = 5000,
    p_init: float = 0.8,
    seed: tf.Tensor,
    rescale_schedule: bool = False,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    compact: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One Square run (`attack_single_run`): (best point [B, H, W, C], its margin z_y - max_other [B],
    <= 0 once misclassified); `eps` broadcastable ([] or [B, 1, 1, 1]).

    `compact`: each query goes to the examples not yet misclassified only (as in the reference), on
    sub-batches of dynamic size that XLA cannot compile; without it every query covers the whole
    batch and misclassified examples discard theirs.
    """
    check_norm(norm)
    if x.shape.rank != 4 or None in x.shape[1:]:
        raise ValueError(f"Square attack needs NHWC images with a static shape, got {x.shape}")
    _, height, width, channels = x.shape
    if norm == "l2" and height < 5:
        raise ValueError(f"the l2 Square attack's start needs images of height >= 5, got {height}")
    sides = tf.constant(window_sides(p_init, height, width, channels, norm), tf.int32)
    rows = tf.range(height)[None, :, None, None]
    cols = tf.range(width)[None, None, :, None]
    init_seed, loop_seed = tf.unstack(rng.split(seed, 2))

    def margin_of(v, labels):
        return -objectives.margin(objectives.logits_in(logits_fn(v), x.dtype), labels)

    def window(top, left, side):
        return tf.cast((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side), x.dtype)

    if norm == "linf":
        draws = rng.uniform(init_seed, tf.zeros(tf.shape(x[:, :1, :, :]), _DRAW_DTYPE))
        stripes = tf.cast(tf.sign(2.0 * draws - 1.0), x.dtype)  # [B, 1, W, C]
        x_best = tf.clip_by_value(x + eps * stripes, clip_min, clip_max)
    else:
        blocks = tf.constant(_l2_init_blocks(height, width), x.dtype)  # [K, 2, H, W]
        orient_seed, sign_seed = tf.unstack(rng.split(init_seed, 2))
        transposed = tf.random.stateless_uniform([blocks.shape[0]], orient_seed, dtype=_DRAW_DTYPE) > 0.5
        chosen = tf.where(transposed[:, None, None], blocks[:, 1], blocks[:, 0])  # [K, H, W]
        signs = _signs(sign_seed, tf.stack([tf.shape(x)[0], blocks.shape[0], channels]), x.dtype)  # [B, K, C]
        delta = tf.einsum("nkc,khw->nhwc", signs, chosen)
        x_best = tf.clip_by_value(x + _l2_normalize(delta, [1, 2, 3]) * eps, clip_min, clip_max)
        etas = np.zeros([len(P_SCHEDULE_POINTS) + 1, 2, height, width], np.float64)
        for k, s in enumerate(window_sides(p_init, height, width, channels, norm)):
            etas[k] = [_placed(p, 0, 0, height, width) for p in (eta(s), eta(s).T)]
        etas = tf.constant(etas, x.dtype)
    margin_best = margin_of(x_best, y)

    def candidate_linf(x_i, x_best_i, eps_i, side, seeds):
        top, left = _corner(seeds[0], height, side), _corner(seeds[1], width, side)
        new = window(top, left, side) * 2.0 * eps_i * _signs(seeds[2], [1, 1, 1, channels], x.dtype)
        return tf.clip_by_value(project(x_best_i + new, x_i, eps_i, "linf"), clip_min, clip_max)

    def candidate_l2(x_i, x_best_i, eps_i, k, side, seeds):
        delta = x_best_i - x_i
        top, left = _corner(seeds[0], height, side), _corner(seeds[1], width, side)
        top2, left2 = _corner(seeds[2], height, side), _corner(seeds[3], width, side)
        w1, w2 = window(top, left, side), window(top2, left2, side)
        norm_w1 = tf.sqrt(tf.reduce_sum(tf.square(delta * w1), axis=[1, 2], keepdims=True))
        norm_image = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=[1, 2, 3], keepdims=True))
        norm_windows = tf.sqrt(tf.reduce_sum(tf.square(delta * tf.maximum(w1, w2)), axis=[1, 2],
                                             keepdims=True))
        transposed = tf.random.stateless_uniform([], seeds[4], dtype=_DRAW_DTYPE) > 0.5
        pattern = tf.gather(etas[k], tf.cast(transposed, tf.int32))
        pattern = tf.roll(pattern, shift=[top, left], axis=[0, 1])[None, :, :, None]  # no wrap: corner <= H - s
        n = tf.shape(x_i)[0]
        new = pattern * _signs(seeds[5], tf.stack([n, 1, 1, channels]), x.dtype) + delta * w1 / (1e-12 + norm_w1)
        scale = tf.sqrt(tf.maximum(tf.square(eps_i) - tf.square(norm_image), 0.0) / channels
                        + tf.square(norm_windows))
        new = _l2_normalize(new, [1, 2]) * scale
        delta = delta * (1.0 - w2)
        delta = delta * (1.0 - w1) + new * w1
        return tf.clip_by_value(x_i + _l2_normalize(delta, [1, 2, 3]) * eps_i, clip_min, clip_max)

    def cond(i, x_best, margin_best):
        return tf.logical_and(i < n_queries, tf.reduce_any(margin_best > 0.0))

    def body(i, x_best, margin_best):
        index = examples_to_attack(margin_best > 0.0, compact)
        x_i, y_i, eps_i = tf.gather(x, index), tf.gather(y, index), gather_examples(eps, index)
        x_best_i, margin_best_i = tf.gather(x_best, index), tf.gather(margin_best, index)
        seeds = rng.split(rng.fold_in(loop_seed, i), 6)
        k = p_halvings(i, n_queries, rescale_schedule)
        side = sides[k]
        if norm == "linf":
            x_new = candidate_linf(x_i, x_best_i, eps_i, side, seeds)
        else:
            x_new = candidate_l2(x_i, x_best_i, eps_i, k, side, seeds)
        margin = margin_of(x_new, y_i)
        improved = (margin < margin_best_i) | (margin <= 0.0)
        improved &= margin_best_i > 0.0  # without `compact`: fooled examples keep their point
        x_best = scatter_examples(x_best, index, tf.where(improved[:, None, None, None], x_new, x_best_i))
        margin_best = scatter_examples(margin_best, index, tf.where(improved, margin, margin_best_i))
        return i + 1, x_best, margin_best

    _, x_best, margin_best = tf.while_loop(cond, body, (tf.constant(0), x_best, margin_best))
    return tf.stop_gradient(x_best), margin_best


def square(
    logits_fn: LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: float | tf.Tensor,
    norm: str = "linf",
    n_queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    rescale_schedule: bool = False,
    seed: int | tf.Tensor | None = None,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    compact: bool = True,
) -> tf.Tensor:
    """Square attack (l-inf or l2) with up to `n_queries` + 1 model queries per example and restart.

    Per example: a misclassified point if a run found one, else x unchanged (as the reference's
    `perturb`). Each restart attacks only the examples still correctly classified. `compact`: query
    only the examples not yet misclassified (dynamic shapes; pass False under XLA).
    `rescale_schedule`: stretch the p schedule to `n_queries` (the reference class's own default;
    AutoAttack, and so this function by default, does not).
    """
    check_norm(norm)
    if int(n_queries) < 1 or int(restarts) < 1:
        raise ValueError(f"n_queries and restarts must be >= 1, got {n_queries} and {restarts}")
    if not 0.0 < p_init <= 1.0 or math.isnan(p_init):
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    x = as_images(x)
    y = tf.cast(y, tf.int32)
    eps_b = per_example(eps, x)
    seed = rng.as_seed(seed)

    def run(r, index):
        x_i, y_i = tf.gather(x, index), tf.gather(y, index)
        x_best, _ = square_run(logits_fn, x_i, y_i, eps=gather_examples(eps_b, index), norm=norm,
                               n_queries=int(n_queries), p_init=p_init, seed=rng.fold_in(seed, r),
                               rescale_schedule=rescale_schedule, clip_min=clip_min, clip_max=clip_max,
                               compact=compact)
        fooled = misclassified(logits_fn(x_best), y_i)
        x_out = tf.where(fooled[:, None, None, None], x_best, x_i)
        return x_out, fooled, tf.zeros_like(y_i, x.dtype)

    fooled = misclassified(tf.stop_gradient(logits_fn(x)), y)
    return _runs(run, x, fooled, int(restarts), compare_loss=False, compact=compact)
