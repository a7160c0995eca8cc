"""Data sources -> validated uint8 tensors + labels + class names, stratified splits, hashed files.

Why: every later step (training, evaluation, the gate) must see exactly the same examples for the
same params, and must be able to prove it. So a source is loaded into plain uint8 NCHW tensors,
checked, subset per class with seeded generators, and written as ``{train,val,test}.npz`` plus a
``manifest.json`` whose hashes are byte-for-byte reproducible (no timestamps, not even inside the
npz zip headers).

Sources are a registry (:data:`SOURCES`) of loaders ``DataConfig -> (train, test)``. Archives and
folders given to ``imagefolder`` are treated as untrusted: images are read into memory only,
nothing is extracted to disk, and links, devices and path-escaping names are refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fairat.config import DataConfig, to_dict
from fairat.io import atomic_path, sha256_bytes, sha256_file, write_json_atomic

DEFAULT_RAW_ROOT = "data/raw"  # torchvision sources only, when data.root is empty
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"
DIGITS_TEST_FRACTION = 0.2  # of each class; fixed seed so the test set never follows cfg.seed
_FIXED_SEED = 0
_MAX_IMAGE_BYTES = 64 << 20  # one image file; guards memory against a hostile archive
_IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip entry time: identical bytes for identical arrays


class DataError(ValueError):
    """Bad or missing data; the message names the file, class or value at fault."""


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images with integer labels.

    images: uint8 (N, C, H, W), contiguous, pixel values 0..255.
    labels: int64 (N,), values in [0, num_classes).
    class_names: one name per label index.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def counts(self) -> list[int]:
        """Examples per class, indexed by label."""
        return torch.bincount(self.labels, minlength=self.num_classes)[: self.num_classes].tolist()

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """The examples at ``indices`` (int64), in that order; tensors are copied, contiguous."""
        return ImageSet(self.images[indices].contiguous(), self.labels[indices].contiguous(),
                        self.class_names)


@dataclass(frozen=True, eq=False)
class PreparedData:
    """The three splits `prepare` hands on; ``val`` has 0 examples when val_per_class is 0."""

    train: ImageSet
    val: ImageSet
    test: ImageSet


# --------------------------------------------------------------------------------------- sources


def _from_arrays(images: np.ndarray, labels: Any, class_names: Sequence[str]) -> ImageSet:
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
                    torch.as_tensor(np.asarray(labels), dtype=torch.int64).contiguous(),
                    tuple(str(c) for c in class_names))


def _load_digits(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """UCI digits from scikit-learn: 1,797 8x8 grey images, a fixed 80/20 split per class."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.data * (255.0 / 16.0)).clip(0, 255)  # 0..16 -> 0..255
    images = pixels.astype(np.uint8).reshape(-1, 1, 8, 8)
    full = _from_arrays(images, bunch.target, [str(d) for d in range(10)])
    test_idx = _fraction_indices(full.labels, full.num_classes, DIGITS_TEST_FRACTION, _FIXED_SEED)
    is_test = torch.zeros(len(full), dtype=torch.bool)
    is_test[test_idx] = True
    return full.subset(torch.nonzero(~is_test).flatten()), full.subset(test_idx)


def _fraction_indices(labels: torch.Tensor, num_classes: int, fraction: float,
                      seed: int) -> torch.Tensor:
    """Sorted indices of ``round(fraction * n_c)`` seeded-random examples of every class c."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=gen)[: round(fraction * len(idx))]])
    return torch.sort(torch.cat(picked)).values


def _torchvision_split(name: str, cfg: DataConfig, train: bool) -> Any:
    """Construct a torchvision data set, turning "missing" and "download failed" into DataError."""
    import torchvision.datasets as tvd

    root = cfg.root or DEFAULT_RAW_ROOT
    split = "train" if train else "test"
    try:
        if name == "svhn":
            return tvd.SVHN(root=root, split=split, download=cfg.download)
        cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
        return cls(root=root, train=train, download=cfg.download)
    except (RuntimeError, OSError, ValueError) as err:
        hint = ("or use `data.source: imagefolder` with a local archive "
                "(data.root: path/to/images.tar.gz)")
        if not cfg.download:
            raise DataError(f"data.source {name}: {split} data not found under {root!r} and "
                            f"data.download is false; set `data.download: true` on a machine with "
                            f"internet, {hint} ({err})") from err
        raise DataError(f"data.source {name}: download into {root!r} failed: {err}; check the "
                        f"network, {hint}") from err


def _load_cifar(name: str, cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10/100: ``.data`` is NHWC uint8, labels in ``.targets``."""
    sets = [_torchvision_split(name, cfg, train) for train in (True, False)]
    train, test = (_from_arrays(np.asarray(ds.data).transpose(0, 3, 1, 2), ds.targets, ds.classes)
                   for ds in sets)
    return train, test


def _load_svhn(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """SVHN: ``.data`` is already NCHW uint8, labels in ``.labels`` (digit 0 is label 0)."""
    sets = [_torchvision_split("svhn", cfg, train) for train in (True, False)]
    names = [str(d) for d in range(10)]
    train, test = (_from_arrays(ds.data, ds.labels, names) for ds in sets)
    return train, test


# ---------------------------------------------------------------- imagefolder (untrusted inputs)

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


def _is_image(parts: tuple[str, ...]) -> bool:
    return PurePosixPath(parts[-1]).suffix.lower() in _IMAGE_SUFFIXES


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
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                parts = _safe_parts(member.name, tree.origin)
                if member.isdir():
                    if parts and not _hidden(parts):  # "./" of `tar -C dir .` has no parts
                        tree.dirs.add(parts)
                    continue
                if not member.isreg():
                    kind = _TAR_KINDS.get(member.type, f"type {member.type!r}")
                    raise DataError(f"{path}: refusing archive member {member.name!r}: it is a "
                                    f"{kind}, not a regular file")
                if _hidden(parts) or not _is_image(parts):
                    continue
                if member.size > _MAX_IMAGE_BYTES:
                    raise DataError(f"{path}: member {member.name!r} is {member.size} bytes, "
                                    f"more than the {_MAX_IMAGE_BYTES} allowed for one image")
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
        data = f.read(_MAX_IMAGE_BYTES + 1)
    if len(data) > _MAX_IMAGE_BYTES:
        raise DataError(f"{path}: more than the {_MAX_IMAGE_BYTES} bytes allowed for one image")
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
                    if _is_image(parts):
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


@dataclass
class _Decoder:
    """Decodes images into one preallocated array, enforcing one size across all splits."""

    origin: str
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
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                self._check_size(name, im.size)
                grey = im.mode in _GREY_MODES
                return np.asarray(im.convert("L" if grey else "RGB")), grey
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot decode image {name}: {err}") from err

    def _check_size(self, name: str, size: tuple[int, int]) -> None:
        if self.size is None:
            self.size, self.first = size, name
        elif size != self.size:
            raise DataError(f"image size mismatch: {name} is {size[0]}x{size[1]} (WxH) but "
                            f"{self.first} is {self.size[0]}x{self.size[1]}")


def _load_imagefolder(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """``<top?>/{train,test}/<class>/<image>`` from a folder or tar archive, decoded with PIL.

    Class names are the sorted class folders of ``train``; ``test`` must have the same ones.
    Images are RGB, or single-channel when every image is greyscale.
    """
    tree = _open_tree(cfg.root)
    dirs = tree.all_dirs()
    prefix = _split_prefix(tree, dirs)
    train_files = _class_files(tree, dirs, prefix + ("train",))
    test_files = _class_files(tree, dirs, prefix + ("test",))
    names = tuple(train_files)
    if set(test_files) != set(names):
        extra, missing = sorted(set(test_files) - set(names)), sorted(set(names) - set(test_files))
        raise DataError(f"{tree.origin}: test classes differ from train classes: only in test "
                        f"{extra}, missing from test {missing}")
    decoder = _Decoder(tree.origin)
    arrays, labels = [], []
    for by_class in (train_files, test_files):
        paths = [p for c in names for p in by_class[c]]
        arrays.append(decoder.decode(paths, tree.files))
        labels.append([k for k, c in enumerate(names) for _ in by_class[c]])
    channels = slice(0, 1) if decoder.all_grey else slice(0, 3)
    train, test = (_from_arrays(a[..., channels].transpose(0, 3, 1, 2), y, names)
                   for a, y in zip(arrays, labels))
    return train, test


SOURCES: dict[str, Callable[[DataConfig], tuple[ImageSet, ImageSet]]] = {
    "digits": _load_digits,
    "cifar10": partial(_load_cifar, "cifar10"),
    "cifar100": partial(_load_cifar, "cifar100"),
    "svhn": _load_svhn,
    "imagefolder": _load_imagefolder,
}


def load_source(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """The full (train, test) sets of ``cfg.source``, before any subsetting."""
    if cfg.source not in SOURCES:
        raise DataError(f"data.source: {cfg.source!r} is not one of {sorted(SOURCES)}")
    return SOURCES[cfg.source](cfg)


# ------------------------------------------------------------------------ validation, subsetting


def _check_structure(ds: ImageSet, split: str) -> None:
    """dtype, shape and label-range checks that also hold for an empty split."""
    if not isinstance(ds.images, torch.Tensor) or ds.images.dtype != torch.uint8:
        raise DataError(f"{split}: images must be a uint8 tensor, got "
                        f"{getattr(ds.images, 'dtype', type(ds.images).__name__)}")
    if ds.images.ndim != 4 or min(ds.images.shape[1:]) < 1:
        raise DataError(f"{split}: images must have shape (N, C, H, W), got "
                        f"{tuple(ds.images.shape)}")
    if not isinstance(ds.labels, torch.Tensor) or ds.labels.dtype != torch.int64:
        raise DataError(f"{split}: labels must be an int64 tensor, got "
                        f"{getattr(ds.labels, 'dtype', type(ds.labels).__name__)}")
    if ds.labels.ndim != 1 or ds.labels.shape[0] != ds.images.shape[0]:
        raise DataError(f"{split}: labels shape {tuple(ds.labels.shape)} does not match "
                        f"{ds.images.shape[0]} images")
    if not ds.class_names or len(set(ds.class_names)) != len(ds.class_names):
        raise DataError(f"{split}: class names must be non-empty and unique, got {ds.class_names}")
    bad = (ds.labels < 0) | (ds.labels >= ds.num_classes)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise DataError(f"{split}: label {int(ds.labels[i])} at index {i} is outside "
                        f"[0, {ds.num_classes}) ({ds.num_classes} classes)")


def validate(ds: ImageSet, split: str) -> None:
    """Raise DataError unless ``ds`` is well-formed and every class has at least one example."""
    _check_structure(ds, split)
    for name, n in zip(ds.class_names, ds.counts()):
        if n == 0:
            raise DataError(f"{split}: class {name!r} has no examples")


def _class_label(c: int, class_names: Sequence[str] | None) -> str:
    return f"{class_names[c]!r}" if class_names is not None else str(c)


def stratified_indices(labels: torch.Tensor, per_class: int, num_classes: int, seed: int, *,
                       class_names: Sequence[str] | None = None) -> torch.Tensor:
    """Sorted int64 indices of ``per_class`` seeded-random examples of every class.

    Deterministic for a given seed and label vector. ``class_names`` only improves the error
    message raised when a class has fewer than ``per_class`` examples.
    """
    if per_class < 0:
        raise DataError(f"per_class must be >= 0, got {per_class}")
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise DataError(f"class {_class_label(c, class_names)} has {len(idx)} examples, "
                            f"fewer than the {per_class} per class requested")
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.sort(torch.cat(picked)).values if picked else torch.zeros(0, dtype=torch.int64)


def _derive_seed(seed: int, stream: str) -> int:
    """Independent, stable seed per purpose, so the val choice does not echo the subset choice."""
    digest = hashlib.sha256(f"{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _per_class_subset(ds: ImageSet, per_class: int | None, seed: int, split: str) -> ImageSet:
    if per_class is None:
        return ds
    try:
        idx = stratified_indices(ds.labels, per_class, ds.num_classes, seed,
                                 class_names=ds.class_names)
    except DataError as err:
        raise DataError(f"{split}: {err}") from None
    return ds.subset(idx)


def _hold_out(train: ImageSet, per_class: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split ``per_class`` examples of every class off ``train``; both parts keep sorted order."""
    for name, n in zip(train.class_names, train.counts()):
        if n <= per_class:
            raise DataError(f"data.val_per_class={per_class}: class {name!r} has only {n} training "
                            f"examples, which would leave none to train on")
    val_idx = stratified_indices(train.labels, per_class, train.num_classes, seed)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val_idx] = False
    return train.subset(torch.nonzero(keep).flatten()), train.subset(val_idx)


def prepare(cfg: DataConfig) -> PreparedData:
    """Load, validate and subset ``cfg.source``.

    Train: ``train_per_class`` per class (cfg.seed), then ``val_per_class`` per class of those held
    out as validation (disjoint). Test: ``test_per_class`` per class chosen with a fixed seed, not
    cfg.seed, so runs with different training seeds are evaluated on the same test examples.
    Every split keeps the source order (sorted indices).
    """
    train, test = load_source(cfg)
    validate(train, "train")
    validate(test, "test")
    if train.class_names != test.class_names or train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"train and test disagree: classes {train.class_names} vs "
                        f"{test.class_names}, image shape {tuple(train.images.shape[1:])} vs "
                        f"{tuple(test.images.shape[1:])}")
    train = _per_class_subset(train, cfg.train_per_class, _derive_seed(cfg.seed, "train"), "train")
    test = _per_class_subset(test, cfg.test_per_class, _derive_seed(_FIXED_SEED, "test"), "test")
    if cfg.val_per_class > 0:
        train, val = _hold_out(train, cfg.val_per_class, _derive_seed(cfg.seed, "val"))
    else:
        val = train.subset(torch.zeros(0, dtype=torch.int64))
    return PreparedData(train=train, val=val, test=test)


def channel_stats(ds: ImageSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in [0, 1] pixel units, std floored at 1e-3 (constant channels).

    Accumulated in float64 chunks so a 50,000-image set never needs a full float copy.
    """
    if len(ds) == 0:
        raise DataError("channel_stats: the data set is empty")
    total = torch.zeros(ds.images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for chunk in torch.split(ds.images, 4096):
        x = chunk.to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    n = ds.images[:, 0].numel()
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


# ---------------------------------------------------------------------------------- files, hashes


def _content_sha256(ds: ImageSet) -> str:
    """Hash of what a split holds: shape, class names, image bytes, little-endian label bytes."""
    meta = json.dumps({"shape": list(ds.images.shape), "class_names": list(ds.class_names)},
                      sort_keys=True)
    return sha256_bytes(meta.encode(), ds.images.contiguous().numpy().tobytes(),
                        ds.labels.numpy().astype("<i8").tobytes())


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz that np.load reads, with fixed zip metadata: same arrays, same bytes.

    np.savez stamps the current time into every zip entry, which would make file hashes differ
    between identical runs; stored (not deflated) entries also keep bytes independent of zlib.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def save_prepared(data: PreparedData, out_dir: str | Path, cfg: DataConfig) -> dict[str, Any]:
    """Write ``{train,val,test}.npz`` and ``manifest.json`` atomically; return the manifest.

    The manifest holds the source, the DataConfig, class names, image shape (C, H, W) and per
    split: n, counts keyed by class name, content sha256 and npz file sha256; ``content_hash``
    covers all splits' content. Same data and cfg -> byte-identical files and manifest.
    """
    out = Path(out_dir)
    names = data.train.class_names
    splits: dict[str, Any] = {}
    for split in SPLITS:
        ds: ImageSet = getattr(data, split)
        path = out / f"{split}.npz"
        _write_npz(path, {"images": ds.images.contiguous().numpy(),
                          "labels": ds.labels.numpy().astype("<i8"),
                          "class_names": np.array(ds.class_names, dtype=str)})
        splits[split] = {"n": len(ds), "counts": dict(zip(names, ds.counts())),
                         "sha256": _content_sha256(ds), "file": path.name,
                         "file_sha256": sha256_file(path)}
    manifest = {
        "source": cfg.source,
        "config": to_dict(cfg),
        "class_names": list(names),
        "image_shape": list(data.train.images.shape[1:]),
        "splits": splits,
        "content_hash": sha256_bytes(*(f"{s}:{splits[s]['sha256']}\n".encode() for s in SPLITS)),
    }
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return manifest


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace): stable across runs."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return sha256_bytes(canonical.encode("utf-8"))


def load_split(path: str | Path) -> ImageSet:
    """One split written by :func:`save_prepared` (no pickles); DataError if missing/malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found (run `fairat prepare` first)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted({"images", "labels", "class_names"} - set(npz.files))
            if missing:
                raise DataError(f"{path}: malformed split file, missing key(s) {missing}")
            images, labels, names = npz["images"], npz["labels"], npz["class_names"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: malformed split file: {err}") from err
    if images.dtype != np.uint8 or not np.issubdtype(labels.dtype, np.integer) \
            or names.dtype.kind != "U" or names.ndim != 1:
        raise DataError(f"{path}: malformed split file: images {images.dtype}, labels "
                        f"{labels.dtype}, class_names {names.dtype} (want uint8, int, str)")
    ds = _from_arrays(images, labels.astype(np.int64), names.tolist())
    _check_structure(ds, str(path))
    return ds


def load_prepared(out_dir: str | Path) -> PreparedData:
    """Load the three splits; when ``manifest.json`` is there, check each split's content hash."""
    out = Path(out_dir)
    data = PreparedData(*(load_split(out / f"{s}.npz") for s in SPLITS))
    for split in SPLITS:
        if getattr(data, split).class_names != data.train.class_names:
            raise DataError(f"{out}: {split}.npz class names differ from train.npz")
    manifest_path = out / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            recorded = {s: json.loads(manifest_path.read_text())["splits"][s]["sha256"]
                        for s in SPLITS}
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{manifest_path}: malformed manifest: {err!r}") from err
        for split in SPLITS:
            if _content_sha256(getattr(data, split)) != recorded[split]:
                raise DataError(f"{out}/{split}.npz does not match the sha256 in {manifest_path} "
                                f"(stale or modified data; re-run prepare)")
    return data
