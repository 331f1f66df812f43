"""Training methods, registered by the name `--method` takes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tfrobust.errors import ConfigError
from tfrobust.methods.atent import Atent
from tfrobust.methods.base import BN_MODES, AttackConfig, Differentiate, LossOutput, Method, StepContext
from tfrobust.methods.fgsm_rs import FgsmRs
from tfrobust.methods.mart import Mart
from tfrobust.methods.mimae import Mimae
from tfrobust.methods.n_fgsm import NFgsm
from tfrobust.methods.pgd_at import PgdAt
from tfrobust.methods.standard import Standard
from tfrobust.methods.trades import Trades

REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in (Standard, PgdAt, Trades, Mart, Mimae, Atent, FgsmRs,
                                                                    NFgsm)}


def hyperparameters(name: str) -> tuple[str, ...]:
    """The names of the hyperparameters (besides `attack`) that method `name` takes."""
    return tuple(f.name for f in dataclasses.fields(get(name)) if f.name != "attack")


def get(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def build(name: str, attack: AttackConfig, options: Mapping[str, Any] | None = None) -> Method:
    """Method `name` with its threat model and hyperparameters `options` (ConfigError for an unknown
    name, a misspelled option or a value out of its bounds)."""
    cls = get(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(hyperparameters(name)))
    if unknown:
        raise ConfigError(f"method {name} has no hyperparameter(s) {unknown}; it takes {list(hyperparameters(name))}")
    return cls(attack=attack, **options)


__all__ = ["BN_MODES", "AttackConfig", "Differentiate", "LossOutput", "Method", "REGISTRY", "StepContext",
           "build", "get", "hyperparameters"]
