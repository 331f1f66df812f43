"""Tests of tfrobust.data: loading, validation errors, and the reproducible pipelines."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tfrobust import data
from tfrobust.data import DataError


def save_npz(path, **arrays):
    """Write `arrays` to `path` and return the matching "npz:" source string."""
    np.savez(path, **arrays)
    return f"npz:{path}"


def identity_npz(tmp_path, num_train=50):
    """npz source whose train labels are the row numbers, so rows can be traced."""
    return save_npz(
        tmp_path / "ids.npz",
        x_train=np.zeros((num_train, 4, 4), np.uint8),
        y_train=np.arange(num_train),
        x_test=np.zeros((3, 4, 4), np.uint8),
        y_test=np.arange(3),
    )


def batches(dataset):
    """All batches of a finite dataset as numpy (images, labels) pairs."""
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for (x_got, y_got), (x_exp, y_exp) in zip(got, expected):
        np.testing.assert_array_equal(x_got, x_exp)
        np.testing.assert_array_equal(y_got, y_exp)


def small_colour_images(count=16, size=32, seed=0):
    """Random uint8 colour images with labels equal to their row numbers."""
    images = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return images, np.arange(count, dtype=np.int32)


# --------------------------------------------------------------------------- load


def test_digits_shapes_dtypes_range_and_labels():
    splits = data.load("digits")
    assert splits.name == "digits"
    assert splits.x_train.shape == (1437, 8, 8, 1) and splits.x_test.shape == (360, 8, 8, 1)
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int32
    assert splits.x_train.min() == 0.0 and splits.x_train.max() == 1.0
    assert splits.x_val.shape == (0, 8, 8, 1) and splits.y_val.shape == (0,)
    assert splits.num_classes == 10
    assert set(splits.y_train) == set(range(10)) and set(splits.y_test) == set(range(10))
    assert splits.image_shape == (8, 8, 1)
    assert not data.is_cifar_like(splits)


def test_digits_split_is_the_fixed_cut_of_the_file_order():
    from sklearn.datasets import load_digits

    digits = load_digits()
    splits = data.load("digits")
    np.testing.assert_array_equal(splits.x_train[..., 0], digits.images[:1437] / 16)
    np.testing.assert_array_equal(splits.y_test, digits.target[1437:])


def test_mean_and_std_are_per_channel_train_statistics():
    images, labels = small_colour_images(count=20)
    splits = data.Splits("colour", images, labels, images[:0], labels[:0], images, labels, 20)
    scaled = images / 255.0
    np.testing.assert_allclose(splits.mean, scaled.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(splits.std, scaled.std(axis=(0, 1, 2)), rtol=1e-9)
    assert len(splits.mean) == 3 and data.is_cifar_like(splits)


@pytest.mark.parametrize("validation_size, expected_rows", [(0, 0), (0.2, 10), (0.001, 1), (7, 7)])
def test_validation_rows_are_disjoint_from_train_and_keep_order(tmp_path, validation_size, expected_rows):
    splits = data.load(identity_npz(tmp_path), validation_size=validation_size, seed=3)
    assert len(splits.y_val) == len(splits.x_val) == expected_rows
    assert len(splits.y_train) == len(splits.x_train) == 50 - expected_rows
    assert not set(splits.y_val) & set(splits.y_train)
    assert sorted(np.concatenate([splits.y_train, splits.y_val])) == list(range(50))
    assert list(splits.y_train) == sorted(splits.y_train) and list(splits.y_val) == sorted(splits.y_val)


def test_validation_rows_depend_only_on_the_seed(tmp_path):
    source = identity_npz(tmp_path)
    first = data.load(source, validation_size=10, seed=1).y_val
    np.testing.assert_array_equal(first, data.load(source, validation_size=10, seed=1).y_val)
    assert not np.array_equal(first, data.load(source, validation_size=10, seed=2).y_val)


def test_npz_uint8_nhw_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    x_test = rng.integers(0, 256, (2, 5, 4), dtype=np.uint8)
    source = save_npz(
        tmp_path / "gray.npz",
        x_train=x_train,
        y_train=np.array([0, 1, 2, 0, 1, 2], np.int64),
        x_test=x_test,
        y_test=np.array([2, 0], np.uint8),
    )
    splits = data.load(source)
    assert splits.name == source
    assert splits.x_train.dtype == np.uint8 and splits.x_train.shape == (6, 5, 4, 1)
    np.testing.assert_array_equal(splits.x_train[..., 0], x_train)
    np.testing.assert_array_equal(splits.x_test[..., 0], x_test)
    assert splits.y_train.dtype == np.int32 and splits.y_test.dtype == np.int32
    assert splits.num_classes == 3  # from the training split (a test label beyond it is refused)


def test_npz_float_nhwc_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.random((4, 3, 3, 3))  # float64 on disk
    x_test = rng.random((2, 3, 3, 3)).astype(np.float32)
    source = save_npz(tmp_path / "rgb.npz", x_train=x_train, y_train=np.arange(4), x_test=x_test, y_test=[1, 1])
    splits = data.load(source)
    assert splits.x_train.dtype == np.float32 and splits.image_shape == (3, 3, 3)
    np.testing.assert_allclose(splits.x_train, x_train, rtol=1e-6)
    np.testing.assert_array_equal(splits.x_test, x_test)
    assert splits.num_classes == 4


# --------------------------------------------------------------------------- errors


def good_arrays():
    return dict(
        x_train=np.zeros((4, 3, 3), np.uint8),
        y_train=np.arange(4),
        x_test=np.zeros((2, 3, 3), np.uint8),
        y_test=np.arange(2),
    )


def with_changes(**changes):
    return {**good_arrays(), **changes}


BAD_NPZ = {
    "missing key": ({k: v for k, v in good_arrays().items() if k != "y_test"}, "no array 'y_test'"),
    "wrong rank": (with_changes(x_train=np.zeros((4, 9), np.uint8)), "rank 3"),
    "float pixels above 1": (with_changes(x_train=np.full((4, 3, 3), 2.0)), "[0, 1]"),
    "negative float pixels": (with_changes(x_test=np.full((2, 3, 3), -0.5)), "[0, 1]"),
    "int pixels": (with_changes(x_train=np.zeros((4, 3, 3), np.int64)), "uint8"),
    "length mismatch": (with_changes(y_train=np.arange(5)), "one label per image"),
    "negative label": (with_changes(y_test=np.array([0, -1])), "negative"),
    "float labels": (with_changes(y_train=np.array([0.0, 1.0, 2.0, 3.0])), "integer"),
    "empty test split": (with_changes(x_test=np.zeros((0, 3, 3), np.uint8), y_test=np.zeros(0, int)), "empty"),
    "different image shapes": (with_changes(x_test=np.zeros((2, 4, 4), np.uint8)), "same (H, W, C)"),
    "pickled object array": (with_changes(y_test=np.array([0, "a"], dtype=object)), "could not read"),
}


def assert_one_line_error(call, expected_text):
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    assert expected_text in message


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_gives_one_line_error(tmp_path, case):
    arrays, expected_text = BAD_NPZ[case]
    source = save_npz(tmp_path / "bad.npz", **arrays)
    assert_one_line_error(lambda: data.load(source), expected_text)


@pytest.mark.parametrize(
    "source, kwargs, expected_text",
    [
        ("imagenet", {}, "'npz:PATH'"),
        ("npz:/nonexistent/file.npz", {}, "not found"),
        ("digits", {"validation_size": -1}, "validation_size"),
        ("digits", {"validation_size": 1.5}, "(0, 1)"),
        ("digits", {"validation_size": "10"}, "validation_size"),
        ("digits", {"validation_size": 1437}, "at least one training row"),
    ],
)
def test_bad_load_arguments_give_one_line_error(source, kwargs, expected_text):
    assert_one_line_error(lambda: data.load(source, **kwargs), expected_text)


def test_tfds_failure_becomes_one_line_error(monkeypatch):
    import tensorflow_datasets as tfds

    def offline_load(*args, **kwargs):
        raise ConnectionError("Failed to download mnist.\nNo network.\n")

    monkeypatch.setattr(tfds, "load", offline_load)
    assert_one_line_error(lambda: data.load("mnist"), "could not load TFDS dataset 'mnist': Failed to download")


@pytest.mark.parametrize(
    "kwargs, expected_text",
    [
        ({"batch_size": 9}, "at least one full batch"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2, "skip_batches": 4}, "[0, 4)"),
        ({"batch_size": 2, "start_epoch": -1}, "start_epoch"),
        ({"batch_size": 2, "start_epoch": 3, "epochs": 2}, "epochs >= start_epoch"),
    ],
)
def test_bad_train_stream_arguments_give_one_line_error(kwargs, expected_text):
    x, y = np.zeros((8, 2, 2, 1), np.float32), np.arange(8)
    assert_one_line_error(lambda: data.train_stream(x, y, seed=0, **kwargs), expected_text)


def test_steps_per_epoch_floors():
    assert data.steps_per_epoch(10, 3) == 3
    assert_one_line_error(lambda: data.steps_per_epoch(2, 3), "at least one full batch")


# --------------------------------------------------------------------------- train_stream


def test_train_stream_has_static_shapes_and_unit_floats():
    images, labels = small_colour_images(count=8, size=4)
    dataset = data.train_stream(images, labels, batch_size=4, seed=0, epochs=1)
    assert dataset.element_spec == (
        tf.TensorSpec((4, 4, 4, 3), tf.float32),
        tf.TensorSpec((4,), tf.int32),
    )
    for x, y in batches(dataset):
        np.testing.assert_allclose(x, images[y] / 255.0, rtol=1e-6)
    assert dataset.options().autotune.enabled is False


def test_train_stream_is_deterministic_and_infinite_by_default():
    x, y = np.random.default_rng(0).random((12, 2, 2, 1)), np.arange(12)
    first = batches(data.train_stream(x, y, batch_size=4, seed=5).take(7))
    assert_same_batches(batches(data.train_stream(x, y, batch_size=4, seed=5).take(7)), first)
    other_seed = batches(data.train_stream(x, y, batch_size=4, seed=6).take(7))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, other_seed))


def test_every_example_once_per_epoch_in_a_new_order():
    x, y = np.zeros((12, 1, 1, 1), np.float32), np.arange(12)
    stream = batches(data.train_stream(x, y, batch_size=3, seed=0, epochs=3))
    assert len(stream) == 12
    orders = [np.concatenate([labels for _, labels in stream[i : i + 4]]) for i in range(0, 12, 4)]
    for order in orders:
        assert sorted(order) == list(range(12))
    assert len({tuple(order) for order in orders}) == 3


def test_epoch_order_is_the_documented_stateless_shuffle():
    x, y = np.zeros((10, 1, 1, 1), np.float32), np.arange(10)
    stream = batches(data.train_stream(x, y, batch_size=5, seed=7, start_epoch=2, epochs=3))
    expected = tf.random.experimental.stateless_shuffle(tf.range(10), seed=[7, 2], alg="philox").numpy()
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in stream]), expected)


def test_drops_the_remainder_of_each_epoch():
    x, y = np.zeros((10, 1, 1, 1), np.float32), np.arange(10)
    stream = batches(data.train_stream(x, y, batch_size=4, seed=0, epochs=2))
    assert [len(labels) for _, labels in stream] == [4, 4, 4, 4]


@pytest.mark.parametrize("augment", [False, True])
def test_resumed_stream_is_the_tail_of_the_uninterrupted_one(augment):
    images, labels = small_colour_images(count=12, size=6)
    kwargs = dict(batch_size=3, seed=11, augment=augment, epochs=3)  # 4 batches per epoch
    full = data.train_stream(images, labels, **kwargs)
    assert full.cardinality() == 12
    uninterrupted = batches(full)
    resumed = data.train_stream(images, labels, start_epoch=1, skip_batches=2, **kwargs)
    assert resumed.cardinality() == 6
    assert_same_batches(batches(resumed), uninterrupted[6:])
    infinite_resumed = data.train_stream(images, labels, batch_size=3, seed=11, augment=augment, start_epoch=2)
    assert_same_batches(batches(infinite_resumed.take(4)), uninterrupted[8:])


def pad_crop_flips_giving(augmented, original, pad=4):
    """Every (top, left, flipped) for which the crop of `original` zero-padded by `pad` equals `augmented`."""
    height, width = original.shape[:2]
    padded = np.pad(original, [(pad, pad), (pad, pad), (0, 0)])
    matches = []
    for top, left, flipped in itertools.product(range(2 * pad + 1), range(2 * pad + 1), (False, True)):
        crop = padded[top : top + height, left : left + width]
        if np.array_equal(augmented, crop[:, ::-1] if flipped else crop):
            matches.append((top, left, flipped))
    return matches


def test_augmentation_is_a_deterministic_pad_crop_flip():
    images, labels = small_colour_images(count=16)
    kwargs = dict(batch_size=8, seed=2, epochs=1)
    plain = batches(data.train_stream(images, labels, **kwargs))
    augmented = batches(data.train_stream(images, labels, augment=True, **kwargs))
    assert_same_batches(batches(data.train_stream(images, labels, augment=True, **kwargs)), augmented)
    for (x_plain, y_plain), (x_aug, y_aug) in zip(plain, augmented):
        np.testing.assert_array_equal(y_aug, y_plain)  # augmentation never changes the order
        assert x_aug.shape == (8, 32, 32, 3) and x_aug.dtype == np.float32
        assert x_aug.min() >= 0.0 and x_aug.max() <= 1.0
        assert not np.array_equal(x_aug, x_plain)
        for augmented_image, original in zip(x_aug, images[y_aug]):
            assert pad_crop_flips_giving(np.round(augmented_image * 255).astype(np.uint8), original)


def test_augmentation_draws_new_crops_and_flips_per_example_batch_and_epoch():
    # One random image repeated: each output reveals the crop and flip drawn for its position.
    image = small_colour_images(count=1)[0][0]
    images, labels = np.repeat(image[np.newaxis], 32, axis=0), np.zeros(32, np.int32)
    stream = batches(data.train_stream(images, labels, batch_size=16, seed=0, augment=True, epochs=2))
    draws = [
        [pad_crop_flips_giving(np.round(x * 255).astype(np.uint8), image)[0] for x in batch_images]
        for batch_images, _ in stream
    ]  # draws[batch][position] = (top, left, flipped)
    every_draw = sum(draws, [])
    assert {flipped for _, _, flipped in every_draw} == {False, True}
    assert {top for top, _, _ in every_draw} == set(range(9))
    assert {left for _, left, _ in every_draw} == set(range(9))
    assert draws[0] != draws[1]  # batches of one epoch
    assert draws[0] != draws[2]  # same batch of the next epoch


# --------------------------------------------------------------------------- eval_dataset


def test_eval_dataset_is_in_order_and_keeps_the_remainder():
    images, labels = small_colour_images(count=10, size=2)
    got = batches(data.eval_dataset(images, labels, batch_size=4))
    assert [len(y) for _, y in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), labels)
    np.testing.assert_allclose(np.concatenate([x for x, _ in got]), images / 255.0, rtol=1e-6)
    assert got[0][0].dtype == np.float32 and got[0][1].dtype == np.int32


def test_eval_dataset_limit_takes_the_first_examples():
    x, y = np.zeros((10, 1, 1, 1), np.float32), np.arange(10)
    got = batches(data.eval_dataset(x, y, batch_size=4, limit=5))
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in got]), np.arange(5))
    assert_one_line_error(lambda: data.eval_dataset(x, y, batch_size=4, limit=0), "limit")


# --------------------------------------------------------------------------- TFDS (mocked, no download)


@pytest.mark.parametrize("name, image_shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_sources_load_whole_splits_as_uint8(name, image_shape):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        splits = data.load(name, validation_size=2)
    assert splits.image_shape == image_shape
    assert splits.x_train.shape == (4, *image_shape) and splits.x_val.shape == (2, *image_shape)
    assert splits.x_test.shape == (6, *image_shape)
    assert splits.x_train.dtype == np.uint8 and splits.y_train.dtype == np.int32
    assert splits.num_classes == 10
    assert data.is_cifar_like(splits) == (name == "cifar10")


# --------------------------------------------------------------------------- ready-to-fit pipelines


def _fit_one_epoch(train, info, validation=None):
    """One epoch of a RobustModel on `train`: the check that a notebook user's pipeline is accepted."""
    import keras

    from tfrobust import methods, models
    from tfrobust.robust_model import RobustModel

    keras.utils.set_random_seed(0)
    classifier = models.build_model("tiny_cnn" if info.image_shape[0] < 28 else "small_cnn", info.image_shape,
                                    info.num_classes, mean=info.mean, std=info.std)
    model = RobustModel(classifier, methods.build("standard", methods.AttackConfig(eps=0.0, steps=0)))
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    history = model.fit(train, epochs=1, steps_per_epoch=info.steps_per_epoch, validation_data=validation, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def _check_unit_float_batches(dataset, image_shape, batch_size):
    images, labels = next(iter(dataset))
    assert images.dtype == tf.float32 and labels.dtype == tf.int32
    assert tuple(images.shape[1:]) == image_shape and images.shape[0] <= batch_size
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0


def test_datasets_are_unit_float_pipelines_that_fit_accepts():
    train, validation, test, info = data.datasets("digits", batch_size=50, validation_size=100, seed=3)
    splits = data.load("digits", validation_size=100, seed=3)
    assert info.image_shape == (8, 8, 1) and info.num_classes == 10
    assert (info.mean, info.std) == (splits.mean, splits.std)
    assert (info.train_examples, info.validation_examples, info.test_examples) == (1337, 100, 360)
    assert info.steps_per_epoch == 1337 // 50
    for dataset in (train, validation, test):
        _check_unit_float_batches(dataset, (8, 8, 1), 50)
    # The same batches as the pipelines the runner builds, with no copy of their code.
    expected = data.train_stream(splits.x_train, splits.y_train, batch_size=50, seed=3)
    for got, want in zip(train.take(2), expected.take(2)):
        np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    assert sum(len(y) for _, y in test) == 360 and sum(len(y) for _, y in validation) == 100
    _fit_one_epoch(train, info, validation)


def test_datasets_convert_uint8_npz_and_limit_the_examples(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "u8.npz"
    np.savez(path, x_train=rng.integers(0, 256, (40, 6, 6), dtype=np.uint8), y_train=rng.integers(0, 3, 40),
             x_test=rng.integers(0, 256, (12, 6, 6), dtype=np.uint8), y_test=rng.integers(0, 3, 12))
    train, validation, test, info = data.datasets(f"npz:{path}", batch_size=8, epochs=2, train_examples=24,
                                                  test_examples=10)
    assert validation is None
    assert (info.train_examples, info.test_examples, info.steps_per_epoch) == (24, 10, 3)
    assert train.cardinality() == 6  # two epochs of three batches, then the stream ends
    _check_unit_float_batches(train, (6, 6, 1), 8)
    assert sum(len(y) for _, y in test) == 10
    assert_one_line_error(lambda: data.datasets(f"npz:{path}", train_examples=0), "train_examples")


def test_datasets_from_tfds_are_unit_floats_that_fit_accepts():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=64):
        train, validation, test, info = data.datasets("mnist", batch_size=16, validation_size=16)
    assert info.image_shape == (28, 28, 1) and info.steps_per_epoch == 3
    _check_unit_float_batches(train, (28, 28, 1), 16)
    _check_unit_float_batches(test, (28, 28, 1), 16)
    _fit_one_epoch(train, info, validation)


def test_tfds_builds_the_mnist_builder_with_the_declared_dependencies(tmp_path):
    # No mock here: a fresh install lacked a module TFDS imports (importlib_resources) and failed
    # on this path before any download. code_path and url_infos are what download_and_prepare
    # reads first.
    import tensorflow_datasets as tfds

    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    assert builder.info.features["image"].shape == (28, 28, 1)
    assert builder.info.features["label"].num_classes == 10
    assert type(builder).code_path.name == "mnist.py"
    assert builder.url_infos  # the checksums file shipped with TFDS, found through code_path
