"""Every flagfile in flags/ parses with the train runner's flags and passes validation."""

import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import glob, importlib.util, os, sys
spec = importlib.util.spec_from_file_location("train_runner", os.path.join(sys.argv[1], "runners", "train.py"))
runner = importlib.util.module_from_spec(spec); spec.loader.exec_module(runner)
from tfrobust import training
for path in sorted(glob.glob(os.path.join(sys.argv[1], "flags", "*.cfg"))):
    runner.FLAGS.unparse_flags()
    runner.FLAGS(["train.py", "--flagfile=" + path])
    config = runner.config_from_flags()
    training.validate(config)
    print(os.path.basename(path), config.method, config.dataset, config.model, sorted(config.method_options))
"""


def test_every_preset_parses_and_validates():
    presets = glob.glob(os.path.join(ROOT, "flags", "*.cfg"))
    assert len(presets) >= 11
    proc = subprocess.run([sys.executable, "-c", SCRIPT, ROOT], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(presets)
    assert any("atent mnist small_cnn ['alpha', 'noise', 'projection']" in l for l in lines), lines
    assert "mnist_mimae.cfg mimae mnist small_cnn ['lambda_mae', 'lambda_mi', 'natural_weight']" in lines, lines
    assert "mnist_fgsm_rs.cfg fgsm_rs mnist lenet5 ['clip_start']" in lines, lines
    assert "cifar10_n_fgsm.cfg n_fgsm cifar10 preact_resnet18 ['nfgsm_clip', 'noise_radius']" in lines, lines
