"""Tests of fairat.engine.data: tiny data only (digits, and images built with PIL in tmp_path)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fairat.config import DataConfig, from_dict
from fairat.engine.data import (
    SOURCES,
    DataError,
    ImageSet,
    PreparedData,
    channel_stats,
    load_prepared,
    load_source,
    load_split,
    manifest_hash,
    prepare,
    save_prepared,
    stratified_indices,
    validate,
)

# ------------------------------------------------------------------------------------ helpers


def _png(size: tuple[int, int] = (4, 4), mode: str = "RGB", value: int = 0) -> bytes:
    color = value if mode == "L" else (value, 255 - value, value // 2)
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _layout(classes=("cat", "dog"), per_class: int = 3, mode: str = "RGB", top: str = "top",
            ) -> dict[str, bytes]:
    """Relative path -> file bytes of a tiny ImageFolder tree."""
    files = {}
    for split in ("train", "test"):
        for k, cls in enumerate(classes):
            for i in range(per_class):
                rel = f"{split}/{cls}/{i:04d}.png"
                files[f"{top}/{rel}" if top else rel] = _png(mode=mode, value=40 * k + i)
    return files


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _write_tar(path: Path, files: dict[str, bytes], extra=()) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return path


def _imagefolder(root: Path, **kw) -> DataConfig:
    return DataConfig(source="imagefolder", root=str(root), **{"val_per_class": 0, **kw})


# -------------------------------------------------------------------------------------- digits


def test_digits_source_shapes_and_fixed_split():
    train, test = load_source(DataConfig())
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 8, 8)
    assert train.images.is_contiguous() and train.labels.dtype == torch.int64
    assert len(train) + len(test) == 1797
    assert train.class_names == tuple(str(d) for d in range(10))
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    # 20% of every class goes to test
    full_counts = [a + b for a, b in zip(train.counts(), test.counts())]
    assert test.counts() == [round(0.2 * n) for n in full_counts]


def test_digits_prepare_deterministic_stratified_disjoint():
    cfg = DataConfig(train_per_class=50, val_per_class=10, test_per_class=20, seed=3)
    a, b = prepare(cfg), prepare(cfg)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images)
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels)
    assert a.train.counts() == [40] * 10
    assert a.val.counts() == [10] * 10
    assert a.test.counts() == [20] * 10


def _indexed_source(n_per_class: int = 30, num_classes: int = 3):
    """A fake source whose every image encodes its own index, to check disjointness exactly."""

    def make(start: int, n: int) -> ImageSet:
        idx = torch.arange(start, start + n)
        images = torch.stack([idx // 256, idx % 256], dim=1).to(torch.uint8).view(n, 1, 1, 2)
        return ImageSet(images.contiguous(), idx % num_classes, tuple("abc"[:num_classes]))

    n = n_per_class * num_classes
    return lambda cfg: (make(0, n), make(n, n))


def _ids(ds: ImageSet) -> list[int]:
    return (ds.images[:, 0, 0, 0].long() * 256 + ds.images[:, 0, 0, 1].long()).tolist()


def test_val_disjoint_from_train_and_sorted(monkeypatch):
    monkeypatch.setitem(SOURCES, "digits", _indexed_source())
    data = prepare(DataConfig(train_per_class=20, val_per_class=6, test_per_class=5, seed=4))
    train, val, test = _ids(data.train), _ids(data.val), _ids(data.test)
    assert not set(train) & set(val)
    assert len(train) == 42 and len(val) == 18 and len(test) == 15
    assert train == sorted(train) and val == sorted(val) and test == sorted(test)
    assert all(i >= 90 for i in test) and all(i < 90 for i in train + val)
    everything = prepare(DataConfig(val_per_class=6, seed=4))
    assert sorted(_ids(everything.train) + _ids(everything.val)) == list(range(90))


def test_seed_changes_train_not_test():
    a = prepare(DataConfig(train_per_class=30, val_per_class=5, test_per_class=10, seed=0))
    b = prepare(DataConfig(train_per_class=30, val_per_class=5, test_per_class=10, seed=1))
    assert not torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.test.images, b.test.images)
    full_a, full_b = prepare(DataConfig(val_per_class=0, seed=0)), prepare(DataConfig(val_per_class=0, seed=7))
    assert torch.equal(full_a.test.images, full_b.test.images)
    assert len(full_a.val) == 0 and full_a.val.images.shape[1:] == (1, 8, 8)


def test_per_class_too_large_names_class():
    with pytest.raises(DataError, match=r"class '0' has \d+ examples.*200"):
        prepare(DataConfig(train_per_class=200))
    with pytest.raises(DataError, match=r"val_per_class=40.*class '\d'"):
        prepare(DataConfig(train_per_class=40, val_per_class=40))


def test_stratified_indices_sorted_deterministic():
    labels = torch.tensor([0, 1, 2] * 10 + [0, 2])
    idx = stratified_indices(labels, 4, 3, seed=5)
    assert torch.equal(idx, stratified_indices(labels, 4, 3, seed=5))
    assert torch.equal(idx, torch.sort(idx).values)
    assert torch.bincount(labels[idx]).tolist() == [4, 4, 4]
    with pytest.raises(DataError, match="class 1 has 10 examples"):
        stratified_indices(labels, 11, 3, seed=0)
    with pytest.raises(DataError, match="class 'b'"):
        stratified_indices(labels, 11, 3, seed=0, class_names=("a", "b", "c"))


# ----------------------------------------------------------------------------------- validate


def _set(labels, names=("a", "b")) -> ImageSet:
    labels = torch.as_tensor(labels, dtype=torch.int64)
    return ImageSet(torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels, names)


def test_validate_errors():
    validate(_set([0, 1]), "train")
    with pytest.raises(DataError, match="label 2 at index 1"):
        validate(_set([0, 2]), "train")
    with pytest.raises(DataError, match="label -1"):
        validate(_set([-1, 1]), "train")
    with pytest.raises(DataError, match="class 'b' has no examples"):
        validate(_set([0, 0]), "test")
    bad = ImageSet(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), ("a", "b"))
    with pytest.raises(DataError, match="uint8"):
        validate(bad, "train")
    bad = ImageSet(torch.zeros(2, 4, dtype=torch.uint8), torch.tensor([0, 1]), ("a", "b"))
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        validate(bad, "train")
    bad = ImageSet(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), ("a", "b"))
    with pytest.raises(DataError, match="does not match 3 images"):
        validate(bad, "train")


def test_imageset_helpers_and_channel_stats():
    images = torch.stack([torch.full((3, 2, 2), v, dtype=torch.uint8) for v in (0, 255)])
    ds = ImageSet(images, torch.tensor([0, 1]), ("a", "b"))
    assert ds.num_classes == 2 and len(ds) == 2 and ds.counts() == [1, 1]
    sub = ds.subset(torch.tensor([1]))
    assert sub.counts() == [0, 1] and int(sub.images.max()) == 255
    mean, std = channel_stats(ds)
    assert mean == pytest.approx((0.5,) * 3) and std == pytest.approx((0.5,) * 3)
    _, std = channel_stats(sub)
    assert std == pytest.approx((1e-3,) * 3)


# ---------------------------------------------------------------------------- save / manifest


def test_save_load_round_trip_and_manifest(tmp_path):
    cfg = DataConfig(train_per_class=20, val_per_class=5, test_per_class=10, seed=2)
    data = prepare(cfg)
    m1 = save_prepared(data, tmp_path / "a", cfg)
    m2 = save_prepared(prepare(cfg), tmp_path / "b", cfg)
    assert m1 == m2 and manifest_hash(m1) == manifest_hash(m2)
    assert (tmp_path / "a" / "manifest.json").read_bytes() == \
        (tmp_path / "b" / "manifest.json").read_bytes()
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.npz").read_bytes() == \
            (tmp_path / "b" / f"{split}.npz").read_bytes()
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == m1
    assert m1["splits"]["train"]["counts"] == {str(d): 15 for d in range(10)}
    assert m1["splits"]["val"]["counts"]["7"] == 5 and m1["splits"]["test"]["n"] == 100
    assert m1["image_shape"] == [1, 8, 8] and m1["config"]["seed"] == 2
    assert m1["source"] == "digits" and len(m1["content_hash"]) == 64
    other = DataConfig(train_per_class=20, val_per_class=5, test_per_class=10, seed=3)
    m3 = save_prepared(prepare(other), tmp_path / "c", other)
    assert m3["content_hash"] != m1["content_hash"]
    assert m3["splits"]["test"]["sha256"] == m1["splits"]["test"]["sha256"]
    assert manifest_hash(m3) != manifest_hash(m1)

    loaded = load_prepared(tmp_path / "a")
    assert isinstance(loaded, PreparedData)
    for split in ("train", "val", "test"):
        got, want = getattr(loaded, split), getattr(data, split)
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
        assert got.class_names == want.class_names and got.labels.dtype == torch.int64


def test_save_empty_val_round_trip(tmp_path):
    cfg = DataConfig(train_per_class=5, val_per_class=0, test_per_class=5)
    manifest = save_prepared(prepare(cfg), tmp_path, cfg)
    assert manifest["splits"]["val"]["n"] == 0
    val = load_prepared(tmp_path).val
    assert len(val) == 0 and val.images.shape == (0, 1, 8, 8)


def test_load_split_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="junk.npz: malformed"):
        load_split(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", images=np.zeros((1, 1, 2, 2), np.uint8))
    with pytest.raises(DataError, match=r"missing key\(s\) \['class_names', 'labels'\]"):
        load_split(tmp_path / "partial.npz")
    np.savez(tmp_path / "pickled.npz", images=np.zeros((1, 1, 2, 2), np.uint8),
             labels=np.zeros(1, np.int64), class_names=np.array([object()], dtype=object))
    with pytest.raises(DataError, match="pickled.npz: malformed"):
        load_split(tmp_path / "pickled.npz")


def test_load_prepared_detects_tampering(tmp_path):
    cfg = DataConfig(train_per_class=5, val_per_class=0, test_per_class=5)
    data = prepare(cfg)
    save_prepared(data, tmp_path, cfg)
    labels = data.test.labels.numpy().copy()
    labels[0] = (labels[0] + 1) % 10
    np.savez(tmp_path / "test.npz", images=data.test.images.numpy(), labels=labels,
             class_names=np.array(data.test.class_names))
    with pytest.raises(DataError, match="test.npz does not match"):
        load_prepared(tmp_path)


# -------------------------------------------------------------------------------- imagefolder


@pytest.mark.parametrize("top", ["top", ""])
def test_imagefolder_from_folder(tmp_path, top):
    root = _write_folder(tmp_path / "imgs", _layout(classes=("dog", "cat"), top=top))
    (tmp_path / "imgs" / (f"{top}/train" if top else "train") / "cat" / "notes.txt").write_text("x")
    train, test = load_source(_imagefolder(root))
    assert train.class_names == ("cat", "dog") and test.class_names == ("cat", "dog")
    assert train.images.shape == (6, 3, 4, 4) and train.counts() == [3, 3]
    assert train.images.is_contiguous()
    # cat is class 0, built with value 40 * 1 + i in the red channel (dog came first in _layout)
    assert train.images[0, 0, 0, 0].item() == 40 and train.images[3, 0, 0, 0].item() == 0


def test_imagefolder_from_tar_matches_folder_and_prepares(tmp_path):
    files = _layout(per_class=4)
    tar = _write_tar(tmp_path / "imgs.tar.gz", files)
    folder = _write_folder(tmp_path / "imgs", files)
    from_tar, from_dir = load_source(_imagefolder(tar)), load_source(_imagefolder(folder))
    for a, b in zip(from_tar, from_dir):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    data = prepare(_imagefolder(tar, train_per_class=3, val_per_class=1, test_per_class=2))
    assert data.train.counts() == [2, 2] and data.val.counts() == [1, 1]
    assert data.test.counts() == [2, 2]


def test_tar_made_with_dot_prefix_and_hidden_files(tmp_path):
    """`tar -C dir .` names members ./train/...; macOS adds ._ forks and .DS_Store."""
    files = {f"./{k}": v for k, v in _layout(top="").items()}
    files["./train/cat/._0000.png"] = b"AppleDouble junk"
    files["./.DS_Store"] = b"junk"
    dot = tarfile.TarInfo(".")
    dot.type = tarfile.DIRTYPE
    train, test = load_source(_imagefolder(_write_tar(tmp_path / "x.tar", files, extra=[dot])))
    assert len(train) == 6 and len(test) == 6 and train.class_names == ("cat", "dog")


def test_imagefolder_greyscale_gives_one_channel(tmp_path):
    root = _write_folder(tmp_path, _layout(mode="L", top=""))
    train, _ = load_source(_imagefolder(root))
    assert train.images.shape == (6, 1, 4, 4)


def test_tar_path_traversal_refused_nothing_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    evil = tarfile.TarInfo("top/train/cat/../../../../evil.png")
    evil.size = 4
    tar = _write_tar(work / "x.tar.gz", _layout(), extra=[evil])
    with pytest.raises(DataError, match=r"refusing archive member .*evil\.png"):
        load_source(_imagefolder(tar))
    absolute = tarfile.TarInfo("/tmp/abs_evil.png")
    absolute.size = 4
    tar = _write_tar(work / "y.tar.gz", _layout(), extra=[absolute])
    with pytest.raises(DataError, match="absolute or '..'"):
        load_source(_imagefolder(tar))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["work", "x.tar.gz", "y.tar.gz"]


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_tar_links_and_devices_refused(tmp_path, kind):
    link = tarfile.TarInfo("top/train/cat/link.png")
    link.type = kind
    link.linkname = "/etc/passwd"
    tar = _write_tar(tmp_path / "x.tar.gz", _layout(), extra=[link])
    with pytest.raises(DataError, match="link.png.*not a regular file"):
        load_source(_imagefolder(tar))


def test_folder_symlink_refused(tmp_path):
    root = _write_folder(tmp_path / "imgs", _layout(top=""))
    (root / "train" / "cat" / "link.png").symlink_to(root / "train" / "cat" / "0000.png")
    with pytest.raises(DataError, match="link.png is a symlink"):
        load_source(_imagefolder(root))


def test_corrupt_image_names_file(tmp_path):
    files = _layout()
    files["top/train/dog/0001.png"] = b"\x89PNG garbage"
    with pytest.raises(DataError, match=r"cannot decode image .*top/train/dog/0001\.png"):
        load_source(_imagefolder(_write_tar(tmp_path / "x.tgz", files)))


def test_size_mismatch_names_file_and_sizes(tmp_path):
    files = _layout()
    files["top/test/dog/0002.png"] = _png(size=(5, 3))
    with pytest.raises(DataError, match=r"test/dog/0002\.png is 5x3.*train/cat/0000\.png is 4x4"):
        load_source(_imagefolder(_write_folder(tmp_path, files)))


def test_empty_class_names_class(tmp_path):
    root = _write_folder(tmp_path, _layout(top=""))
    (root / "train" / "emu").mkdir()
    (root / "train" / "emu" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="class 'emu'"):
        load_source(_imagefolder(root))


def test_empty_class_in_tar_names_class(tmp_path):
    empty = tarfile.TarInfo("top/test/emu")
    empty.type = tarfile.DIRTYPE
    files = _layout()
    with pytest.raises(DataError, match="class 'emu'"):
        load_source(_imagefolder(_write_tar(tmp_path / "x.tar.gz", files, extra=[empty])))


def test_class_mismatch_between_splits(tmp_path):
    files = {k: v for k, v in _layout().items() if not k.startswith("top/test/dog")}
    with pytest.raises(DataError, match=r"missing from test \['dog'\]"):
        load_source(_imagefolder(_write_folder(tmp_path, files)))


def test_imagefolder_bad_roots(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_source(_imagefolder(tmp_path / "nope.tar.gz"))
    (tmp_path / "a.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="neither a folder nor a tar"):
        load_source(_imagefolder(tmp_path / "a.zip"))
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="not a readable tar archive"):
        load_source(_imagefolder(tmp_path / "broken.tar.gz"))
    _write_folder(tmp_path / "flat", {"a/x.png": _png(), "b/y.png": _png()})
    with pytest.raises(DataError, match="expected train/ and test/"):
        load_source(_imagefolder(tmp_path / "flat"))


# ------------------------------------------------------------------------ torchvision sources


def test_registry_has_all_sources():
    assert set(SOURCES) == {"digits", "cifar10", "cifar100", "svhn", "imagefolder"}


@pytest.mark.parametrize("source", ["cifar10", "cifar100", "svhn"])
def test_offline_missing_torchvision_data_mentions_download(tmp_path, source):
    cfg = DataConfig(source=source, root=str(tmp_path), download=False)
    with pytest.raises(DataError, match=r"data\.download: true.*imagefolder"):
        load_source(cfg)
    assert list(tmp_path.iterdir()) == []


class _FakeCifar:
    """Stands in for torchvision's CIFAR10: NHWC uint8 ``data``, list ``targets``."""

    classes = ["plane", "car"]

    def __init__(self, root, train, download):
        n = 4 if train else 2
        self.data = np.arange(n * 2 * 3 * 3, dtype=np.uint8).reshape(n, 2, 3, 3)  # N, H, W, C
        self.targets = [i % 2 for i in range(n)]


class _FakeSvhn:
    """Stands in for torchvision's SVHN: NCHW uint8 ``data``, ndarray ``labels``."""

    def __init__(self, root, split, download):
        n = 10
        self.data = np.zeros((n, 3, 2, 2), dtype=np.uint8)
        self.labels = np.arange(n) % 10


def test_torchvision_sources_convert_to_nchw(monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, "CIFAR10", _FakeCifar)
    monkeypatch.setattr(tvd, "SVHN", _FakeSvhn)
    train, test = load_source(DataConfig(source="cifar10"))
    assert train.images.shape == (4, 3, 2, 3) and train.images.is_contiguous()
    assert torch.equal(train.images[1], torch.from_numpy(_FakeCifar("", True, False).data[1])
                       .permute(2, 0, 1))
    assert train.class_names == ("plane", "car") and test.labels.tolist() == [0, 1]
    train, _ = load_source(DataConfig(source="svhn"))
    assert train.images.shape == (10, 3, 2, 2) and train.class_names[0] == "0"
    assert train.labels.dtype == torch.int64


def test_download_failure_is_a_data_error(monkeypatch, tmp_path):
    import urllib.error

    import torchvision.datasets as tvd

    def offline(root, train, download):
        assert download is True
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(tvd, "CIFAR100", offline)
    with pytest.raises(DataError, match="cifar100: download into .* failed"):
        load_source(from_dict(DataConfig, {"source": "cifar100", "root": str(tmp_path),
                                           "download": True}))
