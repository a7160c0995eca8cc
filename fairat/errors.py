"""Errors the fronts turn into one clear line (exit code 2) instead of a traceback.

Why a module of their own: every front catches them, and importing this file must not pull in the
data readers or MLflow code that raise them.
"""


class DataError(ValueError):
    """Bad or missing data; the message names the file, class or value at fault."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: training stops before anything is written over a model."""


class RegistryError(RuntimeError):
    """Tracking or registry failure, or a refused approval; the message says what and why."""
