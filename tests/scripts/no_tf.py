"""Run a runner as `python RUNNER.py ARGS...` would, in a process that cannot import TensorFlow or
Keras: `no_tf.py RUNNER.py ARGS...`. Importing either raises ImportError("tensorflow imported before
the flags were checked"). Run by tests/test_flags_before_tf.py.
"""

import os
import runpy
import sys


class RefuseTensorFlow:
    """A meta-path finder that refuses tensorflow and keras (and their submodules)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ImportError(f"{name} imported before the flags were checked")
        return None


sys.meta_path.insert(0, RefuseTensorFlow())
runner = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(runner)))  # as when the runner runs as a script
runpy.run_path(runner, run_name="__main__")
