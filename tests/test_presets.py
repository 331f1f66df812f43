"""Every flagfile in flags/ parses with the train runner's flags and passes validation."""

import glob
import os
import subprocess
import sys

from conftest import script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_preset_parses_and_validates():
    presets = glob.glob(os.path.join(ROOT, "flags", "*.cfg"))
    assert len(presets) >= 11
    # A fresh process: absl flags are global.
    proc = subprocess.run([sys.executable, script("parse_presets.py"), ROOT], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(presets)
    assert any("atent mnist small_cnn ['alpha', 'noise', 'projection']" in l for l in lines), lines
    assert "mnist_mimae.cfg mimae mnist small_cnn ['lambda_mae', 'lambda_mi', 'natural_weight']" in lines, lines
    assert "mnist_fgsm_rs.cfg fgsm_rs mnist lenet5 ['clip_start']" in lines, lines
    assert "cifar10_n_fgsm.cfg n_fgsm cifar10 preact_resnet18 ['nfgsm_clip', 'noise_radius']" in lines, lines
