"""PSP-entropy (prunelens.analysis.psp_entropy) and the ``psp`` suite.

Oracles: hand-made networks and data whose neuron states per class are known, hence H_ik by hand;
and, for a random CNN, a per-layer brute-force recomputation from stored activations (the way the
reference code re-ran the data once per layer).
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from prunelens.io import load_tensors

from prunelens.analysis.psp_entropy import CLAMP, binary_entropy, psp_entropy


def h(p: float) -> float:
    p = min(max(p, CLAMP), 1 - CLAMP)
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def test_hand_made_linear_layer():
    # z0 = x, z1 = -x, z2 = x - 10 (never on). Class 0: x = +1, +1, -1, -1; class 1: x = +1 (x3)
    layer = nn.Linear(1, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0], [-1.0], [1.0]]))
        layer.bias.copy_(torch.tensor([0.0, 0.0, -10.0]))
    model = nn.Sequential(layer)
    x = torch.tensor([[1.0], [1.0], [-1.0], [-1.0], [1.0], [1.0], [1.0]])
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no class is missing: no warning
        out = psp_entropy(model, batches(x, y, 3), num_classes=2)
    expected_ik = torch.tensor([[h(0.5), h(1.0)], [h(0.5), h(0.0)], [h(0.0), h(0.0)]],
                               dtype=torch.float64)
    torch.testing.assert_close(out.per_class["0"], expected_ik)
    torch.testing.assert_close(out.per_neuron["0"], expected_ik.sum(1))
    assert out.layer_mean["0"] == pytest.approx(float(expected_ik.sum(1).mean()))
    assert out.per_neuron["0"][0] == pytest.approx(1 + h(1.0))  # one bit from class 0 alone
    assert out.classes == [0, 1] and out.missing_classes == []


def test_absent_class_is_skipped_and_named_not_nan():
    model = nn.Sequential(nn.Linear(2, 4))
    x, y = torch.randn(12, 2), torch.tensor([0, 2] * 6)
    with pytest.warns(UserWarning, match=r"\[1, 3\]"):
        out = psp_entropy(model, [(x, y)], num_classes=4)
    assert out.missing_classes == [1, 3] and out.classes == [0, 2]
    assert out.per_class["0"].shape == (4, 2)
    assert torch.isfinite(out.per_neuron["0"]).all()
    assert out.samples_per_class.tolist() == [6, 0, 6, 0]


def test_entropy_is_clamped_as_in_the_reference():
    assert binary_entropy(torch.tensor(0.5)).item() == pytest.approx(1.0)
    assert h(0.0) == pytest.approx(h(1.0)) == pytest.approx(0.0014730335283281598)


def test_conv_neurons_element_and_channel():
    # identity 1x1 conv: z = x. Two images of class 0 with known signs at 2 positions
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    model = nn.Sequential(conv)
    x = torch.tensor([[[[1.0, -1.0]]], [[[1.0, 1.0]]]])  # (2, 1, 1, 2)
    y = torch.tensor([0, 0])
    element = psp_entropy(model, [(x, y)], 1, conv_neurons="element")
    # position 0 always on -> h(1); position 1 on in one of two images -> 1 bit
    torch.testing.assert_close(element.per_neuron["0"], torch.tensor([h(1.0), 1.0], dtype=torch.float64))
    channel = psp_entropy(model, [(x, y)], 1, conv_neurons="channel")
    # one neuron, on in 3 of 4 (image, position) samples
    assert channel.per_neuron["0"].tolist() == pytest.approx([h(0.75)])


def test_one_pass_matches_per_layer_recomputation_on_a_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(5 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x, y = torch.randn(40, 3, 6, 6), torch.randint(0, 3, (40,))
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    out = psp_entropy(model, batches(x, y, 16), 3, conv_neurons="element")
    assert len(calls) == 3  # one forward per batch, for all four layers
    assert set(out.per_neuron) == {"0", "2", "5", "7"}
    for name in out.per_neuron:
        layer = dict(model.named_modules())[name]
        stored = []
        handle = layer.register_forward_hook(
            lambda m, i, o, stored=stored: stored.append(o.detach().flatten(1)))
        with torch.no_grad():
            model(x)
        handle.remove()
        z = stored[0]
        expected = torch.zeros(z.shape[1], dtype=torch.float64)
        for k in range(3):
            p = (z[y == k] > 0).double().mean(0)
            expected += binary_entropy(p.clamp(CLAMP, 1 - CLAMP))
        torch.testing.assert_close(out.per_neuron[name], expected)


def test_channel_mode_on_linear_pools_tokens():
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
    tokens = torch.tensor([[[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]]])  # (1 image, 3 tokens, 2)
    out = psp_entropy(nn.Sequential(lin), [(tokens, torch.tensor([0]))], 1)
    assert out.per_neuron["0"].tolist() == pytest.approx([h(2 / 3), h(1 / 3)])


def test_modules_that_never_run_are_reported():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x)

    out = psp_entropy(Net(), [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))], 2)
    assert out.silent_layers == ["unused"] and set(out.per_neuron) == {"used"}


def test_psp_suite_records_every_neuron(tmp_path):
    import json

    from prunelens.config import DataConfig
    from prunelens.data.provider import RunData
    from prunelens.suite import LevelContext, get_suite
    from prunelens.models import create_model, spec_for

    torch.manual_seed(0)
    model = create_model("small_resnet", 4, widths=(4, 8)).eval()
    data = RunData(DataConfig(name="synthetic", image_size=16, num_classes=4, n_train=24, n_val=8,
                              n_test=8), seed=0)
    suite = get_suite("psp")
    ctx = LevelContext(pool=None, config=None, options=suite.Options(n_images=24),
                       device=torch.device("cpu"), data=data, spec=spec_for(model),
                       artifacts=tmp_path / "psp", batch_size=8, level=None, model=model, masks={},
                       level_artifacts=tmp_path / "psp" / "level_00")
    records = list(suite().evaluate_level(ctx))
    train = data.split("train")
    images = torch.stack([train[i][0] for i in range(24)])
    direct = psp_entropy(model, [(images, train.labels[:24])], 4, transform=spec_for(model).normalize)
    assert {r.method for r in records} == set(direct.per_neuron)
    neurons = [r for r in records if r.metric == "psp_entropy"]
    for layer, values in direct.per_neuron.items():
        got = [r.value for r in neurons if r.method == layer]
        assert got == pytest.approx(values.tolist())
    # per class: H_ik averaged over the layer's neurons, one record per class (item = its name)
    per_class = [r for r in records if r.metric == "psp_entropy_per_class"]
    names = data.split("train").class_names
    for layer, h_ik in direct.per_class.items():
        got = {r.item: r.value for r in per_class if r.method == layer}
        assert got == pytest.approx({names[k]: float(h_ik[:, j].mean()) for j, k in enumerate(direct.classes)})
    assert all(r.item for r in records) and {r.metric for r in records} == {"psp_entropy", "psp_entropy_per_class"}
    summary = json.loads((ctx.level_artifacts / "psp_summary.json").read_text())
    assert summary["layer_mean"] == pytest.approx(direct.layer_mean)
    saved = load_tensors(ctx.level_artifacts / "psp_per_class.safetensors")
    assert set(saved) == set(direct.per_class)
    torch.testing.assert_close(saved["conv1"], direct.per_class["conv1"])


def test_psp_results_across_levels(tmp_path):
    from prunelens.results import Record, write_level

    from conftest import hand_made_pool
    pool = hand_made_pool(tmp_path, (0.0, 0.5, 0.8))
    levels = pool.levels
    for level in levels[:2]:  # level 2 not evaluated yet: skipped
        rows = [Record("psp", "psp_entropy", 1.0 + level.sparsity + 0.1 * i, method="conv1", item=str(i))
                for i in range(4)]
        write_level(tmp_path, "psp", level.index, rows, meta={})
    from prunelens.results import load_results
    frame = load_results(pool.run_dir, suite="psp")
    assert sorted(frame["sparsity"].unique()) == [0.0, 0.5]
    assert frame.groupby("sparsity")["value"].mean().tolist() == pytest.approx([1.15, 1.65])


def test_suites_skip_a_split_the_dataset_lacks():
    from types import SimpleNamespace

    from prunelens.suite import get_suite

    data = SimpleNamespace(entry=SimpleNamespace(splits=("train", "val")),
                           config=SimpleNamespace(name="imagenet"))
    for name, key in (("psp", "evaluate.psp.split"), ("sharpness", "evaluate.sharpness.split")):
        suite = get_suite(name)
        assert suite().skip_reason(SimpleNamespace(data=data, options=suite.Options())) is None
        reason = suite().skip_reason(SimpleNamespace(data=data, options=suite.Options(split="test")))
        assert "no 'test' split" in reason and key in reason
    conn = get_suite("connectivity")
    from prunelens.models import create_model
    from prunelens.models.spec import FCNSpec
    fcn = create_model("fcn", 3, input_shape=(1, 4, 4), widths=(8,))
    ctx = SimpleNamespace(data=data, spec=FCNSpec(), options=conn.Options(), architecture=lambda: fcn)
    assert conn().skip_reason(ctx) is None  # default: the dataset's evaluation split
    ctx.options = conn.Options(split="test")
    assert "evaluate.connectivity.split" in conn().skip_reason(ctx)


# ---- the reference code's count (tests/psp_reference.py: EIDOSLAB/PSP-entropy src/PSPentropy.py) ----
def _digit_batches(n=60, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=generator)
    y = torch.arange(n) % 10  # every class present: the reference divides by each class's count
    return batches(x, y, size)


def test_element_count_equals_the_reference_code_on_their_lenet5():
    from psp_reference import ReferenceLeNet5, compute_PSPentropy

    torch.manual_seed(0)
    model = ReferenceLeNet5().eval()
    data = _digit_batches()
    ref_h, ref_classwise = compute_PSPentropy(model, data, classes=10)
    ours = psp_entropy(model, data, 10, conv_neurons="element")
    assert set(ours.per_neuron) == set(ref_h) == {"conv1", "conv2", "fc1", "fc2"}
    assert ours.per_neuron["conv1"].shape == (20 * 24 * 24,)  # every (channel, y, x) is a neuron
    for name in ref_h:
        torch.testing.assert_close(ours.per_neuron[name].float(), ref_h[name], rtol=0, atol=2e-5)
        torch.testing.assert_close(ours.per_class[name].float(), ref_classwise[name], rtol=0, atol=2e-5)
    # the default counts channels: another number of neurons, not the reference's
    channel = psp_entropy(model, data, 10)
    assert channel.per_neuron["conv1"].shape == (20,)


def test_element_count_equals_the_reference_on_prunelens_lenet5():
    from psp_reference import compute_PSPentropy

    from prunelens.models import create_model, spec_for

    torch.manual_seed(1)
    model = create_model("lenet5", 10).eval()
    layers = spec_for(model).neuron_layers(model)
    assert list(layers) == ["features.conv1", "features.conv2", "head.fc3", "head.fc4", "head.classifier"]
    data = _digit_batches(seed=1)
    ref_h, _ = compute_PSPentropy(model, data, classes=10, modules=layers.items())
    ours = psp_entropy(model, data, 10, conv_neurons="element")
    for name in layers:
        torch.testing.assert_close(ours.per_neuron[name].float(), ref_h[name], rtol=0, atol=2e-5)


def test_the_report_names_the_neuron_count_and_the_entropy_configs_use_the_reference():
    from pathlib import Path

    import yaml

    from prunelens.suite import get_suite

    suite = get_suite("psp")
    assert "every output element" in suite.describe(suite.Options(conv_neurons="element"))
    assert "one neuron per channel" in suite.describe(suite.Options())
    configs = sorted((Path(__file__).parents[1] / "configs" / "entropy").glob("*.yaml"))
    assert configs
    for path in configs:
        raw = yaml.safe_load(path.read_text())
        assert raw["evaluate"]["psp"]["conv_neurons"] == "element", path.name
