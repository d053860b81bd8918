"""Per-image time of prunelens' batched LOST vs a straightforward per-image numpy/scipy LOST.

Feature maps of 448 px images: ViT-B/32 keys (14x14 patches, 768-d) and the last ResNet50 stage
(14x14 cells, 2048-d; ``--dilated`` adds LOST's dilated ResNet50, 28x28). Features are an object
blob on a background, both with noise, so degrees, seeds and components look like real ones. Both
implementations get the same features (float32, on the CPU) and the same thread count; boxes are
compared (prunelens with ``tie_break="index"``, the peer with a stable argsort).

Besides the end-to-end ratio, the two stages are timed apart: the patch similarity A = F Fᵀ (one
float32 product per image; on a CPU both sides reach numpy's BLAS, which computes it as a symmetric
rank-k update) and everything after it (degrees, seed, expansion, connected component, box), which
is where batching removes the per-image Python/scipy work. On a CPU the similarity is ~85 % of the
time and both sides run it at the BLAS's speed, so the end-to-end ratio stays near 1; ``--device
cuda`` runs prunelens batched on a GPU (features already there, as in the discovery suite) against
the same CPU peer.

    PYTHONPATH=src python benchmarks/lost.py                  # small default: 64 images
    PYTHONPATH=src python benchmarks/lost.py --n-images 1000 --batch-size 64 --dilated
    PYTHONPATH=src python benchmarks/lost.py --device cuda --n-images 1024 --batch-size 256
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _timing import best_time

CONFIGS = {  # name: (grid h, grid w, feature dim, stride)
    "vit_b_32@448": (14, 14, 768, 32),
    "resnet50@448": (14, 14, 2048, 32),
}
DILATED = {"resnet50-dilated@448": (28, 28, 2048, 16)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and numpy's BLAS")
    parser.add_argument("--k-patches", type=int, default=100)
    parser.add_argument("--dilated", action="store_true", help="also a 28x28 dilated-ResNet50 map")
    parser.add_argument("--device", default="cpu", help="where prunelens runs (the peer is numpy, CPU)")
    return parser.parse_args()


def blob_features(n, h, w, dim, seed):
    """(n, h*w, dim) float32: a random rectangle of cells shares an object vector, the rest another."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    background, obj = torch.randn(2, n, 1, dim, generator=gen)
    r0 = torch.randint(0, h // 2, (n, 1, 1), generator=gen)
    c0 = torch.randint(0, w // 2, (n, 1, 1), generator=gen)
    r1 = r0 + torch.randint(2, h // 2 + 1, (n, 1, 1), generator=gen)
    c1 = c0 + torch.randint(2, w // 2 + 1, (n, 1, 1), generator=gen)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside = ((rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)).reshape(n, h * w, 1)
    noise = torch.randn(n, h * w, dim, generator=gen)
    return (torch.where(inside, obj, background) + 1.5 * noise).float().contiguous()


def main() -> None:
    args = parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import numpy as np
    import torch

    from lost_reference import lost_from_affinity, lost_one_image, order_stable
    from prunelens.discovery.lost import lost, lost_from_similarity, similarity

    torch.set_num_threads(args.threads)
    configs = dict(CONFIGS, **(DILATED if args.dilated else {}))
    print(f"LOST, {args.n_images} images per map, batch {args.batch_size}, k={args.k_patches}, "
          f"prunelens on {args.device}, {args.threads} thread(s), torch {torch.__version__}, numpy {np.__version__}")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name, (h, w, dim, stride) in configs.items():
        cpu_feats = blob_features(args.n_images, h, w, dim, seed=dim + h)
        feats_np = [f.numpy() for f in cpu_feats]
        feats = cpu_feats.to(device)
        image_hw = (h * stride, w * stride)

        def ours(tie_break="reference"):
            return synced([lost(feats[i:i + args.batch_size], (h, w), stride, image_hw, args.k_patches,
                         tie_break=tie_break) for i in range(0, args.n_images, args.batch_size)])

        def synced(out):
            sync()
            return out

        def peer():
            return [lost_one_image(f, (h, w), stride, image_hw, args.k_patches, order_stable)
                    for f in feats_np]

        batches = [feats[i:i + args.batch_size] for i in range(0, args.n_images, args.batch_size)]
        gram = [similarity(f) for f in batches]
        gram_np = [f @ f.T for f in feats_np]

        def ours_after_gram():
            return synced([lost_from_similarity(a, (h, w), stride, image_hw, args.k_patches) for a in gram])

        def peer_after_gram():
            return [lost_from_affinity(a, (h, w), stride, image_hw, args.k_patches, order_stable)
                    for a in gram_np]

        ours()  # warm-up
        per_image = lambda fn: best_time(fn, args.repeats)[0] / args.n_images  # noqa: E731
        t_ours, t_peer = per_image(ours), per_image(peer)
        g_ours = per_image(lambda: synced([similarity(f) for f in batches]))
        g_peer = per_image(lambda: [f @ f.T for f in feats_np])
        a_ours, a_peer = per_image(ours_after_gram), per_image(peer_after_gram)
        boxes = torch.cat([r.boxes for r in ours("index")]).cpu().numpy()
        peer_boxes = np.stack([box for box, _ in peer()])
        same = int((np.abs(boxes - peer_boxes) < 1e-3).all(1).sum())
        ms = lambda t: f"{1e3 * t:.3f}"  # noqa: E731
        print(f"{name}: grid {h}x{w}x{dim}, same boxes {same}/{args.n_images}\n"
              f"  ms/image        prunelens  numpy/scipy\n"
              f"  similarity      {ms(g_ours):>9}  {ms(g_peer):>11}\n"
              f"  after it        {ms(a_ours):>9}  {ms(a_peer):>11}   "
              f"ratio_after_similarity={a_peer / a_ours:.1f}\n"
              f"  LOST end to end {ms(t_ours):>9}  {ms(t_peer):>11}   "
              f"ratio_vs_reference={t_peer / t_ours:.1f}")

if __name__ == "__main__":
    main()
