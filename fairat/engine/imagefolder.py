"""ImageFolder trees from a folder or a tar archive, read as untrusted input.

Why its own module: a data folder or archive may come from anyone, so this reader is security
code. Images are read into memory only, nothing is extracted to disk; links, devices, absolute or
``..`` member names and names that appear twice are refused; one image may not exceed a file size
cap nor, read from its header before any pixel is decoded, a pixel budget; the whole decoded set
may not exceed a memory budget; a folder walk never follows a symlink, not even one swapped in
after the walk; PIL modes are converted to 8 bits by rule or refused (:mod:`fairat.engine.pixels`);
a data set needs two classes. Nothing is left out silently: an image type fairat does not read, or
an image outside a class folder, is refused rather than skipped. Only the decoders in
:data:`PIL_FORMATS` see the bytes, and a truncated file is an error even where another library set
PIL to pad it. Every failure is a :class:`DataError` naming the file at fault.
"""

from __future__ import annotations

import io
import os
import tarfile
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np

from fairat.engine.pixels import check_single_frame, to_uint8
from fairat.errors import DataError

MAX_IMAGE_BYTES = 64 << 20  # one image file; guards memory against a hostile archive
# One image's width x height, read from its header before decoding: a 140 KB PNG can claim
# 12000x12000 (432 MB decoded, times every image). Below PIL's own bomb warning (89M pixels).
MAX_IMAGE_PIXELS = 4096 * 4096
# All decoded images of train and test together, as uint8 RGB; checked before the array is made.
MAX_DECODED_BYTES = 16 << 30
MAX_ARCHIVE_IMAGE_BYTES = 16 << 30  # image files an archive may hold (all read into memory)
# Entries of any kind in one archive: tarfile keeps every header in memory (~1 KB each), and a
# small .tar.gz can hold millions of empty ones. ImageNet's training set has 1.3 million.
MAX_ARCHIVE_MEMBERS = 2_000_000
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".gif",
                             ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
# The only PIL decoders an untrusted file may reach, whatever its name says: the rest (EPS runs
# Ghostscript; PCX, SGI, TGA, FLI, PSD... are rarely used and rarely hardened) are refused.
PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")  # JPEG opens MPO too
# Image files fairat does not read: refused by name rather than silently left out of their class.
_UNREAD_IMAGE_SUFFIXES = frozenset({".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".svg",
                                    ".ico", ".tga", ".psd", ".pcx", ".eps", ".qoi", ".dds",
                                    ".dng", ".cr2", ".nef", ".arw", ".raw"})
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


Reader = Callable[[], bytes]


@dataclass
class _Tree:
    """Directories and image files of a folder or archive, as relative path parts."""

    origin: str
    dirs: set[tuple[str, ...]]
    files: dict[tuple[str, ...], Reader]

    def all_dirs(self) -> set[tuple[str, ...]]:
        """Explicit directories plus every parent of a file (archives may omit dir entries)."""
        return self.dirs | {f[:i] for f in self.files for i in range(1, len(f))}


def _is_image(parts: tuple[str, ...], origin: str) -> bool:
    """Whether to read the file; an image type fairat does not read is refused, not skipped."""
    suffix = PurePosixPath(parts[-1]).suffix.lower()
    if suffix in _UNREAD_IMAGE_SUFFIXES:
        raise DataError(f"{origin}: {'/'.join(parts)} is a {suffix} image, which fairat does not "
                        f"read (it would silently be left out); convert it to PNG or JPEG")
    return suffix in _IMAGE_SUFFIXES


def _hidden(parts: tuple[str, ...]) -> bool:
    """Dot files and folders (``.DS_Store``, macOS ``._x.jpg`` forks) are never images."""
    return any(p.startswith(".") for p in parts)


def _safe_parts(name: str, origin: str) -> tuple[str, ...]:
    """Path parts of an archive member; absolute or ``..`` names are refused outright."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"{origin}: refusing archive member {name!r}: absolute or '..' paths "
                        f"could escape the data folder")
    return path.parts


_TAR_KINDS = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hard link",
              tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
              tarfile.FIFOTYPE: "fifo"}


def _tar_tree(path: Path) -> _Tree:
    """Read every image member of a tar archive into memory; nothing is written to disk."""
    tree = _Tree(str(path), set(), {})
    held = 0
    try:
        with tarfile.open(path, "r:*") as tf:
            for count, member in enumerate(tf, start=1):
                if count > MAX_ARCHIVE_MEMBERS:
                    raise DataError(f"{path}: more than {MAX_ARCHIVE_MEMBERS} archive entries "
                                    f"(fairat.engine.imagefolder.MAX_ARCHIVE_MEMBERS)")
                parts = _safe_parts(member.name, tree.origin)
                if member.isdir():
                    if parts and not _hidden(parts):  # "./" of `tar -C dir .` has no parts
                        tree.dirs.add(parts)
                    continue
                if not member.isreg():
                    kind = _TAR_KINDS.get(member.type, f"type {member.type!r}")
                    raise DataError(f"{path}: refusing archive member {member.name!r}: it is a "
                                    f"{kind}, not a regular file")
                if _hidden(parts) or not _is_image(parts, tree.origin):
                    continue
                if member.size > MAX_IMAGE_BYTES:
                    raise DataError(f"{path}: member {member.name!r} is {member.size} bytes, "
                                    f"more than the {MAX_IMAGE_BYTES} allowed for one image")
                held += member.size
                if held > MAX_ARCHIVE_IMAGE_BYTES:
                    raise DataError(f"{path}: its image files exceed {MAX_ARCHIVE_IMAGE_BYTES} "
                                    f"bytes in all (at member {member.name!r}); archives are "
                                    f"read into memory (fairat.engine.imagefolder."
                                    f"MAX_ARCHIVE_IMAGE_BYTES)")
                if parts in tree.files:  # tar keeps both; `tar x` and a listing disagree
                    raise DataError(f"{path}: refusing archive member {member.name!r}: "
                                    f"{'/'.join(parts)} appears more than once")
                handle = tf.extractfile(member)
                data = handle.read() if handle is not None else b""
                tree.files[parts] = partial(bytes, data)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable tar archive: {err}") from err
    return tree


def _read_nofollow(path: str) -> bytes:
    """Read a file without following a symlink swapped in after the walk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise DataError(f"{path}: more than the {MAX_IMAGE_BYTES} bytes allowed for one image")
    return data


def _folder_tree(root: Path) -> _Tree:
    """Walk a folder without following symlinks; files are read later, one at a time."""
    tree = _Tree(str(root), set(), {})
    stack: list[tuple[str, ...]] = [()]
    while stack:
        rel = stack.pop()
        with os.scandir(root.joinpath(*rel)) as entries:
            for entry in entries:
                parts = rel + (entry.name,)
                if entry.name.startswith("."):
                    continue
                if entry.is_symlink():
                    raise DataError(f"{root}: {'/'.join(parts)} is a symlink; symlinks are not "
                                    f"followed in data folders (copy the files instead)")
                if entry.is_dir(follow_symlinks=False):
                    tree.dirs.add(parts)
                    stack.append(parts)
                elif entry.is_file(follow_symlinks=False):
                    if _is_image(parts, tree.origin):
                        tree.files[parts] = partial(_read_nofollow, entry.path)
                else:
                    raise DataError(f"{root}: {'/'.join(parts)} is not a regular file")
    return tree


def _open_tree(root: str) -> _Tree:
    path = Path(root)
    if path.is_dir():
        return _folder_tree(path)
    if not path.is_file():
        raise DataError(f"data.root: {root!r} not found (expected a folder or a .tar.gz archive)")
    if not path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        raise DataError(f"data.root: {root!r} is neither a folder nor a tar archive "
                        f"({', '.join(_ARCHIVE_SUFFIXES)})")
    return _tar_tree(path)


def _split_prefix(tree: _Tree, dirs: set[tuple[str, ...]]) -> tuple[str, ...]:
    """Where ``train/`` and ``test/`` live: at the top, or under one single top-level folder."""
    if ("train",) in dirs:
        return ()
    tops = sorted({d[0] for d in dirs})
    if len(tops) == 1 and (tops[0], "train") in dirs:
        return (tops[0],)
    raise DataError(f"{tree.origin}: expected train/ and test/ folders at the top level or under a "
                    f"single top-level folder; found top-level folders {tops}")


def _class_files(tree: _Tree, dirs: set[tuple[str, ...]], base: tuple[str, ...],
                 ) -> dict[str, list[tuple[str, ...]]]:
    """Class name -> sorted image paths under ``base/<class>/`` (any depth below the class)."""
    if base not in dirs:
        raise DataError(f"{tree.origin}: no {'/'.join(base)}/ folder")
    depth = len(base)
    classes = {d[depth]: [] for d in dirs if len(d) > depth and d[:depth] == base}
    for f in tree.files:
        if len(f) == depth + 1 and f[:depth] == base:
            raise DataError(f"{tree.origin}: image {'/'.join(f)} is not inside a class folder "
                            f"(expected {'/'.join(base)}/<class>/<image>); it has no label")
        if len(f) > depth + 1 and f[:depth] == base:
            classes[f[depth]].append(f)
    if not classes:
        raise DataError(f"{tree.origin}: {'/'.join(base)}/ holds no class folders")
    for name, files in classes.items():
        if not files:
            raise DataError(f"{tree.origin}: class folder {'/'.join(base + (name,))}/ holds no "
                            f"images (class {name!r})")
        files.sort()
    return dict(sorted(classes.items()))


@contextmanager
def _strict_pil() -> Iterator[None]:
    """PIL as untrusted input needs it, whatever another library set process-wide: a truncated
    file is an error (``LOAD_TRUNCATED_IMAGES`` would fill the rest with grey), and PIL's own
    decompression-bomb warning is silenced (the pixel budget, lower, refuses those images)."""
    from PIL import Image, ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


@dataclass
class _Decoder:
    """Decodes images into one preallocated array, enforcing one size across all splits.

    Sizes come from each file's header (PIL opens lazily) and are checked against the pixel
    budget, the first image's size and, for the whole set, :data:`MAX_DECODED_BYTES` before any
    pixel is decoded or the array is allocated.
    """

    origin: str
    total: int  # images in train and test together
    size: tuple[int, int] | None = None  # PIL (width, height) of the first image
    first: str = ""
    all_grey: bool = True

    def decode(self, paths: list[tuple[str, ...]], files: dict[tuple[str, ...], Reader],
               ) -> np.ndarray:
        """(N, H, W, 3) uint8; greyscale images fill all three channels."""
        out: np.ndarray | None = None
        for i, parts in enumerate(paths):
            name = f"{self.origin}:{'/'.join(parts)}"
            pixels, grey = self._decode_one(name, files[parts]())
            if out is None:
                out = np.empty((len(paths), *pixels.shape[:2], 3), dtype=np.uint8)
            out[i] = pixels[..., None] if grey else pixels
            self.all_grey &= grey
        assert out is not None  # callers never pass an empty list
        return out

    def _decode_one(self, name: str, data: bytes) -> tuple[np.ndarray, bool]:
        from PIL import Image, UnidentifiedImageError

        if not data:
            raise DataError(f"cannot decode image {name}: the file is empty (0 bytes)")
        try:
            with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
                self._check_size(name, im.size)
                check_single_frame(name, im)
                return to_uint8(name, im)
        except DataError:
            raise
        except Image.DecompressionBombError as err:
            raise DataError(f"image too large: {name} exceeds the {MAX_IMAGE_PIXELS}-pixel "
                            f"budget per image ({err})") from None
        except UnidentifiedImageError:
            raise DataError(f"cannot decode image {name}: not in a format fairat reads "
                            f"({', '.join(PIL_FORMATS)}; {len(data)} bytes)") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"cannot decode image {name}: {err}") from err

    def _check_size(self, name: str, size: tuple[int, int]) -> None:
        width, height = size
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(f"image too large: {name} is {width}x{height} (WxH, "
                            f"{width * height} pixels), more than the {MAX_IMAGE_PIXELS} "
                            f"allowed per image (fairat.engine.imagefolder.MAX_IMAGE_PIXELS)")
        if self.size is None:
            need = self.total * width * height * 3
            if need > MAX_DECODED_BYTES:
                raise DataError(f"data set too large: {self.total} images of {width}x{height} "
                                f"({name}) need {need / 2**30:.1f} GiB decoded, more than the "
                                f"{MAX_DECODED_BYTES / 2**30:.0f} GiB allowed "
                                f"(fairat.engine.imagefolder.MAX_DECODED_BYTES)")
            self.size, self.first = size, name
        elif size != self.size:
            raise DataError(f"image size mismatch: {name} is {size[0]}x{size[1]} (WxH) but "
                            f"{self.first} is {self.size[0]}x{self.size[1]}")


def read_imagefolder(root: str) -> tuple[tuple[str, ...], list[tuple[np.ndarray, list[int]]]]:
    """``<top?>/{train,test}/<class>/<image>`` from a folder or tar archive, decoded with PIL.

    Returns (class names, [(train images (N, C, H, W) uint8, labels), (test images, labels)]).

    Class names are the sorted class folders of ``train`` (at least two); ``test`` must have the
    same ones. Images are RGB, or single-channel when every image is greyscale.
    """
    tree = _open_tree(root)
    dirs = tree.all_dirs()
    prefix = _split_prefix(tree, dirs)
    train_files = _class_files(tree, dirs, prefix + ("train",))
    test_files = _class_files(tree, dirs, prefix + ("test",))
    names = tuple(train_files)
    if set(test_files) != set(names):
        extra, missing = sorted(set(test_files) - set(names)), sorted(set(names) - set(test_files))
        raise DataError(f"{tree.origin}: test classes differ from train classes: only in test "
                        f"{extra}, missing from test {missing}")
    if len(names) < 2:
        raise DataError(f"{tree.origin}: {'/'.join(prefix + ('train',))}/ holds one class folder "
                        f"{list(names)}; a classifier needs at least two classes")
    total = sum(len(files) for by_class in (train_files, test_files) for files in by_class.values())
    decoder = _Decoder(tree.origin, total)
    arrays, labels = [], []
    with _strict_pil():
        for by_class in (train_files, test_files):
            paths = [p for c in names for p in by_class[c]]
            arrays.append(decoder.decode(paths, tree.files))
            labels.append([k for k, c in enumerate(names) for _ in by_class[c]])
    channels = slice(0, 1) if decoder.all_grey else slice(0, 3)
    return names, [(np.ascontiguousarray(a[..., channels].transpose(0, 3, 1, 2)), y)
                   for a, y in zip(arrays, labels)]
