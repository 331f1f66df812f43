"""Training methods, registered by the name `--method` takes.

A method of your own is a frozen dataclass subclassing `Method`, its hyperparameters made with
`tfrobust.settings.setting`, added with `register`; it then has what a built-in method has: `build`,
saving and loading with `RobustModel`, and in `runners/train.py --import=YOUR_MODULE` the name for
`--method` and one flag per hyperparameter, checked against its bounds before anything runs.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

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

M = TypeVar("M", bound=type[Method])


def _problem(cls: Any) -> str | None:
    """Why `cls` cannot be registered as a training method, or None."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        return f"{cls!r} is not a subclass of tfrobust.methods.Method"
    what = cls.__qualname__
    if "__dataclass_fields__" not in cls.__dict__:
        return f"{what} must be decorated with @dataclasses.dataclass(frozen=True) (below @register)"
    if inspect.isabstract(cls):
        return f"{what} does not implement {sorted(cls.__abstractmethods__)}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        return f"{what}.name must be a name such as 'my_method' (it becomes --method=NAME), got {name!r}"
    if not (isinstance(cls.term_names, tuple) and all(isinstance(t, str) for t in cls.term_names)):
        return f"{what}.term_names must be a tuple of metric names, got {cls.term_names!r}"
    if cls.reference_bn_mode not in BN_MODES:
        return f"{what}.reference_bn_mode must be one of {BN_MODES}, got {cls.reference_bn_mode!r}"
    plain = [f.name for f in dataclasses.fields(cls) if f.name != "attack" and "help" not in f.metadata]
    if plain:
        return (f"{what}'s hyperparameter(s) {plain} must be made with tfrobust.settings.setting(default, help, "
                "...), which gives each its flag and its checks")
    return None


def register(cls: M) -> M:
    """Add the training method `cls` under `cls.name`; returns `cls`, so it works as a class decorator.

    `cls` subclasses `Method` as a frozen dataclass whose fields (besides `attack`) are its
    hyperparameters, each made with `tfrobust.settings.setting`:

        @methods.register
        @dataclasses.dataclass(frozen=True)
        class PgdAtSmooth(methods.Method):
            smoothing: float = setting(0.1, "Label smoothing of the adversarial CE.", low=0, high=1)
            name = "pgd_at_smooth"
            term_names = ("adv_ce",)
            ...

    Raises:
        ConfigError: the name is already registered (built-in or not), or `cls` is not such a class.
    """
    problem = _problem(cls)
    if problem:
        raise ConfigError(f"cannot register method: {problem}")
    if cls.name in REGISTRY:
        taken = REGISTRY[cls.name]
        raise ConfigError(f"a method named {cls.name!r} is already registered ({taken.__module__}."
                          f"{taken.__qualname__}); give {cls.__name__} another name")
    REGISTRY[cls.name] = cls
    return cls


def hyperparameters(name: str) -> tuple[str, ...]:
    """The names of the hyperparameters (besides `attack`) that method `name` takes."""
    return tuple(f.name for f in dataclasses.fields(get(name)) if f.name != "attack")


def get(name: str) -> type[Method]:
    """The class of method `name` (ConfigError for a name not registered)."""
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
           "build", "get", "hyperparameters", "register"]
