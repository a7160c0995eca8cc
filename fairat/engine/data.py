"""Data sources -> validated uint8 tensors + labels + class names, stratified splits, hashed files.

Why: every later step (training, evaluation, the gate) must see exactly the same examples for the
same params, and must be able to prove it. So a source is loaded into plain uint8 NCHW tensors,
checked, subset per class with seeded generators, and written as ``{train,val,test}.npz`` plus a
``manifest.json`` whose hashes are byte-for-byte reproducible (no timestamps, not even inside the
npz zip headers).

Sources are a registry (:data:`SOURCES`) of loaders ``DataConfig -> (train, test)``; the hardened
reader of untrusted ImageFolder folders and archives is :mod:`fairat.engine.imagefolder`.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fairat.artifacts import MANIFEST
from fairat.config import DataConfig, to_dict
from fairat.engine.imagefolder import read_imagefolder
from fairat.errors import DataError
from fairat.engine.seeds import derive_seed
from fairat.io import atomic_path, sha256_bytes, sha256_file, write_json_atomic

DEFAULT_RAW_ROOT = "data/raw"  # torchvision sources only, when data.root is empty
SPLITS = ("train", "val", "test")
MANIFEST_NAME = MANIFEST  # the one name, from fairat.artifacts
DIGITS_TEST_FRACTION = 0.2  # of each class; fixed seed so the test set never follows cfg.seed
_FIXED_SEED = 0
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip entry time: identical bytes for identical arrays


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


def _load_imagefolder(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """``<top?>/{train,test}/<class>/<image>`` from a folder or tar archive (untrusted input,
    read by :mod:`fairat.engine.imagefolder`)."""
    names, (train, test) = read_imagefolder(cfg.root)
    return tuple(_from_arrays(images, labels, names) for images, labels in (train, test))


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
    """Raise DataError unless ``ds`` is well-formed, has at least two classes (one class leaves
    nothing to classify, and its accuracy is trivially 100%) and every class has an example."""
    _check_structure(ds, split)
    if ds.num_classes < 2:
        raise DataError(f"{split}: {ds.num_classes} class {list(ds.class_names)}; a data set "
                        f"needs at least two classes")
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
    train = _per_class_subset(train, cfg.train_per_class, derive_seed(cfg.seed, "train"), "train")
    test = _per_class_subset(test, cfg.test_per_class, derive_seed(_FIXED_SEED, "test"), "test")
    if cfg.val_per_class > 0:
        train, val = _hold_out(train, cfg.val_per_class, derive_seed(cfg.seed, "val"))
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
