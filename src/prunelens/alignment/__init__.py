"""RQ3 human alignment: decision mappings, trials and the model-vs-human metrics.

``read_trials`` / ``read_human_trials`` give trials tables (the benchmark's CSV format);
``human_benchmark`` compares observers with the real human trials (accuracy difference, observed
and error consistency); ``ood_accuracy``, ``dataset_accuracy``, ``accuracy_by_condition`` and
``shape_bias`` summarise one observer. The suite ``alignment`` (``prunelens.alignment.suite``) runs it per pool level.
"""
from prunelens.alignment.decision import DecisionMapping, imagenet16_indices
from prunelens.alignment.metrics import (HUMAN_METRICS, accuracy_by_condition, correct,
                                         dataset_accuracy, error_consistency, human_benchmark,
                                         human_reference,
                                         ood_accuracy, ood_conditions, ood_selection, shape_bias)
from prunelens.alignment.trials import (TRIAL_COLUMNS, human_datasets, read_human_trials,
                                        read_trials, write_trials)

__all__ = ["DecisionMapping", "HUMAN_METRICS", "TRIAL_COLUMNS", "accuracy_by_condition", "correct",
           "dataset_accuracy", "error_consistency", "human_benchmark", "human_datasets", "human_reference",
           "imagenet16_indices", "ood_accuracy", "ood_conditions", "ood_selection",
           "read_human_trials", "read_trials", "shape_bias", "write_trials"]
