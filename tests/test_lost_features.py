"""LOST patch features per architecture, each checked against an independent computation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prunelens._compat import torchvision
from prunelens.discovery.features import patch_features
from prunelens.models.spec import interpolate_pos_embedding
from prunelens.errors import ModelError
from prunelens.models import create_model, spec_for


def _hooked_output(model, module, x):
    out = {}
    handle = module.register_forward_hook(lambda m, i, o: out.update(v=o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return out["v"]


def _hooked_input(model, module, x):
    out = {}
    handle = module.register_forward_pre_hook(lambda m, args: out.update(v=args[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return out["v"]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return create_model("small_resnet", 5).eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_model("small_vit", 5, image_size=32, patch_size=8, num_layers=2, hidden_dim=32,
                        mlp_dim=64).eval()


def test_cnn_features_are_the_last_stage_on_the_zero_padded_normalised_image(resnet):
    spec = spec_for(resnet)
    assert spec.stride(resnet) == 8
    images = torch.rand(2, 3, 30, 21)
    out = patch_features(resnet, images, layernorm="none")
    assert out.grid_hw == (4, 3) and out.padded_hw == (32, 24) and out.stride == (8.0, 8.0)
    padded = torch.zeros(2, 3, 32, 24)
    padded[:, :, :30, :21] = spec.normalize(images)   # zeros *after* normalisation, as LOST pads
    expected = _hooked_output(resnet, resnet.layer3, padded)
    torch.testing.assert_close(out.features, expected.flatten(2).transpose(1, 2))


def test_cnn_layernorm_modes(resnet):
    images = torch.rand(2, 3, 32, 32)
    raw = patch_features(resnet, images, layernorm="none").features
    # the reference: nn.LayerNorm(feats.size()[1:]) (fresh: unit weight, zero bias) over patches x channels
    reference_ln = torch.nn.LayerNorm(raw.shape[1:])
    torch.testing.assert_close(patch_features(resnet, images).features, reference_ln(raw).detach())
    torch.testing.assert_close(patch_features(resnet, images, layernorm="map").features,
                               reference_ln(raw).detach())
    per_patch = patch_features(resnet, images, layernorm="channels").features
    torch.testing.assert_close(per_patch.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)


def test_images_of_one_padded_size_batch_like_one_at_a_time(resnet):
    a, b = torch.rand(3, 30, 21), torch.rand(3, 27, 24)
    batch = torch.zeros(2, 3, 30, 24)
    batch[0, :, :30, :21], batch[1, :, :27, :24] = a, b
    together = patch_features(resnet, batch, image_hw=torch.tensor([[30, 21], [27, 24]]))
    for j, image in enumerate((a, b)):
        alone = patch_features(resnet, image.unsqueeze(0))
        torch.testing.assert_close(together.features[j], alone.features[0])


def _qkv(attention, x):
    return F.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, -1)


def test_vit_keys_reproduce_the_attention_weights(vit):
    # oracle: the attention module's own weights = softmax(q_h k_hᵀ / sqrt(d_h)) per head
    spec = spec_for(vit)
    attention = vit.encoder.layers[-1].self_attention
    images = torch.rand(2, 3, 32, 32)
    keys = patch_features(vit, images).features                       # (2, 16, 32), CLS dropped
    x = _hooked_input(vit, vit.encoder.layers[-1].ln_1, spec.normalize(images))
    x = vit.encoder.layers[-1].ln_1(x)
    q, _, _ = _qkv(attention, x)
    with torch.no_grad():
        _, weights = attention(x, x, x, need_weights=True, average_attn_weights=False)
    heads, dh = attention.num_heads, attention.head_dim
    assert keys.shape == (2, 16, heads * dh)
    qh = q[:, 1:].reshape(2, 16, heads, dh).transpose(1, 2)
    kh = keys.reshape(2, 16, heads, dh).transpose(1, 2)
    ours = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(dh), -1)
    # restricted to patch tokens, the module's weights renormalise to ours
    theirs = weights[:, :, 1:, 1:] / weights[:, :, 1:, 1:].sum(-1, keepdim=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_vit_keys_come_from_the_evaluated_checkpoint(vit):
    pruned = create_model("small_vit", 5, image_size=32, patch_size=8, num_layers=2, hidden_dim=32,
                          mlp_dim=64).eval()
    pruned.load_state_dict(vit.state_dict())
    attention = pruned.encoder.layers[-1].self_attention
    e = attention.embed_dim
    with torch.no_grad():
        attention.in_proj_weight[e:2 * e] = 0     # every key weight pruned: keys = key bias
        attention.in_proj_bias[e:2 * e] = torch.arange(e, dtype=torch.float32)
    keys = patch_features(pruned, torch.rand(1, 3, 32, 32)).features
    torch.testing.assert_close(keys, torch.arange(e, dtype=torch.float32).expand(1, 16, e))


def test_vit_position_embeddings_interpolate_as_torchvision():
    vision_transformer = torchvision().models.vision_transformer
    pos = torch.randn(1, 1 + 16, 8)
    ours = interpolate_pos_embedding(pos, (6, 6))
    theirs = vision_transformer.interpolate_embeddings(48, 8, {"encoder.pos_embedding": pos})
    torch.testing.assert_close(ours, theirs["encoder.pos_embedding"])
    assert interpolate_pos_embedding(pos, (4, 4)) is pos
    assert interpolate_pos_embedding(pos, (3, 5)).shape == (1, 16, 8)


def test_vit_at_another_size_matches_torchvision_resized_model(vit):
    # oracle: torchvision's own ViT built for 48 px with interpolate_embeddings, run by its forward
    tv = torchvision().models
    big = create_model("small_vit", 5, image_size=48, patch_size=8, num_layers=2, hidden_dim=32,
                       mlp_dim=64).eval()
    big.load_state_dict(tv.vision_transformer.interpolate_embeddings(48, 8, vit.state_dict()))
    images = torch.rand(2, 3, 48, 48)
    ours = patch_features(vit, images).features
    attention = big.encoder.layers[-1].self_attention
    x = _hooked_input(big, attention, spec_for(big).normalize(images))
    _, k, _ = _qkv(attention, x)
    torch.testing.assert_close(ours, k[:, 1:])
    # non-square, padded: a 40x52 image runs on a 5x7 grid
    out = patch_features(vit, torch.rand(1, 3, 40, 52))
    assert out.grid_hw == (5, 7) and out.features.shape == (1, 35, 32)
    assert torch.isfinite(out.features).all()


def test_swin_features_are_the_last_stage_tokens():
    tv = torchvision().models
    torch.manual_seed(0)
    swin = tv.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                              window_size=[4, 4], num_classes=5,
                              block=tv.swin_transformer.SwinTransformerBlockV2,
                              downsample_layer=tv.swin_transformer.PatchMergingV2).eval()
    spec = spec_for(swin)
    assert spec.stride(swin) == 8
    images = torch.rand(2, 3, 40, 32)
    out = patch_features(swin, images)
    assert out.grid_hw == (5, 4)
    tokens = _hooked_output(swin, swin.features[-1], spec.normalize(images))   # (B, h, w, C)
    torch.testing.assert_close(out.features, tokens.reshape(2, 20, -1))


def test_models_without_a_feature_map_are_refused():
    with pytest.raises(ModelError, match="spatial feature map"):
        patch_features(create_model("fcn", 3, input_shape=(3, 8, 8), widths=(4,)), torch.rand(1, 3, 8, 8))
