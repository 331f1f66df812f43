"""Bad input, refused the same way everywhere: one line on stderr, exit code 2, no traceback, and
nothing written or deleted (the directory listing before and after is identical).

One table of cases per runner; each runner runs all its cases in one subprocess
(tests/scripts/runner_cases.py), so TensorFlow is imported once per runner.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "runner_cases.py")
TRAIN = os.path.join(ROOT, "runners", "train.py")
EVALUATE = os.path.join(ROOT, "runners", "evaluate.py")
BENCHMARK = os.path.join(ROOT, "benchmarks", "benchmark.py")

# (case id, arguments, what stderr must say). {out}: a fresh run directory that must not appear;
# {tmp}: the case's own directory (its files were laid by `_lay_files`).
TRAIN_CASES = [
    ("validation_size inf", ["--validation_size=inf"], "validation_size must be a finite number"),
    ("eps_warmup inf", ["--eps_warmup_epochs=inf"], "eps_warmup_epochs must be a finite number"),
    ("atent alpha 5", ["--method=atent", "--alpha=5"], "alpha must be > 0 and <= 1"),
    ("atent projection", ["--method=atent", "--projection=sometimes"], "projection"),
    ("seed -1", ["--seed=-1"], "seed must be >= 0"),
    ("beta -5", ["--method=trades", "--beta=-5"], "beta must be >= 0"),
    ("beta nan", ["--method=trades", "--beta=nan"], "beta must be a finite number"),
    ("noise inf", ["--method=atent", "--noise=inf"], "noise must be a finite number"),
    ("step_size 0", ["--step_size=0"], "step_size must be > 0"),
    ("eval_steps 0", ["--eval_steps=0"], "eval_steps must be >= 1"),
    ("huge attack", ["--attack_steps=1000000000"], "--allow_expensive"),
    ("lr nan", ["--lr=nan"], "lr must be a finite number"),
    ("momentum 1", ["--momentum=1"], "momentum must be >= 0 and < 1"),
    ("foreign method flag", ["--method=pgd_at", "--beta=1"], "does not take --beta"),
    ("decay epochs", ["--lr_schedule=piecewise"], "needs lr_decay_epochs"),
    ("test label unseen", ["--dataset=npz:{tmp}/unseen.npz"], "y_test contains the label 10"),
    ("label beyond int32", ["--dataset=npz:{tmp}/wide.npz"], "beyond int32"),
    ("float 0..255 images", ["--dataset=npz:{tmp}/float255.npz"], "divide 0..255 images by 255"),
]
# Cases whose --output_dir holds something: it must be left exactly as it was.
TRAIN_DIR_CASES = [
    ("overwrite a thesis", ["--overwrite"], "holds files tfrobust did not write (thesis.pdf)"),
    ("not a run", [], "holds no tfrobust run"),
    ("output is a file", [], "is an existing file"),
]
EVALUATE_CASES = [
    ("report dir with a thesis", ["--output_dir={tmp}/thesis_dir"], "did not write (thesis.pdf)"),
    ("report dir with a thesis, overwrite", ["--output_dir={tmp}/thesis_dir", "--overwrite"], "did not write"),
    ("report over an existing report", ["--output_dir={tmp}/old_report"], "--overwrite"),
    ("output is a file", ["--output_dir={tmp}/a_file"], "is an existing file"),
    ("eps not a number", ["--eps=abc"], "--eps must be"),
    ("no model", ["--model=", "--output_dir={tmp}/x"], "--model is required"),
]

BENCHMARK_CASES = [
    ("timeout nan", ["--timeout=nan", "--output_dir={tmp}/x"], "timeout must be a finite number"),
    ("output is a file", ["--output_dir={tmp}/a_file"], "is an existing file"),
    ("output with a thesis", ["--output_dir={tmp}/thesis_dir", "--overwrite"], "did not write (thesis.pdf)"),
    ("earlier results", ["--output_dir={tmp}/old_benchmark"], "--overwrite"),
]


def _npz(path, x_train, y_train, x_test, y_test):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def _lay_files(tmp):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(20) % 10
    _npz(tmp / "unseen.npz", images, labels, images[:4], np.array([0, 1, 2, 10]))
    _npz(tmp / "wide.npz", images, labels.astype(np.int64) + 2**32, images[:4], labels[:4])
    _npz(tmp / "float255.npz", images.astype(np.float32), labels, images[:4].astype(np.float32), labels[:4])
    for name in ("thesis_dir", "thesis_run", "not_a_run", "old_report"):
        (tmp / name).mkdir()
    (tmp / "thesis_dir" / "thesis.pdf").write_text("years of work")
    (tmp / "thesis_run" / "thesis.pdf").write_text("years of work")
    (tmp / "thesis_run" / "config.json").write_text(json.dumps({"format": "tfrobust.run", "format_version": 1,
                                                                "method": "pgd_at", "dataset": "digits"}))
    (tmp / "not_a_run" / "config.json").write_text(json.dumps({"learning_rate": 3}))
    (tmp / "not_a_run" / "notes.txt").write_text("mine")
    (tmp / "old_report" / "report.json").write_text("{}")
    (tmp / "old_benchmark").mkdir()
    (tmp / "old_benchmark" / "benchmark.md").write_text("earlier figures")
    (tmp / "a_file").write_text("not a directory")


def _listing(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = None if os.path.isdir(path) else open(path, "rb").read()
    return out


def _run(runner, cases, tmp):
    cases_path = tmp.parent / f"{os.path.basename(runner)}-cases.json"
    cases_path.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, SCRIPT, runner, str(cases_path)], capture_output=True, text=True,
                          timeout=900, cwd=str(tmp), env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(cases)
    return results


def _assert_refused(case_id, result, message):
    assert result["code"] == 2, f"{case_id}: exit {result['code']}: {result['stderr'][-2000:]}"
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1, f"{case_id}: expected one line, got {lines}"
    assert "Traceback" not in result["stderr"]
    assert message in lines[0], f"{case_id}: {lines[0]!r} does not say {message!r}"


def test_train_runner_refuses_bad_input_before_writing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _lay_files(work)
    dir_for = {"overwrite a thesis": "thesis_run", "not a run": "not_a_run", "output is a file": "a_file"}
    cases = [[a.replace("{tmp}", str(work)) for a in argv] + [f"--output_dir={work}/run-{i}"]
             for i, (_, argv, _) in enumerate(TRAIN_CASES)]
    cases += [argv + [f"--output_dir={work}/{dir_for[cid]}"] for cid, argv, _ in TRAIN_DIR_CASES]
    before = _listing(work)
    results = _run(TRAIN, cases, work)
    for (case_id, _, message), result in zip(TRAIN_CASES + TRAIN_DIR_CASES, results):
        _assert_refused(case_id, result, message)
    assert _listing(work) == before  # no run directory, no config.json, nothing deleted


def test_evaluate_runner_refuses_bad_input_before_writing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _lay_files(work)
    model = tmp_path / "model"  # refusals come before the model is read
    model.mkdir()
    cases = [[f"--model={model}", *(a.replace("{tmp}", str(work)) for a in argv)] for _, argv, _ in EVALUATE_CASES]
    before = _listing(work)
    results = _run(EVALUATE, cases, work)
    for (case_id, _, message), result in zip(EVALUATE_CASES, results):
        _assert_refused(case_id, result, message)
    assert _listing(work) == before


def test_benchmark_runner_refuses_bad_input_before_writing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _lay_files(work)
    cases = [[a.replace("{tmp}", str(work)) for a in argv] for _, argv, _ in BENCHMARK_CASES]
    before = _listing(work)
    results = _run(BENCHMARK, cases, work)
    for (case_id, _, message), result in zip(BENCHMARK_CASES, results):
        _assert_refused(case_id, result, message)
    assert _listing(work) == before


def test_overwrite_removes_only_what_a_run_wrote(tmp_path):
    from tfrobust import config, rundir

    run = tmp_path / "run"
    cfg = config.TrainConfig(output_dir=str(run))
    assert rundir.prepare(cfg) is False
    for entry in ("checkpoints", "logs", ".export-abc"):
        (run / entry).mkdir()
    (run / "summary.json").write_text("{}")
    assert rundir.prepare(config.TrainConfig(output_dir=str(run), overwrite=True)) is False
    assert sorted(os.listdir(run)) == ["config.json"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["format"] == "tfrobust.run" and saved["augment"] == "auto"


def test_a_rerun_cleans_a_killed_exports_staging_directory(tmp_path):
    from tfrobust import config, rundir

    run = tmp_path / "run"
    rundir.prepare(config.TrainConfig(output_dir=str(run)))
    (run / ".export-x1y2").mkdir()
    (run / ".export-x1y2" / "saved_model.pb").write_text("half")
    (run / ".tmp-abc").write_text("half")
    assert rundir.prepare(config.TrainConfig(output_dir=str(run))) is True
    assert sorted(os.listdir(run)) == ["config.json"]


def test_config_of_an_earlier_version_still_continues(tmp_path):
    """config.json written before the format marker and typed tri-states: same settings, same run."""
    from tfrobust import config, rundir

    run = tmp_path / "run"
    run.mkdir()
    legacy = config.to_json(config.TrainConfig(output_dir=str(run)))
    legacy.update(augment="auto", jit_compile="auto", verbose="auto")
    (run / "config.json").write_text(json.dumps(legacy))
    assert rundir.prepare(config.TrainConfig(output_dir=str(run))) is True


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through permissions")
def test_read_only_output_directory_is_refused_before_work(tmp_path):
    from tfrobust import config, rundir
    from tfrobust.errors import ConfigError

    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="Permission denied"):
            rundir.prepare(config.TrainConfig(output_dir=str(parent / "run")))
    finally:
        parent.chmod(0o700)


def test_a_full_disk_mid_run_names_the_path_and_how_to_resume(tmp_path, monkeypatch):
    """A write hook: the second checkpoint save fails with ENOSPC. The run ends with RunWriteError
    (exit code 4 in the runners) naming the path; the first checkpoint is intact and a rerun continues."""
    import keras

    from tfrobust import training
    from tfrobust.errors import RunWriteError

    class FullDisk(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                path = os.path.join(str(tmp_path / "run"), "checkpoints", "ckpt-2.index")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    cfg = training.TrainConfig(method="standard", epochs=3, batch_size=64, train_examples=128, validation_size=0,
                               eval_examples=32, eval_steps=1, output_dir=str(tmp_path / "run"), verbose=0)
    with pytest.raises(RunWriteError, match="No space left on device") as info:
        training.train(cfg, extra_callbacks=[FullDisk()])
    message = str(info.value)
    assert info.value.exit_code == 4 and "ckpt-2.index" in message and "rerun the same command" in message
    result = training.train(cfg)  # the disk has room again
    assert result.steps == 3 * 2


def test_a_savedmodel_from_keras_model_export_evaluates(tmp_path):
    """Keras' own `model.export()` serves the output tensor, not a dict: it is read as logits."""
    import keras

    from tfrobust import export, models

    classifier = models.build_model("tiny_cnn", (8, 8, 1), 10)
    classifier.export(str(tmp_path / "keras_export"), verbose=False)
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
    logits = export.load_logits_fn(str(tmp_path / "keras_export"))(x)
    np.testing.assert_allclose(logits.numpy(), keras.ops.convert_to_numpy(classifier(x)), atol=1e-5)
