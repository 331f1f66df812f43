"""tfrobust.precision.floatx: the compute precision for a block, restored after it."""

import keras
import numpy as np
import pytest

from tfrobust import models, precision
from tfrobust.attacks import ball


def _settings():
    return keras.config.floatx(), keras.mixed_precision.global_policy().name


def test_the_block_computes_in_its_dtype_and_restores_the_settings():
    before = _settings()
    with precision.floatx("float64"):
        assert _settings() == ("float64", "float64")
        model = models.build_model("tiny_cnn", (8, 8, 1), 10)
        assert {v.dtype for v in model.weights} == {"float64"}
        assert ball.as_images(np.zeros((1, 8, 8, 1), np.float32)).dtype == "float64"
    assert _settings() == before
    assert ball.as_images(np.zeros((1, 8, 8, 1))).dtype == before[0]


def test_a_policy_of_its_own():
    before = _settings()
    with precision.floatx("float32", "mixed_float16"):
        assert _settings() == ("float32", "mixed_float16")
    assert _settings() == before


def test_restored_when_the_block_raises():
    before = _settings()
    with pytest.raises(RuntimeError, match="inside"):
        with precision.floatx("float64"):
            raise RuntimeError("inside")
    assert _settings() == before


def test_a_bad_name_changes_nothing():
    before = _settings()
    with pytest.raises(ValueError):
        with precision.floatx("float64", "no_such_policy"):
            pass  # never entered
    assert _settings() == before
    with pytest.raises(ValueError):
        with precision.floatx("float17"):
            pass
    assert _settings() == before


def test_blocks_nest():
    before = _settings()
    with precision.floatx("float64"):
        with precision.floatx("float32"):
            assert _settings() == ("float32", "float32")
        assert _settings() == ("float64", "float64")
    assert _settings() == before
