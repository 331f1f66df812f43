"""The run-directory protocol: what a run directory holds, when a rerun continues it, when it is
refused, and what --overwrite may remove.

    config.json      the configuration (`tfrobust.config.to_json`), written first; a rerun must match it
                     except for the settings marked resumable to continue the run
    checkpoints/     tf.train checkpoints numbered by optimizer step (model, optimizer, RNG state; with weight
                     averaging also `weight_average`); checkpoints/best/ the best-validation-PGD checkpoint
                     (best-STEP, never rotated away) and best.json (its epoch, step and accuracy)
    logs/            TensorBoard: train/ and validation/ scalars, images/ adversarial image grids, hparams/
                     the configuration and final accuracies for the HParams dashboard
    savedmodel/      the exported classifier (`tfrobust.export`; the weight averages when averaging is on)
    savedmodel_best/ the classifier of the best validation PGD accuracy (runs with a validation split)
    history.json     every finished epoch's metrics (train and validation), across resumes
    summary.json     final clean and PGD accuracy on the test split (last and best model); its presence marks a
                     finished run
    .lock            the lock of the process writing the run (`RunLock`: PID, host, start time)

A run is its contents, not its path: moved or copied, it continues from its new place. On resume
the checkpoints are checked (`tfrobust.checkpoints.repair`): a damaged one is set aside, never
trusted, and a damaged history.json or summary.json is kept aside as NAME.corrupt-N, never
silently replaced.

Under a multi-worker strategy only the chief decides; every worker learns its verdict.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import tensorflow as tf

from tfrobust import checkpoints, distribute, files
from tfrobust import config as config_lib
from tfrobust.config import TrainConfig
from tfrobust.errors import ConfigError
from tfrobust.layout import CONFIG_FILE, HISTORY_FILE, LOCK_FILE, SUMMARY_FILE

BEST_DIR = os.path.join("checkpoints", "best")  # the best-validation checkpoint (best-STEP) and best.json
# config.json names its format, so a directory is taken for a tfrobust run only if it is one.
FORMAT_KEY, FORMAT, FORMAT_VERSION_KEY, FORMAT_VERSION = "format", "tfrobust.run", "format_version", 1
# What a run writes: --overwrite removes these and nothing else. Temporary files of a killed write
# (.tmp-*, an export's .export-* staging and its .old) included.
RUN_ENTRIES = (CONFIG_FILE, SUMMARY_FILE, HISTORY_FILE, "checkpoints", "logs", "savedmodel", "savedmodel_best",
               "evaluation", LOCK_FILE, "*.json.corrupt-*",
               ".tmp-*", ".export-*", "savedmodel.old", "savedmodel_best.old")
_STALE = (".tmp-*", ".export-*", "savedmodel.old", "savedmodel_best.old")


def _config_payload(config: TrainConfig) -> dict[str, Any]:
    return {FORMAT_KEY: FORMAT, FORMAT_VERSION_KEY: FORMAT_VERSION, **config_lib.to_json(config)}


def read_config(run_dir: str) -> dict[str, Any] | None:
    """The saved settings of the tfrobust run in `run_dir` (config.json without its format keys),
    or None if `run_dir` holds no tfrobust run. config.json files of versions before the format
    marker count when every key is a setting."""
    path = os.path.join(run_dir, CONFIG_FILE)
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict):
        return None
    if payload.get(FORMAT_KEY) == FORMAT:
        return {k: v for k, v in payload.items() if k not in (FORMAT_KEY, FORMAT_VERSION_KEY)}
    known = {s.name for s in config_lib.SPECS}
    if {"method", "dataset", "model"} <= set(payload) <= known:
        return payload
    return None


def _remove_run(run_dir: str, keep: tuple[str, ...] = ()) -> None:
    """Remove what a run wrote in `run_dir` (RUN_ENTRIES) and nothing else (nor `keep`)."""
    for entry in os.listdir(run_dir):
        if files.matches(entry, RUN_ENTRIES) and entry not in keep:
            path = os.path.join(run_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def _remove_stale(run_dir: str) -> None:
    """Temporary files a killed run left (staging of an export, half-written JSON)."""
    for entry in os.listdir(run_dir):
        if files.matches(entry, _STALE):
            path = os.path.join(run_dir, entry)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def _changed_settings(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """The settings that differ from the saved run's and that a rerun may not change."""
    try:
        saved_json = config_lib.to_json(config_lib.from_json(saved))
    except (ConfigError, TypeError, ValueError):
        saved_json = saved
    current = config_lib.to_json(config)
    return sorted(k for k in set(saved_json) | set(current)
                  if k not in config_lib.RESUMABLE and saved_json.get(k) != current.get(k))


def _finished_epochs(run_dir: str, saved: dict[str, Any]) -> int | None:
    """The epochs the run in `run_dir` was finished for (its summary.json), or None if unfinished.
    Summaries of earlier versions name no epochs: the saved config's then."""
    try:
        with open(os.path.join(run_dir, SUMMARY_FILE)) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    return summary.get("epochs", saved.get("epochs")) if isinstance(summary, dict) else None


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class RunLock(files.DirectoryLock):
    """The lock of the one process that writes a run (`files.DirectoryLock` on `RUN/.lock`)."""

    def __init__(self, run_dir: str):
        super().__init__(run_dir, LOCK_FILE, what="run")


def _keep_aside(path: str) -> str:
    """Rename `path` to PATH.corrupt-N, N the first free number (never over an earlier one)."""
    n = 1
    while os.path.exists(f"{path}.corrupt-{n}"):
        n += 1
    os.replace(path, f"{path}.corrupt-{n}")
    return f"{os.path.basename(path)}.corrupt-{n}"


def _set_aside_corrupt_json(run_dir: str, warn) -> None:
    """A history.json or summary.json that does not read as a JSON object is renamed to
    NAME.corrupt-N (kept for the user, never silently replaced), with one warning line."""
    for name in (HISTORY_FILE, SUMMARY_FILE):
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                ok = isinstance(json.load(f), dict)
        except (OSError, ValueError):
            ok = False
        if not ok:
            kept = _keep_aside(path)
            warn(f"warning: {path!r} was damaged; kept as {kept}"
                 + ("; the epochs it held are missing from the new history" if name == HISTORY_FILE else ""))


def _repair_checkpoints(run_dir: str, warn) -> None:
    """Check the run's checkpoints and its best checkpoint before anything is restored."""
    for directory, name in ((os.path.join(run_dir, "checkpoints"), "ckpt"), (os.path.join(run_dir, BEST_DIR), "best")):
        try:
            repaired = checkpoints.repair(directory, name)
        except ConfigError:
            if name == "best":  # the run goes on without its best model: best.json is kept aside with it
                _set_aside_best(directory, warn)
                continue
            raise
        for prefix, reason in repaired.set_aside.items():
            warn(f"warning: checkpoint {prefix!r} is damaged ({reason}); set aside as "
                 f"{checkpoints.CORRUPT_PREFIX}{os.path.basename(prefix)}.*, continuing from {repaired.latest!r}")
        if repaired.index_rebuilt and not repaired.set_aside:
            warn(f"warning: the checkpoint list {os.path.join(directory, checkpoints.INDEX_FILE)!r} was missing or "
                 f"damaged; rebuilt from the checkpoint files (latest {repaired.latest!r})")


def _set_aside_best(directory: str, warn) -> None:
    for _, prefix in checkpoints.on_disk(directory, "best"):
        checkpoints.set_aside(prefix)
    state = os.path.join(directory, "best.json")
    if os.path.exists(state):
        _keep_aside(state)
    warn(f"warning: the best checkpoint in {directory!r} does not restore; set aside, and the best model is chosen "
         "again from the epochs still to run")


def prepare(config: TrainConfig, lock: RunLock | None = None, warn=None) -> bool:
    """Create or check the run directory; True when an unfinished run there is to be continued.

    A directory that is not a tfrobust run is never touched. A finished run, or one with a
    different configuration, is replaced only with `overwrite`. With `lock`, it is taken before
    anything in the directory is changed (and held by the caller until the run ends).
    """
    run_dir = config.run_dir()
    config_path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"output directory {run_dir!r} is an existing file; choose another --output_dir")
    try:
        return _prepare(config, run_dir, config_path, lock, warn or _warn)
    except OSError as e:
        where = e.filename or run_dir
        raise ConfigError(f"cannot write the run directory {where!r}: {files.os_error_text(e)}") from None


def _prepare(config: TrainConfig, run_dir: str, config_path: str, lock: RunLock | None, warn) -> bool:
    entries = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    if entries and all(files.matches(e, (*_STALE, LOCK_FILE)) for e in entries):
        entries = []  # only the runner's own leftovers (a first write that failed): a fresh run
    if entries:
        saved = read_config(run_dir)
        if saved is None:
            raise ConfigError(f"output directory {run_dir!r} exists, is not empty and holds no tfrobust run; "
                              "choose another --output_dir")
        if config.overwrite:
            files.check_output_dir(run_dir, RUN_ENTRIES, overwrite=True, what="run")
            if lock is not None:  # after every refusal: a refused directory gets no lock file
                lock.acquire()
            _remove_run(run_dir, keep=(LOCK_FILE,))
        else:
            changed = _changed_settings(saved, config)
            if _finished_epochs(run_dir, saved) == config.epochs:
                raise ConfigError(f"{run_dir!r} holds a finished run; pass --overwrite to replace it, "
                                  "or another --output_dir")
            if changed:
                raise ConfigError(f"{run_dir!r} holds a run with different {', '.join(changed)}; "
                                  "pass --overwrite to replace it, or another --output_dir")
            if not config.resume:
                raise ConfigError(f"{run_dir!r} holds an unfinished run and --noresume was given; "
                                  "pass --overwrite to replace it")
            if lock is not None:
                lock.acquire()
            _repair_checkpoints(run_dir, warn)
            _set_aside_corrupt_json(run_dir, warn)
            _remove_stale(run_dir)
            files.write_json(config_path, _config_payload(config))
            return True
    os.makedirs(run_dir, exist_ok=True)
    if lock is not None and not lock.held:
        lock.acquire()
    _remove_stale(run_dir)
    files.write_json(config_path, _config_payload(config))
    return False


def prepare_on_chief(config: TrainConfig, strategy: tf.distribute.Strategy) -> tuple[bool, RunLock | None]:
    """`prepare` on the chief, which takes the run's lock (returned; release it when the run
    ends); every worker learns its verdict (fresh run or continue)."""
    status, error, lock = 0, None, None  # 0: refused, 1: fresh run, 2: continue
    if distribute.is_chief(strategy):
        lock = RunLock(config.run_dir())
        try:
            status = 2 if prepare(config, lock) else 1
        except ConfigError as e:
            error = e
            lock.release()
            lock = None
    status = distribute.broadcast_from_chief(strategy, status)
    if error is not None:
        raise error
    if status == 0:
        raise ConfigError(f"the chief worker refused the run directory {config.run_dir()!r}; see its error")
    return status == 2, lock
