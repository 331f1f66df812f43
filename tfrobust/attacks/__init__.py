"""Attacks: pure, traceable functions of `(logits_fn, x, y, ...)` returning adversarial inputs.

The package is a namespace of modules; import the module and call its functions
(`from tfrobust.attacks import apgd` then `apgd.apgd(...)`):

    ball        the threat model: norms, projection onto the eps ball, ascent directions, random starts
    objectives  what an attack maximizes (CE, margin, DLR, targeted DLR, TRADES' KL) and `LogitsFn`
    gradients   the input gradient, with its per-example rescale under mixed float16
    subbatch    misclassified examples, and gathering/scattering the examples still attacked
    pgd         PGD and FGSM
    apgd        Auto-PGD: APGD-CE, APGD-DLR and APGD-T
    square      the Square attack (score-based, no gradients)
    langevin    ATENT's Langevin step and start
"""
