"""Parses every flagfile in flags/ with runners/train.py's flags and validates the configuration:
`parse_presets.py REPOSITORY_ROOT`. Prints one line per preset: file, method, dataset, model and the
sorted method-option names. Run by tests/test_presets.py (a fresh process: absl flags are global).
"""

import glob
import importlib.util
import os
import sys

root = sys.argv[1]
spec = importlib.util.spec_from_file_location("train_runner", os.path.join(root, "runners", "train.py"))
runner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner)

from tfrobust import training  # noqa: E402

for path in sorted(glob.glob(os.path.join(root, "flags", "*.cfg"))):
    runner.FLAGS.unparse_flags()
    runner.FLAGS(["train.py", "--flagfile=" + path])
    config = runner.config_from_flags()
    training.validate(config)
    print(os.path.basename(path), config.method, config.dataset, config.model, sorted(config.method_options))
