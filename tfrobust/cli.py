"""What the command-line runners share: quiet imports, one-line errors, absl flag parsing.

Import this before TensorFlow: it does not import it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Callable, NoReturn


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
