"""RQ2: unsupervised object discovery (LOST) and its CorLoc, on any backbone of a pool."""
from prunelens.discovery.corloc import (BoxDataset, SyntheticBoxes, best_iou, box_iou,
                                        corloc_hits, summarize_corloc)
from prunelens.discovery.features import PatchFeatures, patch_features
from prunelens.discovery.lost import LostResult, SeedInBackgroundError, lost

__all__ = ["BoxDataset", "LostResult", "PatchFeatures", "SeedInBackgroundError", "SyntheticBoxes",
           "best_iou", "box_iou", "corloc_hits", "lost", "patch_features", "summarize_corloc"]
