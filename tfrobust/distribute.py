"""Distribution strategies by name, which process writes, and cross-replica sums.

Only the chief (the `chief` task of TF_CONFIG, or `worker` 0 when there is none) writes the run's
files. Other workers still take part in every collective operation (training steps, evaluation,
checkpoint saving and export); whatever they must write goes to a private temporary directory that
the caller deletes afterwards (`worker_dir`), as the TensorFlow multi-worker guide prescribes.
"""

from __future__ import annotations

import json
import os
import tempfile

from tfrobust.lazy import lazy_import

# Imported on first use: reading STRATEGIES (the --strategy flag's choices) needs no TensorFlow.
tf = lazy_import("tensorflow")
compat = lazy_import("tfrobust.compat")

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The strategy called `name`.

    auto: MirroredStrategy over all GPUs when there are two or more, else the default strategy;
    one_device: the first GPU, or the CPU; mirrored: MirroredStrategy over every visible GPU (or
    every logical CPU device when there is no GPU, which is how the tests split one CPU);
    multi_worker: MultiWorkerMirroredStrategy configured by the TF_CONFIG environment variable.
    Create it before any other TensorFlow op runs: MultiWorkerMirroredStrategy configures the
    process's collective runtime when it is created.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")
    if name == "multi_worker":  # before anything that starts the runtime (list_logical_devices does)
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("strategy multi_worker needs the TF_CONFIG environment variable (cluster and task)")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)  # mirrored


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` spans more than one process (a private TensorFlow test: see `compat`)."""
    return compat.in_multi_worker_mode(strategy)


def task() -> tuple[str, int]:
    """(task type, task index) of this process in TF_CONFIG; ("chief", 0) without it."""
    if not os.environ.get("TF_CONFIG"):
        return "chief", 0
    t = json.loads(os.environ["TF_CONFIG"]).get("task", {})
    return str(t.get("type", "chief")), int(t.get("index", 0))


def describe(strategy: tf.distribute.Strategy) -> str:
    """The strategy and its devices, e.g. 'MirroredStrategy on CPU:0, CPU:1'."""
    if type(strategy).__name__.startswith("_Default"):  # it has no worker_devices
        return "default strategy, one device"
    names = ", ".join(d.split("device:")[-1] for d in strategy.extended.worker_devices)
    kind = type(strategy).__name__
    return f"{kind} on {names}" if names else kind


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes summaries, checkpoints and exports (the chief, or worker 0).

    TensorFlow's own answer (`strategy.extended.should_checkpoint`: False only on the non-chief
    workers of a multi-worker strategy).
    """
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def worker_dir(path: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process writes what would go to `path`: `path` itself on the chief, else a new
    private temporary directory (the caller deletes it when done)."""
    if is_chief(strategy):
        return path
    kind, index = task()
    return tempfile.mkdtemp(prefix=f"tfrobust-{kind}{index}-")


def broadcast_from_chief(strategy: tf.distribute.Strategy, value: int) -> int:
    """The chief's `value` on every worker (a collective: every worker must call it).

    Used to agree on decisions only the chief can make (whether the run directory is usable and
    whether it holds a run to continue) and to check that every worker restored the same step.
    Without multiple workers it returns `value`.
    """
    if not is_multi_worker(strategy):
        return int(value)
    local = len(strategy.extended.worker_devices)
    share = float(value) / local if is_chief(strategy) else 0.0
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(share, tf.float64))
    return int(round(float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))))


def global_sum(value: tf.Tensor) -> tf.Tensor:
    """The sum of `value` over all replicas (itself with one replica).

    Differentiable: the gradient of an all-reduce SUM is the all-reduce SUM of the upstream
    gradients, so a batch-level loss built on it gets its full gradient on every replica.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)
