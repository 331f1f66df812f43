"""Attacks: pure, traceable functions of `(logits_fn, x, y, ...)` returning adversarial inputs."""

from tfrobust.attacks import objectives
from tfrobust.attacks.gradient import NORMS, RANDOM_STARTS, fgsm, input_gradient, pgd, project

__all__ = ["NORMS", "RANDOM_STARTS", "fgsm", "input_gradient", "objectives", "pgd", "project"]
