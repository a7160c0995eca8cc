"""Untrusted ImageFolder input, round 2: every PIL mode converted by rule or refused by name, a
pixel budget read from headers before decoding, two classes at least, no duplicate tar members.

Images are built byte by byte where PIL cannot write them (16-bit PNG, a 12000x12000 header).
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fairat.config import DataConfig
from fairat.engine import imagefolder
from fairat.engine.data import DataError, ImageSet, load_source, prepare, validate
from fairat.fronts.cli import main
from test_data import _imagefolder, _layout, _png, _write_folder, _write_tar


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _raw_png(pixels: np.ndarray, depth: int, colour_type: int) -> bytes:
    """A PNG written by hand: ``pixels`` (H, W[, samples]) at ``depth`` bits per sample."""
    height, width = pixels.shape[:2]
    dtype = ">u2" if depth == 16 else "u1"
    rows = b"".join(b"\0" + pixels[y].astype(dtype).tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))


def _header_only_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` grey, with a few bytes of pixel data:
    decoding it would fail as truncated, so a size refusal proves the header was read first."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _with_images(tmp_path: Path, images: dict[str, bytes], suffix: str = ".png") -> Path:
    """A two-class tree whose train/cat and test/cat images are ``images`` (name -> bytes) and
    whose dog images are plain copies of the first one, written as a folder."""
    first = next(iter(images.values()))
    files = {}
    for split in ("train", "test"):
        for stem, data in images.items():
            files[f"{split}/cat/{stem}{suffix}"] = data
        files[f"{split}/dog/0{suffix}"] = first
    return _write_folder(tmp_path / "imgs", files)


def _train_cat(tmp_path: Path, images: dict[str, bytes], suffix: str = ".png") -> torch.Tensor:
    """The decoded train/cat images (N, C, H, W), in file-name order."""
    train, _ = load_source(_imagefolder(_with_images(tmp_path, images, suffix)))
    return train.images[train.labels == 0]


# ----------------------------------------------------------------------------- 16-bit and modes

SIXTEEN = np.array([[0, 257, 4000, 32896], [40000, 65280, 65534, 65535]], dtype=np.uint16)


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    got = _train_cat(tmp_path, {"a": _raw_png(SIXTEEN, 16, 0)})
    assert got.shape == (1, 1, 2, 4)  # still one grey channel
    assert got[0, 0].tolist() == (SIXTEEN >> 8).tolist()  # 0 1 15 128 / 156 255 255 255


def test_sixteen_bit_tiff_and_pgm_match_the_png(tmp_path):
    tiff = Image.frombytes("I;16B", (4, 2), SIXTEEN.astype(">u2").tobytes())
    pgm = b"P5 4 2 65535\n" + SIXTEEN.astype(">u2").tobytes()  # PIL opens it as mode "I"
    for suffix, data in ((".tiff", _encoded(tiff, "TIFF")), (".pgm", pgm)):
        got = _train_cat(tmp_path / suffix[1:], {"a": data}, suffix)
        assert got[0, 0].tolist() == (SIXTEEN >> 8).tolist(), suffix


def test_sixteen_bit_colour_png_keeps_its_high_byte(tmp_path):
    rgb = np.stack([SIXTEEN, SIXTEEN[::-1], np.full_like(SIXTEEN, 1000)], axis=-1)
    got = _train_cat(tmp_path, {"a": _raw_png(rgb, 16, 2)})
    assert got[0].permute(1, 2, 0).tolist() == (rgb >> 8).tolist()


@pytest.mark.parametrize("mode, what", [("F", "32-bit float"), ("I", "32-bit integer")])
def test_float_and_32_bit_integer_images_refused_by_name(tmp_path, mode, what):
    im = Image.new(mode, (4, 2), 3)
    with pytest.raises(DataError, match=rf"train/cat/a\.tiff: mode '{mode}' \({what}"):
        _train_cat(tmp_path, {"a": _encoded(im, "TIFF")}, ".tiff")


def test_transparent_pixels_are_composited_over_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 128], [200, 100, 50, 0]]], np.uint8)
    la = np.array([[[200, 255], [200, 51], [200, 0]]], np.uint8)
    want_rgb = [[[200, 100, 50], [100, 50, 25], [0, 0, 0]]]  # round(c * a / 255)
    got = _train_cat(tmp_path / "rgba", {"a": _raw_png(rgba, 8, 6)})
    assert got[0].permute(1, 2, 0).tolist() == want_rgb
    palette = Image.new("P", (3, 1))
    palette.putpalette([200, 100, 50, 10, 20, 30])
    palette.putpixel((2, 0), 1)
    got = _train_cat(tmp_path / "p", {"a": _encoded(palette, "PNG", transparency=1)})
    assert got[0].permute(1, 2, 0).tolist() == [[[200, 100, 50], [200, 100, 50], [0, 0, 0]]]
    got = _train_cat(tmp_path / "la", {"a": _raw_png(la, 8, 4)})
    assert got.shape[1] == 1 and got[0, 0].tolist() == [[200, 40, 0]]


def test_other_modes_convert_as_pil_does(tmp_path):
    cmyk = Image.new("CMYK", (3, 2), (10, 200, 30, 40))
    bits = Image.new("1", (3, 2), 1)
    bits.putpixel((0, 0), 0)
    grey, colour = Image.new("L", (3, 2), 77), Image.new("RGB", (3, 2), (1, 2, 3))
    got = _train_cat(tmp_path, {"a": _encoded(bits, "TIFF"), "b": _encoded(cmyk, "TIFF"),
                                "c": _encoded(grey, "TIFF"), "d": _encoded(colour, "TIFF")},
                     ".tiff")
    assert got.shape == (4, 3, 2, 3)  # mixed grey and colour: grey fills all three channels
    assert got[0, :, 0].tolist() == [[0, 255, 255]] * 3
    assert got[1].permute(1, 2, 0).tolist() == np.asarray(cmyk.convert("RGB")).tolist()
    assert got[2].unique().tolist() == [77] and got[3, :, 0, 0].tolist() == [1, 2, 3]


def test_animated_gif_refused(tmp_path):
    frames = [Image.new("RGB", (4, 4), (80 * k, 0, 0)) for k in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"train/cat/a\.gif: it has more than one frame"):
        _train_cat(tmp_path, {"a": buf.getvalue()}, ".gif")


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_images_refused_by_name(tmp_path, cut):
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        data = _encoded(Image.fromarray(noise), fmt)
        data = data[: int(len(data) * cut)]
        with pytest.raises(DataError, match=r"cannot decode image .*train/cat/a\.png"):
            _train_cat(tmp_path / fmt, {"a": data})


# ------------------------------------------------------------------------------- pixel budget


def test_huge_header_refused_before_decoding(tmp_path):
    data = _header_only_png(12000, 12000)
    assert len(data) < 1000
    pattern = (r"image too large: .*train/cat/a\.png is 12000x12000 \(WxH, 144000000 pixels\), "
               rf"more than the {imagefolder.MAX_IMAGE_PIXELS} allowed")
    with pytest.raises(DataError, match=pattern):
        _train_cat(tmp_path, {"a": data})


def test_pil_bomb_error_becomes_one_clear_line(tmp_path):
    files = _layout(top="")
    files["train/cat/0001.png"] = _header_only_png(20000, 20000)  # past PIL's own refusal
    tar = _write_tar(tmp_path / "x.tar.gz", files)
    with pytest.raises(DataError, match=r"image too large: .*train/cat/0001\.png exceeds the "
                                        rf"{imagefolder.MAX_IMAGE_PIXELS}-pixel budget"):
        load_source(_imagefolder(tar))


def test_whole_set_budget_checked_before_allocating(tmp_path, monkeypatch):
    monkeypatch.setattr(imagefolder, "MAX_DECODED_BYTES", 500)  # 12 images of 4x4x3 = 576 bytes
    with pytest.raises(DataError, match=r"data set too large: 12 images of 4x4 .* need"):
        load_source(_imagefolder(_write_folder(tmp_path, _layout())))
    monkeypatch.setattr(imagefolder, "MAX_DECODED_BYTES", 576)
    assert len(load_source(_imagefolder(tmp_path))[0]) == 6


def test_prepare_cli_refuses_a_bomb_with_one_line(tmp_path, capsys):
    files = _layout(top="")
    files["train/cat/0000.png"] = _header_only_png(12000, 12000)  # first: sets the array size
    tar = _write_tar(tmp_path / "x.tar.gz", files)
    code = main(["prepare", "--params", str(Path(__file__).parents[2] / "params.yaml"),
                 "--out", str(tmp_path / "d"), "-S", "data.source=imagefolder",
                 "-S", f"data.root={tar}", "-S", "data.val_per_class=0"])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "d").exists()
    assert err.count("\n") == 1 and "image too large" in err and "12000x12000" in err
    assert "train/cat/0000.png" in err and str(imagefolder.MAX_IMAGE_PIXELS) in err


# ------------------------------------------------------------------------ classes, archives


def test_one_class_refused(tmp_path):
    root = _write_folder(tmp_path, _layout(classes=("cat",), top=""))
    with pytest.raises(DataError, match=r"one class folder \['cat'\].*at least two classes"):
        load_source(_imagefolder(root))
    one = ImageSet(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64),
                   ("only",))
    with pytest.raises(DataError, match="train: 1 class.*at least two classes"):
        validate(one, "train")


def test_prepare_refuses_a_one_class_source(monkeypatch):
    from fairat.engine import data

    def one_class(cfg):
        ds = ImageSet(torch.zeros(4, 1, 2, 2, dtype=torch.uint8),
                      torch.zeros(4, dtype=torch.int64), ("only",))
        return ds, ds

    monkeypatch.setitem(data.SOURCES, "digits", one_class)
    with pytest.raises(DataError, match="at least two classes"):
        prepare(DataConfig(val_per_class=0))


def test_tar_member_twice_refused(tmp_path):
    """tar keeps both copies and `tar x` keeps the last: a reviewer listing it sees the first."""
    files = _layout()
    later = tarfile.TarInfo("./top/train/cat/0000.png")
    data = _png(value=250)
    later.size = len(data)
    tar = _write_tar(tmp_path / "x.tar", files)
    with tarfile.open(tar, "a") as tf:
        tf.addfile(later, io.BytesIO(data))
    with pytest.raises(DataError, match=r"0000\.png.* appears more than once"):
        load_source(_imagefolder(tar))


# ------------------------------------------------------------------ other silent-loss paths


def test_only_listed_decoders_reach_untrusted_bytes(tmp_path):
    """A .png that is really a PCX (or EPS, PSD, TGA...) is refused, whatever its name says."""
    pcx = _encoded(Image.new("RGB", (4, 4), (9, 9, 9)), "PCX")
    with pytest.raises(DataError, match=r"train/cat/a\.png: not in a format fairat reads"):
        _train_cat(tmp_path, {"a": pcx})


def test_image_types_not_read_are_refused_not_skipped(tmp_path):
    files = _layout(top="")
    files["train/cat/0009.heic"] = b"ftypheic"  # before: silently left out of class cat
    with pytest.raises(DataError, match=r"train/cat/0009\.heic is a \.heic image.*PNG or JPEG"):
        load_source(_imagefolder(_write_tar(tmp_path / "x.tar.gz", files)))
    files = _layout(top="")
    files["train/cat/0009.jfif"] = _encoded(Image.new("RGB", (4, 4), (1, 2, 3)), "JPEG")
    train, _ = load_source(_imagefolder(_write_folder(tmp_path / "f", files)))
    assert train.counts() == [4, 3]  # the .jfif (a JPEG) is read


def test_image_outside_a_class_folder_refused(tmp_path):
    files = _layout(top="")
    files["test/loose.png"] = _png()  # before: silently ignored
    with pytest.raises(DataError, match=r"image test/loose\.png is not inside a class folder"):
        load_source(_imagefolder(_write_folder(tmp_path, files)))


def test_truncated_image_refused_even_when_pil_is_told_to_pad(tmp_path, monkeypatch):
    """Another library may set PIL's LOAD_TRUNCATED_IMAGES process-wide (PIL then pads the
    missing rows with grey); untrusted data is decoded strictly all the same."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    data = _encoded(Image.fromarray(noise), "PNG")
    with pytest.raises(DataError, match=r"cannot decode image .*train/cat/a\.png"):
        _train_cat(tmp_path, {"a": data[: len(data) // 2]})
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # put back as it was


def test_archive_image_bytes_capped(tmp_path, monkeypatch):
    files = _layout()
    tar = _write_tar(tmp_path / "x.tar.gz", files)
    monkeypatch.setattr(imagefolder, "MAX_ARCHIVE_IMAGE_BYTES", sum(map(len, files.values())) - 1)
    with pytest.raises(DataError, match=r"x\.tar\.gz: its image files exceed .* in all"):
        load_source(_imagefolder(tar))
    monkeypatch.setattr(imagefolder, "MAX_ARCHIVE_IMAGE_BYTES", sum(map(len, files.values())))
    assert len(load_source(_imagefolder(tar))[1]) == 6


def test_archive_entries_capped(tmp_path, monkeypatch):
    tar = _write_tar(tmp_path / "x.tar.gz", _layout())  # 12 file entries, no folder entries
    monkeypatch.setattr(imagefolder, "MAX_ARCHIVE_MEMBERS", 11)
    with pytest.raises(DataError, match=r"x\.tar\.gz: more than 11 archive entries"):
        load_source(_imagefolder(tar))
    monkeypatch.setattr(imagefolder, "MAX_ARCHIVE_MEMBERS", 12)
    assert len(load_source(_imagefolder(tar))[0]) == 6
