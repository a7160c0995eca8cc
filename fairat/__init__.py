"""fairat: fair adversarial training (FairAT) with its baselines, class-wise evaluation and MLOps."""

__version__ = "0.1.0"
