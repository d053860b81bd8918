"""Decision mappings on hand-made logits, against a direct numpy computation of the rule."""
import json
from importlib import resources

import numpy as np
import pytest
import torch
from scipy.special import softmax

from prunelens.alignment import DecisionMapping, imagenet16_indices
from prunelens.data.model_vs_human import CATEGORIES
from prunelens.errors import ConfigError

TABLE = json.loads((resources.files("prunelens.alignment") / "human_data" /
                    "imagenet16_indices.json").read_text())


def _oracle(logits):
    """model-vs-human: softmax, mean probability per category's indices, top category."""
    p = softmax(logits, axis=-1)
    scores = np.stack([p[:, TABLE[c]].mean(axis=1) for c in CATEGORIES], axis=1)
    return [CATEGORIES[k] for k in scores.argmax(1)]


def test_imagenet16_table():
    idx = imagenet16_indices()
    assert list(idx) == list(CATEGORIES)
    flat = [i for v in idx.values() for i in v]
    assert len(flat) == 207 and len(set(flat)) == 207 and max(flat) < 1000


def test_imagenet16_decides_by_mean_probability_per_category():
    logits = np.zeros((4, 1000))
    # 0: knife (1 class, logit 3) beats dog (many classes at 2.5): the mean, not the sum, decides
    logits[0, TABLE["dog"]] = 2.5
    logits[0, 499] = 3.0
    # 1: the top class (a bird) loses to airplane: bird's mean is diluted by its 48 other classes
    logits[1, TABLE["bird"][0]] = 4.0
    logits[1, 404] = 3.5
    # 2: the top class (tench, 0) is in no category and is ignored
    logits[2, 0] = 9.0
    logits[2, TABLE["bear"]] = 2.0
    logits[2, 404] = 1.9
    # 3: random logits
    logits[3] = np.random.default_rng(0).normal(size=1000) * 3
    mapping = DecisionMapping.imagenet16()
    got = [mapping.categories[k] for k in mapping(torch.tensor(logits)).tolist()]
    assert got == _oracle(logits)
    assert got[:3] == ["knife", "airplane", "bear"]
    probs = mapping.probabilities(torch.tensor(logits))
    np.testing.assert_allclose(probs[1, CATEGORIES.index("bird")].item(),
                               softmax(logits[1])[TABLE["bird"]].mean(), rtol=1e-6)


def test_identity_mapping_is_the_top_class():
    logits = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))
    names = [f"class{i}" for i in range(10)]
    mapping = DecisionMapping.identity(names)
    assert torch.equal(mapping(logits), logits.argmax(1))
    assert mapping.categories == names


def test_groups_by_name_or_index():
    names = ["circle", "square", "ring", "star"]
    mapping = DecisionMapping.from_groups({"round": ["circle", 2], "angular": ["square"]}, names)
    # row 0: star is in no category; round (e^0 + e^.9)/2 = 1.73 < angular e^1 = 2.72
    # row 1: round (e^3 + e^-3)/2 = 10.04 > angular e^0 = 1
    logits = torch.tensor([[0.0, 1.0, 0.9, 9.0], [3.0, 0.0, -3.0, 0.0]])
    p = torch.softmax(logits, 1)
    expected = torch.stack([(p[:, 0] + p[:, 2]) / 2, p[:, 1]], 1).argmax(1)
    assert torch.equal(mapping(logits), expected) and mapping(logits).tolist() == [1, 0]
    assert mapping.class_to_category().tolist() == [0, 1, 0, -1]
    with pytest.raises(ConfigError, match="decision_mapping.round: 'oval'"):
        DecisionMapping.from_groups({"round": ["oval"]}, names)
    with pytest.raises(ConfigError, match="at least one class"):
        DecisionMapping.from_groups({"round": []}, names)


def test_wrong_number_of_outputs_is_a_config_error():
    with pytest.raises(ConfigError, match="1000 model outputs"):
        DecisionMapping.imagenet16()(torch.zeros(2, 10))
