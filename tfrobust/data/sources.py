"""Datasets as in-memory arrays: the sources (scikit-learn digits, TFDS, npz files), their checks
(shapes, dtypes, pixel range, labels against the training split's classes) and the validation
hold-out. The `tf.data` pipelines over them are in `tfrobust.data.pipelines`."""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import tensorflow as tf

from tfrobust.errors import TfrobustError

TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped")

NPZ_PREFIX = "npz:"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

# sklearn's bundled digits are not split; a fixed cut keeps results comparable.
DIGITS_TRAIN_SIZE = 1437
DIGITS_MAX_PIXEL = 16.0



_STATS_CHUNK_ROWS = 1024
_MAX_MESSAGE_CHARS = 400


class DataError(TfrobustError):
    """Bad input to this module; the message is one line saying what was wrong and what is accepted."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no useful ==
class Splits:
    """Train / validation / test arrays of one dataset.

    Images are NHWC, either uint8 in 0..255 or float32 in [0, 1]; labels are
    int32 of shape (N,). The validation arrays may have 0 rows.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of every image."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the train images on the [0, 1] scale."""
        return self._channel_stats[0]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation of the train images on the [0, 1] scale."""
        return self._channel_stats[1]

    @functools.cached_property
    def _channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # Chunked float64 sums: exact enough for [0, 1] pixels, and never
        # materialises a float copy of a whole uint8 dataset.
        channels = self.x_train.shape[-1]
        total = np.zeros(channels)
        total_sq = np.zeros(channels)
        for start in range(0, len(self.x_train), _STATS_CHUNK_ROWS):
            chunk = _unit_scale(self.x_train[start : start + _STATS_CHUNK_ROWS]).reshape(-1, channels)
            total += chunk.sum(axis=0)
            total_sq += np.square(chunk).sum(axis=0)
        count = self.x_train.size // channels
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _unit_scale(images: np.ndarray) -> np.ndarray:
    """float64 copy of `images` on the [0, 1] scale."""
    if images.dtype == np.uint8:
        return images.astype(np.float64) / 255.0
    return images.astype(np.float64)


def _one_line(text: object) -> str:
    """`text` with all whitespace runs (newlines included) collapsed, and capped in length."""
    line = " ".join(str(text).split())
    if len(line) > _MAX_MESSAGE_CHARS:
        line = line[: _MAX_MESSAGE_CHARS - 3] + "..."
    return line


# --------------------------------------------------------------------------- loading


def load(
    source: str = "digits",
    *,
    data_dir: str | None = None,
    validation_size: float | int = 0,
    seed: int = 0,
) -> Splits:
    """Load a dataset into memory.

    Args:
      source: "digits" (scikit-learn's bundled 8x8 digits; the first 1437
        images are train and the last 360 test, in the file's order, with no
        shuffling before the cut), a TFDS name from `TFDS_NAMES` (read with
        `tfds.load`, downloading into `data_dir` if needed), or "npz:PATH" (a
        .npz holding x_train, y_train, x_test, y_test; images NHW or NHWC,
        uint8 0..255 or float in [0, 1]; labels any non-negative integers).
      data_dir: TFDS data directory (TFDS sources only; None = TFDS default).
      validation_size: rows of train to hold out as validation: 0 for none, a
        float in (0, 1) for that fraction (at least one row), or an int >= 1
        for that many. They are picked by a permutation seeded with `seed`;
        train and validation both keep the original order.
      seed: seed of the validation hold-out.

    Returns:
      The splits as numpy arrays; uint8 images stay uint8 (TFDS sources, and npz files holding
      uint8). These arrays are not meant for `keras.Model.fit` directly: `datasets` (or
      `train_stream` and `eval_dataset`) turns them into batches of float32 [0, 1] images.

    Raises:
      DataError: unknown source, unreadable or malformed data, bad validation_size.
    """
    _validation_count(validation_size, None)  # fail on a bad value before any slow load
    if source == "digits":
        x_train, y_train, x_test, y_test, num_classes = _load_digits()
    elif source in TFDS_NAMES:
        x_train, y_train, x_test, y_test, num_classes = _load_tfds(source, data_dir)
    elif source.startswith(NPZ_PREFIX):
        x_train, y_train, x_test, y_test, num_classes = _load_npz(source[len(NPZ_PREFIX) :])
    else:
        raise DataError(
            f"unknown data source {source!r}; expected 'digits', one of {', '.join(TFDS_NAMES)}, or 'npz:PATH'"
        )
    x_train, y_train, x_val, y_val = _hold_out(x_train, y_train, validation_size, seed)
    return Splits(source, x_train, y_train, x_val, y_val, x_test, y_test, num_classes)


def _load_digits() -> tuple:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / DIGITS_MAX_PIXEL).astype(np.float32)[..., np.newaxis]
    labels = digits.target.astype(np.int32)
    cut = DIGITS_TRAIN_SIZE
    return images[:cut], labels[:cut], images[cut:], labels[cut:], int(labels.max()) + 1


def _load_tfds(name: str, data_dir: str | None) -> tuple:
    # Imported here: tensorflow_datasets is slow to import and only these sources need it.
    import tensorflow_datasets as tfds

    try:
        (train, test), info = tfds.load(
            name, split=["train", "test"], data_dir=data_dir, as_supervised=True, with_info=True
        )
        x_train, y_train = _whole_split(train)
        x_test, y_test = _whole_split(test)
    except Exception as error:  # TFDS raises many types (network, missing files, ...)
        raise DataError(f"could not load TFDS dataset {name!r}: {_one_line(error)}") from error
    x_train, y_train = _checked_arrays(x_train, y_train, "x_train", "y_train")
    x_test, y_test = _checked_arrays(x_test, y_test, "x_test", "y_test")
    _check_same_image_shape(x_train, x_test)
    num_classes = int(info.features["label"].num_classes)
    _check_labels(num_classes, y_train=y_train, y_test=y_test)
    return x_train, y_train, x_test, y_test, num_classes


def _whole_split(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All (image, label) pairs of a TFDS split as two numpy arrays.

    One batch of the split's cardinality rather than `tfds.load(batch_size=-1)`:
    that sizes the batch from the dataset info, which is empty under
    `tfds.testing.mock_data`, and TF then aborts the whole process.
    """
    count = int(dataset.cardinality())
    if count <= 0:
        raise DataError(f"TFDS split has no examples or an unknown size (cardinality {count})")
    images, labels = dataset.batch(count).get_single_element()
    return images.numpy(), labels.numpy()


def _load_npz(path: str) -> tuple:
    if not os.path.isfile(path):
        raise DataError(f"npz file not found: {path!r}; expected 'npz:PATH' naming an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise DataError(
                    f"npz file {path!r} has no array {missing[0]!r}; it needs {', '.join(NPZ_KEYS)}"
                    f" (found: {', '.join(archive.files) or 'none'})"
                )
            arrays = {key: archive[key] for key in NPZ_KEYS}
    except DataError:
        raise
    except Exception as error:  # not a zip, object arrays (pickle refused), truncated file, ...
        raise DataError(f"could not read npz file {path!r}: {_one_line(error)}") from error
    x_train, y_train = _checked_arrays(arrays["x_train"], arrays["y_train"], "x_train", "y_train")
    x_test, y_test = _checked_arrays(arrays["x_test"], arrays["y_test"], "x_test", "y_test")
    _check_same_image_shape(x_train, x_test)
    num_classes = int(y_train.max()) + 1
    if num_classes > len(y_train):  # a class count is bounded by the examples that could show each class
        raise DataError(f"y_train contains the label {num_classes - 1}, which implies {num_classes:,} classes, more "
                        f"than its {len(y_train):,} training images; labels must be class indices 0..K-1")
    _check_labels(num_classes, y_test=y_test)
    return x_train, y_train, x_test, y_test, num_classes


def _checked_arrays(x, y, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one split and return it as (NHWC uint8-or-float32 images, int32 labels)."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:  # NHW: single-channel images
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise DataError(f"{x_name} has shape {x.shape}; expected images of rank 3 (NHW) or 4 (NHWC)")
    if len(x) == 0:
        raise DataError(f"{x_name} is empty; every split needs at least one example")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"{x_name} has dtype {x.dtype}; expected uint8 (0..255) or float (0..1)")
        low, high = float(x.min()), float(x.max())
        if not (0.0 <= low and high <= 1.0):  # also false for NaN
            hint = " (divide 0..255 images by 255)" if high > 1.0 else ""
            raise DataError(f"{x_name} has float pixels in [{low}, {high}]; expected float pixels in [0, 1]{hint}")
        x = x.astype(np.float32, copy=False)
    if y.ndim != 1:
        raise DataError(f"{y_name} has shape {y.shape}; expected a vector of class indices, shape (N,)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{y_name} has dtype {y.dtype}; expected integer class indices")
    if len(y) != len(x):
        raise DataError(
            f"{y_name} has {len(y)} labels but {x_name} has {len(x)} images; expected one label per image"
        )
    if y.min() < 0:
        raise DataError(f"{y_name} contains the negative label {int(y.min())}; expected class indices >= 0")
    if y.max() > np.iinfo(np.int32).max:
        raise DataError(f"{y_name} contains the label {int(y.max())}, beyond int32; expected class indices")
    return x, y.astype(np.int32, copy=False)


def _check_labels(num_classes: int, **splits: np.ndarray) -> None:
    """Every split's labels are classes of the training split (0..num_classes-1)."""
    for name, y in splits.items():
        if len(y) and int(y.max()) >= num_classes:
            bad = int(y.max())
            raise DataError(f"{name} contains the label {bad} ({int(np.sum(y == bad))} examples), but the training "
                            f"split has {num_classes} classes (0..{num_classes - 1})")


def _check_same_image_shape(x_train: np.ndarray, x_test: np.ndarray) -> None:
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"x_test images have shape {x_test.shape[1:]} but x_train images have shape {x_train.shape[1:]};"
            " expected the same (H, W, C)"
        )


def _validation_count(validation_size: float | int, num_train: int | None) -> int:
    """Number of validation rows `validation_size` asks for out of `num_train`.

    With `num_train=None` only the value itself is checked (and 0 returned).
    """
    size = validation_size
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise DataError(f"validation_size is {size!r}; expected 0, a float in (0, 1), or an int >= 1")
    if size < 0:
        raise DataError(f"validation_size is {size}; expected 0, a float in (0, 1), or an int >= 1")
    if isinstance(size, (float, np.floating)) and size >= 1:
        raise DataError(f"validation_size is {size}; a float must be in (0, 1) (use an int for a row count)")
    if num_train is None or size == 0:
        return 0
    count = max(1, int(round(size * num_train))) if isinstance(size, (float, np.floating)) else int(size)
    if count >= num_train:
        raise DataError(
            f"validation_size {size} takes {count} of the {num_train} train rows;"
            " expected a size that leaves at least one training row"
        )
    return count


def _hold_out(x: np.ndarray, y: np.ndarray, validation_size: float | int, seed: int) -> tuple:
    """Split (x, y) into (x_train, y_train, x_val, y_val), both parts in the original order."""
    count = _validation_count(validation_size, len(x))
    is_val = np.zeros(len(x), dtype=bool)
    is_val[np.random.default_rng(seed).permutation(len(x))[:count]] = True
    return x[~is_val], y[~is_val], x[is_val], y[is_val]


def is_cifar_like(splits: Splits) -> bool:
    """True for 32x32 colour images, where pad-crop-flip augmentation makes sense."""
    return splits.image_shape == (32, 32, 3)
