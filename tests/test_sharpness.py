"""Sharpness (prunelens.analysis.sharpness) and the ``sharpness`` suite.

Oracles: a quadratic model (least squares) whose Hessian 2·XᵀX/n is known in closed form, the full
Hessian of a tiny MLP from torch.autograd.functional.hessian, and the exact expectation of the loss
increase of a quadratic at its minimum under relative Gaussian noise.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelens.analysis.sharpness import hessian_top_eigenvalue, loss_increase


def mse(out, y):
    return (out.squeeze(1) - y).square().mean()


def quadratic_problem(d=6, n=40, seed=0):
    """Least squares with a well separated spectrum; returns model, X, y, the Hessian."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    singular = torch.linspace(3.0, 0.5, d, dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    x = (u * singular * (n ** 0.5)) @ q.T  # XᵀX/n = Q diag(s²) Qᵀ
    model = nn.Linear(d, 1, bias=False).double()
    w_true = torch.randn(d, generator=g, dtype=torch.float64)
    y = x @ w_true
    with torch.no_grad():
        model.weight.copy_(w_true.unsqueeze(0))  # at the minimum: loss 0, gradient 0
    return model, x, y, 2 * x.T @ x / n


def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic():
    model, x, y, hessian = quadratic_problem()
    top = hessian_top_eigenvalue(model, (x, y), loss_fn=mse, max_iter=500, tol=1e-10)
    assert top.converged
    assert top.eigenvalue == pytest.approx(float(torch.linalg.eigvalsh(hessian)[-1]), rel=1e-6)


def test_masked_hessian_is_the_unpruned_block():
    model, x, y, hessian = quadratic_problem(seed=1)
    keep = torch.tensor([True, False, True, True, False, True])
    masks = {"weight": keep.unsqueeze(0)}
    top = hessian_top_eigenvalue(model, (x, y), masks=masks, loss_fn=mse, max_iter=500, tol=1e-10)
    block = hessian[keep][:, keep]
    assert top.eigenvalue == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-6)
    assert top.eigenvalue < float(torch.linalg.eigvalsh(hessian)[-1])


def test_top_eigenvalue_of_a_tiny_mlp_matches_the_full_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double().eval()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 2, (16,))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss_of(flat):
        params = dict(zip(names, [t.view(s) for t, s in zip(flat.split(sizes), shapes)]))
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat))
    expected = eig[eig.abs().argmax()]
    top = hessian_top_eigenvalue(model, (x, y), max_iter=2000, tol=1e-12)
    assert top.eigenvalue == pytest.approx(float(expected), rel=1e-4)


def test_hessian_runs_through_attention():
    # fused attention kernels have no double backward; the eigenvalue must still come out
    from prunelens.models import create_model, spec_for

    torch.manual_seed(0)
    model = create_model("small_vit", 3, image_size=16, patch_size=8, num_layers=1, num_heads=2,
                         hidden_dim=8, mlp_dim=8).eval()
    params = list(spec_for(model).prunable(model))
    top = hessian_top_eigenvalue(model, (torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])),
                                 params=params, max_iter=3)
    assert torch.isfinite(torch.tensor(top.eigenvalue)) and top.iterations == 3


def test_relative_noise_respects_masks_and_leaves_the_model_alone():
    seen = []

    class Recorder(nn.Linear):
        def forward(self, x):
            seen.append(self.weight.detach().clone())
            return super().forward(x)

    torch.manual_seed(0)
    model = nn.Sequential(Recorder(50, 40)).eval()
    mask = torch.rand(40, 50) < 0.5
    before = model[0].weight.detach().clone()
    x, y = torch.randn(8, 50), torch.randint(0, 40, (8,))
    _, inc = loss_increase(model, [(x, y)], sigma=0.1, n_draws=3, masks={"0.weight": mask})
    assert len(inc) == 3 and torch.equal(model[0].weight, before)
    for w in seen[1:]:  # the first call is the unperturbed loss
        assert (w[~mask] == 0).all()
        ratio = w[mask] / before[mask] - 1
        assert ratio.std().item() == pytest.approx(0.1, rel=0.1)  # relative size sigma
    _, zero = loss_increase(model, [(x, y)], sigma=0.0, n_draws=2, masks={"0.weight": mask})
    assert torch.equal(zero, torch.zeros(2, dtype=torch.float64))


def test_loss_increase_of_a_quadratic_matches_its_expectation():
    # at the minimum L(w + δ) - L(w) = δᵀ(XᵀX/n)δ; with δ = σ w ε: E = σ² Σ_i w_i² (XᵀX/n)_ii
    model, x, y, hessian = quadratic_problem(seed=2)
    sigma = 0.05
    w = model.weight.detach().squeeze(0)
    expected = sigma ** 2 * float((w.square() * torch.diagonal(hessian) / 2).sum())
    base, inc = loss_increase(model, [(x, y)], sigma=sigma, n_draws=4000, loss_fn=mse, seed=3)
    assert base == pytest.approx(0.0, abs=1e-20)
    assert float(inc.mean()) == pytest.approx(expected, rel=0.06)
    assert (inc >= -1e-12).all()  # a minimum: no draw goes down


def test_sharpness_suite_records(tmp_path):
    import json

    from prunelens.config import DataConfig
    from prunelens.data.provider import RunData
    from prunelens.suite import LevelContext, get_suite
    from prunelens.models import create_model, spec_for

    torch.manual_seed(0)
    model = create_model("fcn", 4, input_shape=(3, 16, 16), widths=(16,)).eval()
    spec = spec_for(model)
    masks = {n: torch.rand_like(p) < 0.5 for n, p in spec.prunable(model).items()}
    with torch.no_grad():
        for n, p in spec.prunable(model).items():
            p.mul_(masks[n])
    data = RunData(DataConfig(name="synthetic", image_size=16, num_classes=4, n_train=24, n_val=8,
                              n_test=8), seed=0)
    suite = get_suite("sharpness")
    opts = suite.Options(n_images=16, hessian_images=8, sigmas=[0.01, 0.1], n_draws=3)
    ctx = LevelContext(pool=None, config=None, options=opts,
                       device=torch.device("cpu"), data=data, spec=spec,
                       artifacts=tmp_path / "sharpness", batch_size=8, level=None, model=model,
                       masks=masks, level_artifacts=tmp_path / "sharpness" / "level_00")
    records = list(suite().evaluate_level(ctx))
    inc = {s: [r.value for r in records if r.method == f"sigma={s}"] for s in ("0.01", "0.1")}
    assert len(inc["0.01"]) == 3 and len(inc["0.1"]) == 3
    sample = data.sample("train", 16)  # the suite's images: evenly spaced over the split
    x = torch.stack([sample[i][0] for i in range(16)])
    y = torch.tensor([sample[i][1] for i in range(16)])
    _, direct = loss_increase(model, [(x[:8], y[:8]), (x[8:], y[8:])], 0.1,
                              3, masks=masks, params=list(masks), transform=spec.normalize)
    assert inc["0.1"] == pytest.approx(direct.tolist(), rel=1e-5, abs=1e-7)
    eig = [r.value for r in records if r.metric == "hessian_top_eigenvalue"]
    assert len(eig) == 1
    saved = json.loads((ctx.level_artifacts / "hessian.json").read_text())
    assert saved["eigenvalue"] == eig[0] and saved["images"] == 8
