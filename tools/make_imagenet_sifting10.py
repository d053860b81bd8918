"""Build ``src/prunelens/data/superclass_maps/imagenet_sifting10.json``: the 10 "meaningful"
superclasses of Pellegrini & Biroli (phiandark/SiftingFeatures @ 386b61745042333d3b0767d89f9c9ac05b14c313).

Source: ``inputs/classes.dat``, 1000 comma-separated superclass ids; its entry k is the superclass of
downsampled-ImageNet label k + 1 (src/Data.py:40 ``labels - 1``, Data.py:62-68
``indmap = np.loadtxt(classes.dat); t_lab = indmap[t_lab]``), used by inputs/10cl_meaning.ini:8
(``reclass = f,10,classes.dat``). ``SupplementaryMaterial/ImageNet_10cl.txt`` lists, per line,
``wnid index(0..999) superclass name``; when given it is checked against classes.dat and against the
wnid order of ``imagenet_mixed10.json`` (the devkit's map_clsloc order). Class names are taken from
``imagenet_mixed10.json`` (unique: crane_bird, maillot_1/2; the authors' file has crane and maillot
twice). The authors name no superclass: they are ``superclass 0`` … ``superclass 9``.

Usage::

    python tools/make_imagenet_sifting10.py --classes-dat SiftingFeatures/inputs/classes.dat \
        [--txt SiftingFeatures/SupplementaryMaterial/ImageNet_10cl.txt]
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

MAPS = Path(__file__).resolve().parents[1] / "src/prunelens/data/superclass_maps"
COMMIT = "386b61745042333d3b0767d89f9c9ac05b14c313"
DESCRIPTION = (
    "The 10 'meaningful' superclasses of Pellegrini & Biroli (Sifting out the features by pruning / "
    "Neural network pruning denoises the features...), used with reclass = f,10,classes.dat in "
    "inputs/10cl_meaning.ini. Superclass k of class c is entry c of inputs/classes.dat (= column 3 of "
    "SupplementaryMaterial/ImageNet_10cl.txt). The authors give no superclass names; rough content "
    "(our reading, not the authors'): 0 dogs; 1 other mammals; 2 birds and reptiles; 3 fish, "
    "amphibians and invertebrates; 4 devices, tools and weapons; 5 musical instruments and clothing; "
    "6 appliances, containers, balls; 7 vehicles, boats and furniture; 8 food, plants, fungi, hand "
    "tools; 9 places, buildings and structures. Every class is kept.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes-dat", type=Path, required=True)
    ap.add_argument("--txt", type=Path, help="SupplementaryMaterial/ImageNet_10cl.txt, to cross-check")
    ap.add_argument("--out", type=Path, default=MAPS / "imagenet_sifting10.json")
    args = ap.parse_args()

    dat = [int(x) for x in args.classes_dat.read_text().strip().split(",")]
    assert len(dat) == 1000 and set(dat) == set(range(10)), "1000 ids in 0..9"
    mixed = json.loads((MAPS / "imagenet_mixed10.json").read_text())
    if args.txt is not None:
        rows = [line.split() for line in args.txt.read_text().splitlines()]
        assert [int(r[1]) for r in rows] == list(range(1000)), "index column is 0..999 in order"
        assert [int(r[2]) for r in rows] == dat, "classes.dat == column 3 of ImageNet_10cl.txt"
        assert [r[0] for r in rows] == [c[0] for c in mixed["classes"]], "map_clsloc wnid order"
    classes = [[c[0], c[1], s] for c, s in zip(mixed["classes"], dat)]
    text = "".join(f"{w} {i} {n}\n" for i, (w, n, _) in enumerate(classes, 1))
    doc = {
        "name": "imagenet_sifting10",
        "description": DESCRIPTION,
        "superclass_source": {"repository": "phiandark/SiftingFeatures",
                              "file": "inputs/classes.dat (= SupplementaryMaterial/ImageNet_10cl.txt column 3)",
                              "function": "src/Data.py reclass 'f,10,classes.dat': indmap[label-1]",
                              "commit": COMMIT},
        "hierarchy": "none: a hand-made partition, one superclass id per ImageNet class",
        "class_order": {**mixed["class_order"], "map_clsloc_sha256": hashlib.sha256(text.encode()).hexdigest()},
        "superclasses": [{"name": f"superclass {k}", "wnid": None, "classes": dat.count(k)} for k in range(10)],
        "classes": classes,
    }
    assert doc["class_order"] == mixed["class_order"]
    body = json.dumps({k: v for k, v in doc.items() if k != "classes"}, indent=1)[:-2]
    rows_text = ",\n  ".join(json.dumps(c) for c in classes)
    args.out.write_text(f'{body},\n "classes": [\n  {rows_text}\n ]\n}}\n')
    print(args.out, [dat.count(k) for k in range(10)])


if __name__ == "__main__":
    main()
