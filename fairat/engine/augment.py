"""Batched tensor augmentations: the standard crop/flip, and the hard-example family.

Why batched: per-image Python (PIL transforms in a DataLoader) dominates the cost of a small model's
training step on CPU and starves a GPU. Every function here draws its randomness for the whole batch
at once from an explicit ``torch.Generator`` (repeatable runs, exact resume) and works on
(N, C, H, W) float tensors in [0, 1]; outputs keep shape, dtype and the [0, 1] range.

Mixing augmentations (CutMix, Mixup) also mix labels, so they take and return probability targets
(N, K).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def _uniform(n: int, gen: torch.Generator, device: torch.device, low=0.0, high=1.0) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool,
                     gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by ``padding`` pixels, then a random horizontal flip."""
    n, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen, device=x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def _box_masks(n: int, h: int, w: int, area: torch.Tensor, gen: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """(N, 1, H, W) bool masks of one square-ish box per sample covering about ``area`` of it."""
    side_h = (area.sqrt() * h).round().long().clamp(0, h)
    side_w = (area.sqrt() * w).round().long().clamp(0, w)
    cy = (torch.rand(n, generator=gen, device=device) * h).long()
    cx = (torch.rand(n, generator=gen, device=device) * w).long()
    y0 = (cy - side_h // 2).clamp(0, h)
    x0 = (cx - side_w // 2).clamp(0, w)
    y1 = (y0 + side_h).clamp(0, h)
    x1 = (x0 + side_w).clamp(0, w)
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    inside = ((ys >= y0[:, None, None]) & (ys < y1[:, None, None])
              & (xs >= x0[:, None, None]) & (xs < x1[:, None, None]))
    return inside[:, None]


def cutout(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
           strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cutout (DeVries & Taylor, 2017): zero one box of up to 1/4 of the image (at strength 1)."""
    n, _, h, w = x.shape
    area = _uniform(n, gen, x.device, 0.5, 1.0) * 0.25 * min(strength, 2.0)
    mask = _box_masks(n, h, w, area.clamp(max=0.5), gen, x.device)
    return x.masked_fill(mask, 0.0), y


def cutmix(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
           strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., 2019) within the batch; labels mixed by the pasted area.

    The pasted area is Uniform(0, 0.5 * strength) of the image, so the original keeps at least half.
    """
    n, _, h, w = x.shape
    partner = torch.randperm(n, generator=gen, device=x.device)
    area = _uniform(n, gen, x.device) * 0.5 * min(strength, 2.0)
    mask = _box_masks(n, h, w, area.clamp(max=1.0), gen, x.device)
    kept = 1.0 - mask.float().mean((1, 2, 3))
    mixed = torch.where(mask, x[partner], x)
    return mixed, kept[:, None] * y + (1 - kept[:, None]) * y[partner]


def mixup(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
          strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., 2018) within the batch; the original keeps weight >= 1 - 0.5*strength."""
    n = x.shape[0]
    partner = torch.randperm(n, generator=gen, device=x.device)
    lam = 1.0 - _uniform(n, gen, x.device) * 0.5 * min(strength, 2.0)
    lam = lam.clamp(min=0.0)
    mixed = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partner]
    return mixed, lam[:, None] * y + (1 - lam[:, None]) * y[partner]


# --- AutoAugment-style policy ----------------------------------------------------------------
# Batched, per-sample random version of AutoAugment's operation set (Cubuk et al., 2019): every
# sample gets two operations drawn uniformly, each with a random sign and a magnitude up to the
# maximum below times ``strength``. Geometric operations are fused into one affine warp per sample.

def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (b + factor[:, None, None, None] * (a - b)).clamp(0, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


ColourOp = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

COLOUR_OPS: dict[str, ColourOp] = {
    "identity": lambda x, m: x,
    "brightness": lambda x, m: _blend(x, torch.zeros_like(x), 1 + 0.9 * m),
    "contrast": lambda x, m: _blend(x, _grey(x).mean((1, 2, 3), keepdim=True).expand_as(x), 1 + 0.9 * m),
    "color": lambda x, m: _blend(x, _grey(x).expand_as(x), 1 + 0.9 * m),
    "sharpness": lambda x, m: _blend(x, _smooth(x), 1 + 0.9 * m),
    "solarize": lambda x, m: torch.where(x >= (1 - m.abs())[:, None, None, None], 1 - x, x),
    "posterize": lambda x, m: _posterize(x, m),
    "autocontrast": lambda x, m: _autocontrast(x),
    "invert": lambda x, m: 1 - x,
}
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _smooth(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
    c = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(c, 1, 3, 3), groups=c)


def _posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    bits = (8 - 4 * m.abs()).round().clamp(4, 8)
    levels = (2 ** bits)[:, None, None, None]
    return torch.floor(x * (levels - 1e-3)) / (levels - 1)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-6), x)


def _affine(x: torch.Tensor, ops: torch.Tensor, mags: torch.Tensor) -> torch.Tensor:
    """One fused affine warp per sample; ``ops`` index GEOMETRIC_OPS (-1: none)."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    angle = torch.where(ops == 0, mags * math.radians(30), torch.zeros_like(mags))
    cos, sin = angle.cos(), angle.sin()
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, 0, 1] += torch.where(ops == 1, mags * 0.3, torch.zeros_like(mags))
    theta[:, 1, 0] += torch.where(ops == 2, mags * 0.3, torch.zeros_like(mags))
    theta[:, 0, 2] = torch.where(ops == 3, mags * 0.9, torch.zeros_like(mags))  # 0.9 = 45% shift
    theta[:, 1, 2] = torch.where(ops == 4, mags * 0.9, torch.zeros_like(mags))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def autoaugment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                strength: float = 1.0, n_ops: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``n_ops`` random AutoAugment-family operations per sample (labels unchanged)."""
    names = list(COLOUR_OPS) + list(GEOMETRIC_OPS)
    n = x.shape[0]
    for _ in range(n_ops):
        op = torch.randint(0, len(names), (n,), generator=gen, device=x.device)
        sign = torch.where(torch.rand(n, generator=gen, device=x.device) < 0.5, -1.0, 1.0)
        mag = sign.to(x.dtype) * _uniform(n, gen, x.device) * min(strength, 2.0) * 0.5
        geo = op - len(COLOUR_OPS)
        if bool((geo >= 0).any()):
            x = torch.where((geo >= 0)[:, None, None, None], _affine(x, geo.clamp(min=-1), mag), x)
        for k, name in enumerate(COLOUR_OPS):
            rows = (op == k).nonzero().squeeze(1)
            if name != "identity" and rows.numel():
                x = x.index_copy(0, rows, COLOUR_OPS[name](x[rows], mag[rows]).clamp(0, 1))
    return x, y


Augmentation = Callable[[torch.Tensor, torch.Tensor, torch.Generator, float],
                        tuple[torch.Tensor, torch.Tensor]]

HARD_AUGMENTATIONS: dict[str, Augmentation] = {
    "autoaugment": autoaugment,
    "cutout": cutout,
    "cutmix": cutmix,
    "mixup": mixup,
    "cropflip": lambda x, y, gen, strength: (x, y),  # copies get only the standard crop/flip
}


def augment_hard(x: torch.Tensor, y: torch.Tensor, names: tuple[str, ...], gen: torch.Generator,
                 strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Give every sample one augmentation drawn uniformly from ``names``.

    Samples that drew the same mixing augmentation are mixed among themselves, so a hard example is
    only ever mixed with another hard example. ``y`` is (N, K) probability targets.
    """
    unknown = [name for name in names if name not in HARD_AUGMENTATIONS]
    if unknown:
        raise ValueError(f"fairat.augment: unknown augmentation(s) {unknown}; "
                         f"known: {sorted(HARD_AUGMENTATIONS)}")
    pick = torch.randint(0, len(names), (x.shape[0],), generator=gen, device=x.device)
    x_out, y_out = x.clone(), y.clone()
    for k, name in enumerate(names):
        rows = (pick == k).nonzero().squeeze(1)
        if rows.numel():
            xa, ya = HARD_AUGMENTATIONS[name](x[rows], y[rows], gen, strength)
            x_out[rows], y_out[rows] = xa.clamp(0, 1), ya
    return x_out, y_out
