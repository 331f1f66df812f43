"""Files the user owns: atomic JSON writes, modes that follow the umask, output directories that are
checked before anything is written, and OS errors as one line."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import tempfile
from typing import Any

from tfrobust.errors import ConfigError


def write_json(path: str, payload: Any) -> None:
    """Write JSON atomically (`write_text`)."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def write_text(path: str, text: str | bytes) -> None:
    """Write a file atomically: a temporary file in the same directory, flushed, then renamed over
    `path`, mode per the umask. On any failure (a full disk, a read-only mount) the temporary file
    is removed and `path` keeps its old contents."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a run's files follow the user's umask
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def umask() -> int:
    """The process's file-mode creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def os_error_text(error: OSError) -> str:
    """'Permission denied' for an OSError with an errno, else its message."""
    return os.strerror(error.errno) if error.errno else str(error)


def check_output_dir(path: str, owned: tuple[str, ...], overwrite: bool, what: str = "output") -> None:
    """Refuse (ConfigError) an output directory that cannot be written or would lose a user's files.

    A path naming a file, a directory holding anything not matching `owned` (the names the
    caller writes), or one holding earlier outputs without `overwrite` is refused; nothing is
    written here. A directory that does not exist yet needs a writable existing parent.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} directory {path!r} is an existing file; choose a directory")
    if os.path.isdir(path):
        entries = sorted(os.listdir(path))
        foreign = [e for e in entries if not matches(e, owned)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ConfigError(f"{what} directory {path!r} holds files tfrobust did not write ({shown}); "
                              "choose another directory")
        if entries and not overwrite:
            raise ConfigError(f"{what} directory {path!r} already holds results; pass --overwrite to replace "
                              "them, or choose another directory")
        target = path
    else:
        target = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(target):
            target = os.path.dirname(target)
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {target!r}: {os.strerror(unwritable_errno(target))}")


def unwritable_errno(path: str) -> int:
    """Why `path` cannot be written: EROFS on a read-only mount, else EACCES."""
    try:
        return errno.EROFS if os.statvfs(path).f_flag & os.ST_RDONLY else errno.EACCES
    except OSError:
        return errno.EACCES
