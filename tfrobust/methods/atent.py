"""ATENT (Jagatap et al., "Adversarially Robust Learning via Entropic Regularization"; reference code
github.com/GauriJagatap/StochAT).

ATENT replaces the inner maximization by sampling x' from p(x') proportional to
exp(beta [CE(z(x'), y) - (gamma/2) ||x' - x||^2]) with L steps of stochastic gradient Langevin
dynamics (the paper's SGLD inner loop; `tfrobust.attacks.langevin.langevin_step`), and trains on the
exponentially averaged loss of the iterates (the reference's running
`loss = (1 - alpha) loss + alpha CE(z(x'_l), y)`):

    loss = sum_{l=1..L} alpha (1 - alpha)^(L - l) CE(z(x'_l), y)

The reference keeps all L forward graphs alive and backpropagates once. The loss is linear in the
per-iterate losses, so here each iterate's weighted loss is differentiated on its own inside a
`tf.while_loop` and the weight gradients are summed: memory does not grow with L, the update is
the same (up to float rounding).

L and the step size are the threat model's `attack.steps` and `attack.step_size`; the input
gradients are taken in the attack's model mode (`attack.bn_mode`; the reference attacks with
batch norm in training mode), the training loss in training mode.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfrobust import losses, rng
from tfrobust.attacks import ball, gradients, langevin
from tfrobust.methods.base import LossOutput, Method
from tfrobust.settings import setting

PROJECTIONS = ("every", "last", "never")
STARTS = ("corner", "none")


@dataclasses.dataclass(frozen=True)
class Atent(Method):
    """noise: Langevin noise scale (the reference's `ep`: 1e-4 MNIST l-inf, 1e-2 MNIST l2, 1e-3
    CIFAR-10 l-inf); gamma: l2 pull-back towards x (l2 only; 0.05 in the l2 recipes); alpha:
    exponential averaging of the iterates' losses; projection: onto the eps ball after 'every'
    step, only after the 'last' one, or 'never' (iterates are always clipped to [0, 1]); start:
    'corner' (l-inf: x + eps sign(N(0, I)); l2: a Gaussian direction of norm eps) or 'none';
    clip_start: clip x'_0 to [0, 1] (the reference takes the first gradient at the unclipped start)."""

    noise: float = setting(1e-4, "ATENT: Langevin noise scale.", low=0)
    gamma: float = setting(0.0, "ATENT: l2 pull-back towards x (l2 only).", low=0)
    alpha: float = setting(0.9, "ATENT: exponential averaging of the iterates' losses.", low=0, high=1,
                           low_open=True)
    projection: str = setting("every", "ATENT: project onto the eps ball after every step, the last only, or "
                              "never.", choices=PROJECTIONS)
    start: str = setting("corner", "ATENT: random start (corner: eps sign(N(0, I)) for l-inf, a Gaussian "
                         "direction of norm eps for l2; none).", choices=STARTS)
    clip_start: bool = setting(False, "Clip the attack's random start to [0, 1] before the first gradient "
                               "(reference: TRADES, MART and ATENT do not; Madry PGD-AT and MIMAE do).")

    name = "atent"
    reference_bn_mode = "train"  # the StochAT reference samples with the model in train() mode
    term_names = ("atent_loss", "last_ce")

    def __post_init__(self):
        super().__post_init__()
        if self.attack.steps < 1:
            raise ValueError(f"ATENT needs at least one Langevin step (attack.steps); got {self.attack.steps}")

    # -- the sampler ----------------------------------------------------------------------

    def seeds(self, ctx) -> tuple[tf.Tensor, tf.Tensor]:
        """(seed of the random start, base seed of the Langevin noise; iterate l uses fold_in(., l))."""
        start_seed, noise_seed = tf.unstack(rng.split(ctx.seed, 2))
        return start_seed, noise_seed

    def first_iterate(self, ctx, x) -> tf.Tensor:
        """x'_0, the random start."""
        return langevin.langevin_start(x, ctx.eps(self.attack), self.attack.norm, self.start, self.seeds(ctx)[0],
                                       clip=self.clip_start)

    def next_iterate(self, ctx, x, y, x_prev, index, last: bool) -> tf.Tensor:
        """x'_index (1-based) from x'_{index-1}; `last`: whether index == L (for projection='last')."""
        a = self.attack
        grad, _, _ = gradients.input_gradient(ctx.attack_logits_fn(a), losses.cross_entropy, x_prev, y)
        project = self.projection == "every" or (self.projection == "last" and last)
        x_next = langevin.langevin_step(
            x_prev, x, grad, step_size=ctx.step_size(a), noise=self.noise, gamma=self.gamma, norm=a.norm,
            seed=rng.fold_in(self.seeds(ctx)[1], index), eps=ctx.eps(a), project=project)
        return tf.stop_gradient(x_next)

    def iterate_weights(self) -> list[float]:
        return langevin.iterate_weights(self.attack.steps, self.alpha)

    # -- the update -----------------------------------------------------------------------

    def loss(self, ctx, x, y, x_adv):
        """CE on one iterate (unweighted); `gradients` weights and sums it over the iterates."""
        logits = ctx.logits(x_adv, training=True)
        ce = losses.cross_entropy(logits, y)
        return LossOutput(per_example=ce, terms={"atent_loss": ce, "last_ce": ce}, adv_logits=logits)

    def attack_inputs(self, ctx, x, y):
        """The last iterate x'_L (for callers that want ATENT's samples, e.g. to look at them)."""
        x = ball.as_images(x)
        steps = self.attack.steps
        x_adv = self.first_iterate(ctx, x)
        _, x_adv = tf.while_loop(
            lambda i, _: i < steps,
            lambda i, xa: (i + 1, self.next_iterate(ctx, x, y, xa, i, last=False)),
            (tf.constant(1), x_adv))
        return self.next_iterate(ctx, x, y, x_adv, steps, last=True)

    def gradients(self, ctx, x, y, differentiate):
        x = ball.as_images(x)
        steps = self.attack.steps
        weights = self.iterate_weights()
        weights_t = tf.constant(weights, x.dtype)
        variables = ctx.model.trainable_variables

        def weighted(x_l, weight):
            out = self.loss(ctx, x, y, x_l)
            return dataclasses.replace(out, per_example=weight * out.per_example)

        def dense(grads):
            return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                    for g, v in zip(grads, variables)]

        # Iterates 1..L-1 inside a loop: each one's weighted loss is differentiated and dropped,
        # only the running sums of the gradients and of the per-example loss are carried.
        def body(index, x_prev, loss_sum, grad_sum):
            x_l = self.next_iterate(ctx, x, y, x_prev, index, last=False)
            out, grads = differentiate(lambda: weighted(x_l, weights_t[index - 1]), False)
            grad_sum = [s + g for s, g in zip(grad_sum, dense(grads))]
            return index + 1, x_l, loss_sum + out.per_example, grad_sum

        loss_sum = tf.zeros(tf.shape(y), x.dtype)
        grad_sum = [tf.zeros_like(v) for v in variables]
        # parallel_iterations=1: by default TensorFlow may run up to 10 iterations at once (the
        # weight gradient of iterate l overlaps the attack of l + 1), and each keeps its
        # activations alive, so memory grew with L (measured: 1.4x PGD-AT's at L = 10, 1.9x at 40).
        _, x_prev, loss_sum, grad_sum = tf.while_loop(
            lambda index, *_: index < steps, body,
            (tf.constant(1), self.first_iterate(ctx, x), loss_sum, grad_sum), parallel_iterations=1)

        # The last iterate outside the loop: it carries the weight decay (exactly once per step)
        # and the logits the caller reports adversarial accuracy on.
        x_last = self.next_iterate(ctx, x, y, x_prev, steps, last=True)
        last, grads = differentiate(lambda: weighted(x_last, weights[-1]), True)
        grads = [s + g for s, g in zip(grad_sum, dense(grads))]
        last_ce = last.terms["last_ce"]
        total = loss_sum + last.per_example
        out = LossOutput(per_example=total, terms={"atent_loss": total, "last_ce": last_ce},
                         adv_logits=last.adv_logits)
        return out, grads, x_last
