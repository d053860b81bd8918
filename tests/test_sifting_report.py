"""The report's Pellegrini & Biroli figures across levels (the connectivity suite's drawn figures):
present for a pruned FCN with the numbers they show checked against the pool's own masks and
weights, absent (not empty) for a run the connectivity suite did not measure."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from prunelens.analysis import across_levels
from prunelens.analysis import connectivity as conn

FIRST, SECOND = "layers.fc1.weight", "layers.fc2.weight"
SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def fcn_report(tmp_path_factory):
    """A small FCN pool on synthetic 16 px images (4 levels), evaluated and reported."""
    from conftest import tiny_config_dict
    from prunelens.config import resolve_runs
    from prunelens.evaluate import evaluate_run
    from prunelens.pruning import prune_run
    from prunelens.report import build_report

    tmp = tmp_path_factory.mktemp("fcn")
    raw = tiny_config_dict(
        tmp, name="fcn", model={"name": "fcn", "input_shape": list(SHAPE), "widths": [24, 16]},
        data={"image_size": 16, "n_train": 128, "n_val": 32, "n_test": 64},
        prune={"scope": "layerwise", "rate": 0.5, "max_sparsity": 0.9, "exclude_classifier": True},
        evaluate={"suites": ["accuracy", "connectivity"], "connectivity": {
            "n_images": 0, "selectivity_images": 64, "n_permutations": 20, "n_shift_pairs": 40,
            "figures": False, "gallery_units": 5, "figure_pairs": 3, "radius": 1.5}})
    (config,) = resolve_runs(raw)
    pool = prune_run(config, log=lambda *_: None)
    evaluate_run(pool.run_dir, log=lambda *_: None)
    index = build_report(pool.run_dir, log=lambda *_: None)
    return pool, index


def section(index, section_id: str) -> str:
    text = index.read_text()
    start = text.index(f'<section id="{section_id}">')
    return text[start:text.index("</section>", start)]


def table(pool, name: str) -> pd.DataFrame:
    return pd.read_csv(pool.layout.suite("connectivity") / f"{name}.csv")


def masks_of(pool) -> dict[int, dict[str, torch.Tensor]]:
    return {lv.index: lv.load_masks() for lv in pool.levels}


def test_the_report_shows_the_six_figures_with_their_data(fcn_report):
    pool, index = fcn_report
    html = section(index, "connectivity")
    images = re.findall(r'<img src="(suites/fcn/connectivity/[^"]+)"', html)
    assert images == [f"suites/fcn/connectivity/{f.name}.png" for f in across_levels.FIGURES]
    data = re.findall(r'<a href="(suites/fcn/connectivity/[^"]+\.csv)">data', html)
    assert data == [f"suites/fcn/connectivity/{f.name}.csv" for f in across_levels.FIGURES]
    for path in (*images, *data):
        copied = index.parent / path
        assert copied.read_bytes() == (pool.layout.suite("connectivity") / copied.name).read_bytes()
    for figure in across_levels.FIGURES:
        assert f"<b>{figure.title.replace(chr(39), '&#x27;')}</b> (fcn)" in html


def test_the_same_units_at_every_level_by_the_documented_rule(fcn_report):
    pool, _ = fcn_report
    masks = masks_of(pool)
    last = max(masks)
    for name, of in (("masks_across_levels", lambda m: m[FIRST]),
                     ("second_layer_across_levels",
                      lambda m: (m[SECOND].float() @ m[FIRST].float()) > 0)):
        shown = table(pool, name)
        counts = of(masks[last]).sum(1)
        # the rule, written out: connected units ordered by (connections, index), evenly spaced
        order = sorted((int(k), u) for u, k in enumerate(counts.tolist()) if k > 0)
        picks = sorted(set(np.linspace(0, len(order) - 1, 5).round().astype(int).tolist()))
        units = [order[p][1] for p in picks]
        assert list(dict.fromkeys(shown["unit"])) == units
        assert sorted(set(shown["level"])) == sorted(masks)  # all levels: fewer than figure_levels
        for row in shown.itertuples():
            assert row.connections == int(of(masks[row.level])[row.unit].sum())


def test_connections_and_locality_tables_match_the_masks(fcn_report):
    pool, _ = fcn_report
    masks = masks_of(pool)
    connections = table(pool, "connections_across_levels")
    locality = table(pool, "locality_across_levels")
    for level, m in masks.items():
        counts = m[FIRST].sum(1).double().numpy()
        row = connections[(connections.level == level) & (connections.layer == "layers.fc1")].iloc[0]
        assert row.units == len(counts) and row.no_connection == int((counts == 0).sum())
        assert row["median"] == pytest.approx(np.median(counts[counts > 0]))
        assert row["q95"] == pytest.approx(np.percentile(counts[counts > 0], 95))
        loc = conn.locality(conn.unit_masks(m[FIRST], SHAPE), 1.5)
        row = locality[(locality.level == level) & (locality.layer == "layers.fc1")].iloc[0]
        assert row.pooled_score == pytest.approx(loc.pooled_score)
        assert row.mean_unit_score == pytest.approx(float(np.nanmean(loc.unit_score.numpy())))
        assert row.random_mask == 1.0
    assert set(locality.layer) == {"layers.fc1", "layers.fc2 (effective)"}


def test_translated_pairs_are_the_best_sampled_pairs_with_their_weight_cosine(fcn_report):
    from prunelens.results import load_results

    pool, _ = fcn_report
    pairs = table(pool, "translated_pairs")
    assert set(pairs.level) == {lv.index for lv in pool.levels if lv.sparsity > 0}  # not the dense
    sampled = load_results(pool.run_dir, "connectivity")
    sampled = sampled[(sampled.metric == "shift_similarity") & (sampled.method == "layers.fc1")]
    for level, part in pairs.groupby("level"):
        model = pool.level(level).load_model(torch.device("cpu"))
        mask = pool.level(level).load_masks()[FIRST]
        units = conn.unit_masks(mask, SHAPE)
        weights = (model.layers.fc1.weight.detach() * mask).reshape(-1, *SHAPE).double()
        best = sampled[sampled.level == level].sort_values("value", ascending=False, kind="stable")
        assert list(part["mask_similarity"]) == pytest.approx(list(best["value"][:len(part)]))
        for row in part.itertuples():
            a, b = units[row.unit_i:row.unit_i + 1], units[row.unit_j:row.unit_j + 1]
            assert row.mask_similarity == pytest.approx(float(conn.shift_similarity(a, b)[0]))
            assert [row.shift_y, row.shift_x] == conn.best_shift(a, b)[0].tolist()
            # Σ_c Σ_p w_i(p)·w_j(p + s) by slicing, over the pixels where both exist
            dy, dx = row.shift_y, row.shift_x
            wi, wj = weights[row.unit_i], weights[row.unit_j]
            h, w = SHAPE[1:]
            ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
            yt, xt = slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx))
            cosine = float((wi[:, ys, xs] * wj[:, yt, xt]).sum() / (wi.norm() * wj.norm()))
            assert row.weight_similarity == pytest.approx(cosine, abs=1e-9)


def test_class_independence_table_is_the_mean_of_its_records(fcn_report):
    from prunelens.results import load_results

    pool, _ = fcn_report
    shown = table(pool, "class_independent_across_levels")
    frame = load_results(pool.run_dir, "connectivity")
    frame = frame[frame.metric == "class_independent_fraction"]
    for row in shown.itertuples():
        values = frame[frame.level == row.level]["value"].to_numpy(dtype=float)
        assert row.fraction == pytest.approx(float(np.nanmean(values)))
        assert row.units == int(np.isfinite(values).sum()) and row.measure == "eta2"


def test_a_run_without_the_connectivity_suite_gets_no_figures_in_the_section(tmp_path):
    from conftest import tiny_config_dict
    from prunelens.config import resolve_runs
    from prunelens.evaluate import evaluate_run
    from prunelens.pruning import prune_run
    from prunelens.report import build_report

    raw = tiny_config_dict(tmp_path, name="plain", prune={"max_sparsity": 0.5},
                           evaluate={"suites": ["accuracy"]})
    pool = prune_run(resolve_runs(raw)[0], log=lambda *_: None)
    evaluate_run(pool.run_dir, log=lambda *_: None)
    html = section(build_report(pool.run_dir, log=lambda *_: None), "connectivity")
    assert "<figure" not in html and "Across levels" not in html
    assert "suite &#x27;connectivity&#x27; on plain: not in evaluate.suites of its config" in html


def test_level_data_round_trip_and_gallery_rule():
    from prunelens.analysis.selectivity import pair_weight_similarity

    g = torch.Generator().manual_seed(0)
    first = torch.rand(6, *SHAPE, generator=g) < 0.2
    second = torch.rand(4, *SHAPE, generator=g) < 0.5
    weights = torch.randn(6, *SHAPE, generator=g) * first
    pairs = pair_weight_similarity(first, weights, torch.tensor([[0, 1], [2, 5]]))
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / across_levels.LEVEL_FILE
        across_levels.save_level(path, [("fc1", first), ("fc2 (effective)", second)], pairs, weights)
        saved = across_levels.read_level(path)
    assert saved["views"]["first"][0] == "fc1" and torch.equal(saved["views"]["first"][1], first)
    assert torch.equal(saved["views"]["second"][1], second)
    assert torch.equal(saved["pairs"]["weights"][1, 1], weights[5])
    assert across_levels.gallery_units(torch.tensor([0, 5, 3, 3, 9, 0, 1]), 3) == [6, 3, 4]
    assert across_levels.gallery_units(torch.tensor([0, 0]), 3) == []
    assert across_levels.shown_levels(list(range(10)), 4) == [0, 3, 6, 9]
    assert math.isclose(float(pairs.mask_similarity[0]),
                        float(conn.shift_similarity(first[:1], first[1:2])[0]))


def test_a_damaged_level_file_is_named_and_left_out(tmp_path):
    path = tmp_path / across_levels.LEVEL_FILE
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="damaged .*re-run `prunelens evaluate --suite connectivity"):
        assert across_levels.read_level(path) is None


@pytest.mark.parametrize("min_kernel, expected", [
    (3, {"connections_across_levels", "locality_across_levels", "masks_across_levels",
         "translated_pairs", "class_independent_across_levels"}),
    (5, {"connections_across_levels", "class_independent_across_levels"}),
])
def test_conv_kernels_get_the_figures_their_size_allows(tmp_path, min_kernel, expected):
    """A CNN's 3 px kernels: galleries, locality and pairs only when min_kernel admits them; no
    second layer (its masks do not compose)."""
    from conftest import tiny_config_dict
    from prunelens.config import resolve_runs
    from prunelens.evaluate import evaluate_run
    from prunelens.pruning import prune_run

    raw = tiny_config_dict(tmp_path, prune={"max_sparsity": 0.75}, evaluate={
        "suites": ["connectivity"], "connectivity": {
            "n_images": 0, "selectivity_images": 32, "n_permutations": 10, "n_shift_pairs": 10,
            "figures": False, "min_kernel": min_kernel}})
    pool = prune_run(resolve_runs(raw)[0], log=lambda *_: None)
    evaluate_run(pool.run_dir, log=lambda *_: None)
    folder = pool.layout.suite("connectivity")
    assert {p.stem for p in folder.glob("*.png")} == expected
    assert {p.stem for p in folder.glob("*.csv")} - {f"level_{lv.index:02d}" for lv in pool.levels} == expected
    # the others are recorded as not drawn, with why; a level without locality is still up to date
    not_drawn = json.loads(pool.layout.drawn("connectivity").read_text())["not_drawn"]
    assert not_drawn == {f.name: across_levels.NO_DATA[f.name] for f in across_levels.FIGURES
                         if f.name not in expected}
    lines = []
    evaluate_run(pool.run_dir, log=lines.append)
    assert lines == [f"{pool.name}: every result is up to date"]


# ---- resume: the levels' saved files and the drawing are kept up to date ---------------------------
@pytest.fixture
def evaluated_copy(fcn_report, tmp_path):
    """A copy of the evaluated FCN run folder and a function that evaluates it again, returning
    the levels the connectivity suite computed."""
    import shutil

    from prunelens.evaluate import evaluate_run

    pool, _ = fcn_report
    run_dir = shutil.copytree(pool.run_dir, tmp_path / pool.run_dir.name)

    def evaluate(*overrides) -> list[int]:
        lines = []
        evaluate_run(run_dir, overrides=list(overrides) or None, log=lines.append)
        return sorted(int(re.search(r"level +(\d+)", line).group(1)) for line in lines
                      if re.search(r"connectivity +level", line))
    return run_dir, evaluate


def level_file(run_dir, level: int):
    from prunelens.runfolder import Layout
    return Layout(run_dir).level_artifacts("connectivity", level) / across_levels.LEVEL_FILE


def figure_files(run_dir) -> dict[str, int]:
    folder = run_dir / "results" / "connectivity"
    return {p.name: p.stat().st_mtime_ns for f in across_levels.FIGURES for p in f.files(folder)}


def test_a_damaged_level_file_recomputes_that_level_and_redraws(evaluated_copy):
    run_dir, evaluate = evaluated_copy
    assert evaluate() == []  # up to date
    before = figure_files(run_dir)
    level_file(run_dir, 1).write_bytes(b"not a safetensors file")
    assert evaluate() == [1]
    assert across_levels.read_level(level_file(run_dir, 1)) is not None
    after = figure_files(run_dir)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)
    assert evaluate() == []


def test_results_without_the_level_file_are_computed_again_for_those_levels(evaluated_copy):
    """Results computed before the figures existed have no saved masks."""
    run_dir, evaluate = evaluated_copy
    level_file(run_dir, 1).unlink()
    level_file(run_dir, 2).unlink()
    assert evaluate() == [1, 2]
    assert level_file(run_dir, 1).is_file() and level_file(run_dir, 2).is_file()
    assert evaluate() == []


def test_a_drawing_option_redraws_without_recomputing(evaluated_copy):
    run_dir, evaluate = evaluated_copy
    shown = lambda: set(pd.read_csv(run_dir / "results/connectivity/masks_across_levels.csv")["level"])  # noqa: E731
    assert len(shown()) > 2
    assert evaluate("evaluate.connectivity.figure_levels=2") == []
    assert len(shown()) == 2
    assert evaluate("evaluate.connectivity.figure_levels=2") == []  # drawn: up to date


def test_missing_figures_are_drawn_again_or_named_in_the_report(evaluated_copy):
    from prunelens.report import build_report
    from prunelens.runfolder import Layout

    run_dir, evaluate = evaluated_copy
    Layout(run_dir).drawn("connectivity").unlink()  # as evaluated before the figures existed
    (run_dir / "results/connectivity/translated_pairs.png").unlink()
    index = build_report(run_dir, log=lambda *_: None)
    missing = section(index, "connectivity").split("<h3>Not evaluated</h3>")[1]
    assert "figures across levels of suite &#x27;connectivity&#x27; on fcn" in missing
    assert f"prunelens evaluate {run_dir} --suite connectivity" in missing
    assert evaluate() == []
    assert (run_dir / "results/connectivity/translated_pairs.png").is_file()
    index = build_report(run_dir, log=lambda *_: None)
    assert "figures across levels" not in section(index, "connectivity")
