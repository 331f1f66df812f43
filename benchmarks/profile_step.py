"""Where the time of one training step goes: the parts of tfrobust's PGD-AT and ATENT steps and of
the plain TensorFlow loop (`harness.baseline_step`), each compiled on its own and timed in one
process, interleaved (every repeat times every part once), on ready tensors.

    python benchmarks/profile_step.py --model=small_cnn --attack_steps=10 --repeats=5
    python benchmarks/profile_step.py --model=lenet5 --attack_steps=20 --parts=train_step,baseline \
        --ratios="atent train_step (default/pgd_at train_step (default" --ratios="pgd_at train_step (default/baseline"

Prints the median milliseconds per call of each part and the host's load average, and for each
`--ratios` pair A/B the median and range of A's time over B's, each ratio taken within one repeat
(both parts timed back to back, so a change in the machine's load moves both). A diagnostic beside
the benchmark, not part of the library.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

from absl import app, flags

from tfrobust import cli

with cli.native_stderr_captured():
    import harness  # beside this file

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "small_cnn", list(harness.PRESETS), "Model (synthetic inputs of its preset shape).")
flags.DEFINE_integer("attack_steps", 10, "PGD / Langevin steps.", lower_bound=1)
flags.DEFINE_integer("steps", 3, "Calls per part per repeat.", lower_bound=1)
flags.DEFINE_integer("repeats", 5, "Interleaved repeats; the median is printed.", lower_bound=1)
flags.DEFINE_list("parts", [], "Time only the parts whose name contains one of these strings (default: all; the "
                  "parts named by --ratios are always timed).")
flags.DEFINE_multi_string("ratios", [], "A/B, two part-name substrings each naming one part (repeatable): print "
                          "the median and range over repeats of A's time over B's.")
flags.DEFINE_list("ops", [], "Instead of timing: for each part whose name contains one of these strings, run it "
                  "under the TensorFlow profiler and print per op type the executions and milliseconds per call.")


def parts(model_name: str, steps: int) -> dict:
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent  # noqa: PLC0415

    from tfrobust import methods, models  # noqa: PLC0415
    from tfrobust.attacks import ball, gradients, objectives  # noqa: PLC0415
    from tfrobust.methods.base import StepContext  # noqa: PLC0415
    from tfrobust.robust_model import RobustModel  # noqa: PLC0415

    shape, batch = harness.PRESETS[model_name]
    classifier = models.build_model(model_name, shape, 10, seed=0)
    attack = methods.AttackConfig(eps=0.1, step_size=0.025, steps=steps)
    # ATENT attacks in train mode, as its reference does (what --attack_bn_mode=auto takes)
    atent_attack = dataclasses.replace(attack, bn_mode=methods.get("atent").reference_bn_mode)
    r = np.random.default_rng(0)
    x = tf.constant(r.random((batch, *shape), np.float32))
    y = tf.constant(r.integers(0, 10, batch).astype(np.int32))

    def robust(name, options=None, **kwargs):
        m = RobustModel(classifier, methods.build(name, atent_attack if name == "atent" else attack, options),
                        **kwargs)
        m.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        return m

    pgd_default, pgd_off = robust("pgd_at"), robust("pgd_at", monitor_clean=False)
    pgd_all = robust("pgd_at", monitor_clean_fraction=1.0)
    atent_default = robust("atent")
    atent_two = robust("atent", {"atent_shared_forward": False})
    atent_passes = "shared pass" if atent_default.method.shares_forward(classifier) else "two passes"
    atent_reference = robust("atent", {"atent_shared_forward": False, "atent_tolerance": 0.0})
    baseline, _ = harness.baseline_step(classifier, keras.optimizers.SGD(0.01, momentum=0.9), attack, False)
    ctx = StepContext(classifier, tf.constant([1, 2], tf.int64))
    variables = classifier.trainable_variables

    def without_metrics(m):
        def step():
            ctx = StepContext(classifier, m.step_seed(), m.budget_scale())
            _, grads, _ = m.method.gradients(ctx, x, y, m._differentiate)
            m.optimizer.apply_gradients(zip(grads, variables))
            return grads[0]
        return step

    def plain_update():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, classifier(x, training=True)))
        grads = tape.gradient(loss, variables)
        pgd_off.optimizer.apply_gradients(zip(grads, variables))
        return loss

    def tfrobust_update():
        _, grads = pgd_off._differentiate(lambda: pgd_off.method.loss(ctx, x, y, x), True)
        pgd_off.optimizer.apply_gradients(zip(grads, variables))
        return grads[0]

    def unrolled_pgd():
        """tfrobust's PGD steps written as a Python loop (unrolled in the graph, as cleverhans does)."""
        eps, step = ball.per_example(0.1, x), ball.per_example(0.025, x)
        x_adv = tf.clip_by_value(ball.project(ball.random_start(x, eps, "linf", "uniform", ctx.seed), x, eps, "linf"),
                                 0.0, 1.0)
        for _ in range(steps):
            grad, _, _ = gradients.input_gradient(lambda t: classifier(t, training=False), objectives.cross_entropy,
                                                  x_adv, y)
            x_adv = tf.clip_by_value(ball.project(x_adv + step * tf.sign(grad), x, eps, "linf"), 0.0, 1.0)
        return x_adv

    def attack_then_update(training):
        def fn():
            x_adv = pgd_off.method.attack_inputs(ctx, x, y)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    y, classifier(x_adv, training=training)))
            grads = tape.gradient(loss, variables)
            pgd_off.optimizer.apply_gradients(zip(grads, variables))
            return loss
        return fn

    return {
        "X tfrobust PGD + plain update (train mode)": attack_then_update(True),
        "X tfrobust PGD + plain update (eval mode)": attack_then_update(False),
        "baseline step (cleverhans PGD + tape SGD)": lambda: baseline((x, y))["loss"],
        "tfrobust PGD steps unrolled (Python loop)": unrolled_pgd,
        "cleverhans PGD only (eval mode)": lambda: projected_gradient_descent(
            lambda t: classifier(t, training=False), x, 0.1, 0.025, steps, np.inf, clip_min=0.0, clip_max=1.0,
            y=y, rand_init=True, sanity_checks=False),
        "tfrobust PGD only (attack_inputs)": lambda: pgd_off.method.attack_inputs(ctx, x, y),
        "plain update (tape + SGD on x)": plain_update,
        "tfrobust update (_differentiate + apply on x)": tfrobust_update,
        "clean inference forward": lambda: classifier(x, training=False),
        "pgd_at train_step (default)": lambda: pgd_default.train_step((x, y))["loss"],
        "pgd_at train_step, monitor on every image": lambda: pgd_all.train_step((x, y))["loss"],
        "pgd_at train_step, monitor off": lambda: pgd_off.train_step((x, y))["loss"],
        "pgd_at gradients + apply (no metrics)": without_metrics(pgd_off),
        f"atent train_step (default: {atent_passes})": lambda: atent_default.train_step((x, y))["loss"],
        "atent train_step, two passes": lambda: atent_two.train_step((x, y))["loss"],
        "atent train_step, two passes, tolerance 0 (the reference's form)":
            lambda: atent_reference.train_step((x, y))["loss"],
    }


def op_profile(fn, calls: int) -> dict[str, tuple[float, float]]:
    """op type -> (executions per call, milliseconds per call) of the compiled `fn`, from the
    TensorFlow profiler's trace of `calls` calls (the host plane's op events)."""
    import glob  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    import tensorflow as tf  # noqa: PLC0415
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: PLC0415

    logdir = tempfile.mkdtemp(prefix="tfrobust-profile-")
    tf.profiler.experimental.start(logdir)
    for _ in range(calls):
        tf.nest.map_structure(lambda t: t.numpy(), fn())
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    totals: dict[str, list[float]] = {}
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or name.startswith("__") or " " in name:
                    continue  # not a TensorFlow op ("scope/name:Type")
                kind = name.rsplit(":", 1)[1]
                t = totals.setdefault(kind, [0, 0.0])
                t[0] += 1
                t[1] += event.duration_ps / 1e9
    return {k: (n / calls, ms / calls) for k, (n, ms) in totals.items()}


def print_op_profiles(compiled: dict, wanted: list[str]) -> None:
    chosen = {name: fn for name, fn in compiled.items() if any(w in name for w in wanted)}
    profiles = {name: op_profile(fn, FLAGS.steps) for name, fn in chosen.items()}
    kinds = sorted({k for p in profiles.values() for k in p}, key=lambda k: -max(p.get(k, (0, 0))[1]
                                                                                  for p in profiles.values()))
    names = list(profiles)
    print("op type: executions / ms per call, for " + "; ".join(f"({i + 1}) {n}" for i, n in enumerate(names)))
    print("| op type | " + " | ".join(f"({i + 1})" for i in range(len(names))) + " |")
    print("| --- |" + " --- |" * len(names))
    for k in kinds[:25]:
        cells = [f"{p[k][0]:.0f} / {p[k][1]:.1f}" if k in p else "-" for p in profiles.values()]
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("| all ops | " + " | ".join(f"{sum(n for n, _ in p.values()):.0f} / {sum(ms for _, ms in p.values()):.1f}"
                                      for p in profiles.values()) + " |")


def ratio_pairs(names: list[str], specs: list[str]) -> list[tuple[str, str]]:
    """The (A, B) part names of each `--ratios` entry 'a/b', each substring naming exactly one part."""
    def one(text: str) -> str:
        found = [n for n in names if text in n]
        if len(found) != 1:
            raise ValueError(f"--ratios: {text!r} names {len(found)} parts, not one: {found or names}")
        return found[0]

    pairs = []
    for spec in specs:
        if spec.count("/") != 1:
            raise ValueError(f"--ratios entries are A/B, got {spec!r}")
        a, b = spec.split("/")
        pairs.append((one(a), one(b)))
    return pairs


def main(argv):
    import tensorflow as tf  # noqa: PLC0415

    every = parts(FLAGS.model, FLAGS.attack_steps)
    try:
        pairs = ratio_pairs(list(every), FLAGS.ratios)
    except ValueError as e:
        cli.fail("profile_step.py", e)
    wanted = {n for pair in pairs for n in pair}
    chosen = {n: fn for n, fn in every.items() if not FLAGS.parts or n in wanted or any(p in n for p in FLAGS.parts)}
    compiled = {name: tf.function(fn) for name, fn in chosen.items()}
    for fn in compiled.values():  # trace, and one untimed call
        tf.nest.map_structure(lambda t: t.numpy(), fn())
        tf.nest.map_structure(lambda t: t.numpy(), fn())
    if FLAGS.ops:
        print_op_profiles(compiled, FLAGS.ops)
        return
    times = {name: [] for name in compiled}
    loads = []
    for _ in range(FLAGS.repeats):
        for name, fn in compiled.items():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                out = fn()
            tf.nest.map_structure(lambda t: t.numpy(), out)
            times[name].append(1000 * (time.perf_counter() - start) / FLAGS.steps)
        loads.append(os.getloadavg()[0])
    print(f"{FLAGS.model}, {FLAGS.attack_steps} attack steps, median of {FLAGS.repeats} interleaved repeats of "
          f"{FLAGS.steps} calls; load average {min(loads):.1f}-{max(loads):.1f}")
    print("| part | ms per call (median) | min-max |\n| --- | ---: | --- |")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.1f} | {min(t):.1f}-{max(t):.1f} |")
    if pairs:
        print("\n| time ratio (within each repeat) | median | min-max |\n| --- | ---: | --- |")
    for a, b in pairs:
        r = [ta / tb for ta, tb in zip(times[a], times[b])]
        print(f"| {a} / {b} | {statistics.median(r):.2f} | {min(r):.2f}-{max(r):.2f} |")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser("profile_step.py"))
