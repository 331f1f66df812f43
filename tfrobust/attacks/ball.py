"""The threat model's geometry: the l-inf and l2 eps balls around x, their steepest-ascent
directions and the random starting points inside them.

Pure, traceable functions; eps may be a Python number, a scalar tensor or a per-example [B] tensor
(`per_example` makes it broadcastable against the batch).
"""

from __future__ import annotations

from tfrobust.lazy import lazy_import

# Imported on first use: the norm names and `check_norm` are read while flags are checked,
# before TensorFlow is imported (tfrobust.lazy).
keras = lazy_import("keras")
tf = lazy_import("tensorflow")
rng = lazy_import("tfrobust.rng")

NORMS = ("linf", "l2")  # the threat models; config.NORMS is this tuple
RANDOM_STARTS = ("uniform", "sphere", "normal", "corner", "none")
_TINY = 1e-12


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def as_images(x: tf.Tensor) -> tf.Tensor:
    """A batch of images as a tensor of the compute dtype `keras.config.floatx()` (float32, or
    float64 after `keras.config.set_floatx("float64")`; float32 under mixed precision, whose models
    take float32 pixels)."""
    return tf.cast(tf.convert_to_tensor(x), keras.config.floatx())


def like(value: float | tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """`value` as a tensor of x's dtype. A Python number is converted straight to that dtype:
    `tf.cast(0.3, tf.float64)` would round 0.3 to float32 first (a 1e-8 relative error)."""
    return tf.cast(tf.convert_to_tensor(value, dtype_hint=x.dtype), x.dtype)


def per_example(value: float | tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """A scalar or [B] value broadcastable against the batch `x` (shape [B, 1, 1, 1] or []), of x's dtype."""
    value = like(value, x)
    if value.shape.rank == 1:
        value = tf.reshape(value, [-1] + [1] * (x.shape.rank - 1))
    return value


def l2_norm(v: tf.Tensor) -> tf.Tensor:
    """Per-example l2 norm sqrt(sum v^2 + 1e-12), shape [B, 1, 1, 1]."""
    axes = list(range(1, v.shape.rank))
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True) + _TINY)


def project(x_adv: tf.Tensor, x: tf.Tensor, eps: tf.Tensor, norm: str) -> tf.Tensor:
    """Project `x_adv` onto the eps ball around `x` (no pixel clipping).

    l-inf: min(max(x', x - eps), x + eps), the references' arithmetic: TRADES `trades.py`, MART
    `mart.py`, Madry's `pgd_attack.py` (`np.clip(x, x_nat - eps, x_nat + eps)`), StochAT's
    `adversarial/utils.py` `project` (max(min(.)), the same clamp), AutoAttack's `autopgd_base.py`
    and `square.py`. It equals x + clip(x' - x, -eps, eps) in exact arithmetic, but in floating
    point that form rounds twice (x' - x, then x + delta) and differs by one ulp in a fraction of
    the components (in float32, 0.25-1% of them per PGD step on MNIST, issue 22), after which two
    sign-gradient paths drift apart; this form keeps a float32 path on the same gradient signs
    bit for bit on the references' iterates (tests/test_attacks.py).

    l2: x + (x' - x) min(1, eps / ||x' - x||_2).
    """
    if norm == "linf":
        return tf.minimum(tf.maximum(x_adv, x - eps), x + eps)
    delta = x_adv - x
    return x + delta * tf.minimum(1.0, eps / l2_norm(delta))


def ascent_direction(grad: tf.Tensor, norm: str) -> tf.Tensor:
    """The steepest-ascent direction of unit size for the norm: sign for l-inf, g/||g|| for l2."""
    if norm == "linf":
        return tf.sign(grad)
    return grad / l2_norm(grad)


def random_start(
    x: tf.Tensor, eps: tf.Tensor, norm: str, kind: str, seed: tf.Tensor, std: float = 0.001
) -> tf.Tensor:
    """A starting point near `x`.

    'uniform': uniform in the ball (Madry); 'sphere': APGD's start in AutoAttack
    (`autopgd_base.py`, `attack_single_run`), x + eps t / ||t|| with t uniform in [-1, 1] (l-inf)
    or N(0, I) (l2; the same point as 'corner'), on the ball's surface; 'normal': x + std N(0, I)
    (TRADES and MART); 'corner': an l-inf corner x + eps sign(N(0, I)), or for l2 a Gaussian
    direction scaled to norm eps (ATENT); 'none': x itself.
    """
    if kind == "none":
        return x
    if kind == "sphere" and norm == "linf":
        t = rng.uniform(seed, x, -1.0, 1.0)
        return x + eps * t / (tf.reduce_max(tf.abs(t), axis=list(range(1, x.shape.rank)), keepdims=True) + _TINY)
    noise = rng.normal(seed, x)
    if kind == "normal":
        return x + std * noise
    if kind in ("corner", "sphere"):  # for l2 both are a Gaussian direction scaled to norm eps
        return x + eps * (tf.sign(noise) if norm == "linf" else noise / l2_norm(noise))
    if kind == "uniform":
        if norm == "linf":
            return x + rng.uniform(seed, x, -1.0, 1.0) * eps
        # Uniform in the l2 ball: a Gaussian direction and a radius eps * u^(1/d).
        dim = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), x.dtype)
        u = rng.uniform(rng.fold_in(seed, 1), l2_norm(noise))
        return x + noise / l2_norm(noise) * eps * tf.pow(u, 1.0 / dim)
    raise ValueError(f"unknown random start {kind!r}; expected one of {RANDOM_STARTS}")
