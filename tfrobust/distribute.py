"""Distribution strategies by name, and the cross-replica sum of batch-level statistics."""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The strategy called `name`.

    auto: MirroredStrategy over all GPUs when there are two or more, else the default strategy;
    one_device: the first GPU, or the CPU; mirrored: MirroredStrategy over every visible GPU (or
    every logical CPU device when there is no GPU, which is how the tests split one CPU);
    multi_worker: MultiWorkerMirroredStrategy configured by the TF_CONFIG environment variable.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if not os.environ.get("TF_CONFIG"):
        raise ValueError("strategy multi_worker needs the TF_CONFIG environment variable (cluster and task)")
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes summaries, checkpoints and exports (the chief, or worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not os.environ.get("TF_CONFIG"):
        return True
    task = json.loads(os.environ["TF_CONFIG"]).get("task", {})
    return task.get("type") == "chief" or (task.get("type") == "worker" and task.get("index", 0) == 0
                                           and "chief" not in json.loads(os.environ["TF_CONFIG"]).get("cluster", {}))


def global_sum(value: tf.Tensor) -> tf.Tensor:
    """The sum of `value` over all replicas (itself with one replica).

    Differentiable: the gradient of an all-reduce SUM is the all-reduce SUM of the upstream
    gradients, so a batch-level loss built on it gets its full gradient on every replica.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)
