"""tfrobust's AutoAttack against the official one (fra31/auto-attack), on the same SmallCNN weights
and the same test images: robust accuracy after each stage, the examples where they disagree, time.

    # 1. tfrobust's environment: run tfrobust's AutoAttack, write the weights in PyTorch layout
    python benchmarks/compare_autoattack.py --step=tfrobust --run=runs/RUN --examples=500 --out=/tmp/aa
    # 2. an environment with PyTorch, NumPy, absl-py and the official code on PYTHONPATH (no TensorFlow)
    PYTHONPATH=path/to/auto-attack python benchmarks/compare_autoattack.py --step=official --out=/tmp/aa --seed=0
    # 3. either environment
    python benchmarks/compare_autoattack.py --step=compare --out=/tmp/aa

Step 1 takes a training run directory of a `small_cnn` on 28x28x1 images (TRADES' SmallCNN, the model
the comparison in issue 10 used), restores its last checkpoint and writes OUT/model.npz (weights,
images, labels) and OUT/tfrobust-seedS.json. Step 2 rebuilds the network in PyTorch from model.npz,
checks that its logits equal TensorFlow's, runs `AutoAttack(version='standard')` and writes
OUT/official-seedS.json. Step 3 prints the table. Running steps 1 and 2 for several seeds gives each
implementation's own seed-to-seed spread, the yardstick for their difference.
"""

from __future__ import annotations

import glob
import json
import os
import time

import numpy as np
from absl import app, flags

flags.DEFINE_enum("step", None, ["tfrobust", "official", "compare"], "Which step to run (see the docstring).")
flags.DEFINE_string("run", None, "tfrobust step: the training run directory of a small_cnn.")
flags.DEFINE_string("out", None, "Directory of model.npz and the per-implementation results.")
flags.DEFINE_integer("examples", 500, "The first N test images.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the attacks.", lower_bound=0)
flags.DEFINE_integer("batch_size", 500, "Examples per attack batch.", lower_bound=1)
flags.DEFINE_bool("overwrite", False, "Replace this step's earlier result for the same seed in --out.")
FLAGS = flags.FLAGS

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")  # the official names, in AutoAttack's order
LAYERS = ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2", "fc3")  # small_cnn.TORCH_LAYERS (no TensorFlow here)


def _tfrobust() -> None:
    """Step 1: tfrobust's AutoAttack on the run's last checkpoint; the weights in PyTorch layout."""
    import tensorflow as tf

    from tfrobust import data, evaluation, models
    from tfrobust.models import small_cnn

    with open(os.path.join(FLAGS.run, "config.json")) as f:
        config = json.load(f)
    if config["model"] != "small_cnn" or config.get("normalize", True):
        raise app.UsageError("the comparison rebuilds TRADES' SmallCNN without input normalization: "
                             "--model=small_cnn --normalize=false runs only")
    splits = data.load(config["dataset"])
    x, y = evaluation.load_arrays((splits.x_test, splits.y_test), FLAGS.examples)
    model = models.build_model("small_cnn", splits.image_shape, splits.num_classes)
    latest = tf.train.latest_checkpoint(os.path.join(FLAGS.run, "checkpoints"))
    tf.train.Checkpoint(model=model).restore(latest).expect_partial().assert_existing_objects_matched()
    weights = small_cnn.to_torch_layout(model)
    logits = model.predict(x, batch_size=FLAGS.batch_size, verbose=0)
    saved = os.path.join(FLAGS.out, "model.npz")
    if os.path.exists(saved):  # the official results in --out belong to it: another model must not replace it
        with np.load(saved) as old:
            same = set(old.files) == {"x", "y", "logits", "eps", *weights} and all(
                np.array_equal(old[k], v) for k, v in weights.items()) and np.array_equal(old["y"], y)
        if not same:
            raise app.UsageError(f"{saved} holds another model or other images: choose another --out")
    else:
        os.makedirs(FLAGS.out, exist_ok=True)
        np.savez(saved, x=x.transpose(0, 3, 1, 2), y=y, logits=logits, eps=config["eps"], **weights)
    start = time.perf_counter()
    report = evaluation.autoattack(model, (x, y), eps=config["eps"], norm=config["norm"], seed=FLAGS.seed,
                                   batch_size=FLAGS.batch_size, checks=None, verbose=True)
    total = time.perf_counter() - start
    flags_per_stage = [report.correct[label][0].astype(int).tolist() for label in report.correct]
    seconds = [report.seconds[label][0] for label in report.seconds]
    _write(f"tfrobust-seed{FLAGS.seed}.json", report.clean_correct, flags_per_stage, seconds, total)


def _official() -> None:
    """Step 2: the official AutoAttack, standard version, on the same weights and images."""
    import torch
    from autoattack import AutoAttack
    from autoattack.state import EvaluationState
    from torch import nn

    saved = np.load(os.path.join(FLAGS.out, "model.npz"))
    net = nn.Sequential(  # TRADES' models/small_cnn.py, in its order
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
        nn.Linear(64 * 4 * 4, 200), nn.ReLU(), nn.Dropout(0.5), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
    parametrized = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for name, module in zip(LAYERS, parametrized, strict=True):
            module.weight.copy_(torch.from_numpy(saved[f"{name}.weight"]))
            module.bias.copy_(torch.from_numpy(saved[f"{name}.bias"]))
    net.eval()
    x, y = torch.from_numpy(saved["x"]), torch.from_numpy(saved["y"]).long()
    with torch.no_grad():
        gap = float(np.abs(net(x).numpy() - saved["logits"]).max())
    if gap > 1e-3:
        raise SystemExit(f"the PyTorch network's logits differ from TensorFlow's by {gap:g}: weights not ported")
    print(f"PyTorch logits equal TensorFlow's within {gap:.1e}")

    per_stage: list[list[int]] = []
    record = EvaluationState.add_run_attack  # the official loop calls it once per finished stage

    def add_run_attack(state, attack):
        per_stage.append(state.robust_flags.int().tolist())
        stamps.append(time.perf_counter())
        return record(state, attack)

    EvaluationState.add_run_attack = add_run_attack
    adversary = AutoAttack(net, norm="Linf" if float(saved["eps"]) <= 1 else "L2", eps=float(saved["eps"]),
                           version="standard", seed=FLAGS.seed, device="cpu")
    clean = (net(x).argmax(1) == y).int().numpy()
    start = time.perf_counter()
    stamps = [start]
    adversary.run_standard_evaluation(x, y, bs=FLAGS.batch_size)
    total = time.perf_counter() - start
    while len(per_stage) < len(STAGES):  # the official loop stops once nothing is robust
        per_stage.append(per_stage[-1] if per_stage else [0] * len(y))
        stamps.append(stamps[-1])
    _write(f"official-seed{FLAGS.seed}.json", clean, per_stage, list(np.diff(stamps)), total)


def _write(name: str, clean, per_stage, seconds, total) -> None:
    out = {"clean": [int(v) for v in clean], "stages": dict(zip(STAGES, per_stage, strict=True)),
           "seconds": dict(zip(STAGES, [float(s) for s in seconds], strict=True)), "total_seconds": total}
    with open(os.path.join(FLAGS.out, name), "w") as f:
        json.dump(out, f)
    print(f"wrote {os.path.join(FLAGS.out, name)}: " + ", ".join(
        f"{s} {100 * np.mean(out['stages'][s]):.1f}%" for s in STAGES) + f"; {total:.0f} s")


def _compare() -> None:
    """Step 3: robust accuracy after each stage per implementation and seed, the spread over seeds,
    and how many examples the two implementations' final flags disagree on (same seed)."""
    results = {os.path.basename(p)[:-5]: json.load(open(p))
               for p in sorted(glob.glob(os.path.join(FLAGS.out, "*-seed*.json")))}
    if not results:
        raise SystemExit(f"no results in {FLAGS.out}: run the tfrobust and official steps first")
    print("| run | clean | " + " | ".join(STAGES) + " | seconds |")
    print("| --- | ---: | " + " | ".join("---:" for _ in STAGES) + " | ---: |")
    for name, r in results.items():
        cells = [f"{100 * np.mean(r['stages'][s]):.1f}% ({r['seconds'][s]:.0f} s)" for s in STAGES]
        print(f"| {name} | {100 * np.mean(r['clean']):.1f}% | " + " | ".join(cells) + f" | {r['total_seconds']:.0f} |")
    for seed_file in [n for n in results if n.startswith("tfrobust-")]:
        twin = seed_file.replace("tfrobust-", "official-")
        if twin in results:
            a, b = (np.array(results[n]["stages"]["square"]) for n in (seed_file, twin))
            print(f"{seed_file} vs {twin}: final robust flags differ on {int((a != b).sum())} of {len(a)} examples")
    for prefix in ("tfrobust", "official"):
        finals = [np.array(r["stages"]["square"]) for n, r in results.items() if n.startswith(prefix)]
        if len(finals) > 1:
            accuracies = [100 * f.mean() for f in finals]
            spread = max(int((f != g).sum()) for f in finals for g in finals)
            print(f"{prefix}: final robust accuracy over {len(finals)} seeds {min(accuracies):.1f}-"
                  f"{max(accuracies):.1f}%; two seeds differ on up to {spread} examples")


def main(argv: list[str]) -> None:
    if not FLAGS.out:
        raise app.UsageError("--out is required")
    if FLAGS.step == "tfrobust" and not FLAGS.run:
        raise app.UsageError("--step=tfrobust needs --run")
    result = os.path.join(FLAGS.out, f"{FLAGS.step}-seed{FLAGS.seed}.json")
    if FLAGS.step != "compare" and os.path.exists(result) and not FLAGS.overwrite:
        raise app.UsageError(f"{result} exists: pass --overwrite to replace it")
    {"tfrobust": _tfrobust, "official": _official, "compare": _compare}[FLAGS.step]()


if __name__ == "__main__":
    flags.mark_flag_as_required("step")
    app.run(main)
