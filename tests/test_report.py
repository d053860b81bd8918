"""The report: run-folder readers, figures, the HTML folder, and its rendering in headless Chromium."""
from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import write_manifest
from prunelens.errors import PoolError, PrunelensError
from prunelens.io import atomic_save_tensors, atomic_write_json, sha256_file
from prunelens.report import build_report, write_report
from prunelens.report.figures import (MAX_LINES, _at_resolution, _draw, _fit_lines, _rows,
                                      draw_figures, plots_for)
from prunelens.report.runs import pool_table
from prunelens.runfolder import RunFolder
from prunelens.report.sweet_spots import compare_to_dense, sweet_spots
from prunelens.stats import summarize
from prunelens.results import Record, write_level

EVIL = "<script>alert('x')</script>"
N_LEVELS = 4


# ---- a run folder in its on-disk layout (prunelens.runfolder) -------------------------------------------------
def _records(level: int, rng: np.random.Generator) -> list[Record]:
    """Accuracy and RMA that improve with pruning (sweet spots), plus the other suites' metrics."""
    out = [Record("accuracy", "accuracy", float(i < 120 + 25 * level), dataset="test", item=str(i))
           for i in range(200)]
    base = np.linspace(0.1, 0.9, 60)
    for method in ("gradcam", EVIL):
        for metric in ("rma", "rra"):
            values = base + 0.05 * level + rng.normal(0, 0.01, 60)
            out += [Record("interpretability", metric, float(v), method=method, dataset="synthetic",
                           item=str(i)) for i, v in enumerate(values)]
    out += [Record("discovery", "corloc", float(rng.random() < 0.4 + 0.05 * level), method="lost",
                   dataset="synthetic", item=str(i)) for i in range(60)]
    for dataset in ("colour", "contrast"):
        for condition in ("c1", "c2"):
            out += [Record("alignment", "accuracy", float(rng.random() < 0.6), dataset=dataset,
                           condition=condition, item=f"{dataset}-{condition}-{i}") for i in range(20)]
    out += [Record("alignment", "shape_bias", 0.3 + 0.01 * level, dataset="cue-conflict"),
            Record("alignment", "error_consistency", 0.2, dataset="colour")]
    out += [Record("connectivity", "locality_score", float(v), method="fc1", item=str(i))
            for i, v in enumerate(rng.random(30))]
    out += [Record("psp", "psp_entropy", float(v), method="fc1", item=str(i))
            for i, v in enumerate(rng.random(40))]
    return out


def make_run(root: Path, name: str, seed: int = 0, evaluated_levels: int = N_LEVELS,
             config_extra: dict | None = None) -> tuple[Path, pd.DataFrame]:
    """A run folder (pool.json, level files with hashes, results CSVs + sidecars) and the frame
    ``load_results`` gives for it."""
    run_dir = root / name
    rng = np.random.default_rng(seed)
    config = {"name": name, "seed": seed, "output_dir": str(root), "model": {"name": "small_resnet"},
              "data": {"name": "synthetic"}, "train": {"epochs": 1, "lr": 0.1},
              "prune": {"rate": 0.2}, "evaluate": {"n_boot": 300}, **(config_extra or {})}
    entries, frames = [], []
    for level in range(N_LEVELS):
        sparsity = 1 - 0.8 ** level
        level_dir = run_dir / f"level_{level:02d}"
        atomic_save_tensors(level_dir / "model.safetensors", {"fc.weight": torch.ones(2, 2) * level})
        atomic_save_tensors(level_dir / "masks.safetensors", {"fc.weight": torch.ones(2, 2)})
        atomic_write_json(level_dir / "level.json", {
            "index": level, "sparsity": sparsity, "layer_sparsity": {"fc.weight": sparsity},
            "metrics": {"train_acc": 0.9, "train_loss": 0.3, "val_acc": 0.8, "val_loss": 0.5,
                        "test_acc": 0.6 + 0.05 * level,
                        "test_loss": 0.5},
            "epochs": 1, "steps": 10, "wall_time_s": 1.5,
            "files": {f: sha256_file(level_dir / f) for f in ("model.safetensors", "masks.safetensors")}})
        entries.append(level_dir)
        if level >= evaluated_levels:
            continue
        records = _records(level, rng)
        for suite in sorted({r.suite for r in records}):
            write_level(run_dir, suite, level, [r for r in records if r.suite == suite], meta={})
        frame = pd.DataFrame([asdict(r) for r in records])
        frames.append(frame.assign(run=name, model="small_resnet", level=level, sparsity=sparsity))
    write_manifest(run_dir, name, config, entries)
    return run_dir, pd.concat(frames, ignore_index=True) if frames else None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Two runs (one evaluated only on its first levels), a suite PNG, a skipped suite; the report."""
    root = tmp_path_factory.mktemp("runs")
    run_a, frame_a = make_run(root, "cnn", config_extra={"note": EVIL})
    run_b, frame_b = make_run(root, "vit", seed=1, evaluated_levels=2,
                              config_extra={"model": {"name": "small_vit"}})
    frame_b["model"] = "small_vit"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(run_a / "results" / "interpretability" / "grid.png")
    atomic_write_json(run_a / "results" / "sharpness" / "skipped.json",
                      {"reason": "needs the training loss (no train split)"})
    frame = pd.concat([frame_a, frame_b], ignore_index=True)
    index = write_report([RunFolder(run_a), RunFolder(run_b)], frame, root / "out")
    return index, frame, [run_a, run_b]


# ---- readers --------------------------------------------------------------------------------------
def test_read_run_reads_manifest_and_levels(tmp_path):
    run_dir, _ = make_run(tmp_path, "r")
    run = RunFolder(run_dir)
    assert (run.name, run.config.model.name, run.config.seed, run.complete) == ("r", "small_resnet", 0, True)
    table = pool_table(run)
    assert list(table["level"]) == list(range(N_LEVELS))
    assert table["test_acc"].tolist() == pytest.approx([0.6, 0.65, 0.7, 0.75])
    assert table["model_sha256"][1] == sha256_file(run_dir / "level_01" / "model.safetensors")


def test_pool_table_has_the_papers_sparsity_count(tmp_path):
    """The report's pool table carries the sparsity Cassano et al.'s code reports (train.py
    ``compute_sparsity_global``: zeros / numel over every Conv2d and Linear weight), computed by the
    same function as ``prunelens pool show``."""
    from torch import nn

    from prunelens.cli import format_pool_table
    from prunelens.models import create_model
    from prunelens.report.html import _pool_tables

    run_dir, _ = make_run(tmp_path, "r")
    run = RunFolder(run_dir)
    table = pool_table(run)
    for level in run.levels:  # the paper's count on a model whose fc is pruned as level.json says
        model = create_model("small_resnet", run.num_classes)
        fc = model.fc.weight.data.view(-1)
        fc[:round(level.layer_sparsity["fc.weight"] * fc.numel())] = 0
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        papers = sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)
        assert table["sparsity_paper"][level.index] == pytest.approx(papers, abs=1e-12)
    assert table["sparsity_paper"][2] > 0 and table["sparsity_paper"][2] < table["sparsity"][2]
    shown = format_pool_table(run).splitlines()[4].split()   # level 2: the CLI prints the same count
    assert shown[3] == f"{table['sparsity_paper'][2]:.1%}"
    page = _pool_tables(SimpleNamespace(runs=[run], pools={"r": table}))
    assert "paper&#x27;s count" in page and f"<td>{table['sparsity_paper'][2]:.1%}</td>" in page


def test_read_run_errors_name_the_file(tmp_path):
    with pytest.raises(PoolError, match="nothing does not exist"):
        RunFolder(tmp_path / "nothing")
    run_dir, _ = make_run(tmp_path, "r")
    (run_dir / "level_02" / "level.json").unlink()
    with pytest.raises(PoolError, match=r"level_02/level\.json is missing: delete .*level_02"):
        RunFolder(run_dir).levels
    (run_dir / "pool.json").write_text("{not json")
    with pytest.raises(PoolError, match="pool.json is not readable JSON"):
        RunFolder(run_dir)


# ---- figures --------------------------------------------------------------------------------------
def test_figures_drawn_from_results_as_png_and_svg(report):
    index, _, _ = report
    figures = index.parent / "figures"
    names = {p.stem for p in figures.glob("*.png")}
    assert names == {p.stem for p in figures.glob("*.svg")}
    assert names == {"accuracy", "interpretability", "interpretability_overlay", "discovery",
                     "alignment_ood", "alignment_datasets", "shape_bias", "consistency",
                     "connectivity", "psp_entropy"}
    for name in names:
        with Image.open(figures / f"{name}.png") as png:
            assert png.size[0] > 300
        assert ET.parse(figures / f"{name}.svg").getroot().tag.endswith("svg")


def test_unknown_suites_and_metrics_get_a_generic_figure(tmp_path):
    frame = pd.DataFrame({"run": "r", "model": "m", "level": [0, 1, 0, 1], "sparsity": [0, .2, 0, .2],
                          "suite": ["newsuite", "newsuite", "psp", "psp"],
                          "metric": ["foo", "foo", "bar", "bar"], "method": "", "dataset": "",
                          "condition": "", "item": "", "value": [1.0, 2.0, 3.0, 4.0]})
    figures, skipped = draw_figures(frame, tmp_path, n_boot=50)
    assert {f.name: f.section for f in figures} == {"newsuite_other": "other", "psp_other": "minima"}
    assert skipped == [("psp", "psp_entropy", "no results of suite 'psp' (psp_entropy)"),
                       ("psp", "psp_entropy_per_class", "no results of suite 'psp' (psp_entropy_per_class)")]


def test_interpretability_figure_curves_bands_and_markers(report):
    """Each curve plots the per-level means with a CI band; sweet spots are marked on it."""
    _, frame, _ = report
    spec = next(s for s in plots_for(frame) if s.name == "interpretability")
    groups = {"cnn": "cnn", "vit": "vit"}
    spots = sweet_spots(compare_to_dense(frame, groups, n_boot=300))
    rows, exact = _at_resolution(_rows(frame, spec), spec)
    summary = summarize(rows, groups, n_boot=100)
    fig = _draw(spec, summary, summarize(frame[frame["suite"] == "accuracy"], groups, 100),
                spots, ["cnn", "vit"])
    ax = fig.axes[0]  # cnn · synthetic · rma
    assert exact and ax.get_title() == "cnn · synthetic · rma"
    gradcam = next(line for line in ax.lines if line.get_label() == "gradcam")
    want = summary[(summary["group"] == "cnn") & (summary["metric"] == "rma")
                   & (summary["method"] == "gradcam")].sort_values("level")
    np.testing.assert_allclose(gradcam.get_ydata(), want["mean"])
    assert len(ax.collections) == 2                         # one CI band per method
    confirmed = spots[(spots["group"] == "cnn") & (spots["metric"] == "rma")
                      & (spots["method"] == "gradcam") & (spots["status"] == "confirmed")]
    assert len(confirmed) == N_LEVELS - 1                   # RMA and accuracy rise at every level
    stars = [line for line in ax.lines if line.get_marker() == "*" and len(line.get_xdata())]
    assert sum(len(s.get_xdata()) for s in stars) == 2 * (N_LEVELS - 1)  # both methods
    twin = [a for a in fig.axes if a.get_ylabel() == "test accuracy"]
    assert twin, "accuracy on a twin axis"


def test_busy_figures_split_into_panels():
    """30 layers do not go into one panel: the layer column moves to the panels."""
    frame = pd.DataFrame({"run": "r", "model": "m", "level": 0, "sparsity": 0.0, "suite": "psp",
                          "metric": "psp_entropy", "method": [f"layer{i}" for i in range(30)],
                          "dataset": "", "condition": "", "item": "0", "value": 1.0})
    spec = next(s for s in plots_for(frame) if s.name == "psp_entropy")
    fitted = _fit_lines(spec, summarize(frame, n_boot=10))
    assert (fitted.panels, fitted.lines) == (("metric", "method"), ("group",))
    assert _fit_lines(spec, summarize(frame[:MAX_LINES], n_boot=10)) == spec


# ---- the HTML folder ------------------------------------------------------------------------------
class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href"):
                self.links.append(value)


def test_html_is_self_contained_and_escaped(report):
    index, _, runs = report
    text = index.read_text()
    parser = _Links()
    parser.feed(text)
    assert "script" not in parser.tags
    assert EVIL not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    files = [link for link in parser.links if not link.startswith("#")]
    assert any(f.endswith(".png") for f in files) and any(f.endswith(".svg") for f in files)
    for link in files:
        assert "://" not in link and not link.startswith("/"), link
        assert (index.parent / link).is_file(), link
    assert "suites/cnn/interpretability/grid.png" in files
    for section in ("Pool and accuracy", "RQ1 — Interpretability", "RQ2 — Unsupervised object discovery",
                    "RQ3 — Human alignment", "Connectivity and locality", "PSP-entropy and sharpness",
                    "Sweet spots", "Not evaluated, and why", "Runs: config and provenance"):
        assert f">{section}</h2>" in text
    assert "<b>confirmed</b> when both CI lower bounds are" in " ".join(text.split())  # the rule
    assert RunFolder(runs[0]).identity_hash in text
    assert sha256_file(runs[0] / "level_03" / "model.safetensors") in text


def test_html_lists_what_was_not_evaluated(report):
    index, _, _ = report
    text = index.read_text()
    assert "suite &#x27;sharpness&#x27; on cnn: needs the training loss (no train split)" in text
    assert "suite &#x27;interpretability&#x27; on vit, levels 2, 3: no results for these levels" in text
    assert "figure &#x27;sharpness&#x27;" not in text  # the suite's own line says it all


def test_report_of_a_run_without_results(tmp_path):
    """Only the pool: level.json accuracy is drawn, every suite is listed as not evaluated."""
    run_dir, none = make_run(tmp_path, "r", evaluated_levels=0)
    assert none is None
    empty = pd.DataFrame(columns=["run", "model", "level", "sparsity", "suite", "metric", "method",
                                  "dataset", "condition", "item", "value"])
    text = write_report([RunFolder(run_dir)], empty, tmp_path / "out", n_boot=100).read_text()
    for suite in ("interpretability", "discovery", "alignment", "connectivity", "psp", "sharpness"):
        assert f"suite &#x27;{suite}&#x27; on r: no results in" in text
    assert "per-image accuracy on r: the accuracy suite has no results; level.json" in text
    assert (tmp_path / "out" / "figures" / "accuracy.png").is_file()
    spots = pd.read_csv(tmp_path / "out" / "sweet_spots.csv")
    assert spots.empty


def test_sweet_spot_tables_written(report):
    index, _, _ = report
    spots = pd.read_csv(index.parent / "sweet_spots.csv", keep_default_na=False)
    rma = spots[(spots["group"] == "cnn") & (spots["metric"] == "rma") & (spots["method"] == "gradcam")]
    assert sorted(rma["level"]) == [1, 2, 3] and set(rma["status"]) == {"confirmed"}
    assert 'class="confirmed"' in index.read_text()
    assert set(pd.read_csv(index.parent / "level_vs_dense.csv")["group"]) == {"cnn", "vit"}


def test_out_dir_is_replaced_whole_and_foreign_folders_refused(tmp_path):
    run_dir, frame = make_run(tmp_path, "r", evaluated_levels=2)
    run = RunFolder(run_dir)
    frame = frame[frame["suite"] == "accuracy"]
    out = tmp_path / "out"
    write_report([run], frame, out, n_boot=100)
    (out / "stale.txt").write_text("old")
    write_report([run], frame, out, n_boot=100)
    assert (out / "index.html").is_file() and not (out / "stale.txt").exists()
    # nothing is written beside it: the lock, the marker and the build stay inside, and no build or
    # old folder is left there
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".lock", ".prunelens-report"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(PrunelensError, match="not a prunelens report folder"):
        write_report([run], frame, foreign, n_boot=100)
    assert (foreign / "thesis.tex").read_text() == "keep me"


def test_build_report_from_run_folders(tmp_path):
    run_dir, _ = make_run(tmp_path, "r")
    index = build_report([run_dir], tmp_path / "out")
    assert index.is_file() and "Pool of r" in index.read_text()


# ---- rendering in headless Chromium ---------------------------------------------------------------
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe", "--window-size=1280,2000"]


def _chromium() -> str:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed and `apt-get install -y chromium` is not possible here")
    return found


class DevTools:
    """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, chromium: str, user_dir: Path):
        to_child, self._to = os.pipe()
        self._from, from_child = os.pipe()
        # fds ≥ 10 so that the dup2 to 3/4 in the child cannot clobber one another
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child, from_child)]
        os.close(to_child)
        os.close(from_child)

        def child():
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={user_dir}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=child, close_fds=False)  # fds are CLOEXEC by default
        for fd in high:
            os.close(fd)
        self._buf, self._id, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if not select.select([self._from], [], [], max(0.0, deadline - time.time()))[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to)
        os.close(self._from)


def test_report_renders_in_headless_chromium(report, tmp_path):
    index, _, _ = report
    browser = DevTools(_chromium(), tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session)
        browser.call("Page.navigate", session, url=index.as_uri())
        browser.wait_for("Page.loadEventFired")
        images = browser.call("Runtime.evaluate", session, returnByValue=True, expression=(
            "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
        ))["result"]["value"]
        shot = browser.call("Page.captureScreenshot", session, format="png")["data"]
    finally:
        browser.close()
    assert len(images) >= 10
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert broken == []
    errors = [e for e in browser.events
              if e.get("method") in ("Runtime.exceptionThrown", "Network.loadingFailed")
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == []
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot))).convert("L"), dtype=float)
    assert pixels.shape[1] >= 1000
    assert (pixels < 200).mean() > 0.01 and pixels.std() > 10  # text and figures, not a blank page


def test_claims_section_and_table(report):
    """The claims of both runs: the CNN's RQ1 correlation is Spearman's ρ of the per-level means of
    the same records; the ViT, evaluated on two levels only, is not tested."""
    from scipy.stats import spearmanr

    index, frame, _ = report
    html = index.read_text()
    assert 'id="claims"' in html and "Holm-corrected" in html
    claims = pd.read_csv(index.parent / "claims.csv", keep_default_na=False)
    row = claims[(claims["claim"] == "rq1_attribution_vs_accuracy") & (claims["compared"] == "cnn")
                 & (claims["metric"] == "rma") & (claims["method"] == "gradcam")].iloc[0]
    cnn = frame[frame["run"] == "cnn"]
    means = [cnn[(cnn["suite"] == s) & (cnn["metric"] == m)].groupby("level")["value"].mean()
             for s, m in (("accuracy", "accuracy"), ("interpretability", "rma"))]
    assert float(row["value"]) == pytest.approx(spearmanr(*means).statistic)
    assert row["expected"] == "−" and row["resampled"] == "levels › images"
    vit = claims[claims["compared"] == "vit"]
    assert len(vit) and set(vit["verdict"]) == {"not tested"}
