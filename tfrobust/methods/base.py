"""What a training method is: how it makes its training inputs and which loss terms it adds.

A method never touches the optimizer, the distribution strategy or loss scaling: the training
step (`tfrobust.robust_model.RobustModel`) hands it a `differentiate` function that turns a loss
into correctly scaled weight gradients. Most methods only implement `attack_inputs` (run outside
the gradient tape, so the attack's graph is not kept alive) and `loss` (run inside it); a method
whose update is a sum of several losses, such as ATENT, overrides `gradients`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

from tfrobust import settings
from tfrobust.lazy import lazy_import

if TYPE_CHECKING:
    from tfrobust.attacks.objectives import LogitsFn

# Imported on first use: the hyperparameter dataclasses (and the flags made from them) need no TensorFlow.
keras = lazy_import("keras")
tf = lazy_import("tensorflow")
losses = lazy_import("tfrobust.losses")
ball = lazy_import("tfrobust.attacks.ball")
pgd = lazy_import("tfrobust.attacks.pgd")

# The model's batch-norm (and dropout) mode while attacking: Keras `training=True` or `False`.
BN_MODES = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """The threat model and the inner maximization used while training."""

    eps: float = 0.3
    step_size: float = 0.01
    steps: int = 10
    norm: str = "linf"
    bn_mode: str = "eval"  # the model's batch-norm (and dropout) mode while attacking, one of BN_MODES

    def __post_init__(self):
        ball.check_norm(self.norm)
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"unknown attack bn_mode {self.bn_mode!r}; expected one of {BN_MODES}")
        if not self.eps >= 0 or not self.step_size >= 0 or self.steps < 0:
            raise ValueError(f"attack needs eps >= 0, step_size >= 0, steps >= 0; got {self}")


@dataclasses.dataclass
class LossOutput:
    """The loss of one (micro-)batch, as the method computed it.

    per_example: [B] weighted total per example; averaged over the global batch by the caller.
    batch_loss: a term defined on the whole global batch (the same value on every replica),
        such as MIMAE's mutual information; 0 when the method has none.
    terms: metric name -> [B] per-example values or a scalar batch-level value, unweighted.
    """

    per_example: tf.Tensor
    terms: dict[str, tf.Tensor]
    batch_loss: tf.Tensor | float = 0.0
    clean_logits: tf.Tensor | None = None
    adv_logits: tf.Tensor | None = None


@dataclasses.dataclass
class StepContext:
    """What a method may use in one step: the classifier, a seed and the attack budget's scale."""

    model: keras.Model
    seed: tf.Tensor  # [2] stateless seed, different every step
    # The fraction of the threat model's eps and step size this step attacks with: 1 except
    # during an eps warm-up (`RobustModel(eps_warmup_steps=...)`).
    budget_scale: float | tf.Tensor = 1.0
    # The optimizer step this update is computed at (0 for the first), for methods whose loss
    # changes over training (MIMAE's regularizer ramp); a function of the checkpointed step count.
    step: int | tf.Tensor = 0

    def eps(self, attack: AttackConfig) -> float | tf.Tensor:
        return attack.eps * self.budget_scale

    def step_size(self, attack: AttackConfig) -> float | tf.Tensor:
        return attack.step_size * self.budget_scale

    def logits(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """The model's logits in the compute dtype (`losses.as_float`: float64 under floatx float64;
        a half-precision output is widened to float32)."""
        return losses.as_float(self.model(x, training=training))

    def attack_logits_fn(self, attack: AttackConfig) -> LogitsFn:
        """The logits an attack in `attack`'s threat model differentiates: the model in `attack.bn_mode`."""
        training = attack.bn_mode == "train"
        return lambda x: self.logits(x, training=training)


# differentiate(loss_fn, regularize[, inputs]) -> (LossOutput, gradients of the scaled loss w.r.t.
# the classifier's trainable variables, then w.r.t. each tensor of `inputs` if given). `regularize`
# adds weight decay; a method must ask for it exactly once per step.
Differentiate = Callable[[Callable[[], LossOutput], bool], tuple[LossOutput, Sequence["tf.Tensor"]]]


@dataclasses.dataclass(frozen=True)
class Method(abc.ABC):
    """Base class: subclasses are frozen dataclasses whose fields are their hyperparameters."""

    attack: AttackConfig = dataclasses.field(default_factory=AttackConfig)  # built on use: its check imports TF

    name: ClassVar[str]
    term_names: ClassVar[tuple[str, ...]]
    # The model's mode while attacking in the reference implementation, one of BN_MODES
    # (what --attack_bn_mode=auto takes).
    reference_bn_mode: ClassVar[str] = "eval"
    # The number of attack steps the method always takes, whatever `attack.steps` says (standard
    # training 0, the single-step methods 1), or None: it takes `attack.steps`. The runner refuses
    # another --attack_steps for such a method rather than ignore it.
    fixed_steps: ClassVar[int | None] = None

    def __post_init__(self):
        settings.check(self)  # each hyperparameter against its `setting` metadata

    def attack_inputs(self, ctx: StepContext, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor | None:
        """The adversarial training inputs, or None. Runs outside the weight-gradient tape."""
        return None

    @abc.abstractmethod
    def loss(self, ctx: StepContext, x: tf.Tensor, y: tf.Tensor, x_adv: tf.Tensor | None) -> LossOutput:
        """The loss on one batch. Runs inside the weight-gradient tape."""

    def gradients(
        self, ctx: StepContext, x: tf.Tensor, y: tf.Tensor, differentiate: Differentiate
    ) -> tuple[LossOutput, Sequence[tf.Tensor], tf.Tensor | None]:
        """(loss output, weight gradients, adversarial inputs) of one training step."""
        x_adv = self.attack_inputs(ctx, x, y)
        out, grads = differentiate(lambda: self.loss(ctx, x, y, x_adv), True)
        return out, grads, x_adv

    def pgd(self, ctx: StepContext, x: tf.Tensor, y: tf.Tensor, **overrides) -> tf.Tensor:
        """PGD within this method's threat model, attacking in the configured model mode; unrolled
        (see `pgd.pgd`: on a CPU with oneDNN the while loop sometimes ran a slow max-pool gradient)."""
        a = self.attack
        kwargs = dict(eps=ctx.eps(a), step_size=ctx.step_size(a), steps=a.steps, norm=a.norm, seed=ctx.seed,
                      unroll=True)
        kwargs.update(overrides)
        return pgd.pgd(ctx.attack_logits_fn(a), x, y, **kwargs)
