"""MkDocs hooks of the documentation site (mkdocs.yml `hooks`).

`flags.md` is generated on every build from the runners' own flag definitions: each runner is run
with absl's `--helpxml`, which prints every flag it defines (name, type, default, help with choices
and bounds). Nothing on the page is written by hand, so it cannot drift from the runners.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from mkdocs.structure.files import File, Files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNERS = ("train.py", "evaluate.py")

INTRO = """# Runner flags

Every flag of `runners/train.py` and `runners/evaluate.py`, generated when this site is built from
the runners' own definitions (`python runners/RUNNER.py --helpxml`); `--helpfull` prints the same
on the command line. Flags may also come from a file, `--flagfile=flags/mnist_trades.cfg`, one flag
a line (the presets in `flags/`). Every value is checked before anything is written: a bad one is
one line on stderr and exit code 2 ([exit codes](getting-started.md#exit-codes)).

`train.py`'s settings are the fields of `tfrobust.config.TrainConfig` (each also a key of a run's
`config.json`); its method hyperparameters are the fields of the method classes, unset by default so
that each method keeps its own default, and refused for a method that does not take them.
`--import=MODULE` imports your module first, so the methods and models it registers
([`methods.register`](api/methods.md), [`models.register`](api/models.md)) are choices of `--method`
and `--model` and bring their own hyperparameter flags. `evaluate.py` has no `--import`: it reads a
SavedModel, which needs no Python code of yours.
"""


def _flags(runner: str) -> list[dict[str, str]]:
    """The runner's own flags (absl's are left out), as `--helpxml` describes them."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "runners", runner), "--helpxml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    if "<AllFlags>" not in proc.stdout:
        raise RuntimeError(f"{runner} --helpxml failed ({proc.returncode}): {proc.stderr[-2000:]}")
    flags = [{child.tag: (child.text or "") for child in flag} for flag in ET.fromstring(proc.stdout).iter("flag")]
    return [f for f in flags if not f["file"].startswith("absl.")]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _default(flag: dict[str, str]) -> str:
    if flag["current"] == "None":
        return "unset"
    return f"`{flag['default']}`" if flag["default"] else '`""`'


def _table(flags: list[dict[str, str]]) -> str:
    rows = [f"| `--{f['name']}` | {f['type']} | {_default(f)} | {_cell(f['meaning'])} |" for f in flags]
    return "\n".join(["| flag | type | default | meaning |", "| --- | --- | --- | --- |", *rows])


def flags_page() -> str:
    """The Markdown of flags.md."""
    sys.path.insert(0, ROOT)
    from tfrobust import config, methods, settings  # imports no TensorFlow

    train = {f["name"]: f for f in _flags("train.py")}
    order = [s.name for s in config.SPECS if s.flag]
    method_flags = sorted({s.name for cls in methods.REGISTRY.values() for s in settings.specs(cls)})
    taken_by = {name: sorted(m for m, cls in methods.REGISTRY.items()
                             if name in {s.name for s in settings.specs(cls)}) for name in method_flags}
    other = sorted(set(train) - set(order) - set(method_flags))
    sections = [
        INTRO,
        "## train.py\n\n### Settings\n\n" + _table([train[n] for n in order]),
        "### Method hyperparameters\n\nThe built-in methods' ([training methods](methods.md)); the method that takes "
        "each is named in its help or below.\n\n" + _table([train[n] for n in method_flags]) + "\n\n"
        + "\n".join(f"- `--{n}`: {', '.join(f'`{m}`' for m in taken_by[n])}" for n in method_flags),
        "### Loading your code\n\n" + _table([train[n] for n in other]),
        "## evaluate.py\n\n" + _table(_flags("evaluate.py")),
    ]
    return "\n\n".join(sections) + "\n"


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "flags.md", content=flags_page()))
    return files
