"""The transfer suite: probe vs an independent scikit-learn fit, few-shot draws, downstream tasks
that differ from the source task, determinism, and an end-to-end evaluate on a tiny pool."""
from __future__ import annotations

import inspect
import warnings
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch

from prunelens.data.synthetic import SyntheticShapes
from prunelens.data.synthetic_registry import SyntheticOptions
from prunelens.errors import ConfigError, DataError
from prunelens.models import create_model, spec_for
from prunelens.transfer import downstream as ds
from prunelens.transfer import extract_features, fewshot_accuracy, fewshot_indices, fit_probe
from prunelens.transfer import probe as probe_module
from prunelens.transfer.probe import choose_c, probe_correct

GRID = [1e-2, 1e-1, 1.0]


def sklearn_reference_accuracy(train_x, train_y, test_x, test_y, grid, folds=5) -> float:
    """scikit-learn's own cross-validated logistic regression (a different code path from the
    probe's grid search): standardised features, multinomial L2, C by stratified k-fold accuracy."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kw = dict(Cs=list(grid), cv=StratifiedKFold(folds), scoring="accuracy", max_iter=1000)
    params = inspect.signature(LogisticRegressionCV).parameters
    if "l1_ratios" in params:            # scikit-learn >= 1.8 names the L2 penalty this way
        kw["l1_ratios"] = (0.0,)
    if "use_legacy_attributes" in params:
        kw["use_legacy_attributes"] = False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")  # rare textures
        ref = make_pipeline(StandardScaler(), LogisticRegressionCV(**kw)).fit(train_x, train_y)
    return float((ref.predict(test_x) == test_y).mean())


@pytest.fixture(scope="module")
def texture_features():
    torch.manual_seed(0)
    model = create_model("small_resnet", 4, widths=[8, 16]).eval()
    task = ds.texture_task(SyntheticOptions(image_size=16, num_classes=4, texture_correlation=0.5),
                           seed=0, n_train=200, n_test=160)
    spec = spec_for(model)
    train = extract_features(model, spec, task.train, 64, "cpu")
    test = extract_features(model, spec, task.test, 64, "cpu")
    return [t.numpy() for t in (*train, *test)]


def test_probe_accuracy_equals_an_independent_sklearn_fit(texture_features):
    train_x, train_y, test_x, test_y = texture_features
    fit = fit_probe(train_x, train_y, GRID)
    accuracy = float(probe_correct(fit, test_x, test_y).mean())
    reference = sklearn_reference_accuracy(train_x, train_y, test_x, test_y, GRID)
    assert abs(accuracy - reference) <= 0.005
    chance = np.bincount(test_y).max() / len(test_y)
    assert accuracy > chance + 0.05  # the features carry texture information: not a degenerate fit
    assert fit.C in GRID


# fold accuracies whose float means differ in the last bit with the order of the folds (probe.py
# docstring): (2/3, 4/5, 4/5, 1, 3/5) vs (2/3, 4/5, 1, 3/5, 4/5), 58/75 exactly either way
TIED_SMALL_C = [10, 12, 12, 15, 9]       # correct of 15 per fold
TIED_LARGE_C = [10, 12, 15, 9, 12]


def test_choose_c_compares_exact_means_and_takes_the_smallest_c():
    small = [(c, 15) for c in TIED_SMALL_C]
    large = [(c, 15) for c in TIED_LARGE_C]
    # the trap: floating-point means rank the larger C first
    assert float(np.mean([c / t for c, t in small])) == 0.7733333333333333
    assert float(np.mean([c / t for c, t in large])) == 0.7733333333333334
    assert choose_c({1.0: large, 0.1: small}) == (0.1, Fraction(58, 75))
    assert choose_c({0.1: small, 1.0: large}) == (0.1, Fraction(58, 75))
    # unequal fold sizes: the unweighted mean of fold accuracies, 2/3, 4/5, 4/5, 1, 3/5
    mixed = [(2, 3), (4, 5), (4, 5), (5, 5), (3, 5)]
    assert choose_c({10.0: mixed, 0.01: mixed[::-1]}) == (0.01, Fraction(58, 75))
    # a strictly better larger C still wins (one more correct in one fold)
    better = [(11, 15)] + large[1:]
    assert choose_c({0.1: small, 1.0: better}) == (1.0, Fraction(59, 75))


class _ScriptedClassifier:
    """Stands in for the probe's pipeline: feature 0 is the example's index; on each fold's test
    set it is right on the first ``CORRECT[C][fold]`` examples and wrong on the others."""

    def __init__(self, C, y, folds):
        self.C, self.y, self.folds = C, y, folds

    def fit(self, x, y):
        return self

    def predict(self, x):
        index = x[:, 0].astype(int)
        fold = next(f for f, test in enumerate(self.folds) if set(test) == set(index.tolist()))
        k = {0.1: TIED_SMALL_C, 1.0: TIED_LARGE_C}[self.C][fold]
        right = self.y[index]
        return np.where(np.arange(len(index)) < k, right, (right + 1) % 3)


def test_fit_probe_breaks_an_exact_tie_to_the_smallest_c(monkeypatch):
    from sklearn.model_selection import StratifiedKFold
    y = np.tile(np.arange(3), 25)                       # 75 examples: 5 folds of 15
    x = np.stack([np.arange(75), np.zeros(75)], 1).astype(float)
    folds = [test.tolist() for _, test in StratifiedKFold(5).split(x, y)]
    monkeypatch.setattr(probe_module, "_pipeline",
                        lambda C, max_iter, n_classes: _ScriptedClassifier(C, y, folds))
    fit = fit_probe(x, y, [1.0, 0.1], folds=5)
    assert fit.C == 0.1
    assert fit.cv_accuracy == float(Fraction(58, 75))


def multinomial_reference(x, y, C):
    """The two-row softmax model minimised directly (float64 L-BFGS): C * sum_i CE_i + ½‖W‖²,
    intercepts unpenalised — scikit-learn's multinomial objective, whatever the number of classes."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp
    n, d = x.shape
    k = int(y.max()) + 1

    def objective(theta):
        W, b = theta[:k * d].reshape(k, d), theta[k * d:]
        z = x @ W.T + b
        lse = logsumexp(z, axis=1)
        p = np.exp(z - lse[:, None])
        p[np.arange(n), y] -= 1.0
        value = C * (lse - z[np.arange(n), y]).sum() + 0.5 * (W ** 2).sum()
        grad = np.concatenate([(C * p.T @ x + W).ravel(), C * p.sum(0)])
        return value, grad

    theta = minimize(objective, np.zeros(k * d + k), jac=True, method="L-BFGS-B",
                     options=dict(gtol=1e-12, ftol=1e-15, maxiter=10000)).x
    W, b = theta[:k * d].reshape(k, d), theta[k * d:]
    z = x @ W.T + b
    return np.exp(z - logsumexp(z, axis=1)[:, None])


def test_two_class_probe_is_the_multinomial_model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    x = rng.normal(size=(80, 4)) + 0.8 * y[:, None] * np.array([1.0, -0.5, 0.0, 0.3])
    C = 0.05
    fit = fit_probe(x, y, [C])
    assert fit.C == C
    z = StandardScaler().fit_transform(x)
    reference = multinomial_reference(z, y, C)
    assert np.abs(fit.pipeline.predict_proba(x) - reference).max() < 5e-4   # lbfgs' default tol
    tight = probe_module._pipeline(C, 1000, 2).set_params(logisticregression__tol=1e-10).fit(x, y)
    assert np.abs(tight.predict_proba(x) - reference).max() < 1e-6
    # scikit-learn's own binary model at the same C is a different (more strongly penalised) model
    binary = LogisticRegression(C=C, max_iter=1000).fit(z, y).predict_proba(z)
    assert np.abs(binary - reference).max() > 1e-2
    # and the same multinomial objective with three classes is scikit-learn's model at C itself
    y3 = np.repeat([0, 1, 2], 30)
    x3 = rng.normal(size=(90, 4)) + y3[:, None] * np.array([0.5, -0.5, 0.2, 0.0])
    z3 = StandardScaler().fit_transform(x3)
    three = LogisticRegression(C=C, max_iter=1000, tol=1e-10).fit(z3, y3).predict_proba(z3)
    assert np.abs(three - multinomial_reference(z3, y3, C)).max() < 1e-6


def test_fewshot_draws_take_k_per_class_seeded_and_paired():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1, 0])
    draws = fewshot_indices(labels, 2, n_draws=4, seed=3)
    assert len(draws) == 4
    for index in draws:
        assert np.bincount(labels[index], minlength=3).tolist() == [2, 2, 2]
        assert len(set(index.tolist())) == len(index)
    again = fewshot_indices(labels, 2, n_draws=4, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))    # same draws at every level
    assert len({tuple(d) for d in draws}) > 1                            # draws differ
    everything = fewshot_indices(labels, 10, n_draws=1, seed=0)[0]      # k above a class's size
    assert sorted(everything.tolist()) == list(range(len(labels)))


def test_one_shot_on_separated_clusters_is_perfect_and_needs_two_classes():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = np.eye(3)[y] * 10 + rng.normal(scale=0.1, size=(60, 3))
    index = fewshot_indices(y, 1, 1, seed=0)[0]
    assert fewshot_accuracy(x, y, x, y, index) == 1.0
    from prunelens.errors import DataError
    with pytest.raises(DataError, match="at least 2"):
        fewshot_accuracy(x, y, x, y, np.array([0, 1]))


def test_texture_task_relabels_fresh_images_by_texture():
    options = SyntheticOptions(image_size=16, num_classes=4, texture_correlation=0.5)
    task = ds.texture_task(options, seed=0, n_train=300, n_test=50)
    same = SyntheticShapes("train", 300, 16, 4, 0.5, seed=ds.IMAGE_SEED_OFFSET)
    assert torch.equal(task.train.images, same.images)                  # the same images …
    shape, texture = same.labels, task.train.labels                      # … labelled otherwise
    assert torch.equal(texture, same.texture_labels)
    assert int(texture.max()) >= 4                                       # textures beyond the 4 shapes
    agreement = float((shape == texture).float().mean())
    assert agreement < 0.5 + 0.5 / 12 + 0.1                              # E = 0.5 + 0.5/12 here
    trained_on = {bytes(im.numpy()) for im in SyntheticShapes("train", 300, 16, 4, 0.5, seed=0).images}
    assert not trained_on & {bytes(im.numpy()) for im in task.train.images}  # never a training image
    uncorrelated = ds.texture_task(SyntheticOptions(image_size=16, num_classes=4, texture_correlation=0.0),
                                   seed=0, n_train=400, n_test=10)
    base = SyntheticShapes("train", 400, 16, 4, 0.0, seed=ds.IMAGE_SEED_OFFSET).labels
    assert float((uncorrelated.train.labels == base).float().mean()) < 0.2  # ≈ 1/12 by chance


def test_novel_shapes_are_the_shapes_the_run_never_saw():
    task = ds.novel_shapes_task(SyntheticOptions(image_size=16, num_classes=9), seed=0, n_train=60, n_test=30)
    assert len(task.train) == 60 and len(task.test) == 30
    assert set(task.train.labels.tolist()) == {0, 1, 2}                 # shapes 9, 10, 11
    assert task.train.class_names == ["hexagon", "tee", "ell"]


def test_features_are_deterministic_across_calls():
    torch.manual_seed(1)
    model = create_model("fcn", 3, input_shape=(3, 16, 16), widths=[10]).eval()
    task = ds.texture_task(SyntheticOptions(image_size=16, num_classes=3), seed=0, n_train=40, n_test=8)
    a = extract_features(model, spec_for(model), task.train, 16, "cpu")
    b = extract_features(model, spec_for(model), task.train, 7, "cpu")  # other batches, same numbers
    assert torch.equal(a[1], b[1])
    torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=1e-6)


def test_options_name_the_key_and_the_fix():
    from prunelens.config import validate_section
    from prunelens.transfer.suite import TransferOptions

    with pytest.raises(ConfigError, match="evaluate.transfer.*root"):
        validate_section(TransferOptions, {"dataset": "cifar10"}, "evaluate.transfer")
    with pytest.raises(ConfigError, match="c_grid"):
        validate_section(TransferOptions, {"c_grid": [0.0, 1.0]}, "evaluate.transfer")
    with pytest.raises(DataError, match="evaluate.transfer.root: folder .* does not exist"):
        ds.folder_task("cifar10", "/nonexistent/cifar", {}, 0, 4, 4)


def test_cifar10_folder_downstream_resized_to_the_run(tmp_path):
    from test_cifar import write_cifar10

    root = write_cifar10(tmp_path)
    task = ds.folder_task("cifar10", str(root), {"val_size": 2}, seed=0, n_train=12, n_test=3)
    assert len(task.train) == 12 and task.test_ids == ["t100.png", "t101.png", "t102.png"]
    model = create_model("fcn", 10, input_shape=(1, 8, 8), widths=[6]).eval()
    x, y = extract_features(model, spec_for(model), task.test, 8, "cpu", input_shape=(1, 8, 8))
    assert x.shape == (3, 6) and y.tolist() == [3, 1, 4]


# ---- the suite on a tiny pool ----------------------------------------------------------------------
def classifier_input_features(model, dataset):
    """Reference features: a hook on the classifier's input in the model's own forward."""
    spec = spec_for(model)
    module = model.get_submodule(spec.classifier(model).rsplit(".", 1)[0])
    seen = []
    handle = module.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].detach()))
    xs, ys = zip(*[dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        model(spec.normalize(torch.stack(xs)))
    handle.remove()
    return seen[0].flatten(1).numpy(), np.array(ys)


def test_transfer_suite_end_to_end_on_a_tiny_pool(tiny_config):
    from prunelens.evaluate import evaluate_run
    from prunelens.runfolder import RunFolder as Pool
    from prunelens.pruning import prune_run
    from prunelens.results import load_results
    from prunelens.runfolder import Layout

    cfg = tiny_config(prune={"rounds": 1, "max_sparsity": 0.5})
    prune_run(cfg, log=lambda *_: None)
    overrides = ["evaluate.transfer.n_train=120", "evaluate.transfer.n_test=60",
                 "evaluate.transfer.c_grid=[0.01, 0.1, 1.0]", "evaluate.transfer.shots=[1, 5]",
                 "evaluate.transfer.n_draws=3"]
    evaluate_run(cfg.run_dir, suites=["transfer"], overrides=overrides, log=lambda *_: None)
    frame = load_results(cfg.run_dir, suite="transfer")
    assert set(frame["level"]) == {0, 1}
    probe = frame[frame["metric"] == "probe_accuracy"]
    assert set(probe["value"]) <= {0.0, 1.0} and set(probe["dataset"]) == {"texture"}
    assert probe.groupby("level").size().tolist() == [60, 60]
    shots = frame[frame["metric"] == "fewshot_accuracy"]
    assert shots.groupby(["level", "method"]).size().to_dict() == {
        (0, "k=1"): 3, (0, "k=5"): 3, (1, "k=1"): 3, (1, "k=5"): 3}

    # the level's probe accuracy = scikit-learn's own CV fit on hook-captured classifier inputs
    level = Pool(cfg.run_dir).level(1)
    model = level.load_model("cpu").eval()
    task = ds.texture_task(cfg.data.options, cfg.seed, 120, 60)
    train_x, train_y = classifier_input_features(model, task.train)
    test_x, test_y = classifier_input_features(model, task.test)
    counts = np.bincount(train_y)
    folds = min(5, max(2, int(counts[counts > 0].min())))  # the protocol's folds for rare classes
    reference = sklearn_reference_accuracy(train_x, train_y, test_x, test_y, [0.01, 0.1, 1.0], folds)
    assert probe[probe["level"] == 1]["value"].mean() == pytest.approx(reference, abs=0.005)

    # deterministic: a forced re-evaluation writes the same numbers
    before = pd.read_csv(Layout(cfg.run_dir).result_csv("transfer", 1))
    evaluate_run(cfg.run_dir, suites=["transfer"], overrides=overrides, force=True, levels=[1],
                 log=lambda *_: None)
    pd.testing.assert_frame_equal(before, pd.read_csv(Layout(cfg.run_dir).result_csv("transfer", 1)))

    summary = pd.read_csv(cfg.run_dir / "results" / "summary.csv")
    assert {"probe_accuracy", "fewshot_accuracy", "probe_regularization"} <= set(summary["metric"])
    from prunelens.suite import metric_of
    assert metric_of("transfer", "probe_accuracy").direction == "higher"
    assert metric_of("transfer", "fewshot_accuracy").direction == "higher"


def test_texture_task_is_skipped_with_a_reason_on_a_non_synthetic_run(tmp_path):
    from types import SimpleNamespace

    from prunelens.transfer.suite import TransferOptions, TransferSuite

    from prunelens.config import DataConfig
    from prunelens.data.provider import RunData

    digits = RunData(DataConfig(name="digits"), seed=0)
    ctx = SimpleNamespace(options=TransferOptions(), data=digits)
    assert "evaluate.transfer.dataset" in TransferSuite().skip_reason(ctx)
    missing = SimpleNamespace(options=TransferOptions(dataset="cifar10", root=str(tmp_path / "none")),
                              data=digits)
    with pytest.raises(DataError, match="evaluate.transfer.root"):
        TransferSuite().skip_reason(missing)


def write_fashion_mnist(root, n_train: int = 24, n_test: int = 10, seed: int = 0):
    """A Fashion-MNIST folder in the distribution's layout (the four gzipped IDX files, named as
    MNIST's); returns the arrays written."""
    from test_loaders import _write_idx

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        x, y = rng.integers(0, 256, (n, 28, 28)), (np.arange(n) * 7 + seed) % 10
        _write_idx(root / f"{stem}-images-idx3-ubyte", x, True)
        _write_idx(root / f"{stem}-labels-idx1-ubyte", y, True)
        arrays[stem] = (x.astype(np.uint8), y)
    return arrays


def test_fashion_mnist_folder_downstream_reads_the_idx_layout(tmp_path):
    from prunelens.config import validate_section
    from prunelens.data.mnist import FASHION_CLASSES
    from prunelens.transfer.suite import TransferOptions

    arrays = write_fashion_mnist(tmp_path / "fashion")
    task = ds.folder_task("fashion_mnist", str(tmp_path / "fashion"), {"n_val": 4}, seed=0,
                          n_train=6, n_test=5)
    assert task.name == "fashion_mnist" and len(task.train) == 6 and len(task.test_ids) == 5
    base = task.test.dataset if isinstance(task.test, torch.utils.data.Subset) else task.test
    assert base.class_names == FASHION_CLASSES
    test_x, test_y = arrays["t10k"]
    for position, item in enumerate(task.test_ids):
        index = int(item.split("-")[1])  # the item id names the image of the t10k file
        x, y = task.test[position]
        assert y == int(test_y[index])
        assert torch.equal((x[0] * 255).round().to(torch.uint8), torch.from_numpy(test_x[index]))
    # the options name it, and a missing folder is a clear error
    options = validate_section(TransferOptions, {"dataset": "fashion_mnist", "root": str(tmp_path / "fashion")},
                               "evaluate.transfer")
    assert options.dataset == "fashion_mnist"
    with pytest.raises(DataError, match="evaluate.transfer.root"):
        ds.folder_task("fashion_mnist", str(tmp_path / "none"), {}, 0, 4, 4)
