"""tfrobust's training against the official code from the same start (issue 22): N steps of PGD-AT,
TRADES, MART or ATENT under the MNIST protocol replay (`flags/replay_mnist_METHOD.cfg`) on each side,
from the same initial weights and in the same batch order; the training loss every 25 steps and clean
and PGD-40 accuracy at the end on both sides, the two loss curves in one plot, and a report.

    python benchmarks/compare_training.py --method=trades --steps=100 --seed=0 --out=runs/compare-training
    python benchmarks/compare_training.py --method=trades --seed=0 --out=runs/compare-training   # one epoch
    python benchmarks/compare_training.py --method=trades --seed=0 --noise_seed=1 --side=official \\
        --out=runs/compare-training   # the official code against itself from the same start

The official code is fetched, not copied: `git clone` of each repository at a pinned commit
(`OFFICIAL`) into --official_dir, from --official_source (GitHub by default), and then imported or,
for scripts that parse arguments or load data when imported, the one function needed is read from
the file with `ast` and run as written:
- TRADES (yaodongyu/TRADES): `models/small_cnn.py` (the network and its initialization),
  `trades.py` `trades_loss`, `train_trades_mnist.py` `train` (the training loop), and
  `pgd_attack_mnist.py` `_pgd_whitebox` (the PGD-40 evaluation, step 0.01, uniform start).
- MART (YisenWang/MART): `mart.py` `mart_loss` and `train_wideresnet.py` `train`.
- ATENT (GauriJagatap/StochAT): `notebooks/mnist_exps_linf.ipynb`'s training cell
  (`adversarial_training_entropy`: L Langevin samples, alpha 0.9, ep 1e-4, projection after every
  step, the model in train mode), `adversarial/functional.py` `entropySmoothing` and
  `adversarial/utils.py` `train_adversarial` (the loop) and `random_perturbation`, `project`.
- PGD-AT has no PyTorch file in these repositories. `pgd_at_loss` below is Madry et al.'s algorithm
  (MadryLab/mnist_challenge `pgd_attack.py`: uniform start clipped to [0, 1], sign steps,
  projection, clip) written as `trades.py` writes its attack, with the attack in eval mode as the
  replay protocol has it, and TRADES' `train` runs it.
The one change made to the official code's behaviour: on a machine without CUDA, `Tensor.cuda()`
(which `trades.py` and `mart.py` call on their start noise) returns the tensor itself.

Both sides:
- start: TRADES' SmallCNN built under `torch.manual_seed(--seed)`, its weights converted to
  tfrobust's Keras SmallCNN (`tfrobust.models.small_cnn.from_torch_layout`);
- data: the protocol's npz (--data overrides it), pixels / 255 in float32 (what torchvision's
  ToTensor gives); the batches of epoch e are NumPy's `default_rng([seed, e]).permutation` of the
  training images cut into --batch_size (the protocol's 128) pieces, the last partial one dropped;
- optimizer and attacks: the flagfile's (SGD lr 0.01 momentum 0.9, eps 0.3, 20 steps of 0.02).
Each side's own randomness (attack starts, dropout masks, Langevin noise) is its own: torch's global
generator continues after the model is built (reseeded with --noise_seed if given), tfrobust draws
from stateless seeds of --noise_seed (default --seed). So the two sides are equal only in
distribution: two official runs from the same start with different --noise_seed measure how far
apart equal implementations end (docs/fidelity.md).

In --out: METHOD-seedS[-noiseN]-SIDE.json (every step's loss, the means of each --record_every
steps, clean accuracy on --test_examples test images, PGD-40 accuracy on the first --eval_examples,
seconds, versions), METHOD-seedS[-noiseN].png once both sides of a start exist, and report.md
(every result in --out, rewritten each time). A result that exists is kept: the run stops before it
computes anything unless --overwrite is given.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import subprocess
import sys
import time
import types

import numpy as np
from absl import app, flags

from tfrobust import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("pgd_at", "trades", "mart", "atent")
OFFICIAL = {  # repository -> the commit the comparison runs
    "yaodongyu/TRADES": "6e8e11b7c281371c2f027ffadfbaea80361f09de",
    "YisenWang/MART": "2d83e17b381dd2ee52223695e517bf6d5ff09c2c",
    "GauriJagatap/StochAT": "c45886deb7e6d8a2bf37e18b18a0e2a03da8e960",
}
SIDES = ("official", "tfrobust")
PROGRAM = "compare_training.py"

flags.DEFINE_enum("method", None, list(METHODS), "The training method (its protocol: flags/replay_mnist_METHOD.cfg).")
flags.DEFINE_integer("steps", 0, "Optimizer steps per side (0: one epoch).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the initial weights (torch.manual_seed) and the batch order.", lower_bound=0)
flags.DEFINE_integer("noise_seed", None, "Seed of each side's own randomness (default: --seed; the official "
                     "side then continues torch's generator after building the model).", lower_bound=0)
flags.DEFINE_enum("side", "both", ["both", *SIDES], "Which side(s) to run.")
flags.DEFINE_string("out", None, "Directory of the results, plots and report.")
flags.DEFINE_string("data", None, "An npz with x_train, y_train, x_test, y_test (default: the protocol's).")
flags.DEFINE_integer("train_examples", 0, "Use the first N training images (0: all).", lower_bound=0)
flags.DEFINE_integer("test_examples", 0, "Clean accuracy on the first N test images (0: all).", lower_bound=0)
flags.DEFINE_integer("eval_examples", 2000, "PGD-40 accuracy on the first N test images.", lower_bound=1)
flags.DEFINE_integer("record_every", 25, "Report the mean loss of each N steps.", lower_bound=1)
flags.DEFINE_string("official_dir", os.path.join("~", ".cache", "tfrobust-official"),
                    "Where the official repositories are cloned (once).")
flags.DEFINE_string("official_source", "https://github.com/{repo}.git",
                    "Where to clone them from: a format string of {repo} (owner/name), {owner} and {name}.")
flags.DEFINE_bool("overwrite", False, "Replace this start's earlier result of the same side.")
FLAGS = flags.FLAGS


# -- the protocol and the data --------------------------------------------------------------------

def protocol(method: str):
    """The `TrainConfig` of flags/replay_mnist_METHOD.cfg, read with the runner's flag definitions."""
    from tfrobust import methods
    from tfrobust.config import TrainConfig

    fv = flags.FlagValues()
    cli.define_flags(TrainConfig, flag_values=fv)
    cli.define_method_flags(methods.REGISTRY, flag_values=fv)
    fv(["compare_training", f"--flagfile={os.path.join(ROOT, 'flags', f'replay_mnist_{method}.cfg')}"])
    values = cli.values_from_flags(TrainConfig, flag_values=fv)
    values["method_options"] = cli.values_from_flags(methods.get(method), names=methods.hyperparameters(method),
                                                     flag_values=fv)
    return TrainConfig(**values)


def load_data(path: str, train_examples: int, test_examples: int) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): NHWC float32 pixels / 255 and int64 labels."""
    with np.load(path, allow_pickle=False) as f:
        arrays = [f[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    x_train, y_train, x_test, y_test = arrays
    if train_examples:
        x_train, y_train = x_train[:train_examples], y_train[:train_examples]
    if test_examples:
        x_test, y_test = x_test[:test_examples], y_test[:test_examples]

    def scale(x):
        return x.astype(np.float32) / np.float32(255)

    return scale(x_train), y_train.astype(np.int64), scale(x_test), y_test.astype(np.int64)


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """The indices of each step's batch: epoch e is default_rng([seed, e]).permutation(n) in full
    batches."""
    per_epoch = n // batch_size
    order = []
    for epoch in range(-(-steps // per_epoch)):
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        order += [perm[i * batch_size:(i + 1) * batch_size] for i in range(per_epoch)]
    return order[:steps]


# -- the official code ----------------------------------------------------------------------------

def fetch(repo: str) -> str:
    """A clone of `repo` at OFFICIAL[repo] under --official_dir (cloned on first use)."""
    owner, name = repo.split("/")
    path = os.path.join(os.path.expanduser(FLAGS.official_dir), f"{owner}+{name}")
    if not os.path.isdir(os.path.join(path, ".git")):
        source = FLAGS.official_source.format(repo=repo, owner=owner, name=name)
        print(f"cloning {source} into {path}", flush=True)
        subprocess.run(["git", "clone", "--quiet", source, path], check=True)
    subprocess.run(["git", "-C", path, "checkout", "--quiet", OFFICIAL[repo]], check=True)
    return path


def load_module(path: str, name: str, aliases: dict[str, types.ModuleType] | None = None) -> types.ModuleType:
    """Import the file `path` as module `name`; `aliases` are the module names it imports under
    other names (StochAT's `functional.py` imports `utils`), present only while it loads."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    saved = {k: sys.modules.get(k) for k in aliases or {}}
    sys.modules.update(aliases or {})
    try:
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


def load_function(source: str, name: str, namespace: dict) -> types.FunctionType:
    """The top-level function `name` of Python `source`, defined alone in `namespace` (its globals):
    for official scripts that parse arguments or load data when imported."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            exec(compile(ast.Module(body=[node], type_ignores=[]), f"<official {name}>", "exec"), namespace)
            return namespace[name]
    raise LookupError(f"no function {name} in the official code")


def notebook_cell(path: str, marker: str) -> str:
    """The source of the notebook's code cell containing `marker`."""
    with open(path) as f:
        cells = json.load(f)["cells"]
    for cell in cells:
        text = "".join(cell["source"])
        if cell["cell_type"] == "code" and marker in text:
            return text
    raise LookupError(f"no cell with {marker!r} in {path}")


def pgd_at_loss(model, x_natural, y, optimizer, step_size=0.003, epsilon=0.031, perturb_steps=10, beta=1.0,
                distance="l_inf"):
    """Madry et al.'s PGD-AT step in `trades.py`'s style (the TRADES loop passes `beta`; unused):
    a uniform start in the box clipped to [0, 1], `perturb_steps` eval-mode sign steps on the
    cross-entropy, each projected and clipped, then the cross-entropy of the adversarial batch."""
    import torch
    import torch.nn.functional as F

    model.eval()
    x_adv = x_natural.detach() + torch.zeros_like(x_natural).uniform_(-epsilon, epsilon)
    x_adv = torch.clamp(x_adv, 0.0, 1.0)
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_ce = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss_ce, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    optimizer.zero_grad()
    return F.cross_entropy(model(x_adv), y)


class _Loader:
    """What the official loops iterate: (data, target) batches, and `.dataset` for their progress lines."""

    def __init__(self, batches, n):
        self.batches, self.dataset = batches, range(n)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def official_start(seed: int):
    """TRADES' SmallCNN built under torch.manual_seed(seed), and its weights in
    `small_cnn.to_torch_layout`'s layout."""
    import torch

    trades = fetch("yaodongyu/TRADES")
    small_cnn = load_module(os.path.join(trades, "models", "small_cnn.py"), "official_small_cnn")
    torch.manual_seed(seed)
    net = small_cnn.SmallCNN()
    weights = {k.split(".", 1)[1]: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    return net, weights


def official_train(method: str, config, net, batches, n_train: int, record) -> None:
    """The official loop of `method` over `batches` (torch tensors), `record(loss)` after each step."""
    import torch
    from torch import nn, optim

    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # trades.py and mart.py call .cuda()
    args = types.SimpleNamespace(step_size=config.step_size, epsilon=config.eps, num_steps=config.attack_steps,
                                 beta=config.method_options.get("beta", 1.0), log_interval=10 ** 9)
    optimizer = optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum)
    loader = _Loader(batches, n_train)
    if method == "atent":
        stochat = fetch("GauriJagatap/StochAT")
        utils = load_module(os.path.join(stochat, "adversarial", "utils.py"), "official_stochat_utils")
        functional = load_module(os.path.join(stochat, "adversarial", "functional.py"), "official_functional",
                                 aliases={"utils": utils})
        cell = notebook_cell(os.path.join(stochat, "notebooks", "mnist_exps_linf.ipynb"),
                             "def adversarial_training_entropy")
        method_fn = load_function(cell, "adversarial_training_entropy", {"torch": torch, "nn": nn})

        def recorded(*a, **k):
            loss, correct = method_fn(*a, **k)
            record(loss.item())
            return loss, correct

        utils.train_adversarial(recorded, net, "cpu", loader, optimizer, 1, adversary=functional.entropySmoothing,
                                L=config.attack_steps, step=config.step_size, eps=config.eps, norm="inf")
        return
    if method == "mart":
        repo, script, loss_file, loss_name = "YisenWang/MART", "train_wideresnet.py", "mart.py", "mart_loss"
    else:
        repo, script, loss_file, loss_name = "yaodongyu/TRADES", "train_trades_mnist.py", "trades.py", "trades_loss"
    path = fetch(repo)
    loss_fn = (pgd_at_loss if method == "pgd_at" else
               getattr(load_module(os.path.join(path, loss_file), f"official_{method}"), loss_name))

    def recorded(**k):
        loss = loss_fn(**k)
        record(loss.item())
        return loss

    with open(os.path.join(path, script)) as f:
        train = load_function(f.read(), "train", {loss_name: recorded})
    train(args, net, "cpu", loader, optimizer, 1)


def official_pgd_accuracy(config, net, x, y, batch_size: int = 200) -> float:
    """TRADES `pgd_attack_mnist.py` `_pgd_whitebox` (uniform start; eval_steps steps of eval_step_size),
    batches of 200 as its --test-batch-size."""
    import torch
    from torch import nn, optim
    from torch.autograd import Variable

    with open(os.path.join(fetch("yaodongyu/TRADES"), "pgd_attack_mnist.py")) as f:
        source = f.read()
    args = types.SimpleNamespace(epsilon=config.eps, num_steps=config.eval_steps, step_size=config.eval_step_size,
                                 random=True)
    whitebox = load_function(source, "_pgd_whitebox", {"torch": torch, "nn": nn, "optim": optim,
                                                       "Variable": Variable, "args": args, "device": "cpu"})
    net.eval()
    errors = 0.0
    for a in range(0, len(x), batch_size):
        xb, yb = torch.from_numpy(x[a:a + batch_size]), torch.from_numpy(y[a:a + batch_size])
        errors += float(whitebox(net, Variable(xb, requires_grad=True), Variable(yb))[1])
    return 1.0 - errors / len(x)


def _nchw(x: np.ndarray) -> np.ndarray:
    """NHWC -> NCHW with fresh row-major strides (a transposed view with one channel counts as
    contiguous to NumPy and PyTorch alike, but its strides make PyTorch's convolutions return
    channels-last outputs, which SmallCNN's `view` refuses)."""
    out = np.empty((x.shape[0], x.shape[3], x.shape[1], x.shape[2]), x.dtype)
    out[...] = x.transpose(0, 3, 1, 2)
    return out


def run_official(config, method, data, order, noise_seed) -> dict:
    import torch

    x_train, y_train, x_test, y_test = (_nchw(a) if a.ndim == 4 else a for a in data)
    net, _ = official_start(FLAGS.seed)
    if noise_seed is not None:
        torch.manual_seed(noise_seed)
    batches = [(torch.from_numpy(x_train[i]), torch.from_numpy(y_train[i])) for i in order]
    losses: list[float] = []
    start = time.perf_counter()
    official_train(method, config, net, batches, len(x_train), losses.append)
    trained = time.perf_counter()
    net.eval()
    with torch.no_grad():
        predicted = np.concatenate([net(torch.from_numpy(x_test[a:a + 500])).argmax(1).numpy()
                                    for a in range(0, len(x_test), 500)])
    clean = float((predicted == y_test).mean())
    pgd = official_pgd_accuracy(config, net, x_test[:FLAGS.eval_examples], y_test[:FLAGS.eval_examples])
    return {"losses": losses, "clean_accuracy": clean, "pgd_accuracy": pgd, "train_seconds": trained - start,
            "eval_seconds": time.perf_counter() - trained, "versions": {"torch": torch.__version__},
            "official": OFFICIAL}


# -- tfrobust -------------------------------------------------------------------------------------

def run_tfrobust(config, method, data, order, noise_seed) -> dict:
    """The same steps with tfrobust's method and train step, from the official initial weights."""
    import keras
    import tensorflow as tf

    from tfrobust import config as config_lib
    from tfrobust import evaluation, methods, models, training
    from tfrobust.models import small_cnn
    from tfrobust.robust_model import RobustModel

    x_train, y_train, x_test, y_test = data
    _, weights = official_start(FLAGS.seed)
    seed = FLAGS.seed if noise_seed is None else noise_seed
    keras.utils.set_random_seed(seed)
    classifier = models.build_model("small_cnn", x_train.shape[1:], 10)
    small_cnn.from_torch_layout(classifier, weights)
    back = small_cnn.to_torch_layout(classifier)
    if not all(np.array_equal(back[k], weights[k]) for k in weights):
        raise SystemExit("the converted weights do not convert back exactly: the layouts disagree")
    robust = RobustModel(classifier, methods.build(method, config_lib.attack_config(config), config.method_options),
                         weight_decay=config.weight_decay, seed=seed)
    robust.compile(optimizer=training.build_optimizer(config, len(x_train) // config.batch_size))
    losses = []
    start = time.perf_counter()
    for i in order:
        logs = robust.train_on_batch(x_train[i], y_train[i].astype(np.int32), return_dict=True)
        losses.append(float(logs["loss"]))
    trained = time.perf_counter()
    clean = float((classifier.predict(x_test, batch_size=500, verbose=0).argmax(-1) == y_test).mean())
    spec = evaluation.AttackSpec("pgd", steps=config.eval_steps, step_size=config.eval_step_size, random_start=True)
    report = evaluation.robust_accuracy(classifier, (x_test, y_test.astype(np.int32)), attacks=[spec],
                                        eps_values=[config.eps], norm=config.norm, batch_size=200,
                                        limit=FLAGS.eval_examples, seed=seed + 1, checks=None)
    return {"losses": losses, "clean_accuracy": clean, "pgd_accuracy": report.accuracy[spec.display][0],
            "train_seconds": trained - start, "eval_seconds": time.perf_counter() - trained,
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "tfrobust": _commit()}}


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- results, plot, report ------------------------------------------------------------------------

def window_means(losses: list[float], every: int) -> list[float]:
    """The mean loss of steps [0, every), [every, 2 every), ... (a last shorter window included)."""
    return [float(np.mean(losses[a:a + every])) for a in range(0, len(losses), every)]


def run_name(method: str, seed: int, noise_seed: int | None) -> str:
    return f"{method}-seed{seed}" + ("" if noise_seed is None else f"-noise{noise_seed}")


def plot(out: str, name: str) -> None:
    """Both sides' loss curves (means of each record_every steps) of one start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for side in SIDES:
        with open(os.path.join(out, f"{name}-{side}.json")) as f:
            r = json.load(f)
        every = r["record_every"]
        steps = [min(every * (k + 1), r["steps"]) for k in range(len(r["window_means"]))]
        ax.plot(steps, r["window_means"], marker="o", label=f"{side} (clean {100 * r['clean_accuracy']:.1f}%, "
                                                             f"PGD-40 {100 * r['pgd_accuracy']:.1f}%)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"training loss (mean of {every} steps)")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{name}.png"), dpi=100)
    plt.close(fig)


def report(out: str) -> str:
    """report.md: every result in `out`, and for each start with both sides the largest gap between
    their loss means."""
    results = {}
    for path in sorted(glob.glob(os.path.join(out, "*-*.json"))):
        with open(path) as f:
            results[os.path.basename(path)[:-5]] = json.load(f)
    lines = ["| run | side | steps | first mean loss | last mean loss | mean loss | clean | PGD-40 | train min |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results.values():
        lines.append(f"| {r['name']} | {r['side']} | {r['steps']} | {r['window_means'][0]:.3f} | "
                     f"{r['window_means'][-1]:.3f} | {np.mean(r['losses']):.3f} | "
                     f"{100 * r['clean_accuracy']:.2f}% ({r['test_examples']}) | "
                     f"{100 * r['pgd_accuracy']:.2f}% ({r['eval_examples']}) | {r['train_seconds'] / 60:.1f} |")
    gaps = []
    for key, r in results.items():
        twin = results.get(key.replace("-official", "-tfrobust"))
        if r["side"] == "official" and twin and len(twin["window_means"]) == len(r["window_means"]):
            gap = np.max(np.abs(np.subtract(r["window_means"], twin["window_means"])))
            gaps.append(f"- {r['name']}: the {r['record_every']}-step loss means differ by at most {gap:.3f}")
    text = "\n".join(["# Training from the same start: official code and tfrobust", "", *lines, "", *gaps, ""])
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    return text


def fail(message: str) -> None:
    cli.fail(PROGRAM, message)


def main(argv: list[str]) -> None:
    if not FLAGS.out:
        fail("--out is required")
    config = protocol(FLAGS.method)
    data_path = FLAGS.data or config.dataset.removeprefix("npz:")
    if not os.path.isfile(data_path):
        fail(f"--data: no file {data_path!r} (an npz with x_train, y_train, x_test, y_test)")
    name = run_name(FLAGS.method, FLAGS.seed, FLAGS.noise_seed)
    sides = SIDES if FLAGS.side == "both" else (FLAGS.side,)
    for side in sides:
        result = os.path.join(FLAGS.out, f"{name}-{side}.json")
        if os.path.exists(result) and not FLAGS.overwrite:
            fail(f"{result} exists: pass --overwrite to replace it, or choose another --out")
    data = load_data(data_path, FLAGS.train_examples, FLAGS.test_examples)
    per_epoch = len(data[0]) // config.batch_size
    if per_epoch == 0:
        fail(f"{len(data[0])} training images make no batch of {config.batch_size}")
    steps = FLAGS.steps or per_epoch
    order = batch_order(len(data[0]), config.batch_size, steps, FLAGS.seed)
    os.makedirs(FLAGS.out, exist_ok=True)
    for side in sides:
        print(f"{name}: {side}, {steps} steps of {config.batch_size}", flush=True)
        run = run_official if side == "official" else run_tfrobust
        r = run(config, FLAGS.method, data, order, FLAGS.noise_seed)
        r.update(name=name, side=side, method=FLAGS.method, seed=FLAGS.seed, noise_seed=FLAGS.noise_seed,
                 steps=steps, batch_size=config.batch_size, record_every=FLAGS.record_every,
                 window_means=window_means(r["losses"], FLAGS.record_every), test_examples=len(data[3]),
                 eval_examples=min(FLAGS.eval_examples, len(data[3])), data=os.path.abspath(data_path),
                 train_examples=len(data[0]))
        with open(os.path.join(FLAGS.out, f"{name}-{side}.json"), "w") as f:
            json.dump(r, f)
        print(f"{name} {side}: mean loss {np.mean(r['losses']):.4f}, clean {100 * r['clean_accuracy']:.2f}%, "
              f"PGD-40 {100 * r['pgd_accuracy']:.2f}%, {r['train_seconds'] / 60:.1f} min", flush=True)
    if all(os.path.exists(os.path.join(FLAGS.out, f"{name}-{s}.json")) for s in SIDES):
        plot(FLAGS.out, name)
    print(report(FLAGS.out))


if __name__ == "__main__":
    flags.mark_flag_as_required("method")
    app.run(main, flags_parser=cli.flags_parser(PROGRAM))
