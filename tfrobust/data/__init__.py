"""Datasets as in-memory arrays (`sources`), and reproducible `tf.data` pipelines over them (`pipelines`).

Every pipeline yields `(x, y)` batches: `x` float32 NHWC in [0, 1], `y` int32
class indices.  Images stay in their stored dtype in memory (uint8 for the
TFDS image datasets, which are large) and are converted to float per batch.

The training stream is a pure function of `(seed, epoch, batch index)`: the
order of epoch `e` is a stateless permutation keyed by `[seed, e]`, and the
augmentation of a batch is keyed by `[seed, e]` folded with the batch index.
Nothing depends on iterator state, so a run killed mid-epoch and restarted
with `start_epoch`/`skip_batches` sees exactly the batches it would have seen.
"""

from tfrobust.data.pipelines import (
    AUGMENT_PADDING,
    RNG_ALG,
    DatasetInfo,
    array_batches,
    datasets,
    eval_dataset,
    steps_per_epoch,
    train_stream,
)
from tfrobust.data.sources import NPZ_KEYS, NPZ_PREFIX, TFDS_NAMES, DataError, Splits, is_cifar_like, load

__all__ = ["AUGMENT_PADDING", "NPZ_KEYS", "NPZ_PREFIX", "RNG_ALG", "TFDS_NAMES", "DataError", "DatasetInfo", "Splits",
           "array_batches", "datasets", "eval_dataset", "is_cifar_like", "load", "steps_per_epoch", "train_stream"]
