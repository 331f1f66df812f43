"""The names of the files a run directory and a SavedModel hold, defined once for the modules that
write them (`tfrobust.rundir`, `tfrobust.export`) and those that read them without TensorFlow
(`tfrobust.evaluation.model_source`, `runners/evaluate.py`). What each holds: `tfrobust.rundir`."""

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.json"  # every finished epoch's logs, across resumes
LOCK_FILE = ".lock"  # the lock of the process writing the run (`tfrobust.files.DirectoryLock`)
SAVEDMODEL_DIR = "savedmodel"
SAVED_MODEL_FILE = "saved_model.pb"  # TensorFlow's name for a SavedModel's graph
