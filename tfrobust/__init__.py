"""tfrobust: adversarially robust training for TensorFlow/Keras."""

__version__ = "0.1.0"
