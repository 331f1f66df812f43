"""`RobustModel`: a `keras.Model` whose `train_step` trains any Keras classifier with a method.

The attack runs inside the compiled step. The loss is averaged over the GLOBAL batch
(`tf.nn.compute_average_loss`) so that the gradient sum the optimizer all-reduces across replicas
is the global-batch mean: a plain `tf.reduce_mean` under a distribution strategy would give
N-times-too-large updates. Weight decay is the coupled L2 of the PyTorch recipes (gradient
+ wd * w on every trainable variable), added once per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tfrobust import averaging, compat, data, losses, rng
from tfrobust.attacks import pgd
from tfrobust.config import MONITOR_CLEAN_FRACTION
from tfrobust.methods.base import AttackConfig, LossOutput, Method, StepContext


def _num_replicas() -> int:
    ctx = tf.distribute.get_replica_context()
    return ctx.num_replicas_in_sync if ctx is not None else 1


def default_eval_attack(attack: AttackConfig, steps: int = 20, step_size: float = 0.0) -> AttackConfig:
    """PGD-`steps` in the training threat model, eval mode, step `step_size` (0: 2.5 eps / steps,
    Madry et al.'s)."""
    step = step_size or (2.5 * attack.eps / steps if steps else 0.0)
    return AttackConfig(eps=attack.eps, step_size=step, steps=steps, norm=attack.norm, bn_mode="eval")


def method_config(method: Method) -> dict:
    """A method as JSON-able data: `{"name", "options": its hyperparameters, "attack": AttackConfig fields}`."""
    options = {f.name: getattr(method, f.name) for f in dataclasses.fields(method) if f.name != "attack"}
    return {"name": method.name, "options": options, "attack": dataclasses.asdict(method.attack)}


def method_from_config(config: dict) -> Method:
    """The method `method_config` describes; an unknown name or hyperparameter raises ValueError."""
    # Here, not at the top: the registry imports every method module, and only loading needs it.
    from tfrobust import methods

    return methods.build(config["name"], AttackConfig(**config["attack"]), config.get("options", {}))


def _is_array(value) -> bool:
    """A NumPy array or an eager tensor (what Keras batches itself), not a dataset or generator."""
    return isinstance(value, (np.ndarray, tf.Tensor)) and getattr(value, "ndim", len(value.shape)) >= 1


@keras.saving.register_keras_serializable(package="tfrobust")
class RobustModel(keras.Model):
    """Trains `classifier` with `method`; evaluates clean and PGD accuracy in inference mode.

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        method: a `tfrobust.methods.Method`.
        eval_attack: the PGD used by `test_step` (and so by `evaluate` and validation);
            default `default_eval_attack(method.attack)`.
        weight_decay: coupled L2 coefficient.
        seed: base of the per-step stateless seeds (step seed = fold_in(seed, optimizer step)).
        eps_warmup_steps: train against eps (and step size) scaled by min(1, (t + 1) / N) at
            optimizer step t, a linear ramp over the first N steps (0: none). Large-eps MNIST
            training sits on a chance-level plateau without it at short budgets. It is a function
            of the checkpointed step count, so a resumed run ramps exactly as an uninterrupted one.
            The `train_eps` metric logs the eps in use.
        weight_average: a `tfrobust.averaging.WeightAverage` of `classifier`, updated after every
            optimizer step; `evaluate` (and so validation inside `fit`) runs on the averages.
        monitor_clean: log `clean_accuracy` during training. Methods that compute the clean logits
            anyway (TRADES, MART, MIMAE, standard) report it for free, on the whole batch; for those
            that never see x (PGD-AT, ATENT) it costs an extra inference pass, which False skips
            (their training logs then have no clean_accuracy; evaluation still reports it).
        monitor_clean_fraction: the share of each (per-replica) batch that extra pass runs on, its
            first ceil(fraction * B) images (shuffled batches: an unbiased sample); 1: all of it.
            The default 1/8 costs about 1/8 of an inference forward, under 1% of a PGD-10 step.
    """

    def __init__(
        self,
        classifier: keras.Model,
        method: Method,
        *,
        eval_attack: AttackConfig | None = None,
        weight_decay: float = 0.0,
        seed: int = 0,
        eps_warmup_steps: int = 0,
        weight_average: averaging.WeightAverage | None = None,
        monitor_clean: bool = True,
        monitor_clean_fraction: float = MONITOR_CLEAN_FRACTION,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.method = method
        self.eval_attack = eval_attack or default_eval_attack(method.attack)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        if int(eps_warmup_steps) < 0:
            raise ValueError(f"eps_warmup_steps must be >= 0, got {eps_warmup_steps}")
        self.eps_warmup_steps = int(eps_warmup_steps)
        self.weight_average = weight_average
        self.monitor_clean = bool(monitor_clean)
        if not 0 < float(monitor_clean_fraction) <= 1:
            raise ValueError(f"monitor_clean_fraction must be in (0, 1], got {monitor_clean_fraction}")
        self.monitor_clean_fraction = float(monitor_clean_fraction)
        self.train_step_traces = 0  # counted at trace time: a compiled step traces once per run
        self._loss_metric = keras.metrics.Mean(name="loss")
        self._term_metrics = {n: keras.metrics.Mean(name=n) for n in method.term_names}
        self._clean_acc = keras.metrics.SparseCategoricalAccuracy(name="clean_accuracy")
        self._adv_acc = keras.metrics.SparseCategoricalAccuracy(name="adv_accuracy")
        self._adv_loss = keras.metrics.Mean(name="adv_loss")
        self._train_eps = keras.metrics.Mean(name="train_eps") if self.eps_warmup_steps else None
        if classifier.built:  # no variables of its own; `train_step` never calls `self`, which builds
            self.build(classifier.input_shape)

    def call(self, inputs, training=False):
        return self.classifier(inputs, training=training)

    def build(self, input_shape):
        """Builds the classifier; the model itself has no variables but its metrics'."""
        if not self.classifier.built:
            self.classifier.build(input_shape)
        self.built = True

    def get_config(self) -> dict:
        """The classifier (serialized by Keras), the method (name, hyperparameters, attack) and the
        other constructor arguments: `keras.models.load_model` rebuilds the model from it."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "classifier": keras.saving.serialize_keras_object(self.classifier),
            "method": method_config(self.method),
            "eval_attack": dataclasses.asdict(self.eval_attack),
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "eps_warmup_steps": self.eps_warmup_steps,
            "monitor_clean": self.monitor_clean,
            "monitor_clean_fraction": self.monitor_clean_fraction,
        }

    def compile_from_config(self, config: dict) -> None:
        """Recompile with the saved optimizer when loading, as Keras does for models whose `compile`
        is its own (ours only adds the optimizer's slots); the saved slots are loaded afterwards."""
        self.compile(**keras.saving.deserialize_keras_object(config))

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> RobustModel:
        config = dict(config)
        classifier = keras.saving.deserialize_keras_object(config.pop("classifier"), custom_objects=custom_objects)
        if hasattr(classifier, "_operations"):  # functional: as `models.build_model` gives it, checkpointable
            from tfrobust.models._common import track_for_checkpoint

            track_for_checkpoint(classifier)
        method = method_from_config(config.pop("method"))
        eval_attack = AttackConfig(**config.pop("eval_attack"))
        return cls(classifier, method, eval_attack=eval_attack, **config)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # A private Keras hook that fails under MultiWorkerMirroredStrategy: see compat.
        compat.maybe_symbolic_build(self, (None, *self.classifier.input_shape[1:]), iterator, data_batch)

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        # Create the optimizer's slots now: a tf.function whose first call creates variables is
        # traced twice, and the compiled step must be traced once per run.
        if self.classifier.built and not self.optimizer.built:
            self.optimizer.build(self.classifier.trainable_variables)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, sample_weight=None, **kwargs):
        """Keras `fit`; in-memory arrays (NumPy or tensors) go through `data.array_batches`.

        Keras's own pipeline for arrays runs with `tf.data` autotuning, which on a 2-core host
        sometimes ran whole epochs on one core (517 instead of 291 ms per clean SmallCNN step in 2
        of 3 runs). Arrays are batched here as Keras would (batch_size default 32, the last batch
        partial, `validation_split` taken from the end before shuffling, a reshuffle every epoch
        seeded by `seed`) with autotuning off; datasets and generators go to Keras unchanged.
        """
        if _is_array(x) and _is_array(y) and shuffle in (True, False):
            batch_size = batch_size or 32
            arrays = tuple(a for a in (x, y, sample_weight) if a is not None)
            if validation_split and validation_data is None:
                n = int(arrays[0].shape[0])
                split = n - int(n * validation_split)
                validation_data = tuple(a[split:] for a in arrays)
                arrays = tuple(a[:split] for a in arrays)
            if isinstance(validation_data, (tuple, list)) and all(_is_array(a) for a in validation_data):
                validation_data = data.array_batches(
                    tuple(validation_data), batch_size=kwargs.pop("validation_batch_size", None) or batch_size,
                    shuffle=False, seed=self.seed)
            x = data.array_batches(arrays, batch_size=batch_size, shuffle=bool(shuffle), seed=self.seed)
            y = sample_weight = batch_size = None
            validation_split, shuffle = 0.0, False  # shuffled above
        return super().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks,
                           validation_split=validation_split, validation_data=validation_data, shuffle=shuffle,
                           sample_weight=sample_weight, **kwargs)

    @property
    def metrics(self):
        return [self._loss_metric, *self._term_metrics.values(), self._clean_acc, self._adv_acc,
                self._adv_loss, *([self._train_eps] if self._train_eps else [])]

    # -- training -------------------------------------------------------------------------

    def step_seed(self) -> tf.Tensor:
        return rng.fold_in(rng.as_seed(self.seed), self.optimizer.iterations)

    def budget_scale(self) -> float | tf.Tensor:
        """The fraction of eps this step attacks with (see `eps_warmup_steps`)."""
        if not self.eps_warmup_steps:
            return 1.0
        done = tf.cast(self.optimizer.iterations + 1, keras.config.floatx())
        return tf.minimum(1.0, done / float(self.eps_warmup_steps))

    def _differentiate(self, loss_fn: Callable[[], LossOutput], regularize: bool, inputs: tuple = ()):
        """(loss output, gradients of the scaled loss w.r.t. the trainable variables, followed by its
        gradients w.r.t. each of `inputs`: one backward pass for both)."""
        variables = self.classifier.trainable_variables
        with tf.GradientTape() as tape:
            for t in inputs:
                tape.watch(t)
            out = loss_fn()
            loss = tf.nn.compute_average_loss(out.per_example)
            loss += tf.cast(out.batch_loss, loss.dtype) / _num_replicas()
            if regularize and self.weight_decay:
                l2 = tf.add_n([tf.cast(tf.nn.l2_loss(v), loss.dtype) for v in variables])
                loss += tf.nn.scale_regularization_loss(self.weight_decay * l2)
            scaled = self.optimizer.scale_loss(loss)
        return out, tape.gradient(scaled, [*variables, *inputs])

    def train_step(self, data):
        self.train_step_traces += 1
        x, y = data[0], data[1]
        ctx = StepContext(self.classifier, self.step_seed(), self.budget_scale(), self.optimizer.iterations)
        out, grads, _ = self.method.gradients(ctx, x, y, self._differentiate)
        self.optimizer.apply_gradients(zip(grads, self.classifier.trainable_variables))
        if self.weight_average is not None:
            self.weight_average.update(self.optimizer.iterations)

        logs = self._update_loss_metrics(out)
        clean_y, clean_logits = y, out.clean_logits
        if clean_logits is None and self.monitor_clean:  # e.g. PGD-AT never sees x: an inference pass
            clean_x, clean_y = self._monitored(x, y)
            clean_logits = ctx.logits(clean_x, training=False)
        if clean_logits is not None:
            self._clean_acc.update_state(clean_y, clean_logits)
            logs.append(self._clean_acc)
        if out.adv_logits is not None:
            self._adv_acc.update_state(y, out.adv_logits)
            logs.append(self._adv_acc)
        if self._train_eps is not None:
            self._train_eps.update_state(ctx.eps(self.method.attack))
            logs.append(self._train_eps)
        return compat.step_logs(logs)

    def _monitored(self, x, y):
        """The first ceil(monitor_clean_fraction * B) examples of the batch (all of it at 1)."""
        if self.monitor_clean_fraction == 1:
            return x, y
        size = tf.cast(tf.shape(y)[0], tf.float32)
        n = tf.cast(tf.math.ceil(size * self.monitor_clean_fraction), tf.int32)
        return x[:n], y[:n]

    def _update_loss_metrics(self, out: LossOutput) -> list[keras.metrics.Metric]:
        total = out.per_example + tf.cast(out.batch_loss, out.per_example.dtype)
        self._loss_metric.update_state(total)
        for name, value in out.terms.items():
            self._term_metrics[name].update_state(value)
        return [self._loss_metric, *(self._term_metrics[n] for n in out.terms)]

    # -- evaluation -----------------------------------------------------------------------

    def evaluated_weights(self):
        """A context in which the classifier holds the weights that are evaluated and exported:
        the averages with weight averaging, else its own."""
        return self.weight_average.swapped_in() if self.weight_average is not None else contextlib.nullcontext()

    def evaluate(self, *args, **kwargs):
        with self.evaluated_weights():  # also fit's validation, which calls evaluate
            return super().evaluate(*args, **kwargs)

    def _eval_logits(self, x):
        return losses.as_float(self.classifier(x, training=False))

    def adversarial_examples(self, x: tf.Tensor, y: tf.Tensor, seed: int | tf.Tensor = 0) -> tf.Tensor:
        """PGD examples of `eval_attack` against the classifier in inference mode."""
        a = self.eval_attack
        return pgd.pgd(self._eval_logits, x, y, eps=a.eps, step_size=a.step_size, steps=a.steps,
                       norm=a.norm, start="uniform", seed=seed)

    def test_step(self, data):
        x, y = data[0], data[1]
        clean_logits = self._eval_logits(x)
        adv_logits = self._eval_logits(self.adversarial_examples(x, y, seed=self.seed + 1))
        self._loss_metric.update_state(losses.cross_entropy(clean_logits, y))
        self._adv_loss.update_state(losses.cross_entropy(adv_logits, y))
        self._clean_acc.update_state(y, clean_logits)
        self._adv_acc.update_state(y, adv_logits)
        return compat.step_logs((self._loss_metric, self._clean_acc, self._adv_acc, self._adv_loss))
