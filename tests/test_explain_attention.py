"""Attention probabilities recomputed from MHA inputs vs nn.MultiheadAttention(need_weights=True),
class-token maps and attention rollout (hand-worked)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _explain_helpers import images, small
from torch import nn

from prunelens.errors import ModelError
from prunelens.explain import attention_map, attention_probabilities, attention_rollout
from prunelens.explain.attention import all_attention, rollout
from prunelens.models import ArchSpec, spec_for


def _reference_weights(module, query, key):
    with torch.no_grad():
        return module(query, key, key, need_weights=True, average_attn_weights=False)[1]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 6])
def test_probabilities_equal_mha_need_weights(batch_first, kdim):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim).double().eval()
    q = torch.randn(3, 5, 8, dtype=torch.float64)
    k = torch.randn(3, 7, kdim or 8, dtype=torch.float64)
    if not batch_first:
        q, k = q.transpose(0, 1), k.transpose(0, 1)
    ours = attention_probabilities(mha, q, k)
    assert ours.shape == (3, 2, 5, 7)
    torch.testing.assert_close(ours, _reference_weights(mha, q, k), rtol=1e-12, atol=1e-14)


def test_vit_attention_of_every_layer_equals_mha_weights():
    model, x = small("small_vit"), images()
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0])))
             for m in spec_for(model).attention_modules(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    ours = all_attention(model, x)
    assert len(ours) == len(inputs) == 2
    for probs, (module, tokens) in zip(ours, inputs):
        torch.testing.assert_close(probs, _reference_weights(module, tokens, tokens), rtol=1e-12, atol=1e-14)


def test_attention_map_is_class_token_row_over_patch_grid():
    model, x = small("small_vit"), images()
    last = all_attention(model, x)[-1]                      # (B, heads, 17, 17): CLS + 4x4 patches
    row = last.mean(1)[:, 0, 1:].reshape(3, 1, 4, 4)        # patch tokens are row-major
    expected = F.interpolate(row, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(attention_map(model, x), expected)
    torch.testing.assert_close(attention_map(model, x, upsample=False), row[:, 0])


def test_rollout_hand_worked_two_layers():
    a1 = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]], dtype=torch.float64).unsqueeze(1)
    a2 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]], dtype=torch.float64).unsqueeze(1)
    # Ã = 0.5 A + 0.5 I;  rollout = Ã2 Ã1
    t1 = torch.tensor([[0.75, 0.25], [0.125, 0.875]], dtype=torch.float64)
    t2 = torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=torch.float64)
    torch.testing.assert_close(rollout([a1, a2])[0], t2 @ t1)


def test_rollout_of_vit_rows_are_distributions():
    model, x = small("small_vit"), images()
    joint = rollout(all_attention(model, x))
    torch.testing.assert_close(joint.sum(-1), torch.ones(3, 17, dtype=torch.float64))
    maps = attention_rollout(model, x, upsample=False)
    torch.testing.assert_close(maps, joint[:, 0, 1:].reshape(3, 4, 4))
    assert float(maps.min()) > 0


def test_models_without_attention_are_refused():
    with pytest.raises(ModelError, match="no attention over a class token"):
        attention_map(small("small_resnet"), images())


class _ClassTokenSpec(ArchSpec):
    """A family whose attention modules attend over a class token (like ViT's)."""

    def class_token_attention(self, model):
        return self.attention_modules(model)


def test_attention_masks_are_refused():
    mha = nn.MultiheadAttention(4, 1, batch_first=True)

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            t = x.flatten(2).transpose(1, 2)
            return self.attn(t, t, t, attn_mask=torch.zeros(t.shape[1], t.shape[1]))[0]

    with pytest.raises(ModelError, match="masks"):
        all_attention(Masked(), torch.randn(1, 4, 2, 2), spec=_ClassTokenSpec())
