"""How fast each method's compiled train step is, and how much memory it takes.

One measurement (`Case`) builds a model, wraps it in `RobustModel` with a method, and times its
train step on synthetic [0, 1] images of the model's input shape (the speed of a step does not
depend on the pixel values):

- mode "tensors": `tf.function(model.train_step, jit_compile=...)` called on ready tensors, so
  nothing but the step is timed; mode "fit": Keras `fit` over a `tf.data` pipeline of the same
  batch (what a training run does, callbacks and input pipeline included);
- the first call (trace, compilation and one step) and `warmup` more steps are excluded; then
  `repeats` timings of `steps` steps each; the reported step time is their median;
- traces: `RobustModel.train_step_traces` after the whole measurement (one, if the step does not
  retrace);
- memory, two ways. Tensors: TensorFlow's own allocator counts the bytes of live tensors; its
  peak over the timed steps (after the first call) is `peak_tensor_mb`, and that peak minus what
  was allocated just before them (weights, optimizer slots, the batch) is `step_tensor_mb`, the
  memory one step needs. On the CPU the counts exist only under the BFC allocator, which
  `run_isolated` turns on (`TF_CPU_ALLOCATOR_USE_BFC`); elsewhere they are NaN. Process: the peak
  resident set (`getrusage` ru_maxrss) at the end minus the resident set before the first call,
  which also counts traced graphs, graph optimization, XLA executables and allocator caches: an
  upper bound that is mostly a constant of the graph's size. Each case runs in a fresh Python
  process (`run_isolated`) so the peaks of different cases do not mix.
  The allocator's peak counts whole blocks, and when independent ops run side by side (TensorFlow's
  default inter-op threads) which blocks a request lands in depends on the thread schedule: a
  request can take a free block up to twice its size. Measured on the SmallCNN step, that waste
  alone moved the peak by up to ~25 MB between identical runs. `inter_op_threads=1` runs one op
  at a time: slower, but the peak then stays close to the bytes the tensors ask for and repeats
  to within a few percent; use it to compare the memory of methods.

`run` measures a list of cases, adds each one's time relative to the clean (`standard`) step of
the same model, batch, XLA setting and mode; `markdown` (a row per case) and `summary` (XLA off
and on side by side) format the results.

A tool for measuring the library, not part of it: it lives beside its runner (run
`python benchmarks/benchmark.py`), and a child process runs this file as a script, so it is found
from any working directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tfrobust.errors import TfrobustError

MODES = ("tensors", "fit")
# Model name -> (input shape, default global batch): the digits default and the MNIST SmallCNN recipe.
PRESETS: dict[str, tuple[tuple[int, int, int], int]] = {
    "tiny_cnn": ((8, 8, 1), 64),
    "small_cnn": ((28, 28, 1), 128),
    "lenet5": ((28, 28, 1), 50),
    "resnet18": ((32, 32, 3), 128),
    "preact_resnet18": ((32, 32, 3), 128),
    "wide_resnet": ((32, 32, 3), 128),
}


OUTPUT_FILES = ("benchmark.json", "benchmark.md")  # what `write` writes
# The plain TensorFlow loop a user would write, measured beside the methods (see `baseline_step`).
BASELINE = "tf_baseline"


class BenchmarkError(TfrobustError):
    """A case that cannot be measured; the message is one line."""


def split_method(spec: str) -> tuple[str, dict[str, Any]]:
    """`name` or `name:key=value:...` -> (method name, options): a method's hyperparameters, or
    `bn_mode` for the attack's model mode; values true/false, numbers or strings."""
    name, *pairs = spec.split(":")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BenchmarkError(f"method options are key=value, got {pair!r} in {spec!r}")
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
        else:
            try:
                options[key] = int(value)
            except ValueError:
                try:
                    options[key] = float(value)
                except ValueError:
                    options[key] = value
    return name, options


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration to measure."""

    model: str = "tiny_cnn"
    method: str = "pgd_at"
    attack_steps: int = 10
    jit_compile: bool = False
    mode: str = "tensors"
    batch_size: int = 0  # 0: the model's preset
    input_shape: tuple[int, int, int] | None = None  # None: the model's preset
    num_classes: int = 10
    steps: int = 5  # timed steps per repeat
    repeats: int = 3
    warmup: int = 1  # untimed steps after the first call
    mixed_precision: str = "none"
    inter_op_threads: int = 0  # 0: TensorFlow's default; 1: one op at a time (see the module doc)
    seed: int = 0
    round: int = 0  # which pass over the cases (`run` interleaves repeated passes)

    def resolved(self) -> Case:
        if self.model not in PRESETS:
            raise BenchmarkError(f"model must be one of {sorted(PRESETS)}, got {self.model!r}")
        shape, batch = PRESETS[self.model]
        return dataclasses.replace(self, batch_size=self.batch_size or batch,
                                   input_shape=tuple(self.input_shape or shape))

    def validate(self) -> None:
        from tfrobust import methods  # noqa: PLC0415 (keeps `import harness` light)

        name, options = split_method(self.method)
        if name in methods.REGISTRY:
            try:
                methods.build(name, methods.AttackConfig(steps=max(1, self.attack_steps),
                                                         bn_mode=options.pop("bn_mode", "eval")), options)
            except Exception as e:  # noqa: BLE001 (any refusal of the options, as one line)
                raise BenchmarkError(f"method {self.method!r}: {e}") from None
        if name not in methods.REGISTRY and self.method != BASELINE:
            raise BenchmarkError(f"method must be one of {sorted(methods.REGISTRY)} or {BASELINE}, "
                                 f"got {self.method!r}")
        if self.method == BASELINE and (self.mode != "tensors" or self.attack_steps < 1):
            raise BenchmarkError(f"{BASELINE} runs in mode tensors with attack_steps >= 1")
        if self.mode not in MODES:
            raise BenchmarkError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mixed_precision not in ("none", "mixed_float16", "mixed_bfloat16"):
            raise BenchmarkError("mixed_precision must be none, mixed_float16 or mixed_bfloat16, "
                                 f"got {self.mixed_precision!r}")
        if (self.steps < 1 or self.repeats < 1 or self.warmup < 0 or self.batch_size < 0 or self.attack_steps < 0
                or self.inter_op_threads < 0):
            raise BenchmarkError("steps and repeats must be >= 1; warmup, batch_size, attack_steps and "
                                 "inter_op_threads >= 0")
        if name == "atent" and self.attack_steps < 1:
            raise BenchmarkError("atent needs attack_steps >= 1")


@dataclasses.dataclass
class Result:
    case: Case
    step_seconds: float  # median over repeats of (repeat time / steps)
    images_per_second: float
    repeat_seconds: list[float]  # each repeat's time per step
    first_call_seconds: float  # trace + compile + one step
    traces: int
    rss_before_mb: float
    peak_rss_mb: float
    peak_rss_delta_mb: float
    peak_tensor_mb: float = float("nan")  # allocator peak during the timed steps (see module doc)
    step_tensor_mb: float = float("nan")  # that peak minus the bytes allocated before them
    relative_to_clean: float | None = None  # step time over the standard step's, same settings
    # images/s over the plain TensorFlow loop's (`BASELINE`) with the same settings, same round
    vs_baseline: float | None = None
    load_average: float | None = None  # the host's 1-minute load average at the end of the measurement
    error: str | None = None  # why the case has no figures (e.g. it timed out)

    @classmethod
    def failed(cls, case: Case, error: str) -> Result:
        nan = float("nan")
        return cls(case=case, step_seconds=nan, images_per_second=nan, repeat_seconds=[], first_call_seconds=nan,
                   traces=0, rss_before_mb=nan, peak_rss_mb=nan, peak_rss_delta_mb=nan, error=error)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["case"]["input_shape"] = list(self.case.input_shape or ())
        return {k: None if isinstance(v, float) and v != v else v for k, v in d.items()}  # NaN -> null

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Result:
        d = dict(d)
        case = dict(d.pop("case"))
        case["input_shape"] = tuple(case["input_shape"]) if case.get("input_shape") else None
        floats = {f.name for f in dataclasses.fields(cls) if f.type == "float"}
        d = {k: float("nan") if v is None and k in floats else v for k, v in d.items()}  # null -> NaN
        return cls(case=Case(**case), **d)


def _rss_mb() -> float:
    """Current resident set of this process in MB (Linux /proc), or the peak where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KB on Linux


class _TensorMemory:
    """TensorFlow's allocator counts on the first CPU device (NaN where it keeps none)."""

    def __init__(self):
        import tensorflow as tf  # noqa: PLC0415

        self._tf = tf
        self.before = self.peak = float("nan")

    def start(self) -> None:
        try:
            self._tf.config.experimental.reset_memory_stats("CPU:0")
            self.before = self._tf.config.experimental.get_memory_info("CPU:0")["current"] / 2**20
        except ValueError:  # "Allocator stats not available": not the BFC allocator
            pass

    def stop(self) -> None:
        if self.before == self.before:  # not NaN
            self.peak = self._tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20


def measure(case: Case) -> Result:
    """Measure `case` in this process (see the module docstring for what is timed)."""
    case = case.resolved()
    case.validate()
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from tfrobust import methods, models  # noqa: PLC0415
    from tfrobust.robust_model import RobustModel  # noqa: PLC0415

    if case.inter_op_threads and tf.config.threading.get_inter_op_parallelism_threads() != case.inter_op_threads:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(case.inter_op_threads)
        except RuntimeError:  # TensorFlow has already started its thread pools in this process
            raise BenchmarkError("inter_op_threads can only be set in a fresh process (isolate=True)") from None
    keras.mixed_precision.set_global_policy("float32" if case.mixed_precision == "none" else case.mixed_precision)
    classifier = models.build_model(case.model, case.input_shape, case.num_classes, seed=case.seed)
    attack = methods.AttackConfig(eps=0.1, step_size=0.025, steps=case.attack_steps)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    rng = np.random.default_rng(case.seed)
    x = tf.constant(rng.random((case.batch_size, *case.input_shape), np.float32))
    y = tf.constant(rng.integers(0, case.num_classes, case.batch_size).astype(np.int32))

    rss_before = _rss_mb()
    memory = _TensorMemory()
    if case.method == BASELINE:
        step, traces = baseline_step(classifier, optimizer, attack, case.jit_compile)
        first, per_step = _time_tensors(step, x, y, case, memory)
    else:
        name, options = split_method(case.method)
        attack = dataclasses.replace(attack, bn_mode=options.pop("bn_mode", attack.bn_mode))
        model = RobustModel(classifier, methods.build(name, attack, options), seed=case.seed)
        model.compile(optimizer=optimizer, jit_compile=case.jit_compile)
        traces = lambda: model.train_step_traces  # noqa: E731
        if case.mode == "tensors":
            first, per_step = _time_tensors(tf.function(model.train_step, jit_compile=case.jit_compile), x, y,
                                            case, memory)
        else:
            first, per_step = _time_fit(model, x, y, case, memory)
    # ru_maxrss is the kernel's high-water mark, which it refreshes lazily: it has read a few
    # hundred KB below a resident set sampled earlier in the same process, so the peak is the
    # largest of it and the two samples.
    peak = max(_peak_rss_mb(), _rss_mb(), rss_before)
    step = statistics.median(per_step)
    return Result(case=case, step_seconds=step, images_per_second=case.batch_size / step,
                  repeat_seconds=per_step, first_call_seconds=first, traces=traces(),
                  rss_before_mb=rss_before, peak_rss_mb=peak, peak_rss_delta_mb=max(0.0, peak - rss_before),
                  peak_tensor_mb=memory.peak, step_tensor_mb=memory.peak - memory.before,
                  load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)


def baseline_step(classifier, optimizer, attack, jit_compile: bool) -> tuple[Callable, Callable[[], int]]:
    """The PGD-AT step a user writes by hand, and a count of its traces: cleverhans' PGD (l-inf,
    uniform random start, `y` given, the model in inference mode) and a `GradientTape` SGD update
    on the mean cross-entropy, the whole step in one `tf.function`. Only tfrobust's PGD-AT does the
    same work; TRADES and MIMAE do more (a clean forward and backward pass and their extra terms).
    """
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent  # noqa: PLC0415

    traces = []
    variables = classifier.trainable_variables
    optimizer.build(variables)  # slots before the first call, so the step traces once

    @tf.function(jit_compile=jit_compile)
    def step(data):
        traces.append(1)
        x, y = data
        x_adv = projected_gradient_descent(
            lambda t: classifier(t, training=False), x, float(attack.eps), float(attack.step_size), attack.steps,
            np.inf, clip_min=0.0, clip_max=1.0, y=y, rand_init=True, sanity_checks=False)
        with tf.GradientTape() as tape:
            logits = tf.cast(classifier(x_adv, training=True), tf.float32)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return {"loss": loss}

    return step, lambda: len(traces)


def _time_tensors(step, x, y, case: Case, memory: _TensorMemory) -> tuple[float, list[float]]:
    """Times `step((x, y))`, a compiled train step returning logs with a "loss"."""
    start = time.perf_counter()
    float(step((x, y))["loss"])
    first = time.perf_counter() - start
    logs = None
    for _ in range(case.warmup):
        logs = step((x, y))
    if logs is not None:
        float(logs["loss"])
    per_step = []
    memory.start()
    for _ in range(case.repeats):
        start = time.perf_counter()
        for _ in range(case.steps):
            logs = step((x, y))
        float(logs["loss"])  # wait for the last step
        per_step.append((time.perf_counter() - start) / case.steps)
    memory.stop()
    return first, per_step


def _time_fit(model, x, y, case: Case, memory: _TensorMemory) -> tuple[float, list[float]]:
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    options = tf.data.Options()
    options.autotune.enabled = False  # as in training runs (see data.train_stream)
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2).with_options(options)
    epoch_times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.start)

    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=1 + case.warmup, verbose=0, shuffle=False)
    first = time.perf_counter() - start
    memory.start()
    model.fit(dataset, epochs=case.repeats, steps_per_epoch=case.steps, verbose=0, shuffle=False, callbacks=[Timer()])
    memory.stop()
    return first, [t / case.steps for t in epoch_times]


_CHILD_MARK = "BENCHMARK_RESULT "
_HERE = os.path.abspath(__file__)
_ROOT = os.path.dirname(os.path.dirname(_HERE))  # the repository root, which holds tfrobust/


def run_isolated(case: Case, timeout: float = 3600) -> Result:
    """Measure `case` in a fresh Python process (its own peak memory, no shared state); a case
    that takes longer than `timeout` seconds is stopped and returned as a failed result."""
    # The child runs this file by its path (its folder becomes sys.path[0], whatever the working
    # directory) and imports the tfrobust of this checkout (the repository root goes first on PYTHONPATH).
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
               PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPU_ALLOCATOR_USE_BFC="true")  # so that the CPU allocator counts tensor bytes
    payload = json.dumps(dataclasses.asdict(case))
    try:
        proc = subprocess.run([sys.executable, _HERE, payload], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return Result.failed(case, f"timed out after {timeout:g} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_CHILD_MARK)]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:])
        raise BenchmarkError(f"measuring {case} failed (exit {proc.returncode}): {tail}")
    return Result.from_json(json.loads(lines[-1][len(_CHILD_MARK):]))


def _clean_key(case: Case) -> tuple:
    return (case.model, case.batch_size, tuple(case.input_shape or ()), case.jit_compile, case.mode,
            case.mixed_precision, case.inter_op_threads, case.round)


def _baseline_key(case: Case) -> tuple:
    return (case.model, case.batch_size, tuple(case.input_shape or ()), case.attack_steps, case.jit_compile,
            case.mixed_precision, case.inter_op_threads, case.round)


def add_baseline_ratios(results: Sequence[Result]) -> list[Result]:
    """Each result's images/s over the `BASELINE` loop's with the same model, batch, attack steps,
    XLA setting, precision and threads in the same round (None where that was not measured)."""
    base = {_baseline_key(r.case): r.images_per_second for r in results if r.case.method == BASELINE and not r.error}
    for r in results:
        b = base.get(_baseline_key(r.case))
        r.vs_baseline = r.images_per_second / b if b and not r.error else None
    return list(results)


def _load_range(results: Sequence[Result]) -> str:
    loads = [r.load_average for r in results if r.load_average is not None]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"


def baseline_table(results: Sequence[Result]) -> str:
    """A Markdown table of tfrobust's speed over the plain TensorFlow loop's: per model, method,
    attack steps and XLA setting, the median images/s of both over the rounds, and the median,
    min and max of the per-round ratios (each from the same round, so the spread is this machine's
    noise)."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        c = r.case
        groups.setdefault((c.model, c.batch_size, c.mode, c.method, c.attack_steps, c.jit_compile), []).append(r)
    base = {(k[0], k[1], k[4], k[5]): v for k, v in groups.items() if k[3] == BASELINE}
    lines = ["| model (batch) | method | attack steps | XLA | images/s | baseline images/s | x baseline (median) "
             "| min-max over rounds | rounds | load average |", "|" + " --- |" * 10]
    for (model, batch, _, method, steps, jit), rs in groups.items():
        if method == BASELINE:
            continue
        ratios = [r.vs_baseline for r in rs if r.vs_baseline is not None]
        b = [r.images_per_second for r in base.get((model, batch, steps, jit), []) if not r.error]
        if not ratios or not b:
            continue
        ips = statistics.median(r.images_per_second for r in rs if not r.error)
        lines.append(f"| {model} ({batch}) | {method} | {steps} | {'on' if jit else 'off'} | {ips:.0f} | "
                     f"{statistics.median(b):.0f} | {statistics.median(ratios):.2f} | "
                     f"{min(ratios):.2f}-{max(ratios):.2f} | {len(ratios)} | {_load_range(rs)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def add_relative_times(results: Sequence[Result]) -> list[Result]:
    """Each result's step time over the `standard` step's with the same model, batch, XLA setting,
    mode, precision and threads (None when that clean case was not measured)."""
    clean = {_clean_key(r.case): r.step_seconds for r in results
             if split_method(r.case.method)[0] == "standard" and not r.error}
    for r in results:
        base = clean.get(_clean_key(r.case))
        r.relative_to_clean = r.step_seconds / base if base and not r.error else None
    return list(results)


def run(cases: Iterable[Case], isolate: bool = True, timeout: float = 3600,
        progress: Callable[[Result], None] | None = None, rounds: int = 1) -> list[Result]:
    """Measure every case (each in a fresh process, stopped after `timeout` seconds, unless
    `isolate` is False), `rounds` times over: the whole list once per round, so that the cases
    alternate (ABAB) and a ratio of two of them can be taken within each round."""
    cases = [c.resolved() for c in cases]
    for case in cases:
        case.validate()
    results = []
    for case in [dataclasses.replace(c, round=i) for i in range(rounds) for c in cases]:
        try:
            result = run_isolated(case, timeout) if isolate else measure(case)
        except BenchmarkError as e:  # one broken case does not lose the others
            result = Result.failed(case, str(e))
        results.append(result)
        add_baseline_ratios(results)
        if progress:
            progress(result)
    return add_baseline_ratios(add_relative_times(results))


def grid(models: Sequence[str], methods: Sequence[str], attack_steps: Sequence[int], jit: Sequence[bool],
         modes: Sequence[str], baseline: bool = False, **common) -> list[Case]:
    """Every combination; `standard` (which has no attack) once per model, XLA setting and mode.
    `baseline`: also the plain TensorFlow loop (`BASELINE`) once per model, XLA setting and attack
    step count, in mode tensors, just before the methods with that step count."""
    cases = []
    for model in models:
        for mode in modes:
            for j in jit:
                if "standard" in methods:
                    cases.append(Case(model=model, method="standard", attack_steps=0, jit_compile=j, mode=mode,
                                      **common).resolved())
                for steps in attack_steps:
                    attacked = [m for m in methods if m != "standard"]
                    if baseline and mode == "tensors" and attacked:
                        attacked = [BASELINE, *attacked]
                    for method in attacked:
                        cases.append(Case(model=model, method=method, attack_steps=steps, jit_compile=j,
                                          mode=mode, **common).resolved())
    return cases


def markdown(results: Sequence[Result]) -> str:
    """A Markdown table, one row per result."""
    head = ("| model | input | batch | method | attack steps | XLA | mode | images/s | step ms | x clean step "
            "| traces | first call s | step tensor MB | peak tensor MB | peak RSS delta MB | round | x baseline |")
    rows = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in results:
        c = r.case
        if r.error:
            shape = "x".join(str(d) for d in (c.input_shape or ()))
            rows.append(f"| {c.model} | {shape} | {c.batch_size} | {c.method} | {c.attack_steps} | "
                        f"{'on' if c.jit_compile else 'off'} | {c.mode} | {r.error} | - | - | - | - | - | - | - | "
                        f"{c.round} | - |")
            continue
        rel = f"{r.relative_to_clean:.2f}" if r.relative_to_clean is not None else "-"
        shape = "x".join(str(d) for d in (c.input_shape or ()))
        rows.append(f"| {c.model} | {shape} | {c.batch_size} | {c.method} | {c.attack_steps} | "
                    f"{'on' if c.jit_compile else 'off'} | {c.mode} | {r.images_per_second:.0f} | "
                    f"{1000 * r.step_seconds:.1f} | {rel} | {r.traces} | {r.first_call_seconds:.1f} | "
                    f"{r.step_tensor_mb:.1f} | {r.peak_tensor_mb:.1f} | {r.peak_rss_delta_mb:.0f} | {c.round} | "
                    f"{'-' if r.vs_baseline is None else f'{r.vs_baseline:.2f}'} |")
    return "\n".join(rows)


def summary(results: Sequence[Result]) -> str:
    """A compact Markdown table: one row per model, mode, method and attack-step count; images/s
    and the time over the clean step with XLA off and on side by side (the first round's; see
    `baseline_table` for all rounds)."""
    def cell(r: Result | None) -> tuple[str, str, str]:
        if r is None:
            return "-", "-", "-"
        if r.error:
            return r.error, "-", "-"
        rel = f"{r.relative_to_clean:.1f}" if r.relative_to_clean is not None else "-"
        return f"{r.images_per_second:.0f}", rel, f"{r.traces}"

    rows = {}
    for r in results:
        c = r.case
        if c.round == 0:
            rows.setdefault((c.model, c.batch_size, c.mode, c.method, c.attack_steps), {})[c.jit_compile] = r
    lines = ["| model (batch) | mode | method | attack steps | images/s, XLA off | x clean step | images/s, XLA on "
             "| x clean step | traces (off/on) |", "|" + " --- |" * 9]
    for (model, batch, mode, method, steps), by_jit in rows.items():
        off, on = cell(by_jit.get(False)), cell(by_jit.get(True))
        lines.append(f"| {model} ({batch}) | {mode} | {method} | {steps} | {off[0]} | {off[1]} | {on[0]} | {on[1]} "
                     f"| {off[2]}/{on[2]} |")
    return "\n".join(lines)


def write(results: Sequence[Result], output_dir: str, extra: dict[str, Any] | None = None) -> tuple[str, str]:
    """Write `benchmark.json` and `benchmark.md` under `output_dir`; return their paths."""
    os.makedirs(output_dir, exist_ok=True)
    json_path, md_path = os.path.join(output_dir, "benchmark.json"), os.path.join(output_dir, "benchmark.md")
    payload = {"results": [r.to_json() for r in results], **(extra or {})}
    parts = [summary(results), baseline_table(results), markdown(results)]
    text_md = "\n\n".join(p for p in parts if p) + "\n"
    for path, text in ((json_path, json.dumps(payload, indent=2)), (md_path, text_md)):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return json_path, md_path


def _child_main(argv: list[str]) -> None:
    case = Case(**json.loads(argv[1]))
    if case.input_shape is not None:
        case = dataclasses.replace(case, input_shape=tuple(case.input_shape))
    result = measure(case)
    print(_CHILD_MARK + json.dumps(result.to_json()), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv)
