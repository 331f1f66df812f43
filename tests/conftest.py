"""Shared fixtures: scikit-learn's digits as ready arrays, and a small seeded classifier."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfrobust import data, models  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    return data.load("digits")


@pytest.fixture
def tiny_classifier(digits):
    keras.utils.set_random_seed(0)
    return models.build_model("tiny_cnn", digits.image_shape, digits.num_classes)


def batch(splits, n=32, start=0):
    x = np.asarray(splits.x_test[start : start + n], np.float32)
    return x, splits.y_test[start : start + n].astype(np.int32)
