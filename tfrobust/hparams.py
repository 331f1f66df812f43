"""TensorBoard HParams: a run's configuration and its final accuracies, so that a sweep can be
compared in the HParams dashboard (`tensorboard --logdir runs/`, tab HPARAMS).

Each run writes, into RUN/logs/hparams/, the experiment's declaration (`hp.hparams_config`: the
hyperparameters and the metrics), the session's values (`hp.hparams`, with the run directory as
trial id) and one scalar per metric at the final optimizer step. A resumed run replaces the
file its earlier sessions wrote there: TensorBoard keeps the first metadata it reads for a tag
(tensorboard/backend/event_processing/event_accumulator.py), so it would otherwise show the first
session's configuration (say epochs=1) beside the last session's accuracies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

HPARAMS_DIR = "hparams"


def flatten(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """HParams values (bool, int, float or str) from a config.json-style mapping: nested mappings
    become dotted names (method_options.beta), lists become comma-separated text, None 'auto'."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        elif isinstance(value, (list, tuple)):
            out[key] = ",".join(str(v) for v in value)
        elif value is None:
            out[key] = "auto"
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def write(logdir: str, config: Mapping[str, Any], metrics: Mapping[str, float], step: int,
          trial_id: str | None = None) -> str:
    """Write the HParams summaries of one run into `logdir`/hparams; returns that directory.
    `metrics` maps tags (e.g. test/adv_accuracy) to final values."""
    directory = os.path.join(logdir, HPARAMS_DIR)
    earlier = tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*"))
    values = flatten(config)
    writer = tf.summary.create_file_writer(directory)
    # record_if(True): a fit that ended in an exception leaves Keras' TensorBoard callback's
    # every-N-steps recording condition in force in this thread.
    with writer.as_default(), tf.summary.record_if(True):
        hp.hparams_config(hparams=[hp.HParam(name) for name in sorted(values)],
                          metrics=[hp.Metric(tag) for tag in sorted(metrics)])
        hp.hparams(values, trial_id=trial_id)
        for tag, value in sorted(metrics.items()):
            tf.summary.scalar(tag, float(value), step=step)
    writer.flush()
    writer.close()
    for path in earlier:  # only once the new session is written: a crash above keeps the old one
        tf.io.gfile.remove(path)
    return directory
