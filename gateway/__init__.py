"""TensorGate: a model-serving gateway for the Open Inference Protocol."""

__version__ = "0.1.0"
