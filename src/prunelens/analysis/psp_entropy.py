"""PSP-entropy of neurons (Tartaglione, Bragagnolo & Grangetto, ICANN 2020, arXiv:2004.14765, Sec. 3).

For a neuron i with post-synaptic potential (pre-activation) z_i, and class k of the data:
p_ik = P(z_i > 0 | class k), clamped to [ε, 1 − ε] (ε = 1e-4 as in the reference code),
H_ik = −p_ik log2 p_ik − (1 − p_ik) log2(1 − p_ik) (binary entropy, bits),
H_i = Σ_k H_ik. A neuron whose on/off state is fixed within every class has H_i ≈ 0; one that
switches at random within every class has H_i = K.

Neurons are the outputs of every Conv/Linear module (forward hooks, one pass over the data for all
layers). ``conv_neurons="element"`` treats every output element (channel × position, or token ×
feature) as a neuron, as the reference code does (EIDOSLAB/PSP-entropy src/PSPentropy.py @ 0ab88b5:
one row per ``np.prod(output.shape[1:])``, lines 25-27; element on when ``output.view(batch, -1) >
0``, lines 38-39; P / M clamped to [1e-4, 0.9999], lines 41-42; H_i = Σ_k H_ik, line 45;
``tests/psp_reference.py`` transcribes it); ``"channel"`` (default) treats every channel / feature
as one neuron whose positions (or tokens) are further samples of its state, which keeps the count
of neurons independent of the input size. The reference divides by each class's count and so
gives NaN for a class with no sample. Classes absent from the data are
left out of the sum and named in :attr:`PSPEntropy.missing_classes` (never NaN).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from prunelens.models import ArchSpec, spec_for

CLAMP = 1e-4


@dataclass
class PSPEntropy:
    per_neuron: dict[str, torch.Tensor]      # layer → H_i (n,), bits
    per_class: dict[str, torch.Tensor]       # layer → H_ik (n, len(classes))
    layer_mean: dict[str, float]             # layer → mean_i H_i
    classes: list[int]                       # the classes present (columns of per_class)
    missing_classes: list[int]               # classes with no sample: not in the sums
    samples_per_class: torch.Tensor          # (num_classes,)
    silent_layers: list[str] = field(default_factory=list)  # hooked modules that never ran


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """−p log2 p − (1 − p) log2(1 − p), for p in (0, 1)."""
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


class _Counter:
    """Accumulates, per class, how often each neuron's output is > 0 and out of how many samples."""

    def __init__(self, channel_dim: int, num_classes: int, mode: str) -> None:
        self.channel_dim = channel_dim
        self.num_classes, self.mode = num_classes, mode
        self.onehot: torch.Tensor | None = None
        self.positive: torch.Tensor | None = None   # (K, n)
        self.total = torch.zeros(num_classes, dtype=torch.float64)  # samples of each class seen

    def __call__(self, module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor) or self.onehot is None:
            return
        b = output.shape[0]
        active = (output.detach() > 0)
        if self.mode == "element":
            states, positions = active.reshape(b, -1), 1
        else:
            per_neuron = active.movedim(self.channel_dim, -1)
            positions = per_neuron[0].numel() // per_neuron.shape[-1]
            states = per_neuron.reshape(b, -1, per_neuron.shape[-1]).sum(1)
        counts = (self.onehot.T @ states.to(self.onehot.dtype)).double().cpu()
        if self.positive is None:
            self.positive = counts
        elif self.positive.shape != counts.shape:
            raise ValueError(f"layer output changed size between calls ({tuple(self.positive.shape)} "
                             f"vs {tuple(counts.shape)}); use conv_neurons='channel'")
        else:
            self.positive += counts
        self.total += self.onehot.sum(0).double().cpu() * positions


@torch.no_grad()
def psp_entropy(model: nn.Module, loader: Iterable, num_classes: int,
                transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                layers: dict[str, nn.Module] | None = None,
                conv_neurons: Literal["channel", "element"] = "channel",
                max_batches: int | None = None, spec: ArchSpec | None = None) -> PSPEntropy:
    """PSP-entropy of every neuron of ``layers`` (default: the spec's
    :meth:`~prunelens.models.ArchSpec.neuron_layers`, its Conv/Linear layers) over ``loader``.

    ``loader`` yields ``(images, labels, …)``; ``transform`` maps images to model inputs (e.g.
    ``spec.normalize``). The model is used as it is (call ``model.eval()`` first).
    """
    if conv_neurons not in ("channel", "element"):
        raise ValueError(f"conv_neurons must be 'channel' or 'element', got {conv_neurons!r}")
    spec = spec if spec is not None else spec_for(model, generic=True)
    layers = spec.neuron_layers(model) if layers is None else layers
    counters = {name: _Counter(spec.unit_dim(m), num_classes, conv_neurons) for name, m in layers.items()}
    handles = [m.register_forward_hook(counters[name]) for name, m in layers.items()]
    device = next(model.parameters()).device
    per_class_samples = torch.zeros(num_classes, dtype=torch.float64)
    try:
        for step, batch in enumerate(loader):
            if max_batches is not None and step >= max_batches:
                break
            x, y = batch[0].to(device), torch.as_tensor(batch[1]).to(device)
            onehot = nn.functional.one_hot(y.long(), num_classes).float()
            for counter in counters.values():
                counter.onehot = onehot
            model(transform(x) if transform is not None else x)
            per_class_samples += onehot.sum(0).double().cpu()
    finally:
        for h in handles:
            h.remove()
        for counter in counters.values():
            counter.onehot = None
    present = torch.nonzero(per_class_samples > 0).flatten()
    missing = torch.nonzero(per_class_samples == 0).flatten().tolist()
    if missing:
        warnings.warn(f"PSP-entropy: classes {missing} have no sample in the data and are left out "
                      "of the sum over classes", stacklevel=2)
    out = PSPEntropy({}, {}, {}, present.tolist(), missing, per_class_samples)
    for name, counter in counters.items():
        if counter.positive is None:
            out.silent_layers.append(name)
            continue
        p = (counter.positive[present] / counter.total[present].unsqueeze(1)).clamp(CLAMP, 1 - CLAMP)
        h_ik = binary_entropy(p).T.contiguous()            # (n, K_present)
        out.per_class[name] = h_ik
        out.per_neuron[name] = h_ik.sum(1)
        out.layer_mean[name] = float(out.per_neuron[name].mean())
    return out
