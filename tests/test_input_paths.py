"""The two input paths of image folders (data.decode): one transforms-v2 definition on uint8 tensors,
checked against torchvision's Pillow path, and the GPU path's byte-reading dataset, batch decoder
and loader run on the CPU with the JPEG decoder injected (Pillow's), where they must give what the
CPU path gives.

Tolerances (measured on noisy gradient images, tests below): the antialiased resize of uint8
tensors against Pillow's differs by under 0.5 grey level on average per image, and by at most 1
grey level per pixel with bilinear interpolation when downsampling, 2 when upsampling; with
bicubic by up to 17 on a noisy edge (the cubic kernel overshoots and the two clamp and round
differently), so the bound per pixel is 20 there; the policies (AutoAugment, RandAugment,
TrivialAugmentWide) by under 4 grey levels on average per image (their rotations and shears
resample edges differently). nvJPEG against libjpeg: mean under 2 grey levels, torchvision's own
bound (test/test_image.py, test_decode_jpeg_cuda), checked only where CUDA decodes.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from prunelens._compat import torchvision
from prunelens.config import resolve_runs
from prunelens.data import device_input
from prunelens.data.device_input import (DeviceDecodedLoader, DeviceDecoder, EncodedImages, collate_encoded,
                                         image_loader, input_path, pil_decode)
from prunelens.data.imagefolder import ImageFolderOptions, transforms
from prunelens.data.provider import RunData
from prunelens.errors import ConfigError, DataError

torchvision()
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms import v2 as T  # noqa: E402


def _photo(rng, h, w) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, ((xx + yy) % 64) * 4], -1)
    return Image.fromarray(np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8))


def _pil_reference(options: ImageFolderOptions, train: bool):
    """torchvision's Pillow backend (references/classification/presets.py, backend "pil"): every
    resampling step on the Pillow image, then PILToTensor."""
    interpolation = InterpolationMode(options.interpolation)
    if not train:
        steps = [T.Resize(options.val_resize_size, interpolation, antialias=True),
                 T.CenterCrop(options.val_crop_size)]
    else:
        steps = [T.RandomResizedCrop(options.train_crop_size, interpolation=interpolation, antialias=True),
                 T.RandomHorizontalFlip()]
        if options.auto_augment == "imagenet":
            steps.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET, interpolation=interpolation))
        elif options.auto_augment == "ra":
            steps.append(T.RandAugment(interpolation=interpolation, magnitude=options.ra_magnitude))
        elif options.auto_augment == "ta_wide":
            steps.append(T.TrivialAugmentWide(interpolation=interpolation))
    return T.Compose([*steps, T.PILToTensor(), T.ToDtype(torch.float32, scale=True)])


def _grey_levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) * 255).abs()


@pytest.mark.parametrize("interpolation, max_diff, mean_diff", [("bilinear", 2.0, 0.5), ("bicubic", 20.0, 0.5)])
@pytest.mark.parametrize("train", [False, True])
def test_tensor_path_equals_the_pil_path_per_image(tmp_path, interpolation, max_diff, mean_diff, train):
    rng = np.random.default_rng(0)
    options = ImageFolderOptions(root=str(tmp_path), train_crop_size=64, val_resize_size=72,
                                 val_crop_size=64, interpolation=interpolation)
    ours, reference = transforms(options, train), _pil_reference(options, train)
    assert isinstance(ours.transforms[0], T.PILToTensor)  # the whole chain runs on tensors
    for k in range(12):
        image = _photo(rng, int(rng.integers(50, 300)), int(rng.integers(50, 300)))
        torch.manual_seed(k)
        got = ours(T.PILToTensor()(image))  # a tensor, as decoded on the GPU
        torch.manual_seed(k)
        want = reference(image)
        d = _grey_levels(got, want)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert float(d.max()) <= max_diff + 1e-4 and float(d.mean()) < mean_diff


@pytest.mark.parametrize("policy", ["imagenet", "ra", "ta_wide"])
def test_policies_on_tensors_stay_within_the_stated_tolerance_of_pillow(tmp_path, policy):
    rng = np.random.default_rng(1)
    options = ImageFolderOptions(root=str(tmp_path), train_crop_size=48, interpolation="bilinear",
                                 auto_augment=policy)
    ours, reference = transforms(options, True), _pil_reference(options, True)
    for k in range(40):
        image = _photo(rng, 64, 80)
        torch.manual_seed(k)
        got = ours(T.PILToTensor()(image))
        torch.manual_seed(k)
        want = reference(image)
        assert float(_grey_levels(got, want).mean()) < 4.0


def test_random_resized_crop_draws_torchvisions_parameters(tmp_path):
    """Same seed → the same crop as torchvision's v1 ``RandomResizedCrop.get_params`` on the Pillow
    image (the classic reference), so the scale/ratio distribution is torchvision's."""
    from torchvision import transforms as v1
    options = ImageFolderOptions(root=str(tmp_path), train_crop_size=32)
    crop = transforms(options, True).transforms[1]
    assert isinstance(crop, T.RandomResizedCrop)
    assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    image = Image.new("RGB", (500, 375))
    tensor = T.PILToTensor()(image)
    for seed in range(300):
        torch.manual_seed(seed)
        ours = crop.make_params([tensor])
        torch.manual_seed(seed)
        top, left, height, width = v1.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
        assert (ours["top"], ours["left"], ours["height"], ours["width"]) == (top, left, height, width)


def test_pillow_only_interpolations_keep_the_pillow_path_and_refuse_the_gpu(tmp_path):
    from prunelens.data.imagefolder import gpu_problem
    for interpolation, policy in (("nearest", None), ("bicubic", "ta_wide")):
        options = ImageFolderOptions(root=str(tmp_path), interpolation=interpolation, auto_augment=policy)
        steps = transforms(options, True).transforms
        assert not isinstance(steps[0], T.PILToTensor)
        assert gpu_problem(options, True) is not None
    assert gpu_problem(ImageFolderOptions(root=str(tmp_path), interpolation="bicubic"), True) is None


# ---- the GPU path, run on the CPU -------------------------------------------------------------------
def _jpeg_bytes(image: Image.Image, fmt="JPEG") -> torch.Tensor:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _pil_batch(blobs, device):
    return [pil_decode(b, "?").to(device) for b in blobs]


def test_decoder_decodes_jpegs_in_one_call_and_the_rest_with_pillow():
    rng = np.random.default_rng(2)
    images = [_photo(rng, 30 + i, 40) for i in range(4)]
    blobs = [_jpeg_bytes(images[0]), _jpeg_bytes(images[1], "PNG"), _jpeg_bytes(images[2]),
             _jpeg_bytes(images[3], "PNG")]
    calls = []

    def decode(batch, device):
        calls.append(len(batch))
        return _pil_batch(batch, device)

    decoded = DeviceDecoder(lambda x: x, torch.device("cpu"), decode).decode(blobs, ["a", "b", "c", "d"])
    assert calls == [2]  # the two JPEGs, batched
    assert torch.equal(decoded[1], T.PILToTensor()(images[1]))  # PNG: lossless, through Pillow
    assert torch.equal(decoded[3], T.PILToTensor()(images[3]))
    assert [tuple(d.shape) for d in decoded] == [(3, 30 + i, 40) for i in range(4)]


def test_decoder_falls_back_to_pillow_for_a_jpeg_the_gpu_refuses_and_names_a_corrupt_file():
    rng = np.random.default_rng(3)
    good, refused = _jpeg_bytes(_photo(rng, 20, 20)), _jpeg_bytes(Image.new("CMYK", (20, 20)))

    def decode(batch, device):  # nvJPEG refuses CMYK (torchvision's test_decode_jpeg_cuda xfails it)
        if any(torch.equal(b, refused) for b in batch):
            raise RuntimeError("unsupported")
        try:
            return _pil_batch(batch, device)
        except DataError:  # as nvJPEG: a RuntimeError that names no file
            raise RuntimeError("corrupt") from None

    decoded = DeviceDecoder(lambda x: x, torch.device("cpu"), decode).decode([good, refused], ["g", "r"])
    assert decoded[1].shape == (3, 20, 20)
    broken = good[:40].clone()
    with pytest.raises(DataError, match="cannot read image file .*broken.JPEG"):
        DeviceDecoder(lambda x: x, torch.device("cpu"), decode).decode([broken], ["/x/broken.JPEG"])


def test_deterministic_transforms_run_once_per_size_group_with_each_images_result(tmp_path):
    rng = np.random.default_rng(5)
    options = ImageFolderOptions(root=str(tmp_path), val_resize_size=36, val_crop_size=32)
    shapes = [(40, 60), (60, 40), (40, 60), (45, 50), (40, 60), (60, 40)]
    blobs = [_jpeg_bytes(_photo(rng, h, w)) for h, w in shapes]
    calls = []

    def counted(x):
        calls.append(tuple(x.shape))
        return transforms(options, False)(x)

    grouped = DeviceDecoder(counted, torch.device("cpu"), _pil_batch, random=False)(blobs, ["?"] * 6)
    assert sorted(calls) == sorted([(3, 3, 40, 60), (2, 3, 60, 40), (1, 3, 45, 50)])
    alone = torch.stack([transforms(options, False)(pil_decode(b, "?")) for b in blobs])
    assert torch.equal(grouped, alone)


def _tree(root, n=5, png_every=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, wnid in enumerate(("n01440764", "n01443537")):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                image = _photo(rng, int(rng.integers(30, 60)), int(rng.integers(30, 60)))
                # a PNG named .JPEG, as one file in ImageNet's train split
                image.save(folder / f"{wnid}_{i}.JPEG", format="PNG" if i % png_every == 3 else "JPEG")


@pytest.fixture
def fake_gpu(monkeypatch):
    """The GPU path on the CPU: any device counts as able to decode, with Pillow as 'nvJPEG'."""
    monkeypatch.setattr(device_input, "gpu_decode_problem", lambda device: None)
    monkeypatch.setattr(device_input, "nvjpeg_decode", _pil_batch)


def _data(tmp_path, decode, **extra):
    cfg = resolve_runs({"data": {"name": "imagenet", "root": str(tmp_path / "imagenet"), "train_crop_size": 24,
                                 "val_resize_size": 28, "val_crop_size": 24, "decode": decode, **extra}})[0]
    return RunData(cfg.data, 0, device=torch.device("cpu"))


@pytest.mark.parametrize("extra", [{}, {"auto_augment": "imagenet", "random_erase": 0.5}])
def test_gpu_path_loader_gives_the_cpu_paths_batches(tmp_path, fake_gpu, extra):
    """Without workers both paths draw the transforms' parameters from the main process's RNG in
    the same order: with the same decoder the batches are identical."""
    _tree(tmp_path / "imagenet")
    for split in ("train", "val"):
        batches = {}
        for decode in ("cpu", "gpu"):
            data = _data(tmp_path, decode, **extra)
            dataset = data.split(split)
            loader = image_loader(dataset, data.device, batch_size=4, shuffle=True,
                                  generator=torch.Generator().manual_seed(5))
            assert isinstance(loader, DeviceDecodedLoader) == (decode == "gpu")
            torch.manual_seed(11)
            batches[decode] = list(loader)
        assert len(batches["cpu"]) == len(batches["gpu"]) == 3
        for (xc, yc), (xg, yg) in zip(batches["cpu"], batches["gpu"]):
            assert torch.equal(xc, xg) and torch.equal(yc, yg)


def test_gpu_path_mixes_after_decoding_as_the_cpu_path_mixes_when_collating(tmp_path, fake_gpu):
    from prunelens.config import TrainConfig
    from prunelens.pruning.recipe import mixing_collate
    _tree(tmp_path / "imagenet")
    collate = mixing_collate(TrainConfig(mixup_alpha=0.2, cutmix_alpha=1.0), 2)
    out = {}
    for decode in ("cpu", "gpu"):
        data = _data(tmp_path, decode)
        loader = image_loader(data.split("train"), data.device, collate_fn=collate, mix=collate.mix,
                              batch_size=4, generator=torch.Generator().manual_seed(0), shuffle=True)
        torch.manual_seed(3)
        out[decode] = list(loader)
    for (xc, yc), (xg, yg) in zip(out["cpu"], out["gpu"]):
        assert yc.shape == (len(yc), 2) and torch.equal(xc, xg) and torch.equal(yc, yg)


def test_run_data_loader_takes_the_gpu_path_and_says_so(tmp_path, fake_gpu):
    """The suites' loader (``ctx.loader`` → ``RunData.loader``): the accuracy suite's pass gives the
    same per-image results on both paths; the path is logged once, with its reason."""
    from prunelens.models import create_model, spec_for
    from prunelens.pruning.train import evaluate_model
    _tree(tmp_path / "imagenet")
    torch.manual_seed(0)
    model = create_model("small_resnet", 2, widths=[4, 8])
    correct, said = {}, []
    for decode in ("cpu", "gpu"):
        cfg = resolve_runs({"data": {"name": "imagenet", "root": str(tmp_path / "imagenet"), "decode": decode,
                                     "train_crop_size": 24, "val_resize_size": 28, "val_crop_size": 24}})[0]
        data = RunData(cfg.data, 0, num_workers=0, device=torch.device("cpu"), log=said.append)
        loader = data.loader(data.split("val"), 4)
        assert data.loader(data.split("val"), 4) is loader  # kept across levels
        assert isinstance(loader, DeviceDecodedLoader) == (decode == "gpu")
        result = evaluate_model(model, loader, spec_for(model), torch.device("cpu"))
        correct[decode] = result["correct"]
        assert result["loss"] == result["loss"]  # finite
    assert torch.equal(correct["cpu"], correct["gpu"])
    assert said == ["images of imagenet decoded on the CPU (data.decode cpu)",
                    "images of imagenet decoded on the GPU (data.decode gpu)"]


def test_encoded_dataset_reads_bytes_only_and_collates_lists(tmp_path):
    _tree(tmp_path / "imagenet")
    split = _data(tmp_path, "cpu").split("val")
    encoded = split.encoded()
    assert isinstance(encoded, EncodedImages) and len(encoded) == len(split)
    blob, label, path = encoded[3]
    assert blob.dtype == torch.uint8 and blob.dim() == 1 and label == split.inner.samples[3][1]
    assert bytes(blob.tolist()) == open(path, "rb").read()
    blobs, labels, paths = collate_encoded([encoded[0], encoded[6]])
    assert len(blobs) == 2 and labels.tolist() == [0, 1] and len(paths) == 2


def test_choice_of_path(tmp_path):
    _tree(tmp_path / "imagenet")
    cpu = torch.device("cpu")
    auto = _data(tmp_path, "auto").split("val")
    path, why = input_path(auto, cpu)
    assert path == "cpu" and "not CUDA" in why
    assert input_path(_data(tmp_path, "cpu").split("val"), cpu) == ("cpu", "data.decode cpu")
    with pytest.raises(ConfigError, match="data.decode gpu cannot run here: the device is cpu"):
        input_path(_data(tmp_path, "gpu").split("val"), cpu)
    with pytest.raises(ConfigError, match="interpolation nearest"):
        input_path(_data(tmp_path, "gpu", interpolation="nearest").split("val"), torch.device("cuda"))
    subset = torch.utils.data.Subset(auto, [0, 2])
    assert input_path(subset, cpu)[0] == "cpu"
    assert input_path(torch.utils.data.TensorDataset(torch.zeros(2)), cpu) == ("cpu", None)


def test_decode_is_not_part_of_a_runs_identity(tmp_path):
    _tree(tmp_path / "imagenet")
    base = {"data": {"name": "imagenet", "root": str(tmp_path / "imagenet")}}
    hashes = set()
    for decode in ("auto", "cpu", "gpu"):
        cfg = resolve_runs({"data": {**base["data"], "decode": decode}})[0]
        assert cfg.resolved()["data"]["decode"] == decode  # recorded, as the workers are
        hashes.add((cfg.identity_hash(), cfg.experiment_hash()))
    assert len(hashes) == 1


def test_a_pool_trained_on_the_gpu_path_is_the_cpu_paths(tmp_path, fake_gpu):
    """The wiring of training and evaluation: with the same decoder and no workers, a pool built
    with data.decode gpu is bit-identical to one built with cpu (same draws, same order)."""
    from prunelens.pruning.runner import prune_run
    _tree(tmp_path / "imagenet", n=8)
    hashes, said = {}, []
    for decode in ("cpu", "gpu"):
        cfg = resolve_runs({"name": decode, "output_dir": str(tmp_path / "runs"),
                            "model": {"name": "small_resnet", "widths": [4, 8]},
                            "data": {"name": "imagenet", "root": str(tmp_path / "imagenet"), "decode": decode,
                                     "train_crop_size": 16, "val_resize_size": 20, "val_crop_size": 16,
                                     "auto_augment": "ta_wide"},
                            "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "mixup_alpha": 0.2},
                            "prune": {"rounds": 1, "epochs": 1, "min_alive_units": 0.0}})[0]
        pool = prune_run(cfg, log=said.append)
        hashes[decode] = [level.model_sha256 for level in pool.levels]
    assert hashes["cpu"] == hashes["gpu"]
    assert any("decoded on the GPU (data.decode gpu)" in m for m in said)


@pytest.mark.skipif(not torch.cuda.is_available() or device_input.gpu_decode_problem(torch.device("cuda")) is not None,
                    reason="needs CUDA and torchvision.io's GPU JPEG decoder")
def test_nvjpeg_decodes_as_pillow_within_torchvisions_bound():
    rng = np.random.default_rng(4)
    images = [_photo(rng, 375, 500), _photo(rng, 333, 250)]
    decoded = device_input.nvjpeg_decode([_jpeg_bytes(im) for im in images], torch.device("cuda"))
    for image, gpu in zip(images, decoded):
        cpu = pil_decode(_jpeg_bytes(image), "?")
        assert (gpu.cpu().float() - cpu.float()).abs().mean() < 2


@pytest.mark.skipif(not torch.cuda.is_available() or device_input.gpu_decode_problem(torch.device("cuda")) is not None,
                    reason="needs CUDA and torchvision.io's GPU JPEG decoder")
def test_gpu_decoding_leaves_memory_that_queued_kernels_still_read_alone():
    """pytorch/vision#9606's case, as between two training steps: blocks freed on the current
    stream while reductions that read them are still queued behind a long kernel, then a decode.
    nvjpeg_decode decodes on a side stream, whose allocations never take those blocks."""
    rng, dev = np.random.default_rng(5), torch.device("cuda")
    blobs = [_jpeg_bytes(_photo(rng, 375, 500)) for _ in range(8)]
    wrong = 0
    for _ in range(20):
        tensors = [torch.full((375 * 500 * 3,), float(i + 1), device=dev) for i in range(8)]
        torch.cuda.synchronize()
        torch.cuda._sleep(50_000_000)  # a long kernel, so the reductions below stay queued
        sums = [t.sum() for t in tensors]
        del tensors
        device_input.nvjpeg_decode(blobs, dev)
        torch.cuda.synchronize()
        wrong += sum(s.item() != (i + 1) * 375 * 500 * 3 for i, s in enumerate(sums))
    assert wrong == 0


def test_an_empty_image_file_is_named_on_the_gpu_path_as_on_the_cpu_path(tmp_path):
    _tree(tmp_path / "imagenet")
    split = _data(tmp_path, "cpu").split("val")
    path = split.inner.samples[2][0]
    open(path, "wb").close()
    with pytest.raises(DataError, match=f"image file {path} is empty"):
        split.encoded()[2]


def test_results_do_not_depend_on_where_images_are_decoded(tmp_path):
    """data.decode is settable at evaluate time (evaluate --set data.decode=...) and, being where
    the images are decoded rather than which, leaves every result up to date."""
    from prunelens.evaluate import evaluate_run
    from prunelens.pruning.runner import prune_run
    _tree(tmp_path / "imagenet", n=8)
    cfg = resolve_runs({"name": "r", "output_dir": str(tmp_path / "runs"),
                        "model": {"name": "small_resnet", "widths": [4, 8]},
                        "data": {"name": "imagenet", "root": str(tmp_path / "imagenet"),
                                 "train_crop_size": 16, "val_resize_size": 20, "val_crop_size": 16},
                        "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
                        "prune": {"rounds": 1, "epochs": 1, "min_alive_units": 0.0}})[0]
    pool = prune_run(cfg, log=lambda *_: None)
    evaluate_run(pool.run_dir, suites=["accuracy"], log=lambda *_: None)
    said = []
    evaluate_run(pool.run_dir, suites=["accuracy"], overrides=["data.decode=cpu"], log=said.append)
    assert any("up to date" in str(m) for m in said), said
    with pytest.raises(ConfigError, match=r"evaluate\.\*, data\.root and data\.decode overrides"):
        evaluate_run(pool.run_dir, suites=["accuracy"], overrides=["data.train_crop_size=8"])
