"""CIFAR-10/100 loaders on fixtures in the "python version" layout. The real files were written
by Python 2's cPickle (keys and strings are byte strings); the metadata fixture is assembled from
those protocol-2 opcodes by hand, the batches are pickled with bytes keys."""
from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from prunelens.data.registry import dataset_entry
from prunelens.errors import DataError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def py2_pickle(mapping: dict) -> bytes:
    """A dict of str → int | list[str] as Python 2's cPickle.dump(obj, f, 2) writes it."""
    def string(s: str) -> bytes:
        raw = s.encode()
        return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING: a py2 str

    def value(v) -> bytes:
        if isinstance(v, int):
            return b"M" + struct.pack("<H", v)  # BININT2
        return b"](" + b"".join(string(s) for s in v) + b"e"  # EMPTY_LIST MARK … APPENDS
    body = b"".join(string(k) + value(v) for k, v in mapping.items())
    return b"\x80\x02}(" + body + b"u."  # PROTO 2, EMPTY_DICT, MARK … SETITEMS, STOP


def image_rows(ids):
    c, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return np.stack([((i + c * 40 + y * 5 + x) % 256).astype(np.uint8).reshape(-1) for i in ids])


def dump(path, mapping):
    with open(path, "wb") as f:
        pickle.dump({k.encode(): v for k, v in mapping.items()}, f, protocol=2)


def write_cifar10(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "batches.meta").write_bytes(py2_pickle(
        {"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072}))
    for b in range(1, 6):
        ids = list(range((b - 1) * per_batch, b * per_batch))
        dump(folder / f"data_batch_{b}", {"batch_label": b"training batch %d of 5" % b,
                                           "labels": [i % 10 for i in ids], "data": image_rows(ids),
                                           "filenames": [b"img_%05d.png" % i for i in ids]})
    ids = [100, 101, 102]
    dump(folder / "test_batch", {"batch_label": b"testing batch 1 of 1", "labels": [3, 1, 4],
                                 "data": image_rows(ids), "filenames": [b"t%d.png" % i for i in ids]})
    return root


def write_cifar100(root, n_train=10):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    (folder / "meta").write_bytes(py2_pickle({
        "fine_label_names": [f"fine{k}" for k in range(100)],
        "coarse_label_names": [f"coarse{k}" for k in range(20)]}))
    for name, ids in (("train", list(range(n_train))), ("test", [50, 51])):
        dump(folder / name, {"filenames": [b"%s_%d.png" % (name.encode(), i) for i in ids],
                             "batch_label": name.encode(), "fine_labels": [i * 7 % 100 for i in ids],
                             "coarse_labels": [i % 20 for i in ids], "data": image_rows(ids)})
    return root


def build(name, root, split, seed=0, **options):
    entry = dataset_entry(name)
    return entry.build(entry.options(root=str(root), **options), split, seed)


def test_py2_metadata_fixture_is_what_cpickle_writes():
    meta = pickle.loads(py2_pickle({"label_names": ["cat"], "num_vis": 3072}), encoding="bytes")
    assert meta == {b"label_names": [b"cat"], b"num_vis": 3072}


def test_cifar10_splits(tmp_path):
    write_cifar10(tmp_path)
    train = build("cifar10", tmp_path, "train", val_size=3)
    val = build("cifar10", tmp_path, "val", val_size=3)
    test = build("cifar10", tmp_path, "test", val_size=3)
    assert (len(train), len(val), len(test)) == (17, 3, 3)  # 20 training images, 3 from batch 5
    assert train.class_names == CIFAR10_NAMES and train.num_classes == 10
    assert val.item_ids == ["img_00017.png", "img_00018.png", "img_00019.png"]
    image, label = val[1]  # image 18
    assert label == 8 and image.shape == (3, 32, 32)
    assert image[2, 7, 30].item() == pytest.approx(((18 + 80 + 35 + 30) % 256) / 255)
    assert test.labels.tolist() == [3, 1, 4] and test.item_ids[0] == "t100.png"
    # root may also be the extracted folder itself
    assert len(build("cifar10", tmp_path / "cifar-10-batches-py", "test", val_size=3)) == 3


def test_cifar10_task_variants(tmp_path):
    write_cifar10(tmp_path, per_batch=8)
    half = build("cifar10", tmp_path, "train", val_size=4, data_ratio=0.5)
    assert len(half) == 18 and half.item_ids == sorted(half.item_ids)
    again = build("cifar10", tmp_path, "train", val_size=4, data_ratio=0.5)
    assert torch.equal(half.labels, again.labels)
    two = build("cifar10", tmp_path, "test", val_size=4, superclasses={"modulo": 2})
    assert two.num_classes == 2 and two.labels.tolist() == [1, 1, 0]


def test_cifar100_fine_and_coarse(tmp_path):
    write_cifar100(tmp_path)
    fine = build("cifar100", tmp_path, "train", val_size=2)
    coarse = build("cifar100", tmp_path, "val", val_size=2, label_type="coarse")
    assert fine.num_classes == 100 and fine.class_names[7] == "fine7"
    assert fine.labels.tolist() == [i * 7 % 100 for i in range(8)]
    assert coarse.num_classes == 20 and coarse.labels.tolist() == [8, 9]
    test = build("cifar100", tmp_path, "test", val_size=2)
    assert test.item_ids == ["test_50.png", "test_51.png"]
    assert test.images[1, 1, 2, 3] == (51 + 40 + 10 + 3) % 256


def test_cifar_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no file 'batches.meta'"):
        build("cifar10", tmp_path / "empty", "train")
    write_cifar10(tmp_path / "ok")
    with pytest.raises(DataError, match="val_size=5000 is not smaller"):
        build("cifar10", tmp_path / "ok", "val")
    batch = tmp_path / "ok" / "cifar-10-batches-py" / "data_batch_2"
    dump(batch, {"labels": [99] * 4, "data": image_rows(range(4)), "filenames": [b"a"] * 4})
    with pytest.raises(DataError, match=r"data_batch_2: labels must lie in \[0, 9\]"):
        build("cifar10", tmp_path / "ok", "train", val_size=1)


def test_cifar_meta_with_code_is_refused(tmp_path):
    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(b"\x80\x02cbuiltins\neval\nq\x00X\x06\x00\x00\x001 + 1q\x01\x85q\x02Rq\x03.")
    with pytest.raises(DataError, match="refused to load builtins.eval"):
        build("cifar10", tmp_path, "test")


def test_cifar_meta_with_keys_that_are_not_names_is_refused(tmp_path):
    """Keys of mixed types (bytes and an int) once made sorting them a TypeError traceback."""
    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    with open(meta, "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR10_NAMES], 7: b"x"}, f, protocol=2)
    with pytest.raises(DataError, match="batches.meta has a key 7 that is not a name"):
        build("cifar10", tmp_path, "test")
