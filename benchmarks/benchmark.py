"""Measure the compiled train step of each method: images/s, time relative to the clean step,
XLA on and off, traces, peak memory.

    python benchmarks/benchmark.py                                # digits default and MNIST SmallCNN
    python benchmarks/benchmark.py --models=small_cnn --methods=pgd_at,trades --attack_steps=10,40
    python benchmarks/benchmark.py --models=small_cnn --methods=pgd_at,atent --jit_compile=false --rounds=3

Each configuration runs in a fresh process (see `harness.py` beside this file for what is measured).
Writes OUTPUT_DIR/benchmark.json and OUTPUT_DIR/benchmark.md and prints the table. Other jobs on
the machine change absolute figures; ratios measured within one run are steadier.
"""

from __future__ import annotations

import math
import os
import platform

from absl import app, flags, logging

from tfrobust import cli

with cli.native_stderr_captured():
    import harness  # beside this file (its folder is sys.path[0])

    from tfrobust import files, methods
    from tfrobust.errors import TfrobustError

flags.DEFINE_list("models", ["tiny_cnn", "small_cnn"], f"Models, each on synthetic inputs of its preset shape "
                  f"({', '.join(f'{m} {s[0][0]}x{s[0][1]}x{s[0][2]}' for m, s in harness.PRESETS.items())}).")
flags.DEFINE_list("methods", sorted(methods.REGISTRY), "Methods, each NAME or NAME:KEY=VALUE:... with its "
                  "hyperparameters (e.g. atent:atent_shared_forward=true:bn_mode=train; bn_mode: the attack's "
                  "model mode, default eval).")
flags.DEFINE_list("attack_steps", ["10"], "Training-attack step counts (ATENT: Langevin steps).")
flags.DEFINE_list("jit_compile", ["false", "true"], "XLA settings to measure.")
flags.DEFINE_list("modes", ["tensors"], "tensors: the compiled step on ready tensors; fit: through Keras fit.")
flags.DEFINE_integer("batch_size", 0, "Global batch (0: the model's preset: tiny_cnn 64, small_cnn 128).",
                     lower_bound=0)
flags.DEFINE_integer("steps", 5, "Timed steps per repeat.", lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timed repeats; the median is reported.", lower_bound=1)
flags.DEFINE_integer("rounds", 1, "Passes over all configurations, one after another (ABAB), each configuration "
                     "in a fresh process every round; ratios are taken within a round and their spread printed.",
                     lower_bound=1)
flags.DEFINE_bool("baseline", True, f"Also measure the plain TensorFlow loop ({harness.BASELINE}: cleverhans PGD + a "
                  "GradientTape SGD step in one tf.function, on ready tensors) once per step count and XLA setting, "
                  "and print each method's images/s over it.")
flags.DEFINE_integer("warmup", 1, "Untimed steps after the first (tracing) call.", lower_bound=0)
flags.DEFINE_enum("mixed_precision", "none", ["none", "mixed_float16", "mixed_bfloat16"], "Mixed-precision policy.")
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: its default). 1 runs one op at a "
                     "time: slower, but the tensor-memory peak follows what the tensors need; compare "
                     "methods' memory so.", lower_bound=0)
flags.DEFINE_float("timeout", 900, "Seconds after which one configuration is stopped and reported as timed out.",
                   lower_bound=1)
flags.DEFINE_bool("isolate", True, "Measure each configuration in a fresh process (needed for its peak memory).")
flags.DEFINE_string("output_dir", "runs/benchmark", "Where benchmark.json and benchmark.md go.")
flags.DEFINE_bool("overwrite", False, "Replace an earlier benchmark.json and benchmark.md in output_dir.")
FLAGS = flags.FLAGS

_BOOLS = {"true": True, "false": False, "on": True, "off": False, "1": True, "0": False}


def fail(message: object, code: int = 2):
    cli.fail("benchmark.py", message, code)


def cases_from_flags() -> list[harness.Case]:
    unknown = [m for m in FLAGS.models if m not in harness.PRESETS]
    if unknown:
        raise harness.BenchmarkError(f"models must be among {sorted(harness.PRESETS)}, got {unknown}")
    unknown = [m for m in FLAGS.methods if harness.split_method(m)[0] not in methods.REGISTRY]
    if unknown:
        raise harness.BenchmarkError(f"methods must be among {sorted(methods.REGISTRY)}, got {unknown}")
    try:
        steps = [int(s) for s in FLAGS.attack_steps]
    except ValueError:
        raise harness.BenchmarkError(f"attack_steps must be integers, got {FLAGS.attack_steps}") from None
    if not steps or min(steps) < 1:
        raise harness.BenchmarkError(f"attack_steps must be integers >= 1, got {FLAGS.attack_steps}")
    bad = [j for j in FLAGS.jit_compile if j.lower() not in _BOOLS]
    if bad or not FLAGS.jit_compile:
        raise harness.BenchmarkError(f"jit_compile must list true and/or false, got {FLAGS.jit_compile}")
    bad = [m for m in FLAGS.modes if m not in harness.MODES]
    if bad or not FLAGS.modes:
        raise harness.BenchmarkError(f"modes must list values among {list(harness.MODES)}, got {FLAGS.modes}")
    if not FLAGS.models or not FLAGS.methods:
        raise harness.BenchmarkError("models and methods must not be empty")
    if not math.isfinite(FLAGS.timeout):
        raise harness.BenchmarkError(f"timeout must be a finite number of seconds, got {FLAGS.timeout}")
    files.check_output_dir(FLAGS.output_dir, harness.OUTPUT_FILES, FLAGS.overwrite, what="--output_dir")
    cases = harness.grid(FLAGS.models, FLAGS.methods, steps, [_BOOLS[j.lower()] for j in FLAGS.jit_compile],
                         FLAGS.modes, baseline=FLAGS.baseline, batch_size=FLAGS.batch_size, steps=FLAGS.steps,
                         repeats=FLAGS.repeats,
                         warmup=FLAGS.warmup, mixed_precision=FLAGS.mixed_precision,
                         inter_op_threads=FLAGS.inter_op_threads)
    for case in cases:
        case.validate()
    return cases


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    try:
        cases = cases_from_flags()
    except TfrobustError as e:
        fail(e)
    threads = f", {FLAGS.inter_op_threads} inter-op thread(s)" if FLAGS.inter_op_threads else ""
    rounds = f" x {FLAGS.rounds} rounds" if FLAGS.rounds > 1 else ""
    print(f"Measuring {len(cases)} configurations{rounds} ({FLAGS.repeats} x {FLAGS.steps} timed steps each) on "
          f"{os.cpu_count()} CPU core(s), {platform.processor() or platform.machine()}{threads}.", flush=True)

    def progress(r: harness.Result) -> None:
        c = r.case
        if r.error:
            print(f"  {c.model} {c.method} steps={c.attack_steps} xla={'on' if c.jit_compile else 'off'} {c.mode}: "
                  f"{r.error}", flush=True)
            return
        print(f"  {c.model} {c.method} steps={c.attack_steps} xla={'on' if c.jit_compile else 'off'} {c.mode}: "
              f"{r.images_per_second:.0f} images/s, traces {r.traces}, round {c.round}, "
              f"load {'-' if r.load_average is None else f'{r.load_average:.1f}'}"
              + ("" if r.vs_baseline is None else f", x baseline {r.vs_baseline:.2f}"), flush=True)

    try:
        results = harness.run(cases, isolate=FLAGS.isolate, timeout=FLAGS.timeout, progress=progress,
                              rounds=FLAGS.rounds)
    except harness.BenchmarkError as e:
        fail(e, code=1)
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    extra = {"cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
             "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    json_path, md_path = harness.write(results, FLAGS.output_dir, extra)
    print()
    print(harness.summary(results))
    print()
    table = harness.baseline_table(results)
    if table:
        print("tfrobust over the plain TensorFlow loop (TRADES and MIMAE do more per step than that PGD-AT loop):")
        print(table)
        print()
    print(harness.markdown(results))
    print(f"\nWrote {json_path} and {md_path}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser("benchmark.py"))
