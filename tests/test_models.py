"""Tests for ``tfrobust.models`` (kept small: big nets run on batches of 2 or are only counted)."""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrobust.models import (  # noqa: E402
    ARCHITECTURES,
    MIN_INPUT_SIZES,
    MODEL_NAMES,
    ModelError,
    build_model,
)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)

# (name, input_shape, extra build kwargs) that are cheap enough to run; the
# smallest accepted sizes are run in test_minimum_sizes_build.
SMALL_WRN = {"depth": 10, "width": 1}
RUN_CASES = [
    ("tiny_cnn", (8, 8, 1), {}),
    ("tiny_cnn", (32, 32, 3), {}),
    ("small_cnn", (28, 28, 1), {}),
    ("small_cnn", (32, 32, 3), {}),
    ("lenet5", (8, 8, 1), {}),
    ("lenet5", (28, 28, 1), {}),
    ("resnet18", (32, 32, 3), {}),
    ("preact_resnet18", (32, 32, 3), {}),
    ("wide_resnet", (8, 8, 1), SMALL_WRN),
    ("wide_resnet", (32, 32, 3), SMALL_WRN),
]
# One cheap configuration per architecture.
ONE_PER_NAME = {
    "tiny_cnn": ((8, 8, 1), {}),
    "small_cnn": ((28, 28, 1), {}),
    "lenet5": ((8, 8, 1), {}),
    "resnet18": ((8, 8, 3), {}),
    "preact_resnet18": ((8, 8, 3), {}),
    "wide_resnet": ((8, 8, 3), SMALL_WRN),
}


def _case_id(case) -> str:
    name, shape, kw = case
    extra = "".join(f"-{k}{v}" for k, v in kw.items())
    return f"{name}-{'x'.join(map(str, shape))}{extra}"


def _pixels(shape, batch=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, *shape), dtype=np.float32)


def _randomize(model: keras.Model, seed: int = 0) -> None:
    """Give every weight a random non-trivial value (BN variances stay positive).

    Nets with ~11M parameters only get their BN statistics and logits layer
    randomized (drawing all weights anew is slow on the shared CPUs).
    """
    rng = np.random.default_rng(seed)
    if model.count_params() > 1_000_000:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                c = layer.gamma.shape[0]
                layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
                layer.beta.assign(rng.normal(0.0, 0.1, c).astype(np.float32))
                layer.moving_mean.assign(rng.normal(0.0, 0.1, c).astype(np.float32))
                layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
        last = model.layers[-1]
        last.kernel.assign(rng.normal(0.0, 0.1, last.kernel.shape).astype(np.float32))
        last.bias.assign(rng.normal(0.0, 0.1, last.bias.shape).astype(np.float32))
        return
    new = []
    for w in model.weights:
        shape = tuple(w.shape)
        if "moving_variance" in w.path:
            new.append(rng.uniform(0.5, 1.5, shape))
        elif "gamma" in w.path:
            new.append(rng.uniform(0.5, 1.5, shape))
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            new.append(rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape))
    model.set_weights([v.astype(np.float32) for v in new])


@contextlib.contextmanager
def global_policy(name: str):
    """Keras's process-wide dtype policy set to `name` inside the block, the previous one after
    it (also when the block raises)."""
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(old)


@pytest.fixture
def mixed_float16():
    with global_policy("mixed_float16"):
        yield


# ---------------------------------------------------------------- API basics


def test_model_names_exact():
    assert MODEL_NAMES == (
        "tiny_cnn", "small_cnn", "lenet5", "resnet18", "preact_resnet18", "wide_resnet",
    )
    assert set(MIN_INPUT_SIZES) == set(MODEL_NAMES)
    assert issubclass(ModelError, ValueError)


def test_one_table_of_architectures():
    assert MODEL_NAMES == tuple(ARCHITECTURES)
    assert MIN_INPUT_SIZES == {name: a.min_input_size for name, a in ARCHITECTURES.items()}
    assert all(a.description and callable(a.build) for a in ARCHITECTURES.values())
    # Only the WRN takes depth and width, and checks them before anything is built.
    assert {name for name, a in ARCHITECTURES.items() if a.options} == {"wide_resnet"}
    with pytest.raises(ModelError, match="depth"):
        build_model("wide_resnet", (8, 8, 3), 10, depth=11, width=1)
    assert build_model("tiny_cnn", (8, 8, 1), 10, depth=11).count_params() == build_model(
        "tiny_cnn", (8, 8, 1), 10).count_params()


def test_every_name_has_a_run_case():
    assert {c[0] for c in RUN_CASES} == set(MODEL_NAMES) == set(ONE_PER_NAME)


@pytest.mark.parametrize("case", RUN_CASES, ids=_case_id)
def test_output_is_float32_logits(case):
    name, shape, kw = case
    num_classes = 7
    model = build_model(name, shape, num_classes, seed=1, **kw)
    assert isinstance(model, keras.Model)
    assert tuple(model.input_shape) == (None, *shape)
    if name == "small_cnn":
        # Reference zero-initializes the last layer -> all-zero logits; make it non-trivial.
        _randomize(model)
    y = model(_pixels(shape), training=False)
    assert tuple(y.shape) == (2, num_classes)
    assert y.dtype == tf.float32
    y = y.numpy()
    assert np.all(np.isfinite(y))
    # Logits, not probabilities: rows do not sum to 1 and values are not all in [0, 1].
    assert not np.allclose(y.sum(axis=1), 1.0, atol=1e-3)
    assert (y < 0).any() or (y > 1).any()
    assert model.layers[-1].dtype_policy.name == "float32"
    assert model.layers[-1].get_config().get("activation") == "linear"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_logits_float32_under_mixed_precision(name, mixed_float16):
    shape, kw = ONE_PER_NAME[name]
    model = build_model(name, shape, 5, mean=(0.5,) * shape[2], std=(0.25,) * shape[2], **kw)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs and all(l.compute_dtype == "float16" for l in convs)
    assert model.get_layer("normalize").compute_dtype == "float32"
    y = model(_pixels(shape), training=False)
    assert y.dtype == tf.float32
    assert tuple(y.shape) == (2, 5)
    assert np.all(np.isfinite(y.numpy()))


def test_mixed_precision_policy_restored():
    """The `mixed_float16` fixture's switch is undone, also when the test body fails, so no later
    test builds float16 layers by accident. Self-contained: it sets up the switch itself rather
    than relying on the mixed-precision tests having run before it."""
    before = keras.mixed_precision.global_policy().name
    with pytest.raises(ZeroDivisionError):
        with global_policy("mixed_float16"):
            model = build_model("tiny_cnn", (8, 8, 1), 3)
            assert {l.compute_dtype for l in model.layers if isinstance(l, keras.layers.Conv2D)} == {"float16"}
            1 / 0  # noqa: B018 (a failing test body)
    assert keras.mixed_precision.global_policy().name == before
    model = build_model("tiny_cnn", (8, 8, 1), 3)
    assert {l.compute_dtype for l in model.layers if isinstance(l, keras.layers.Conv2D)} == {
        keras.mixed_precision.Policy(before).compute_dtype}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_normalization_inside_matches_manual(name):
    shape, kw = ONE_PER_NAME[name]
    c = shape[2]
    mean = tuple(np.linspace(0.3, 0.6, c).tolist())
    std = tuple(np.linspace(0.2, 0.3, c).tolist())
    normed = build_model(name, shape, 4, mean=mean, std=std, seed=3, **kw)
    plain = build_model(name, shape, 4, seed=4, **kw)
    assert "normalize" in [l.name for l in normed.layers]
    assert "normalize" not in [l.name for l in plain.layers]
    _randomize(normed)
    plain.set_weights(normed.get_weights())  # Normalization has no weights
    x = _pixels(shape)
    manual = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    y_normed = normed(x, training=False).numpy()
    y_plain = plain(manual, training=False).numpy()
    assert np.abs(y_normed).max() > 1e-3
    np.testing.assert_allclose(y_normed, y_plain, rtol=1e-4, atol=1e-4)


def test_mean_or_std_alone_defaults_other():
    x = _pixels((8, 8, 2))
    m_only = build_model("tiny_cnn", (8, 8, 2), 3, mean=(0.5, 0.2), seed=0)
    s_only = build_model("tiny_cnn", (8, 8, 2), 3, std=(2.0, 4.0), seed=0)
    plain = build_model("tiny_cnn", (8, 8, 2), 3, seed=0)
    np.testing.assert_allclose(
        m_only(x).numpy(), plain(x - np.float32([0.5, 0.2])).numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        s_only(x).numpy(), plain(x / np.float32([2.0, 4.0])).numpy(), rtol=1e-5, atol=1e-5
    )


def test_input_gradient_flows_through_normalization():
    model = build_model("tiny_cnn", (8, 8, 1), 10, mean=(0.5,), std=(0.3,), seed=0)
    x = tf.constant(_pixels((8, 8, 1)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(model(x, training=False)[:, 0])
    g = tape.gradient(loss, x)
    assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0


# ---------------------------------------------------------------- parameter counts
# Reference counts are computed from the PyTorch architectures (trainable
# parameters, as torch's ``sum(p.numel() for p in model.parameters())``);
# Keras additionally holds 2 BN moving statistics per BN channel (non-trainable).


def _conv(cin, cout, k, bias):
    return cin * cout * k * k + (cout if bias else 0)


def _linear(cin, cout):
    return cin * cout + cout


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _non_trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)


def _ref_resnet18(num_classes=10, in_ch=3, preact=False, final_bn=True):
    """Returns (trainable params, BN channels) of the kuangliu CIFAR ResNet-18 family."""
    params = _conv(in_ch, 64, 3, False)
    bn_ch = 0 if preact else 64  # post-activation net: stem BN
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for s in (stride, 1):
            params += _conv(in_planes, planes, 3, False) + _conv(planes, planes, 3, False)
            bn_ch += (in_planes + planes) if preact else 2 * planes
            if s != 1 or in_planes != planes:
                params += _conv(in_planes, planes, 1, False)
                bn_ch += 0 if preact else planes  # PreAct shortcut has no BN
            in_planes = planes
    if preact and final_bn:
        bn_ch += 512
    return params + 2 * bn_ch + _linear(512, num_classes), bn_ch


def _ref_wrn(depth=34, k=10, num_classes=10, in_ch=3):
    """Trainable params and BN channels of TRADES' WideResNet (forward path, no sub_block1)."""
    n = (depth - 4) // 6
    ch = (16, 16 * k, 32 * k, 64 * k)
    params, bn_ch = _conv(in_ch, 16, 3, False), 0
    in_planes = 16
    for planes in ch[1:]:
        for _ in range(n):
            params += _conv(in_planes, planes, 3, False) + _conv(planes, planes, 3, False)
            bn_ch += in_planes + planes
            if in_planes != planes:
                params += _conv(in_planes, planes, 1, False)
            in_planes = planes
    bn_ch += ch[3]
    return params + 2 * bn_ch + _linear(ch[3], num_classes), bn_ch


def test_reference_count_helpers():
    # Sanity of the helpers against the widely quoted figures.
    assert _ref_resnet18()[0] == 11_173_962  # "11.17M"
    assert _ref_resnet18(preact=True, final_bn=False)[0] == 11_171_146  # kuangliu file
    assert _ref_resnet18(preact=True)[0] == 11_172_170  # + final BN (He et al. / Rice et al.)
    assert _ref_wrn()[0] == 46_160_474  # "46.16M"


def test_param_count_small_cnn():
    model = build_model("small_cnn", (28, 28, 1), 10)
    ref = (
        _conv(1, 32, 3, True) + _conv(32, 32, 3, True) + _conv(32, 64, 3, True)
        + _conv(64, 64, 3, True) + _linear(64 * 4 * 4, 200) + _linear(200, 200)
        + _linear(200, 10)
    )
    assert ref == 312_202
    assert _trainable(model) == 312_202 and _non_trainable(model) == 0


def test_param_count_lenet5():
    model = build_model("lenet5", (28, 28, 1), 10)
    ref = (
        _conv(1, 32, 5, True) + _conv(32, 64, 5, True)
        + _linear(7 * 7 * 64, 1024) + _linear(1024, 10)
    )
    assert ref == 3_274_634
    assert _trainable(model) == 3_274_634 and _non_trainable(model) == 0


def test_param_count_resnet18():
    model = build_model("resnet18", (32, 32, 3), 10)
    ref, bn_ch = _ref_resnet18()
    assert _trainable(model) == ref == 11_173_962
    assert _non_trainable(model) == 2 * bn_ch == 9_600
    assert model.count_params() == 11_183_562
    # Stride-2 3x3 convs use PyTorch's symmetric padding=1, not Keras "same".
    assert isinstance(model.get_layer("layer2_0_conv1_pad"), keras.layers.ZeroPadding2D)
    assert model.get_layer("layer2_0_conv1").padding == "valid"
    assert model.get_layer("layer2_0_shortcut_conv").strides == (2, 2)


def test_param_count_preact_resnet18():
    model = build_model("preact_resnet18", (32, 32, 3), 10)
    ref, bn_ch = _ref_resnet18(preact=True)
    assert _trainable(model) == ref == 11_172_170
    assert _non_trainable(model) == 2 * bn_ch == 7_808


def test_param_count_wrn_34_10():
    model = build_model("wide_resnet", (32, 32, 3), 10)  # defaults depth=34, width=10
    assert model.name == "wrn_34_10"
    ref, bn_ch = _ref_wrn(34, 10)
    assert _trainable(model) == ref == 46_160_474
    assert _non_trainable(model) == 2 * bn_ch
    del model


def test_param_count_small_wrn_formula():
    model = build_model("wide_resnet", (32, 32, 3), 100, depth=16, width=2)
    assert _trainable(model) == _ref_wrn(16, 2, num_classes=100)[0]


# ---------------------------------------------------------------- layer details


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layer_conventions(name):
    shape, kw = ONE_PER_NAME[name]
    model = build_model(name, shape, 10, mean=(0.5,) * shape[2], std=(0.5,) * shape[2], **kw)
    layers = model.layers
    assert not any(isinstance(l, keras.layers.Lambda) for l in layers)
    for l in layers:
        for attr in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            assert getattr(l, attr, None) is None, (l.name, attr)
        if isinstance(l, keras.layers.BatchNormalization):
            assert l.momentum == pytest.approx(0.9) and l.epsilon == pytest.approx(1e-5)
    # Every conv whose output feeds a BN has no bias.
    for l in layers:
        if isinstance(l, keras.layers.BatchNormalization):
            src = l.input._keras_history.operation
            if isinstance(src, keras.layers.Conv2D):
                assert not src.use_bias, src.name
    assert isinstance(layers[-1], keras.layers.Dense) and layers[-1].dtype == "float32"


def test_reference_initializers():
    keras.utils.set_random_seed(0)
    small = build_model("small_cnn", (28, 28, 1), 10)
    assert not np.any(small.get_layer("fc3").kernel.numpy())
    assert not np.any(small.get_layer("fc3").bias.numpy())
    w = small.get_layer("conv4").kernel.numpy()  # kaiming normal, fan_in = 9 * 64
    assert w.std() == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.05)
    assert np.abs(w).max() > 2.5 * w.std()  # untruncated

    lenet = build_model("lenet5", (28, 28, 1), 10)
    np.testing.assert_allclose(lenet.get_layer("conv1").bias.numpy(), 0.1)
    wl = lenet.get_layer("fc1").kernel.numpy()
    assert np.abs(wl).max() <= 0.2 + 1e-6 and wl.std() == pytest.approx(0.088, rel=0.05)

    wrn = build_model("wide_resnet", (8, 8, 3), 10, depth=10, width=4)
    wc = wrn.get_layer("block3_0_conv2").kernel.numpy()  # fan_out = 9 * 256
    assert wc.std() == pytest.approx(np.sqrt(2 / (9 * 256)), rel=0.05)
    assert not np.any(wrn.get_layer("fc").bias.numpy())


def test_small_cnn_dropout_only_in_training():
    model = build_model("small_cnn", (28, 28, 1), 10, seed=0)
    _randomize(model)
    x = _pixels((28, 28, 1))
    a, b = model(x, training=False).numpy(), model(x, training=False).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(model(x, training=True).numpy(), a)


def test_odd_sizes_resnets():
    shape = (15, 9, 3)
    for name, kw in (("resnet18", {}), ("preact_resnet18", {}), ("wide_resnet", SMALL_WRN)):
        y = build_model(name, shape, 3, **kw)(_pixels(shape), training=False)
        assert tuple(y.shape) == (2, 3)


# ---------------------------------------------------------------- seeds & serialization


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_same_weights(name):
    shape, kw = ONE_PER_NAME[name]
    wa = build_model(name, shape, 10, seed=123, **kw).get_weights()
    wb = build_model(name, shape, 10, seed=123, **kw).get_weights()
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb):
        np.testing.assert_array_equal(u, v)
    if name not in ("resnet18", "preact_resnet18"):  # keep the slow builds to two
        wc = build_model(name, shape, 10, seed=124, **kw).get_weights()
        assert any(not np.array_equal(u, v) for u, v in zip(wa, wc))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_get_config_and_clone(name):
    shape, kw = ONE_PER_NAME[name]
    c = shape[2]
    model = build_model(name, shape, 6, mean=(0.4,) * c, std=(0.2,) * c, seed=0, **kw)
    _randomize(model)
    x = _pixels(shape)
    y = model(x, training=False).numpy()

    rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_allclose(rebuilt(x, training=False).numpy(), y, rtol=1e-5, atol=1e-5)

    clone = keras.models.clone_model(model)
    assert [l.name for l in clone.layers] == [l.name for l in model.layers]
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x, training=False).numpy(), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,shape,kw", [
    ("tiny_cnn", (8, 8, 1), {}),
    # Small WRN: Normalization, ZeroPadding, Conv, BN, ReLU, Add, pooling, Dense.
    ("wide_resnet", (8, 8, 3), SMALL_WRN),
])
def test_export_and_reload(name, shape, kw, tmp_path):
    c = shape[2]
    model = build_model(name, shape, 4, mean=(0.5,) * c, std=(0.25,) * c, seed=0, **kw)
    _randomize(model)
    x = _pixels(shape)
    y = model(x, training=False).numpy()
    path = str(tmp_path / name)
    model.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)
    np.testing.assert_allclose(reloaded.serve(tf.constant(x)).numpy(), y, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("args,kwargs,needle", [
    (("vgg16", (32, 32, 3), 10), {}, "unknown model name"),
    (("tiny_cnn", (7, 8, 1), 10), {}, "too small"),
    (("small_cnn", (15, 15, 1), 10), {}, "too small"),
    (("lenet5", (3, 28, 1), 10), {}, "too small"),
    (("resnet18", (4, 4, 3), 10), {}, "too small"),
    (("preact_resnet18", (32, 7, 3), 10), {}, "too small"),
    (("wide_resnet", (2, 2, 3), 10), {"depth": 10, "width": 1}, "too small"),
    (("wide_resnet", (32, 32, 3), 10), {"depth": 33}, "depth"),
    (("wide_resnet", (32, 32, 3), 10), {"depth": 4}, "depth"),
    (("wide_resnet", (32, 32, 3), 10), {"width": 0}, "width"),
    (("tiny_cnn", (8, 8, 3), 10), {"mean": (0.5, 0.5), "std": (0.2, 0.2, 0.2)}, "channel"),
    (("tiny_cnn", (8, 8, 3), 10), {"mean": (0.5,) * 3, "std": (0.2,) * 4}, "channel"),
    (("tiny_cnn", (8, 8, 1), 10), {"mean": (0.5,), "std": (0.0,)}, "std must be > 0"),
    (("tiny_cnn", (8, 8, 1), 10), {"mean": (0.5,), "std": (-1.0,)}, "std must be > 0"),
    (("tiny_cnn", (8, 8, 1), 1), {}, "num_classes"),
    (("tiny_cnn", (8, 8, 1), 0), {}, "num_classes"),
    (("tiny_cnn", (8, 8), 10), {}, "input_shape"),
])
def test_model_errors_one_line(args, kwargs, needle):
    with pytest.raises(ModelError) as info:
        build_model(*args, **kwargs)
    msg = str(info.value)
    assert needle in msg
    assert msg and "\n" not in msg


def test_unknown_name_lists_accepted_names():
    with pytest.raises(ModelError) as info:
        build_model("resnet50", (32, 32, 3), 10)
    for name in MODEL_NAMES:
        assert name in str(info.value)


def test_minimum_sizes_build():
    for name, size in MIN_INPUT_SIZES.items():
        kw = SMALL_WRN if name == "wide_resnet" else {}
        y = build_model(name, (size, size, 1), 2, **kw)(_pixels((size, size, 1)), training=False)
        assert tuple(y.shape) == (2, 2) and y.dtype == tf.float32


def test_errors_do_not_touch_global_seed():
    keras.utils.set_random_seed(7)
    expected = np.random.rand()
    keras.utils.set_random_seed(7)
    with pytest.raises(ModelError):
        build_model("tiny_cnn", (8, 8, 1), 1, seed=99)
    assert np.random.rand() == expected


# ---------------------------------------------------------------- training sanity


def test_tiny_cnn_learns_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    y = digits.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    model = build_model("tiny_cnn", (8, 8, 1), 10, seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=32, epochs=3, verbose=0)
    _, acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    assert acc > 0.90
