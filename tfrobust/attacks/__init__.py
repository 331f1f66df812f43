"""Attacks: pure, traceable functions of `(logits_fn, x, y, ...)` returning adversarial inputs."""

from tfrobust.attacks import objectives
from tfrobust.attacks.gradient import NORMS, RANDOM_STARTS, fgsm, input_gradient, pgd, project
from tfrobust.attacks.langevin import langevin_start, langevin_step

__all__ = ["NORMS", "RANDOM_STARTS", "fgsm", "input_gradient", "langevin_start", "langevin_step",
           "objectives", "pgd", "project"]

# The functions shadow their modules' names as package attributes; import module contents with
# `from tfrobust.attacks.apgd import ...` (that goes through sys.modules and still works).
from tfrobust.attacks.apgd import apgd, apgd_targeted  # noqa: E402
from tfrobust.attacks.square import square  # noqa: E402

__all__ += ["apgd", "apgd_targeted", "square"]
