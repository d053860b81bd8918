"""Wall time of ``prunelens run`` on the embedded default, stage by stage.

Runs the README's main job (prune both demo models → evaluate every suite → report) in a fresh
folder and prints the total and a breakdown from the files the stages wrote (level.json wall
times, results sidecars). Targets: pruning < 5 min, the whole run < 10 min on 2 CPU cores.

    PYTHONPATH=src python benchmarks/demo_run.py [--out DIR] [--prune-only]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="folder for the runs (default: a temporary one)")
    ap.add_argument("--prune-only", action="store_true", help="time `prunelens prune` only")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="prunelens-demo-"))
    cmd = [sys.executable, "-m", "prunelens", "prune" if args.prune_only else "run"]
    if args.prune_only:
        from prunelens.config import default_config_path
        cmd.append(str(default_config_path()))
    cmd += ["--set", f"output_dir={out / 'runs'}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"prunelens exited with {proc.returncode}")
    print(proc.stdout.strip().splitlines()[-1])
    for pool_json in sorted((out / "runs").glob("*/pool.json")):
        run_dir = pool_json.parent
        levels = [json.loads((run_dir / e["dir"] / "level.json").read_text())
                  for e in json.loads(pool_json.read_text())["levels"]]
        prune_s = sum(lv["wall_time_s"] for lv in levels)
        accs = [f"{lv['metrics']['test_acc']:.3f}" for lv in levels]
        print(f"{run_dir.name}: prune {prune_s:.0f} s over {len(levels)} levels; test acc by level {accs}")
        per_suite: dict[str, float] = {}
        for side in (run_dir / "results").glob("*/level_*.json"):
            per_suite[side.parent.name] = per_suite.get(side.parent.name, 0) + json.loads(side.read_text())["wall_time_s"]
        for suite, seconds in sorted(per_suite.items()):
            print(f"  evaluate {suite:<16} {seconds:6.1f} s")
    print(f"demo_total_s={total:.0f} ({'prune only' if args.prune_only else 'prune + evaluate + report'}) in {out}")


if __name__ == "__main__":
    main()
