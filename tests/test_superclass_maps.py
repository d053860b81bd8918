"""The shipped ImageNet → 10-superclass maps — MadryLab robustness ``mixed_10`` over WordNet 3.0, and
Pellegrini & Biroli's hand-made ``imagenet_sifting10`` — and how the array datasets use them:
coverage, hand-checked facts, the downsampled-ImageNet label order, and images of left-out classes
dropped."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch

from prunelens.config import DataConfig
from prunelens.data.arrays import SUPERCLASS_MAPS, named_superclass_map
from prunelens.errors import ConfigError, DataError
from test_imagenet32 import build, write_imagenet32

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mixed10():
    return named_superclass_map("imagenet_mixed10")


def test_map_covers_what_it_says(mixed10):
    classes, supers = mixed10["classes"], mixed10["superclasses"]
    assert len(classes) == 1000 and len({w for w, _, _ in classes}) == 1000
    assert [s["name"] for s in supers] == ["dog", "bird", "insect", "monkey", "car", "feline", "truck",
                                           "fruit", "fungus", "boat"]
    counts = [sum(c == k for _, _, c in classes) for k in range(10)]
    assert counts == [s["classes"] for s in supers]          # the file states its own coverage
    assert min(counts) > 0 and sum(counts) == 276
    assert {c for _, _, c in classes} <= set(range(10)) | {None}
    assert mixed10["superclass_source"]["repository"] == "MadryLab/robustness"
    assert "mixed_10" in mixed10["superclass_source"]["function"]


def test_label_order_is_the_devkit_map_clsloc(mixed10):
    classes = mixed10["classes"]
    text = "".join(f"{w} {i} {n}\n" for i, (w, n, _) in enumerate(classes, 1))
    assert hashlib.sha256(text.encode()).hexdigest() == mixed10["class_order"]["map_clsloc_sha256"]
    # downsampled-ImageNet label 1 is the kit fox; ILSVRC2012_val_00000001 (a sea snake) has label 490
    assert classes[0][:2] == ["n02119789", "kit_fox"] and classes[489][:2] == ["n01751748", "sea_snake"]
    # torchvision's sorted-wnid order is another permutation of the same 1000 wnids
    wnids = sorted(w for w, _, _ in classes)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"


@pytest.mark.parametrize("label, superclass", [
    (3, "dog"), (1, None), (202, None), (8, "feline"), (190, "feline"), (137, "monkey"), (96, None),
    (383, "bird"), (624, "insect"), (271, "car"), (279, "truck"), (239, "boat"), (246, None),
    (229, "fruit"), (981, "fungus"), (230, None)])
def test_hand_checked_wordnet_memberships(mixed10, label, superclass):
    """Siberian husky a dog; kit fox and African hunting dog canids but not dogs; Egyptian cat and lion
    felines; baboon a monkey but chimpanzee an ape; cock a bird; long-horned beetle an insect;
    minivan a car (1 hypernym step; truck is 3 away); fire engine a truck; canoe a boat but aircraft
    carrier a ship; strawberry a fruit; bolete a fungus; airliner in none."""
    sup = mixed10["classes"][label - 1][2]
    names = [s["name"] for s in mixed10["superclasses"]]
    assert (None if sup is None else names[sup]) == superclass


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(),
                    reason="WordNet 3.0 (Debian package wordnet-base) is not installed")
def test_map_is_rebuilt_from_wordnet(mixed10, monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("make_map", ROOT / "tools" / "make_imagenet_superclasses.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    parents = make.hypernyms(Path("/usr/share/wordnet/data.noun"))
    rebuilt = [make.superclass(w, parents) for w, _, _ in mixed10["classes"]]
    assert rebuilt == [c for _, _, c in mixed10["classes"]]


def test_imagenet32_with_the_named_map_drops_left_out_classes(tmp_path, mixed10):
    write_imagenet32(tmp_path, batches=(30,), n_val=4)       # labels 1 … 34 (ids 0 … 33)
    full = build(tmp_path, "train", val_size=2)
    sup = build(tmp_path, "train", val_size=2, superclasses="imagenet_mixed10")
    table = [c for _, _, c in mixed10["classes"]]
    kept = [i for i, y in enumerate(full.labels.tolist()) if table[y] is not None]
    assert sup.item_ids == [full.item_ids[i] for i in kept] and len(kept) < len(full)
    assert sup.labels.tolist() == [table[full.labels[i]] for i in kept]
    assert sup.num_classes == 10 and sup.class_names[0] == "dog"
    assert torch.equal(sup.images, full.images[kept])
    assert build(tmp_path, "train", val_size=2, superclasses={"name": "imagenet_mixed10"}).item_ids == sup.item_ids


def test_map_names_are_validated(tmp_path):
    write_imagenet32(tmp_path)
    with pytest.raises(ConfigError, match=r"data.superclasses.*no superclass map named 'imagenet10'.*imagenet_mixed10"):
        _ = DataConfig(name="imagenet32", root=str(tmp_path), superclasses="imagenet10").options
    with pytest.raises(ConfigError, match="exactly one"):
        _ = DataConfig(name="imagenet32", root=str(tmp_path),
                       superclasses={"name": "imagenet_mixed10", "modulo": 10}).options
    with pytest.raises(DataError, match="imagenet_mixed10.*1000 classes.*10 classes"):
        from prunelens.data.registry import dataset_entry
        entry = dataset_entry("digits")
        entry.build(entry.options(superclasses="imagenet_mixed10"), "train", 0)
    assert SUPERCLASS_MAPS == ("imagenet_mixed10", "imagenet_sifting10")


def test_file_map_may_leave_classes_out(tmp_path):
    write_imagenet32(tmp_path, batches=(12,), n_val=3)
    mapping = tmp_path / "classes.dat"
    mapping.write_text(" ".join("-1" if c < 5 else "1" if c < 8 else "0" for c in range(1000)))
    sup = build(tmp_path, "train", val_size=2, superclasses={"file": str(mapping)})
    assert sup.labels.tolist() == [1, 1, 1, 0, 0]              # labels 6…10 kept, 1…5 dropped


# ---- Pellegrini & Biroli's 10 "meaningful" superclasses -----------------------------------------
#: sha256 of phiandark/SiftingFeatures @386b617 inputs/classes.dat (2000 bytes: 1000 ids joined by
#: commas, then a newline), the authors' file the map transcribes (Data.py:62-68)
CLASSES_DAT_SHA256 = "a909529fea043e4f0bedcb26edc9cf5edc07c67aae45991926eacbf20e5bb232"


@pytest.fixture(scope="module")
def sifting10():
    return named_superclass_map("imagenet_sifting10")


def test_sifting10_assigns_every_class_once(sifting10, mixed10):
    classes, supers = sifting10["classes"], sifting10["superclasses"]
    assert len(classes) == 1000 and len({w for w, _, _ in classes}) == 1000
    assert all(isinstance(c, int) and 0 <= c < 10 for _, _, c in classes)    # no class left out
    counts = [sum(c == k for _, _, c in classes) for k in range(10)]
    assert counts == [118, 100, 95, 85, 104, 111, 99, 95, 96, 97]            # the research notes' sizes
    assert counts == [s["classes"] for s in supers]
    assert [s["name"] for s in supers] == [f"superclass {k}" for k in range(10)]
    text = ",".join(str(c) for _, _, c in classes) + "\n"
    assert hashlib.sha256(text.encode()).hexdigest() == CLASSES_DAT_SHA256
    # same format, wnids, names and label order as imagenet_mixed10
    assert list(sifting10) == list(mixed10)
    assert [c[:2] for c in classes] == [c[:2] for c in mixed10["classes"]]
    assert sifting10["class_order"] == mixed10["class_order"]
    assert sifting10["superclass_source"]["repository"] == "phiandark/SiftingFeatures"


@pytest.mark.parametrize("index, wnid, superclass", [
    (0, "n02119789", 1), (1, "n02100735", 0), (218, "n04086273", 4), (289, "n03776460", 9),
    (747, "n03594734", 5), (999, "n03255030", 6)])
def test_sifting10_lines_of_the_authors_table(sifting10, index, wnid, superclass):
    """Lines of SupplementaryMaterial/ImageNet_10cl.txt (``wnid index superclass name``): kit fox,
    English setter, revolver, mobile home, jean, dumbbell."""
    assert sifting10["classes"][index][0] == wnid and sifting10["classes"][index][2] == superclass


def test_imagenet32_with_sifting10_keeps_every_image(tmp_path, sifting10):
    write_imagenet32(tmp_path, batches=(30,), n_val=4)
    full = build(tmp_path, "train", val_size=2)
    sup = build(tmp_path, "train", val_size=2, superclasses="imagenet_sifting10")
    table = [c for _, _, c in sifting10["classes"]]
    assert sup.item_ids == full.item_ids
    assert sup.labels.tolist() == [table[y] for y in full.labels.tolist()]
    assert sup.num_classes == 10 and sup.class_names == [f"superclass {k}" for k in range(10)]
