"""runners/evaluate.py as a user runs it: on a training run directory, and with bad arguments."""

import json
import os
import subprocess
import sys

import pytest

from tfrobust import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "runners", "evaluate.py")


def _run(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, RUNNER, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    training.train(training.TrainConfig(method="standard", epochs=2, attack_steps=2, eval_steps=2,
                                        eval_examples=64, output_dir=str(out), verbose=0))
    return str(out)


@pytest.mark.slow
def test_evaluate_writes_table_json_and_plot(run_dir):
    proc = _run(f"--model={run_dir}", "--suite=quick", "--examples=100", "--eps=0.05,0.1", "--noverbose")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| pgd-20 |" in proc.stdout and "worst case" in proc.stdout
    out = os.path.join(run_dir, "evaluation")
    report = json.load(open(os.path.join(out, "report.json")))
    assert os.path.getsize(os.path.join(out, "accuracy_vs_eps.png")) > 1000
    assert "pgd" in json.dumps(report) and os.path.exists(os.path.join(out, "report.md"))
    # A second run refuses to replace the report.
    again = _run(f"--model={run_dir}", "--suite=quick", "--examples=10")
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize("args,fragment", [
    (["--model=/no/such/model"], "no SavedModel"),
    ([], "--model is required"),
    (["--eps=1.5"], "eps"),
    (["--attacks=nope"], "unknown attack"),
])
def test_bad_arguments_fail_with_one_line(run_dir, args, fragment):
    if args and args[0].startswith("--model"):
        full = args
    elif not args:
        full = []
    else:
        full = [f"--model={run_dir}", f"--output_dir={run_dir}/other", *args]
    proc = _run(*full)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], proc.stderr[-2000:]
