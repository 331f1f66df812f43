"""SavedModel export of a trained classifier, and loading it back as a logits function.

The SavedModel has one endpoint, `serve`: images [N, H, W, C] in [0, 1] of the classifier's input
dtype (float32; float64 for a model built under floatx float64) -> {"logits", "probabilities"} of
the same dtype. It is written to a temporary sibling directory and renamed into
place, so a crash never leaves a half-written export that looks complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import keras
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from tfrobust import files
from tfrobust.errors import ConfigError
from tfrobust.layout import SAVED_MODEL_FILE

SERVING_ENDPOINT = "serve"
# What tf.saved_model.load raises for damaged or missing files: an unreadable file (OSError), a
# truncated variables index or data file (OpError, IndexError: "Read less bytes than requested"), an
# object graph that does not match (ValueError, LookupError, AssertionError).
_LOAD_ERRORS = (OSError, tf.errors.OpError, DecodeError, ValueError, LookupError, AssertionError, RuntimeError)


class ExportError(ConfigError):
    """A SavedModel that cannot be written or read as a tfrobust export (one line, exit code 2)."""


def export_classifier(classifier: keras.Model, path: str) -> str:
    """Write `classifier` as a SavedModel at `path` (replacing an existing export there)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    archive = keras.export.ExportArchive()
    archive.track(classifier)
    dtype = tf.as_dtype(classifier.inputs[0].dtype)
    spec = tf.TensorSpec([None, *classifier.input_shape[1:]], dtype, name="images")

    def serve(images):
        logits = tf.cast(classifier(images, training=False), dtype)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    archive.add_endpoint(SERVING_ENDPOINT, serve, input_signature=[spec])
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    os.chmod(staging, 0o777 & ~files.umask())  # mkdtemp makes 0700; the export follows the user's umask
    try:
        archive.write_out(staging, verbose=False)
        if os.path.exists(path):
            old = path + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            os.rename(staging, path)
            shutil.rmtree(old)
        else:
            os.rename(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load(path: str) -> Any:
    """`tf.saved_model.load(path)`, with a missing, truncated or corrupt SavedModel as one ExportError
    line: "cannot load the SavedModel in PATH: <what is wrong>; ...". saved_model.pb is parsed here
    first, so that a damaged graph and damaged variables are told apart."""
    where = f"cannot load the SavedModel in {path!r}"
    if not os.path.isdir(path):
        why = "not a directory" if os.path.exists(path) else "no such directory"
        raise ExportError(f"{where}: no SavedModel there ({why}); expected a directory with {SAVED_MODEL_FILE}")
    graph_file = os.path.join(path, SAVED_MODEL_FILE)
    try:
        with open(graph_file, "rb") as f:
            graph = saved_model_pb2.SavedModel.FromString(f.read())
    except FileNotFoundError:
        raise ExportError(f"{where}: no SavedModel there (no {SAVED_MODEL_FILE}); expected a directory with "
                          f"{SAVED_MODEL_FILE}") from None
    except OSError as e:
        raise ExportError(f"{where}: {SAVED_MODEL_FILE} cannot be read ({files.os_error_text(e)})") from None
    except DecodeError as e:
        raise ExportError(f"{where}: {SAVED_MODEL_FILE} is damaged ({_reason(e, path)}); "
                          "export the model again") from None
    if not graph.meta_graphs:
        raise ExportError(f"{where}: {SAVED_MODEL_FILE} holds no graph (it is empty or truncated); "
                          "export the model again")
    try:
        with _fingerprint_errors_as_one_line():
            return tf.saved_model.load(path)
    except _LOAD_ERRORS as e:
        raise ExportError(f"{where}: restoring it failed ({_reason(e, path)}), so its variables/ files (or "
                          f"{SAVED_MODEL_FILE}) are damaged or incomplete; export the model again") from None


def _reason(error: BaseException, path: str) -> str:
    """The first line of TensorFlow's message, paths inside the SavedModel relative to it."""
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    for prefix in sorted({path, os.path.abspath(path), os.path.normpath(path)}, key=len, reverse=True):
        text = text.replace(f"b'{prefix}{os.sep}", "'").replace(prefix + os.sep, "")
    return text if len(text) <= 200 else text[:197] + "..."


class _DropTraceback(logging.Filter):
    """Keep TensorFlow's "Fingerprint was found, but there was an error when reading the proto"
    (fingerprint.pb is metadata; loading continues) to its one line, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Fingerprint was found"):
            record.exc_info = record.exc_text = None
        return True


@contextlib.contextmanager
def _fingerprint_errors_as_one_line() -> Iterator[None]:
    logger, drop = logging.getLogger("absl"), _DropTraceback()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _serve(loaded: Any, path: str) -> Any:
    if not hasattr(loaded, SERVING_ENDPOINT):
        raise ExportError(f"SavedModel at {path!r} has no '{SERVING_ENDPOINT}' endpoint")
    return getattr(loaded, SERVING_ENDPOINT)


def _input_spec(serve: Any) -> tf.TensorSpec | None:
    signature = serve.concrete_functions[0].structured_input_signature[0] if serve.concrete_functions else ()
    return signature[0] if signature else None


def load_logits_fn(path: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """A differentiable function images -> logits (of `keras.config.floatx()`) from a SavedModel,
    which gets the images in its own input dtype: one written here (its
    `serve` returns a dict with `logits`) or by Keras' `model.export()` (its `serve` returns the
    model's output tensor, taken to be logits: the evaluation's checks flag probability outputs).
    Its `input_shape` is the per-example shape the model takes (None if its signature has none).
    A missing or damaged SavedModel raises ExportError (a ConfigError), one line."""
    loaded = load(path)
    serve = _serve(loaded, path)
    spec = _input_spec(serve)
    input_dtype = spec.dtype if spec is not None else tf.float32

    def logits_fn(images: tf.Tensor) -> tf.Tensor:
        out = serve(tf.cast(images, input_dtype))
        if isinstance(out, dict):
            if "logits" not in out:
                raise ExportError(f"the '{SERVING_ENDPOINT}' endpoint of {path!r} returns {sorted(out)}, no 'logits'")
            out = out["logits"]
        elif isinstance(out, (list, tuple)):
            raise ExportError(f"the '{SERVING_ENDPOINT}' endpoint of {path!r} returns {len(out)} outputs; "
                              "expected one tensor of logits")
        return tf.cast(out, keras.config.floatx())

    logits_fn.loaded = loaded  # keep the loaded object (and its variables) alive
    logits_fn.input_shape = tuple(spec.shape[1:]) if spec is not None else None
    return logits_fn


def input_shape(path: str) -> tuple[int, ...]:
    """The per-example input shape (H, W, C) the exported `serve` endpoint accepts."""
    spec = _input_spec(_serve(load(path), path))
    if spec is None:
        raise ExportError(f"the '{SERVING_ENDPOINT}' endpoint of the SavedModel at {path!r} has no input signature")
    return tuple(spec.shape[1:])
