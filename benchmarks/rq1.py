"""RQ1 cost: prunelens vs the Captum + Quantus pipeline doing the same work, in the same run.

1. Full per-image RQ1 cost — GradCAM + Guided GradCAM + Integrated Gradients (50 steps) + RMA + RRA
   of each map — for a torchvision model (default resnet18) at 224 px: prunelens
   (``explain_batch`` + ``localisation_scores``) vs Captum (prediction pass, LayerGradCam,
   GuidedGradCam, IntegratedGradients with the completeness delta) + Quantus
   (RelevanceMassAccuracy, RelevanceRankAccuracy with their default checks). Both get the same
   images, targets, IG rule/steps and rows per chunk. Prints ``ratio_vs_captum=X.Y``.
   On a CPU it also prints IG's achieved FLOP rate against this CPU's measured float32 peak (the
   faster of a large matmul and a 3x3 convolution) and the ratio ceiling that follows: Captum's
   time over the time IG's FLOPs alone take at that peak.
2. RMA + RRA alone on (B, 224, 224) maps: prunelens vs Quantus. Prints ``ratio_vs_quantus=X.Y``.
3. ``--device cuda``: the same on a GPU (e.g. ``--models resnet50,vit_b_32 --batch 16``), with
   images/s and the achieved TFLOP/s of IG (FLOPs counted by ``torch.utils.flop_counter``); give
   ``--peak-tflops`` to print it as a fraction of the device's peak. For ViTs both sides run IG only
   (Captum's LayerGradCam cannot read token layers).

Small defaults (batch 4) finish in a few minutes on 2 CPU cores; the issue's setting is
``--batch 16``. Timings are the minimum over ``--repeats`` interleaved runs, after a warm-up.

    PYTHONPATH=src python benchmarks/rq1.py [--batch 16] [--threads 1] [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np
import torch

from prunelens.explain import IGSettings, explain_batch, localisation_scores
from prunelens.explain.integrated import black_baseline, fold_batchnorm, rows_per_chunk
from prunelens.explain.pipeline import DEFAULT_POOLING
from prunelens.models import create_model, spec_for

CNN_METHODS = ("gradcam", "guided_gradcam", "integrated_gradients")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(wall seconds, result); the process CPU seconds of the last call are in ``timed.cpu``."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    timed.cpu = time.process_time() - cpu
    return time.perf_counter() - start, out


def inputs(batch: int, size: int, device, seed: int = 0):
    """Images with one object-like rectangle mask each."""
    g = torch.Generator().manual_seed(seed)
    x01 = torch.rand(batch, 3, size, size, generator=g)
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    for i in range(batch):
        y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        masks[i, y0:y0 + size // 3, x0:x0 + size // 3] = True
    return x01.to(device), masks.to(device)


# ---- the two pipelines --------------------------------------------------------------------------
def ours(model, x, masks, methods, steps, rows):
    result = explain_batch(model, x, methods, ig=IGSettings(n_steps=steps, internal_batch_size=rows))
    return {m: localisation_scores(result.pooled(m), masks) for m in methods}, result


def theirs(model, x, masks, methods, steps, rows):
    import quantus
    from captum.attr import GuidedGradCam, IntegratedGradients, LayerAttribution, LayerGradCam

    spec = spec_for(model)
    with torch.no_grad():
        target = model(x).argmax(1)
    maps = {}
    if "gradcam" in methods or "guided_gradcam" in methods:
        layer = spec.gradcam_layer(model)
        cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
        maps["gradcam"] = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")
        if "guided_gradcam" in methods:
            maps["guided_gradcam"] = GuidedGradCam(model, layer).attribute(x, target=target,
                                                                           interpolate_mode="bilinear")
    ig, _delta = IntegratedGradients(model).attribute(
        x, baselines=black_baseline(x, spec), target=target, n_steps=steps, method="gausslegendre",
        internal_batch_size=rows, return_convergence_delta=True)
    maps["integrated_gradients"] = ig
    s = masks.unsqueeze(1).float().cpu().numpy()
    scores = {}
    for method in methods:
        a = maps[method].detach()
        a = a.square().sum(1, keepdim=True) if DEFAULT_POOLING[method] == "l2-norm,sq" else a
        kwargs = {"model": None, "x_batch": x.detach().cpu().numpy(), "y_batch": target.cpu().numpy(),
                  "a_batch": a.cpu().numpy(), "s_batch": s}
        scores[method] = {"rma": np.asarray(quantus.RelevanceMassAccuracy()(**kwargs)),
                          "rra": np.asarray(quantus.RelevanceRankAccuracy()(**kwargs))}
    return scores, maps


# ---- benchmarks ---------------------------------------------------------------------------------
def full_pipeline(name: str, args, device) -> None:
    torch.manual_seed(0)
    model = create_model(name, 1000).eval().to(device)
    if hasattr(model, "heads"):  # torchvision zero-initialises the ViT head: explanations would be blank
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    spec = spec_for(model)
    methods = CNN_METHODS if spec.family != "vit" else ("integrated_gradients",)
    x01, masks = inputs(args.batch, args.size, device)
    x = spec.normalize(x01)
    rows = args.rows or rows_per_chunk(model, x, args.memory_cap_mb)
    print(f"\n[{name}] {args.size}px batch {args.batch}, IG {args.steps} steps (gausslegendre), "
          f"{rows} rows per chunk, methods {', '.join(methods)}, device {device}, "
          f"threads {torch.get_num_threads()}")
    warm_x, warm_m = x[:1], masks[:1]
    ours(model, warm_x, warm_m, methods, 2, rows)
    theirs(model, warm_x, warm_m, methods, 2, rows)
    t_ours, t_theirs, cpu_ours, cpu_theirs = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        dt, (our_scores, our_result) = timed(lambda: ours(model, x, masks, methods, args.steps, rows), device)
        t_ours.append(dt)
        cpu_ours.append(timed.cpu)
        dt, (their_scores, their_maps) = timed(lambda: theirs(model, x, masks, methods, args.steps, rows), device)
        t_theirs.append(dt)
        cpu_theirs.append(timed.cpu)
    ig_ours, ig_theirs = our_result.heatmaps["integrated_gradients"], their_maps["integrated_gradients"]
    rel = float((ig_ours - ig_theirs.detach()).abs().max() / ig_theirs.abs().max())
    score_diff = max(float(np.nanmax(np.abs(our_scores[m][k].double().cpu().numpy() - their_scores[m][k])))
                     for m in methods for k in ("rma", "rra"))
    best_ours, best_theirs = min(t_ours), min(t_theirs)
    print(f"  prunelens        {best_ours:8.2f} s  ({args.batch / best_ours:7.2f} images/s)   runs: "
          + ", ".join(f"{t:.2f}" for t in t_ours))
    print(f"  captum+quantus   {best_theirs:8.2f} s  ({args.batch / best_theirs:7.2f} images/s)   runs: "
          + ", ".join(f"{t:.2f}" for t in t_theirs))
    print(f"  IG max relative difference {rel:.1e} (float32); max |score difference| {score_diff:.1e}")
    if device.type == "cpu":
        print(f"  CPU seconds: prunelens {min(cpu_ours):.2f}, captum+quantus {min(cpu_theirs):.2f} "
              f"(cpu_ratio={min(cpu_theirs) / min(cpu_ours):.2f})")
    print(f"  ratio_vs_captum={best_theirs / best_ours:.1f}")
    if device.type == "cuda":
        ig_flops(model, x, rows, args, device)
    else:  # how far a faster implementation of the same arithmetic could go on this CPU
        peak = cpu_peak_tflops()
        total, _ = ig_flops(model, x, rows, args, device, peak_tflops=peak)
        floor = total / peak / 1e12
        print(f"  ceiling: IG's FLOPs alone take {floor:.2f} s at that peak, so no float32 "
              f"implementation of this work can beat captum+quantus by more than "
              f"{best_theirs / floor:.2f}x (ratio_ceiling)")


def cpu_peak_tflops() -> float:
    """This CPU's practical float32 peak (TFLOP/s) at the current thread count: the faster of a
    2048² matrix multiply and a channels-last 3x3 convolution (256 channels, 56x56, batch 16)."""
    a = torch.randn(2048, 2048)
    x = torch.randn(16, 256, 56, 56).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3).contiguous(memory_format=torch.channels_last)
    rates = []
    for fn, flops in ((lambda: a @ a, 2 * 2048**3), (lambda: torch.conv2d(x, w, padding=1), 2 * 9 * x.numel() * 256)):
        fn()
        rates.append(flops / min(timed(fn, torch.device("cpu"))[0] for _ in range(5)) / 1e12)
    return max(rates)


def ig_flops(model, x, rows, args, device, peak_tflops: float = 0.0) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    from prunelens.explain import integrated_gradients

    # FlopCounterMode cannot follow autograd.grad(); backward() on a copy whose weights need no
    # gradient counts the same work: the forward and the input gradient
    net = copy.deepcopy(fold_batchnorm(model)).requires_grad_(False)
    z = x[:1].repeat(min(rows, x.shape[0] * args.steps), 1, 1, 1).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        net(z)[:, 0].sum().backward()
    flops_per_row = counter.get_total_flops() / z.shape[0]
    total = flops_per_row * x.shape[0] * args.steps
    dt, _ = timed(lambda: integrated_gradients(model, x, n_steps=args.steps, internal_batch_size=rows), device)
    tflops = total / dt / 1e12
    line = f"  IG: {total / 1e12:.2f} TFLOP in {dt:.2f} s = {tflops:.3f} TFLOP/s"
    peak = peak_tflops or args.peak_tflops
    if peak:
        what = "peak measured on this CPU" if peak_tflops else "peak"
        line += f" = {tflops / peak:.1%} of the {peak:.3f} TFLOP/s {what}"
    print(line)
    return total, dt


def metrics_alone(args, device) -> None:
    import quantus

    g = torch.Generator().manual_seed(0)
    b, size = args.metric_batch, 224
    heat = torch.rand(b, size, size, generator=g).to(device)
    _, masks = inputs(b, size, device)
    a = heat.unsqueeze(1).cpu().numpy()
    s = masks.unsqueeze(1).float().cpu().numpy()
    x = np.zeros((b, 3, size, size), dtype=np.float32)
    y = np.zeros(b, dtype=int)

    def run_quantus():
        return (quantus.RelevanceMassAccuracy()(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s),
                quantus.RelevanceRankAccuracy()(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s))

    def run_ours():
        return localisation_scores(heat, masks)

    run_ours(), run_quantus()
    t_ours, t_theirs = [], []
    for _ in range(args.repeats + 1):  # interleaved
        t_ours += [timed(run_ours, device)[0] for _ in range(5)]
        t_theirs.append(timed(run_quantus, device)[0])
    ours_out, theirs_out = run_ours(), run_quantus()
    diff = max(float(np.abs(ours_out["rma"].double().cpu().numpy() - np.asarray(theirs_out[0])).max()),
               float(np.abs(ours_out["rra"].double().cpu().numpy() - np.asarray(theirs_out[1])).max()))
    best_ours, best_theirs = min(t_ours), min(t_theirs)
    print(f"\n[RMA + RRA] {b} maps of {size}x{size}, device {device}")
    print(f"  prunelens {best_ours * 1e3:8.2f} ms   quantus {best_theirs * 1e3:8.2f} ms   "
          f"max |difference| {diff:.1e}")
    print(f"  ratio_vs_quantus={best_theirs / best_ours:.1f}")


def suite_budget(args) -> None:
    """Seconds per level of the interpretability suite with default options on the demo data
    (synthetic 64 px test split, small_resnet / small_vit): the demo needs well under 20 s."""
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    from prunelens.config import validate_section
    from prunelens.data.synthetic import SyntheticShapes
    from prunelens.suite import LevelContext, get_suite

    suite = get_suite("interpretability")
    options = validate_section(suite.Options, {}, "evaluate.interpretability")
    test = SyntheticShapes("test", options.n_images, 64, 10, 0.5, "standard", 0)
    data = SimpleNamespace(split=lambda name, **kw: test, class_names=test.class_names)
    print(f"\n[suite budget] interpretability, default options ({options.n_images} images, IG "
          f"{options.ig_steps} steps), synthetic 64 px, cpu, threads {torch.get_num_threads()}")
    for name in ("small_resnet", "small_vit"):
        torch.manual_seed(0)
        model = create_model(name, 10).eval()
        if hasattr(model, "heads"):  # a trained ViT head is not zero: keep the maps non-trivial
            torch.nn.init.normal_(model.heads.head.weight, std=0.02)
        with tempfile.TemporaryDirectory() as tmp:
            ctx = LevelContext(pool=None, config=None, options=options,
                               device=torch.device("cpu"), data=data, spec=spec_for(model),
                               artifacts=Path(tmp), level=SimpleNamespace(index=0, sparsity=0.0),
                               model=model, level_artifacts=Path(tmp) / "level_00")
            dt, records = timed(lambda ctx=ctx: list(suite().evaluate_level(ctx)), torch.device("cpu"))
        print(f"  {name:13s} {dt:6.2f} s per level ({len(records)} records)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18", help="comma-separated torchvision models")
    parser.add_argument("--batch", type=int, default=4, help="images per batch (issue setting: 16)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=50, help="IG steps")
    parser.add_argument("--rows", type=int, default=0,
                        help="IG rows per chunk, for both (0: what prunelens's memory cap gives)")
    parser.add_argument("--memory-cap-mb", type=float, default=1024.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--metric-batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak, for the IG fraction")
    parser.add_argument("--skip-full", action="store_true", help="only the metrics benchmark")
    parser.add_argument("--suite-budget", action="store_true",
                        help="also time the suite per level on the demo setting (small models, 64 px)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    metrics_alone(args, device)
    if not args.skip_full:
        for name in args.models.split(","):
            full_pipeline(name.strip(), args, device)
    if args.suite_budget:
        suite_budget(args)


if __name__ == "__main__":
    main()
