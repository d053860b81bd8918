"""The Cassano et al. configs (configs/paper/) select what the paper's code ran: the paper scoring
preset and image count, no stop rule on alive units, and exactly the weights its code pruned."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from prunelens.data.registry import folders_unchecked
from prunelens.models import create_model
from prunelens.pruning.masks import prunable_from_config
from prunelens.suite import load_configs, suite_options

PAPER = Path(__file__).resolve().parents[1] / "src" / "prunelens" / "configs" / "paper"

#: the layer types whose ``weight`` the paper's code pruned, per model: original_train.py
#: prune_model / train.py magnitude_pruning, as confirmed by the ``pruned_layer_types`` that
#: explainations_evaluation_metrics.py load_model (L105-110) uses to load the pruned checkpoints
PAPER_PRUNED_TYPES = {"resnet18": (nn.Conv2d,), "resnet50": (nn.Conv2d, nn.Linear),
                      "vit_b_32": (nn.Conv2d, nn.Linear), "swin_v2_t": (nn.Conv2d, nn.Linear)}


def _config(model: str):
    path = next(PAPER.glob(f"{model}_*.yaml"))
    with folders_unchecked():  # data.root is a placeholder in these files
        config, = load_configs(path)
    return config


def _papers_selection(model: nn.Module, types) -> set[str]:
    """``isinstance(module, t)`` over named_modules, as the authors' loops select layers."""
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, types)}


@pytest.mark.parametrize("model", sorted(PAPER_PRUNED_TYPES))
def test_paper_config_prunes_the_papers_layers(model):
    config = _config(model)
    assert config.prune.min_alive_units == 0  # the paper stops on sparsity alone
    torch.manual_seed(0)
    net = create_model(model, 1000)
    ours = set(prunable_from_config(net, config.prune))
    theirs = _papers_selection(net, PAPER_PRUNED_TYPES[model])
    if model == "swin_v2_t":  # prunelens never prunes Swin V2's position-bias MLP (SwinSpec.never_prune)
        assert theirs - ours == {n for n in theirs if "cpb_mlp" in n} and ours <= theirs
    else:
        assert ours == theirs


@pytest.mark.parametrize("model", sorted(PAPER_PRUNED_TYPES))
def test_paper_config_scores_as_the_paper(model):
    options = suite_options(_config(model), "interpretability")
    assert options.preset == "paper" and options.n_images == 101 and options.voc_split == "trainval"
    assert options.scoring.ig_noise_samples == 2 and options.ig_noise_std == 1.0
    assert options.scoring.rra_ties == "paper" and options.scoring.blank_maps == "score"


def _papers_sparsity(model: nn.Module) -> float:
    """train.py ``compute_sparsity_global``: zeros / numel over every Conv2d and Linear weight."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)


def test_paper_sparsity_count_equals_the_papers_compute_sparsity_global():
    from prunelens.pruning.masks import conv_linear_sparsity, dense_masks, magnitude_masks, mask_sparsity

    config = _config("resnet18")
    torch.manual_seed(0)
    net = create_model("resnet18", 1000)
    params = prunable_from_config(net, config.prune)
    masks = magnitude_masks({n: p.detach() for n, p in params.items()}, dense_masks(params), 0.2)
    with torch.no_grad():
        for name, p in params.items():
            p.mul_(masks[name])
    _, per_layer = mask_sparsity(masks)
    ours = conv_linear_sparsity(net, per_layer)
    assert ours == pytest.approx(_papers_sparsity(net), abs=1e-9)
    # one 20 % round of the conv weights only, over conv + fc weights (research notes §5: 19.12 %)
    assert ours == pytest.approx(round(0.2 * 11_166_912) / (11_166_912 + 512_000), abs=1e-6)
