"""Errors the fronts turn into one clear line (exit code 2) instead of a traceback.

Why a module of their own: every front catches them, and importing this file must not pull in the
data readers or MLflow code that raise them.
"""


class _Redacted(Exception):
    """An error whose message never holds a credential: a URL's password or a secret from the
    environment is masked when the error is made (:func:`fairat.redact.redact`), so no printer,
    log or MLflow tag it reaches later can leak it."""

    def __init__(self, *args: object) -> None:
        from fairat.redact import redact

        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class DataError(_Redacted, ValueError):
    """Bad or missing data; the message names the file, class or value at fault."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: training stops before anything is written over a model."""


class RegistryError(_Redacted, RuntimeError):
    """Tracking or registry failure, or a refused approval; the message says what and why."""
