"""Modules imported on first use.

The tables the runners' flags are generated from (methods and their hyperparameters, model,
strategy and attack-suite names) live in modules whose functions need TensorFlow. Those modules
name what they use with `lazy_import` instead of `import`, so that reading the tables, parsing
and checking flags does not import TensorFlow (15-60 s); the first attribute used imports it.

    tf = lazy_import("tensorflow")          # as `import tensorflow as tf`, on first use of tf.X
    losses = lazy_import("tfrobust.losses")
"""

from __future__ import annotations

import importlib
import types


class _LazyModule(types.ModuleType):
    """Stands for module `name`; the first attribute looked up imports it."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_module"] = None

    def __getattr__(self, attr: str):
        module = self.__dict__["_module"]
        if module is None:
            module = self.__dict__["_module"] = importlib.import_module(self.__name__)
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "imported" if self.__dict__["_module"] is not None else "not imported yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_import(name: str) -> types.ModuleType:
    """Module `name`, imported when one of its attributes is first used (not put in sys.modules)."""
    return _LazyModule(name)
