"""Settings defined once: a dataclass field carries its default, help, choices, bounds and whether a
resumed run may change it. Flags (`tfrobust.cli.define_flags`) and validation (`check`) are
generated from that one definition.

    @dataclasses.dataclass
    class Config:
        lr: float = setting(0.05, "Initial learning rate.", low=0, low_open=True)
        norm: str = setting("linf", "Threat model norm.", choices=("linf", "l2"))
        augment: bool | None = setting(None, "Pad-crop-flip; None: auto.")   # an auto/true/false flag

A `bool | None` field is a tri-state whose None means "auto"; an `int | None` field with choices
likewise (e.g. verbosity). Nothing here imports TensorFlow, so runners can parse and validate
flags before importing it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Sequence
from typing import Any

from tfrobust.errors import ConfigError

AUTO = "auto"


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002 - the name absl and argparse use
    *,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    resumable: bool = False,
    flag: bool = True,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with its metadata.

    Args:
        default: the default value (None for a tri-state means auto).
        help: the flag's help text.
        choices: the allowed values (or a function returning them, for tables built elsewhere).
        low: lower bound of a number; every float must also be finite (NaN and inf are refused).
        high: upper bound of a number.
        low_open: whether `low` itself is excluded.
        high_open: whether `high` itself is excluded.
        resumable: a rerun of an unfinished run may change this setting and still continue it.
        flag: whether the runner defines a flag for it.
    """
    metadata = dict(help=help, choices=choices, low=low, high=high, low_open=low_open, high_open=high_open,
                    resumable=resumable, flag=flag)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One setting as the flag generator and the validator see it."""

    name: str
    kind: type  # bool, int, float, str or tuple (a tuple of ints)
    optional: bool  # None allowed (a tri-state's auto)
    default: Any
    help: str
    choices: tuple[Any, ...] | None
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool
    resumable: bool
    flag: bool

    def bounds_text(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts)


def _kind(annotation: Any) -> tuple[type, bool]:
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        annotation = next(a for a in args if a is not type(None))
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return tuple, optional
    if origin is dict:
        return dict, optional
    return annotation, optional


def specs(cls: type) -> tuple[Spec, ...]:
    """The settings of dataclass `cls` (fields made with `setting`), in definition order."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            continue
        m = field.metadata
        kind, optional = _kind(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        choices = m["choices"]() if callable(m["choices"]) else m["choices"]
        out.append(Spec(field.name, kind, optional, default, m["help"], tuple(choices) if choices else None,
                        m["low"], m["high"], m["low_open"], m["high_open"], m["resumable"], m["flag"]))
    return tuple(out)


def problem(spec: Spec, value: Any) -> str | None:
    """Why `value` is not allowed for `spec`, or None."""
    if value is None:
        return None if spec.optional else f"{spec.name} must be set"
    if spec.kind is bool:
        ok = isinstance(value, bool)
    elif spec.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif spec.kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif spec.kind is tuple:
        ok = isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, spec.kind)
    if not ok:
        return f"{spec.name} must be of type {spec.kind.__name__}, got {value!r}"
    if spec.choices is not None and value not in spec.choices:
        return f"{spec.name} must be one of {list(spec.choices)}, got {value!r}"
    if spec.kind in (int, float):
        if spec.kind is float and not math.isfinite(value):
            return f"{spec.name} must be a finite number, got {value}"
        low_bad = spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low)
        high_bad = spec.high is not None and (value >= spec.high if spec.high_open else value > spec.high)
        if low_bad or high_bad:
            return f"{spec.name} must be {spec.bounds_text()}, got {value:g}"
    return None


def check(obj: Any) -> None:
    """Raise ConfigError (one line) for the first setting of dataclass instance `obj` out of its
    type, choices or bounds."""
    for spec in specs(type(obj)):
        message = problem(spec, getattr(obj, spec.name))
        if message:
            raise ConfigError(message)


def parse_tristate(value: Any) -> bool | None:
    """'auto' -> None, 'true' -> True, 'false' -> False (as flags and older config.json files say it)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == AUTO:
        return None
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(f"expected auto, true or false, got {value!r}")


def format_tristate(value: bool | None) -> str:
    return AUTO if value is None else str(value).lower()
