"""Wall time of ``prunelens run`` on the embedded default, stage by stage.

Runs the README's main job (prune both demo models → evaluate every suite → report) in a fresh
folder, as a user would (``python -m prunelens run``), and prints:

* the seconds per stage, from the summary line the command ends with;
* what each suite took per run, from the results sidecars;
* the test accuracy of every level, so a faster demo is not bought with an empty one.

Target (issue #16): the whole run in at most 5 minutes on a 2-core machine (stretch: 3). With
``--config configs/demo_full.yaml`` it times the larger demo instead, for the ratio between them.

    PYTHONPATH=src python benchmarks/demo_run.py [--config PATH] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", help="config to run (default: the embedded demo)")
    ap.add_argument("--out", help="folder for the runs (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="prunelens-demo-"))
    cmd = [sys.executable, "-m", "prunelens", "run", *([args.config] if args.config else []),
           "--set", f"output_dir={out / 'runs'}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"prunelens exited with {proc.returncode}")
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("prunelens run:"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    for stage, seconds in re.findall(r"(\w[\w -]*?) (\d+) s", summary.removeprefix("prunelens run: ")):
        print(f"stage_s {stage:<24} {seconds:>5}")
    for run_dir in sorted(p.parent for p in (out / "runs").glob("*/pool.json")):
        _per_run(run_dir)
    print(f"demo_total_s={wall:.0f} (prunelens run, process start to exit) in {out}")


def _per_run(run_dir: Path) -> None:
    from prunelens.runfolder import RunFolder

    pool = RunFolder(run_dir)
    accuracy = " ".join(f"{lv.metrics['test_acc']:.3f}" for lv in pool.levels)
    print(f"{pool.name}: {len(pool.levels)} levels, test accuracy by level {accuracy}")
    per_suite: Counter[str] = Counter()
    for side in (run_dir / "results").glob("*/level_*.json"):
        per_suite[side.parent.name] += json.loads(side.read_text())["wall_time_s"]
    for suite, seconds in sorted(per_suite.items()):
        print(f"  evaluate {suite:<16} {seconds:6.1f} s")


if __name__ == "__main__":
    main()
