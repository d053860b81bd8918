"""configs/entropy/*.yaml against Tartaglione et al.'s code: PSP-entropy is measured as the authors'
how_to_use.ipynb (EIDOSLAB/PSP-entropy @ 0ab88b5, cell 5) measures it, on the whole MNIST test set
(``datasets.MNIST(train=False)``: 10,000 images), and the gradual pool reaches the 0.99 the one-shot
config's comment names (the paper has no stop rule on dead units)."""
from __future__ import annotations

from pathlib import Path

import pytest

from prunelens.data.registry import folders_unchecked
from prunelens.pruning.schedule import planned_rounds
from prunelens.suite import load_configs, suite_options

ENTROPY = Path(__file__).resolve().parents[1] / "src/prunelens/configs/entropy"
MNIST_TEST_IMAGES = 10_000  # t10k-images-idx3-ubyte


@pytest.mark.parametrize("name", ["lenet5_gradual", "lenet5_one_shot"])
def test_psp_entropy_on_the_whole_mnist_test_set_and_no_dead_unit_stop(name):
    with folders_unchecked():
        cfg = load_configs(str(ENTROPY / f"{name}.yaml"), [])[0]
    psp = suite_options(cfg, "psp")
    assert psp.split == "test" and psp.n_images >= MNIST_TEST_IMAGES
    assert psp.conv_neurons == "element"
    assert cfg.prune.min_alive_units == 0
    # "0.99: the 21st round" of 20 % (lenet5_one_shot.yaml): nothing stops the gradual pool before it
    assert planned_rounds(cfg.prune.rate, cfg.prune.max_sparsity, cfg.prune.rounds) == 21
    assert 1 - (1 - cfg.prune.rate) ** 20 < cfg.prune.max_sparsity <= 1 - (1 - cfg.prune.rate) ** 21
