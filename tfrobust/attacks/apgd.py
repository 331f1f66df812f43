"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1): APGD-CE and the targeted APGD-T, l-inf and l2.

Pure, traceable functions of `(logits_fn, x, y)` like the PGD in `pgd.py`, with the same projection,
ascent direction and random start (`ball.py`) and input gradient (`gradients.py`). The iteration is
a `tf.while_loop` (so the evaluation can compile one attack per batch shape), eps may be a scalar or
per-example [B] tensor, randomness is stateless from `seed`.

Per example the attack keeps the best objective value seen and its point, and returns a
misclassified iterate if any iterate was misclassified, otherwise the point with the highest
objective. Schedule (as in the paper and its reference code): initial step 2 eps, momentum 0.75
(none on the first step), checkpoints (`checkpoints`) at fractions p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) of the iterations; at a checkpoint the step size of
an example halves and it restarts from its best point when
  condition 1: the objective increased in at most rho = 0.75 of the steps since the last
               checkpoint (the reference's `check_oscillation`: count <= rho * interval; the paper
               writes `<`: `strict_rho=True`), or
  condition 2: its step size was not halved at the last checkpoint and its best objective did not
               improve since then (as in the reference code, condition 2 cannot fire at the first
               checkpoint).
Like the reference code, the momentum term after a restart is taken from the point before it, and
the first step of the first interval counts as an increase when its objective is above 0 (the
reference compares it with a not yet written, zero entry of its loss history; for CE that is
almost always an increase, for the DLR losses only when the start is already misclassified);
`compare_start=True` compares it with the objective at the random start instead.
Unlike it, the loop stops early once every example of the batch is misclassified (the result is
the same: a misclassified example keeps its misclassified point).

Restarts and APGD-T's target classes run as in AutoAttack: examples the model already
misclassifies are not attacked, and each run attacks only the examples no earlier run fooled
(`compact=True`, dynamic sub-batches; `compact=False` keeps static shapes for XLA).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from tfrobust import losses, rng
from tfrobust.attacks import ball, gradients, objectives, subbatch

APGD_LOSSES = ("ce", "dlr")


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j (0 < w_j <= steps) at which APGD may halve its step size.

    Integer form of p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), as in the
    reference code: the first interval has int(0.22 N) steps, each next one int(0.03 N) fewer, at
    least int(0.06 N) (each at least 1).
    """
    first, shrink, least = (max(int(f * steps), 1) for f in (0.22, 0.03, 0.06))
    points, at, length = [], 0, first
    while at + length <= steps:
        at += length
        points.append(at)
        length = max(length - shrink, least)
    return points


def _expand(mask: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    return tf.reshape(mask, [-1] + [1] * (like.shape.rank - 1))


def apgd_run(
    logits_fn: objectives.LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: tf.Tensor,
    steps: int,
    norm: str,
    objective: objectives.Objective,
    seed: tf.Tensor,
    rho: float = 0.75,
    momentum: float = 0.75,
    strict_rho: bool = False,
    compare_start: bool = False,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One APGD run from AutoAttack's random start (on the ball's surface, `ball.random_start`):
    (adversarial x, misclassified [B], best objective [B]).

    `eps` is already per-example-broadcastable (see `ball.per_example`); `steps` a Python int.
    `strict_rho` and `compare_start`: the paper's condition 1 (`increases < rho * interval`) and an
    increase on the first step measured against the start; both default to the reference code
    (`<=`, against 0), see the module docstring and docs/methods.md.
    """
    steps = int(steps)
    # Iterations (1-based) after which the step size may halve; at one, `since` is the length of the
    # interval that ends there.
    points = checkpoints(steps)
    halving_points = tf.constant(points, tf.int32, shape=[len(points)])

    def clip(v):
        return tf.clip_by_value(ball.project(v, x, eps, norm), clip_min, clip_max)

    x_adv = clip(ball.random_start(x, eps, norm, "sphere", seed))  # the reference's start
    grad, loss, logits = gradients.input_gradient(logits_fn, objective, x_adv, y)
    fooled = subbatch.misclassified(logits, y)
    batch_shape = tf.concat([tf.shape(x)[:1], tf.ones([x.shape.rank - 1], tf.int32)], axis=0)
    step_size = 2.0 * eps * tf.ones(batch_shape, x.dtype)  # per example, [B, 1, 1, 1]
    zeros_b = tf.zeros_like(loss, tf.int32)

    state = dict(
        i=tf.constant(0),
        x_adv=x_adv,
        x_old=x_adv,
        grad=grad,
        step=step_size,
        x_best=x_adv,
        grad_best=grad,
        loss_best=loss,
        x_fooled=x_adv,
        fooled=fooled,
        prev_loss=loss if compare_start else tf.zeros_like(loss),
        increases=zeros_b,
        since=tf.constant(0),
        loss_best_ckpt=loss,
        reduced_ckpt=tf.ones_like(fooled),
    )

    def cond(s):
        return tf.logical_and(s["i"] < steps, tf.reduce_any(tf.logical_not(s["fooled"])))

    def body(s):
        a = tf.where(s["i"] > 0, ball.like(momentum, x), ball.like(1.0, x))
        x_cur = s["x_adv"]
        z = clip(x_cur + s["step"] * ball.ascent_direction(s["grad"], norm))
        x_new = clip(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - s["x_old"]))
        grad, loss, logits = gradients.input_gradient(logits_fn, objective, x_new, y)

        now_fooled = subbatch.misclassified(logits, y)
        x_fooled = tf.where(_expand(now_fooled, x), x_new, s["x_fooled"])
        fooled = tf.logical_or(s["fooled"], now_fooled)

        increases = s["increases"] + tf.cast(loss > s["prev_loss"], tf.int32)
        better = loss > s["loss_best"]
        better_x = _expand(better, x)
        x_best = tf.where(better_x, x_new, s["x_best"])
        grad_best = tf.where(better_x, grad, s["grad_best"])
        loss_best = tf.where(better, loss, s["loss_best"])

        since = s["since"] + 1
        at_ckpt = tf.reduce_any(tf.equal(halving_points, s["i"] + 1))
        count, bound = tf.cast(increases, x.dtype), rho * tf.cast(since, x.dtype)
        cond1 = count < bound if strict_rho else count <= bound
        cond2 = tf.logical_and(tf.logical_not(s["reduced_ckpt"]), s["loss_best_ckpt"] >= loss_best)
        halve = tf.logical_and(at_ckpt, tf.logical_or(cond1, cond2))
        halve_x = _expand(halve, x)

        return dict(
            i=s["i"] + 1,
            x_adv=tf.where(halve_x, x_best, x_new),
            x_old=x_cur,
            grad=tf.where(halve_x, grad_best, grad),
            step=tf.where(halve_x, s["step"] / 2.0, s["step"]),
            x_best=x_best,
            grad_best=grad_best,
            loss_best=loss_best,
            x_fooled=x_fooled,
            fooled=fooled,
            prev_loss=loss,
            increases=tf.where(at_ckpt, zeros_b, increases),
            since=tf.where(at_ckpt, 0, since),
            loss_best_ckpt=tf.where(at_ckpt, loss_best, s["loss_best_ckpt"]),
            reduced_ckpt=tf.where(at_ckpt, halve, s["reduced_ckpt"]),
        )

    (s,) = tf.while_loop(cond, lambda s: (body(s),), (state,))
    x_out = tf.where(_expand(s["fooled"], x), s["x_fooled"], s["x_best"])
    return tf.stop_gradient(x_out), s["fooled"], s["loss_best"]


def _runs(run_fn, x: tf.Tensor, fooled: tf.Tensor, runs: int, compare_loss: bool,
          compact: bool = True) -> tf.Tensor:
    """`runs` calls of `run_fn(r, index)` on the examples at positions `index` of the batch,
    merged per example; `fooled` [B] marks the examples the clean input already misclassifies.

    With `compact`, a run attacks only the examples that neither the clean input nor an earlier
    run fooled: as in AutoAttack, an example leaves the attack once it is misclassified (for APGD-T
    on a half-robust model this skips about half of the work of every target after the first).
    Those sub-batches have a dynamic size, which XLA cannot compile; without `compact` every run
    attacks the whole batch (static shapes) and a fooled example keeps its earlier point: the same
    attack, with other random draws (they depend on the sub-batch). An example no run fooled keeps
    the first run's point, or with `compare_loss` the highest-loss point of all runs (the targeted
    losses of different targets are not comparable). The loop stops once every example is fooled.
    """
    def cond(r, x_b, f_b, l_b):
        return tf.logical_and(r < runs, tf.reduce_any(tf.logical_not(f_b)))

    def body(r, x_b, f_b, l_b):
        index = subbatch.examples_to_attack(tf.logical_not(f_b), compact)
        x_n, f_n, l_n = run_fn(r, index)
        x_old, f_old, l_old = (tf.gather(v, index) for v in (x_b, f_b, l_b))
        take = f_n | tf.equal(r, 0)  # every attacked example takes the first run's point
        if compare_loss:
            take |= l_n > l_old
        take &= tf.logical_not(f_old)
        return (r + 1,
                subbatch.scatter_examples(x_b, index, tf.where(_expand(take, x_n), x_n, x_old)),
                subbatch.scatter_examples(f_b, index, f_old | f_n),
                subbatch.scatter_examples(l_b, index, tf.where(take, l_n, l_old)))

    loss = tf.fill(tf.shape(fooled), tf.constant(-float("inf"), x.dtype))
    _, x_b, _, _ = tf.while_loop(cond, body, (tf.constant(0), x, fooled, loss))
    return x_b


def _inputs(x, y, eps, seed) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(images in the compute dtype, int32 labels, per-example eps, stateless seed), as both APGD
    entry points take them."""
    x = ball.as_images(x)
    return x, tf.cast(y, tf.int32), ball.per_example(eps, x), rng.as_seed(seed)


def _run_on_examples(logits_fn: objectives.LogitsFn, x: tf.Tensor, y: tf.Tensor, eps_b: tf.Tensor,
                     seed: tf.Tensor, objective_of: Callable[[tf.Tensor, tf.Tensor], objectives.Objective],
                     **options) -> Callable:
    """The `run_fn(r, index)` of `_runs`: run r of `apgd_run` on the examples `index`, seeded
    fold_in(seed, r), on the objective `objective_of(r, index)` (APGD-T: run r's target class)."""
    def run(r, index):
        return apgd_run(logits_fn, tf.gather(x, index), tf.gather(y, index),
                        eps=subbatch.gather_examples(eps_b, index), objective=objective_of(r, index),
                        seed=rng.fold_in(seed, r), **options)

    return run


def apgd(
    logits_fn: objectives.LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: float | tf.Tensor,
    norm: str = "linf",
    loss: str = "ce",
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    strict_rho: bool = False,
    compare_start: bool = False,
    seed: int | tf.Tensor | None = None,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    compact: bool = True,
) -> tf.Tensor:
    """Untargeted APGD on cross-entropy ('ce', APGD-CE) or DLR ('dlr', APGD-DLR).

    `restarts` runs from independent random starts; per example the result is a
    misclassified point if any run found one, else the highest-loss point over the runs. An
    example the model already misclassifies is returned as it is. `compact`: attack only the
    examples not yet fooled (dynamic shapes; pass False under XLA), see `_runs`.
    """
    ball.check_norm(norm)
    if loss not in APGD_LOSSES:
        raise ValueError(f"unknown APGD loss {loss!r}; expected one of {APGD_LOSSES}")
    if int(steps) < 1 or int(restarts) < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    x, y, eps_b, seed = _inputs(x, y, eps, seed)
    objective = objectives.cross_entropy if loss == "ce" else objectives.dlr
    run = _run_on_examples(logits_fn, x, y, eps_b, seed, lambda r, index: objective, steps=steps, norm=norm,
                           rho=rho, momentum=momentum, strict_rho=strict_rho, compare_start=compare_start,
                           clip_min=clip_min, clip_max=clip_max)
    fooled = subbatch.misclassified(tf.stop_gradient(logits_fn(x)), y)
    return _runs(run, x, fooled, int(restarts), compare_loss=True, compact=compact)


def apgd_targeted(
    logits_fn: objectives.LogitsFn,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    eps: float | tf.Tensor,
    norm: str = "linf",
    steps: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    strict_rho: bool = False,
    compare_start: bool = False,
    seed: int | tf.Tensor | None = None,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    compact: bool = True,
) -> tf.Tensor:
    """APGD-T: APGD on the targeted DLR loss, one run per target class (times `restarts`).

    The targets of an example are the `n_target_classes` classes other than y with the highest
    clean logits, in that order (capped at K - 1); needs K >= 4 classes. A misclassified point from
    any run is kept; an example the model already misclassifies is returned as it is. `compact`:
    each target attacks only the examples no earlier target fooled (dynamic shapes; pass False
    under XLA), see `_runs`.
    """
    ball.check_norm(norm)
    if int(steps) < 1 or int(restarts) < 1 or int(n_target_classes) < 1:
        raise ValueError("steps, restarts and n_target_classes must be >= 1")
    x, y, eps_b, seed = _inputs(x, y, eps, seed)
    clean_logits = tf.stop_gradient(losses.as_float(logits_fn(x)))
    num_classes = clean_logits.shape[-1]
    if num_classes is None:
        raise ValueError("APGD-T needs a static number of classes in the logits")
    if num_classes < 4:
        raise ValueError(f"APGD-T's targeted DLR loss needs at least 4 classes, got {num_classes}")
    n_targets = min(int(n_target_classes), num_classes - 1)
    others = tf.where(tf.one_hot(y, num_classes) > 0.5, tf.constant(-float("inf"), clean_logits.dtype), clean_logits)
    targets = tf.math.top_k(others, k=n_targets).indices  # [B, n_targets]
    restarts = int(restarts)

    def objective_of(r, index):  # run r attacks the (r // restarts)-th target of each example
        target = tf.gather(tf.gather(targets, index), r // restarts, axis=1)
        return lambda logits, labels: objectives.dlr_targeted(logits, labels, target)

    run = _run_on_examples(logits_fn, x, y, eps_b, seed, objective_of, steps=steps, norm=norm, rho=rho,
                           momentum=momentum, strict_rho=strict_rho, compare_start=compare_start,
                           clip_min=clip_min, clip_max=clip_max)
    fooled = subbatch.misclassified(clean_logits, y)
    return _runs(run, x, fooled, n_targets * restarts, compare_loss=False, compact=compact)
