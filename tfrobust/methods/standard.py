"""Standard (non-adversarial) training: cross-entropy on clean inputs."""

from __future__ import annotations

import dataclasses

from tfrobust.lazy import lazy_import
from tfrobust.methods.base import LossOutput, Method

losses = lazy_import("tfrobust.losses")


@dataclasses.dataclass(frozen=True)
class Standard(Method):
    name = "standard"
    fixed_steps = 0
    term_names = ("ce",)

    def loss(self, ctx, x, y, x_adv):
        logits = ctx.logits(x, training=True)
        ce = losses.cross_entropy(logits, y)
        return LossOutput(per_example=ce, terms={"ce": ce}, clean_logits=logits)
