"""What a model's training-mode forward pass does besides computing logits: draw random numbers
(dropout, noise, random augmentation) and move batch-norm statistics.

ATENT (`tfrobust.methods.atent`) uses both. Its reference runs two training-mode passes at each
Langevin iterate, the sampler's and the loss's. When the forward is deterministic one pass gives
both, and batch norm's moving statistics can still move as the reference's two passes move them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras


def _random_layers() -> tuple[type, ...]:
    return (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout)


def _sublayers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer inside `model`, nested models and layers that hold layers included."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def stochastic_layers(model: keras.layers.Layer) -> list[str]:
    """The names of the layers of `model` whose training-mode output is random: those that own a
    `keras.random.SeedGenerator` (Dropout and its spatial forms, GaussianNoise, GaussianDropout,
    AlphaDropout, the random preprocessing layers), except a dropout with rate 0.

    A custom random layer is seen when it subclasses one of these or owns a SeedGenerator; one
    that draws from `tf.random` directly cannot be seen here: name the behaviour explicitly where
    it matters (e.g. `atent_shared_forward=false`)."""
    found = []
    for layer in _sublayers(model):
        owns_generator = any(isinstance(v, keras.random.SeedGenerator) for v in vars(layer).values())
        if (owns_generator or isinstance(layer, _random_layers())) and getattr(layer, "rate", None) != 0:
            found.append(layer.name)
    return found


def batch_norms(model: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """The batch-norm layers of `model` whose moving statistics a training-mode pass moves."""
    return [layer for layer in _sublayers(model) if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def batch_norm_updates(model: keras.layers.Layer, count: int) -> Iterator[None]:
    """Within this context, a training-mode pass of `model` moves each batch norm's moving
    statistics as `count` consecutive passes over the same batch would:

        m <- momentum^count m + (1 - momentum^count) b

    (b the batch statistic; one update with momentum^count equals `count` updates with momentum,
    up to rounding). count 0 leaves them where they are. Keras reads `momentum` when it builds the
    graph, so the context must enclose the pass's tracing (or the eager call). Layers with batch
    renormalization are refused: their statistics follow another rule."""
    if count == 1:
        yield
        return
    layers = batch_norms(model)
    renorm = [layer.name for layer in layers if layer.renorm]
    if renorm:
        raise ValueError(f"batch_norm_updates cannot count passes of batch renormalization layers {renorm}")
    saved = [layer.momentum for layer in layers]
    try:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum ** count
        yield
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
