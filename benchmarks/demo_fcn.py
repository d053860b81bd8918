"""The time the embedded demo's ``demo-fcn`` run (Pellegrini & Biroli's figures) adds to the demo.

Prunes and evaluates ``demo-fcn`` and, as the peer measured in the same conditions, ``demo-cnn``
(the same data and recipe, every suite) from the embedded default, one after the other, and prints
their wall and CPU times and the ratio fcn / cnn. The README's idle-machine measurement of
``demo-cnn`` (prune + evaluate) times that ratio estimates what ``demo-fcn`` adds to the demo on an
idle machine, and its share of the demo's total.

    PYTHONPATH=src python benchmarks/demo_fcn.py [--out DIR] [--cnn-idle-s 40] [--demo-total-s 185]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _run(config, log) -> tuple[float, float]:
    from prunelens.evaluate import evaluate_run
    from prunelens.pruning import prune_run

    wall, cpu = time.perf_counter(), time.process_time()
    pool = prune_run(config, log=log)
    evaluate_run(pool.run_dir, log=log)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="folder for the runs (default: a temporary one)")
    ap.add_argument("--cnn-idle-s", type=float, default=40.0,
                    help="demo-cnn prune + evaluate on an idle machine (README: 21 s + 19 s)")
    ap.add_argument("--demo-total-s", type=float, default=185.0, help="the demo's total (README)")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    from prunelens.suite import load_configs

    out = Path(args.out or tempfile.mkdtemp(prefix="prunelens-demo-fcn-"))
    runs = {c.name: c for c in load_configs(None, [f"output_dir={out}"])}
    times = {name: _run(runs[name], lambda *_: None) for name in ("demo-fcn", "demo-cnn")}
    for name, (wall, cpu) in times.items():
        print(f"{name}: prune + evaluate {wall:6.1f} s wall, {cpu:6.1f} s CPU")
    ratio = times["demo-fcn"][0] / times["demo-cnn"][0]
    added = ratio * args.cnn_idle_s
    print(f"ratio demo-fcn / demo-cnn (wall) = {ratio:.2f}; CPU ratio = "
          f"{times['demo-fcn'][1] / times['demo-cnn'][1]:.2f}")
    print(f"estimated on an idle machine: demo-fcn adds {added:.0f} s = "
          f"{added / args.demo_total_s:.1%} of the demo's {args.demo_total_s:.0f} s "
          f"(without the report's share)")


if __name__ == "__main__":
    main()
