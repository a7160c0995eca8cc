"""One way to seed every random stream: ``derive_seed(seed, *stream)``.

Why one function: a run's randomness (data subsets, the validation split, each epoch's batch plan
and augmentation, every attack's random start) must be repeatable from the params seed alone and
the streams must not echo one another. Ad-hoc arithmetic (``seed * prime + offset``) makes two
streams collide for some seeds; hashing the seed with a stream name and its indices does not.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *stream: object) -> int:
    """A stable 63-bit seed for the stream named by ``stream`` (e.g. ``"epoch", 3, "plan"``).

    The same (seed, stream) always gives the same value, on every machine and Python version.
    """
    text = "/".join(str(part) for part in (seed, *stream))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def generator(seed: int, *stream: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed` of ``stream``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *stream))
