"""Classifier architectures for adversarially robust training.

Every model built here is a functional ``keras.Model`` that

* takes raw float32 NHWC pixels in [0, 1],
* normalizes inside the model when per-channel ``mean``/``std`` are given
  (a fixed-statistics ``keras.layers.Normalization`` layer, kept in float32),
* returns float32 **logits** (no softmax), also under a ``mixed_float16``
  policy (the last ``Dense`` has ``dtype="float32"``),
* uses PyTorch-default BatchNorm (momentum 0.9 in Keras terms, eps 1e-5) and
  has no weight regularizers (the trainer applies weight decay).

Architectures: the rows of :data:`ARCHITECTURES`, one per name (module, builder, one line; each
module defines its smallest input and its docstring names its reference). Adding one is a module and
a row. The table imports no Keras: a builder's module is imported when the row is first built.

A model of your own is a factory added with :func:`register`; `build_model`, `check_model` and, with
``runners/train.py --import=YOUR_MODULE``, ``--model`` then take its name as they take a built-in one.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

from tfrobust.errors import ConfigError
from tfrobust.lazy import lazy_import

# Imported on first use: the table's names (the --model flag's choices) need no Keras.
keras = lazy_import("keras")
_common = lazy_import("tfrobust.models._common")

__all__ = ["ARCHITECTURES", "MIN_INPUT_SIZES", "MODEL_NAMES", "Architecture", "Factory", "ModelError",
           "build_model", "check_model", "register"]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One row of the table: how to build an architecture and what it accepts. The row names its
    module (under tfrobust.models) and functions; the module is imported when first used."""

    module: str  # builder module, e.g. "tiny"; it defines MIN_INPUT_SIZE, the smallest height and width
    builder: str  # build(input_shape, num_classes, *, mean, std, **options) in that module
    description: str
    options: tuple[str, ...] = ()  # keyword arguments of `build_model` this builder also takes
    checker: str | None = None  # check(**options) in that module, raises ModelError on bad options

    def _module(self) -> ModuleType:
        return importlib.import_module(f"tfrobust.models.{self.module}")

    @property
    def build(self) -> Callable[..., keras.Model]:
        return getattr(self._module(), self.builder)

    @property
    def min_input_size(self) -> int:
        return self._module().MIN_INPUT_SIZE

    @property
    def check_options(self) -> Callable[..., None] | None:
        return getattr(self._module(), self.checker) if self.checker else None


@dataclasses.dataclass(frozen=True)
class Factory:
    """A row added by :func:`register`: a model factory held as it is (no module to import)."""

    build: Callable[..., keras.Model]  # build(input_shape, num_classes, *, mean, std)
    description: str
    min_input_size: int = 1
    options: tuple[str, ...] = ()  # registered factories take no WRN options
    check_options: None = None


ARCHITECTURES: dict[str, Architecture | Factory] = {
    "tiny_cnn": Architecture("tiny", "build_tiny_cnn", "small fast CNN for 8x8 digits"),
    "small_cnn": Architecture("small_cnn", "build_small_cnn", "TRADES MNIST SmallCNN"),
    "lenet5": Architecture("lenet5", "build_lenet5", "Madry et al. MNIST-challenge CNN"),
    "resnet18": Architecture("resnet", "build_resnet18", "CIFAR ResNet-18 of kuangliu/pytorch-cifar"),
    "preact_resnet18": Architecture("resnet", "build_preact_resnet18", "CIFAR PreAct ResNet-18"),
    "wide_resnet": Architecture("wide_resnet", "build_wide_resnet", "WRN-depth-width of TRADES",
                                options=("depth", "width"), checker="check_depth_width"),
}

F = TypeVar("F", bound=Callable[..., "keras.Model"])


def register(name: str, *, min_input_size: int = 1, description: str | None = None) -> Callable[[F], F]:
    """A decorator adding a model factory under `name`, as a row of :data:`ARCHITECTURES`.

        @models.register("my_cnn", min_input_size=8)
        def build_my_cnn(input_shape, num_classes, *, mean=None, std=None) -> keras.Model:
            ...  # [0, 1] pixels in, float32 logits out; normalize with mean and std when given

    `build_model` checks the class count, input shape, `min_input_size` and mean/std for it as for
    a built-in architecture, then calls the factory with the same arguments. Call it as
    ``register(name)(factory)`` to register a factory defined elsewhere.

    Args:
        name: the name `build_model` and ``--model`` take.
        min_input_size: the smallest height and width the factory accepts.
        description: one line; default: the first line of the factory's docstring.

    Raises:
        ConfigError: the name is already registered (built-in or not), or the factory does not
            take ``(input_shape, num_classes, *, mean, std)``.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"cannot register model: the name must be a name such as 'my_cnn' (it becomes "
                          f"--model=NAME), got {name!r}")
    if isinstance(min_input_size, bool) or not isinstance(min_input_size, int) or min_input_size < 1:
        raise ConfigError(f"cannot register model {name!r}: min_input_size must be an integer >= 1, "
                          f"got {min_input_size!r}")

    def add(factory: F) -> F:
        try:
            inspect.signature(factory).bind((8, 8, 1), 10, mean=None, std=None)
        except (TypeError, ValueError):
            raise ConfigError(f"cannot register model {name!r}: {factory!r} must take (input_shape, num_classes, "
                              "*, mean, std)") from None
        if name in ARCHITECTURES:
            taken = ARCHITECTURES[name]
            where = (f"{taken.build.__module__}.{taken.build.__qualname__}" if isinstance(taken, Factory)
                     else f"tfrobust.models.{taken.module}.{taken.builder}")
            raise ConfigError(f"a model named {name!r} is already registered ({where}); give "
                              f"{getattr(factory, '__qualname__', factory)!r} another name")
        first_line = (inspect.getdoc(factory) or "").strip().split("\n")[0]
        ARCHITECTURES[name] = Factory(factory, description or first_line or name, min_input_size)
        return factory

    return add


def __getattr__(name: str):
    """MODEL_NAMES (architecture names in table order, registered ones included), and MIN_INPUT_SIZES
    and ModelError, which import the builders (and Keras), on first use."""
    if name == "MODEL_NAMES":
        return tuple(ARCHITECTURES)
    if name == "MIN_INPUT_SIZES":  # smallest accepted height/width per architecture
        return {n: a.min_input_size for n, a in ARCHITECTURES.items()}
    if name == "ModelError":
        return _common.ModelError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _options(arch: Architecture | Factory, depth: int, width: int) -> dict[str, int]:
    """The architecture options (WRN depth and width) that `arch` takes."""
    return {k: v for k, v in {"depth": depth, "width": width}.items() if k in arch.options}


def check_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    depth: int = 34,
    width: int = 10,
) -> tuple[int, int, int]:
    """Check what :func:`build_model` would be given, without building anything: raises the
    ModelError it would raise (unknown name, input too small, bad depth or width, mean/std,
    class count). Returns the checked input shape. The train runner calls it before it writes
    anything."""
    if name not in ARCHITECTURES:
        raise _common.ModelError(
            f"unknown model name {name!r}; accepted: {', '.join(ARCHITECTURES)}"
        )
    arch = ARCHITECTURES[name]
    options = _options(arch, depth, width)
    _common.check_num_classes(num_classes)
    if arch.check_options is not None:
        arch.check_options(**options)
    shape = _common.check_input_shape(input_shape)
    _common.check_min_size(name, shape, arch.min_input_size)
    _common.check_mean_std(mean, std, shape[2])
    return shape


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    depth: int = 34,
    width: int = 10,
    seed: int | None = None,
) -> keras.Model:
    """Build the classifier ``name`` (one of ``MODEL_NAMES``).

    Args:
        name: architecture name.
        input_shape: ``(height, width, channels)`` of the raw [0, 1] pixels.
        num_classes: number of logits (>= 2).
        mean: optional per-channel means (length ``channels``); with ``std`` the
            model computes ``(x - mean) / std`` internally. ``None`` for both
            means no normalization; if only one is given the other defaults to
            0 (mean) or 1 (std). The train runner passes the train split's
            statistics (``--normalize``, on by default); to build the same model
            pass ``info.mean``, ``info.std`` of ``data.datasets``.
        std: optional per-channel standard deviations (length ``channels``, > 0).
        depth: WRN depth (6n + 4); ``wide_resnet`` only, ignored by the others.
        width: WRN widen factor; ``wide_resnet`` only, ignored by the others.
        seed: if not ``None``, ``keras.utils.set_random_seed(seed)`` is called
            right before the layers are created, so building twice with the
            same seed gives identical initial weights. NOTE: this (re)seeds the
            *global* Python, NumPy, TensorFlow and Keras generators as a side
            effect. With ``seed=None`` nothing is seeded; seed globally yourself.

    Returns:
        A functional ``keras.Model`` mapping pixels to float32 logits.

    Raises:
        ModelError: unknown name, malformed ``input_shape``, input too small for
            the architecture, bad WRN depth/width, ``mean``/``std`` length not
            equal to the channel count, ``std <= 0``, or ``num_classes < 2``.
    """
    # Validate everything before touching the global random state.
    shape = check_model(name, input_shape, num_classes, mean=mean, std=std, depth=depth, width=width)
    arch = ARCHITECTURES[name]
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise _common.ModelError(f"seed must be an integer or None, got {seed!r}")
        keras.utils.set_random_seed(seed)
    return arch.build(shape, num_classes, mean=mean, std=std, **_options(arch, depth, width))
