"""The linear probe and few-shot draws (scikit-learn).

A probe is multinomial logistic regression with an L2 penalty on standardised features (the
linear-evaluation protocol of e.g. Kornblith, Shlens & Le 2019, "Do Better ImageNet Models Transfer
Better?", Sec. 3: L2-regularised multinomial logistic regression, regularisation chosen on held-out
data). Here the inverse regularisation strength C is chosen by stratified k-fold cross-validation
accuracy on the downstream train split, the standardisation being refitted inside every fold. lbfgs
and unshuffled folds make it deterministic.

**Choice of C** (:func:`choose_c`): the mean of the per-fold accuracies (scikit-learn's
``GridSearchCV`` ``mean_test_score``: every fold weighs the same) is compared *exactly*, as a sum
of fractions correct/total, and ties go to the smallest C (the strongest penalty). ``GridSearchCV``
ranks floating-point means, whose last bit depends on the order of the folds: fold accuracies
(2/3, 4/5, 4/5, 1, 3/5) average to 0.7733333333333333 in that order and to 0.7733333333333334 as
(2/3, 4/5, 1, 3/5, 4/5), so it would prefer a larger C on an exact tie.

**Two classes**: scikit-learn >= 1.8 has no ``multi_class`` option (1.9 is pinned here); with two
classes ``LogisticRegression`` fits the binary (sigmoid) model with one weight vector w and penalty
½‖w‖², not the two-row softmax model with penalty ½(‖w₀‖² + ‖w₁‖²). Both losses depend only on
w₁ − w₀, and for a given difference the penalty is smallest at w₁ = −w₀, where it is ¼‖w₁ − w₀‖²
(intercepts are not penalised by lbfgs). So the multinomial probe with strength C is the binary
model with 2C (same decision function and probabilities, ``tests/test_transfer.py`` checks it
against a direct minimisation of the multinomial objective); :func:`_pipeline` passes 2C on
two-class data, and ``ProbeFit.C`` reports the multinomial C of the grid.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

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


def _pipeline(C: float, max_iter: int, n_classes: int):
    """StandardScaler → LogisticRegression, the multinomial model with inverse L2 strength ``C``
    (binary with 2C on two classes: see the module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    C_sklearn = 2.0 * C if n_classes == 2 else C
    return make_pipeline(StandardScaler(), LogisticRegression(C=C_sklearn, max_iter=max_iter))


def choose_c(fold_counts: Mapping[float, Sequence[tuple[int, int]]]) -> tuple[float, Fraction]:
    """The C with the best mean fold accuracy, the smallest C among equals, and that mean.

    ``fold_counts[C]`` lists (correct, total) per fold. The mean is the unweighted mean of the fold
    accuracies (as ``GridSearchCV``'s ``mean_test_score``), computed exactly in rationals, so equal
    accuracies tie whatever the order of the folds.
    """
    if not fold_counts:
        raise ValueError("no C to choose from")
    means = {float(C): sum((Fraction(int(c), int(t)) for c, t in counts), Fraction(0)) / len(counts)
             for C, counts in fold_counts.items()}
    best = max(means.values())
    chosen = min(C for C, m in means.items() if m == best)
    return chosen, best


def _check_classes(y: np.ndarray, what: str) -> None:
    if len(np.unique(y)) < 2:
        raise DataError(f"{what} has {len(np.unique(y))} class(es); a probe needs at least 2: raise "
                        "evaluate.transfer.n_train or choose another downstream dataset")


def fit_probe(x: np.ndarray, y: np.ndarray, c_grid: Sequence[float] = DEFAULT_C_GRID, folds: int = 5,
              max_iter: int = 1000) -> ProbeFit:
    """Fit the probe on (x, y), choosing C from ``c_grid`` by ``folds``-fold stratified CV accuracy
    (fewer folds when the rarest class has fewer examples; at least 2), ties to the smallest C
    (:func:`choose_c`), then refit on all of (x, y) with that C."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    _check_classes(y, "the downstream train split")
    n_classes = len(np.unique(y))
    rarest = int(np.unique(y, return_counts=True)[1].min())
    splits = min(folds, max(2, rarest))
    with warnings.catch_warnings():
        # large C on separable features may stop at max_iter; the CV score still ranks it
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The least populated class")
        split = list(StratifiedKFold(n_splits=splits).split(x, y))
        counts: dict[float, list[tuple[int, int]]] = {}
        for C in sorted({float(c) for c in c_grid}):
            counts[C] = []
            for train, test in split:
                model = _pipeline(C, max_iter, n_classes).fit(x[train], y[train])
                counts[C].append((int((model.predict(x[test]) == y[test]).sum()), len(test)))
        C, mean = choose_c(counts)
        pipeline = _pipeline(C, max_iter, n_classes).fit(x, y)
    return ProbeFit(pipeline, C, float(mean))


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
        model = _pipeline(C, max_iter, len(np.unique(y))).fit(x, y)
    return float((model.predict(np.asarray(test_x, dtype=np.float64)) == np.asarray(test_y)).mean())
