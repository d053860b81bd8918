"""Penultimate features: each spec's direct computation equals the classifier's input seen by a hook."""
from __future__ import annotations

import pytest
import torch

from prunelens._compat import torchvision
from prunelens.models import create_model, spec_for
from prunelens.models.spec import ArchSpec


def tiny_swin():
    tvm = torchvision().models
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2
    return tvm.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                               window_size=[4, 4], num_classes=5, block=SwinTransformerBlockV2,
                               downsample_layer=PatchMergingV2)


MODELS = {
    "small_resnet": (lambda: create_model("small_resnet", 5, widths=[8, 16]), (3, 32, 32), 16),
    "resnet18": (lambda: create_model("resnet18", 5), (3, 64, 64), 512),
    "small_vit": (lambda: create_model("small_vit", 5, image_size=32, patch_size=8, num_layers=2,
                                       num_heads=2, hidden_dim=16, mlp_dim=32), (3, 32, 32), 16),
    "swin": (tiny_swin, (3, 32, 32), 32),
    "fcn": (lambda: create_model("fcn", 5, input_shape=(3, 8, 8), widths=[12, 7]), (3, 8, 8), 7),
    "lenet5": (lambda: create_model("lenet5", 5, in_channels=1, input_size=28), (1, 28, 28), 84),
}


def classifier_input(model, x):
    """The reference: what the classifier module receives in the model's own forward."""
    spec = spec_for(model)
    module = model.get_submodule(spec.classifier(model).rsplit(".", 1)[0])
    seen = []
    handle = module.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].detach()))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[-1].flatten(1)


@pytest.mark.parametrize("name", list(MODELS))
def test_penultimate_features_are_the_classifier_input(name):
    build, shape, dim = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.rand(3, *shape)
    with torch.no_grad():
        got = spec_for(model).penultimate_features(model, x)
        generic = ArchSpec.penultimate_features(spec_for(model), model, x)  # the hook-based default
    want = classifier_input(model, x)
    assert got.shape == (3, dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(generic, want, rtol=1e-5, atol=1e-6)


def test_vit_features_at_another_size_match_torchvision_rebuilt_at_that_size():
    torch.manual_seed(0)
    kw = dict(patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    model = create_model("small_vit", 5, image_size=32, **kw).eval()
    bigger = create_model("small_vit", 5, image_size=48, **kw).eval()
    state = model.state_dict()
    tv = torchvision().models.vision_transformer
    state["encoder.pos_embedding"] = tv.interpolate_embeddings(48, 8, state, "bicubic")["encoder.pos_embedding"]
    bigger.load_state_dict(state)
    x = torch.rand(2, 3, 48, 48)  # not the model's own size: interpolated positions
    with torch.no_grad():
        got = spec_for(model).penultimate_features(model, x)
    torch.testing.assert_close(got, classifier_input(bigger, x), atol=1e-5, rtol=1e-5)
