"""The tutorials (docs/tutorials/*.py, jupytext percent scripts) run as notebooks, as the site build
runs them (mkdocs-jupyter), and show what they say: accuracies above chance (10 digit classes), a
SavedModel that predicts as the trained model, a registered model and method used by the runner.

Each notebook runs in a fresh kernel from the repository root; after its last cell one more cell,
added here, prints the values the notebook showed as JSON, which the test then checks.
"""

from __future__ import annotations

import json
import os
import time

import pytest

jupytext = pytest.importorskip("jupytext")  # the `test` extra installs jupytext, nbclient and ipykernel
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANCE = 0.1  # digits: 10 classes


def run_notebook(name: str, shown: str) -> dict:
    """Execute docs/tutorials/`name`, then return `shown` (a Python expression over the notebook's
    variables) as JSON."""
    notebook = jupytext.read(os.path.join(ROOT, "docs", "tutorials", name))
    notebook.cells.append(nbformat.v4.new_code_cell(f"import json as _json\nprint(_json.dumps({shown}))"))
    start = time.monotonic()
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}).execute()
    print(f"{name}: {time.monotonic() - start:.0f} s")
    outputs = [o for o in notebook.cells[-1].outputs if o.output_type == "stream" and o.name == "stdout"]
    return json.loads(outputs[-1].text.strip().splitlines()[-1])


@pytest.mark.slow
def test_quickstart():
    shown = run_notebook("quickstart.py", """{
        "scores": {k: float(v) for k, v in scores.items()},
        "tensorboard": {t: train_scalars[t] for t in ("epoch_natural", "epoch_robust", "epoch_adv_accuracy")},
        "validation_adv": validation_scalars["epoch_adv_accuracy"],
        "history_adv": history.history["adv_accuracy"],
        "autoattack": {"clean": report.clean_accuracy, "robust": report.worst_case, "eps": report.eps_values,
                       "stages": list(report.accuracy)},
        "plot": os.path.getsize(os.path.join(WORK, "accuracy_vs_eps.png")),
        "same_predictions": bool(same),
        "logit_difference": float(np.abs(saved_logits - keras_logits).max()),
    }""")
    assert shown["scores"]["clean_accuracy"] > CHANCE and shown["scores"]["adv_accuracy"] > CHANCE
    # The scalars read back from TensorBoard are the ones fit reported, one per epoch.
    assert shown["tensorboard"]["epoch_adv_accuracy"] == pytest.approx(shown["history_adv"], abs=1e-6)
    assert len(shown["validation_adv"]) == 3
    aa = shown["autoattack"]
    assert aa["stages"] == ["apgd_ce-100", "apgd_t-100", "fab_t-100", "square-5000"]
    assert aa["clean"] > CHANCE and aa["robust"][0] > CHANCE and aa["robust"] == sorted(aa["robust"], reverse=True)
    assert shown["plot"] > 0
    assert shown["same_predictions"] and shown["logit_difference"] < 1e-4


@pytest.mark.slow
def test_own_model():
    shown = run_notebook("own_model.py", """{
        "registered": "bn_cnn" in models.MODEL_NAMES,
        "batch_norm": any(isinstance(layer, keras.layers.BatchNormalization) for layer in classifier.layers),
        "scores": {k: float(v) for k, v in scores.items()},
        "runner": proc.returncode,
        "summary": {k: summary[k] for k in ("clean_accuracy", "adv_accuracy")},
        "config": json.loads((run / "config.json").read_text()),
    }""")
    assert shown["registered"] and shown["batch_norm"]
    assert shown["scores"]["clean_accuracy"] > CHANCE and shown["scores"]["adv_accuracy"] > CHANCE
    assert shown["runner"] == 0
    assert (shown["config"]["model"], shown["config"]["method"]) == ("bn_cnn", "atent")
    assert shown["summary"]["clean_accuracy"] > CHANCE and shown["summary"]["adv_accuracy"] > CHANCE


@pytest.mark.slow
def test_own_method():
    shown = run_notebook("own_method.py", """{
        "registered": methods.get("pgd_at_smooth") is my_method.PgdAtSmooth,
        "scores": {k: float(v) for k, v in scores.items()},
        "terms": sorted(history.history),
        "apgd": {"clean": report.clean_accuracy, "worst": report.worst_case[0]},
        "help": helpfull.count("--smoothing"),
        "refused": [refused.returncode, refused.stderr.strip()],
    }""")
    assert shown["registered"]
    assert shown["scores"]["clean_accuracy"] > CHANCE and shown["scores"]["adv_accuracy"] > CHANCE
    assert {"adv_ce", "uniform_ce"} <= set(shown["terms"])  # each loss term is logged
    assert shown["apgd"]["clean"] > CHANCE and shown["apgd"]["worst"] > CHANCE
    assert shown["help"] == 1
    assert shown["refused"] == [2, "train.py: error: method pgd_at_smooth: smoothing must be >= 0 and < 1, got 1.5"]
