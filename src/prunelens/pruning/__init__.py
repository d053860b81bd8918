"""Pruning: masks, schedules, the training loop and the pool builder."""
from prunelens.pruning.masks import (Masker, layer_sparsity, magnitude_masks, prunable_parameters,
                                     sparsity)

__all__ = ["Masker", "layer_sparsity", "magnitude_masks", "prunable_parameters", "prune_run", "sparsity"]


def prune_run(cfg, force: bool = False, log=print, ignore_unknown_options: bool = False):
    """Build or resume the pool of a run config (see :mod:`prunelens.pruning.runner`)."""
    from prunelens.pruning.runner import prune_run as _prune_run
    return _prune_run(cfg, force=force, log=log, ignore_unknown_options=ignore_unknown_options)
