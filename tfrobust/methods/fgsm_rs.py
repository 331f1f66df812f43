"""FGSM with a random start ("FGSM-RS"; Wong, Rice and Kolter, ICLR 2020, "Fast is better than free:
Revisiting adversarial training", Algorithm 3; reference code github.com/locuslab/fast_adversarial,
`CIFAR10/train_fgsm.py` and `MNIST/train_mnist.py`).

One gradient step from a uniform random point of the eps ball, then projection back onto the ball
and the pixel range, and cross-entropy on the result:

    delta_0 ~ U(-eps, eps)^d                 (l2: uniform in the l2 ball of radius eps)
    x_0     = clip_[0, 1](x + delta_0)       (CIFAR-10 reference; the MNIST one skips this clip:
                                              --clip_start=false)
    x'      = clip_[0, 1](Proj_B(x, eps)(x_0 + alpha * sign(grad_x0 CE(z(x_0), y))))
    loss    = CE(z(x'), y)

alpha is the threat model's step size (`--step_size`; the paper's alpha = 1.25 eps). Both
references keep the model in train() mode for the attack and the update (batch norm in training
mode: `reference_bn_mode = "train"`). ||x' - x||_inf <= eps always.
"""

from __future__ import annotations

import dataclasses

from tfrobust.lazy import lazy_import
from tfrobust.methods.base import LossOutput, Method
from tfrobust.settings import setting

tf = lazy_import("tensorflow")
losses = lazy_import("tfrobust.losses")
ball = lazy_import("tfrobust.attacks.ball")
pgd = lazy_import("tfrobust.attacks.pgd")


@dataclasses.dataclass(frozen=True)
class FgsmRs(Method):
    """clip_start: clip the random start to [0, 1] before its gradient (the CIFAR-10 reference does,
    the MNIST one does not)."""

    clip_start: bool = setting(True, "FGSM-RS: clip the random start to [0, 1] before its gradient "
                               "(CIFAR-10 reference: true; MNIST reference: false).")

    name = "fgsm_rs"
    fixed_steps = 1
    reference_bn_mode = "train"  # model.train() for the whole epoch in both reference scripts
    term_names = ("adv_ce",)

    def attack_inputs(self, ctx, x, y):
        a = self.attack
        eps = ball.per_example(ctx.eps(a), x)
        start = ball.random_start(x, eps, a.norm, "uniform", ctx.seed)
        if self.clip_start:
            start = tf.clip_by_value(start, 0.0, 1.0)
        moved, _ = pgd.ascent_step(ctx.attack_logits_fn(a), start, y, step_size=ctx.step_size(a), norm=a.norm)
        return tf.stop_gradient(tf.clip_by_value(ball.project(moved, x, eps, a.norm), 0.0, 1.0))

    def loss(self, ctx, x, y, x_adv):
        adv_logits = ctx.logits(x_adv, training=True)
        ce = losses.cross_entropy(adv_logits, y)
        return LossOutput(per_example=ce, terms={"adv_ce": ce}, adv_logits=adv_logits)
