"""Analyses of the sifting and sharp-minima papers: connectivity & locality of masks
(Pellegrini & Biroli 2022), PSP-entropy and sharpness (Tartaglione, Bragagnolo & Grangetto 2020).

The suites ``connectivity``, ``psp`` and ``sharpness`` live in :mod:`prunelens.analysis.suites`;
the one-shot vs gradual runner in :mod:`prunelens.analysis.schedules`.
"""
from prunelens.analysis.connectivity import (Locality, ablation_correct, alive_units_fraction,
                                             connections_per_input, connections_per_unit,
                                             effective_mask, locality, pair_histograms,
                                             random_baseline, random_masks_like, shift_similarity,
                                             unit_masks)
from prunelens.analysis.psp_entropy import PSPEntropy, psp_entropy
from prunelens.analysis.sharpness import TopEigenvalue, hessian_top_eigenvalue, loss_increase

__all__ = ["Locality", "PSPEntropy", "TopEigenvalue", "ablation_correct", "alive_units_fraction",
           "connections_per_input", "connections_per_unit", "effective_mask",
           "hessian_top_eigenvalue", "locality", "loss_increase", "pair_histograms", "psp_entropy",
           "random_baseline", "random_masks_like", "shift_similarity", "unit_masks"]
