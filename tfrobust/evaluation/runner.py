"""The data an evaluation attacks, and the runner that attacks it: compiled attacks applied batch by
batch to fixed arrays (all examples, or a subset such as the survivors of earlier attacks).

Every attack runs in one `tf.function` per attack configuration, traced once, with eps and the seed
passed as tensors, so neither a new eps nor a new batch retraces (the cleverhans PGD takes eps only
as a Python number, so it traces once per eps). The batch axis is dynamic (no padding, and a smaller
last batch or a sub-batch of survivors does not retrace); under XLA (`jit_compile`) it is static and
the last batch is padded by repeating its last example (the padding is dropped afterwards).

Randomness: the seed of a batch depends on the evaluation seed, the attack's label and the index
(in the evaluated arrays) of the batch's first example, not on eps (common random numbers make the
accuracy-vs-eps curves smoother), so a run repeats exactly for the same seed, batch size and data
order, and with batch size 1 each example gets the same random draws whether it is attacked with
all examples or only with the survivors of earlier attacks.
"""

from __future__ import annotations

import functools
import sys
import time
import zlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfrobust import losses, rng
from tfrobust.attacks.objectives import LogitsFn
from tfrobust.evaluation.table import AttackSpec, EvaluationError, attack_function


def as_logits_fn(model_or_fn) -> LogitsFn:
    """A logits function in the compute dtype (`losses.as_float`): a keras.Model is called with
    training=False."""
    if isinstance(model_or_fn, keras.Model):
        model = model_or_fn
        return lambda x: losses.as_float(model(x, training=False))
    if not callable(model_or_fn):
        raise EvaluationError("logits_fn must be callable (images -> logits)")
    return lambda x: losses.as_float(model_or_fn(x))


def load_arrays(data, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x NHWC in [0, 1] of `keras.config.floatx()`, y int32) from (x, y) arrays or a tf.data.Dataset of (x, y)
    (batched or not), keeping the first `limit` examples."""
    if limit is not None and int(limit) < 1:
        raise EvaluationError(f"limit must be None or >= 1, got {limit}")
    if isinstance(data, tf.data.Dataset):
        xs, ys, count = [], [], 0
        batched = len(data.element_spec[0].shape) == 4
        for xb, yb in data:
            xb, yb = np.asarray(xb), np.asarray(yb)
            if not batched:
                xb, yb = xb[None], yb[None]
            xs.append(xb)
            ys.append(yb)
            count += len(xb)
            if limit is not None and count >= limit:
                break
        if not xs:
            raise EvaluationError("the dataset is empty")
        x, y = np.concatenate(xs), np.concatenate(ys)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
    else:
        raise EvaluationError("data must be (x, y) arrays or a tf.data.Dataset of (x, y)")
    if limit is not None:
        x, y = x[: int(limit)], y[: int(limit)]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise EvaluationError(f"expected x [N, H, W, C] and y [N] with N > 0, got {x.shape} and {y.shape}")
    dtype = np.dtype(keras.config.floatx())
    x = x.astype(dtype) / 255.0 if x.dtype == np.uint8 else x.astype(dtype)
    if x.min() < 0.0 or x.max() > 1.0:
        hint = " (divide 0..255 images by 255)" if x.max() > 1.0 else ""
        raise EvaluationError(f"images must be in [0, 1], got [{x.min()}, {x.max()}]{hint}")
    if not np.issubdtype(y.dtype, np.integer):
        raise EvaluationError(f"labels must be integers, got {y.dtype}")
    return x, y.astype(np.int32)


def distance(x_adv: np.ndarray, x: np.ndarray, norm: str) -> np.ndarray:
    """Per-example perturbation norm [N]."""
    d = (x_adv - x).reshape(len(x), -1)
    return np.abs(d).max(axis=1) if norm == "linf" else np.sqrt((d.astype(np.float64) ** 2).sum(axis=1))


class Progress:
    """Console progress of an evaluation (silent unless `verbose`): a line per stage or check and a
    keras Progbar over the batches of each attack."""

    def __init__(self, verbose: bool):
        self.verbose = bool(verbose)

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stdout, flush=True)

    def bar(self, title: str, batches: int) -> keras.utils.Progbar | None:
        if not self.verbose:
            return None
        self.log(title)
        return keras.utils.Progbar(batches)


def _predict_classes(logits_fn: LogitsFn, x: tf.Tensor) -> tf.Tensor:
    return tf.argmax(logits_fn(x), axis=-1, output_type=tf.int32)


class Runner:
    """Runs compiled attacks batch by batch on fixed arrays and scores them."""

    def __init__(self, logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, norm: str, batch_size: int, seed: int,
                 clip_min: float, clip_max: float, jit_compile: bool, progress: Progress | None = None):
        self.logits_fn, self.x, self.y, self.norm = logits_fn, x, y, norm
        self.batch_size = min(int(batch_size), len(x))
        self.seed, self.clip_min, self.clip_max = int(seed), clip_min, clip_max
        self.jit_compile = bool(jit_compile)
        self.progress = progress or Progress(False)
        rows = self.batch_size if self.jit_compile else None  # XLA needs static shapes
        self.x_spec = tf.TensorSpec([rows, *x.shape[1:]], keras.config.floatx())
        self.y_spec = tf.TensorSpec([rows], tf.int32)
        # partials: TF's retracing detector keys on code objects, and every Runner traces its own
        self._predict = tf.function(functools.partial(_predict_classes, logits_fn), input_signature=[self.x_spec],
                                    jit_compile=self.jit_compile)
        self._compiled: dict[AttackSpec, Any] = {}
        self.trace_seconds: dict[str, float] = {}

    def spans(self, n: int) -> list[tuple[int, int]]:
        return [(start, min(start + self.batch_size, n)) for start in range(0, n, self.batch_size)]

    def _pad(self, a: np.ndarray) -> np.ndarray:
        if not self.jit_compile or len(a) == self.batch_size:
            return a
        return np.concatenate([a, np.repeat(a[-1:], self.batch_size - len(a), axis=0)])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted classes [N] of images x [N, ...]."""
        out = [self._predict(self._pad(x[a:b])).numpy()[: b - a] for a, b in self.spans(len(x))]
        return np.concatenate(out) if out else np.zeros([0], np.int32)

    def compiled(self, spec: AttackSpec):
        if spec not in self._compiled:
            fn = attack_function(spec, self.logits_fn, self.norm, self.clip_min, self.clip_max,
                                 compact=not self.jit_compile)
            # A partial, so TF's retracing detector (keyed by code object) does not count the
            # one trace of each attack configuration as retracing of one function.
            fn = functools.partial(fn)
            if spec.row.python_eps:  # eps must stay a Python float: one trace per eps
                self._compiled[spec] = tf.function(fn, jit_compile=self.jit_compile)
            else:
                compiled = tf.function(
                    fn, jit_compile=self.jit_compile,
                    input_signature=[self.x_spec, self.y_spec, tf.TensorSpec([], keras.config.floatx()),
                                     tf.TensorSpec([2], tf.int64)])
                start_time = time.perf_counter()
                compiled.get_concrete_function()  # trace now, so attack times exclude tracing
                self.trace_seconds[spec.display] = time.perf_counter() - start_time
                self._compiled[spec] = compiled
        return self._compiled[spec]

    def tracing_counts(self) -> dict[str, int]:
        """How often each compiled attack was traced (1 each, except cleverhans: 1 per eps)."""
        return {s.display: f.experimental_get_tracing_count() for s, f in self._compiled.items()}

    def batch_seed(self, spec: AttackSpec, first_index: int) -> tf.Tensor:
        base = rng.fold_in(rng.as_seed(self.seed), zlib.crc32(spec.display.encode()) & 0x7FFFFFFF)
        return tf.cast(rng.fold_in(base, int(first_index)), tf.int64)

    def attack(self, spec: AttackSpec, eps: float, index: np.ndarray | None = None,
               title: str | None = None) -> tuple[np.ndarray, float]:
        """Adversarial examples for the examples `index` (default: all) and the wall time (without
        tracing, except for cleverhans, traced on the first call with each eps)."""
        fn = self.compiled(spec)
        index = np.arange(len(self.x)) if index is None else np.asarray(index, np.int64)
        eps_arg = float(eps) if spec.row.python_eps else tf.constant(eps, keras.config.floatx())
        spans = self.spans(len(index))
        bar = self.progress.bar(title or f"{spec.display} at eps={eps:g} on {len(index)} examples", len(spans))
        out = []
        start_time = time.perf_counter()
        for a, b in spans:
            rows = index[a:b]
            xb, yb = tf.constant(self._pad(self.x[rows])), tf.constant(self._pad(self.y[rows]))
            out.append(fn(xb, yb, eps_arg, self.batch_seed(spec, rows[0])).numpy()[: b - a])
            if bar is not None:
                bar.add(1)
        x_adv = np.concatenate(out) if out else self.x[:0].copy()
        return x_adv, time.perf_counter() - start_time
