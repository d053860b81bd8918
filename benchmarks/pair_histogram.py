"""Pair-displacement histograms (S_sc, S_dc) of a first-layer mask: prunelens's FFT version vs the
straightforward per-unit loop (for each unit: its connected inputs, all pairwise displacements by
numpy broadcasting, np.add.at into the two histograms), timed in the same run on the same mask.

Default: the FCN first layer of Pellegrini & Biroli, 1024 units × 3072 inputs (3×32×32), at 99 %
and 90 % sparsity (prunelens enumerates pairs on sparse masks and uses FFTs on denser ones). The
results are checked to be identical before the times are printed.

    PYTHONPATH=src python benchmarks/pair_histogram.py [--units 1024] [--sparsity 0.99 0.9]
                                                        [--shape 3 32 32] [--repeat 3] [--threads 1]
"""
from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import torch
from _timing import best_time

from prunelens.analysis.connectivity import _use_direct, pair_histograms


def per_unit_loop(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The peer: one unit at a time, all ordered pairs of its connections."""
    _, c, h, w = units.shape
    sc = np.zeros((2 * h - 1, 2 * w - 1), dtype=np.int64)
    dc = np.zeros_like(sc)
    for unit in units:
        ch, y, x = np.nonzero(unit)
        dy = (y[None, :] - y[:, None]) + h - 1
        dx = (x[None, :] - x[:, None]) + w - 1
        same = ch[None, :] == ch[:, None]
        np.fill_diagonal(same, False)  # a pixel with itself is no pair
        other = ch[None, :] != ch[:, None]
        np.add.at(sc, (dy[same], dx[same]), 1)
        np.add.at(dc, (dy[other], dx[other]), 1)
    return sc, dc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.99, 0.9])
    parser.add_argument("--shape", type=int, nargs=3, default=(3, 32, 32), metavar=("C", "H", "W"))
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (the numpy loop uses one; "
                        "--threads 1 compares like for like and is steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}; best of {args.repeat} runs")
    g = torch.Generator().manual_seed(args.seed)
    for sparsity in args.sparsity:
        units = torch.rand(args.units, *args.shape, generator=g) >= sparsity
        k = units.flatten(1).sum(1)
        method = "direct" if _use_direct(units) else "fft"
        print(f"sparsity={sparsity:g}: {args.units} units x {tuple(args.shape)} inputs, "
              f"{int(k.sum())} connections, {int((k * (k - 1)).sum())} ordered pairs; "
              f"prunelens picks '{method}'")
        t_auto, (sc, dc) = best_time(partial(pair_histograms, units), args.repeat)
        t_loop, (ref_sc, ref_dc) = best_time(partial(per_unit_loop, units.numpy()), args.repeat)
        assert np.array_equal(sc.numpy().astype(np.int64), ref_sc), "S_sc differs from the loop"
        assert np.array_equal(dc.numpy().astype(np.int64), ref_dc), "S_dc differs from the loop"
        other = "fft" if method == "direct" else "direct"
        t_other, _ = best_time(partial(pair_histograms, units, method=other), args.repeat)
        print(f"  prunelens_s={t_auto:.4f} per_unit_loop_s={t_loop:.4f} "
              f"(prunelens with the other method: {t_other:.4f} s)")
        print(f"  sparsity={sparsity:g} ratio_vs_per_unit_loop={t_loop / t_auto:.1f}")


if __name__ == "__main__":
    main()
