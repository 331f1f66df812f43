"""Run one runner's `main` on many argument lists in one process (TensorFlow is imported once).

    python tests/scripts/runner_cases.py RUNNER.py CASES.json

CASES.json is a list of argument lists. Prints a JSON list of {"code", "stderr"}: the exit code
(0 if main returned, "exception" for an uncaught exception, whose traceback is in stderr).
"""

import contextlib
import importlib.util
import io
import json
import os
import sys
import traceback

runner_path, cases_path = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.dirname(os.path.abspath(runner_path)))  # as when the runner runs as a script
spec = importlib.util.spec_from_file_location("runner_under_test", runner_path)
runner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner)

from absl import flags  # noqa: E402

from tfrobust import cli  # noqa: E402

program = os.path.basename(runner_path)
with open(cases_path) as f:
    cases = json.load(f)
results = []
for argv in cases:
    flags.FLAGS.unparse_flags()
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runner.main(cli.flags_parser(program)([program, *argv]))
        except SystemExit as e:
            code = e.code
        except BaseException:  # noqa: BLE001 - a traceback is what the test looks for
            code = "exception"
            err.write(traceback.format_exc())
    results.append({"code": code, "stderr": err.getvalue()})
print(json.dumps(results))
