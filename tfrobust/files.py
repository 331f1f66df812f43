"""Files the user owns: atomic writes, modes that follow the umask, output directories that are
checked before anything is written, the lock of the one process writing a directory, and OS errors
as one line. No TensorFlow here."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import socket
import tempfile
import time
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


class DirectoryLock:
    """The lock of the one process that writes a directory: an exclusive `fcntl.flock` on a lock
    file in it, which the kernel releases when the process ends, however it ends (a SIGKILLed
    process leaves no stale lock). The file names the holder (PID, host, start time) for the
    message a second process gets. It locks on one host's kernel: a network filesystem shared by
    several hosts may not honour it."""

    def __init__(self, directory: str, name: str, what: str = "directory"):
        self.path = os.path.join(directory, name)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{self.what} {os.path.dirname(self.path)!r} is in use by {_holder(self.path)}; wait "
                              "for it to end or stop it (a stopped process releases it at once), or choose another "
                              "--output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_holder(lock_path: str) -> str | None:
    """Who holds the `DirectoryLock` whose file is `lock_path` ('PID N on HOST (since T)'), or None
    when no process does. Takes nothing and writes nothing."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(lock_path)
    finally:
        os.close(fd)  # closing releases a shared lock taken here
    return None


def _holder(lock_path: str) -> str:
    try:
        with open(lock_path) as f:
            info = json.load(f)
        return f"PID {info['pid']} on {info['host']} (since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
