"""Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks", eq. 2.1:
cross-entropy on PGD examples found by maximizing the same cross-entropy from a uniform random
start in the eps ball, clipped to [0, 1] before the first gradient (github.com/MadryLab/mnist_challenge
and cifar10_challenge `pgd_attack.py`; also locuslab/robust_overfitting `attack_pgd`). Both references
attack the model in training mode (Madry's `Model(mode='train')`, robust_overfitting's `model.train()`)."""

from __future__ import annotations

import dataclasses

from tfrobust.lazy import lazy_import
from tfrobust.methods.base import LossOutput, Method
from tfrobust.settings import setting

losses = lazy_import("tfrobust.losses")


@dataclasses.dataclass(frozen=True)
class PgdAt(Method):
    clip_start: bool = setting(True, "Clip the attack's random start to [0, 1] before the first gradient "
                               "(reference: TRADES, MART and ATENT do not; Madry PGD-AT and MIMAE do).")

    name = "pgd_at"
    # Madry's TF code and robust_overfitting's PyTorch code attack with batch norm in training mode.
    reference_bn_mode = "train"
    term_names = ("adv_ce",)

    def attack_inputs(self, ctx, x, y):
        return self.pgd(ctx, x, y, start="uniform", clip_start=self.clip_start)

    def loss(self, ctx, x, y, x_adv):
        adv_logits = ctx.logits(x_adv, training=True)
        ce = losses.cross_entropy(adv_logits, y)
        return LossOutput(per_example=ce, terms={"adv_ce": ce}, adv_logits=adv_logits)
