"""Reproducible `tf.data` pipelines over in-memory arrays (`tfrobust.data.sources`).

Every pipeline yields `(x, y)` batches: `x` NHWC in [0, 1] of the compute dtype
(`keras.config.floatx()`, float32 by default), `y` int32 class indices. Images stay in their
stored dtype in memory (uint8 for the TFDS image datasets, which are large) and are converted to
float per batch.

The training stream is a pure function of `(seed, epoch, batch index)`: the
order of epoch `e` is a stateless permutation keyed by `[seed, e]`, and the
augmentation of a batch is keyed by `[seed, e]` folded with the batch index.
Nothing depends on iterator state, so a run killed mid-epoch and restarted
with `start_epoch`/`skip_batches` sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfrobust.data.sources import DataError, _checked_arrays, load

# Pixels of zero padding before the random crop (torchvision RandomCrop(32, padding=4)).
AUGMENT_PADDING = 4

# Philox on every device, so a seed means the same numbers on CPU and GPU hosts.
RNG_ALG = "philox"


# --------------------------------------------------------------------------- pipelines


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Number of full batches in one epoch (the remainder is dropped).

    Raises:
      DataError: if batch_size < 1 or there is not even one full batch.
    """
    if batch_size < 1:
        raise DataError(f"batch_size is {batch_size}; expected an int >= 1")
    steps = num_examples // batch_size
    if steps == 0:
        raise DataError(
            f"batch_size {batch_size} exceeds the {num_examples} training examples;"
            " expected at least one full batch per epoch"
        )
    return steps


def train_stream(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    start_epoch: int = 0,
    skip_batches: int = 0,
    augment: bool = False,
    epochs: int | None = None,
    autotune: bool = False,
) -> tf.data.Dataset:
    """Reproducible, resumable stream of full training batches.

    Epoch `e` visits the examples in the order
    `tf.random.experimental.stateless_shuffle(tf.range(n), seed=[seed, e])`
    (Philox), cut into consecutive batches; the remainder is dropped. The
    stream starts at batch `skip_batches` of `start_epoch` (earlier batches
    are never computed), so restarting with the (epoch, batch) reached
    continues exactly as the uninterrupted stream would have.

    Args:
      x: images NHWC (or NHW), uint8 0..255 or float in [0, 1].
      y: integer class indices, shape (N,).
      batch_size: examples per batch.
      seed: seed of the shuffle and the augmentation.
      start_epoch: first epoch produced.
      skip_batches: batches of `start_epoch` to skip, in [0, steps_per_epoch).
      augment: zero-pad 4 pixels, crop back to H x W at a random offset and
        flip horizontally with p=0.5, per example.
      epochs: None for an infinite stream; otherwise the stream ends after
        epoch `epochs - 1` (epochs are counted from 0).
      autotune: leave tf.data autotuning on. Off by default: on a 2-core host
        it sometimes ran a whole epoch on one core.

    Returns:
      Dataset of (float32 (batch_size, H, W, C) in [0, 1], int32 (batch_size,)).
    """
    x, y = _checked_arrays(x, y, "x", "y")
    steps = steps_per_epoch(len(x), batch_size)
    if start_epoch < 0:
        raise DataError(f"start_epoch is {start_epoch}; expected an int >= 0")
    if not 0 <= skip_batches < steps:
        raise DataError(f"skip_batches is {skip_batches}; expected an int in [0, {steps}) (batches per epoch)")
    if epochs is not None and epochs < start_epoch:
        raise DataError(f"epochs is {epochs} but start_epoch is {start_epoch}; expected epochs >= start_epoch")

    images = tf.constant(x)
    labels = tf.constant(y)
    seed = tf.constant(seed, tf.int64)
    num_examples = len(x)

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        """(epoch, batch index, example indices) for every batch of `epoch` still to be produced."""
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples), seed=tf.stack([seed, epoch]), alg=RNG_ALG
        )
        index_batches = tf.reshape(order[: steps * batch_size], [steps, batch_size])
        first = tf.where(epoch == start_epoch, skip_batches, 0)
        return tf.data.Dataset.from_tensor_slices(
            (tf.fill([steps - first], epoch), tf.range(first, steps), index_batches[first:])
        )

    def make_batch(epoch: tf.Tensor, batch_index: tf.Tensor, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch = tf.gather(images, indices)
        if augment:
            key = tf.random.experimental.stateless_fold_in(tf.stack([seed, epoch]), batch_index, alg=RNG_ALG)
            batch = _pad_crop_flip(batch, key)
        return _to_unit_float(batch), tf.gather(labels, indices)

    if epochs is None:
        epoch_indices = tf.data.Dataset.counter(start_epoch)
        cardinality = tf.data.INFINITE_CARDINALITY
    else:
        epoch_indices = tf.data.Dataset.range(start_epoch, epochs)
        cardinality = max(0, (epochs - start_epoch) * steps - skip_batches)
    dataset = (
        epoch_indices.flat_map(epoch_batches)
        .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .apply(tf.data.experimental.assert_cardinality(cardinality))  # lets Keras see the length
        .prefetch(tf.data.AUTOTUNE)
    )
    options = tf.data.Options()
    options.autotune.enabled = autotune
    return dataset.with_options(options)


def _pad_crop_flip(batch: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Per-example random crop of the zero-padded images plus random horizontal flip.

    Vectorised: each example's crop window (and flip, as reversed columns) is
    expressed as row and column indices into the padded batch, then gathered.
    """
    pad = AUGMENT_PADDING
    size, height, width = batch.shape[0], batch.shape[1], batch.shape[2]
    padded = tf.pad(batch, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    draws = tf.random.stateless_uniform([size, 3], seed=key, alg=RNG_ALG)
    offsets = tf.cast(draws[:, :2] * (2 * pad + 1), tf.int32)  # each in 0..2*pad
    flip = draws[:, 2:] < 0.5
    rows = offsets[:, :1] + tf.range(height)
    cols = offsets[:, 1:] + tf.where(flip, tf.range(width - 1, -1, -1), tf.range(width))
    cropped_rows = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped_rows, cols, axis=2, batch_dims=1)


def _to_unit_float(images: tf.Tensor) -> tf.Tensor:
    """Images in [0, 1] of the compute dtype `keras.config.floatx()` (float32, or float64 for
    reference comparisons) from uint8 (0..255) or float (already 0..1) images."""
    import keras  # here, not at the top: the data layer needs Keras only for the compute dtype

    dtype = keras.config.floatx()
    if images.dtype == tf.uint8:
        return tf.cast(images, dtype) / 255.0
    return tf.cast(images, dtype)


def eval_dataset(x: np.ndarray, y: np.ndarray, *, batch_size: int, limit: int | None = None) -> tf.data.Dataset:
    """Batches of (x, y) in order, the last one possibly partial.

    Args:
      x: images NHWC (or NHW), uint8 0..255 or float in [0, 1].
      y: integer class indices, shape (N,).
      batch_size: examples per batch.
      limit: use only the first `limit` examples (None = all).

    Returns:
      Dataset of (float32 (<=batch_size, H, W, C) in [0, 1], int32 (<=batch_size,)).
    """
    x, y = _checked_arrays(x, y, "x", "y")
    if batch_size < 1:
        raise DataError(f"batch_size is {batch_size}; expected an int >= 1")
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit is {limit}; expected None or an int >= 1")
        x, y = x[:limit], y[:limit]
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(batch_size)
        .map(lambda images, labels: (_to_unit_float(images), labels))
        .prefetch(tf.data.AUTOTUNE)
    )


def array_batches(
    arrays: tuple,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    autotune: bool = False,
) -> tf.data.Dataset:
    """What Keras `fit` makes of in-memory arrays, with `tf.data` autotuning off.

    Batches of `arrays` (x, y and optionally sample weights, sliced along axis 0) in Keras's
    semantics: the last batch may be partial, and with `shuffle` the order is reshuffled every
    epoch (seeded by `seed`). Keras's own array pipeline runs with autotuning on, which on a 2-core
    host sometimes ran a whole epoch on one core (see `train_stream`); `RobustModel.fit` feeds
    arrays through this instead.

    Returns:
      Dataset of tuples like `arrays`, batched; the values are passed through unchanged.
    """
    if batch_size < 1:
        raise DataError(f"batch_size is {batch_size}; expected an int >= 1")
    dataset = tf.data.Dataset.from_tensor_slices(tuple(arrays))
    if shuffle:
        count = int(dataset.cardinality())
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.autotune.enabled = autotune
    # in-memory data: shard by example under a multi-worker strategy (what Keras sets for arrays)
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.batch(batch_size).prefetch(2).with_options(options)


# --------------------------------------------------------------------------- ready to fit


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about the data `datasets` returns.

    Attributes:
      name: the source.
      image_shape: (height, width, channels).
      num_classes: number of classes.
      mean, std: per-channel train statistics on the [0, 1] scale, for
        `models.build_model(..., mean=info.mean, std=info.std)`.
      train_examples, validation_examples, test_examples: rows of each split.
      steps_per_epoch: full training batches per epoch (`fit`'s `steps_per_epoch`).
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_examples: int
    validation_examples: int
    test_examples: int
    steps_per_epoch: int


def datasets(
    source: str = "digits",
    *,
    batch_size: int = 128,
    data_dir: str | None = None,
    validation_size: float | int = 0,
    seed: int = 0,
    augment: bool = False,
    epochs: int | None = None,
    train_examples: int | None = None,
    test_examples: int | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset | None, tf.data.Dataset, DatasetInfo]:
    """Train, validation and test pipelines of float32 [0, 1] images, ready for `fit`.

    `load` followed by `train_stream` for train and `eval_dataset` for validation and test:

        train, val, test, info = data.datasets("digits", batch_size=64, validation_size=0.1)
        model.fit(train, epochs=3, steps_per_epoch=info.steps_per_epoch, validation_data=val)

    Args:
      source: as in `load`.
      data_dir: as in `load`.
      validation_size: as in `load`.
      seed: as in `load`; it also seeds the training order and augmentation.
      batch_size: examples per batch of every pipeline.
      augment: pad-crop-flip augmentation of training batches (see `train_stream`).
      epochs: None for an endless training stream (give `fit` `steps_per_epoch`), or the
        number of epochs after which it ends.
      train_examples: use only the first that many training examples, after the validation
        hold-out (None = all).
      test_examples: use only the first that many test examples (None = all).

    Returns:
      (train, validation or None when `validation_size` is 0, test, info). Train batches are
      full (the remainder of each epoch is dropped) and reshuffled every epoch; validation and
      test batches are in order, the last one possibly partial.

    Raises:
      DataError: as `load`, `train_stream` and `eval_dataset`.
    """
    for name, value in (("train_examples", train_examples), ("test_examples", test_examples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DataError(f"{name} is {value!r}; expected None or an int >= 1")
    splits = load(source, data_dir=data_dir, validation_size=validation_size, seed=seed)
    x_train, y_train = splits.x_train, splits.y_train
    if train_examples is not None:
        x_train, y_train = x_train[:train_examples], y_train[:train_examples]
        splits = dataclasses.replace(splits, x_train=x_train, y_train=y_train)
    train = train_stream(x_train, y_train, batch_size=batch_size, seed=seed, augment=augment, epochs=epochs)
    validation = eval_dataset(splits.x_val, splits.y_val, batch_size=batch_size) if len(splits.x_val) else None
    test = eval_dataset(splits.x_test, splits.y_test, batch_size=batch_size, limit=test_examples)
    info = DatasetInfo(
        name=splits.name, image_shape=splits.image_shape, num_classes=splits.num_classes, mean=splits.mean,
        std=splits.std, train_examples=len(x_train), validation_examples=len(splits.x_val),
        test_examples=min(len(splits.x_test), test_examples or len(splits.x_test)),
        steps_per_epoch=steps_per_epoch(len(x_train), batch_size),
    )
    return train, validation, test, info
