"""Training throughput: prunelens's loop vs a plain torchvision-reference-style loop, one run.

Both sides train the same model from the same weights on the same batches (uint8 images in host
memory, pinned on CUDA, scaled and normalised on the device), with the same optimiser and
precision (fp32, or bf16 autocast with ``--amp``):

* prunelens: :func:`prunelens.pruning.train.training_module` (channels_last weights and inputs with
  ``--channels-last``, ``torch.compile`` with ``--compile``) and :func:`train_epoch` — learning rate
  set per step, metrics accumulated on the device and read once, fused optimiser on CUDA;
* reference: the step of torchvision's ``references/classification/train.py`` — NCHW, eager,
  the loss and top-1/top-5 accuracy read back (``.item()``) every step for its metric logger.

The sides are interleaved (``--rounds`` × ``--steps``, who goes first alternating) and compared by
the median over rounds of the ratio of their step times in the same round, so machine noise that
comes and goes hits both alike; on the CPU one thread per side by default (``--threads``), as
two threads on a shared two-core machine measure the neighbours more than the loop. With ``--sparsity`` > 0 a third side trains the pruned model
with the prunelens loop (masks kept exact by the Masker): ``ratio_pruned_vs_dense`` (target
<= 1.05). On CUDA it also prints the achieved fraction of the device's dense bf16 peak (FLOPs of
one step counted by ``torch.utils.flop_counter``) and the host-device syncs inside the prunelens
loop (``torch.cuda.set_sync_debug_mode``).

    PYTHONPATH=src python benchmarks/train.py                       # CPU: small_resnet, 64 px
    PYTHONPATH=src python benchmarks/train.py --device cuda --model resnet50 --size 224 \\
        --batch 256 --amp --channels-last --compile                  # target ratio >= 1.3
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from prunelens.config import TrainConfig
from prunelens.models import create_model, spec_for
from prunelens.pruning import Masker, magnitude_masks, prunable_parameters
from prunelens.pruning.masks import dense_masks
from prunelens.pruning.schedule import LRSchedule
from prunelens.pruning.train import TrainPlan, make_optimizer, train_epoch, training_module

# dense bf16 tensor-core peak (TFLOP/s, no sparsity), from the vendors' data sheets
PEAK_BF16_TFLOPS = {"H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4,
                    "H200": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0}


def peak_tflops(name: str) -> float | None:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


def build(args, device):
    torch.manual_seed(0)
    kw = {"small_vit": {"image_size": args.size}, "lenet5": {"in_channels": 3, "input_size": args.size},
          "fcn": {"input_shape": (3, args.size, args.size)}}.get(args.model, {})
    return create_model(args.model, args.classes, **kw).to(device)


def make_batches(args, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(args.distinct_batches):
        x = torch.randint(0, 256, (args.batch, 3, args.size, args.size), generator=g, dtype=torch.uint8)
        y = torch.randint(0, args.classes, (args.batch,), generator=g)
        if device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        out.append((x, y))
    return out


def cycle(batches, n):
    return [batches[i % len(batches)] for i in range(n)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Reference:
    """The training step of torchvision's classification reference script (one GPU, no DDP)."""

    def __init__(self, model, spec, train_cfg, device, amp: bool):
        self.model, self.spec, self.device, self.amp = model, spec, device, amp
        self.optimizer = make_optimizer(model, train_cfg, train_cfg.lr)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.logged: list = []

    def epoch(self, batches) -> None:
        self.model.train()
        for image, target in batches:
            image = self.spec.normalize(image.to(self.device, non_blocking=True).float().div_(255))
            target = target.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                output = self.model(image)
                loss = self.criterion(output, target)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            top5 = output.topk(min(5, output.shape[1]), 1).indices
            hits = top5 == target[:, None]
            acc1, acc5 = hits[:, 0].float().mean() * 100, hits.any(1).float().mean() * 100
            self.logged = [loss.item(), acc1.item(), acc5.item(), self.optimizer.param_groups[0]["lr"]]


class Prunelens:
    """prunelens's loop: ``training_module`` + ``train_epoch`` (+ Masker when pruned)."""

    def __init__(self, model, spec, train_cfg, device, sparsity: float = 0.0):
        self.model, self.spec, self.cfg, self.device = model, spec, train_cfg, device
        if train_cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(model, train_cfg, train_cfg.lr, fused=device.type == "cuda")
        if sparsity > 0:
            params = prunable_parameters(model)
            masks = magnitude_masks({n: p.detach() for n, p in params.items()}, dense_masks(params), sparsity)
            Masker(params, masks).attach(self.optimizer).apply_()
        self.step_model = training_module(model, train_cfg, device)

    def epoch(self, batches) -> None:
        plan = TrainPlan(1, LRSchedule(self.cfg.lr, len(batches), len(batches), kind="constant"),
                         self.cfg.optimizer)
        train_epoch(self.step_model, self.model, self.spec, batches, self.optimizer, plan, self.cfg,
                    self.device, epoch=0)


def step_time(side, batches, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    side.epoch(batches)
    sync(device)
    return (time.perf_counter() - t0) / len(batches)


def flops_per_step(model, spec, batch, device, amp: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    x, y = batch
    x = spec.normalize(x.to(device).float().div_(255))
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        F.cross_entropy(model(x).float(), y.to(device)).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def host_syncs(side, batches) -> int:
    """Synchronising CUDA calls made by one prunelens epoch (the epoch's end reads included)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            side.epoch(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="small_resnet")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="steps per timed round and side")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU only)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per side (compilation)")
    ap.add_argument("--distinct-batches", type=int, default=4)
    ap.add_argument("--sparsity", type=float, default=0.9, help="0: skip the pruned side")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on both sides")
    ap.add_argument("--channels-last", action="store_true", help="prunelens side")
    ap.add_argument("--compile", action="store_true", help="prunelens side")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device (default: known GPUs)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as prune_run and torchvision's reference do
    cfg = TrainConfig(lr=0.01, momentum=0.9, weight_decay=5e-4, amp=args.amp,
                      channels_last=args.channels_last, compile=args.compile, device=args.device)
    load_before = os.getloadavg()
    batches = make_batches(args, device)
    spec = spec_for(build(args, "cpu"))
    sides = {"reference": Reference(build(args, device), spec, cfg, device, args.amp),
             "prunelens": Prunelens(build(args, device), spec, cfg, device)}
    if args.sparsity > 0:
        sides["pruned"] = Prunelens(build(args, device), spec, cfg, device, args.sparsity)
    for side in sides.values():  # warm-up (and compilation) outside the timing
        side.epoch(cycle(batches, args.warmup))
    times = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # alternate who goes first
        for name in order:
            times[name].append(step_time(sides[name], cycle(batches, args.steps), device))
    med = {name: statistics.median(t) for name, t in times.items()}
    ips = {name: args.batch / t for name, t in med.items()}

    def paired(a: str, b: str) -> float:  # median over rounds of time(a) / time(b) in the same round
        return statistics.median(x / y for x, y in zip(times[a], times[b]))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"model={args.model} batch={args.batch} size={args.size} device={device} ({name}) "
          f"amp={args.amp} channels_last={args.channels_last} compile={args.compile} "
          f"threads={torch.get_num_threads()} rounds={args.rounds}x{args.steps} steps "
          f"loadavg_before={load_before[0]:.2f} loadavg_after={os.getloadavg()[0]:.2f}")
    if args.compile and device.type != "cuda":
        print("note: --compile applies on CUDA only (prunelens trains eagerly on the CPU)")
    for side in sides:
        spread = f"{min(times[side]) * 1e3:.1f}-{max(times[side]) * 1e3:.1f}"
        print(f"{side}_step_ms={med[side] * 1e3:.2f} (rounds {spread})  {side}_img_s={ips[side]:.1f}")
    print(f"ratio_vs_reference_loop={paired('reference', 'prunelens'):.2f} "
          "(prunelens img/s / reference img/s, paired by round; target >= 1.0 on CPU, >= 1.3 on GPU "
          f"with --amp --channels-last --compile; ratio of medians {ips['prunelens'] / ips['reference']:.2f})")
    if "pruned" in sides:
        print(f"ratio_pruned_vs_dense={paired('pruned', 'prunelens'):.3f} "
              f"(step time, sparsity {args.sparsity}; target <= 1.05)")
    flops = flops_per_step(build(args, device), spec, batches[0], device, args.amp)
    achieved = flops / med["prunelens"] / 1e12
    line = f"flops_per_step={flops / 1e9:.1f}G achieved_tflops={achieved:.3f}"
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    if peak:
        line += f" peak_bf16_tflops={peak} peak_fraction={achieved / peak:.3f}"
    print(line)
    if device.type == "cuda":
        n = host_syncs(sides["prunelens"], cycle(batches, args.steps))
        print(f"host_syncs_per_epoch={n} over {args.steps} steps (the epoch's closing metric reads "
              "are expected; more means a sync inside the step loop)")


if __name__ == "__main__":
    main()
