"""Shared fixtures: scikit-learn's digits as ready arrays, and a small seeded classifier."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrobust import data, models, precision  # noqa: E402

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")


def script(name: str) -> str:
    """The path of a program under tests/scripts/, which tests run in child processes (see its
    docstring; the folder's README says why they are files and not tests)."""
    path = os.path.join(SCRIPTS, name)
    assert os.path.isfile(path), path
    return path


@pytest.fixture
def float64():
    """The test runs under floatx float64."""
    with precision.floatx("float64"):
        yield


@pytest.fixture(scope="session")
def digits():
    return data.load("digits")


@pytest.fixture
def tiny_classifier(digits):
    keras.utils.set_random_seed(0)
    return models.build_model("tiny_cnn", digits.image_shape, digits.num_classes)


def conv_model(shape=(6, 6, 1), classes: int = 3, seed: int = 0) -> keras.Model:
    """The smallest seeded conv net (one 3x3 conv of 4 filters, a dense layer): the method tests'."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(classes)(h))


def digits_logits(model, count: int):
    """(logits_fn in inference mode, x, y) on the first `count` digits test images."""
    _, _, x_test, y_test = digits_arrays()

    def logits_fn(v):
        return model(v, training=False)

    return logits_fn, tf.constant(x_test[:count]), tf.constant(y_test[:count])


def batch(splits, n=32, start=0):
    x = np.asarray(splits.x_test[start : start + n], np.float32)
    return x, splits.y_test[start : start + n].astype(np.int32)


def digits_arrays():
    """(x_train, y_train, x_test, y_test) of the digits' fixed split, as float32 / int32 arrays."""
    splits = data.load("digits")
    return (splits.x_train.astype(np.float32), splits.y_train.astype(np.int32),
            splits.x_test.astype(np.float32), splits.y_test.astype(np.int32))


@pytest.fixture(scope="session")
def digits_cnn():
    """A small CNN trained normally on digits (20 epochs, Adam): the evaluation tests' target."""
    keras.utils.set_random_seed(0)
    x_train, y_train, _, _ = digits_arrays()
    net = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ])
    net.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x_train, y_train, epochs=20, batch_size=64, verbose=0)
    return net
