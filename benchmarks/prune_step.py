"""A training step on a pruned model vs the dense step (same model, same batch, one run).

prunelens keeps masks exact with two fused in-place multiplies per optimiser step (gradients
before, weights after). The peer it replaces is ``torch.nn.utils.prune``'s reparametrisation
(``weight = weight_orig * weight_mask`` recomputed in a forward pre-hook), timed here too.
Target: pruned / dense <= 1.05.

    PYTHONPATH=src python benchmarks/prune_step.py [--model small_resnet] [--batch 64] [--size 64]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune

from prunelens.models import create_model, spec_for
from prunelens.pruning import Masker, magnitude_masks, prunable_parameters
from prunelens.pruning.masks import dense_masks


def step_time(model, opt, x, y, steps: int, repeats: int) -> float:
    def one():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for _ in range(3):
        one()
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def build(name: str, size: int, device, seed: int = 0):
    torch.manual_seed(seed)
    kw = {"image_size": size} if name == "small_vit" else {}
    return create_model(name, 10, **kw).to(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small_resnet")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    x = spec_for(build(args.model, args.size, "cpu")).normalize(torch.rand(args.batch, 3, args.size, args.size)).to(device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def sgd(m):
        return torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    dense = build(args.model, args.size, device)
    pruned = build(args.model, args.size, device)
    params = prunable_parameters(pruned)
    masks = magnitude_masks({n: p.detach() for n, p in params.items()}, dense_masks(params), args.sparsity)
    opt_pruned = sgd(pruned)
    Masker(params, masks).attach(opt_pruned).apply_()

    reference = build(args.model, args.size, device)
    modules = dict(reference.named_modules())
    for name in params:
        module_name, attr = name.rsplit(".", 1)
        torch_prune.custom_from_mask(modules[module_name], attr, masks[name].to(device))
    opt_dense, opt_ref = sgd(dense), sgd(reference)

    try:
        step_time(reference, opt_ref, x, y, 1, 1)
    except RuntimeError as exc:  # e.g. nn.MultiheadAttention's in_proj_weight: the hook's graph is reused
        print(f"torch.nn.utils.prune cannot train this model: {str(exc).splitlines()[0][:120]}")
        reference = None
    # interleave the sides so that machine noise hits them alike
    t_dense, t_pruned, t_ref = [], [], []
    for _ in range(3):
        t_dense.append(step_time(dense, opt_dense, x, y, args.steps, args.repeats))
        t_pruned.append(step_time(pruned, opt_pruned, x, y, args.steps, args.repeats))
        if reference is not None:
            t_ref.append(step_time(reference, opt_ref, x, y, args.steps, args.repeats))
    d, p = statistics.median(t_dense), statistics.median(t_pruned)
    print(f"model={args.model} batch={args.batch} size={args.size} sparsity={args.sparsity} device={device} "
          f"threads={torch.get_num_threads()}")
    print(f"dense_step_ms={d * 1e3:.2f} pruned_step_ms={p * 1e3:.2f}")
    print(f"ratio_pruned_vs_dense={p / d:.3f} (target <= 1.05)")
    if t_ref:
        r = statistics.median(t_ref)
        print(f"torch_prune_step_ms={r * 1e3:.2f} ratio_vs_torch_prune={r / p:.2f} "
              "(torch.nn.utils.prune step time / prunelens step time)")


if __name__ == "__main__":
    main()
