"""What every params section shares: the named error and the range checks of single knobs.

Why a module of its own: a training method's config section lives in its method module
(``fairat/engine/methods/<name>.py``), which ``fairat.config`` reads while it is being imported;
the method module therefore takes its checks from here, never from ``fairat.config`` itself.
"""

from __future__ import annotations

from typing import Any, Literal

BaseMethod = Literal["pgd_at", "trades"]  # the adversarial objectives a fair-AT method trains with


class ConfigError(ValueError):
    """A params file or value is invalid; the message names the offending key and value."""


def check(ok: bool, key: str, value: Any, why: str) -> None:
    """Raise ConfigError ``key: value why`` unless ``ok`` (the loader adds the section path)."""
    if not ok:
        raise ConfigError(f"{key}: {value!r} {why}")


def check_range(obj: Any, key: str, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> None:
    """``obj.key`` must lie in the interval from ``low`` to ``high`` (open where said)."""
    value = getattr(obj, key)
    ok = (value > low if low_open else value >= low) and (value < high if high_open else
                                                         value <= high)
    check(ok, key, value, f"must lie in {'(' if low_open else '['}{low:g}, {high:g}"
                          f"{')' if high_open else ']'}")


def check_positive_or_none(key: str, value: int | None) -> None:
    check(value is None or value >= 1, key, value, "must be a positive integer or null")
