"""ImageFolder (ImageNet layout) and MNIST (IDX files) on fixtures in the real on-disk layouts."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from prunelens.config import resolve_runs
from prunelens.data.provider import RunData
from prunelens.errors import ConfigError, DataError


def _imagenet_tree(root, n_per_class=3):
    for split in ("train", "val"):
        for c, wnid in enumerate(("n01440764", "n01443537")):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n_per_class):
                arr = np.full((40 + 10 * i, 60, 3), 60 * c + i, dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{wnid}_{i}.JPEG", format="JPEG")


def test_imagenet_folder_layout_and_transforms(tmp_path):
    _imagenet_tree(tmp_path / "imagenet")
    cfg = resolve_runs({"data": {"name": "imagenet", "root": str(tmp_path / "imagenet"),
                                 "train_crop_size": 32, "val_resize_size": 36, "val_crop_size": 32}})[0]
    data = RunData(cfg.data, 0)
    assert data.eval_split == "val" and data.num_classes == 2
    assert data.class_names == ["n01440764", "n01443537"]
    val = data.split("val")
    x, y = val[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    assert abs(float(x.mean()) - (60 + 1) / 255) < 0.02  # decoded colour survives the resize/crop
    assert val.item_ids[0] == "n01440764/n01440764_0.JPEG"
    train_x, _ = data.split("train")[0]
    assert train_x.shape == (3, 32, 32)


def test_imagenet_missing_folders_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="dataset folder '.*nope' does not exist"):
        resolve_runs({"data": {"name": "imagenet", "root": str(tmp_path / "nope")}})
    (tmp_path / "empty").mkdir()
    cfg = resolve_runs({"data": {"name": "imagenet", "root": str(tmp_path / "empty")}})[0]
    with pytest.raises(DataError, match="split folder .*train does not exist"):
        RunData(cfg.data, 0).split("train")


def _write_idx(path, array, gz):
    header = np.array([2049 if array.ndim == 1 else 2051, *array.shape], dtype=">u4").tobytes()
    blob = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(blob))
    else:
        path.write_bytes(blob)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    train_x, train_y = rng.integers(0, 256, (30, 28, 28)), np.arange(30) % 10
    test_x, test_y = rng.integers(0, 256, (8, 28, 28)), np.arange(8) % 10
    for stem, x, y in (("train", train_x, train_y), ("t10k", test_x, test_y)):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte", x, gz)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", y, gz)
    cfg = resolve_runs({"data": {"name": "mnist", "root": str(tmp_path), "n_val": 10}})[0]
    data = RunData(cfg.data, 0)
    train, val, test = data.split("train"), data.split("val"), data.split("test")
    assert (len(train), len(val), len(test)) == (20, 10, 8)
    x, y = val[3]
    assert x.shape == (1, 28, 28) and y == int(train_y[23])
    assert torch.equal((x * 255).round().to(torch.uint8)[0], torch.from_numpy(train_x[23].astype(np.uint8)))


def test_mnist_truncated_file_is_clear(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28)), False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes((tmp_path / "t10k-images-idx3-ubyte").read_bytes()[:-5])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4), False)
    cfg = resolve_runs({"data": {"name": "mnist", "root": str(tmp_path)}})[0]
    with pytest.raises(DataError, match="is truncated"):
        RunData(cfg.data, 0).split("test")


def test_measurement_sample_is_balanced_and_not_augmented(tmp_path):
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(("n01440764", "n01443537")):
        folder = tmp_path / "imagenet" / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(4):  # noise: a random crop or flip would change the pixels
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = resolve_runs({"data": {"name": "imagenet", "root": str(tmp_path / "imagenet"),
                                 "train_crop_size": 16, "val_resize_size": 20, "val_crop_size": 16}})[0]
    data = RunData(cfg.data, 0)
    augmented = data.split("train")
    torch.manual_seed(0)
    assert not all(torch.equal(augmented[0][0], augmented[0][0]) for _ in range(5))
    sample = data.sample("train", 4)
    assert sorted(int(sample[i][1]) for i in range(4)) == [0, 0, 1, 1]  # both classes, not the first 4
    assert all(torch.equal(sample[0][0], sample[0][0]) for _ in range(5))
    assert len(data.sample("train", 100)) == 8


def test_unreadable_files_are_clear_errors(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28)), True)
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-20])  # truncated download
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4), False)
    cfg = resolve_runs({"data": {"name": "mnist", "root": str(tmp_path)}})[0]
    with pytest.raises(DataError, match="cannot read .*t10k-images-idx3-ubyte.gz .*download it again"):
        RunData(cfg.data, 0).split("test")
    _imagenet_tree(tmp_path / "imagenet", n_per_class=1)
    broken = tmp_path / "imagenet" / "val" / "n01440764" / "n01440764_0.JPEG"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    cfg = resolve_runs({"data": {"name": "imagenet", "root": str(tmp_path / "imagenet")}})[0]
    with pytest.raises(DataError, match="cannot read image file .*n01440764_0.JPEG"):
        RunData(cfg.data, 0).split("val")[0]
    from prunelens.data.images import open_image
    with pytest.raises(DataError, match="does not exist"):
        with open_image(tmp_path / "missing.png"):
            pass
