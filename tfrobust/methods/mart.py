"""MART (Wang et al. 2020, "Improving Adversarial Robustness Requires Revisiting Misclassified
Examples"), the training objective: minimize BCE(p(x'), y) + beta * KL(p(x) || p(x')) * (1 - p_y(x)), where
BCE = CE(z(x'), y) - log(1 - max_{k != y} p_k(x')) and x' comes from PGD on CE started at
x + 0.001 N(0, I), not clipped before the first gradient (the reference code, github.com/YisenWang/MART,
`mart.py`). The KL target p(x) and the weight 1 - p_y(x) carry gradient, as there."""

from __future__ import annotations

import dataclasses

from tfrobust.lazy import lazy_import
from tfrobust.methods.base import LossOutput, Method
from tfrobust.settings import setting

losses = lazy_import("tfrobust.losses")


@dataclasses.dataclass(frozen=True)
class Mart(Method):
    """beta: weight of the misclassification-aware KL term (6 in the paper)."""

    beta: float = setting(6.0, "Weight of the KL term (TRADES: 6 on CIFAR-10, 1 or 6 on MNIST; MART: 6).", low=0)
    clip_start: bool = setting(False, "Clip the attack's random start to [0, 1] before the first gradient "
                               "(reference: TRADES, MART and ATENT do not; Madry PGD-AT and MIMAE do).")

    name = "mart"
    term_names = ("boosted_ce", "weighted_kl")

    def attack_inputs(self, ctx, x, y):
        return self.pgd(ctx, x, y, start="normal", clip_start=self.clip_start)

    def loss(self, ctx, x, y, x_adv):
        clean_logits = ctx.logits(x, training=True)
        adv_logits = ctx.logits(x_adv, training=True)
        boosted = losses.mart_boosted_cross_entropy(adv_logits, y)
        weighted_kl = losses.mart_weighted_kl(clean_logits, adv_logits, y)
        return LossOutput(per_example=boosted + self.beta * weighted_kl,
                          terms={"boosted_ce": boosted, "weighted_kl": weighted_kl},
                          clean_logits=clean_logits, adv_logits=adv_logits)
