"""Datasets: the embedded synthetic shapes, and loaders for real datasets on local disk."""
from prunelens.data.registry import (
                                     DatasetOptions,
                                     available_datasets,
                                     dataset_entry,
                                     register_dataset,
)

__all__ = ["DatasetOptions", "available_datasets", "dataset_entry", "register_dataset"]
