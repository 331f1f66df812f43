"""What the command-line runners share: quiet imports, one-line errors, absl flag parsing.

Import this before TensorFlow: it does not import it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Callable
from typing import NoReturn


@contextlib.contextmanager
def native_stderr_captured():
    """Hold back what native code writes to stderr (TensorFlow's C++ start-up INFO lines, which
    no environment variable silences in TF 2.21) and replay it only if the block fails."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            if "tensorflow" in sys.modules:  # device discovery logs too (cuInit on GPU-less hosts)
                sys.modules["tensorflow"].config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def fail(program: str, message: object, code: int = 2) -> NoReturn:
    """Print `program: error: message` on one line of stderr and exit with `code`."""
    sys.stderr.write(f"{program}: error: {' '.join(str(message).split())}\n")
    sys.exit(code)


def flags_parser(program: str) -> Callable[[list[str]], list[str]]:
    """An absl `flags_parser` that turns a flag error into one line and exit code 2."""
    from absl import flags

    def parse(argv: list[str]) -> list[str]:
        try:
            rest = flags.FLAGS(argv)
        except flags.Error as e:
            fail(program, e)
        if len(rest) > 1:
            fail(program, f"unexpected arguments {rest[1:]}; flags take the form --name=value")
        return rest

    return parse


IMPORT_HELP = ("Import this module (a dotted path, found from the current directory or the Python path) before "
               "the other flags are read, so that the methods and models it registers (tfrobust.methods.register, "
               "tfrobust.models.register) can be named with --method and --model.")


def define_import_flag(flag_values=None) -> None:
    """Define the repeatable `--import=MODULE` flag (read by `import_modules`)."""
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values  # an empty FlagValues is falsy
    flags.DEFINE_multi_string("import", [], IMPORT_HELP, flag_values=fv)


def _import_problem(name: str) -> str | None:
    """Import module `name`; why it failed, or None."""
    if not all(part.isidentifier() for part in name.split(".")):
        return "not a module path such as mypkg.mymodule"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            return f"no module named {e.name!r} in the current directory or on the Python path"
        return f"importing it failed: {type(e).__name__}: {e}"
    except Exception as e:  # a module failing on import, whatever the reason: one line, exit 2
        from tfrobust.errors import TfrobustError

        return f"importing it failed: {e if isinstance(e, TfrobustError) else f'{type(e).__name__}: {e}'}"
    return None


def import_modules(program: str, argv: list[str]) -> list[str]:
    """Import the modules that the `--import` flags of `argv` name (flagfiles included), in order, before
    a runner defines the flags that list methods and models. A module that cannot be found or fails on
    import ends the program with one line and exit code 2. Returns the names imported.

    Any other flag error is left to the runner's own parse, which reports it."""
    from absl import flags

    wanted = flags.FlagValues()
    define_import_flag(wanted)
    try:
        wanted(argv, known_only=True)
    except flags.Error:
        return []
    names = wanted["import"].value
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in names:
        with native_stderr_captured():  # the module may import TensorFlow, which logs while it starts
            problem = _import_problem(name)
        if problem:
            fail(program, f"--import={name}: {problem}")
    return names


def _flag_help(spec, unset_defaults: dict[str, object] | None) -> str:
    text = spec.help
    bounds = spec.bounds_text()
    if bounds:
        text += f" Must be {bounds}."
    if unset_defaults:
        values = set(map(repr, unset_defaults.values()))
        if len(values) == 1:
            text += f" Unset: the method's default ({values.pop()})."
        else:
            each = ", ".join(f"{name} {value!r}" for name, value in sorted(unset_defaults.items()))
            text += f" Unset: the method's default ({each})."
    return text


def define_method_flags(registry: dict[str, type], flag_values=None) -> list[str]:
    """One flag per hyperparameter of the methods in `registry` (name -> method dataclass), unset
    (None) by default so that each method keeps its own default; a name several methods share is
    one flag whose help lists each method's default. Raises ConfigError for a hyperparameter named as
    a flag defined before (the runner's own settings), or shared by methods as different types."""
    from absl import flags

    from tfrobust import settings
    from tfrobust.errors import ConfigError

    fv = flags.FLAGS if flag_values is None else flag_values  # an empty FlagValues is falsy
    defaults: dict[str, dict[str, object]] = {}
    first: dict[str, tuple[str, settings.Spec]] = {}
    for name, cls in sorted(registry.items()):
        for spec in settings.specs(cls):
            if spec.name in fv and spec.name not in first:
                raise ConfigError(f"method {name}'s hyperparameter {spec.name!r} has the name of the runner's flag "
                                  f"--{spec.name}: rename the hyperparameter")
            other, known = first.setdefault(spec.name, (name, spec))
            if (known.kind, known.optional, known.choices) != (spec.kind, spec.optional, spec.choices):
                raise ConfigError(f"methods {other} and {name} both take --{spec.name}, as different types or "
                                  "choices; one flag cannot be both: rename one of them")
            defaults.setdefault(spec.name, {})[name] = spec.default
    defined = []
    for _, cls in sorted(registry.items()):
        defined += define_flags(cls, unset_defaults=defaults, flag_values=flag_values)
    return defined


def define_flags(cls: type, *, unset_defaults: dict[str, dict[str, object]] | None = None,
                 flag_values=None) -> list[str]:
    """Define one absl flag per setting of dataclass `cls` (`tfrobust.settings.setting` fields), with
    the setting's help, choices and bounds; skip names already defined. With `unset_defaults` (setting
    name -> {method: default}), flags default to None ("unset"), as method hyperparameters do.
    Returns the names defined."""
    from absl import flags

    from tfrobust import settings

    fv = flags.FLAGS if flag_values is None else flag_values
    defined = []
    for spec in settings.specs(cls):
        if not spec.flag or spec.name in fv:
            continue
        unset_default = unset_defaults is not None
        default = None if unset_default else spec.default
        helptext = _flag_help(spec, unset_defaults.get(spec.name) if unset_default else None)
        kwargs = dict(flag_values=fv)
        if spec.kind is bool and spec.optional:
            flags.DEFINE_enum(spec.name, None if unset_default else settings.format_tristate(default),
                              [settings.AUTO, "true", "false"], helptext, **kwargs)
        elif spec.choices is not None:
            choices = [str(c) for c in spec.choices] + ([settings.AUTO] if spec.optional else [])
            text = None if default is None and unset_default else (settings.AUTO if default is None else str(default))
            flags.DEFINE_enum(spec.name, text, choices, helptext, **kwargs)
        elif spec.kind is bool:
            flags.DEFINE_bool(spec.name, default, helptext, **kwargs)
        elif spec.kind is int:
            flags.DEFINE_integer(spec.name, default, helptext, **kwargs)
        elif spec.kind is float:
            flags.DEFINE_float(spec.name, default, helptext, **kwargs)
        elif spec.kind is tuple:
            flags.DEFINE_list(spec.name, None if default is None else [str(v) for v in default], helptext, **kwargs)
        else:
            flags.DEFINE_string(spec.name, default, helptext, **kwargs)
        defined.append(spec.name)
    return defined


def values_from_flags(cls: type, names=None, flag_values=None) -> dict:
    """The typed values of `cls`'s settings from the parsed flags (those in `names`, default all that
    are flags; with unset method flags left out). Raises ConfigError for a value of the wrong form."""
    from absl import flags

    from tfrobust import settings
    from tfrobust.errors import ConfigError

    fv = flags.FLAGS if flag_values is None else flag_values
    values = {}
    for spec in settings.specs(cls):
        if not spec.flag or spec.name not in fv or (names is not None and spec.name not in names):
            continue
        value = fv[spec.name].value
        if value is None:
            if names is not None:  # an unset method flag: the method's default
                continue
            values[spec.name] = None
            continue
        if spec.kind is bool and spec.optional:
            value = settings.parse_tristate(value)
        elif spec.choices is not None and spec.kind is int:
            value = None if value == settings.AUTO else int(value)
        elif spec.kind is tuple:
            try:
                value = tuple(int(v) for v in value)
            except ValueError:
                raise ConfigError(f"{spec.name} must be integers, got {','.join(value)}") from None
        values[spec.name] = value
    return values
