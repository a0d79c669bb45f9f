"""nri-ray: distributed neural relational inference by fast modular meta-learning, on Ray."""

__version__ = "0.1.0"
