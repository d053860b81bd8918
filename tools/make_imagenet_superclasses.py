"""Build ``src/prunelens/data/superclass_maps/imagenet_mixed10.json``: ImageNet-1k → 10 superclasses.

The 10 superclasses are the ``mixed_10`` group of MadryLab's robustness library
(robustness/tools/imagenet_helpers.py, ``common_superclass_wnid('mixed_10')``, commit
1da08f4c4e940ec4897c0950e0803dd71c7967ae). A class belongs to a superclass when that synset is one of
its ancestors through WordNet 3.0 noun hypernym pointers (``@`` and ``@i``) — all paths, not the one
parent per synset that the robustness library keeps from ImageNet's wordnet.is_a.txt, so some groups
are larger (bird 59 vs 52, feline 13 vs 8, fruit 16 vs 7). A class under two superclasses goes to the
nearer one (fewest hypernym steps; ties: the group's order); only minivan is (car: 1 step, truck: 3).
Classes under none are left out of the task.

Class order: the labels 1…1000 of downsampled ImageNet (Chrabaszcz, Loshchilov & Hutter 2017) are
the ILSVRC2015 devkit's ``map_clsloc.txt`` numbers (PatrykChrabaszcz/Imagenet32_Scripts, utils.py
``get_label_dict``, commit caf2a13812a32e5eb3e9d8150ba874875d525153).

Usage (WordNet 3.0 from Debian's ``wordnet-base``)::

    python tools/make_imagenet_superclasses.py --wordnet /usr/share/wordnet/data.noun \
        [--order map_clsloc.txt]   # default: the order already in the JSON
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/prunelens/data/superclass_maps/imagenet_mixed10.json"
MIXED_10 = [("dog", "n02084071"), ("bird", "n01503061"), ("insect", "n02159955"),
            ("monkey", "n02484322"), ("car", "n02958343"), ("feline", "n02120997"),
            ("truck", "n04490091"), ("fruit", "n13134947"), ("fungus", "n12992868"),
            ("boat", "n02858304")]


def hypernyms(data_noun: Path) -> dict[str, list[str]]:
    """wnid → wnids of its hypernyms and instance hypernyms (WordNet data file format, wndb(5))."""
    out = {}
    for line in data_noun.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue  # the licence header
        fields = line.split("|")[0].split()
        words = int(fields[3], 16)
        at = 4 + 2 * words
        pointers = fields[at + 1:at + 1 + 4 * int(fields[at])]
        out["n" + fields[0]] = ["n" + pointers[i + 1] for i in range(0, len(pointers), 4)
                                if pointers[i] in ("@", "@i") and pointers[i + 2] == "n"]
    return out


def steps_to(wnid: str, target: str, parents: dict[str, list[str]]) -> int | None:
    """Fewest hypernym steps from ``wnid`` up to ``target`` (None: not an ancestor)."""
    frontier, seen, steps = {wnid}, {wnid}, 0
    while frontier:
        if target in frontier:
            return steps
        frontier = {p for x in frontier for p in parents[x] if p not in seen}
        seen |= frontier
        steps += 1
    return None


def superclass(wnid: str, parents: dict[str, list[str]]) -> int | None:
    found = [(s, k) for k, (_, w) in enumerate(MIXED_10) if (s := steps_to(wnid, w, parents)) is not None]
    return min(found)[1] if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet/data.noun"))
    ap.add_argument("--order", type=Path, help="map_clsloc.txt (wnid, label 1…1000, name per line)")
    args = ap.parse_args()
    if args.order:
        rows = [line.split()[:3] for line in args.order.read_text().splitlines() if line.strip()]
        order = [(w, n) for w, _, n in sorted(rows, key=lambda r: int(r[1]))]
    else:
        order = [(w, n) for w, n, _ in json.loads(OUT.read_text())["classes"]]
    parents = hypernyms(args.wordnet)
    classes = [[w, n, superclass(w, parents)] for w, n in order]
    counts = [sum(c[2] == k for c in classes) for k in range(len(MIXED_10))]
    text = "".join(f"{w} {i} {n}\n" for i, (w, n) in enumerate(order, 1))
    doc = {
        "name": "imagenet_mixed10",
        "description": __doc__.split("\n\n")[1].replace("\n", " ").strip(),
        "superclass_source": {"repository": "MadryLab/robustness",
                              "file": "robustness/tools/imagenet_helpers.py",
                              "function": "common_superclass_wnid('mixed_10')",
                              "commit": "1da08f4c4e940ec4897c0950e0803dd71c7967ae"},
        "hierarchy": "WordNet 3.0 noun hypernym and instance-hypernym pointers (data.noun), all paths; "
                     "a class under two superclasses goes to the nearer one",
        "class_order": {"what": "entry k of 'classes' is downsampled-ImageNet label k + 1: the "
                                "ILSVRC2015 devkit map_clsloc.txt order",
                        "source": "PatrykChrabaszcz/Imagenet32_Scripts utils.py get_label_dict "
                                  "(commit caf2a13812a32e5eb3e9d8150ba874875d525153)",
                        "map_clsloc_sha256": hashlib.sha256(text.encode()).hexdigest()},
        "superclasses": [{"name": n, "wnid": w, "classes": c} for (n, w), c in zip(MIXED_10, counts)],
        "classes": classes,
    }
    body = json.dumps({k: v for k, v in doc.items() if k != "classes"}, indent=1)[:-2]
    rows = ",\n  ".join(json.dumps(c) for c in classes)
    OUT.write_text(f'{body},\n "classes": [\n  {rows}\n ]\n}}\n')
    print(f"{OUT}: {sum(counts)} of {len(classes)} classes in {len(counts)} superclasses {counts}")


if __name__ == "__main__":
    main()
