"""A transcription of Tartaglione et al.'s first-order PSP-entropy, for the tests of
prunelens.analysis.psp_entropy. From EIDOSLAB/PSP-entropy @ 0ab88b57bc69780b3ba27cbd2d17940811861adf,
src/PSPentropy.py (the version ``how_to_use.ipynb`` of that commit calls):

* lines 4-16 — a forward hook on every top-level module (``model._modules.items()``, line 49)
  stores the module's output: for their LeNet5 the outputs of conv1, conv2, fc1 and fc2, before the
  functional ReLU, i.e. the post-synaptic potentials;
* lines 25-27 — one row per element of a layer's output (``np.prod(output.shape[1:])``): every
  (channel, y, x) of a Conv layer is a neuron;
* lines 32-33 — M[k]: the images of class k;
* lines 37-39 — P[i, k] (N[i, k]): how many images of class k have element i > 0 (<= 0);
* lines 41-42 — P / M and N / M, each clamped to [1e-4, 0.9999];
* line 44 — H_ik = −(P log2 P + N log2 N);
* line 45 — H_i = Σ_k H_ik.

The same counting is in the later retyped commit 467c7947b18c7b1e2fcd124752c4888687ac0171
(src/PSPentropy.py lines 36-38: ``(output > 0.0).reshape(len(targets), -1)``), which leaves out the
last hooked module (line 37) and averages H_i over every neuron of the other layers (lines 42-53).

Only the loop order and the device handling are changed; the arithmetic is the authors'.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class ReferenceLeNet5(nn.Module):
    """The LeNet5 of how_to_use.ipynb (cell 2): conv 20, conv 50, fc 500, fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, 2)
        x = x.view(-1, 4 * 4 * 50)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


class Hook:  # src/PSPentropy.py:4-16
    def __init__(self, module):
        self.hook = module[1].register_forward_hook(self.hook_fn)
        self.name = module[0]

    def hook_fn(self, module, input, output):
        self.output = output

    def close(self):
        self.hook.remove()


def compute_entropy_1st(modelx, train_loader, hookF, classes):  # src/PSPentropy.py:18-46
    H = [None] * len(hookF)
    H_classwise = [None] * len(hookF)
    P = [None] * len(hookF)
    N = [None] * len(hookF)
    M = torch.zeros(classes)
    for idx in range(len(hookF)):
        H_classwise[idx] = torch.zeros((np.prod(hookF[idx].output.shape[1:]), classes))
        P[idx] = torch.zeros((np.prod(hookF[idx].output.shape[1:]), classes))
        N[idx] = torch.zeros((np.prod(hookF[idx].output.shape[1:]), classes))
    with torch.no_grad():
        for xb, yb in train_loader:
            for this_idx_1 in range(classes):
                M[this_idx_1] += torch.sum(yb == this_idx_1).item()
            modelx(xb)
            for idx in range(len(hookF)):
                for this_idx_1 in range(classes):
                    this_yb_1 = ((yb == this_idx_1).type(torch.float)).unsqueeze(dim=1)
                    P[idx][:, this_idx_1] += torch.sum(
                        (hookF[idx].output.view(this_yb_1.shape[0], -1) > 0) * this_yb_1, dim=0)
                    N[idx][:, this_idx_1] += torch.sum(
                        (hookF[idx].output.view(this_yb_1.shape[0], -1) <= 0) * this_yb_1, dim=0)
    for idx in range(len(hookF)):
        P[idx] = torch.clamp(P[idx] / M.unsqueeze(dim=0), 0.0001, 0.9999)
        N[idx] = torch.clamp(N[idx] / M.unsqueeze(dim=0), 0.0001, 0.9999)
        for this_idx_1 in range(classes):
            H_classwise[idx][:, this_idx_1] -= (P[idx][:, this_idx_1] * torch.log2(P[idx][:, this_idx_1])
                                                + (N[idx][:, this_idx_1] * torch.log2(N[idx][:, this_idx_1])))
        H[idx] = torch.sum(H_classwise[idx], dim=1)
    return H, H_classwise


def compute_PSPentropy(model, dataset, classes=10, modules=None):  # src/PSPentropy.py:48-60
    """``modules``: the (name, module) pairs to hook; default the authors' ``model._modules.items()``."""
    modules = list(model._modules.items()) if modules is None else list(modules)
    hookF = [Hook(layer) for layer in modules]
    for inputs, _targets in dataset:  # one batch to learn the output sizes (lines 50-53)
        model(inputs)
        break
    H, H_classwise = compute_entropy_1st(model, dataset, hookF, classes)
    for h in hookF:
        h.close()
    return dict(zip([h.name for h in hookF], H)), dict(zip([h.name for h in hookF], H_classwise))
