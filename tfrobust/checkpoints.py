"""Checkpoints that are checked before they are trusted.

A `tf.train.CheckpointManager` directory holds `NAME-STEP.index` / `NAME-STEP.data-*` pairs and a
`checkpoint` index file that lists them. Files can be damaged after they were written (a copy
cut short, a disk error, a user's editor): TensorFlow then fails deep in a restore with
`IndexError: Read less bytes than requested`, and a garbage index makes the manager see no
checkpoint at all, so a rerun starts again from step 0 and rotates the intact checkpoints away.

`repair` makes a directory safe to resume from: it reads every tensor of the checkpoints newest
first, keeps the first that reads completely, sets the damaged newer ones aside under a
`corrupt-` prefix (kept, never rotated into), and rewrites the index from the files on disk.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import tensorflow as tf

from tfrobust import files
from tfrobust.errors import ConfigError

INDEX_FILE = "checkpoint"  # the CheckpointManager's list of its checkpoints
CORRUPT_PREFIX = "corrupt-"  # damaged checkpoints are renamed to corrupt-NAME-STEP.*


@dataclasses.dataclass
class Repair:
    """What `repair` found: the checkpoint to resume from (None: the directory holds none), the
    damaged ones it set aside ({prefix: reason}), and whether it rewrote the index."""

    latest: str | None
    set_aside: dict[str, str] = dataclasses.field(default_factory=dict)
    index_rebuilt: bool = False


def on_disk(directory: str, name: str = "ckpt") -> list[tuple[int, str]]:
    """(step, prefix) of every `NAME-STEP` checkpoint with an index file in `directory`, newest first."""
    pattern = re.compile(rf"^{re.escape(name)}-(\d+)\.index$")
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(directory, m.group(0)[: -len(".index")]))
             for m in map(pattern.match, entries) if m]
    return sorted(found, reverse=True)


def damage(prefix: str) -> str | None:
    """Why the checkpoint `prefix` cannot be restored (one line), or None when every tensor it
    lists reads completely."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as error:  # noqa: BLE001 (IndexError, DataLossError, OSError, ... from the reader)
        text = getattr(error, "message", None) or str(error) or type(error).__name__
        return " ".join(text.split())[:160]
    return None


def listed(directory: str) -> list[str] | None:
    """The checkpoint prefixes the index file lists (as full paths), or None when the index is
    missing or unreadable."""
    logger = logging.getLogger("tensorflow")  # which logs a garbage index's ParseError: the caller says it
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # noqa: BLE001 (a directory in its place, an unreadable file)
        return None
    finally:
        logger.setLevel(level)
    if state is None:
        return None
    return [p if os.path.isabs(p) else os.path.join(directory, p) for p in state.all_model_checkpoint_paths]


def write_index(directory: str, prefixes: list[str]) -> None:
    """Write the index file listing `prefixes` (oldest first; the last is the latest), with paths
    relative to `directory` as the manager writes them, so the directory can be moved."""
    names = [os.path.basename(p) for p in prefixes]
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    files.write_text(os.path.join(directory, INDEX_FILE), "\n".join(lines) + "\n")


def set_aside(prefix: str) -> list[str]:
    """Rename every file of the checkpoint `prefix` to `corrupt-NAME...`, keeping it out of the
    manager's rotation; returns the new paths."""
    directory, base = os.path.split(prefix)
    moved = []
    for entry in sorted(os.listdir(directory)):
        if entry == base + ".index" or entry.startswith(base + ".data-"):
            target = os.path.join(directory, CORRUPT_PREFIX + entry)
            os.replace(os.path.join(directory, entry), target)
            moved.append(target)
    return moved


def repair(directory: str, name: str = "ckpt") -> Repair:
    """Make `directory` safe to resume from (see the module docstring).

    Raises ConfigError, with every file left as it was, when checkpoint files are there but none
    restores: a rerun must never silently start again from step 0.
    """
    candidates = on_disk(directory, name)
    if not candidates:
        return Repair(latest=None)
    reasons: dict[str, str] = {}
    good = None
    for _, prefix in candidates:
        reason = damage(prefix)
        if reason is None:
            good = prefix
            break
        reasons[prefix] = reason
    if good is None:
        shown = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in reasons.items())
        raise ConfigError(f"no checkpoint in {directory!r} restores ({shown}); every file is kept: restore them "
                          "from a backup, or pass --overwrite to start the run again")
    for prefix in reasons:
        set_aside(prefix)
    kept = [p for _, p in sorted(on_disk(directory, name))]  # oldest first; `good` is the newest now
    rebuilt = bool(reasons) or listed(directory) != kept
    if rebuilt:
        write_index(directory, kept)
    return Repair(latest=good, set_aside=reasons, index_rebuilt=rebuilt)


def restore(parts: dict[str, object], prefix: str, optional: tuple[str, ...] = ()) -> list[str]:
    """Restore `prefix` into the objects `parts` (the keyword arguments of the run's
    `tf.train.Checkpoint`), every object matched. The parts named in `optional` may be missing from
    the file (checkpoints of earlier versions): they are then left as they are. Returns the optional
    parts that were missing. Raises ConfigError when the file does not fit."""
    keys = {k.split("/")[0] for k, _ in tf.train.list_variables(prefix)}
    missing = [a for a in optional if a not in keys]
    try:
        tf.train.Checkpoint(**{k: v for k, v in parts.items() if k not in missing}).restore(
            prefix).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        text = " ".join(str(error).split())[:200]
        raise ConfigError(f"checkpoint {prefix!r} does not fit this run's model and optimizer: {text}") from None
    return missing
