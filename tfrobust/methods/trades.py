"""TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and Accuracy"),
eq. 5 / Algorithm 1: minimize CE(z(x), y) + beta * KL(p(x) || p(x')), where x' maximizes the same KL
by PGD started at x + 0.001 N(0, I) (the reference code, github.com/yaodongyu/TRADES, `trades.py`).

As in `trades.py` the attack maximizes KL against the prediction in the attack's model mode (eval),
from an unclipped start, and the loss makes three forwards in training mode: z(x) for the CE, z(x')
and a second z(x) as the KL target, which has its own dropout mask and is not detached.
`shared_target=True` reuses the first z(x) as the target (one forward fewer; the same loss without
dropout, since batch norm in training mode gives both passes the same batch statistics).
"""

from __future__ import annotations

import dataclasses

from tfrobust.lazy import lazy_import
from tfrobust.methods.base import LossOutput, Method
from tfrobust.settings import setting

losses = lazy_import("tfrobust.losses")
objectives = lazy_import("tfrobust.attacks.objectives")


@dataclasses.dataclass(frozen=True)
class Trades(Method):
    """beta: weight of the robust KL term (6 on CIFAR-10; 1 or 6 on MNIST)."""

    beta: float = setting(6.0, "Weight of the KL term (TRADES: 6 on CIFAR-10, 1 or 6 on MNIST; MART: 6).", low=0)
    shared_target: bool = setting(False, "TRADES: take the KL target from the CE term's clean forward instead of "
                                  "the reference's own third forward (differs only with dropout).")
    clip_start: bool = setting(False, "Clip the attack's random start to [0, 1] before the first gradient "
                               "(reference: TRADES, MART and ATENT do not; Madry PGD-AT and MIMAE do).")

    name = "trades"
    term_names = ("natural", "robust")

    def attack_inputs(self, ctx, x, y):
        # The clean prediction the attack moves away from, in the attack's model mode (the
        # reference attacks in eval mode: `AttackConfig.bn_mode="eval"`).
        clean_logits = ctx.attack_logits_fn(self.attack)(x)
        return self.pgd(ctx, x, y, objective=objectives.kl_from(clean_logits), start="normal",
                        clip_start=self.clip_start)

    def loss(self, ctx, x, y, x_adv):
        # The reference's order of forwards: natural, adversarial, natural again (the KL target).
        clean_logits = ctx.logits(x, training=True)
        adv_logits = ctx.logits(x_adv, training=True)
        target_logits = clean_logits if self.shared_target else ctx.logits(x, training=True)
        natural = losses.cross_entropy(clean_logits, y)
        robust = losses.kl_divergence(target_logits, adv_logits)
        return LossOutput(per_example=natural + self.beta * robust,
                          terms={"natural": natural, "robust": robust},
                          clean_logits=clean_logits, adv_logits=adv_logits)
