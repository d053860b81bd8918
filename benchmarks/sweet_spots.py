"""Paired bootstrap CIs of every level vs dense: prunelens.report vs scipy.stats.bootstrap.

Workload: one run, ``--methods`` attribution methods × 2 metrics × ``--levels`` pruning levels, each
with ``--items`` per-image values; every (metric, method, level) gets a 95 % percentile CI of its
paired difference with the dense level from ``--n-boot`` resamples. The peer computes the same
differences (pandas pivot) and calls ``scipy.stats.bootstrap(method="percentile")`` per comparison.
Prints both times, the agreement of the CI bounds, and ``ratio_vs_scipy`` (peer time / ours).

    PYTHONPATH=src python benchmarks/sweet_spots.py                  # small default, seconds
    PYTHONPATH=src python benchmarks/sweet_spots.py --items 5000 --levels 20 --n-boot 10000
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy import stats

from prunelens.report.sweet_spots import compare_to_dense


def workload(methods: int, levels: int, items: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.normal(0.4, 0.2, items)
    parts = []
    for level in range(levels):
        for m in range(methods):
            for metric in ("rma", "rra"):
                parts.append(pd.DataFrame({
                    "run": "r", "model": "m", "level": level, "sparsity": 1 - 0.8 ** level,
                    "suite": "interpretability", "metric": metric, "method": f"method{m}",
                    "dataset": "synthetic", "condition": "", "item": np.arange(items).astype(str),
                    "value": base + 0.01 * level + rng.normal(0, 0.05, items)}))
    return pd.concat(parts, ignore_index=True)


def scipy_peer(frame: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    rows = []
    for (metric, method), part in frame.groupby(["metric", "method"]):
        table = part.pivot_table(index="item", columns="level", values="value")
        for level in table.columns[1:]:
            d = (table[level] - table[0]).dropna().to_numpy()
            ci = stats.bootstrap((d,), np.mean, n_resamples=n_boot, method="percentile",
                                 random_state=np.random.default_rng(0)).confidence_interval
            rows.append((metric, method, level, d.mean(), ci.low, ci.high))
    return pd.DataFrame(rows, columns=["metric", "method", "level", "delta", "ci_low", "ci_high"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", type=int, default=4)
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    frame = workload(args.methods, args.levels, args.items)

    def best(fn):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return min(times), out

    t_ours, ours = best(lambda: compare_to_dense(frame, n_boot=args.n_boot))
    t_peer, peer = best(lambda: scipy_peer(frame, args.n_boot))
    joined = ours.merge(peer, on=["metric", "method", "level"], suffixes=("", "_scipy"))
    assert len(joined) == len(peer) == len(ours)
    width = (joined["ci_high_scipy"] - joined["ci_low_scipy"]).median()
    gap = max((joined["ci_low"] - joined["ci_low_scipy"]).abs().max(),
              (joined["ci_high"] - joined["ci_high_scipy"]).abs().max())
    print(f"comparisons={len(ours)} items={args.items} n_boot={args.n_boot}")
    print(f"prunelens={t_ours:.3f}s scipy={t_peer:.3f}s "
          f"max_bound_gap={gap:.2e} ({gap / width:.1%} of median CI width)")
    print(f"ratio_vs_scipy={t_peer / t_ours:.1f}")


if __name__ == "__main__":
    main()
