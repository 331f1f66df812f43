"""Reference fidelity (issue 9): one training step of each method equals an independent NumPy
implementation of its reference algorithm, and each architecture starts from its reference's
weight distribution.

The NumPy side is written from the reference code, not from tfrobust:
- PGD-AT: MadryLab/mnist_challenge `pgd_attack.py` (uniform start clipped to [0, 1]; each step
  sign ascent, box projection, clip) and a CE loss on the adversarial batch.
- TRADES: yaodongyu/TRADES `trades.py` (start x + 0.001 N(0, I) not clipped; eval-mode attack on the
  summed KL to the eval-mode natural softmax; loss CE(f(x)) + beta / B * sum KL(softmax(f(x)) ||
  softmax(f(x'))) with three train-mode forwards: natural, adversarial, natural again as the target).
- MART: YisenWang/MART `mart.py` (same start; eval-mode attack on the mean CE; boosted CE with
  log(1.0001 - p'_{y'} + 1e-12) and KL(p(x) || p'(x') + 1e-12) weighted by 1.0000001 - p_y(x)).
- MIMAE: our documented reconstruction (docs/methods.md): Madry PGD on CE, then mean CE(x') +
  lambda_mae mean|z - z'| - lambda_mi I(P) with the symmetrized, floored batch joint P.
- ATENT: GauriJagatap/StochAT notebook `adversarial_training_entropy` + `adversarial/functional.py`
  (train mode everywhere; start x + eps sign(N(0, I)) not clipped; step + step sign(grad mean CE) +
  ep sqrt(2 step) N(0, I), box projection, clip; loss = (1 - alpha) loss + alpha CE(f(x'_l)) from 0).

The network's forward and backward (conv 3x3 valid, ReLU, max-pool 2, dense, dropout with a given
mask, dense, dense) are hand-written in NumPy. The derivative of each method's loss with respect to
its logits is taken numerically (fourth-order central differences, h = 1e-3, on a function that is
smooth in the logits: error about 1e-13 relative) instead of a hand-written backward of every loss
head; everything else is exact. The noise of the random starts and of the Langevin steps and the
dropout masks are fixed: `tfrobust.rng.normal/uniform` are replaced by table look-ups keyed by the
seed the method uses, and the test model's dropout layer takes its masks, in call order, from a
given table.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrobust import models, precision, rng  # noqa: E402
from tfrobust.methods import AttackConfig, build  # noqa: E402
from tfrobust.robust_model import RobustModel  # noqa: E402

H = W = 8
FILTERS, HIDDEN, CLASSES, BATCH = 3, 12, 10, 4
EPS, STEP, STEPS = 0.3, 0.1, 3
LR, MOMENTUM = 0.01, 0.9
LANGEVIN_NOISE = 0.05  # large enough for the Langevin noise to matter (the MNIST recipe's 1e-4 would not)
SEED = 0
MAX_MASKS = 2 * STEPS + 2


# -- the fixed draws -----------------------------------------------------------------------

def draws():
    r = np.random.default_rng(7)
    x = r.uniform(0.05, 0.95, size=(BATCH, H, W, 1))
    y = np.array([1, 4, 7, 2])
    keep = r.uniform(size=(MAX_MASKS, BATCH, HIDDEN)) >= 0.5
    masks = keep * 2.0  # inverted dropout, rate 0.5
    weights = [r.uniform(-0.5, 0.5, size=(3, 3, 1, FILTERS)), r.uniform(-0.1, 0.1, size=FILTERS),
               r.uniform(-0.4, 0.4, size=(9 * FILTERS, HIDDEN)), r.uniform(-0.1, 0.1, size=HIDDEN),
               r.uniform(-0.4, 0.4, size=(HIDDEN, HIDDEN)), r.uniform(-0.1, 0.1, size=HIDDEN),
               r.uniform(-0.5, 0.5, size=(HIDDEN, CLASSES)), r.uniform(-0.1, 0.1, size=CLASSES)]
    noise = {"normal": r.standard_normal(size=(STEPS + 2, BATCH, H, W, 1)),
             "uniform": r.uniform(size=(STEPS + 2, BATCH, H, W, 1))}
    return x, y, masks, weights, noise


def method_seeds():
    """The stateless seeds a method draws from in its first step (RobustModel(seed=SEED)), in the
    order of the noise tables: the step seed (PGD's start), ATENT's start seed, and ATENT's
    Langevin seeds of iterates 1..STEPS."""
    step = rng.fold_in(rng.as_seed(SEED), tf.constant(0, tf.int64))
    start, langevin = tf.unstack(rng.split(step, 2))
    keys = [step, start] + [rng.fold_in(langevin, l) for l in range(1, STEPS + 1)]
    return np.stack([k.numpy().astype(np.int64) for k in keys])


@pytest.fixture
def fixed_noise(monkeypatch):
    """Replace tfrobust.rng.normal/uniform by look-ups in fixed tables, keyed by seed; a seed that is
    not in the table fails the step."""
    _, _, _, _, noise = draws()
    keys = tf.constant(method_seeds())

    def lookup(table, seed, like):
        match = tf.reduce_all(tf.equal(keys, tf.cast(seed, tf.int64)[None]), axis=1)
        check = tf.debugging.assert_equal(tf.reduce_sum(tf.cast(match, tf.int32)), 1, message="unknown seed")
        with tf.control_dependencies([check]):
            return tf.cast(tf.gather(table, tf.argmax(match)), like.dtype)

    monkeypatch.setattr(rng, "normal", lambda seed, like: lookup(noise["normal"], seed, like))
    monkeypatch.setattr(rng, "uniform", lambda seed, like, minval=0.0, maxval=1.0:
                        minval + (maxval - minval) * lookup(noise["uniform"], seed, like))
    return noise


@pytest.fixture(params=["float64", "float32"])
def floatx(request):
    with precision.floatx(request.param):
        yield request.param


# -- the model under test --------------------------------------------------------------------

class TableDropout(keras.layers.Dropout):
    """Dropout (rate 0.5) whose k-th training-mode call multiplies by masks[k] (inverted-dropout
    masks). A Dropout, so that `tfrobust.models.forward` sees a random training forward, as the
    reference's dropout is."""

    def __init__(self, masks, **kwargs):
        super().__init__(0.5, **kwargs)
        self.masks = masks
        self.calls = tf.Variable(0, dtype=tf.int32, trainable=False)

    def call(self, inputs, training=False):
        if not training:
            return inputs
        with tf.control_dependencies([inputs]):  # after the layer's input exists: call order
            k = self.calls.assign_add(1) - 1
        return inputs * tf.cast(tf.gather(self.masks, k), inputs.dtype)


def keras_net(weights, masks) -> keras.Model:
    inputs = keras.Input((H, W, 1))
    h = keras.layers.Conv2D(FILTERS, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(HIDDEN, activation="relu")(h)
    dropout = TableDropout(masks)
    h = dropout(h)
    h = keras.layers.Dense(HIDDEN, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(h))
    model.set_weights([w.astype(keras.config.floatx()) for w in weights])
    model.dropout = dropout
    return model


# -- the NumPy network -----------------------------------------------------------------------

def _patches(x):
    """[B, 6, 6, 9] 3x3 patches in (kh, kw, c) order, as Keras' kernel [3, 3, 1, F] flattens."""
    rows = [x[:, i:i + H - 2, j:j + W - 2, :] for i in range(3) for j in range(3)]
    return np.concatenate(rows, axis=-1)


def np_forward(p, x, mask):
    """Logits and the cache of the backward pass; mask None: inference (no dropout)."""
    cols = _patches(x)
    conv = cols @ p[0].reshape(9, FILTERS) + p[1]
    r = np.maximum(conv, 0)
    b = len(x)
    blocks = r.reshape(b, 3, 2, 3, 2, FILTERS).transpose(0, 1, 3, 5, 2, 4).reshape(b, 3, 3, FILTERS, 4)
    arg = blocks.argmax(-1)  # first maximum, as torch and TF
    pooled = np.take_along_axis(blocks, arg[..., None], -1)[..., 0]
    f = pooled.reshape(b, -1)
    a1 = f @ p[2] + p[3]
    h1 = np.maximum(a1, 0)
    d = h1 if mask is None else h1 * mask
    a2 = d @ p[4] + p[5]
    h2 = np.maximum(a2, 0)
    z = h2 @ p[6] + p[7]
    return z, (x, cols, conv, arg, f, a1, d, a2, h2, mask)


def np_backward(p, cache, dz):
    """(parameter gradients, input gradient) of sum(dz * logits)."""
    x, cols, conv, arg, f, a1, d, a2, h2, mask = cache
    b = len(x)
    g = [None] * 8
    g[6], g[7] = h2.T @ dz, dz.sum(0)
    da2 = (dz @ p[6].T) * (a2 > 0)
    g[4], g[5] = d.T @ da2, da2.sum(0)
    dh1 = da2 @ p[4].T
    if mask is not None:
        dh1 = dh1 * mask
    da1 = dh1 * (a1 > 0)
    g[2], g[3] = f.T @ da1, da1.sum(0)
    dpooled = (da1 @ p[2].T).reshape(b, 3, 3, FILTERS)
    dblocks = np.zeros((b, 3, 3, FILTERS, 4))
    np.put_along_axis(dblocks, arg[..., None], dpooled[..., None], -1)
    dr = dblocks.reshape(b, 3, 3, FILTERS, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(b, 6, 6, FILTERS)
    dconv = dr * (conv > 0)
    g[0] = (cols.reshape(-1, 9).T @ dconv.reshape(-1, FILTERS)).reshape(3, 3, 1, FILTERS)
    g[1] = dconv.sum((0, 1, 2))
    dcols = dconv @ p[0].reshape(9, FILTERS).T
    dx = np.zeros_like(x)
    for k, (i, j) in enumerate((i, j) for i in range(3) for j in range(3)):
        dx[:, i:i + H - 2, j:j + W - 2, 0] += dcols[..., k]
    return g, dx


def logit_gradients(loss, logits):
    """d loss / d each logits array, by fourth-order central differences (h = 1e-3)."""
    h = 1e-3
    grads = []
    for n, z in enumerate(logits):
        grad = np.zeros_like(z)
        for idx in np.ndindex(z.shape):
            def at(t, n=n, idx=idx):
                moved = [w.copy() for w in logits]
                moved[n][idx] += t
                return loss(*moved)
            grad[idx] = (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)
        grads.append(grad)
    return grads


def step_gradients(p, forwards, loss):
    """Parameter gradients of loss(*logits of `forwards`), each forward (x, mask) run on its own."""
    outs = [np_forward(p, x, m) for x, m in forwards]
    dzs = logit_gradients(loss, [z for z, _ in outs])
    total = [np.zeros_like(w) for w in p]
    for (_, cache), dz in zip(outs, dzs):
        for t, g in zip(total, np_backward(p, cache, dz)[0]):
            t += g
    return total


def input_gradient(p, x, mask, loss_of_logits):
    z, cache = np_forward(p, x, mask)
    (dz,) = logit_gradients(loss_of_logits, [z])
    return np_backward(p, cache, dz)[1]


def log_softmax(z):
    s = z - z.max(-1, keepdims=True)
    return s - np.log(np.exp(s).sum(-1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def ce_mean(z, y):
    return -log_softmax(z)[np.arange(len(y)), y].mean()


def kl_sum(p_logits, q_logits):
    """nn.KLDivLoss(size_average=False)(log_softmax(q), softmax(p))."""
    p = softmax(p_logits)
    return (p * (np.log(p) - log_softmax(q_logits))).sum()


# -- the reference algorithms ----------------------------------------------------------------

def linf_step(x_adv, x, grad, step):
    moved = x_adv + step * np.sign(grad)
    return np.clip(np.minimum(np.maximum(moved, x - EPS), x + EPS), 0.0, 1.0)


def reference_pgd_at(p, x, y, masks, noise, train_mode_attack, clip_start=True):
    masks = iter(masks)
    x_adv = x + (2 * noise["uniform"][0] - 1) * EPS  # Madry: uniform in the box, clipped to [0, 1]
    if clip_start:
        x_adv = np.clip(x_adv, 0.0, 1.0)
    for _ in range(STEPS):
        mask = next(masks) if train_mode_attack else None
        x_adv = linf_step(x_adv, x, input_gradient(p, x_adv, mask, lambda z: ce_mean(z, y)), STEP)
    return step_gradients(p, [(x_adv, next(masks))], lambda z: ce_mean(z, y))


def reference_trades(p, x, y, masks, noise, beta):
    x_adv = x + 0.001 * noise["normal"][0]  # not clipped
    nat_eval = np_forward(p, x, None)[0]
    for _ in range(STEPS):
        x_adv = linf_step(x_adv, x, input_gradient(p, x_adv, None, lambda z: kl_sum(nat_eval, z)), STEP)
    x_adv = np.clip(x_adv, 0.0, 1.0)

    def loss(z_nat, z_adv, z_target):
        return ce_mean(z_nat, y) + beta / len(y) * kl_sum(z_target, z_adv)

    return step_gradients(p, [(x, masks[0]), (x_adv, masks[1]), (x, masks[2])], loss)


def reference_mart(p, x, y, masks, noise, beta):
    x_adv = x + 0.001 * noise["normal"][0]
    for _ in range(STEPS):
        x_adv = linf_step(x_adv, x, input_gradient(p, x_adv, None, lambda z: ce_mean(z, y)), STEP)
    rows = np.arange(len(y))

    def loss(z_nat, z_adv):
        adv_probs = softmax(z_adv)
        top2 = np.argsort(adv_probs, axis=1)[:, -2:]
        new_y = np.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        loss_adv = ce_mean(z_adv, y) - np.log(1.0001 - adv_probs[rows, new_y] + 1e-12).mean()
        nat_probs = softmax(z_nat)
        kl = (nat_probs * (np.log(nat_probs) - np.log(adv_probs + 1e-12))).sum(1)
        return loss_adv + beta * (kl * (1.0000001 - nat_probs[rows, y])).sum() / len(y)

    return step_gradients(p, [(x, masks[0]), (x_adv, masks[1])], loss)


def reference_mimae(p, x, y, masks, noise, lambda_mi, lambda_mae, natural_weight):
    x_adv = np.clip(x + (2 * noise["uniform"][0] - 1) * EPS, 0.0, 1.0)
    for _ in range(STEPS):
        x_adv = linf_step(x_adv, x, input_gradient(p, x_adv, None, lambda z: ce_mean(z, y)), STEP)

    def loss(z_nat, z_adv):
        joint = softmax(z_nat).T @ softmax(z_adv)
        joint = joint / joint.sum()
        joint = np.maximum(0.5 * (joint + joint.T), 1e-8)
        mi = (joint * (np.log(joint) - np.log(joint.sum(1, keepdims=True))
                       - np.log(joint.sum(0, keepdims=True)))).sum()
        return (ce_mean(z_adv, y) + natural_weight * ce_mean(z_nat, y) + lambda_mae * np.abs(z_nat - z_adv).mean()
                - lambda_mi * mi)

    return step_gradients(p, [(x, masks[0]), (x_adv, masks[1])], loss)


def reference_atent(p, x, y, masks, noise, alpha, ep, clip_start=False):
    masks = iter(masks)
    x_adv = x + EPS * np.sign(noise["normal"][1])  # random_perturbation: not clipped
    if clip_start:
        x_adv = np.clip(x_adv, 0.0, 1.0)
    grad = [np.zeros_like(w) for w in p]  # the gradient of the running loss, which starts at 0
    for l in range(STEPS):
        g = input_gradient(p, x_adv, next(masks), lambda z: ce_mean(z, y))
        x_adv = x_adv + STEP * np.sign(g) + ep * np.sqrt(2 * STEP) * noise["normal"][2 + l]
        x_adv = np.clip(np.minimum(np.maximum(x_adv, x - EPS), x + EPS), 0.0, 1.0)
        g_l = step_gradients(p, [(x_adv, next(masks))], lambda z: ce_mean(z, y))
        grad = [(1 - alpha) * a + alpha * b for a, b in zip(grad, g_l)]  # loss = (1-a) loss + a CE
    return grad


CASES = {
    # name: (method options, attack bn_mode, reference, masks the step consumes)
    "pgd_at": ({}, "train", lambda p, x, y, m, n: reference_pgd_at(p, x, y, m, n, True), STEPS + 1),
    "pgd_at_eval": ({}, "eval", lambda p, x, y, m, n: reference_pgd_at(p, x, y, m, n, False), 1),
    "trades": ({"beta": 6.0}, "eval", lambda p, x, y, m, n: reference_trades(p, x, y, m, n, 6.0), 3),
    "mart": ({"beta": 6.0}, "eval", lambda p, x, y, m, n: reference_mart(p, x, y, m, n, 6.0), 2),
    # the defaults of issue 20's sweep: lambda_mi 1, lambda_mae 0.1, natural_weight 1, no ramp
    "mimae": ({}, "eval", lambda p, x, y, m, n: reference_mimae(p, x, y, m, n, 1.0, 0.1, 1.0), 2),
    "atent": ({"noise": LANGEVIN_NOISE, "alpha": 0.9}, "train",
              lambda p, x, y, m, n: reference_atent(p, x, y, m, n, 0.9, LANGEVIN_NOISE), 2 * STEPS),
}


def tfrobust_update(name, options, bn_mode, x, y, masks, weights):
    method = build(name.removesuffix("_eval"), AttackConfig(eps=EPS, step_size=STEP, steps=STEPS, bn_mode=bn_mode),
                   options)
    model = keras_net(weights, tf.constant(masks, keras.config.floatx()))
    robust = RobustModel(model, method, seed=SEED)
    robust.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM), jit_compile=False)
    before = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    robust.train_on_batch(x.astype(keras.config.floatx()), y)
    after = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    dtypes = {str(v.dtype) for v in model.trainable_variables}
    return [a - b for a, b in zip(after, before)], int(model.dropout.calls.numpy()), dtypes


def relative_l2(a, b):
    a, b = np.concatenate([v.ravel() for v in a]), np.concatenate([v.ravel() for v in b])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", list(CASES))
def test_one_step_equals_the_reference(name, floatx, fixed_noise):
    options, bn_mode, reference, used = CASES[name]
    x, y, masks, weights, noise = draws()
    update, calls, dtypes = tfrobust_update(name, options, bn_mode, x, y, masks, weights)
    assert calls == used  # the dropout masks went to the forwards the reference draws them for
    assert dtypes == {floatx}
    expected = [-LR * g for g in reference(weights, x, y, masks[:used], noise)]
    tolerance = 1e-9 if floatx == "float64" else 1e-4
    error = relative_l2(update, expected)
    print(f"\none-step fidelity {name} {floatx}: relative L2 error of the update {error:.2g}")  # pytest -s shows it
    assert error < tolerance, f"{name} in {floatx}: relative L2 error of the update {error:.3g}"


VARIANTS = {
    # name: (method, options, attack bn_mode, reference, masks the step consumes)
    "trades_shared_target": ("trades", {"beta": 6.0, "shared_target": True}, "eval",
                             lambda p, x, y, m, n: reference_trades(p, x, y, [m[0], m[1], m[0]], n, 6.0), 2),
    "pgd_at_clip_start_false": ("pgd_at", {"clip_start": False}, "train",
                                lambda p, x, y, m, n: reference_pgd_at(p, x, y, m, n, True, clip_start=False),
                                STEPS + 1),
    "mimae_before_issue_20": ("mimae", {"lambda_mae": 1.0, "natural_weight": 0.0}, "eval",
                              lambda p, x, y, m, n: reference_mimae(p, x, y, m, n, 1.0, 1.0, 0.0), 2),
    "atent_clip_start": ("atent", {"noise": LANGEVIN_NOISE, "clip_start": True}, "train",
                         lambda p, x, y, m, n: reference_atent(p, x, y, m, n, 0.9, LANGEVIN_NOISE, clip_start=True),
                         2 * STEPS),
}


def edge_batch():
    """The fixed batch with a third of its pixels at 1, where clipping the start matters."""
    x, y, masks, weights, noise = draws()
    return np.where(np.arange(H * W).reshape(1, H, W, 1) % 3 == 0, 1.0, x), y, masks, weights, noise


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_other_behaviours_are_flags(name, fixed_noise):
    """shared_target and clip_start give the variant the flag names (float64), and the variant is
    not the reference: the fidelity test above can tell them apart."""
    method, options, bn_mode, variant, used = VARIANTS[name]
    _, default_bn_mode, reference, _ = CASES[method]
    x, y, masks, weights, noise = edge_batch()
    with precision.floatx("float64"):
        update, calls, _ = tfrobust_update(method, options, bn_mode, x, y, masks, weights)
    assert calls == used
    expected = [-LR * g for g in variant(weights, x, y, masks[:used], noise)]
    assert relative_l2(update, expected) < 1e-9
    default = [-LR * g for g in reference(weights, x, y, masks[:CASES[method][3]], noise)]
    assert relative_l2(default, expected) > 1e-4


# -- initialization --------------------------------------------------------------------------

def _uniform_bound(fan_in):
    return 1.0 / np.sqrt(fan_in)


def _check_uniform(values, bound, what):
    values = np.asarray(values, np.float64).ravel()
    assert np.abs(values).max() <= bound * (1 + 1e-6), what
    assert np.abs(values).max() > 0.9 * bound, what  # fills the interval
    np.testing.assert_allclose(values.std(), bound / np.sqrt(3), rtol=0.1 if values.size > 300 else 0.3,
                               err_msg=what)


def _kernels(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


def test_small_cnn_initialization_is_the_trades_reference():
    keras.utils.set_random_seed(0)
    model = models.build_model("small_cnn", (28, 28, 1), 10)
    for conv in _kernels(model, keras.layers.Conv2D):  # kaiming_normal_: N(0, 2 / fan_in), untruncated
        k = conv.kernel.numpy()
        fan_in = np.prod(k.shape[:3])
        np.testing.assert_allclose(k.std(), np.sqrt(2.0 / fan_in), rtol=0.1)
        assert np.abs(k).max() > 2.2 * np.sqrt(2.0 / fan_in)  # a truncated normal stops at 2 std
        assert not conv.bias.numpy().any()
    dense = {layer.name: layer for layer in _kernels(model, keras.layers.Dense)}
    for name in ("fc1", "fc2"):  # nn.Linear's default: weight and bias U(+-1/sqrt(fan_in))
        fan_in = dense[name].kernel.shape[0]
        _check_uniform(dense[name].kernel.numpy(), _uniform_bound(fan_in), f"{name} weight")
        _check_uniform(dense[name].bias.numpy(), _uniform_bound(fan_in), f"{name} bias")
    assert not dense["fc3"].kernel.numpy().any() and not dense["fc3"].bias.numpy().any()


def test_lenet5_initialization_is_madrys():
    keras.utils.set_random_seed(0)
    model = models.build_model("lenet5", (28, 28, 1), 10)
    for layer in _kernels(model, (keras.layers.Conv2D, keras.layers.Dense)):  # truncated N(0, 0.1), bias 0.1
        k = layer.kernel.numpy()
        assert np.abs(k).max() <= 0.2 + 1e-6
        np.testing.assert_allclose(k.std(), 0.1 * 0.8796, rtol=0.1)  # std of a normal truncated at 2 std
        np.testing.assert_allclose(layer.bias.numpy(), 0.1)


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18"])
def test_resnets_keep_pytorchs_default_initialization(name):
    keras.utils.set_random_seed(0)
    model = models.build_model(name, (32, 32, 3), 10)
    for conv in _kernels(model, keras.layers.Conv2D):  # kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in))
        k = conv.kernel.numpy()
        _check_uniform(k, _uniform_bound(np.prod(k.shape[:3])), conv.name)
        assert conv.bias is None
    (linear,) = _kernels(model, keras.layers.Dense)
    _check_uniform(linear.kernel.numpy(), _uniform_bound(512), "linear weight")
    _check_uniform(linear.bias.numpy(), _uniform_bound(512), "linear bias")
    for bn in _kernels(model, keras.layers.BatchNormalization):
        assert (bn.gamma.numpy() == 1).all() and not bn.beta.numpy().any()


def test_wide_resnet_initialization_is_the_trades_reference():
    keras.utils.set_random_seed(0)
    model = models.build_model("wide_resnet", (32, 32, 3), 10, depth=10, width=1)
    for conv in _kernels(model, keras.layers.Conv2D):  # normal_(0, sqrt(2 / (k * k * out_channels)))
        k = conv.kernel.numpy()
        std = np.sqrt(2.0 / (k.shape[0] * k.shape[1] * k.shape[3]))
        np.testing.assert_allclose(k.std(), std, rtol=0.15 if k.size > 1000 else 0.35, err_msg=conv.name)
    (fc,) = _kernels(model, keras.layers.Dense)
    _check_uniform(fc.kernel.numpy(), _uniform_bound(fc.kernel.shape[0]), "fc weight")
    assert not fc.bias.numpy().any()
    for bn in _kernels(model, keras.layers.BatchNormalization):
        assert (bn.gamma.numpy() == 1).all() and not bn.beta.numpy().any()


def test_float64_is_refused_with_mixed_precision():
    from tfrobust.config import TrainConfig, validate
    from tfrobust.errors import ConfigError

    validate(TrainConfig(dtype="float64"))
    with pytest.raises(ConfigError, match="dtype=float64 cannot be combined with mixed_precision=mixed_float16"):
        validate(TrainConfig(dtype="float64", mixed_precision="mixed_float16"))
