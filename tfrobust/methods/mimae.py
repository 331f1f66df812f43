"""MIMAE-AT (Atsague, Fakorede, Tian, ACML 2021, "A Mutual Information Regularization for
Adversarial Training"): adversarial training with two regularizers between the natural and the
adversarial examples, the mutual information of their probabilistic predictions (maximized) and
the mean absolute error of their logits (minimized).

RECONSTRUCTION: only the paper's abstract is public to us; there is no reference code. The form
built here is, at optimizer step t,

    L = mean_i [CE(z(x'_i), y_i) + natural_weight CE(z(x_i), y_i) + r(t) lambda_mae MAE(z(x_i), z(x'_i))]
        - r(t) lambda_mi I(p(x); p(x')),        r(t) = min(1, (t + 1) / ramp_steps), or 1 without a ramp

with I estimated from the batch joint P = sum_i p(x_i) p(x'_i)^T (normalized, optionally
symmetrized; Invariant Information Clustering, Ji et al. 2019, eq. 3; `losses.mutual_information`)
over the GLOBAL batch: under a distribution strategy the per-replica K x K sums are all-reduced,
which gives the same joint as on one device. x' comes from Madry PGD on CE (uniform start). Both
forwards run in training mode. The defaults (lambda_mi 1, lambda_mae 0.1, natural_weight 1, no
ramp) come from issue 20's sweep under the MNIST protocol (docs/results.md). Without the natural
term the model stayed at a constant prediction: the MI's gradient vanishes there, the MAE's does not
and points with the adversarial CE's towards an input-independent prediction, and only a clean CE
term points out; with it, lambda_mae 1 still slowed the start (docs/methods.md, "Why the earlier
defaults collapsed").
"""

from __future__ import annotations

import dataclasses

from tfrobust.lazy import lazy_import
from tfrobust.methods.base import LossOutput, Method
from tfrobust.settings import setting

tf = lazy_import("tensorflow")
distribute = lazy_import("tfrobust.distribute")
losses = lazy_import("tfrobust.losses")


@dataclasses.dataclass(frozen=True)
class Mimae(Method):
    """lambda_mi: weight of the (maximized) mutual information; lambda_mae: weight of the logit
    MAE; mi_symmetric: symmetrize the joint (IIC); natural_weight: weight of CE on clean inputs;
    ramp_steps: ramp both regularizers in over the first N optimizer steps."""

    lambda_mi: float = setting(1.0, "MIMAE: weight of the (maximized) mutual information.", low=0)
    lambda_mae: float = setting(0.1, "MIMAE: weight of the logit mean absolute error.", low=0)
    mi_symmetric: bool = setting(True, "MIMAE: symmetrize the joint of the two prediction batches (IIC).")
    natural_weight: float = setting(1.0, "MIMAE: weight of cross-entropy on clean inputs.", low=0)
    ramp_steps: int = setting(0, "MIMAE: scale lambda_mi and lambda_mae linearly from 0 to their values over the "
                              "first N optimizer steps (0: no ramp; the attack's eps is not ramped).", low=0)
    clip_start: bool = setting(True, "Clip the attack's random start to [0, 1] before the first gradient "
                               "(reference: TRADES, MART and ATENT do not; Madry PGD-AT and MIMAE do).")

    name = "mimae"
    term_names = ("adv_ce", "mi", "mae", "natural_ce")

    def attack_inputs(self, ctx, x, y):
        return self.pgd(ctx, x, y, start="uniform", clip_start=self.clip_start)

    def loss(self, ctx, x, y, x_adv):
        clean_logits = ctx.logits(x, training=True)
        adv_logits = ctx.logits(x_adv, training=True)
        adv_ce = losses.cross_entropy(adv_logits, y)
        natural_ce = losses.cross_entropy(clean_logits, y)
        mae = losses.logit_mae(clean_logits, adv_logits)
        joint = distribute.global_sum(
            losses.prediction_joint(tf.nn.softmax(clean_logits), tf.nn.softmax(adv_logits)))
        mi = losses.mutual_information(joint, symmetric=self.mi_symmetric)
        ramp = self.ramp(ctx, adv_ce.dtype)
        per_example = adv_ce + ramp * self.lambda_mae * mae
        if self.natural_weight:
            per_example += self.natural_weight * natural_ce
        return LossOutput(per_example=per_example, batch_loss=-ramp * self.lambda_mi * mi,
                          terms={"adv_ce": adv_ce, "mi": mi, "mae": mae, "natural_ce": natural_ce},
                          clean_logits=clean_logits, adv_logits=adv_logits)

    def ramp(self, ctx, dtype) -> float | tf.Tensor:
        """The regularizers' share of their weights at this step: min(1, (t + 1) / ramp_steps)."""
        if not self.ramp_steps:
            return 1.0
        done = tf.cast(ctx.step, dtype) + 1
        return tf.minimum(tf.constant(1, dtype), done / self.ramp_steps)
