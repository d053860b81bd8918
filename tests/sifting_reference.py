"""A NumPy oracle for one training step of Pellegrini & Biroli's batch-normalised FCN, written from
their TensorFlow code (phiandark/SiftingFeatures @ 386b61745042333d3b0767d89f9c9ac05b14c313):

* src/Network.py:28-55 — per layer (types ``f`` hidden and ``x`` output, Network.py:29): the
  layer's INPUT h is normalised, train: ``mean, var = tf.nn.moments(h, axes=[0])`` (biased
  variance, Network.py:42), ``(h - mean) / sqrt(var + eps)`` with ``eps = 1e-10`` (Network.py:10,
  44); eval: the same with the running ``in_mv`` fed by IMP.py (Network.py:44); then
  ``gamma * x̂ + beta`` (Network.py:45), ``x̂ @ (W * mW) + b * mb`` (Network.py:47), ReLU on hidden
  layers (Network.py:50-52). W has shape (fan_in, fan_out): torch's ``Linear.weight`` is W.T.
* Network.py:30-33 — ``W ~ N(0, 2 / (fan_in + fan_out))``, ``b = 0``, ``gamma = 1``, ``beta = 0``.
* Network.py:56-58 — softmax cross-entropy averaged over the batch (the authors' 1e-10 and 1e-30
  guards are left out: relative effect < 1e-9).
* Network.py:84 with IMP.py:57 — plain gradient descent, lr 0.1, on W, b, gamma and beta.
* IMP.py:141-144, 162-167 — running [mean; var]: (0, 1) before training, the first training batch's
  moments copied at step 0, then ``0.99 * running + 0.01 * batch``.

The gradient is derived by hand (no autograd), BN differentiated through the batch statistics as
TensorFlow does in training.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-10     # Network.py:10
BETA = 0.99     # IMP.py:60


def params_from_torch(model) -> list[dict[str, np.ndarray]]:
    """Per Linear layer of a prunelens FCN with ``input_norm: batch``: W (fan_in, fan_out), b, the
    input normalisation's gamma and beta, as float64 arrays."""
    mods = dict(model.layers.named_children())
    linear = [n for n in mods if n.startswith("fc")] + ["classifier"]
    norms = [f"bn{n[2:]}" for n in linear[:-1]] + ["bn_classifier"]
    return [{"W": mods[f].weight.detach().double().numpy().T.copy(),
             "b": mods[f].bias.detach().double().numpy().copy(),
             "gamma": mods[n].weight.detach().double().numpy().copy(),
             "beta": mods[n].bias.detach().double().numpy().copy()} for f, n in zip(linear, norms)]


def initial_running(params) -> list[tuple[np.ndarray, np.ndarray]]:
    """IMP.py:141-144: mean 0 and var 1 for every input feature of every layer."""
    return [(np.zeros(p["W"].shape[0]), np.ones(p["W"].shape[0])) for p in params]


def forward(x, params, train=True, running=None):
    """Logits, per-layer caches (for :func:`gradients`) and the batch moments of every layer input."""
    h = x.reshape(len(x), -1)
    caches, moments = [], []
    for layer, p in enumerate(params):
        mean = h.mean(axis=0)
        var = np.mean((h - mean) ** 2, axis=0)          # biased, tf.nn.moments
        moments.append((mean, var))
        m, v = (mean, var) if train else running[layer]
        inv = 1.0 / np.sqrt(v + EPS)
        xhat = (h - m) * inv
        u = p["gamma"] * xhat + p["beta"]
        z = u @ p["W"] + p["b"]
        last = layer == len(params) - 1
        caches.append((xhat, inv, u, z))
        h = z if last else np.maximum(z, 0.0)
    return h, caches, moments


def cross_entropy(logits, y):
    """Mean softmax cross-entropy and the softmax probabilities."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), np.exp(logp)


def gradients(params, caches, probs, y):
    """d(mean CE)/d(W, b, gamma, beta) per layer, in training mode."""
    n = len(y)
    dz = probs.copy()
    dz[np.arange(n), y] -= 1.0
    dz /= n
    grads = [None] * len(params)
    for layer in range(len(params) - 1, -1, -1):
        p = params[layer]
        xhat, inv, u, z = caches[layer]
        if layer != len(params) - 1:
            dz = dz * (z > 0)
        du = dz @ p["W"].T
        dxhat = du * p["gamma"]
        grads[layer] = {"W": u.T @ dz, "b": dz.sum(0), "gamma": (du * xhat).sum(0), "beta": du.sum(0)}
        # through x̂ = (h - mean(h)) / sqrt(var(h) + eps), batch statistics included
        dz = inv * (dxhat - dxhat.mean(0) - xhat * (dxhat * xhat).mean(0))
    return grads


def update_running(running, moments, step):
    """IMP.py:162-167."""
    if step == 0:
        return [(m.copy(), v.copy()) for m, v in moments]
    return [(BETA * rm + (1 - BETA) * m, BETA * rv + (1 - BETA) * v)
            for (rm, rv), (m, v) in zip(running, moments)]


def train_step(x, y, params, running, step, lr=0.1):
    """One iteration of IMP.py:146-167 without validation: (new params, new running, loss)."""
    logits, caches, moments = forward(x, params, train=True)
    loss, probs = cross_entropy(logits, y)
    grads = gradients(params, caches, probs, y)
    new = [{k: p[k] - lr * g[k] for k in p} for p, g in zip(params, grads)]
    return new, update_running(running, moments, step), loss


# ---- the training loop's bookkeeping and IMP (src/IMP.py, src/Utils.py, src/Data.py) ----------------
def getbatch_indices(rng: np.random.RandomState, train_size: int, batch_size: int) -> np.ndarray:
    """Data.py:72-73: ``batch_ind = np.random.choice(self.train_size, batch_size)`` — uniform, with
    replacement (the global RandomState, seeded by the clock at IMP.py:80; here a given one)."""
    return rng.choice(train_size, batch_size)


def validation_steps(steps: int, val_each: int) -> list[int]:
    """IMP.py:146, 152, 158-161: the loop ``for st in range(steps+1)`` validates where
    ``st % val_each == 0``, before that step's update (so step st = after st updates)."""
    return [st for st in range(steps + 1) if st % val_each == 0]


def level_error(el) -> float:
    """IMP.py:169: ``emin = np.min(el)`` over the level's validation errors."""
    return float(np.min(el))


def next_ratios(ratios, rat_factor: float = 0.3):
    """IMP.py:89 (``ratios = ratio*np.ones(lprun)``, init_sparsity 0) and IMP.py:182
    (``ratios += rat_factor*(1-ratios)``): the cumulative fraction to prune of each layer."""
    return ratios + rat_factor * (1 - ratios)


def authors_get_mask(weights, prunable, ratios, maskold):
    """Utils.py:52-74 ``get_mask`` for fully connected layers: ``weights[l] = (W, b)`` with W of
    shape (fan_in, fan_out), ``maskold[l] = [wmask, bmask]``. Per prunable layer (Utils.py:57):
    ``tw = |W|*maskold_w``, ``tb = |b|*maskold_b`` (58-62), ranked together (63),
    ``ncutoff = int(ratio*len(wlist))`` (64), ``thrs = sorted(wlist)[ncutoff]`` (66-67), kept where
    ``>= thrs`` (68-69). Other layers keep their old mask (71-72)."""
    out, ri = [], 0
    for l, (W, b) in enumerate(weights):
        if not prunable[l]:
            out.append(maskold[l])
            continue
        tw, tb = np.abs(W) * maskold[l][0], np.abs(b) * maskold[l][1]
        wlist = np.concatenate((tw.flatten(), tb))
        ncutoff = int(ratios[ri] * len(wlist))
        ri += 1
        wlist.sort()
        thrs = wlist[ncutoff]
        out.append([np.where(tw < thrs, 0.0, 1.0), np.where(tb < thrs, 0.0, 1.0)])
    return out


def connected_fraction(masks, prunable, nuconn: int = 0) -> float:
    """IMP.py:87, 120, 188 as written: ``prunable = [l-1 for l, lay in enumerate(arch) if lay[2]]``
    (with T:T:T:F: [-1, 0, 1], the output layer and the first two hidden ones; an off-by-one that
    never checks the third) and ``min`` over those of the fraction of units (columns of W) with more
    than ``NUconn = 0`` incoming weights (IMP.py:78). IMP.py:128: the loop goes on while it is
    ``> stop_ratio``."""
    idx = [l - 1 for l, p in enumerate(prunable) if p]
    return float(np.min([len(np.where(np.sum(masks[l][0], axis=0) > nuconn)[0]) / np.shape(masks[l][0])[1]
                         for l in idx]))


def authors_make_mask(arch, spars, uniform):
    """Utils.py:93-103 ``make_mask`` for fully connected layers, ``arch[l] = ('f' or 'x', [fan_in,
    fan_out], prun)``, with the draw ``np.random.uniform(0.0,1.0,(par[0],par[1]))`` (Utils.py:99)
    replaced by ``uniform((fan_in, fan_out))`` so that a test can hand it the same draws: a pruned
    layer's weight mask is ``np.where(u<spars[si],0,1)``, its bias mask ones (Utils.py:100); an
    unpruned layer's both ones (Utils.py:103)."""
    imask, si = [], 0
    for typ, par, prun in arch:
        assert typ in ("f", "x")
        if prun:
            wsp = np.where(uniform((par[0], par[1])) < spars[si], 0, 1).astype(np.float32)
            imask.append([wsp, np.ones((par[1]), dtype=np.float32)])
            si += 1
        else:
            imask.append([np.ones((par[0], par[1]), dtype=np.float32), np.ones((par[1]), dtype=np.float32)])
    return imask


def authors_ratios(init_sparsity: float, rounds: int, n_prunable: int, rat_factor: float = 0.3):
    """IMP.py:58 (``ratio = init_sparsity``), 88-89 (``ratios = ratio*np.ones(lprun)``), then
    IMP.py:182 (``ratios += rat_factor*(1-ratios)``) once per finished iteration: the ratios the
    mask of iteration ``rounds`` is cut at."""
    ratios = init_sparsity * np.ones(n_prunable)
    for _ in range(rounds):
        ratios += rat_factor * (1 - ratios)
    return ratios
