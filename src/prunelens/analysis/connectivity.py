"""Connectivity and locality of pruned masks (Pellegrini & Biroli, ICML 2022, Secs. 3–4).

A layer's mask is seen as one binary image per *unit* (hidden node, or conv filter): ``units`` is
a bool tensor (U, C, H, W) — the rows of an FCN's first layer reshaped to the input's C×H×W, or a
conv layer's kernels. On it:

* connections per unit and per input pixel;
* the pair-displacement histograms: for every unit, every ordered pair of distinct inputs it
  connects to, their displacement d = (Δy, Δx) is counted, separately for pairs in the same
  channel (S_sc(d)) and in different channels (S_dc(d)); ordered pairs make both maps symmetric,
  S(d) = S(−d). They are sums of autocorrelations of the unit masks, computed for all units at once
  with FFTs (no loop over units or pairs);
* their expectation under a random mask with the same number of connections per unit
  (:func:`random_baseline`) and a locality score: the fraction of pairs with 0 < |d| ≤ r, divided
  by that fraction under the random mask (1 = no locality, > 1 = local);
* translation structure: how similar two units' masks are at the best relative shift;
* the second layer's effective mask M2·M1 (inputs reachable from a second-layer unit);
* ablation of the most / least / randomly chosen connected units.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from prunelens.pruning.masks import alive_units_fraction  # noqa: F401 - part of this API


# ---- masks as unit images ------------------------------------------------------------------------
def unit_masks(mask: torch.Tensor, input_shape: Iterable[int] | None = None) -> torch.Tensor:
    """(U, C, H, W) bool view of a layer mask.

    A Linear mask (U, N) needs ``input_shape`` = (C, H, W) with C·H·W = N (rows are flattened
    images, channel-row-column order); a conv mask (U, C, kh, kw) is returned as is.
    """
    mask = mask.detach().bool()
    if mask.ndim == 4:
        return mask
    if mask.ndim == 2 and input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or math.prod(shape) != mask.shape[1]:
            raise ValueError(f"input shape {shape} does not match the {mask.shape[1]} inputs of "
                             "the mask")
        return mask.reshape(mask.shape[0], *shape)
    raise ValueError(f"a mask of shape {tuple(mask.shape)} is neither a conv kernel mask nor a "
                     "Linear mask with a known input shape")


def connections_per_unit(units: torch.Tensor) -> torch.Tensor:
    """Number of surviving incoming connections of every unit, (U,)."""
    return units.flatten(1).sum(1)


def connections_per_input(units: torch.Tensor) -> torch.Tensor:
    """Number of units every input (channel, pixel) still feeds, (C, H, W)."""
    return units.sum(0)


def effective_mask(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Second layer's effective mask (U2, N): input i reaches unit j through some first-layer unit,
    i.e. (M2 · M1)_ji > 0 (Pellegrini & Biroli 2022, Sec. 4.3)."""
    return (second.float() @ first.float()) > 0


# ---- pair-displacement histograms ----------------------------------------------------------------
def displacement_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δy, Δx) of every cell of a displacement map, each (2H−1, 2W−1); the centre is d = 0."""
    dy = torch.arange(-(height - 1), height, dtype=torch.float64)
    dx = torch.arange(-(width - 1), width, dtype=torch.float64)
    return torch.meshgrid(dy, dx, indexing="ij")


_MAP_BYTES = 64 << 20      # memory for the per-unit maps (and FFT spectra) of one chunk of units
_PAIR_BUDGET = 2_000_000   # pairs enumerated at once by the direct method
#: cost of one enumerated pair relative to one unit of the FFT estimate below (measured on CPU for
#: 1024 units of 3×32×32: ~11 ns vs ~0.4 ns; the pairs win above ~96 % sparsity, the FFT below)
_PAIR_COST = 25.0


def _fft_counts(block: torch.Tensor, per_unit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """S_sc, S_dc of a block of units (n, C, H, W) from FFTs of the unit masks, per unit
    (n, 2H−1, 2W−1) or summed over the block (1, 2H−1, 2W−1).

    Σ_p A(p)·B(p + d) for all d is a cross-correlation; with zero padding to 2H×2W the FFT's
    circular correlation equals the linear one. Same-channel: Σ_c |F(A_c)|² (minus the pairs of a
    pixel with itself at d = 0); all pairs: |Σ_c F(A_c)|²; different-channel: their difference.
    """
    _, _, h, w = block.shape
    block = block.to(torch.float64)
    spectrum = torch.fft.rfft2(block, s=(2 * h, 2 * w))
    same = spectrum.abs().square().sum(1)
    every = spectrum.sum(1).abs().square()
    self_pairs = block.flatten(1).sum(1)  # a pixel paired with itself is no pair
    if not per_unit:  # the transform is linear: sum the spectra first, invert once
        same, every = same.sum(0, keepdim=True), every.sum(0, keepdim=True)
        self_pairs = self_pairs.sum(0, keepdim=True)
    maps = torch.fft.irfft2(torch.stack([same, every - same]), s=(2 * h, 2 * w))
    maps = torch.fft.fftshift(maps, dim=(-2, -1))[..., 1:, 1:].round()
    sc, dc = maps[0], maps[1]
    sc[:, h - 1, w - 1] -= self_pairs
    return sc, dc


def _direct_counts(block: torch.Tensor, per_unit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """S_sc, S_dc of a block of units (as :func:`_fft_counts`) by enumerating every ordered pair
    of connections of every unit at once (no loop).

    Each connection gets a code z = c·M + y·(2W−1) + x with M = (2H−1)(2W−1), so that the code
    difference of a pair, shifted by a constant, indexes (Δc, Δy, Δx) without collisions; the
    pairs of unit u are its k_u connections times its k_u connections, laid out with
    ``repeat_interleave``, and one ``bincount`` counts them. Δc = 0 is S_sc, the rest S_dc.
    """
    n, c, h, w = block.shape
    m = (2 * h - 1) * (2 * w - 1)
    bins = (2 * c - 1) * m
    unit, ch, y, x = torch.nonzero(block, as_tuple=True)  # grouped by unit
    code = ch * m + y * (2 * w - 1) + x
    k = torch.bincount(unit, minlength=n)
    partners = k[unit]                                    # pairs that start at each connection
    pair_start = torch.cumsum(partners, 0) - partners
    unit_start = (torch.cumsum(k, 0) - k)[unit]           # first connection of the same unit
    # pair t of connection i pairs it with connection unit_start[i] + (t - pair_start[i])
    second = torch.repeat_interleave(unit_start - pair_start, partners)
    second += torch.arange(len(second))
    cell = code[second] - torch.repeat_interleave(code, partners) + ((c - 1) * m + (m - 1) // 2)
    if per_unit:
        cell += torch.repeat_interleave(unit * bins, partners)
    counts = torch.bincount(cell, minlength=(n if per_unit else 1) * bins)
    counts = counts.view(-1, 2 * c - 1, 2 * h - 1, 2 * w - 1).to(torch.float64)
    sc = counts[:, c - 1].clone()
    sc[:, h - 1, w - 1] -= k.to(torch.float64) if per_unit else float(len(unit))  # i paired with i
    dc = counts.sum(1) - counts[:, c - 1]
    return sc, dc


def _use_direct(units: torch.Tensor) -> bool:
    """Enumerating pairs costs Σ_u k_u²; the FFTs cost about U·(C + 2)·4HW·log2(4HW)."""
    u, c, h, w = units.shape
    k = units.flatten(1).sum(1).to(torch.float64)
    fft_cost = u * (c + 2) * 4 * h * w * math.log2(4 * h * w)
    return _PAIR_COST * float((k * k).sum()) < fft_cost


def _chunks(units: torch.Tensor, direct: bool, chunk: int | None) -> Iterator[slice]:
    u, c, h, w = units.shape
    if chunk is None:
        per_unit = (2 * h) * (w + 1) * 16 * ((c + 2) if not direct else 2)
        chunk = max(1, _MAP_BYTES // per_unit)
    if not direct:
        for start in range(0, u, chunk):
            yield slice(start, start + chunk)
        return
    pairs = units.flatten(1).sum(1).square()
    start = 0
    while start < u:  # as many units as fit in the pair budget (at least one)
        fits = int(torch.searchsorted(torch.cumsum(pairs[start:], 0), _PAIR_BUDGET, right=True))
        stop = start + max(1, min(fits, chunk))
        yield slice(start, stop)
        start = stop


def _autocorrelations(units: torch.Tensor, chunk: int | None = None, method: str = "auto",
                      per_unit: bool = True) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Same-/different-channel pair counts of a chunk of units at a time, (n, 2H−1, 2W−1) each
    (or (1, …) summed over the chunk), by FFT (dense masks) or by enumerating the pairs (sparse
    masks), whichever is cheaper."""
    if method not in ("auto", "fft", "direct"):
        raise ValueError(f"method must be 'auto', 'fft' or 'direct', got {method!r}")
    direct = _use_direct(units) if method == "auto" else method == "direct"
    counts = _direct_counts if direct else _fft_counts
    for part in _chunks(units, direct, chunk):
        yield part.start, *counts(units[part], per_unit)


def pair_histograms(units: torch.Tensor, per_unit: bool = False, chunk: int | None = None,
                    method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """S_sc(d), S_dc(d): ordered pairs of connected inputs at displacement d, summed over units.

    Maps are float64 (2H−1, 2W−1) indexed [Δy + H − 1, Δx + W − 1]; ``per_unit`` keeps the unit
    axis, (U, 2H−1, 2W−1). Each unordered pair counts at d and at −d. ``method``: ``fft``,
    ``direct`` (pair enumeration) or ``auto`` (the cheaper for this mask; results are identical).
    """
    parts = list(_autocorrelations(units.detach().bool().cpu(), chunk, method, per_unit))
    sc = torch.cat([p[1] for p in parts])
    dc = torch.cat([p[2] for p in parts])
    return (sc, dc) if per_unit else (sc.sum(0), dc.sum(0))


def grid_pair_counts(shape: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ordered pairs of distinct inputs of a full C×H×W grid at each displacement (same channel,
    different channels): C·(H−|Δy|)(W−|Δx|) (0 at d = 0) and C(C−1)·(H−|Δy|)(W−|Δx|)."""
    c, h, w = (int(s) for s in shape)
    dy, dx = displacement_grid(h, w)
    overlap = (h - dy.abs()) * (w - dx.abs())
    same = c * overlap
    same[h - 1, w - 1] = 0
    return same, c * (c - 1) * overlap


def random_baseline(counts: torch.Tensor, shape: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """E[S_sc(d)], E[S_dc(d)] for masks whose unit u has ``counts[u]`` connections placed uniformly
    at random: each ordered pair of distinct inputs is kept with probability k(k−1)/(N(N−1))."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    k = counts.to(torch.float64)
    scale = float((k * (k - 1)).sum()) / (n * (n - 1)) if n > 1 else 0.0
    same, diff = grid_pair_counts(shape)
    return scale * same, scale * diff


def random_masks_like(units: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Masks with each unit's number of connections, placed uniformly at random."""
    counts = connections_per_unit(units)
    scores = torch.rand(units.shape[0], units[0].numel(), generator=generator, dtype=torch.float64)
    # keep the k_u smallest scores of row u: those up to the row's k_u-th smallest value
    kth = scores.sort(1).values.gather(1, (counts - 1).clamp(min=0).unsqueeze(1))
    return ((scores <= kth) & (counts > 0).unsqueeze(1)).reshape(units.shape)


@dataclass
class Locality:
    """Locality of a layer's masks at radius r (pixels).

    ``unit_fraction[u]``: fraction of unit u's same-channel pairs with 0 < |d| ≤ r (NaN when it has
    none); ``baseline_fraction``: the same fraction expected under a random mask (it does not
    depend on the number of connections); ``unit_score = unit_fraction / baseline_fraction``.
    ``pooled_*``: pairs of all units pooled. ``dc_*``: different-channel pairs, |d| ≤ r (d = 0
    included: a unit reading one pixel in several colours); NaN with a single channel.
    """

    radius: float
    unit_fraction: torch.Tensor
    unit_score: torch.Tensor
    baseline_fraction: float
    pooled_fraction: float
    pooled_score: float
    dc_fraction: float
    dc_baseline_fraction: float
    dc_score: float
    s_sc: torch.Tensor
    s_dc: torch.Tensor
    expected_sc: torch.Tensor
    expected_dc: torch.Tensor


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def locality(units: torch.Tensor, radius: float = 2.0, chunk: int | None = None,
             method: str = "auto") -> Locality:
    """Pair histograms, random baseline and locality scores of ``units`` (U, C, H, W)."""
    units = units.detach().bool().cpu()
    _, c, h, w = units.shape
    dy, dx = displacement_grid(h, w)
    near = (dy.square() + dx.square()) <= radius * radius
    near_sc = near.clone()
    near_sc[h - 1, w - 1] = False
    local, pairs, s_sc, s_dc = [], [], 0.0, 0.0
    for _, sc, dc in _autocorrelations(units, chunk, method):
        local.append(sc[:, near_sc].sum(1))
        pairs.append(sc.flatten(1).sum(1))
        s_sc, s_dc = s_sc + sc.sum(0), s_dc + dc.sum(0)
    local, pairs = torch.cat(local), torch.cat(pairs)
    counts = connections_per_unit(units)
    e_sc, e_dc = random_baseline(counts, (c, h, w))
    same_grid, diff_grid = grid_pair_counts((c, h, w))
    base = _ratio(float(same_grid[near_sc].sum()), float(same_grid.sum()))
    unit_fraction = torch.where(pairs > 0, local / pairs.clamp(min=1), torch.full_like(local, math.nan))
    pooled = _ratio(float(local.sum()), float(pairs.sum()))
    dc_fraction = _ratio(float(s_dc[near].sum()), float(s_dc.sum())) if c > 1 else math.nan
    dc_base = _ratio(float(diff_grid[near].sum()), float(diff_grid.sum())) if c > 1 else math.nan
    return Locality(radius=float(radius), unit_fraction=unit_fraction,
                    unit_score=unit_fraction / base if base > 0 else unit_fraction * math.nan,
                    baseline_fraction=base, pooled_fraction=pooled, pooled_score=_ratio(pooled, base),
                    dc_fraction=dc_fraction, dc_baseline_fraction=dc_base,
                    dc_score=_ratio(dc_fraction, dc_base), s_sc=s_sc, s_dc=s_dc,
                    expected_sc=e_sc, expected_dc=e_dc)


# ---- translation structure -----------------------------------------------------------------------
def shift_similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlap of unit masks a[i] and b[i] (P, C, H, W) at the best spatial shift, and unshifted.

    sim(s) = Σ_c Σ_p a_c(p)·b_c(p + s) / √(k_a·k_b) (cosine similarity of the shifted masks, the
    shift moving all channels together); returns (max_s sim(s), sim(0)), NaN for empty masks.
    """
    corr = shift_correlation(a, b).round()
    norm = (a.flatten(1).sum(1) * b.flatten(1).sum(1)).to(torch.float64).sqrt()
    norm = torch.where(norm > 0, norm, torch.full_like(norm, math.nan))
    return corr.flatten(1).max(1).values / norm, corr[:, 0, 0] / norm


def shift_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C(s) = Σ_c Σ_p a_c(p)·b_c(p + s) of pairs a[i], b[i] (P, C, H, W) at every shift, float64
    (P, 2H, 2W) indexed by s mod (2H, 2W); zero padding to 2H×2W makes the FFT's circular
    correlation the linear one. Masks or weights alike."""
    _, _, h, w = a.shape
    fa = torch.fft.rfft2(a.to(torch.float64), s=(2 * h, 2 * w))
    fb = torch.fft.rfft2(b.to(torch.float64), s=(2 * h, 2 * w))
    return torch.fft.irfft2((fa.conj() * fb).sum(1), s=(2 * h, 2 * w))


def best_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The shift s = (Δy, Δx) at which mask b[i] overlaps mask a[i] most, (P, 2): b[i](p + s)
    matches a[i](p). Ties go to the first shift in row-major order of the correlation map."""
    corr = shift_correlation(a, b).round()
    h2, w2 = corr.shape[-2:]
    flat = corr.flatten(1).argmax(1)
    dy, dx = flat // w2, flat % w2
    return torch.stack([torch.where(dy < h2 // 2, dy, dy - h2), torch.where(dx < w2 // 2, dx, dx - w2)], 1)


def sample_unit_pairs(alive: torch.Tensor, n_pairs: int, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
    """Up to ``n_pairs`` distinct unordered pairs (i < j) of the ``alive`` unit indices, (P, 2)."""
    m = len(alive)
    if m < 2:
        return torch.zeros(0, 2, dtype=torch.long)
    total = m * (m - 1) // 2
    if total <= n_pairs:
        pick = torch.arange(total)
    else:
        pick = torch.randperm(total, generator=generator)[:n_pairs].sort().values
    upper = torch.triu_indices(m, m, offset=1)  # (2, total), row-major over i < j
    return alive[upper[:, pick]].T.contiguous()


# ---- ablation ------------------------------------------------------------------------------------
def choose_units(counts: torch.Tensor, fraction: float, generator: torch.Generator | None = None
                 ) -> dict[str, torch.Tensor]:
    """The ``fraction`` of connected units with most / least connections, and a random draw of them."""
    alive = torch.nonzero(counts > 0).flatten()
    k = max(1, int(round(fraction * len(alive)))) if len(alive) else 0
    order = alive[torch.argsort(counts[alive], descending=True, stable=True)]
    return {"most": order[:k], "least": order[len(order) - k:],
            "random": alive[torch.randperm(len(alive), generator=generator)[:k]]}


def _zero_units_hook(units: torch.Tensor, dim: int) -> Callable:
    def hook(module, inputs, output):
        index = [slice(None)] * output.ndim
        index[dim] = units.to(output.device)
        output = output.clone()
        output[tuple(index)] = 0
        return output
    return hook


@torch.no_grad()
def ablation_correct(model: nn.Module, module: nn.Module, units: torch.Tensor,
                     batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                     unit_dim: int = 1) -> torch.Tensor:
    """Per-image correctness (bool) with the outputs of ``units`` of ``module`` set to 0.

    Without a normalisation after the layer, zeroing a unit's output removes it from the network
    (as if all its incoming weights and bias were pruned); a BatchNorm after a conv maps the zero
    to its shift β − γμ/σ, so the unit then sends a constant instead. Units index ``unit_dim`` of
    the module's output (the spec's :meth:`~prunelens.models.ArchSpec.unit_dim`: 1 for a conv's
    channels, -1 for a Linear's features).
    """
    handle = module.register_forward_hook(_zero_units_hook(units, unit_dim)) if len(units) else None
    device = next(model.parameters()).device
    try:
        correct = [model(transform(x.to(device))).argmax(1).cpu() == y for x, y in batches]
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
