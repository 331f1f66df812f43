"""Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks", eq. 2.1:
cross-entropy on PGD examples found by maximizing the same cross-entropy from a uniform random
start in the eps ball."""

from __future__ import annotations

import dataclasses

from tfrobust import losses
from tfrobust.methods.base import LossOutput, Method


@dataclasses.dataclass(frozen=True)
class PgdAt(Method):
    name = "pgd_at"
    reference_bn_mode = "train"  # Madry's TF code attacks with batch norm in training mode
    term_names = ("adv_ce",)

    def attack_inputs(self, ctx, x, y):
        return self.pgd(ctx, x, y, start="uniform")

    def loss(self, ctx, x, y, x_adv):
        adv_logits = ctx.logits(x_adv, training=True)
        ce = losses.cross_entropy(adv_logits, y)
        return LossOutput(per_example=ce, terms={"adv_ce": ce}, adv_logits=adv_logits)
