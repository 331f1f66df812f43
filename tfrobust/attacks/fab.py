"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted
adversarial examples with a fast adaptive boundary attack", ICML; Algorithm 1), l-inf and l2, as
AutoAttack's standard version runs it (reference: fra31/auto-attack, `autoattack/fab_base.py`,
`fab_pt.py`, `fab_projections.py`; `autoattack.py` `set_version('standard')`).

FAB minimizes the norm of a perturbation that misclassifies x. Against a target class t, at the
current iterate x1 it linearizes g(z) = z_t(z) - z_y(z) (logits) to the hyperplane
    pi = {v : g(x1) + <grad g(x1), v - x1> = 0}
and computes the minimal-norm steps d1 from x1 and d2 from the original x0 to pi intersected with the
box [0, 1]^N (`project_linf`, `project_l2`, paper eq. 5). With the biased step (paper eq. 7)
    alpha = min(max(||d1|| / (||d1|| + ||d2||), 0), alpha_max)        (norms at least 1e-8)
    x1 <- clip((1 - alpha) (x1 + eta d1) + alpha (x0 + eta d2), 0, 1)
(eta = 1.05 overshoots the linearized boundary). If x1 is misclassified (any class but y), the
smallest-norm such point so far is kept and x1 moves back towards x0: x1 <- x0 + beta (x1 - x0),
beta = 0.9. n_iter = 100 iterations, without early stop (the norm keeps shrinking).

Targets, restarts and the eps check follow AutoAttack: the targets of an example are the
`n_target_classes` = 9 classes other than y with the highest clean logits, one run per target (times
`restarts`, the first from x0 itself, later ones from a random point at half of eps, as
`use_rand_start=(counter > 0)`); each run attacks only the examples that the clean input and earlier
runs did not fool, and an example counts as fooled only if the smallest-norm misclassified point is
within eps (FAB itself is not bounded). An example not fooled is returned unchanged.

Gradients are exact (the per-example rescaling used under float16 by the ascent attacks would
change the linearization). Deterministic with one restart; `seed` only feeds the random starts.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfrobust import rng
from tfrobust.attacks.apgd import _runs
from tfrobust.attacks.ball import as_images, check_norm, like
from tfrobust.attacks.gradients import input_gradient
from tfrobust.attacks.objectives import LogitsFn, logits_in
from tfrobust.attacks.subbatch import gather_examples, misclassified

_BIG = 1e12  # `fab_projections.py`'s stand-in for "this coordinate never reaches the box"


def _binary_search(accept, n_features: int, rows: tf.Tensor) -> tf.Tensor:
    """The reference's bisection over sorted positions 0..N-1: ceil(log2 N) halvings of [lb, ub],
    moving lb up to the midpoint where `accept(mid)` [n] holds, else ub down. Returns lb [n] int32."""
    lb = tf.zeros([rows], tf.int32)
    ub = tf.fill([rows], n_features - 1)
    for _ in range(math.ceil(math.log2(n_features)) if n_features > 1 else 0):
        mid = (lb + ub) // 2
        ok = accept(mid)
        lb, ub = tf.where(ok, mid, lb), tf.where(ok, ub, mid)
    return lb


def _at(values: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """values[i, index[i]] for [n, M] values and [n] index."""
    return tf.gather(values, index[:, None], batch_dims=1)[:, 0]


def project_linf(t: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The step d of least l-inf norm with <w, t + d> = b and 0 <= t + d <= 1 (rows of [n, N] t, w).

    Reference: `fab_projections.projection_linf`. After flipping (w, b) so that <w, t> >= b, every
    coordinate moves towards the box face that lowers <w, .> (d_i = -sign(w_i) min(lambda, p_i),
    p_i its room to that face), and lambda is the smallest value giving <w, d> = b - <w, t>: sorting
    p in decreasing order, <w, d(lambda)> = sb_k - s_k lambda on the k-th interval, with
    s_k = sum_{j<=k} |w_j| and sb_k = <w, d_full> + sum_{j<=k} |w_j| p_j; a bisection finds k.
    If the target is out of reach inside the box, d is the full move to the box corner.
    """
    n_features = t.shape[1]
    rows = tf.shape(t)[0]
    one = tf.ones_like(b)  # +-1 in t's dtype (a bare 1.0 would be a float32 constant)
    flip = tf.where(tf.reduce_sum(w * t, axis=1) - b >= 0.0, one, -one)
    w, b = w * flip[:, None], b * flip
    a = tf.cast(w < 0.0, t.dtype)  # 1: move up to 1, 0: move down to 0
    nonzero = tf.cast(tf.not_equal(w, 0.0), t.dtype)
    d = (a - t) * nonzero
    p = a - t * (2.0 * a - 1.0)
    order = tf.argsort(p, axis=1)  # increasing room
    b = b - tf.reduce_sum(w * t, axis=1)
    b0 = tf.reduce_sum(w * d, axis=1)
    order_desc = tf.reverse(order, axis=[1])
    ws = tf.gather(w, order_desc, batch_dims=1)
    s = tf.cumsum(tf.abs(ws), axis=1)
    sb = tf.cumsum(-ws * tf.gather(d, order_desc, batch_dims=1), axis=1) + b0[:, None]

    b2 = sb[:, -1] - s[:, -1] * _at(p, order[:, 0])
    every = b - b2 > 0.0  # lambda <= min_i p_i: every coordinate moves by lambda
    some = tf.logical_and(b - b0 > 0.0, tf.logical_not(every))

    def accept(mid):
        room = _at(p, _at(order, n_features - 1 - mid))
        return b - (_at(sb, mid) - _at(s, mid) * room) > 0.0

    lb = _binary_search(accept, n_features, rows)
    lam_every = tf.maximum((b - sb[:, -1]) / -s[:, -1], 0.0)[:, None]
    lam_some = tf.maximum((b - _at(sb, lb)) / -_at(s, lb), 0.0)[:, None]
    d_every = (2.0 * a - 1.0) * lam_every
    d_some = tf.minimum(lam_some, d) * a + tf.maximum(-lam_some, d) * (1.0 - a)
    d = tf.where(every[:, None], d_every, tf.where(some[:, None], d_some, d))
    return d * nonzero


def project_l2(t: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The step d of least l2 norm with <w, t + d> = b and 0 <= t + d <= 1 (rows of [n, N] t, w).

    Reference: `fab_projections.projection_l2`. With c = <w, t> - b >= 0 (after flipping w), the
    solution is d_i = -w_i min(lambda, r_i), r_i >= 0 the lambda at which coordinate i reaches the
    box; <w, d(lambda)> is piecewise linear in lambda with breaks at the sorted r, and a bisection
    over the breaks finds the piece where it equals -c:
        lambda = (s_k + c) / ws_k + r_(k),   ws_k = sum of w_i^2 over the coordinates not yet at the box.
    If the box does not bind (c <= ||w||^2 r_(0)), d = -c w / ||w||^2; if even the box corner does
    not reach the hyperplane, d is that corner. Coordinates with |w_i| < 1e-8 do not move.
    """
    n_features = t.shape[1]
    rows = tf.shape(t)[0]
    c = tf.reduce_sum(w * t, axis=1) - b
    flip = tf.where(c >= 0.0, tf.ones_like(c), -tf.ones_like(c))
    w, c = w * flip[:, None], c * flip
    moves = tf.abs(w) > 1e-8
    r = tf.clip_by_value(tf.maximum(t / w, (t - 1.0) / w), -_BIG, _BIG)
    r = tf.where(moves, r, _BIG)
    r = tf.where(tf.equal(r, -_BIG), tf.constant(_BIG, r.dtype), r)
    order = tf.argsort(r, axis=1)
    rs = tf.gather(r, order, batch_dims=1)
    rs2 = tf.concat([rs[:, 1:], tf.zeros_like(rs[:, :1])], axis=1)
    rs = tf.where(tf.equal(rs, _BIG), tf.zeros_like(rs), rs)
    rs2 = tf.where(tf.equal(rs2, _BIG), tf.zeros_like(rs2), rs2)
    w_sq = tf.gather(tf.square(w), order, batch_dims=1)
    w5 = tf.reduce_sum(w_sq, axis=1, keepdims=True)
    ws = w5 - tf.cumsum(w_sq, axis=1)
    d = tf.where(moves, -r * w, 0.0)
    s = tf.concat([-w5 * rs[:, :1], tf.cumsum((rs - rs2) * ws, axis=1) - w5 * rs[:, :1]], axis=1)

    free = s[:, 0] + c < 0.0  # the unconstrained projection stays in the box
    unreachable = tf.reduce_sum(d * w, axis=1) + c > 0.0
    some = tf.logical_not(tf.logical_or(free, unreachable))
    lb = _binary_search(lambda mid: _at(s, mid) + c > 0.0, n_features, rows)

    d_free = -(c / w5[:, 0])[:, None] * w
    ws_lb = _at(ws, lb)
    zero = tf.zeros_like(ws_lb)
    alpha = tf.where(tf.equal(ws_lb, 0.0), zero, (_at(s, lb) + c) / ws_lb + _at(rs, lb))[:, None]
    d_some = tf.where(alpha > r, d, -alpha * w)
    d = tf.where(free[:, None], d_free, tf.where(some[:, None], d_some, d))
    return tf.where(moves, d, 0.0)


def _norm(v: tf.Tensor, norm: str) -> tf.Tensor:
    """Per-row norm of [n, N] v."""
    if norm == "linf":
        return tf.reduce_max(tf.abs(v), axis=1)
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=1))


def fab_run(
    logits_fn: LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    target: tf.Tensor,
    *,
    norm: str,
    n_iter: int = 100,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    start_eps: tf.Tensor | None = None,
    seed: tf.Tensor | None = None,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One targeted FAB run (`fab_base.attack_single_run`): (smallest-norm misclassified point
    found, or x where none was; its norm [B], +inf where none). `start_eps` [B] (with `seed`): start
    from a random point at norm start_eps / 2 (l-inf: x + start_eps/2 u / ||u||_inf, u uniform in
    [-1, 1]; l2: a Gaussian direction), else from x. The box is [clip_min, clip_max]."""
    check_norm(norm)
    shape = tf.shape(x)
    rows = shape[0]
    n_features = int(math.prod(x.shape[1:]))
    lo, span = clip_min, clip_max - clip_min
    x0 = tf.reshape(x, [rows, n_features])
    project = project_linf if norm == "linf" else project_l2

    def objective(logits, labels):
        logits = logits_in(logits, x.dtype)
        return _at(logits, target) - _at(logits, labels)  # z_t - z_y

    x1 = x0
    if start_eps is not None:
        if norm == "linf":
            u = rng.uniform(seed, x0, -1.0, 1.0)
            u = u / tf.reduce_max(tf.abs(u), axis=1, keepdims=True)
        else:
            u = rng.normal(seed, x0)
            u = u / tf.sqrt(tf.reduce_sum(tf.square(u), axis=1, keepdims=True))
        x1 = tf.clip_by_value(x0 + start_eps[:, None] * u * 0.5, clip_min, clip_max)

    def body(i, x1, adv, best):
        grad, g, _ = input_gradient(logits_fn, objective, tf.reshape(x1, shape), y, rescale=False)
        w = tf.reshape(grad, [rows, n_features])
        b = -g + tf.reduce_sum(w * x1, axis=1)
        # The projections work in [0, 1]^N: v = lo + span v' maps the box [lo, lo + span] there,
        # <w, v> = b becomes <span w, v'> = b - lo sum(w), and a step d' becomes span d'.
        b = b - lo * tf.reduce_sum(w, axis=1)
        points = (tf.concat([x1, x0], axis=0) - lo) / span
        steps = project(points, tf.concat([w, w], axis=0) * span, tf.concat([b, b], axis=0)) * span
        d1, d2 = steps[:rows], steps[rows:]
        size = tf.maximum(_norm(steps, norm), 1e-8)
        a1, a2 = size[:rows], size[rows:]
        alpha = tf.clip_by_value(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
        x1 = tf.clip_by_value((x1 + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha, clip_min, clip_max)

        is_adv = misclassified(logits_fn(tf.reshape(x1, shape)), y)
        dist = _norm(x1 - x0, norm)
        better = tf.logical_and(is_adv, dist < best)
        adv = tf.where(better[:, None], x1, adv)
        best = tf.where(better, dist, best)
        x1 = tf.where(is_adv[:, None], x0 + (x1 - x0) * beta, x1)
        return i + 1, x1, adv, best

    best = tf.fill([rows], tf.constant(float("inf"), x.dtype))
    _, _, adv, best = tf.while_loop(lambda i, *_: i < n_iter, body, (tf.constant(0), x1, x0, best))
    return tf.stop_gradient(tf.reshape(adv, shape)), best


def fab_targeted(
    logits_fn: LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: float | tf.Tensor,
    norm: str = "linf",
    n_iter: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    seed: int | tf.Tensor | None = None,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    compact: bool = True,
) -> tf.Tensor:
    """FAB-T with AutoAttack's standard settings: per example a misclassified point within `eps`
    (scalar or [B]) if one of the runs found one, else x unchanged.

    Runs: for each of the `n_target_classes` highest-logit classes other than y (capped at K - 1),
    `restarts` runs (random start from the second on); each attacks only the examples no earlier
    run (nor the clean input) fooled within eps. `compact`: those examples as a dynamic sub-batch
    (as the reference; XLA cannot compile it), else the whole batch every run.
    """
    check_norm(norm)
    if int(n_iter) < 1 or int(restarts) < 1 or int(n_target_classes) < 1:
        raise ValueError("n_iter, restarts and n_target_classes must be >= 1")
    if x.shape.rank is None or None in x.shape[1:]:
        raise ValueError(f"FAB needs inputs with a static shape after the batch axis, got {x.shape}")
    x = as_images(x)
    y = tf.cast(y, tf.int32)
    eps_b = tf.broadcast_to(tf.reshape(like(eps, x), [-1]), tf.shape(y))  # [B]
    seed = rng.as_seed(seed)
    clean_logits = tf.stop_gradient(logits_in(logits_fn(x), x.dtype))
    num_classes = clean_logits.shape[-1]
    if num_classes is None or num_classes < 2:
        raise ValueError(f"FAB-T needs a static number of classes >= 2, got {num_classes}")
    n_targets = min(int(n_target_classes), num_classes - 1)
    others = tf.where(tf.one_hot(y, num_classes) > 0.5, tf.constant(-float("inf"), x.dtype), clean_logits)
    targets = tf.math.top_k(others, k=n_targets).indices  # [B, n_targets], highest first
    restarts = int(restarts)

    def run(r, index):
        x_i, y_i, eps_i = tf.gather(x, index), tf.gather(y, index), gather_examples(eps_b, index)
        target = tf.gather(tf.gather(targets, index), r // restarts, axis=1)
        random_start = r % restarts > 0

        def go(start_eps):
            return fab_run(logits_fn, x_i, y_i, target, norm=norm, n_iter=int(n_iter), alpha_max=alpha_max,
                           eta=eta, beta=beta, start_eps=start_eps, seed=rng.fold_in(seed, r),
                           clip_min=clip_min, clip_max=clip_max)

        if restarts > 1:
            adv, dist = tf.cond(random_start, lambda: go(eps_i), lambda: go(None))
        else:
            adv, dist = go(None)
        fooled = dist <= eps_i  # +inf where no misclassified point was found
        adv = tf.where(tf.reshape(fooled, [-1] + [1] * (x.shape.rank - 1)), adv, x_i)
        return adv, fooled, tf.zeros_like(dist)

    fooled = misclassified(clean_logits, y)
    return _runs(run, x, fooled, n_targets * restarts, compare_loss=False, compact=compact)
