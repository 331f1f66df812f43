"""N-FGSM (de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez, Dokania, NeurIPS 2022, "Make Some Noise:
Reliable and Efficient Single-Step Adversarial Training", Algorithm 1; reference code
github.com/pdejorge/N-FGSM, `train.py`).

Stronger noise and no projection: the training point may leave the eps ball.

    eta ~ U(-k eps, k eps)^d                  (l2: uniform in the l2 ball of radius k eps)
    x_0 = clip_[0, 1](x + eta)
    x'  = clip_[0, 1](x_0 + alpha * sign(grad_x0 CE(z(x_0), y)))
          (with --nfgsm_clip=c > 0: also projected onto the ball of radius c eps, the reference's --clip)
    loss = CE(z(x'), y)

k is `noise_radius` (the reference's --unif, default 2), alpha the threat model's step size (the
paper's alpha = eps, `--step_size`). Without the optional clip, ||x' - x||_inf <= k eps + alpha
(3 eps with the defaults; l2: ||x' - x||_2 <= k eps + alpha). The reference keeps the model in
train() mode throughout (`reference_bn_mode = "train"`).
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
class NFgsm(Method):
    """noise_radius: k, the noise is uniform in the ball of radius k eps; nfgsm_clip: 0 for no
    projection (the reference's default), else the radius (in units of eps) x' is projected onto."""

    noise_radius: float = setting(2.0, "N-FGSM: noise uniform in the ball of radius k * eps (the reference's "
                                  "--unif).", low=0)
    nfgsm_clip: float = setting(0.0, "N-FGSM: project the perturbation onto the ball of radius c * eps "
                                "(0: no projection, the reference's default).", low=0)

    name = "n_fgsm"
    fixed_steps = 1
    reference_bn_mode = "train"  # model.train() throughout the reference's training loop
    term_names = ("adv_ce",)

    def radius(self) -> float:
        """The largest perturbation norm ||x' - x|| at the full budget: k eps + alpha, or c eps if smaller."""
        unclipped = self.noise_radius * self.attack.eps + self.attack.step_size
        return min(unclipped, self.nfgsm_clip * self.attack.eps) if self.nfgsm_clip else unclipped

    def attack_inputs(self, ctx, x, y):
        a = self.attack
        eps = ball.per_example(ctx.eps(a), x)
        start = ball.random_start(x, self.noise_radius * eps, a.norm, "uniform", ctx.seed)
        start = tf.clip_by_value(start, 0.0, 1.0)
        moved, _ = pgd.ascent_step(ctx.attack_logits_fn(a), start, y, step_size=ctx.step_size(a), norm=a.norm)
        if self.nfgsm_clip:
            moved = ball.project(moved, x, self.nfgsm_clip * eps, a.norm)
        return tf.stop_gradient(tf.clip_by_value(moved, 0.0, 1.0))

    def loss(self, ctx, x, y, x_adv):
        adv_logits = ctx.logits(x_adv, training=True)
        ce = losses.cross_entropy(adv_logits, y)
        return LossOutput(per_example=ce, terms={"adv_ce": ce}, adv_logits=adv_logits)
