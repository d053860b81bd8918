"""The embedded synthetic dataset: classes are object *shapes*, texture is a nuisance.

Every image holds one textured, coloured object on a textured background. The class is the
object's shape; each class also has an associated texture, and ``texture_correlation`` sets how
often the object wears it (0: texture independent of class; 0.8: a strong texture shortcut).
Every sample carries its class, its texture class, a binary segmentation mask and the object's
box ``(xmin, ymin, xmax, ymax)`` in pixels with exclusive max (``xmax = last column + 1``).

Everything is generated procedurally and deterministically from ``seed`` — no files. The pose and
texture parameters of a split are drawn first; ``variant`` only changes how they are rendered, so
``standard``, ``silhouette`` (black filled shape on white), ``edge`` (black outline on white) and
``cue_conflict`` (shape of class a wearing the texture of class b != a) are the same objects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prunelens.errors import DataError

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring",
          "crescent", "heart", "arrow", "hexagon", "tee", "ell")
VARIANTS = ("standard", "silhouette", "edge", "cue_conflict")
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}

# Texture k: pattern k drawn in colours k (RGB in [0, 1]).
_COLOURS_A = torch.tensor([
    [0.90, 0.10, 0.10], [0.10, 0.55, 0.95], [0.95, 0.80, 0.10], [0.15, 0.75, 0.25],
    [0.65, 0.20, 0.85], [0.95, 0.50, 0.05], [0.05, 0.80, 0.80], [0.95, 0.35, 0.65],
    [0.45, 0.30, 0.10], [0.60, 0.90, 0.10], [0.10, 0.15, 0.55], [0.85, 0.85, 0.85]])
_COLOURS_B = torch.tensor([
    [0.20, 0.05, 0.05], [0.95, 0.95, 0.70], [0.25, 0.15, 0.45], [0.95, 0.95, 0.95],
    [0.10, 0.30, 0.10], [0.10, 0.10, 0.35], [0.40, 0.05, 0.20], [0.15, 0.30, 0.30],
    [0.95, 0.75, 0.45], [0.30, 0.10, 0.40], [0.90, 0.60, 0.20], [0.05, 0.05, 0.05]])
N_TEXTURES = len(_COLOURS_A)


@dataclass
class SyntheticParams:
    """Per-sample draws of one split (all tensors of length N)."""

    label: torch.Tensor         # shape class
    texture: torch.Tensor       # object texture in the standard variant
    conflict_texture: torch.Tensor  # texture of another class, for cue_conflict
    background: torch.Tensor    # background texture (never the object's)
    cx: torch.Tensor
    cy: torch.Tensor
    radius: torch.Tensor
    angle: torch.Tensor
    freq: torch.Tensor          # texture frequency jitter (object, background)
    phase: torch.Tensor         # (N, 4) random phases


def draw_params(n: int, num_classes: int, image_size: int, texture_correlation: float,
                seed: int) -> SyntheticParams:
    g = torch.Generator().manual_seed(seed)
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    label = torch.randint(num_classes, (n,), generator=g)
    random_texture = torch.randint(N_TEXTURES, (n,), generator=g)
    texture = torch.where(u(n) < texture_correlation, label, random_texture)
    offset = torch.randint(1, num_classes, (n,), generator=g)
    conflict = (label + offset) % num_classes
    bg_offset = torch.randint(1, N_TEXTURES, (n,), generator=g)
    radius = image_size * (0.24 + 0.12 * u(n))
    margin = radius * 1.05
    cx = margin + (image_size - 2 * margin) * u(n)
    cy = margin + (image_size - 2 * margin) * u(n)
    angle = (u(n) - 0.5) * math.radians(40)
    return SyntheticParams(label=label, texture=texture, conflict_texture=conflict,
                           background=bg_offset, cx=cx, cy=cy, radius=radius, angle=angle,
                           freq=0.8 + 0.4 * u(n, 2), phase=u(n, 4) * 2 * math.pi)


def _polygon(r, theta, sides: int, size: float = 0.85):
    sector = 2 * math.pi / sides
    t = torch.remainder(theta + math.pi / 2, sector) - sector / 2
    return r * torch.cos(t) <= size * math.cos(math.pi / sides)


def shape_masks(shape_ids: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Masks (B, H, W) of shapes given per-sample local coordinates u, v in about [-1, 1]."""
    r = torch.sqrt(u * u + v * v)
    theta = torch.atan2(v, u)
    out = torch.zeros_like(u, dtype=torch.bool)
    for k, name in enumerate(SHAPES):
        sel = shape_ids == k
        if not sel.any():
            continue
        uu, vv, rr, tt = u[sel], v[sel], r[sel], theta[sel]
        if name == "circle":
            m = rr <= 0.85
        elif name == "square":
            m = torch.maximum(uu.abs(), vv.abs()) <= 0.7
        elif name == "triangle":
            m = _polygon(rr, tt, 3, 0.95)
        elif name == "star":
            spike = torch.remainder(tt + math.pi / 2, 2 * math.pi / 5) / (2 * math.pi / 5)
            m = rr <= 0.38 + 0.55 * (1 - 2 * (spike - 0.5).abs())
        elif name == "cross":
            m = ((uu.abs() <= 0.25) & (vv.abs() <= 0.85)) | ((vv.abs() <= 0.25) & (uu.abs() <= 0.85))
        elif name == "ring":
            m = (rr <= 0.85) & (rr >= 0.5)
        elif name == "crescent":
            m = (rr <= 0.85) & (((uu - 0.4) ** 2 + vv ** 2) > 0.62 ** 2)
        elif name == "heart":
            x, y = uu / 0.9, -(vv / 0.9) + 0.25
            m = (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
        elif name == "arrow":
            m = ((vv.abs() <= 0.2) & (uu >= -0.85) & (uu <= 0.15)) | (
                (uu >= 0.1) & (vv.abs() <= (0.85 - uu) * 0.9))
        elif name == "hexagon":
            m = _polygon(rr, tt + math.pi / 2, 6, 0.85)
        elif name == "tee":
            m = ((vv >= -0.8) & (vv <= -0.4) & (uu.abs() <= 0.8)) | ((uu.abs() <= 0.22) & (vv >= -0.8) & (vv <= 0.85))
        elif name == "ell":
            m = ((uu >= -0.7) & (uu <= -0.3) & (vv.abs() <= 0.85)) | ((vv >= 0.45) & (vv <= 0.85) & (uu >= -0.7) & (uu <= 0.7))
        out[sel] = m
    return out


def textures(texture_ids: torch.Tensor, x: torch.Tensor, y: torch.Tensor, freq: torch.Tensor,
             phase: torch.Tensor) -> torch.Tensor:
    """RGB textures (B, 3, H, W) in [0, 1]; x, y are pixel coordinates (B, H, W)."""
    f = (2 * math.pi / 8) * freq.view(-1, 1, 1)
    p1, p2 = phase[:, 0].view(-1, 1, 1), phase[:, 1].view(-1, 1, 1)
    fx, fy = f * x + p1, f * y + p2
    patterns = torch.stack([
        torch.sin(fy),                                     # horizontal stripes
        torch.sin(fx),                                     # vertical stripes
        torch.sin((fx + fy) / 1.4),                        # diagonal stripes
        torch.sin((fx - fy) / 1.4),                        # anti-diagonal stripes
        torch.sin(fx / 1.5) * torch.sin(fy / 1.5),         # checkerboard
        torch.sin(fx) * torch.sin(fy) - 0.4,               # dots
        torch.sin(torch.sqrt(x * x + y * y) * f + p1),     # concentric rings
        torch.maximum(torch.sin(fx).abs(), torch.sin(fy).abs()) - 0.92,  # grid lines
        torch.sin(fy + 2 * torch.sin(fx / 2)),             # waves
        torch.sin(fx / 2 + 2 * (torch.remainder(fy / 3, 2) - 1).abs()),  # zigzag
        torch.sin(fx * 2) * torch.sin(fy / 2),             # bricks
        torch.sin(fx * 1.7 + fy * 0.3) * torch.sin(fy * 1.7 - fx * 0.3),  # woven
    ], dim=1)  # (B, T, H, W)
    pattern = patterns.gather(1, texture_ids.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[1:]))
    on = (pattern > 0).float()  # (B, 1, H, W)
    a = _COLOURS_A[texture_ids].view(-1, 3, 1, 1)
    b = _COLOURS_B[texture_ids].view(-1, 3, 1, 1)
    return on * a + (1 - on) * b


def _edges(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Outline of boolean masks (B, H, W): pixels of the mask within ``width`` of its border."""
    m = mask.float().unsqueeze(1)
    k = 2 * width + 1
    eroded = -torch.nn.functional.max_pool2d(-m, k, stride=1, padding=width)
    return (m - eroded).squeeze(1) > 0


def render(params: SyntheticParams, idx: torch.Tensor, image_size: int, variant: str):
    """Render samples ``idx`` of a split: images uint8 (B, 3, H, W), masks bool (B, H, W)."""
    coords = torch.arange(image_size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    x, y = x.expand(len(idx), -1, -1), y.expand(len(idx), -1, -1)
    cx, cy = params.cx[idx].view(-1, 1, 1), params.cy[idx].view(-1, 1, 1)
    rad, ang = params.radius[idx].view(-1, 1, 1), params.angle[idx].view(-1, 1, 1)
    dx, dy = (x - cx) / rad, (y - cy) / rad
    u = dx * torch.cos(ang) + dy * torch.sin(ang)
    v = -dx * torch.sin(ang) + dy * torch.cos(ang)
    mask = shape_masks(params.label[idx], u, v)
    if variant in ("silhouette", "edge"):
        ink = mask if variant == "silhouette" else _edges(mask, max(1, image_size // 40))
        img = 1.0 - ink.float().unsqueeze(1).expand(-1, 3, -1, -1)
    else:
        obj_tex = params.texture[idx] if variant == "standard" else params.conflict_texture[idx]
        bg_tex = (obj_tex + params.background[idx]) % N_TEXTURES
        freq, phase = params.freq[idx], params.phase[idx]
        obj = textures(obj_tex, x, y, freq[:, 0], phase[:, :2])
        bg = textures(bg_tex, x, y, freq[:, 1], phase[:, 2:])
        bg = 0.5 + 0.45 * (bg - 0.5)  # lower-contrast background so the object stands out
        img = torch.where(mask.unsqueeze(1), obj, bg)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), mask


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Boxes (B, 4) = (xmin, ymin, xmax, ymax), exclusive max, of boolean masks (B, H, W)."""
    b, h, w = masks.shape
    cols, rows = masks.any(1), masks.any(2)
    ar_w, ar_h = torch.arange(w), torch.arange(h)
    xmin = torch.where(cols, ar_w, w).min(1).values
    xmax = torch.where(cols, ar_w, -1).max(1).values + 1
    ymin = torch.where(rows, ar_h, h).min(1).values
    ymax = torch.where(rows, ar_h, -1).max(1).values + 1
    return torch.stack([xmin, ymin, xmax, ymax], 1).float()


class SyntheticShapes(torch.utils.data.Dataset):
    """One split of the synthetic dataset, generated in memory.

    ``dataset[i]`` is ``(image, label)`` with ``image`` a float tensor (3, H, W) in [0, 1]. The whole
    split is also available as tensors: ``images`` (uint8), ``labels``, ``texture_labels``,
    ``masks`` (bool) and ``boxes``; ``item_ids`` name the samples.
    """

    def __init__(self, split: str = "train", n: int = 1000, image_size: int = 64,
                 num_classes: int = 10, texture_correlation: float = 0.0,
                 variant: str = "standard", seed: int = 0, chunk: int = 512) -> None:
        if split not in SPLIT_OFFSETS:
            raise DataError(f"synthetic split '{split}' does not exist; use one of {list(SPLIT_OFFSETS)}")
        if variant not in VARIANTS:
            raise DataError(f"synthetic variant '{variant}' does not exist; use one of {list(VARIANTS)}")
        if not 2 <= num_classes <= len(SHAPES):
            raise DataError(f"synthetic num_classes must be in 2..{len(SHAPES)}, got {num_classes}")
        if not 0.0 <= texture_correlation <= 1.0:
            raise DataError(f"texture_correlation must be in [0, 1], got {texture_correlation}")
        if image_size < 16:
            raise DataError(f"synthetic image_size must be at least 16, got {image_size}")
        self.split, self.variant, self.image_size = split, variant, image_size
        self.num_classes = num_classes
        self.class_names = list(SHAPES[:num_classes])
        self.params = draw_params(n, num_classes, image_size, texture_correlation,
                                  seed * 1000 + SPLIT_OFFSETS[split])
        images, masks = [], []
        for start in range(0, n, chunk):
            idx = torch.arange(start, min(n, start + chunk))
            img, mask = render(self.params, idx, image_size, variant)
            images.append(img)
            masks.append(mask)
        self.images = torch.cat(images) if images else torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8)
        self.masks = torch.cat(masks) if masks else torch.zeros(0, image_size, image_size, dtype=torch.bool)
        self.labels = self.params.label
        self.texture_labels = (self.params.conflict_texture if variant == "cue_conflict"
                               else self.params.texture)
        self.boxes = boxes_from_masks(self.masks)
        self.item_ids = [f"{split}-{i:05d}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float() / 255.0, int(self.labels[i])
