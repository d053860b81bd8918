"""Transfer of pruned representations: linear probes and few-shot probes on a downstream task.

Cassano et al. report sweet spots of "downstream generalization"; Tartaglione et al. argue that the
features of iteratively pruned models are less tied to specific classes, "potentially making these
models a better fit in transfer learning". The ``transfer`` suite measures it: the backbone of each
level is frozen, its penultimate features (the classifier's input, :meth:`ArchSpec.penultimate_features`)
are extracted on a downstream task that differs from the source task, and a linear probe is fitted.

* :mod:`~prunelens.transfer.features` — batched feature extraction;
* :mod:`~prunelens.transfer.probe` — the probe (multinomial L2 logistic regression, also on two
  classes; C by cross-validation, exact ties to the smallest C) and few-shot draws;
* :mod:`~prunelens.transfer.downstream` — the downstream tasks (synthetic texture-as-label, novel
  shapes; CIFAR-10/100 and ImageFolder folders);
* :mod:`~prunelens.transfer.suite` — the suite.
"""
from prunelens.transfer.features import extract_features, match_input
from prunelens.transfer.probe import (DEFAULT_C_GRID, ProbeFit, fewshot_accuracy, fewshot_indices,
                                      fit_probe)

__all__ = ["DEFAULT_C_GRID", "ProbeFit", "extract_features", "fewshot_accuracy", "fewshot_indices",
           "fit_probe", "match_input"]
