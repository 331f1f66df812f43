"""The MIMAE-AT sweep of issue 20: configurations x seeds under the MNIST protocol, judged on a
validation split of the training images by the `apgd` suite (never on test images).

Each run is `runners/train.py --flagfile=flags/replay_mnist_mimae.cfg` (SmallCNN, SGD 0.01 momentum
0.9, batch 128, l-inf eps 0.3, PGD-20 of 0.02, no warm-up) on the first 15,000 MNIST training images
for 2 epochs, with the suite on 500 held-out training images (59,000-59,499 of the training split).
The split is written as an npz whose "test" arrays are those validation images, so the runner's
final evaluation is the validation evaluation:

    python benchmarks/mimae_sweep.py --mnist=../shared/data/mnist.npz --out=runs/mimae-sweep
    python benchmarks/mimae_sweep.py --out=runs/mimae-sweep --table     # the table of what has finished

A finished run is skipped on a rerun, an interrupted one continues (the runner's own resume), so
the sweep can be stopped and restarted. Hours on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("mnist", os.path.join(ROOT, "..", "shared", "data", "mnist.npz"), "MNIST as an npz.")
flags.DEFINE_string("out", "runs/mimae-sweep", "Directory for the split and the runs.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds per configuration.")
flags.DEFINE_list("configs", [], "Names of CONFIGS to run (default: all).")
flags.DEFINE_integer("train_examples", 15000, "The first N training images train.")
flags.DEFINE_integer("val_start", 59000, "Validation images: training images from here ...")
flags.DEFINE_integer("val_examples", 500, "... this many of them.")
flags.DEFINE_integer("epochs", 2, "Epochs per run.")
flags.DEFINE_bool("table", False, "Only print the table of finished runs.")
FLAGS = flags.FLAGS

# name -> method flags (on top of replay_mnist_mimae.cfg; `--method=...` switches method)
CONFIGS: dict[str, list[str]] = {
    "mi1_mae1_nat0": ["--lambda_mi=1", "--lambda_mae=1", "--natural_weight=0"],
    "mi1_mae1_nat1": ["--lambda_mi=1", "--lambda_mae=1", "--natural_weight=1"],
    "mi1_mae0.3_nat1": ["--lambda_mi=1", "--lambda_mae=0.3", "--natural_weight=1"],
    "mi1_mae0.1_nat1": ["--lambda_mi=1", "--lambda_mae=0.1", "--natural_weight=1"],
    "mi0_mae0.1_nat1": ["--lambda_mi=0", "--lambda_mae=0.1", "--natural_weight=1"],
    "mi1_mae0_nat1": ["--lambda_mi=1", "--lambda_mae=0", "--natural_weight=1"],
    "pgd_at": ["--method=pgd_at", "--attack_bn_mode=eval", "--clip_start=true"],
    "trades_beta1": ["--method=trades", "--beta=1", "--attack_bn_mode=eval", "--shared_target=false",
                     "--clip_start=false"],
}


def split_path() -> str:
    """The sweep's npz (train: the first N training images; "test": the validation images), written once."""
    import numpy as np

    path = os.path.join(FLAGS.out, "mnist_sweep.npz")
    if not os.path.exists(path):
        d = np.load(FLAGS.mnist, allow_pickle=False)
        val = slice(FLAGS.val_start, FLAGS.val_start + FLAGS.val_examples)
        if FLAGS.val_start < FLAGS.train_examples:
            raise app.UsageError("the validation images overlap the training images")
        os.makedirs(FLAGS.out, exist_ok=True)
        np.savez_compressed(path + ".tmp.npz", x_train=d["x_train"][: FLAGS.train_examples],
                            y_train=d["y_train"][: FLAGS.train_examples], x_test=d["x_train"][val],
                            y_test=d["y_train"][val])
        os.replace(path + ".tmp.npz", path)
    return path


def run_dir(name: str, seed: str) -> str:
    return os.path.join(FLAGS.out, f"{name}-s{seed}")


def run(name: str, seed: str, data: str) -> None:
    out = run_dir(name, seed)
    if os.path.exists(os.path.join(out, "summary.json")):
        return
    cmd = [sys.executable, os.path.join(ROOT, "runners", "train.py"),
           f"--flagfile={os.path.join(ROOT, 'flags', 'replay_mnist_mimae.cfg')}", *CONFIGS[name],
           f"--dataset=npz:{data}", f"--epochs={FLAGS.epochs}", "--epoch_test_examples=0",
           f"--eval_examples={FLAGS.val_examples}", "--eval_suite=apgd", f"--seed={seed}", f"--output_dir={out}",
           "--verbose=2"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def table() -> str:
    rows = ["| configuration | seeds | val clean | val PGD-40 | val APGD (CE + T) | per seed (clean / APGD) |",
            "| --- | --- | ---: | ---: | ---: | --- |"]
    for name in FLAGS.configs or CONFIGS:
        done = []
        for seed in FLAGS.seeds:
            path = os.path.join(run_dir(name, seed), "summary.json")
            if os.path.exists(path):
                with open(path) as f:
                    s = json.load(f)
                done.append((seed, s["clean_accuracy"], s["adv_accuracy"], s["suite_accuracy"]["worst_case"]))
        if not done:
            continue

        def fmt(values):
            values = [100 * v for v in values]
            spread = f" +- {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.1f}%{spread}"

        per_seed = "; ".join(f"s{s}: {100 * c:.1f} / {100 * w:.1f}" for s, c, _, w in done)
        rows.append(f"| {name} | {len(done)} | {fmt([d[1] for d in done])} | {fmt([d[2] for d in done])} | "
                    f"{fmt([d[3] for d in done])} | {per_seed} |")
    return "\n".join(rows)


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.configs) - set(CONFIGS))
    if unknown:
        raise app.UsageError(f"unknown configuration(s) {unknown}; known: {sorted(CONFIGS)}")
    if not FLAGS.table:
        data = split_path()
        for name in FLAGS.configs or CONFIGS:
            for seed in FLAGS.seeds:
                run(name, seed, data)
    print(table())


if __name__ == "__main__":
    app.run(main)
