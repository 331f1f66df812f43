"""Each loss term's weight-gradient norm over a training run (issue 20: why MIMAE-AT collapses).

Trains as `runners/train.py` does with the same flags (one `tfrobust.training.train` call; the
probes' training-mode forwards advance the dropout generator, so a model with dropout does not
follow the runner's run bit for bit) and, every `--probe_every` optimizer steps, takes a fixed
probe batch of training images, attacks it
as the method does (`method.attack_inputs`, same mode, seeded) and differentiates each of the
method's unweighted loss terms separately w.r.t. the classifier's weights. It records their global
l2 norms and the state of the prediction: the spread of the clean logits across the batch, the
share of the most-predicted class, and the mean |z(x) - z(x')|.

    python benchmarks/term_gradients.py --flagfile=flags/replay_mnist_mimae.cfg --epochs=1 \
        --eval_suite=none --epoch_test_examples=0 --eval_examples=200 --output_dir=runs/terms-mimae \
        --out=runs/terms-mimae.json

It also prints the analytic part: the gradient, w.r.t. the logits, of the batch mutual information
and of the logit MAE as the predictions approach uniform (`--analytic_only` prints only that).
`--plot=FILE.png` plots one or more of the JSON files this writes (`--plot_inputs`).
"""

from __future__ import annotations

import json
import math
import os
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tfrobust import cli, methods  # noqa: E402
from tfrobust.config import TrainConfig, validate  # noqa: E402
from tfrobust.errors import TfrobustError  # noqa: E402

cli.define_flags(TrainConfig)
_METHOD_FLAGS = cli.define_method_flags(methods.REGISTRY)
flags.DEFINE_string("out", "", "Write the probes here (JSON).")
flags.DEFINE_integer("probe_every", 10, "Probe every N optimizer steps (and at step 0).")
flags.DEFINE_integer("probe_examples", 256, "Training images in the probe batch (the first N).")
flags.DEFINE_integer("max_steps", 0, "Stop training after this optimizer step (0: train all --epochs).")
flags.DEFINE_bool("analytic_only", False, "Only print the logit-gradient table.")
flags.DEFINE_string("plot", "", "Plot the JSON files of --plot_inputs into this PNG and exit.")
flags.DEFINE_multi_string("plot_inputs", [], "LABEL=PATH.json to plot (repeat for more rows).")
FLAGS = flags.FLAGS


def analytic_table(k: int = 10, batch: int = 128, seed: int = 0) -> str:
    """|d I / d z| and |d MAE / d z| for logits z = s * N(0, 1) (clean) and z' = z + s * N(0, 1)
    (adversarial), as s shrinks: the predictions approach uniform and the logits constant."""
    import numpy as np
    import tensorflow as tf

    from tfrobust import losses

    rng = np.random.default_rng(seed)
    base, noise = rng.standard_normal((batch, k)), rng.standard_normal((batch, k))
    rows = ["| logit scale s | I (nats) | norm of dI/dz | norm of dMAE/dz | norm of dCE(z', y)/dz' |",
            "| ---: | ---: | ---: | ---: | ---: |"]
    labels = tf.constant(rng.integers(0, k, batch))
    for s in (1.0, 0.3, 0.1, 0.03, 0.01, 0.001):
        z = tf.constant(s * base)
        z_adv = tf.constant(s * (base + noise))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([z, z_adv])
            mi = losses.mutual_information(losses.prediction_joint(tf.nn.softmax(z), tf.nn.softmax(z_adv)))
            mae = tf.reduce_mean(losses.logit_mae(z, z_adv))
            ce = tf.reduce_mean(losses.cross_entropy(z_adv, labels))
        norm = lambda t, v: float(tf.linalg.global_norm(tape.gradient(t, v)))  # noqa: E731
        rows.append(f"| {s:g} | {float(mi):.2e} | {norm(mi, [z, z_adv]):.2e} | {norm(mae, [z, z_adv]):.2e} | "
                    f"{norm(ce, [z_adv]):.2e} |")
    return "\n".join(rows)


def make_probe_callback(config: TrainConfig, x_probe, y_probe, records: list):
    import keras
    import numpy as np
    import tensorflow as tf

    from tfrobust.methods.base import StepContext

    class TermGradients(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._fn = None

        def _build(self):
            robust = self.model
            method, classifier = robust.method, robust.classifier
            x = tf.constant(x_probe)
            y = tf.constant(y_probe)

            @tf.function
            def probe(step):
                ctx = StepContext(classifier, tf.stack([tf.constant(12345, tf.int64), step]), robust.budget_scale(),
                                  step)
                x_adv = method.attack_inputs(ctx, x, y)
                variables = classifier.trainable_variables
                with tf.GradientTape(persistent=True) as tape:
                    out = method.loss(ctx, x, y, x_adv)
                    terms = {n: tf.reduce_mean(v) for n, v in out.terms.items()}
                    total = tf.reduce_mean(out.per_example) + tf.cast(out.batch_loss, out.per_example.dtype)
                grads = {n: [tf.zeros_like(w) if g is None else g
                             for g, w in zip(tape.gradient(v, variables), variables)]
                         for n, v in {**terms, "total": total}.items()}
                norms = {n: tf.linalg.global_norm(g) for n, g in grads.items()}
                # cosine of each term's gradient with the adversarial CE's (the method's first term)
                first = method.term_names[0]
                cosines = {n: tf.add_n([tf.reduce_sum(a * b) for a, b in zip(g, grads[first])])
                           / (norms[n] * norms[first] + 1e-30) for n, g in grads.items()}
                clean = classifier(x, training=False)
                adv = classifier(x_adv, training=False) if x_adv is not None else clean
                return norms, cosines, terms, clean, adv

            self._fn = probe

        def _probe(self):
            if self._fn is None:
                self._build()
            step = int(self.model.optimizer.iterations.numpy())
            norms, cosines, terms, clean, adv = self._fn(tf.constant(step, tf.int64))
            clean, adv = clean.numpy(), adv.numpy()
            counts = np.bincount(clean.argmax(-1), minlength=clean.shape[-1])
            records.append({
                "step": step,
                "grad_norm": {k: float(v) for k, v in norms.items()},
                "cosine_with_first_term": {k: float(v) for k, v in cosines.items()},
                "term": {k: float(v) for k, v in terms.items()},
                "logit_spread": float(clean.std(axis=0).mean()),  # across the batch, averaged over classes
                "majority_share": float(counts.max() / counts.sum()),
                "clean_accuracy": float((clean.argmax(-1) == y_probe).mean()),
                "adv_accuracy": float((adv.argmax(-1) == y_probe).mean()),
                "logit_mae": float(np.abs(clean - adv).mean()),
            })
            r = records[-1]
            print(f"  probe step {step}: " + ", ".join(
                f"|g_{k}| {v:.3g} (cos {r['cosine_with_first_term'][k]:+.2f})" for k, v in r["grad_norm"].items())
                  + f"; spread {r['logit_spread']:.3g}, majority {r['majority_share']:.2f}, "
                  f"clean {r['clean_accuracy']:.2f}", flush=True)

        def on_train_begin(self, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 0:
                self._probe()

        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            if step % FLAGS.probe_every == 0:
                self._probe()
            if FLAGS.max_steps and step >= FLAGS.max_steps:
                self.model.stop_training = True

    return TermGradients()


def plot(path: str, inputs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights_of = {"adv_ce": None, "natural_ce": "natural_weight", "mae": "lambda_mae", "mi": "lambda_mi"}
    fig, axes = plt.subplots(len(inputs), 2, figsize=(11, 3.4 * len(inputs)), squeeze=False)
    for row, item in zip(axes, inputs):
        label, _, file = item.partition("=")
        with open(file) as f:
            payload = json.load(f)
        recs, options = payload["records"], payload["method_options"]
        steps = [r["step"] for r in recs]
        for term in recs[0]["grad_norm"]:
            weight = 1.0 if term in ("total", "adv_ce") else options.get(weights_of.get(term) or "", 0.0)
            values = [(weight or 1.0) * r["grad_norm"][term] for r in recs]
            name = term if weight in (0.0, 1.0) else f"{term} x {weight:g}"
            row[0].semilogy(steps, values, label=name if weight else f"{term} (weight 0: not in the loss)",
                            linewidth=2.2 if term == "total" else 1.2, linestyle="-" if weight else "--")
        row[0].set_ylim(bottom=1e-3)
        row[0].set_title(f"{label}\nweighted gradient norm of each term ", fontsize=9)
        row[0].set_xlabel("optimizer step")
        row[0].legend(fontsize=8)
        row[1].plot(steps, [r["logit_spread"] for r in recs], label="logit spread across the batch")
        row[1].plot(steps, [r["logit_mae"] for r in recs], label="mean |z(x) - z(x')|")
        row[1].plot(steps, [r["clean_accuracy"] for r in recs], label="clean accuracy (probe)")
        row[1].plot(steps, [r["majority_share"] for r in recs], label="share of the top class", linestyle=":")
        row[1].set_title(f"{label}\nthe prediction on the probe batch (inference mode)", fontsize=9)
        row[1].set_xlabel("optimizer step")
        row[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def main(argv):
    del argv
    if FLAGS.plot:
        plot(FLAGS.plot, FLAGS.plot_inputs)
        return
    if FLAGS.analytic_only:
        print(analytic_table(), flush=True)
        return
    # checked before anything is computed: where the probes go, and every setting
    if not FLAGS.out or os.path.exists(FLAGS.out) or not os.path.isdir(os.path.dirname(FLAGS.out) or "."):
        raise app.UsageError(f"--out must name a new file in an existing directory, got {FLAGS.out!r}")
    values = cli.values_from_flags(TrainConfig)
    values["method_options"] = cli.values_from_flags(methods.get(FLAGS.method),
                                                     names=methods.hyperparameters(FLAGS.method))
    try:
        config = TrainConfig(**values)
        validate(config)
    except TfrobustError as e:
        raise app.UsageError(str(e)) from None
    print(analytic_table(), flush=True)
    from tfrobust import data, evaluation, training

    splits = data.load(config.dataset, data_dir=config.data_dir, validation_size=0, seed=config.seed)
    records: list = []
    # as the input pipeline hands them to the model: floatx in [0, 1] (the stored arrays may be uint8)
    x_probe, y_probe = evaluation.load_arrays((splits.x_train, splits.y_train), FLAGS.probe_examples)
    callback = make_probe_callback(config, x_probe, y_probe.astype("int64"), records)
    training.train(config, extra_callbacks=[callback])
    from tfrobust.robust_model import method_config

    method = methods.build(config.method, training.attack_config(config), config.method_options)
    payload = {"config": {k: v for k, v in vars(config).items() if k != "method_options"},
               "method_options": method_config(method)["options"],
               "log_k": math.log(int(splits.num_classes)), "records": records}
    with open(FLAGS.out, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser("term_gradients.py"))
