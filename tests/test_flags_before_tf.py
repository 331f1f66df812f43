"""Flags are parsed and checked before TensorFlow is imported (issue 15): a bad flag is reported in
well under a second, not after the 15-60 s TensorFlow and Keras take to import.

Each case runs a runner in a fresh process whose import system refuses `tensorflow` and `keras`
(tests/scripts/no_tf.py): a bad flag must still give its one line and exit code 2, and a good flag
set must get as far as importing TensorFlow (the refusal is what stops it, so nothing trains).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_TF = os.path.join(ROOT, "tests", "scripts", "no_tf.py")
TRAIN = os.path.join(ROOT, "runners", "train.py")
EVALUATE = os.path.join(ROOT, "runners", "evaluate.py")
REFUSED = "imported before the flags were checked"  # no_tf.py's message

# (case id, arguments, what the one line of stderr says). {tmp}: the test's directory.
TRAIN_CASES = [
    ("unknown method", ["--method=bogus"], "--method=bogus"),
    ("negative eps", ["--eps=-1"], "eps must be >= 0"),
    ("unknown flag", ["--nonexistent_flag=1"], "nonexistent_flag"),
    ("trades beta -1", ["--method=trades", "--beta=-1"], "method trades: beta must be >= 0"),
    ("beta not a number", ["--method=trades", "--beta=abc"], "--beta"),
    ("foreign method flag", ["--method=pgd_at", "--beta=1"], "does not take --beta"),
    ("atent alpha 5", ["--method=atent", "--alpha=5"], "alpha must be > 0 and <= 1"),
    ("steps for a single-step method", ["--method=fgsm_rs", "--attack_steps=10"], "always takes 1 attack step(s)"),
    ("atent without steps", ["--method=atent", "--attack_steps=0"], "at least one Langevin step"),
    ("atent shared pass in eval mode", ["--method=atent", "--atent_shared_forward=true", "--attack_bn_mode=eval"],
     "needs the attack in train mode"),
    ("bad model", ["--model=vgg"], "--model=vgg"),
    ("bad strategy", ["--strategy=tpu"], "--strategy=tpu"),
    ("bad suite", ["--eval_suite=bogus"], "--eval_suite=bogus"),
    ("piecewise without epochs", ["--lr_schedule=piecewise"], "needs lr_decay_epochs"),
    ("bad flagfile value", ["--flagfile={tmp}/bad.cfg"], "method trades: beta must be >= 0"),
    ("missing flagfile", ["--flagfile={tmp}/missing.cfg"], "missing.cfg"),
]
EVALUATE_CASES = [
    ("bad suite", ["--suite=bogus"], "--suite=bogus"),
    ("bad attack", ["--model={tmp}/model", "--attacks=bogus"], "unknown attack 'bogus'"),
    ("eps not a number", ["--model={tmp}/model", "--eps=abc"], "--eps must be"),
    ("eps above 1", ["--model={tmp}/model", "--eps=2"], "--eps values must be in [0, 1]"),
    ("negative examples", ["--examples=-1"], "--examples=-1"),
    ("no model", ["--model="], "--model is required"),
]


def _run(runner, argv, tmp):
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    return subprocess.run([sys.executable, NO_TF, runner, *argv], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp), env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.fixture
def work(tmp_path):
    (tmp_path / "bad.cfg").write_text("--method=trades\n--beta=-1\n")
    (tmp_path / "model").mkdir()
    return tmp_path


@pytest.mark.parametrize("runner,case_id,argv,message",
                         [(TRAIN, *c) for c in TRAIN_CASES] + [(EVALUATE, *c) for c in EVALUATE_CASES],
                         ids=[f"train-{c[0]}" for c in TRAIN_CASES] + [f"evaluate-{c[0]}" for c in EVALUATE_CASES])
def test_a_bad_flag_is_refused_without_importing_tensorflow(work, runner, case_id, argv, message):
    proc = _run(runner, argv, work)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"{case_id}: exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert len(lines) == 1, f"{case_id}: expected one line, got {lines}"
    assert message in lines[0], f"{case_id}: {lines[0]!r} does not say {message!r}"
    assert sorted(os.listdir(work)) == ["bad.cfg", "model"]  # nothing written


@pytest.mark.parametrize("runner,argv", [
    (TRAIN, ["--method=trades", "--beta=1", "--epochs=1", "--output_dir={tmp}/run"]),
    (TRAIN, ["--flagfile=" + os.path.join(ROOT, "flags", "mnist_trades.cfg"), "--output_dir={tmp}/run"]),
    (EVALUATE, ["--model={tmp}/model", "--suite=quick", "--eps=0.1"]),
], ids=["train", "train-flagfile", "evaluate"])
def test_good_flags_go_on_to_import_tensorflow(work, runner, argv):
    """The checks pass and the runner goes on to import TensorFlow (which no_tf.py refuses), having
    written nothing."""
    proc = _run(runner, argv, work)
    assert proc.returncode not in (0, 2), proc.stderr[-2000:]
    assert REFUSED in proc.stderr, proc.stderr[-2000:]
    assert sorted(os.listdir(work)) == ["bad.cfg", "model"]


def test_the_parse_path_imports_no_tensorflow():
    """The modules the runners parse and check flags with, and the tables they read, leave TensorFlow
    and Keras unimported."""
    code = """
import sys
import tfrobust, tfrobust.cli, tfrobust.config, tfrobust.distribute, tfrobust.errors, tfrobust.evaluation
import tfrobust.methods, tfrobust.models, tfrobust.settings
from tfrobust import config, evaluation, methods, models
assert config.SPECS and models.MODEL_NAMES and evaluation.SUITES
for name in methods.REGISTRY:
    tfrobust.settings.specs(methods.get(name))
config.validate(config.TrainConfig(method="trades", method_options={"beta": 1.0}))
evaluation.with_square_queries(evaluation.resolve_attacks("autoattack"), 100)
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_lazy_modules_import_on_first_use():
    code = """
import sys
from tfrobust.lazy import lazy_import
files = lazy_import("tfrobust.files")
before = "tfrobust.files" in sys.modules
print(before, files.os_error_text(OSError(28, "No space left on device")), "tfrobust.files" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False No space left on device True"
