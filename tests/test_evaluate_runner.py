"""runners/evaluate.py as a user runs it: on a training run directory, and with bad arguments."""

import json
import os
import subprocess
import sys

import pytest

from tfrobust import data, evaluation, export, training

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


def test_final_test_evaluation_is_the_evaluation_packages_pgd(run_dir):
    """training.train's final adv_accuracy is `evaluation.robust_accuracy` with PGD-eval_steps (step
    2.5 eps / steps, uniform start, seed + 1) on the same test examples: recomputed from the export."""
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    config = json.load(open(os.path.join(run_dir, "config.json")))
    splits = data.load("digits")
    spec = evaluation.AttackSpec("pgd", steps=config["eval_steps"])
    report = evaluation.robust_accuracy(export.load_logits_fn(os.path.join(run_dir, "savedmodel")),
                                        (splits.x_test, splits.y_test), attacks=[spec], eps_values=[config["eps"]],
                                        norm=config["norm"], limit=config["eval_examples"], seed=config["seed"] + 1,
                                        batch_size=max(config["batch_size"], 100), checks=None)
    assert summary["eval_examples"] == report.n_examples == 64
    assert summary["clean_accuracy"] == pytest.approx(report.clean_accuracy, abs=1 / 64)
    assert summary["adv_accuracy"] == pytest.approx(report.accuracy["pgd-2"][0], abs=1 / 64)
    assert summary["eval_attack"]["steps"] == 2


@pytest.mark.slow
def test_autoattack_suite_from_the_command_line(run_dir, tmp_path):
    out = str(tmp_path / "aa")
    proc = _run(f"--model={run_dir}", "--suite=autoattack", "--square_queries=100", "--examples=60",
                "--checks=none", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| after apgd_ce-100 |" in proc.stdout and "| after square-100 |" in proc.stdout
    assert "robust accuracy after fab_t-100" in proc.stdout  # the progress lines
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["mode"] == "sequential" and report["metadata"]["model"] == os.path.abspath(run_dir)
    assert report["metadata"]["dataset"] == "digits" and report["metadata"]["n_examples"] == 60
    assert [a["label"] for a in report["attacks"]] == ["apgd_ce-100", "apgd_t-100", "fab_t-100", "square-100"]


@pytest.mark.parametrize("args,fragment", [
    (["--model=/no/such/model"], "no SavedModel"),
    ([], "--model is required"),
    (["--eps=1.5"], "eps"),
    (["--attacks=nope"], "unknown attack"),
    (["--suite=standard"], "suite"),
    (["--square_queries=0"], "square_queries"),
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
