"""The linear probe and few-shot draws (scikit-learn).

A probe is multinomial logistic regression with an L2 penalty on standardised features (the
linear-evaluation protocol of e.g. Kornblith, Shlens & Le 2019, "Do Better ImageNet Models Transfer
Better?", Sec. 3: L2-regularised multinomial logistic regression, regularisation chosen on held-out
data). Here the inverse regularisation strength C is chosen by stratified k-fold cross-validation
accuracy on the downstream train split, the standardisation being refitted inside every fold; ties
go to the smallest C (the strongest penalty). lbfgs and unshuffled folds make it deterministic.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prunelens.errors import DataError

#: default grid of C (inverse L2 strength) searched by cross-validation
DEFAULT_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass
class ProbeFit:
    """A fitted probe: ``pipeline`` (StandardScaler → LogisticRegression) and the chosen ``C``."""

    pipeline: object
    C: float
    cv_accuracy: float


def _pipeline(C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))


def _check_classes(y: np.ndarray, what: str) -> None:
    if len(np.unique(y)) < 2:
        raise DataError(f"{what} has {len(np.unique(y))} class(es); a probe needs at least 2: raise "
                        "evaluate.transfer.n_train or choose another downstream dataset")


def fit_probe(x: np.ndarray, y: np.ndarray, c_grid: Sequence[float] = DEFAULT_C_GRID, folds: int = 5,
              max_iter: int = 1000) -> ProbeFit:
    """Fit the probe on (x, y), choosing C from ``c_grid`` by ``folds``-fold stratified CV accuracy
    (fewer folds when the rarest class has fewer examples; at least 2)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    _check_classes(y, "the downstream train split")
    rarest = int(np.unique(y, return_counts=True)[1].min())
    splits = min(folds, max(2, rarest))
    search = GridSearchCV(_pipeline(1.0, max_iter), {"logisticregression__C": sorted(c_grid)},
                          cv=StratifiedKFold(n_splits=splits), scoring="accuracy", refit=True)
    with warnings.catch_warnings():
        # large C on separable features may stop at max_iter; the CV score still ranks it
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The least populated class")
        search.fit(x, y)
    return ProbeFit(search.best_estimator_, float(search.best_params_["logisticregression__C"]),
                    float(search.best_score_))


def probe_correct(fit: ProbeFit, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example correctness (bool) of the probe's predictions."""
    return fit.pipeline.predict(np.asarray(x, dtype=np.float64)) == np.asarray(y)


def fewshot_indices(labels: np.ndarray, k: int, n_draws: int, seed: int = 0) -> list[np.ndarray]:
    """``n_draws`` seeded draws of k training examples per class (all of a class's examples when it
    has fewer), each sorted. The draws depend only on (labels, k, seed): the same at every level."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), int(k)])
    draws = []
    for _ in range(n_draws):
        order = np.lexsort((rng.random(len(labels)), labels))  # by class, random within a class
        sorted_labels = labels[order]
        first = np.searchsorted(sorted_labels, sorted_labels, side="left")
        rank = np.arange(len(labels)) - first                   # position within its class
        draws.append(np.sort(order[rank < k]))
    return draws


def fewshot_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     index: np.ndarray, C: float = 1.0, max_iter: int = 1000) -> float:
    """Test accuracy of a probe with fixed ``C`` fitted on the few examples ``index`` of the train
    split alone (scaler and weights): k labelled examples per class are all it sees."""
    from sklearn.exceptions import ConvergenceWarning

    x, y = np.asarray(train_x, dtype=np.float64)[index], np.asarray(train_y)[index]
    _check_classes(y, "a few-shot draw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = _pipeline(C, max_iter).fit(x, y)
    return float((model.predict(np.asarray(test_x, dtype=np.float64)) == np.asarray(test_y)).mean())
