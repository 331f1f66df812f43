"""What an attack maximizes: functions `(logits, labels) -> per-example loss`.

Objectives that need more than the adversarial logits (the clean prediction, a target class) are
built by a factory that closes over it, so every attack sees the same two-argument signature.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from tfrobust import losses

Objective = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

cross_entropy: Objective = losses.cross_entropy
margin: Objective = losses.margin


def kl_from(clean_logits: tf.Tensor) -> Objective:
    """KL(p(x) || p(x')) to a fixed clean prediction: the TRADES attack objective."""
    clean_logits = tf.stop_gradient(clean_logits)
    return lambda logits, labels: losses.kl_divergence(clean_logits, logits)


OBJECTIVES = {"ce": cross_entropy, "margin": margin}


def by_name(name: str) -> Objective:
    """The label-only objective called `name` ('ce' or 'margin')."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown attack objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]
