"""The error type of tfrobust: every error a user can cause (a bad setting, file, dataset, model or
run directory) is a `TfrobustError` whose message is one line, so callers, and the runners, catch
one class. `exit_code` is the status the runners exit with (2 for bad input)."""

from __future__ import annotations


class TfrobustError(ValueError):
    """Base of every user-facing tfrobust error; the message is one line."""

    exit_code: int = 2


class ConfigError(TfrobustError):
    """A configuration or run directory that cannot be used."""


class RunWriteError(TfrobustError):
    """Writing to the run directory failed mid-run (disk full, permission lost); the last complete
    checkpoint is intact and rerunning the same command continues from it."""

    exit_code = 4
