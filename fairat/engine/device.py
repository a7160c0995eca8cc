"""Which torch device a run uses: resolved once by the step, then passed down.

Kept apart from training so that evaluation (and its DVC stage) does not depend on the training
loop's code just to pick a device.
"""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was requested but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
