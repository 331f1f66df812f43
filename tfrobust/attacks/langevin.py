"""One step of ATENT's Langevin sampler (Jagatap et al., "Adversarially Robust Learning via
Entropic Regularization"; reference code github.com/GauriJagatap/StochAT, `adversarial/functional.py`).

ATENT samples x' from p(x') proportional to exp(beta [CE(z(x'), y) - (gamma/2) ||x' - x||^2]) by
stochastic gradient Langevin dynamics. One step from x'_{l-1} with input gradient g:

    l-inf: x'_l = x'_{l-1} + step * sign(g) + noise * sqrt(2 step) * N(0, I)
    l2:    x'_l = x'_{l-1} + step * g / ||g||_2 + gamma * (x - x'_{l-1}) + noise * sqrt(2 step) * N(0, I)

then (optionally) a projection onto the eps ball around x, and always a clip to the pixel range.
As in the reference, the l2 pull-back `gamma` is not part of the l-inf step.

The functions here are pure and traceable; the sampler loop lives in `tfrobust.methods.atent`,
which needs the weight gradient of every iterate.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfrobust import rng
from tfrobust.attacks import ball


def langevin_step(
    x_adv: tf.Tensor,
    x: tf.Tensor,
    grad: tf.Tensor,
    *,
    step_size: float | tf.Tensor,
    noise: float | tf.Tensor,
    gamma: float | tf.Tensor = 0.0,
    norm: str = "linf",
    seed: tf.Tensor | None = None,
    eps: float | tf.Tensor | None = None,
    project: bool = True,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> tf.Tensor:
    """x'_l from x'_{l-1} = `x_adv` and g = `grad` (the input gradient of CE at `x_adv`).

    step_size, eps: Python numbers, scalar tensors or per-example [B] tensors.
    noise: the Langevin noise scale (the reference's `ep`); the Gaussian draw, from the stateless
        `seed`, is skipped when it is the Python number 0.
    gamma: l2 pull-back towards x (l2 only, as in the reference).
    project: whether to project onto the eps ball (needs `eps`); the result is clipped to
        [clip_min, clip_max] either way.
    """
    ball.check_norm(norm)
    step = ball.per_example(step_size, x_adv)
    moved = x_adv + step * ball.ascent_direction(grad, norm)
    if norm == "l2" and not (isinstance(gamma, (int, float)) and gamma == 0):
        moved += ball.like(gamma, x_adv) * (x - x_adv)
    if not (isinstance(noise, (int, float)) and noise == 0):
        if seed is None:
            raise ValueError("langevin_step with noise needs a seed")
        moved += noise_scale(noise, step_size, x_adv) * rng.normal(seed, x_adv)
    if project:
        if eps is None:
            raise ValueError("langevin_step with project=True needs eps")
        moved = ball.project(moved, x, ball.per_example(eps, x_adv), norm)
    return tf.clip_by_value(moved, clip_min, clip_max)


def noise_scale(noise: float | tf.Tensor, step_size: float | tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """The Langevin noise's scale ep sqrt(2 step), in x's dtype, rounded as the reference rounds it:
    `ep * np.sqrt(2 * step)` in float64 (StochAT's `adversarial/functional.py`), then once to the
    images' dtype when it multiplies the float32 draw. Computing it in float32 instead (ep, then
    sqrt(2 step), then their product) can differ in the last bit and moves every noisy iterate.
    Tensors (a per-example or warmed-up step) are widened to float64 for the same computation."""
    if isinstance(noise, (int, float)) and isinstance(step_size, (int, float)):
        return ball.like(noise * math.sqrt(2.0 * step_size), x)
    wide = [tf.cast(tf.convert_to_tensor(v, dtype_hint=tf.float64), tf.float64) for v in (noise, step_size)]
    scale = wide[0] * tf.sqrt(2.0 * wide[1])
    return tf.cast(scale if scale.shape.rank != 1 else tf.reshape(scale, [-1] + [1] * (x.shape.rank - 1)), x.dtype)


def langevin_start(
    x: tf.Tensor, eps: float | tf.Tensor, norm: str, kind: str, seed: tf.Tensor,
    clip: bool = False, clip_min: float = 0.0, clip_max: float = 1.0,
) -> tf.Tensor:
    """x'_0: ATENT's random start ('corner': an l-inf corner x + eps sign(N(0, I)), or for l2 a
    Gaussian direction of norm eps; 'none': x).

    Not clipped by default: the reference (`random_perturbation` in StochAT's `adversarial/utils.py`)
    takes the first gradient at x + eps sign(N(0, I)) even where it leaves [0, 1]; each Langevin
    step clips its result. `clip`: clip the start to [clip_min, clip_max] as well."""
    if kind not in ("corner", "none"):
        raise ValueError(f"unknown ATENT start {kind!r}; expected 'corner' or 'none'")
    eps = ball.per_example(eps, x)
    start = ball.random_start(x, eps, norm, kind, seed)
    return tf.clip_by_value(start, clip_min, clip_max) if clip else start


def iterate_weights(steps: int, alpha: float) -> list[float]:
    """ATENT's weights alpha (1 - alpha)^(L - l) of iterates l = 1..L (the reference's running
    `loss = (1 - alpha) loss + alpha CE_l`)."""
    return [alpha * math.pow(1.0 - alpha, steps - l) for l in range(1, steps + 1)]
