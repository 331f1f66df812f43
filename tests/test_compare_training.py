"""benchmarks/compare_training.py (issue 22): the SmallCNN weight layouts it converts between, its
refusals before anything is written, and a short run of both sides (slow; needs PyTorch and the
official repositories: TFROBUST_OFFICIAL_SOURCE, a format string of {repo}, {owner} and {name},
replaces GitHub as the place to clone them from)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfrobust import models
from tfrobust.models import small_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "compare_training.py")


def _random_small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    model = models.build_model("small_cnn", (28, 28, 1), 10)
    r = np.random.default_rng(seed)
    model.get_layer("fc3").set_weights([r.normal(0, 0.1, (200, 10)).astype(np.float32),
                                        r.normal(0, 0.1, 10).astype(np.float32)])  # zero in the reference
    return model


def test_the_torch_layout_converts_back_exactly():
    model = _random_small_cnn()
    weights = small_cnn.to_torch_layout(model)
    assert weights["conv1.weight"].shape == (32, 1, 3, 3) and weights["fc1.weight"].shape == (200, 1024)
    other = models.build_model("small_cnn", (28, 28, 1), 10)
    small_cnn.from_torch_layout(other, weights)
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(1).uniform(size=(4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_array_equal(model(x).numpy(), other(x).numpy())


def test_the_torch_layout_gives_pytorchs_logits():
    torch = pytest.importorskip("torch")
    from torch import nn

    model = _random_small_cnn(2)
    net = nn.Sequential(  # TRADES' models/small_cnn.py, in its order
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
        nn.Linear(1024, 200), nn.ReLU(), nn.Dropout(0.5), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
    layers = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    weights = small_cnn.to_torch_layout(model)
    with torch.no_grad():
        for name, module in zip(small_cnn.TORCH_LAYERS, layers):
            module.weight.copy_(torch.from_numpy(weights[f"{name}.weight"]))
            module.bias.copy_(torch.from_numpy(weights[f"{name}.bias"]))
    net.eval()
    x = np.random.default_rng(3).uniform(size=(8, 28, 28, 1)).astype(np.float32)
    with torch.no_grad():
        theirs = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(model(x).numpy(), theirs, atol=1e-5)


def _mnist_like(path, n_train=300, n_test=40):
    r = np.random.default_rng(0)
    np.savez(path, x_train=r.integers(0, 256, (n_train, 28, 28, 1), dtype=np.uint8),
             y_train=r.integers(0, 10, n_train, dtype=np.uint8),
             x_test=r.integers(0, 256, (n_test, 28, 28, 1), dtype=np.uint8),
             y_test=r.integers(0, 10, n_test, dtype=np.uint8))
    return path


def _run(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def test_bad_input_is_one_line_and_nothing_written(tmp_path):
    data = _mnist_like(tmp_path / "mnist.npz")
    out = tmp_path / "out"
    cases = [
        ["--method=fgsm", f"--out={out}", f"--data={data}"],
        ["--method=trades", f"--out={out}", f"--data={tmp_path / 'missing.npz'}"],
        ["--method=trades", f"--data={data}"],
        ["--method=trades", f"--out={out}", f"--data={data}", "--steps=-1"],
        ["--method=trades", f"--out={out}", f"--data={data}", "--train_examples=100"],  # no batch of 128
    ]
    for args in cases:
        proc = _run(*args, timeout=300)
        assert proc.returncode != 0, args
        assert proc.stderr.startswith("compare_training.py: error: ") and proc.stderr.count("\n") == 1, \
            (args, proc.stderr[-2000:])
        assert not out.exists(), args
    out.mkdir()
    (out / "trades-seed0-official.json").write_text("{}")
    proc = _run("--method=trades", f"--out={out}", f"--data={data}", timeout=300)
    assert proc.returncode != 0 and "exists: pass --overwrite" in proc.stderr
    assert sorted(os.listdir(out)) == ["trades-seed0-official.json"]
    assert (out / "trades-seed0-official.json").read_text() == "{}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd_at", "trades", "mart", "atent"])
def test_a_short_run_of_both_sides(tmp_path, method):
    pytest.importorskip("torch")
    # Tests send nothing beyond this machine: the official repositories come from a local mirror
    # (e.g. TFROBUST_OFFICIAL_SOURCE=/path/to/mirrors/{owner}+{name}), never from GitHub.
    source = os.environ.get("TFROBUST_OFFICIAL_SOURCE")
    if not source:
        pytest.skip("TFROBUST_OFFICIAL_SOURCE (a local mirror of the official repositories) is not set")
    data = _mnist_like(tmp_path / "mnist.npz")
    out = tmp_path / "out"
    proc = _run(f"--method={method}", "--steps=2", "--record_every=1", f"--data={data}", "--eval_examples=8",
                f"--out={out}", f"--official_dir={tmp_path / 'official'}", f"--official_source={source}")
    if proc.returncode != 0 and "cloning" in proc.stdout and "fatal:" in proc.stderr:
        pytest.skip(f"the official code could not be cloned from {source}: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    sides = {s: json.loads((out / f"{method}-seed0-{s}.json").read_text()) for s in ("official", "tfrobust")}
    for r in sides.values():
        assert r["steps"] == 2 and len(r["losses"]) == 2 and len(r["window_means"]) == 2
        assert all(np.isfinite(r["losses"])) and 0 <= r["pgd_accuracy"] <= r["clean_accuracy"] + 0.5
        assert r["test_examples"] == 40 and r["eval_examples"] == 8
    # The same start: with the zero-initialized last layer both predict uniformly at step 1 whatever
    # the input, so the first losses agree (log 10 for PGD-AT and TRADES, MART's boosted CE adds
    # -log(0.9001), ATENT's average weighs log 10 by 1 - 0.1^20).
    assert sides["tfrobust"]["losses"][0] == pytest.approx(sides["official"]["losses"][0], rel=1e-5)
    assert sides["official"]["losses"][1] != sides["official"]["losses"][0]  # the first step moved the model
    assert (out / f"{method}-seed0.png").stat().st_size > 0
    assert f"{method}-seed0" in (out / "report.md").read_text()
    again = _run(f"--method={method}", "--steps=2", f"--data={data}", f"--out={out}",
                 f"--official_dir={tmp_path / 'official'}", f"--official_source={source}", timeout=300)
    assert again.returncode != 0 and "exists: pass --overwrite" in again.stderr
