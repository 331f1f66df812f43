"""Stateless, seeded randomness that does not depend on how a batch is split.

Attacks and training steps draw their noise from a `[2]` integer seed with stateless ops, so a run
repeats exactly and a resumed run continues the same sequence. Under a distribution strategy each
replica holds a contiguous slice of the global batch; drawing the noise for the whole global batch
and keeping the replica's slice makes one step on N replicas use the same noise, example for
example, as one step on one device (the equivalence test of the multi-device code relies on it).
Drawing N times more noise than needed costs little beside the forward passes it feeds.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

Seed = tf.Tensor  # shape [2], int32 or int64


def as_seed(seed: int | tf.Tensor | None) -> tf.Tensor:
    """A `[2]` int64 stateless seed from an int, an existing seed, or None (drawn at random)."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank == 0:
        return tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    return tf.cast(seed, tf.int64)


def split(seed: Seed, num: int = 2) -> tf.Tensor:
    """`num` independent seeds, shape [num, 2]."""
    return tf.random.experimental.stateless_split(seed, num)


def fold_in(seed: Seed, data: int | tf.Tensor) -> tf.Tensor:
    """A new seed that depends on `seed` and an integer (a step index, an epoch)."""
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int32))


def _batch_consistent(sample: Callable[[tf.Tensor], tf.Tensor], shape: tf.Tensor) -> tf.Tensor:
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    if replicas == 1:
        return sample(shape)
    local = shape[0]
    full = sample(tf.concat([[local * replicas], shape[1:]], axis=0))
    start = tf.cast(ctx.replica_id_in_sync_group, local.dtype) * local
    return full[start : start + local]


def normal(seed: Seed, like: tf.Tensor) -> tf.Tensor:
    """Standard normal noise with the shape and dtype of `like` (a batch, leading axis examples)."""
    shape = tf.shape(like)
    return _batch_consistent(lambda s: tf.random.stateless_normal(s, seed, dtype=like.dtype), shape)


def uniform(seed: Seed, like: tf.Tensor, minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
    """Uniform noise in [minval, maxval) with the shape and dtype of `like`."""
    shape = tf.shape(like)
    return _batch_consistent(
        lambda s: tf.random.stateless_uniform(s, seed, minval, maxval, dtype=like.dtype), shape
    )
