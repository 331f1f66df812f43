"""What `--model` names: a training run directory (its SavedModel, and the settings evaluation takes
from its config.json) or a SavedModel directory. Reads files only and imports no TensorFlow, so a
damaged config.json is reported, in one line naming the file and the setting, before anything is
loaded or written.

    source = model_source.resolve("runs/pgd_at-digits")
    source.savedmodel          # runs/pgd_at-digits/savedmodel
    source.settings["eps"]     # the run's eps, checked as train.py checks its flag
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

from tfrobust import config as config_lib
from tfrobust import files, settings
from tfrobust.errors import ConfigError
from tfrobust.layout import CONFIG_FILE, SAVED_MODEL_FILE, SAVEDMODEL_DIR

# The settings of a run that evaluation uses (each also a flag of runners/evaluate.py).
EVALUATION_SETTINGS = ("dataset", "data_dir", "eps", "norm", "dtype")
_SPECS = {spec.name: spec for spec in config_lib.SPECS if spec.name in EVALUATION_SETTINGS}


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """savedmodel: the SavedModel directory; settings: the run's EVALUATION_SETTINGS found in its
    config.json (empty for a bare SavedModel); config_path: that config.json (None for a SavedModel);
    default_output_dir: where the report goes unless told otherwise."""

    savedmodel: str
    settings: dict[str, Any]
    config_path: str | None
    default_output_dir: str


def resolve(path: str, overridden: Iterable[str] = ()) -> ModelSource:
    """The SavedModel and settings `path` names. A directory with saved_model.pb is a SavedModel;
    one with config.json a training run, whose settings are read with `run_settings` (those in
    `overridden`, given otherwise, are neither read nor checked). Raises ConfigError (one line)."""
    path = os.path.normpath(path)
    config_path = os.path.join(path, CONFIG_FILE)
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)) or not os.path.isdir(path):
        return ModelSource(path, {}, None, path + "-evaluation")
    if os.path.lexists(config_path):
        return ModelSource(os.path.join(path, SAVEDMODEL_DIR), run_settings(path, overridden), config_path,
                           os.path.join(path, "evaluation"))
    if os.path.isdir(os.path.join(path, SAVEDMODEL_DIR)):
        raise ConfigError(f"{path!r} holds {SAVEDMODEL_DIR}/ but no {CONFIG_FILE}, so its dataset and threat model "
                          f"are unknown; evaluate its SavedModel with --model={os.path.join(path, SAVEDMODEL_DIR)} "
                          "and --dataset, --eps and --norm")
    return ModelSource(path, {}, None, path + "-evaluation")


def run_settings(run_dir: str, overridden: Iterable[str] = ()) -> dict[str, Any]:
    """The EVALUATION_SETTINGS in the config.json of the training run in `run_dir` (those it has;
    older runs may lack some), each checked against its `tfrobust.config.TrainConfig` setting.
    Raises ConfigError (one line) naming the file, and the setting when one is wrong: config.json
    unreadable, not JSON, not an object, or a setting of the wrong type or out of range."""
    path = os.path.join(run_dir, CONFIG_FILE)
    instead = (f"evaluate its SavedModel with --model={os.path.join(run_dir, SAVEDMODEL_DIR)} and --dataset, "
               "--eps and --norm")
    try:
        with open(path, "rb") as f:
            payload = json.loads(f.read())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {files.os_error_text(e)}; {instead}") from None
    except ValueError as e:  # JSONDecodeError, or bytes that are not text
        raise ConfigError(f"{path} is not valid JSON ({e}); the run's settings are lost: {instead}") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"{path} holds a JSON {_json_type(payload)}, not an object of settings; {instead}")
    skip = set(overridden)
    out = {}
    for name, spec in _SPECS.items():
        if name not in payload or name in skip:
            continue
        problem = settings.problem(spec, payload[name])
        if problem:
            raise ConfigError(f"{path}'s {problem}; correct it there, or set {name} with its flag")
        out[name] = payload[name]
    if out.get("norm", "linf") == "linf" and out.get("eps", 0) > 1 and "norm" not in skip:
        raise ConfigError(f"{path}'s eps must be in [0, 1] for linf (pixels are in [0, 1]), got {out['eps']:g}; "
                          "correct it there, or set eps with its flag")
    return out


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")
