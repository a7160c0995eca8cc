"""One opened PIL image -> 8-bit pixels, converted by rule or refused by name; never clipped.

Why its own module: ``Image.convert("L")`` clips 16-bit pixels (a 16-bit PNG becomes 99.8% white)
and ``convert("RGB")`` drops transparency, so the pixels a model trains on would silently differ
from the picture. Every PIL mode is mapped here, explicitly:

- ``L`` as is; ``1`` to 0/255; ``P``, ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``
  through PIL's conversion to RGB.
- 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``; ``I`` from PNG or PGM, which PIL uses
  for 16-bit samples there): the high byte, ``v >> 8``, as PIL itself does for 16-bit colour PNGs,
  so 8-bit data stored as 16-bit (``v = x * 257``) comes back exactly.
- Transparency (``LA``, ``RGBA``, ``PA``, or a PNG ``tRNS`` colour key): composited
  over black (:data:`ALPHA_BACKGROUND`), i.e. premultiplied; fully opaque pixels are unchanged.
- Refused with the reason: ``F`` (32-bit float) and ``I`` from other formats (e.g. a 32-bit
  TIFF), whose value range is unknown; any other mode; animated or multi-page files.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fairat.errors import DataError

ALPHA_BACKGROUND = 0  # transparent pixels become black: the premultiplied colour
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_SIXTEEN_BIT_AS_I = frozenset({"PNG", "PPM"})  # PIL opens their 16-bit grey as mode "I"
_AS_RGB = frozenset({"P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_WITH_ALPHA = frozenset({"LA", "RGBA", "PA"})
_SINGLE_FRAME_FORMATS = frozenset({"MPO"})  # a camera JPEG's extra frames are previews


def check_single_frame(name: str, im: Any) -> None:
    """Refuse an animated or multi-page file: only its first frame would be read.

    ``is_animated`` looks for a second frame only; ``n_frames`` would decode every GIF frame."""
    if getattr(im, "is_animated", False) and im.format not in _SINGLE_FRAME_FORMATS:
        raise DataError(f"cannot use image {name}: it has more than one frame (animated or "
                        f"multi-page {im.format}); save the one frame to train on")


def _composite(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour over :data:`ALPHA_BACKGROUND`, rounded; both uint8, alpha without a channel axis."""
    a = alpha.astype(np.uint32)
    if colour.ndim == 3:
        a = a[..., None]
    mixed = colour.astype(np.uint32) * a + ALPHA_BACKGROUND * (255 - a)
    return ((mixed + 127) // 255).astype(np.uint8)


def _sixteen_bit(name: str, im: Any) -> np.ndarray:
    """16-bit grey -> its high byte; a ``tRNS`` grey key becomes transparent (black)."""
    values = np.asarray(im).astype(np.int64)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > 0xFFFF:
        raise DataError(f"cannot use image {name}: 16-bit pixels out of range [{low}, {high}]")
    pixels = (values >> 8).astype(np.uint8)
    key = im.info.get("transparency")
    if isinstance(key, int):
        pixels[values == key] = ALPHA_BACKGROUND
    return pixels


def to_uint8(name: str, im: Any) -> tuple[np.ndarray, bool]:
    """(pixels, grey): (H, W) uint8 for greyscale images, (H, W, 3) uint8 for colour ones.

    ``name`` (the file) is in every refusal. Decoding happens here, so the caller checks the
    image's size from its header first.
    """
    mode = im.mode
    if mode in _SIXTEEN_BIT or (mode == "I" and im.format in _SIXTEEN_BIT_AS_I):
        return _sixteen_bit(name, im), True
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "32-bit float"
        raise DataError(f"cannot use image {name}: mode {mode!r} ({kind} pixels from "
                        f"{im.format or 'an unknown format'}) has no fixed value range; save it "
                        f"as 8- or 16-bit")
    if "transparency" in im.info and mode in ("1", "L", "P", "RGB"):
        mode = "LA" if mode in ("1", "L") else "RGBA"  # a tRNS colour key: PIL turns it into alpha
        im = im.convert(mode)
    if mode in _WITH_ALPHA:
        grey = mode == "LA"
        rgba = np.asarray(im.convert("LA" if grey else "RGBA"))
        colour = rgba[..., 0] if grey else rgba[..., :3]
        return _composite(colour, rgba[..., -1]), grey
    if mode in ("L", "1"):
        return np.asarray(im.convert("L")), True
    if mode in _AS_RGB:
        return np.asarray(im.convert("RGB")), False
    raise DataError(f"cannot use image {name}: PIL mode {mode!r} is not supported (supported: "
                    f"1, L, P, RGB, RGBA, LA, CMYK, YCbCr, LAB, HSV, 16-bit grey)")
