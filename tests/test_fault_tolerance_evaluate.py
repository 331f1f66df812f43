"""runners/evaluate.py on a training run whose files were damaged (issue 25: a run survives what
happens to its files): a truncated or missing SavedModel, a config.json that is not JSON, not an
object, or holds a bad setting, is one line on stderr naming the file (and the setting), exit code
2, and nothing written; and `Report.save` never leaves a partial report when a write fails."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tfrobust import errors, export
from tfrobust.evaluation.report import Report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "runners", "train.py")
EVALUATE = os.path.join(ROOT, "runners", "evaluate.py")
PREFIX = "evaluate.py: error: "


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    return env


def _runner(runner, *args, timeout=300):
    return subprocess.run([sys.executable, runner, *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One finished run (standard training, 1 epoch of 4 steps on digits), copied by each test."""
    out = str(tmp_path_factory.mktemp("trained") / "run")
    proc = _runner(TRAIN, "--method=standard", "--epochs=1", "--train_examples=256", "--batch_size=64",
                   "--validation_size=0", "--eval_examples=20", "--eval_steps=1", "--verbose=0", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _truncate(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _edit_config(run: str, **changes) -> None:
    path = os.path.join(run, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def _write_config(run: str, text: str) -> None:
    with open(os.path.join(run, "config.json"), "w") as f:
        f.write(text)


def _tree(directory: str) -> dict[str, tuple[int, int]]:
    """Every path under `directory` (and beside it) with its size and mtime."""
    out = {}
    for root, dirs, names in os.walk(os.path.dirname(directory)):
        for name in dirs + names:
            path = os.path.join(root, name)
            st = os.stat(path)
            out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
    return out


# (case, damage, what the one line names; "!x": what it must not say)
FAULTS = [
    ("saved_model.pb truncated", lambda run: _truncate(os.path.join(run, "savedmodel", "saved_model.pb"), 100),
     ["cannot load the SavedModel in", "savedmodel", "saved_model.pb"]),
    ("variables data truncated",
     lambda run: _truncate(glob.glob(os.path.join(run, "savedmodel", "variables", "variables.data-*"))[0], 100),
     ["cannot load the SavedModel in", "savedmodel", "variables"]),
    ("savedmodel missing", lambda run: shutil.rmtree(os.path.join(run, "savedmodel")),
     ["cannot load the SavedModel in", "savedmodel"]),
    ("config.json truncated", lambda run: _truncate(os.path.join(run, "config.json"), 50),
     ["config.json", "not valid JSON"]),
    ("config.json a list", lambda run: _write_config(run, "[1, 2]"), ["config.json", "a JSON list, not an object"]),
    ("dtype 3", lambda run: _edit_config(run, dtype=3), ["config.json's dtype", "got 3"]),
    ("eps -1", lambda run: _edit_config(run, eps=-1), ["config.json's eps must be >= 0, got -1", "!--eps"]),
    ("config.json deleted", lambda run: os.remove(os.path.join(run, "config.json")),
     ["savedmodel", "config.json"]),
]


def _case(name, damage, fragments):
    """Cases that load TensorFlow (a damaged SavedModel) take 15-20 s on 2 busy cores."""
    slow = [pytest.mark.slow] if "SavedModel" in fragments[0] else []
    return pytest.param(damage, fragments, id=name, marks=slow)


@pytest.mark.parametrize("damage,fragments", [_case(*f) for f in FAULTS])
def test_damaged_run_is_one_line_and_exit_code_2(trained_run, tmp_path, damage, fragments):
    run = str(tmp_path / "run")
    shutil.copytree(trained_run, run)
    damage(run)
    before = _tree(run)
    proc = _runner(EVALUATE, f"--model={run}", "--suite=quick", "--examples=10", "--checks=none", "--noverbose")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(PREFIX), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        if fragment.startswith("!"):
            assert fragment[1:] not in lines[0], lines[0]  # a bad eps in config.json is not the flag's
        else:
            assert fragment in lines[0], lines[0]
    assert not os.path.exists(os.path.join(run, "evaluation")) and not os.path.exists(run + "-evaluation")
    assert _tree(run) == before  # nothing written, beside the run or in it


def test_damaged_savedmodel_is_a_config_error_for_library_users(trained_run, tmp_path):
    path = str(tmp_path / "savedmodel")
    shutil.copytree(os.path.join(trained_run, "savedmodel"), path)
    _truncate(os.path.join(path, "saved_model.pb"), 100)
    with pytest.raises(errors.ConfigError, match="cannot load the SavedModel in .*saved_model.pb") as e:
        export.load_logits_fn(path)
    assert "\n" not in str(e.value)


def test_damaged_fingerprint_loads_without_a_traceback(trained_run, tmp_path, caplog):
    """fingerprint.pb is metadata: TensorFlow loads the model anyway, but logs a traceback for it."""
    path = str(tmp_path / "savedmodel")
    shutil.copytree(os.path.join(trained_run, "savedmodel"), path)
    with open(os.path.join(path, "fingerprint.pb"), "wb") as f:
        f.write(b"\xff" * 10)  # not a protocol buffer
    logits_fn = export.load_logits_fn(path)
    assert not [r.getMessage() for r in caplog.records if r.exc_info]  # what would print a traceback
    assert logits_fn.input_shape == (8, 8, 1)
    assert tuple(logits_fn(np.zeros((2, 8, 8, 1), np.float32)).shape) == (2, 10)


def _report() -> Report:
    n = 4
    return Report(norm="linf", eps_values=[0.1], attacks=[{"name": "pgd", "label": "pgd-2", "steps": 2}],
                  clean_accuracy=0.75, accuracy={"pgd-2": [0.5]}, worst_case=[0.5], n_examples=n, seed=0,
                  batch_size=n, checks=[], checks_run=[], checks_skipped={}, seconds={"pgd-2": [0.1]},
                  max_perturbation={"pgd-2": [0.1]}, skipped_attacks={}, clean_correct=np.ones(n, bool),
                  correct={"pgd-2": np.ones((1, n), bool)}, worst_correct=np.ones((1, n), bool),
                  labels=np.zeros(n, int))


@contextlib.contextmanager
def _file_size_limit(size: int):
    """Writes past `size` bytes fail (EFBIG), as on a full disk (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize("victim", ["report.md", "accuracy_vs_eps.png"])
def test_failed_save_leaves_the_old_report_whole(tmp_path, monkeypatch, victim):
    report = _report()
    out = str(tmp_path / "evaluation")
    report.save(out)  # a complete report, which a failed rewrite must leave as it was
    names = ("report.json", "report.md", "accuracy_vs_eps.png")
    before = {name: open(os.path.join(out, name), "rb").read() for name in names}
    # report.json (written first) is already atomic: skip it to reach the file under test.
    monkeypatch.setattr(Report, "to_json", lambda self, path, per_example=False: path)
    markdown = len(report.to_markdown().encode())
    limit = markdown // 2 if victim == "report.md" else markdown + 100
    assert len(before["accuracy_vs_eps.png"]) > limit
    with _file_size_limit(limit), pytest.raises(OSError) as e:
        report.save(out)
    for name in names:
        with open(os.path.join(out, name), "rb") as f:
            assert f.read() == before[name], name
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert e.value.filename and os.path.basename(e.value.filename) == victim  # the runner's one line names it
