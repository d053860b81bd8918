"""The model registry, specs and weight loading (never a download, never an unpickled object)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prunelens._compat import torchvision
from prunelens.errors import ModelError
from prunelens.models import create_model, list_models, spec_for


@pytest.mark.parametrize("name,kw,shape,family", [
    ("resnet18", {}, (2, 3, 64, 64), "resnet"),
    ("small_resnet", {}, (2, 3, 64, 64), "resnet"),
    ("small_vit", {"image_size": 32}, (2, 3, 32, 32), "vit"),
    ("fcn", {"input_shape": (3, 8, 8), "widths": (16, 16)}, (2, 3, 8, 8), "fcn"),
    ("lenet5", {"in_channels": 1, "input_size": 28}, (2, 1, 28, 28), "lenet"),
])
def test_models_build_and_their_specs_answer(name, kw, shape, family):
    model = create_model(name, 7, **kw)
    spec = spec_for(model)
    assert spec.family == family
    assert model(spec.normalize(torch.rand(shape))).shape == (2, 7)
    prunable = spec.prunable(model)
    assert all(n.endswith("weight") for n in prunable)
    assert not any("bn" in n or "ln" in n or "norm" in n for n in prunable)
    if spec.has_spatial_features:
        acts = {}
        spec.gradcam_layer(model).register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
        model(torch.rand(shape))
        grid = spec.to_grid(acts["a"], model)
        assert grid.dim() == 4 and grid.shape[0] == 2
        if family in ("resnet", "vit"):
            assert grid.shape[-1] == shape[-1] // spec.stride(model)


def test_large_torchvision_specs_without_running_them():
    vit, swin, r50 = (create_model(n, 10) for n in ("vit_b_32", "swin_v2_t", "resnet50"))
    assert spec_for(vit).stride(vit) == 32 and spec_for(swin).stride(swin) == 32 and spec_for(r50).stride(r50) == 32
    assert "encoder.layers.encoder_layer_11.self_attention.in_proj_weight" in spec_for(vit).prunable(vit)
    assert not any("cpb_mlp" in n for n in spec_for(swin).prunable(swin))
    assert spec_for(swin).attention_parameters(swin)[0].endswith("attn.qkv.weight")
    act = torch.randn(2, 7, 7, 768)
    assert spec_for(swin).to_grid(act, swin).shape == (2, 768, 7, 7)
    assert spec_for(vit).to_grid(torch.randn(2, 50, 768), vit).shape == (2, 768, 7, 7)


def test_vit_forward_at_another_size_matches_torchvision_rebuilt_at_that_size():
    torch.manual_seed(0)
    model = create_model("small_vit", 5, image_size=32, patch_size=8, hidden_dim=32, mlp_dim=64, num_layers=2).eval()
    x = torch.rand(2, 3, 48, 48)
    tv = torchvision().models.vision_transformer
    bigger = create_model("small_vit", 5, image_size=48, patch_size=8, hidden_dim=32, mlp_dim=64, num_layers=2).eval()
    state = model.state_dict()
    state["encoder.pos_embedding"] = tv.interpolate_embeddings(48, 8, state, "bicubic")["encoder.pos_embedding"]
    bigger.load_state_dict(state)
    torch.testing.assert_close(spec_for(model).forward(model, x), bigger(x), atol=1e-5, rtol=1e-5)


def test_weights_from_local_safetensors_and_pth(tmp_path):
    source = create_model("small_resnet", 3)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        loaded = create_model("small_resnet", 3, weights=tmp_path / f)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())


def test_weights_errors_name_the_problem(tmp_path, monkeypatch):
    source = create_model("small_resnet", 3)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match=r"do not fit SmallResNet: wrong shape: fc.bias"):
        create_model("small_resnet", 5, weights=tmp_path / "w.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ModelError, match="cannot read weights file"):
        create_model("small_resnet", 3, weights=tmp_path / "bad.safetensors")

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))
    torch.save({"conv1.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ModelError, match="pickled Python objects besides tensors") as refused:
        create_model("small_resnet", 3, weights=tmp_path / "evil.pth")
    # one line, and never the advice to load it unsafely
    assert "\n" not in str(refused.value) and "weights_only" not in str(refused.value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(ModelError, match="never downloads them: put the file from https://"):
        create_model("resnet18", 1000, weights="IMAGENET1K_V1")
    with pytest.raises(ModelError, match="available: IMAGENET1K_V1"):
        create_model("resnet18", 1000, weights="IMAGENET9K")


def test_cached_torchvision_weights_load_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    entry = torchvision().models.ResNet18_Weights.IMAGENET1K_V1
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    source = create_model("resnet18", 1000)
    torch.save(source.state_dict(), cache / entry.url.rsplit("/", 1)[-1])
    loaded = create_model("resnet18", 1000, weights="ResNet18_Weights.IMAGENET1K_V1")
    assert torch.equal(loaded.fc.weight, source.fc.weight)


def test_unknown_model_lists_the_registry():
    with pytest.raises(ModelError) as err:
        create_model("vgg16", 10)
    assert all(name in str(err.value) for name in list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_builtin_architecture_builds_on_the_meta_device(name):
    """The paper's sparsity count (pruning.store.paper_sparsity) reads layer shapes from a model
    built on the meta device: a builder that computes with tensors there would leave it out."""
    with torch.device("meta"):
        model = create_model(name, 10)
    assert sum(p.numel() for p in model.parameters()) > 0
