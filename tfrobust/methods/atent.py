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
import math

from tfrobust.lazy import lazy_import
from tfrobust.methods.base import LossOutput, Method
from tfrobust.settings import setting

tf = lazy_import("tensorflow")
losses = lazy_import("tfrobust.losses")
rng = lazy_import("tfrobust.rng")
np = lazy_import("numpy")
ball = lazy_import("tfrobust.attacks.ball")
gradients = lazy_import("tfrobust.attacks.gradients")
langevin = lazy_import("tfrobust.attacks.langevin")
forward = lazy_import("tfrobust.models.forward")
keras = lazy_import("keras")

PROJECTIONS = ("every", "last", "never")
# The truncation tolerance in float32, below its unit roundoff 2^-24 = 6.0e-8; other dtypes take the
# same fraction of their unit roundoff (`auto_tolerance`).
FLOAT32_TOLERANCE = 5e-8
STARTS = ("corner", "none")


@dataclasses.dataclass(frozen=True)
class Atent(Method):
    """noise: Langevin noise scale (the reference's `ep`: 1e-4 MNIST l-inf, 1e-2 MNIST l2, 1e-3
    CIFAR-10 l-inf); gamma: l2 pull-back towards x (l2 only; 0.05 in the l2 recipes); alpha:
    exponential averaging of the iterates' losses; projection: onto the eps ball after 'every'
    step, only after the 'last' one, or 'never' (iterates are always clipped to [0, 1]); start:
    'corner' (l-inf: x + eps sign(N(0, I)); l2: a Gaussian direction of norm eps) or 'none';
    clip_start: clip x'_0 to [0, 1] (the reference takes the first gradient at the unclipped start);
    atent_tolerance: the weight mass of early iterates whose weight gradient may be skipped (see
    `gradients`; 0: none skipped)."""

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
    atent_tolerance: float | None = setting(
        None, "ATENT: take the weight gradient only of the last iterates whose weights sum to within this of "
        "the full sum (the dropped weights' total is at most this; 0: every iterate, the reference's sum). Unset: "
        "below one rounding of the compute dtype (5e-8 in float32, 9.3e-17 in float64).", low=0, high=1)
    atent_shared_forward: bool | None = setting(
        None, "ATENT: one train-mode forward and backward pass per iterate gives both its weight gradient and the "
        "next Langevin step's input gradient, where the reference runs two (the same function of the same input "
        "when the model has no dropout or noise layer; batch norm's moving statistics still move twice). auto: "
        "shared when the model's training forward is deterministic and the attack runs in train mode; true needs "
        "attack_bn_mode train and, with dropout, correlates the masks of neighbouring iterates.")

    name = "atent"
    reference_bn_mode = "train"  # the StochAT reference samples with the model in train() mode
    term_names = ("atent_loss", "last_ce")

    def __post_init__(self):
        super().__post_init__()
        if self.attack.steps < 1:
            raise ValueError(f"ATENT needs at least one Langevin step (attack.steps); got {self.attack.steps}")
        if self.atent_shared_forward and self.attack.bn_mode != "train":
            raise ValueError("atent_shared_forward needs the attack in train mode (attack_bn_mode train): the "
                             f"shared pass is the training loss's; got {self.attack.bn_mode}")

    # -- the sampler ----------------------------------------------------------------------

    def seeds(self, ctx) -> tuple[tf.Tensor, tf.Tensor]:
        """(seed of the random start, base seed of the Langevin noise; iterate l uses fold_in(., l))."""
        start_seed, noise_seed = tf.unstack(rng.split(ctx.seed, 2))
        return start_seed, noise_seed

    def first_iterate(self, ctx, x) -> tf.Tensor:
        """x'_0, the random start."""
        return langevin.langevin_start(x, ctx.eps(self.attack), self.attack.norm, self.start, self.seeds(ctx)[0],
                                       clip=self.clip_start)

    def next_iterate(self, ctx, x, y, x_prev, index, last: bool, grad=None, bn_passes: int = 1) -> tf.Tensor:
        """x'_index (1-based) from x'_{index-1}; `last`: whether index == L (for projection='last');
        `grad`: the input gradient at x'_{index-1} if already computed (any positive multiple of it
        per example: the step uses its sign or its direction); `bn_passes`: how many training-mode
        passes the sampler's pass stands for in batch norm's moving statistics (2 where it also
        stands for a loss pass that truncation skips)."""
        a = self.attack
        if grad is None:
            with forward.batch_norm_updates(ctx.model, bn_passes):
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

    def tolerance(self, dtype=None) -> float:
        """The truncation tolerance in compute dtype `dtype` (default Keras' floatx): `atent_tolerance`
        if set, else `auto_tolerance(dtype)`."""
        if self.atent_tolerance is not None:
            return self.atent_tolerance
        return auto_tolerance(dtype or keras.config.floatx())

    def kept_iterates(self, dtype=None) -> int:
        """k, the number of last iterates whose weight gradient `gradients` takes in compute dtype
        `dtype` (see there)."""
        weights = self.iterate_weights()
        steps = len(weights)
        tolerance = self.tolerance(dtype)
        if tolerance == 0:
            return steps
        # dropped(k) = sum of the first L - k weights = (1 - alpha)^k - (1 - alpha)^L, falling with k
        for kept in range(1, steps + 1):
            if math.fsum(weights[:steps - kept]) <= tolerance:
                return kept
        return steps

    def shares_forward(self, model) -> bool:
        """Whether `gradients` takes one pass per kept iterate for both its weight gradient and the
        next step's input gradient: `atent_shared_forward` if set, else (auto) when the attack runs in
        train mode and `model` has no layer whose training-mode output is random."""
        if self.atent_shared_forward is not None:
            return self.atent_shared_forward
        return self.attack.bn_mode == "train" and not forward.stochastic_layers(model)

    def gradients(self, ctx, x, y, differentiate):
        """ATENT's update, the weight gradient of sum_l w_l CE(z(x'_l), y), w_l = alpha (1 - alpha)^(L - l).

        The reference (StochAT, notebooks/cifar10_exps_linf.py `adversarial_training_entropy`) runs,
        in train mode, the sampler's pass at x'_{l-1} and then the loss's pass at x'_l, for l = 1..L.
        Here the same passes run in the same order, with two savings:

        Truncation (tolerance tau, `tolerance`): the weights fall geometrically from the last iterate
        back (alpha 0.9: 0.9, 0.09, 0.009, ...), so only the last k iterates' weight gradients are
        taken, k the smallest with dropped mass

            D(k) = sum_{l=1..L-k} w_l = alpha sum_{j=k..L-1} (1 - alpha)^j = (1 - alpha)^k - (1 - alpha)^L  <= tau

        (tau = 0: k = L, every iterate, the reference's exact sum). The earlier iterates are still
        computed (their input gradients move the sampler), but no loss pass runs there; the
        sampler's pass then moves batch norm's statistics for both. With g_l the weight gradient
        of the batch-mean CE at iterate l, the update differs from the full sum by
        || sum_{l<=L-k} w_l g_l || <= D(k) max_l ||g_l|| <= tau max_l ||g_l||, in any norm and per
        coordinate alike; the logged `atent_loss` (per example) misses at most tau max_l CE_l.
        Unset, tau is below one rounding of the compute dtype: 5e-8 in float32 (unit roundoff
        2^-24 = 6.0e-8; alpha 0.9: k = 8, D = 1e-8 - 0.1^L), 9.3e-17 in float64, so the dropped
        terms together are smaller than one rounding of the largest per-iterate gradient. (1e-6,
        k = 6, moved a float32 test update by 7x the rounding between two summation orders of the
        full sum; 5e-8 by less than it: tests/test_speed.py.)

        Shared forward (`shares_forward`): at each kept iterate l < L, the loss's pass at x'_l and
        the sampler's at x'_l are one pass whose backward gives both the weight gradient and the
        input gradient (of the weighted loss: a positive multiple of the CE gradient per example, so
        the same sign and direction). On a deterministic training forward the two reference passes
        are the same function of the same input, so this is the reference's update; batch norm's
        statistics move as twice over that batch (`forward.batch_norm_updates`).

        Memory stays flat in L: the first L - k iterates run unrolled carrying only x'_l, the kept
        ones in a loop that carries x'_l and the running gradient sum.
        """
        x = ball.as_images(x)
        steps = self.attack.steps
        weights_t = tf.constant(self.iterate_weights(), x.dtype)
        variables = ctx.model.trainable_variables
        n = len(variables)
        shared = self.shares_forward(ctx.model)
        first_kept = steps - self.kept_iterates(x.dtype) + 1  # iterates first_kept..L get a weight gradient

        def dense(grads):
            return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, variables)]

        def kept(index, x_l, last: bool):
            """Iterate `index`'s weighted per-example loss and weight gradient, and x'_{index+1}."""
            weight = weights_t[index - 1]
            if shared:
                with forward.batch_norm_updates(ctx.model, 2):
                    out, grads = differentiate(lambda: self.loss(ctx, x, y, x_l), False, (x_l,))
                x_next = self.next_iterate(ctx, x, y, x_l, index + 1, last=last, grad=grads[n])
                return weight * out.per_example, [weight * g for g in dense(grads[:n])], x_next
            out, grads = differentiate(lambda: self._weighted(ctx, x, y, x_l, weight), False)
            x_next = self.next_iterate(ctx, x, y, x_l, index + 1, last=last)
            return out.per_example, dense(grads), x_next

        def body(index, x_l, loss_sum, grad_sum):
            loss, grads, x_next = kept(index, x_l, last=False)
            return index + 1, x_next, loss_sum + loss, [s + g for s, g in zip(grad_sum, grads)]

        # Iterates 1..first_kept: the sampler only, unrolled as PGD's training attack is (see
        # `pgd.pgd`'s `unroll`: oneDNN's max-pool gradient). The pass at x'_l (l >= 1) also stands
        # for x'_l's skipped loss pass in batch norm's statistics.
        x_l = self.first_iterate(ctx, x)
        for index in range(1, first_kept + 1):
            x_l = self.next_iterate(ctx, x, y, x_l, index, last=index == steps, bn_passes=1 if index == 1 else 2)

        # Iterates first_kept..L-2 inside a loop: each one's weighted loss is differentiated and
        # dropped, only the running sums of the gradients and of the per-example loss are carried;
        # L-1 outside it (the step to x'_L may project differently: projection='last').
        loss_sum = tf.zeros(tf.shape(y), x.dtype)
        grad_sum = [tf.zeros_like(v) for v in variables]
        # parallel_iterations=1: by default TensorFlow may run up to 10 iterations at once (the
        # weight gradient of iterate l overlaps the attack of l + 1), and each keeps its
        # activations alive, so memory grew with L (measured: 1.4x PGD-AT's at L = 10, 1.9x at 40).
        _, x_l, loss_sum, grad_sum = tf.while_loop(
            lambda index, *_: index < steps - 1, body,
            (tf.constant(first_kept), x_l, loss_sum, grad_sum), parallel_iterations=1)
        if first_kept < steps:
            loss, grads, x_l = kept(steps - 1, x_l, last=True)
            loss_sum, grad_sum = loss_sum + loss, [s + g for s, g in zip(grad_sum, grads)]
        return self._last_iterate(ctx, x, y, differentiate, x_l, loss_sum, grad_sum)

    def _weighted(self, ctx, x, y, x_l, weight) -> LossOutput:
        out = self.loss(ctx, x, y, x_l)
        return dataclasses.replace(out, per_example=weight * out.per_example)

    def _last_iterate(self, ctx, x, y, differentiate, x_last, loss_sum, grad_sum):
        """The last iterate's weight gradient, outside the loops: it carries the weight decay
        (exactly once per step) and the logits the caller reports adversarial accuracy on."""
        weight = self.iterate_weights()[-1]
        last, grads = differentiate(lambda: self._weighted(ctx, x, y, x_last, weight), True)
        grads = [s + (tf.zeros_like(s) if g is None else tf.convert_to_tensor(g)) for s, g in zip(grad_sum, grads)]
        last_ce = last.terms["last_ce"]
        total = loss_sum + last.per_example
        out = LossOutput(per_example=total, terms={"atent_loss": total, "last_ce": last_ce},
                         adv_logits=last.adv_logits)
        return out, grads, x_last


def auto_tolerance(dtype) -> float:
    """The truncation tolerance for compute dtype `dtype`: FLOAT32_TOLERANCE scaled by the dtype's
    unit roundoff (float32 5e-8, float64 9.3e-17)."""
    unit_roundoff = float(np.finfo(tf.as_dtype(dtype).as_numpy_dtype).eps) / 2
    return FLOAT32_TOLERANCE * unit_roundoff / 2.0 ** -24
