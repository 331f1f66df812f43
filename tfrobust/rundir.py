"""The run-directory protocol: what a run directory holds, when a rerun continues it, when it is
refused, and how its JSON files are written.

    config.json      the configuration (`tfrobust.config.to_json`), written first; a rerun must match it
                     except for the settings marked resumable to continue the run
    checkpoints/     tf.train checkpoints numbered by optimizer step (model, optimizer, RNG state)
    logs/            TensorBoard: train/ and validation/ scalars, images/ adversarial image grids
    savedmodel/      the exported classifier (`tfrobust.export`)
    summary.json     final clean and PGD accuracy on the test split; its presence marks a finished run

Under a multi-worker strategy only the chief decides; every worker learns its verdict.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import tensorflow as tf

from tfrobust import config as config_lib
from tfrobust import distribute
from tfrobust.config import TrainConfig
from tfrobust.errors import ConfigError

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


def write_json(path: str, payload: Any) -> None:
    """Write JSON atomically (temporary file in the same directory, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _changed_settings(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """The settings that differ from the saved run's and that a rerun may not change."""
    try:
        saved_json = config_lib.to_json(config_lib.from_json(saved))
    except (ConfigError, TypeError, ValueError):
        saved_json = saved
    current = config_lib.to_json(config)
    return sorted(k for k in set(saved_json) | set(current)
                  if k not in config_lib.RESUMABLE and saved_json.get(k) != current.get(k))


def prepare(config: TrainConfig) -> bool:
    """Create or check the run directory; True when an unfinished run there is to be continued.

    A directory that is not a tfrobust run is never touched. A finished run, or one with a
    different configuration, is replaced only with `overwrite`.
    """
    run_dir = config.run_dir()
    config_path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        if not os.path.isfile(config_path):
            raise ConfigError(f"output directory {run_dir!r} exists, is not empty and holds no tfrobust run; "
                              "choose another --output_dir")
        if config.overwrite:
            shutil.rmtree(run_dir)
        else:
            try:
                with open(config_path) as f:
                    saved = json.load(f)
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot read {config_path}: {e}; pass --overwrite to replace the run") from None
            changed = _changed_settings(saved, config)
            if os.path.exists(os.path.join(run_dir, SUMMARY_FILE)) and saved.get("epochs") == config.epochs:
                raise ConfigError(f"{run_dir!r} holds a finished run; pass --overwrite to replace it, or another --output_dir")
            if changed:
                raise ConfigError(f"{run_dir!r} holds a run with different {', '.join(changed)}; "
                                  "pass --overwrite to replace it, or another --output_dir")
            if not config.resume:
                raise ConfigError(f"{run_dir!r} holds an unfinished run and --noresume was given; "
                                  "pass --overwrite to replace it")
            write_json(config_path, config_lib.to_json(config))
            return True
    os.makedirs(run_dir, exist_ok=True)
    write_json(config_path, config_lib.to_json(config))
    return False


def prepare_on_chief(config: TrainConfig, strategy: tf.distribute.Strategy) -> bool:
    """`prepare` on the chief; every worker learns its verdict (fresh run or continue)."""
    status, error = 0, None  # 0: refused, 1: fresh run, 2: continue
    if distribute.is_chief(strategy):
        try:
            status = 2 if prepare(config) else 1
        except ConfigError as e:
            error = e
    status = distribute.broadcast_from_chief(strategy, status)
    if error is not None:
        raise error
    if status == 0:
        raise ConfigError(f"the chief worker refused the run directory {config.run_dir()!r}; see its error")
    return status == 2
