"""torchvision's training-recipe options (references/classification/train.py): weight-decay groups,
warm-up, MixUp / CutMix, the weight average (EMA), repeated augmentation, the ImageNet presets,
the paper configs that use them, and resuming with all of them on."""
from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config_dict
from torch import nn

from prunelens import distributed
from prunelens._compat import torchvision
from prunelens.config import TrainConfig, resolve_runs
from prunelens.suite import load_configs
from prunelens.errors import ConfigError
from prunelens.models import create_model
from prunelens.runfolder import RunFolder as Pool
from prunelens.pruning import prune_run
from prunelens.pruning.masks import Masker, magnitude_masks
from prunelens.pruning.recipe import ModelEMA
from prunelens.pruning.train import make_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "prunelens" / "configs" / "paper"
RECIPE = {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "model_ema": True, "model_ema_steps": 1,
          "ra_sampler": True, "ra_reps": 2, "clip_grad_norm": 1.0, "label_smoothing": 0.1,
          "lr_warmup_epochs": 1, "lr_warmup_method": "linear", "norm_weight_decay": 0.0,
          "bias_weight_decay": 0.0}


def _quiet(*_a, **_k) -> None:
    pass


def _recipe_config(tmp_path, epochs: int = 2, **train):
    """A tiny run (16 px, 256 training images: one repeated-augmentation epoch) with the recipe on."""
    raw = tiny_config_dict(tmp_path, train={**RECIPE, "batch_size": 32, "max_steps_per_epoch": 2,
                                            "epochs": epochs, **train},
                           prune={"rounds": 1, "epochs": epochs})
    raw["data"].update(image_size=16, n_val=32, n_test=32)
    return resolve_runs(raw)[0]


def _hashes(run_dir) -> dict:
    return {lv.index: lv.info["files"] for lv in Pool(run_dir).levels}


# ---- weight decay and warm-up: torchvision's definitions ------------------------------------------
def _decays(optimizer) -> dict[int, float]:
    return {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}


def test_weight_decay_groups_follow_torchvisions_set_weight_decay():
    torchvision()
    from torchvision.ops._utils import split_normalization_params
    vit = create_model("small_vit", 4, image_size=16, patch_size=8, num_layers=1, num_heads=2,
                       hidden_dim=8, mlp_dim=16)
    cfg = TrainConfig(optimizer="adamw", weight_decay=0.3, norm_weight_decay=0.01, bias_weight_decay=0.02,
                      transformer_embedding_decay=0.03)
    decay = _decays(make_optimizer(vit, cfg, 1e-3))
    norms = {id(p) for p in split_normalization_params(vit)[0]}
    assert len(decay) == len(list(vit.parameters())) and norms
    for name, p in vit.named_parameters():
        if name.endswith(".bias"):          # the bias key first, norm layers' biases included
            expected = 0.02
        elif name == "class_token":         # ViT's position embedding is not matched by torchvision
            expected = 0.03
        elif id(p) in norms:
            expected = 0.01
        else:
            expected = 0.3
        assert decay[id(p)] == expected, name
    assert decay[id(vit.encoder.pos_embedding)] == 0.3

    resnet = create_model("small_resnet", 4, widths=[8, 16])
    decay = _decays(make_optimizer(resnet, TrainConfig(weight_decay=1e-4, norm_weight_decay=0.0), 0.1))
    for module in resnet.modules():
        for p in module.parameters(recurse=False):  # unset bias decay: BatchNorm biases are norm params
            assert decay[id(p)] == (0.0 if isinstance(module, nn.BatchNorm2d) else 1e-4)
    plain = make_optimizer(resnet, TrainConfig(weight_decay=1e-4), 0.1)
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 1e-4


def test_transformer_embeddings_are_swin_v1_bias_tables_and_nothing_of_swin_v2():
    tv = torchvision()
    swin = tv.models.swin_transformer
    v1 = swin.SwinTransformer([4, 4], 8, [1, 1], [1, 1], [2, 2], num_classes=4)
    v2 = swin.SwinTransformer([4, 4], 8, [1, 1], [1, 1], [2, 2], num_classes=4,
                              block=swin.SwinTransformerBlockV2, downsample_layer=swin.PatchMergingV2)
    cfg = TrainConfig(optimizer="adamw", weight_decay=0.05, transformer_embedding_decay=0.0)
    d1, d2 = _decays(make_optimizer(v1, cfg, 1e-3)), _decays(make_optimizer(v2, cfg, 1e-3))
    zero = [n for n, p in v1.named_parameters() if d1[id(p)] == 0.0]
    assert zero == ["features.1.0.attn.relative_position_bias_table",
                    "features.3.0.attn.relative_position_bias_table"]
    assert set(d2.values()) == {0.05}


@pytest.mark.parametrize("method", ["linear", "constant"])
def test_warmup_and_cosine_equal_torchvisions_schedulers_at_every_epoch(method):
    from torch.optim import lr_scheduler as S

    from prunelens.pruning.schedule import lr_schedule
    epochs, warmup, spe = 12, 3, 5
    cfg = TrainConfig(lr=0.2, schedule="cosine", lr_min=0.004, lr_warmup_epochs=warmup,
                      lr_warmup_method=method, lr_warmup_decay=0.033)
    ours = lr_schedule(cfg, epochs, spe)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    first = (S.LinearLR(opt, start_factor=0.033, total_iters=warmup) if method == "linear"
             else S.ConstantLR(opt, factor=0.033, total_iters=warmup))
    main = S.CosineAnnealingLR(opt, T_max=epochs - warmup, eta_min=0.004)
    sched = S.SequentialLR(opt, [first, main], milestones=[warmup])
    for epoch in range(epochs):  # the reference steps its scheduler once per epoch
        assert ours(epoch * spe) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), epoch
        opt.step()
        sched.step()
    inside = [ours(s) for s in range(spe)]  # within an epoch: linear rises, constant holds
    assert (inside == sorted(inside) and inside[0] < inside[-1]) if method == "linear" else len(set(inside)) == 1


def test_gradient_clipping_clips_the_pruned_networks_gradient_with_soft_targets():
    """One step of train_epoch against the same step by hand: soft targets in the loss, pruned
    gradient entries zeroed before the norm is taken, then the reference's clip_grad_norm_."""
    import copy

    import torch.nn.functional as F

    from prunelens.models import spec_for
    from prunelens.pruning.masks import dense_masks, prunable_parameters
    from prunelens.pruning.schedule import LRSchedule
    from prunelens.pruning.train import TrainPlan, train_epoch
    torch.manual_seed(0)
    model = create_model("fcn", 3, input_shape=[1, 2, 2], widths=[5])
    twin = copy.deepcopy(model)
    params = prunable_parameters(model)
    masks = magnitude_masks({n: p.detach() for n, p in params.items()}, dense_masks(params), 0.5)
    cfg = TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.0, clip_grad_norm=0.05, label_smoothing=0.1)
    x = torch.rand(4, 1, 2, 2)
    y = torch.softmax(torch.randn(4, 3), 1)  # mixed targets are probabilities
    masker = Masker(params, masks)
    optimizer = make_optimizer(model, cfg, cfg.lr)
    masker.attach(optimizer).apply_()
    plan = TrainPlan(1, LRSchedule(0.1, 1, 1, kind="constant"), "sgd")
    stats = train_epoch(model, model, spec_for(model), [(x, y)], optimizer, plan, cfg,
                        torch.device("cpu"), 0, masker=masker)

    tparams = dict(twin.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            tparams[n].mul_(m)
    loss = F.cross_entropy(twin(spec_for(twin).normalize(x)), y, label_smoothing=0.1)
    loss.backward()
    with torch.no_grad():
        for n, m in masks.items():
            tparams[n].grad.mul_(m)
    norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.05)
    assert norm > 0.05  # the clip acts
    with torch.no_grad():
        for n, p in tparams.items():
            p.sub_(0.1 * p.grad)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, tparams[n], rtol=0, atol=1e-7)
    assert stats["train_loss"] == pytest.approx(loss.detach().item(), rel=1e-6)


# ---- exponential moving average ----------------------------------------------------------------------
def test_ema_decay_adjustment_update_warmup_and_masks():
    cfg = TrainConfig(batch_size=64, model_ema_steps=4, model_ema_decay=0.99998, lr_warmup_epochs=1)
    alpha = min(1.0, (1 - 0.99998) * 64 * 4 / 2)  # torchvision: global batch x steps / epochs
    model = nn.Linear(3, 2)
    keep = torch.tensor([[True, False, True], [False, True, True]])
    masker = Masker({"weight": model.weight}, {"weight": keep})
    ema = ModelEMA(model, cfg, epochs=2, masker=masker)
    assert ema.decay == pytest.approx(1 - alpha, rel=1e-12)
    weights = [torch.randn(2, 3, generator=torch.Generator().manual_seed(i)) for i in range(4)]

    def update(w, step, epoch):
        with torch.no_grad():
            model.weight.copy_(w)  # unmasked on purpose: the average must stay sparse regardless
        ema.update(model, step, epoch)
        return ema.averaged.module.weight.detach().clone()

    assert torch.equal(update(weights[0], 0, 0), weights[0] * keep)   # warm-up: a copy
    assert torch.equal(update(weights[1], 4, 0), weights[1] * keep)   # still a copy
    assert torch.equal(update(weights[2], 5, 1), weights[1] * keep)   # not a multiple of 4: no update
    assert torch.equal(update(weights[2], 0, 1), weights[2] * keep)   # after warm-up: first average copies
    got = update(weights[3], 8, 1)
    expected = (ema.decay * weights[2] + (1 - ema.decay) * weights[3]) * keep
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert torch.all(got[~keep] == 0) and torch.all(got[keep] != 0)


def test_levels_are_the_masked_weight_average_and_the_next_round_ranks_them(tmp_path, monkeypatch):
    from prunelens.pruning import train
    cfg = _recipe_config(tmp_path, mixup_alpha=0.0, cutmix_alpha=0.0)
    saved = {}
    real_save = train.Checkpoint.save

    def save(self, model, optimizer, info, ema=None):
        saved[self.directory.name] = ({k: v.clone() for k, v in model.state_dict().items()},
                                      {k: v.clone() for k, v in ema.averaged.module.state_dict().items()})
        return real_save(self, model, optimizer, info, ema)

    monkeypatch.setattr(train.Checkpoint, "save", save)
    pool = prune_run(cfg, log=_quiet)
    for lv in pool.levels:
        state, masks = lv.state_dict(), lv.load_masks()
        live, average = saved[f"level_{lv.index:02d}.partial"]
        assert all(torch.equal(state[k], average[k]) for k in state)  # the level is the average …
        assert not all(torch.equal(state[k], live[k]) for k in state)  # … not the last weights
        for name, mask in masks.items():
            assert int((state[name][~mask] != 0).sum()) == 0, (lv.index, name)
    level0, level1 = pool.levels
    prunable = level1.load_masks()
    dense = level0.state_dict()
    expected = magnitude_masks({n: dense[n] for n in prunable},
                               {n: torch.ones_like(m) for n, m in prunable.items()}, cfg.prune.rate)
    assert all(torch.equal(expected[n], prunable[n]) for n in prunable)


# ---- MixUp / CutMix ------------------------------------------------------------------------------------
def test_mixed_batches_equal_torchvisions_mixup_cutmix_under_the_same_seed(tmp_path):
    torchvision()
    from torch.utils.data import default_collate
    from torchvision.transforms import v2

    from prunelens.data.provider import RunData
    from prunelens.pruning.runner import _Loaders
    cfg = _recipe_config(tmp_path, ra_sampler=False)
    loaders = _Loaders(cfg, RunData(cfg.data, cfg.seed), num_classes=4)
    train_set, order = loaders.train_set, loaders.epoch_order(0, 0)
    reference = v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=4), v2.CutMix(alpha=1.0, num_classes=4)])
    loader = loaders.for_epoch(0)(0)
    torch.manual_seed(123)
    batches = [b for _, b in zip(range(3), loader)]
    torch.manual_seed(123)
    for i, (x, y) in enumerate(batches):
        x0, y0 = default_collate([train_set[j] for j in order[i * 32:(i + 1) * 32]])
        if x0.dtype == torch.uint8:
            x0 = x0.float() / 255
        rx, ry = reference(x0, y0)
        assert torch.equal(x, rx) and torch.equal(y, ry)
        assert y.shape == (32, 4) and torch.allclose(y.sum(1), torch.ones(32))
    assert any((y.max(1).values < 1).any() for _, y in batches)  # targets really are mixed


# ---- repeated augmentation --------------------------------------------------------------------------
def _rasampler_indices(perm: list[int], reps: int, world: int, rank: int) -> list[int]:
    """What torchvision's references/classification/sampler.py RASampler yields on one rank for a
    given permutation (restated from its definition)."""
    n = len(perm)
    per_rank = math.ceil(n * reps / world)
    repeated = [i for i in perm for _ in range(reps)]
    repeated += repeated[: per_rank * world - len(repeated)]
    return repeated[rank::world][: (n // 256 * 256) // world]


class _Indexed(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 600

    def __getitem__(self, i: int):
        return torch.zeros(1), i


def test_repeated_augmentation_gives_each_rank_its_rasampler_share(tmp_path, monkeypatch):
    from prunelens.pruning.runner import _Loaders
    cfg = resolve_runs(tiny_config_dict(tmp_path, train={"batch_size": 48, "ra_sampler": True, "ra_reps": 3}))[0]
    data = SimpleNamespace(split=lambda s: _Indexed(), entry=SimpleNamespace(splits=("train",)))
    level, epoch = 2, 5
    single = _Loaders(cfg, data)
    steps = [y.tolist() for _, y in single.for_epoch(level)(epoch)]
    single._seed(level, epoch)
    perm = torch.randperm(600, generator=single.generator).tolist()
    flat = [i for s in steps for i in s]
    assert single.steps_per_epoch == len(steps) == 512 // 48  # 600 images: 512 samples per epoch
    assert flat == _rasampler_indices(perm, 3, 1, 0)[:len(flat)]
    for world in (2, 3):
        shares = []
        for r in range(world):
            monkeypatch.setattr(distributed, "active", lambda: True)
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            monkeypatch.setattr(distributed, "world_size", lambda w=world: w)
            share = [y.tolist() for _, y in _Loaders(cfg, data).for_epoch(level)(epoch)]
            got = [i for s in share for i in s]
            assert len(share) == len(steps) and got == _rasampler_indices(perm, 3, world, r)[:len(got)]
            if world == 3:  # as many ranks as repetitions: each rank sees every image once
                assert got == perm[:len(got)]
            shares.append(share)
        for i, step in enumerate(steps):  # step i of the ranks is step i of one process
            assert sorted(sum((s[i] for s in shares), [])) == sorted(step)


def test_repeated_augmentation_needs_256_images(tmp_path):
    raw = tiny_config_dict(tmp_path, train={"ra_sampler": True})
    raw["data"]["n_train"] = 200
    with pytest.raises(ConfigError, match="0 of the 200 training samples per epoch"):
        prune_run(resolve_runs(raw)[0], log=_quiet)


# ---- resume --------------------------------------------------------------------------------------
class _Cut(Exception):
    pass


def test_resume_is_bit_identical_with_mixing_ema_and_repeated_augmentation(tmp_path, monkeypatch):
    from prunelens.pruning import train
    # 3 epochs: the cut comes after an epoch past the warm-up, whose weight average carries over
    reference = prune_run(_recipe_config(tmp_path / "ref", epochs=3), log=_quiet)
    cfg = _recipe_config(tmp_path / "cut", epochs=3)
    real_epoch, calls = train.train_epoch, []

    def interrupted(*args, **kwargs):  # dies in the last epoch of each level, after a checkpoint
        calls.append(args[8])
        if len(calls) in (3, 7):
            raise _Cut
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", interrupted)
    for _ in range(2):
        with pytest.raises(_Cut):
            prune_run(cfg, log=_quiet)
    said = []
    resumed = prune_run(cfg, log=said.append)
    assert calls == [0, 1, 2, 2, 0, 1, 2, 2]  # per level: 0, 1, cut, 2 resumed
    assert sum("resuming after epoch 2" in m for m in said) == 1
    assert _hashes(resumed.run_dir) == _hashes(reference.run_dir)


# ---- the ImageNet presets -----------------------------------------------------------------------------
def test_random_erasing_erases_to_zero_after_normalisation_as_the_reference(tmp_path):
    import numpy as np
    from PIL import Image

    from prunelens.data.imagefolder import ImageFolderOptions, transforms
    from prunelens.models import spec_for
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    options = ImageFolderOptions(root=str(tmp_path), train_crop_size=32, val_resize_size=40,
                                 val_crop_size=36, interpolation="bicubic", auto_augment="ta_wide",
                                 random_erase=1.0)
    torch.manual_seed(0)
    x = transforms(options, train=True)(image)
    spec = spec_for(create_model("resnet18", 4))
    normalised = spec.normalize(x[None])[0]
    erased = (normalised == 0).all(0)
    assert x.shape == (3, 32, 32) and 0 < int(erased.sum()) < 32 * 32
    assert transforms(options, train=False)(image).shape == (3, 36, 36)


# ---- configs -------------------------------------------------------------------------------------
def test_renamed_keys_name_their_new_name(tmp_path):
    for section, old, new in (("train", "grad_clip", "'clip_grad_norm'"),
                              ("train", "warmup_epochs", "'lr_warmup_epochs'"),
                              ("data", "image_size", "'train_crop_size' and 'val_crop_size'"),
                              ("data", "resize_size", "'val_resize_size'")):
        extra = {"name": "imagenet", "root": str(tmp_path)} if section == "data" else {}
        with pytest.raises(ConfigError, match=f"^{section}: '{old}' is now {new}: rename the key"):
            resolve_runs({section: {**extra, old: 1}})


PAPER = {
    "resnet18_imagenet.yaml": dict(epochs=90, batch_size=256, optimizer="sgd", lr=0.1, weight_decay=1e-4,
                                   schedule="step", milestones=[30, 60], mixup_alpha=0.0, model_ema=False,
                                   ra_sampler=False, clip_grad_norm=None, amp=False),
    "resnet50_imagenet.yaml": dict(epochs=90, batch_size=256, optimizer="sgd", lr=0.1, weight_decay=1e-4,
                                   schedule="step", milestones=[30, 60], mixup_alpha=0.0, model_ema=False,
                                   ra_sampler=False, clip_grad_norm=None, amp=False),
    "vit_b_32_imagenet.yaml": dict(epochs=300, batch_size=4096, optimizer="adamw", lr=0.003, weight_decay=0.3,
                                   schedule="cosine", lr_warmup_method="linear", lr_warmup_epochs=30,
                                   lr_warmup_decay=0.033, label_smoothing=0.11, mixup_alpha=0.2,
                                   cutmix_alpha=1.0, clip_grad_norm=1.0, ra_sampler=True, ra_reps=3,
                                   model_ema=True, model_ema_steps=32, model_ema_decay=0.99998),
    "swin_v2_t_imagenet.yaml": dict(epochs=300, batch_size=1024, optimizer="adamw", lr=0.001, weight_decay=0.05,
                                    norm_weight_decay=0.0, bias_weight_decay=0.0,
                                    transformer_embedding_decay=0.0, schedule="cosine", lr_min=1e-5,
                                    lr_warmup_method="linear", lr_warmup_epochs=20, lr_warmup_decay=0.01,
                                    label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0,
                                    clip_grad_norm=5.0, ra_sampler=True, ra_reps=4, model_ema=True),
}
PAPER_DATA = {"resnet18_imagenet.yaml": (224, 256, 224, "bilinear", None, 0.0),
              "resnet50_imagenet.yaml": (224, 256, 224, "bilinear", None, 0.0),
              "vit_b_32_imagenet.yaml": (224, 256, 224, "bilinear", "imagenet", 0.0),
              "swin_v2_t_imagenet.yaml": (256, 256, 256, "bicubic", "ta_wide", 0.25)}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_load_validate_and_carry_torchvisions_recipe(name, tmp_path):
    path = CONFIGS / name
    cfg = load_configs(path, [f"data.root={tmp_path}"])[0]
    for key, value in PAPER[name].items():
        assert getattr(cfg.train, key) == value, key
    o = cfg.data.options
    assert (o.train_crop_size, o.val_resize_size, o.val_crop_size, o.interpolation, o.auto_augment,
            o.random_erase) == PAPER_DATA[name]
    assert cfg.prune.epochs == cfg.train.epochs  # the fast path (train.epochs 0) keeps LRR's replays
    text = path.read_text()
    assert "Not reproduced" not in text
    section = None
    for line in text.splitlines():  # every recipe value names its source
        if re.match(r"^\w", line):
            section = line.split(":")[0]
        elif section in ("train", "data") and not re.match(r"^\s+(root|device|num_workers|channels_last|name):", line):
            assert re.search(r"# \[(README|train\.py)\]", line), line


# ---- the fast path: pretrained weights from the torch hub cache ------------------------------------
def test_pretrained_weights_from_the_hub_cache_skip_training_level_0(tmp_path, monkeypatch):
    tv = torchvision()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = tv.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.manual_seed(7)
    pretrained = tv.models.resnet18(num_classes=4).state_dict()
    torch.save(pretrained, cached)
    # prune.epochs set: its default is train.epochs, which would leave the levels untrained too.
    # Only conv1 and fc are pruned, and SGD keeps no momentum: 11M weights stay cheap to rank and hash
    raw = tiny_config_dict(tmp_path, model={"name": "resnet18", "weights": "IMAGENET1K_V1"},
                           train={"epochs": 0, "max_steps_per_epoch": 1, "momentum": 0.0},
                           prune={"rounds": 1, "epochs": 1, "exclude": ["layer*"]})
    raw["model"].pop("widths")
    raw["data"].update(image_size=16, n_train=64, n_val=16, n_test=16)
    raw["train"]["batch_size"] = 16
    pool = prune_run(resolve_runs(raw)[0], log=_quiet)
    level0, level1 = pool.levels
    assert level0.info["epochs"] == level0.info["steps"] == 0
    state = level0.state_dict()  # read (and its sha256 checked) once
    assert all(torch.equal(state[k], v) for k, v in pretrained.items())
    assert level1.info["steps"] == 1 and level1.sparsity == pytest.approx(0.5, abs=1e-3)
    raw["prune"]["retrain"] = "rewind"
    raw["name"] = "rewind"
    with pytest.raises(ConfigError, match="rewind replays the dense training, and train.epochs is 0"):
        prune_run(resolve_runs(raw)[0], log=_quiet)
