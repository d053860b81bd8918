"""Input pipeline throughput on JPEG files: the in-memory ceiling vs the CPU (Pillow) path vs the
GPU (nvJPEG) path of ``data.decode``, for training with two paper recipes and for evaluation, in
one run (issue #21).

It writes an ImageNet-layout folder of JPEGs (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``; half
500×375 or 375×500 like most ImageNet photos, half with one side 500 and the other 250-500), then
measures img/s of:

* ``in_memory``: the same model and training step (or evaluation pass) on uint8 batches already
  in host memory (pinned on CUDA): ``benchmarks/train.py``'s setting, what the GPU side can take;
* ``cpu``: ``data.decode cpu``: the loader workers decode with Pillow and run the transforms;
* ``gpu``: ``data.decode gpu``: the workers read bytes, the main process decodes each batch with
  nvJPEG and runs the same transforms on the GPU (skipped, with a line, without CUDA).

Training uses the recipe of ``configs/paper/resnet50_imagenet.yaml`` and of
``configs/paper/vit_b_32_imagenet.yaml`` as ``prunelens prune`` builds it: the run's loaders
(``pruning.runner._Loaders``: shuffling, the repeated-augmentation order, MixUp / CutMix, workers),
the recipe's transforms (AutoAugment for vit_b_32) and its step (``train_epoch`` with the weight
average, label smoothing, clipping). Evaluation is the accuracy suite's loop: ``RunData.loader`` of
the val split and ``evaluate_model``. Each measurement is an epoch timed whole, worker start
included (the runner restarts its training workers every epoch), after one untimed epoch (warm-up,
compilation). Each line prints ``ratio_vs_in_memory=``; on CUDA also ``gpu_busy=``, the mean of
``torch.cuda.utilization()`` (NVML's busy percentage, as nvidia-smi's; nvidia-smi itself where
NVML's Python binding is missing) sampled every 0.1 s during it.
Last, ``per_image_call``: the fixed cost of one transform call on the device (tiny images), which
bounds the GPU path's per-image loop in the main process.

    PYTHONPATH=src python benchmarks/input_pipeline.py      # CPU: small models at 64 px, ~1-2 min
    PYTHONPATH=src python benchmarks/input_pipeline.py --device cuda --train-images 16000 \\
        --val-images 2000 --workers 16 --amp --channels-last --compile       # one H200
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from prunelens.config import resolve_runs
from prunelens.data.device_input import gpu_decode_problem
from prunelens.data.provider import RunData
from prunelens.models import create_model, spec_for
from prunelens.pruning.recipe import ModelEMA
from prunelens.pruning.runner import _Loaders
from prunelens.pruning.schedule import lr_schedule
from prunelens.pruning.train import TrainPlan, evaluate_model, make_optimizer, train_epoch, training_module

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"resnet50": REPO / "configs/paper/resnet50_imagenet.yaml",
           "vit_b_32": REPO / "configs/paper/vit_b_32_imagenet.yaml"}
#: on the CPU the recipes run with a small model of the same family at --size (a ResNet-50 step
#: on two shared cores would measure the model, not the input)
SMALL = {"resnet50": ("small_resnet", {}), "vit_b_32": ("small_vit", {"patch_size": 8})}
#: (width, height) of half the written photos, ImageNet's most common sizes; the other half have
#: one side 500 and the other drawn from 250-500 (so evaluation's groups of equal size stay small)
SHAPES = ((500, 375), (500, 375), (500, 375), (375, 500))


# ---- the JPEG folder ---------------------------------------------------------------------------------
def _write_one(job: tuple[str, int, int]) -> None:
    """One photo-like JPEG (smooth colour fields, edges and grain; ~50-100 kB at quality 90)."""
    from PIL import Image
    path, index, seed = job
    rng = np.random.default_rng(seed * 1_000_003 + index)
    w, h = SHAPES[index // 2 % len(SHAPES)]
    if index % 2:
        w, h = (500, int(rng.integers(250, 501)))[:: 1 if index % 4 == 1 else -1]
    low = rng.integers(0, 256, (h // 25 + 2, w // 25 + 2, 3), dtype=np.uint8)
    image = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    grain = rng.normal(0, 12, (h, w, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def write_folder(root: Path, n_train: int, n_val: int, classes: int, workers: int) -> None:
    jobs = []
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            wnid = f"n{i % classes:08d}"
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            jobs.append((str(root / split / wnid / f"{wnid}_{i}.JPEG"), i, 0 if split == "train" else 1))
    if len(jobs) < 1000 or workers < 2:
        for job in jobs:
            _write_one(job)
        return
    # fork: the children only run numpy and Pillow (called before CUDA is initialised)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_write_one, jobs, chunksize=64)


# ---- GPU busy ----------------------------------------------------------------------------------------
class BusySampler:
    """Mean GPU busy percentage sampled every 0.1 s while active: ``torch.cuda.utilization()`` (NVML),
    else ``nvidia-smi --query-gpu=utilization.gpu``; none off CUDA or when neither works."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples, self._stop = device, [], threading.Event()
        self.read = None
        if device.type != "cuda":
            return
        index = device.index if device.index is not None else torch.cuda.current_device()
        smi = ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        for name, read in (("torch.cuda.utilization", lambda: torch.cuda.utilization(device)),
                           ("nvidia-smi", lambda: float(subprocess.run(smi, capture_output=True, text=True,
                                                                       check=True).stdout.split()[0]))):
            try:
                read()
            except Exception as exc:  # noqa: BLE001 - try the next reader
                print(f"note: {name} unavailable ({type(exc).__name__}: {exc})")
                continue
            self.read, self.source = read, name
            print(f"gpu_busy from {name}")
            break

    def __enter__(self):
        self.samples, self._stop = [], threading.Event()
        if self.read is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(self.read())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.read is not None:
            self._thread.join()

    def text(self) -> str:
        return f" gpu_busy={statistics.mean(self.samples) / 100:.2f}" if self.samples else ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- one recipe --------------------------------------------------------------------------------------
def recipe_config(args, recipe: str, root: Path, decode: str):
    raw = yaml.safe_load(RECIPES[recipe].read_text())
    raw.pop("evaluate", None)
    raw["name"] = f"bench-{recipe}"
    raw["data"].update(root=str(root), decode=decode)
    train = raw["train"]
    train.update(device=args.device, num_workers=args.workers, compile=args.compile,
                 eval_batch_size=args.eval_batch)
    if args.amp:
        train["amp"] = True
    if args.channels_last:
        train["channels_last"] = True
    train["batch_size"] = args.batch or min(train["batch_size"], max(8, args.train_images // 8))
    if not args.full_models:
        name, options = SMALL[recipe]
        raw["model"] = {"name": name, **({"image_size": args.size} if name == "small_vit" else {}), **options}
        raw["data"].update(train_crop_size=args.size, val_crop_size=args.size,
                           val_resize_size=round(args.size * 256 / 224))
    return resolve_runs(raw)[0]


class Trainer:
    """The recipe's model, optimiser, weight average and step (``train_epoch``), as ``train_level``
    sets them up, without its checkpoints."""

    def __init__(self, cfg, num_classes: int, steps_per_epoch: int, device: torch.device) -> None:
        torch.manual_seed(0)
        self.cfg, self.device = cfg, device
        self.model = create_model(cfg.model.name, num_classes, **cfg.model.options).to(device)
        self.spec = spec_for(self.model)
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.plan = TrainPlan(2, lr_schedule(cfg.train, 2, steps_per_epoch), cfg.train.optimizer)
        self.optimizer = make_optimizer(self.model, cfg.train, cfg.train.lr, fused=device.type == "cuda")
        self.ema = ModelEMA(self.model, cfg.train, 2) if cfg.train.model_ema else None
        self.step_model = training_module(self.model, cfg.train, device)

    def epoch(self, loader, epoch: int) -> None:
        torch.manual_seed(epoch)
        train_epoch(self.step_model, self.model, self.spec, loader, self.optimizer, self.plan,
                    self.cfg.train, self.device, epoch, ema=self.ema)


def in_memory_batches(n: int, batch: int, size: int, classes: int, device: torch.device):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
        y = torch.randint(0, classes, (batch,), generator=g)
        out.append((x.pin_memory(), y.pin_memory()) if device.type == "cuda" else (x, y))
    return out


def timed(fn, device: torch.device, busy: BusySampler) -> tuple[float, str]:
    sync(device)
    with busy:
        t0 = time.perf_counter()
        fn()
        sync(device)
        elapsed = time.perf_counter() - t0
    return elapsed, busy.text()


def bench_training(args, recipe: str, root: Path, device: torch.device, busy: BusySampler,
                   paths: list[str]) -> None:
    rates = {}
    for decode in ("cpu", *paths):
        cfg = recipe_config(args, recipe, root, decode)
        data = RunData(cfg.data, cfg.seed, device=device)
        loaders = _Loaders(cfg, data, device, data.num_classes)
        trainer = Trainer(cfg, data.num_classes, loaders.steps_per_epoch, device)
        n = loaders.steps_per_epoch * loaders.batch_size
        if not rates:  # the ceiling: the same model and step on batches in memory
            batches = in_memory_batches(loaders.steps_per_epoch, loaders.batch_size,
                                        cfg.data.options.train_crop_size, data.num_classes, device)
            ceiling = Trainer(cfg, data.num_classes, loaders.steps_per_epoch, device)
            ceiling.epoch(batches, 0)
            seconds, b = timed(lambda: ceiling.epoch(batches, 1), device, busy)
            rates["in_memory"] = n / seconds
            print(f"train recipe={recipe} model={cfg.model.name} batch={loaders.batch_size} "
                  f"steps={loaders.steps_per_epoch} crop={cfg.data.options.train_crop_size} "
                  f"amp={cfg.train.amp} channels_last={cfg.train.channels_last} "
                  f"compile={cfg.train.compile and device.type == 'cuda'} workers={cfg.train.num_workers}")
            print(f"  train {recipe} in_memory img_s={rates['in_memory']:.1f}{b}")
        epoch_loader = loaders.for_epoch(0)
        trainer.epoch(epoch_loader(0), 0)
        seconds, b = timed(lambda: trainer.epoch(epoch_loader(1), 1), device, busy)
        rates[decode] = n / seconds
        print(f"  train {recipe} {decode}_path img_s={rates[decode]:.1f} "
              f"ratio_vs_in_memory={rates[decode] / rates['in_memory']:.2f}{b} ({loaders.input_path[1]})")
    if "gpu" not in paths:
        print(f"  train {recipe} gpu_path skipped: {gpu_skip_reason(device)}")


def bench_evaluation(args, root: Path, device: torch.device, busy: BusySampler, paths: list[str]) -> None:
    rates = {}
    for decode in ("cpu", *paths):
        cfg = recipe_config(args, "resnet50", root, decode)
        data = RunData(cfg.data, cfg.seed, num_workers=args.workers, pin_memory=device.type == "cuda",
                       device=device)
        torch.manual_seed(0)
        model = create_model(cfg.model.name, data.num_classes, **cfg.model.options).to(device)
        spec = spec_for(model)
        val = data.split("val")
        if not rates:
            batches = in_memory_batches(-(-len(val) // args.eval_batch), args.eval_batch,
                                        cfg.data.options.val_crop_size, data.num_classes, device)
            evaluate_model(model, batches[:1], spec, device)
            seconds, b = timed(lambda: evaluate_model(model, batches, spec, device), device, busy)
            rates["in_memory"] = len(batches) * args.eval_batch / seconds
            print(f"evaluate (accuracy suite) model={cfg.model.name} batch={args.eval_batch} images={len(val)} "
                  f"crop={cfg.data.options.val_crop_size} workers={args.workers}")
            print(f"  evaluate in_memory img_s={rates['in_memory']:.1f}{b}")
        loader = data.loader(val, args.eval_batch)  # persistent workers, kept across levels
        evaluate_model(model, loader, spec, device)  # level 1: workers start
        seconds, b = timed(lambda: evaluate_model(model, loader, spec, device), device, busy)
        rates[decode] = len(val) / seconds
        print(f"  evaluate {decode}_path img_s={rates[decode]:.1f} "
              f"ratio_vs_in_memory={rates[decode] / rates['in_memory']:.2f}{b}")
    if "gpu" not in paths:
        print(f"  evaluate gpu_path skipped: {gpu_skip_reason(device)}")


def per_image_overhead(args, device: torch.device) -> None:
    """The GPU path transforms training images one per call in the main process: the fixed cost of
    a call (Python dispatch and kernel launches on CUDA), measured on tiny 3×32×32 images so the
    pixels cost little, bounds the main process at 1e6 / µs images per second. On the CPU the
    resize kernel itself is most of it, so only the CUDA figure bounds the GPU path. (Evaluation
    runs one call per group of equal-size images: this bound applies per group.)"""
    from prunelens.data.imagefolder import transforms
    for recipe in ("resnet50", "vit_b_32"):
        options = recipe_config(args, recipe, Path(tempfile.gettempdir()), "cpu").data.options
        options = options.model_copy(update={"train_crop_size": 16, "val_resize_size": 18, "val_crop_size": 16})
        for part, transform in (("train", transforms(options, True)), ("eval", transforms(options, False))):
            if recipe == "vit_b_32" and part == "eval":
                continue  # the same eval transform as resnet50's
            image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, device=device)
            for _ in range(20):
                transform(image)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(300):
                transform(image)
            sync(device)
            us = (time.perf_counter() - t0) / 300 * 1e6
            print(f"  per_image_call {recipe} {part} us={us:.0f} main_process_bound_img_s={1e6 / us:.0f}")


def gpu_skip_reason(device: torch.device) -> str:
    return gpu_decode_problem(device) or "not requested"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-images", type=int, default=256,
                    help="at least 256: the vit_b_32 recipe's repeated-augmentation epoch is a multiple of 256")
    ap.add_argument("--val-images", type=int, default=128)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--workers", type=int, default=min(16, max(1, (os.cpu_count() or 2) - 1)))
    ap.add_argument("--batch", type=int, help="training batch (default: the recipe's, at most images / 8)")
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=64, help="crop side of the small CPU models")
    ap.add_argument("--full-models", action="store_true",
                    help="resnet50 / vit_b_32 at 224 px (default on CUDA)")
    ap.add_argument("--recipes", default="resnet50,vit_b_32", help="comma-separated; empty: none")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation measurement")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (the vit_b_32 recipe has it anyway)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile (CUDA only)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of the main process (CPU only)")
    ap.add_argument("--data", help="folder for the JPEGs (default: a temporary one, removed at the end)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        args.full_models = True
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    scratch = None if args.data else tempfile.mkdtemp(prefix="prunelens-jpegs-")
    root = Path(args.data or scratch)
    try:
        t0 = time.perf_counter()
        if not (root / "train").is_dir():  # before CUDA starts: the writers are forked
            write_folder(root, args.train_images, args.val_images, args.classes, max(args.workers, 1))
        written = time.perf_counter() - t0
        paths = [] if gpu_decode_problem(device) else ["gpu"]
        busy = BusySampler(device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"device={device} ({name}) cpus={os.cpu_count()} train_images={args.train_images} "
              f"val_images={args.val_images} classes={args.classes} workers={args.workers} "
              f"loadavg_before={load_before:.2f}")
        print(f"jpeg_folder={root} written_or_reused_in_s={written:.1f}")
        for recipe in filter(None, args.recipes.split(",")):
            bench_training(args, recipe, root, device, busy, paths)
        if not args.no_eval:
            bench_evaluation(args, root, device, busy, paths)
        print(f"transforms one image per call on {device} (the GPU path's main-process loop):")
        per_image_overhead(args, device)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"loadavg_after={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
