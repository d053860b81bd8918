"""Downsampled-ImageNet loader and the safe unpickler, on fixtures in the real on-disk format:
pickled dicts {'data': uint8 (N, 3·S·S) channel-row-column, 'labels': 1-based list, 'mean'}."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from prunelens.config import DataConfig
from prunelens.data.arrays import safe_unpickle
from prunelens.data.provider import RunData
from prunelens.data.registry import dataset_entry
from prunelens.errors import ConfigError, DataError


def pixel(i: int, c: int, y: int, x: int) -> int:
    """The value the fixture stores for image i at channel c, row y, column x."""
    return (i * 7 + c * 50 + y * 3 + x) % 256


def rows(ids: list[int], side: int = 32) -> np.ndarray:
    c, y, x = np.meshgrid(np.arange(3), np.arange(side), np.arange(side), indexing="ij")
    return np.stack([((i * 7 + c * 50 + y * 3 + x) % 256).astype(np.uint8).reshape(-1) for i in ids])


def write_imagenet32(root, batches=(6, 6, 8), n_val=5, side=32, protocol=4, layout="flat"):
    """Files as the official archives extract them; image ids run 0.. over train then val."""
    train_dir = root / "Imagenet32_train" if layout == "archives" else root
    val_dir = root / "Imagenet32_val" if layout == "archives" else root
    train_dir.mkdir(parents=True, exist_ok=True)
    val_dir.mkdir(parents=True, exist_ok=True)
    start, labels_of = 0, {}
    for b, n in enumerate(batches, start=1):
        ids = list(range(start, start + n))
        labels = [(i % 1000) + 1 for i in ids]  # 1-based
        labels_of.update(dict(zip(ids, labels)))
        with open(train_dir / f"train_data_batch_{b}", "wb") as f:
            pickle.dump({"data": rows(ids, side), "labels": labels,
                         "mean": np.zeros(3 * side * side)}, f, protocol=protocol)
        start += n
    ids = list(range(start, start + n_val))
    with open(val_dir / "val_data", "wb") as f:
        pickle.dump({"data": rows(ids, side), "labels": [(i % 1000) + 1 for i in ids]}, f,
                    protocol=protocol)
    return root


def build(root, split, seed=0, **options):
    entry = dataset_entry("imagenet32")
    return entry.build(entry.options(root=str(root), **options), split, seed)


@pytest.mark.parametrize("protocol", [2, 4])
def test_splits_images_and_labels(tmp_path, protocol):
    write_imagenet32(tmp_path, protocol=protocol)
    train, val, test = (build(tmp_path, s, val_size=3) for s in ("train", "val", "test"))
    # 20 train images: batch 3 (ids 12..19) gives its last 3 to val
    assert len(train) == 17 and len(val) == 3 and len(test) == 5
    assert train.num_classes == 1000 and len(train.class_names) == 1000
    image, label = val[0]  # image id 17
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image[1, 4, 9].item() == pytest.approx(pixel(17, 1, 4, 9) / 255)
    assert image[2, 31, 0].item() == pytest.approx(pixel(17, 2, 31, 0) / 255)
    assert label == 17 % 1000  # 1-based on disk, 0-based here
    assert test[4][1] == 24 and test.images[4, 0, 0, 5] == pixel(24, 0, 0, 5)
    assert train.labels.tolist() == list(range(17))
    assert val.item_ids == ["train_data_batch_3-000005", "train_data_batch_3-000006",
                            "train_data_batch_3-000007"]


def test_archive_layout_and_npz_edition(tmp_path):
    write_imagenet32(tmp_path, layout="archives")
    assert len(build(tmp_path, "test", val_size=2)) == 5
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "train_data_batch_1.npz", data=rows([0, 1, 2, 3]), labels=np.array([1, 2, 3, 4]),
             mean=np.zeros(3072))
    np.savez(npz / "val_data.npz", data=rows([9]), labels=np.array([10]))
    train = build(npz, "train", val_size=1)
    assert train.labels.tolist() == [0, 1, 2] and build(npz, "test", val_size=1)[0][1] == 9


def test_imagenet64_rows_are_recognised(tmp_path):
    write_imagenet32(tmp_path, batches=(4,), n_val=2, side=64)
    image, _ = build(tmp_path, "test", val_size=1)[1]
    assert image.shape == (3, 64, 64)
    assert image[2, 60, 33].item() == pytest.approx(pixel(5, 2, 60, 33) / 255)


def test_data_ratio_keeps_a_seeded_fraction_of_each_batch(tmp_path):
    write_imagenet32(tmp_path, batches=(10, 10, 14), n_val=2)
    full = build(tmp_path, "train", val_size=4)
    half = build(tmp_path, "train", val_size=4, data_ratio=0.5)
    again = build(tmp_path, "train", val_size=4, data_ratio=0.5)
    other = build(tmp_path, "train", seed=1, val_size=4, data_ratio=0.5)
    assert len(full) == 30 and len(half) == 15
    assert torch.equal(half.labels, again.labels) and not torch.equal(half.labels, other.labels)
    assert set(half.labels.tolist()) <= set(full.labels.tolist())
    # per batch: 5 of the first 10, 5 of the second 10, 5 of the 10 left in the last
    per_batch = [int(((half.labels >= a) & (half.labels < a + 10)).sum()) for a in (0, 10, 20)]
    assert per_batch == [5, 5, 5]
    assert len(build(tmp_path, "val", val_size=4, data_ratio=0.5)) == 4  # val untouched


def test_superclasses_modulo_and_file(tmp_path):
    write_imagenet32(tmp_path, batches=(12,), n_val=3)
    mod = build(tmp_path, "train", val_size=2, superclasses={"modulo": 10})
    assert mod.num_classes == 10 and mod.labels.tolist() == [i % 10 for i in range(10)]
    mapping = tmp_path / "classes.dat"
    mapping.write_text(",".join(str(int(c >= 5)) for c in range(1000)) + "\n")
    sup = build(tmp_path, "test", val_size=2, superclasses={"file": str(mapping)})
    assert sup.num_classes == 2 and sup.labels.tolist() == [1, 1, 1]  # ids 12, 13, 14
    mapping.write_text("0,1,2\n")
    with pytest.raises(DataError, match="lists 3 superclass ids.*1000 classes"):
        build(tmp_path, "test", val_size=2, superclasses={"file": str(mapping)})


def test_config_and_run_data(tmp_path):
    write_imagenet32(tmp_path)
    data = RunData(DataConfig(name="imagenet32", root=str(tmp_path), val_size=2), seed=0)
    assert len(data.split("train")) == 18 and data.num_classes == 1000
    assert len(data.entry.build(data.options, "train", 0, n=4)) == 4
    both = {"modulo": 10, "file": "x"}
    with pytest.raises(ConfigError, match="superclasses"):
        _ = DataConfig(name="imagenet32", root=str(tmp_path), superclasses=both).options
    with pytest.raises(ConfigError, match="unknown key 'data.val_sise'"):
        _ = DataConfig(name="imagenet32", root=str(tmp_path), val_sise=3).options


def test_missing_files_are_named(tmp_path):
    from prunelens.config import resolve_runs
    from prunelens.errors import ConfigError
    with pytest.raises(ConfigError, match="data.root: dataset folder .*nowhere' does not exist"):
        resolve_runs({"data": {"name": "imagenet32", "root": str(tmp_path / "nowhere")}})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train_data_batch_N"):
        build(tmp_path / "empty", "train")
    write_imagenet32(tmp_path / "small", batches=(3,))
    with pytest.raises(DataError, match="val_size=10000 is not smaller"):
        build(tmp_path / "small", "train")


# ---- the safe unpickler --------------------------------------------------------------------------
class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_in_a_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "train_data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({"data": Exploit(marker), "labels": [1]}, f)
    with pytest.raises(DataError, match="refused to load"):
        build(tmp_path, "train", val_size=0)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ({"data": np.array([1, "x"], dtype=object), "labels": [1]}, "array of Python objects"),
    ({"data": rows([0]), "labels": [1], "extra": 3}, "unexpected keys"),
    ({"data": rows([0])}, "missing keys"),
    ({"data": rows([0]), "labels": [{1: 2}]}, "refused|expected ints or strings"),
    ([rows([0])], "not the dict"),
])
def test_unexpected_content_is_refused(tmp_path, content, message):
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump(content, f)
    with pytest.raises(DataError, match=message):
        safe_unpickle(path, required=("data", "labels"), optional=("mean",))


def test_other_globals_are_refused(tmp_path):
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({"data": torch.zeros(2), "labels": [1]}, f)  # a torch tensor, not numpy
    with pytest.raises(DataError, match="refused to load torch"):
        safe_unpickle(path, required=("data", "labels"))
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="not a dataset batch"):
        safe_unpickle(path, required=("data",))


def test_val_split_reads_only_the_last_batch(tmp_path, monkeypatch):
    from prunelens.data import imagenet32

    write_imagenet32(tmp_path)
    read = []
    original = imagenet32._read_batch
    monkeypatch.setattr(imagenet32, "_read_batch", lambda path: read.append(path.name) or original(path))
    assert len(build(tmp_path, "val", val_size=3)) == 3
    assert read == ["train_data_batch_3"]
