"""The documentation site covers the code: every public module of tfrobust has a `::: module` entry on
an API page (docs/api/). `mkdocs build --strict` (.ci/run) checks links, the navigation, docstrings
against signatures and the tutorials; this checks what it cannot see: a module nobody put on a page."""

from __future__ import annotations

import glob
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _public_modules() -> set[str]:
    """The committed modules under tfrobust/ whose dotted path has no part starting with '_'."""
    try:
        listed = subprocess.run(["git", "ls-files", "tfrobust"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the committed modules are unknown")
    modules = set()
    for path in listed:
        if not path.endswith(".py"):
            continue
        parts = path[:-3].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            modules.add(".".join(parts))
    return modules


def test_every_public_module_has_an_api_entry():
    documented = set()
    for page in glob.glob(os.path.join(ROOT, "docs", "api", "*.md")):
        with open(page) as f:
            documented |= set(re.findall(r"^::: ([\w.]+)", f.read(), flags=re.M))
    missing = sorted(_public_modules() - documented)
    assert not missing, f"add a '::: MODULE' line to a page in docs/api/ for {missing}"

