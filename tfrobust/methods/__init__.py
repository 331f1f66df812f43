"""Training methods, registered by the name `--method` takes."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from tfrobust.methods.base import BN_MODES, AttackConfig, Differentiate, LossOutput, Method, StepContext
from tfrobust.methods.atent import Atent
from tfrobust.methods.mart import Mart
from tfrobust.methods.mimae import Mimae
from tfrobust.methods.pgd_at import PgdAt
from tfrobust.methods.standard import Standard
from tfrobust.methods.trades import Trades

REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in (Standard, PgdAt, Trades, Mart, Mimae, Atent)}


def hyperparameters(name: str) -> tuple[str, ...]:
    """The names of the hyperparameters (besides `attack`) that method `name` takes."""
    return tuple(f.name for f in dataclasses.fields(get(name)) if f.name != "attack")


def get(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def build(name: str, attack: AttackConfig, options: Mapping[str, Any] | None = None) -> Method:
    """Method `name` with its threat model and those of `options` that are its hyperparameters."""
    cls = get(name)
    wanted = set(hyperparameters(name))
    return cls(attack=attack, **{k: v for k, v in (options or {}).items() if k in wanted})


__all__ = ["BN_MODES", "AttackConfig", "Differentiate", "LossOutput", "Method", "REGISTRY", "StepContext",
           "build", "get", "hyperparameters"]
