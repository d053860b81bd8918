"""Decision mappings: a model's outputs → one of a benchmark's categories.

Model-vs-human's rule for a 1000-class ImageNet model (``ImageNetProbabilitiesTo16ClassesMapping``,
Geirhos et al. 2018/2021): softmax over the 1000 classes, then the *mean* probability over each
entry-level category's ImageNet classes, then the top category. The same rule, with other groups
of classes, maps any label set to any categories; the identity groups (one class per category)
decide by the model's top class.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from importlib import resources

import torch

from prunelens.data.model_vs_human import CATEGORIES
from prunelens.errors import ConfigError

IMAGENET_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def _imagenet16() -> dict[str, tuple[int, ...]]:
    path = resources.files("prunelens.alignment") / "human_data" / "imagenet16_indices.json"
    raw = json.loads(path.read_text())
    return {c: tuple(int(i) for i in raw[c]) for c in CATEGORIES}


def imagenet16_indices() -> dict[str, list[int]]:
    """ImageNet-1k class indices of each of the 16 categories (model-vs-human, 207 indices)."""
    return {c: list(v) for c, v in _imagenet16().items()}


class DecisionMapping:
    """softmax → mean probability over each category's classes → top category.

    ``categories[k]`` is made of the model's output classes ``groups[k]``. Calling the mapping on
    logits (B, num_outputs) gives category indices (B,); :meth:`probabilities` gives the
    aggregated (B, K) values it decides on.
    """

    def __init__(self, categories: Sequence[str], groups: Sequence[Sequence[int]],
                 num_outputs: int) -> None:
        if len(categories) != len(groups) or not categories:
            raise ValueError("need one non-empty group of classes per category")
        weights = torch.zeros(len(categories), num_outputs)
        for k, group in enumerate(groups):
            idx = torch.as_tensor(list(group), dtype=torch.long)
            if idx.numel() == 0 or idx.min() < 0 or idx.max() >= num_outputs:
                raise ValueError(f"category '{categories[k]}': classes {list(group)} not in 0..{num_outputs - 1}")
            weights[k, idx] = 1.0 / idx.numel()
        self.categories = list(categories)
        self.groups = [list(g) for g in groups]
        self.num_outputs = num_outputs
        self.weights = weights  # (K, num_outputs): row k averages category k's classes

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != self.num_outputs:
            raise ConfigError(f"the decision mapping expects {self.num_outputs} model outputs, the model "
                              f"gives {logits.shape[-1]}; give a decision mapping that fits the model")
        probs = torch.softmax(logits.float(), dim=-1)
        return probs @ self.weights.to(probs.device).T

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.probabilities(logits).argmax(dim=-1)

    def class_to_category(self) -> torch.Tensor:
        """For each model class, the index of the category that holds it (-1: none)."""
        out = torch.full((self.num_outputs,), -1, dtype=torch.long)
        for k, group in enumerate(self.groups):
            out[group] = k
        return out

    @classmethod
    def imagenet16(cls) -> DecisionMapping:
        """Model-vs-human's 1000-class ImageNet → 16 entry-level categories rule."""
        table = _imagenet16()
        return cls(list(table), list(table.values()), IMAGENET_CLASSES)

    @classmethod
    def identity(cls, class_names: Sequence[str]) -> DecisionMapping:
        """Each class is its own category, named by its class name."""
        return cls(list(class_names), [[i] for i in range(len(class_names))], len(class_names))

    @classmethod
    def from_groups(cls, groups: Mapping[str, Sequence[str | int]], class_names: Sequence[str],
                    key: str = "decision_mapping") -> DecisionMapping:
        """Categories given as ``{category: [class name or index, …]}`` (e.g. from a config)."""
        index = {name: i for i, name in enumerate(class_names)}
        resolved = []
        for category, members in groups.items():
            ids = []
            for m in members:
                if isinstance(m, int) and not isinstance(m, bool) and 0 <= m < len(class_names):
                    ids.append(m)
                elif isinstance(m, str) and m in index:
                    ids.append(index[m])
                else:
                    raise ConfigError(f"{key}.{category}: {m!r} is neither a class name nor a class "
                                      f"index of the model (0..{len(class_names) - 1}; names: "
                                      f"{', '.join(class_names[:12])}{' …' if len(class_names) > 12 else ''})")
            if not ids:
                raise ConfigError(f"{key}.{category}: list at least one class of the model")
            resolved.append(ids)
        if not resolved:
            raise ConfigError(f"{key}: give at least one category")
        return cls(list(groups), resolved, len(class_names))
