"""SavedModel export of a trained classifier, and loading it back as a logits function.

The SavedModel has one endpoint, `serve`: images [N, H, W, C] in [0, 1] of the classifier's input
dtype (float32; float64 for a model built under floatx float64) -> {"logits", "probabilities"} of
the same dtype. It is written to a temporary sibling directory and renamed into
place, so a crash never leaves a half-written export that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

import keras
import tensorflow as tf

from tfrobust import files
from tfrobust.errors import TfrobustError

SERVING_ENDPOINT = "serve"


class ExportError(TfrobustError):
    """A SavedModel that cannot be written or read as a tfrobust export."""


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


def load_logits_fn(path: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """A differentiable function images -> logits (of `keras.config.floatx()`) from a SavedModel,
    which gets the images in its own input dtype: one written here (its
    `serve` returns a dict with `logits`) or by Keras' `model.export()` (its `serve` returns the
    model's output tensor, taken to be logits: the evaluation's checks flag probability outputs)."""
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ExportError(f"no SavedModel at {path!r} (expected a directory with saved_model.pb)")
    loaded = tf.saved_model.load(path)
    if not hasattr(loaded, SERVING_ENDPOINT):
        raise ExportError(f"SavedModel at {path!r} has no '{SERVING_ENDPOINT}' endpoint")
    serve = getattr(loaded, SERVING_ENDPOINT)
    signature = serve.concrete_functions[0].structured_input_signature[0] if serve.concrete_functions else ()
    input_dtype = signature[0].dtype if signature else tf.float32

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
    return logits_fn


def input_shape(path: str) -> tuple[int, ...]:
    """The per-example input shape (H, W, C) the exported `serve` endpoint accepts."""
    loaded = tf.saved_model.load(path)
    spec = getattr(loaded, SERVING_ENDPOINT).concrete_functions[0].structured_input_signature[0][0]
    return tuple(spec.shape[1:])
