"""RQ1 interpretability: attribution methods and localisation metrics, batched, for every architecture.

Methods take normalised images ``x`` (``spec.normalize(x01)``) of shape (B, C, H, W) and explain
each image's predicted class unless a ``target`` is given:

* :func:`gradcam` → (B, H, W); :func:`guided_backprop`, :func:`guided_gradcam` → (B, C, H, W)
* :func:`integrated_gradients` → ``IGResult(attributions, completeness_gap)``
* :func:`attention_map`, :func:`attention_rollout` (vision transformers) → (B, H, W)

Scores: :func:`relevance_mass_accuracy`, :func:`relevance_rank_accuracy` → (B,). The suite
``interpretability`` (``prunelens.explain.suite``) runs them over a pool.
"""
from prunelens.explain.attention import attention_map, attention_probabilities, attention_rollout
from prunelens.explain.gradients import GuidedMode, gradcam, guided_backprop, guided_gradcam
from prunelens.explain.integrated import IGResult, fold_batchnorm, integrated_gradients, quadrature
from prunelens.explain.metrics import (
                                       POOLINGS,
                                       localisation_scores,
                                       pool_heatmaps,
                                       relevance_mass_accuracy,
                                       relevance_rank_accuracy,
)
from prunelens.explain.pipeline import (
                                       ATTRIBUTION_METHODS,
                                       DEFAULT_POOLING,
                                       METHODS,
                                       BatchExplanation,
                                       IGSettings,
                                       applicable_methods,
                                       explain_batch,
)

__all__ = [
    "ATTRIBUTION_METHODS", "DEFAULT_POOLING", "METHODS", "POOLINGS", "BatchExplanation", "GuidedMode", "IGResult", "IGSettings",
    "applicable_methods", "attention_map", "attention_probabilities", "attention_rollout",
    "explain_batch", "fold_batchnorm", "gradcam", "guided_backprop", "guided_gradcam",
    "integrated_gradients", "localisation_scores", "pool_heatmaps", "quadrature",
    "relevance_mass_accuracy", "relevance_rank_accuracy",
]
