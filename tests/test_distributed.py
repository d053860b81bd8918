"""torch.distributed: 2 CPU processes (gloo) started with torchrun train, prune and evaluate like one
process; only rank 0 writes; a killed rank fails the run clearly and a re-run resumes. Plus the
GPU-speed code paths a CPU can check (bf16 autocast, channels_last, compile per level, fused
optimiser, uint8 input, worker seeding)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import tiny_config_dict

from prunelens import distributed
from prunelens.config import resolve_runs
from prunelens.runfolder import RunFolder as Pool
from prunelens.pruning import prune_run

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}",
                PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TQDM_DISABLE="1")


def _torchrun(*args, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *map(str, args)], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _raw(tmp: Path, name: str, model: dict) -> dict:
    raw = tiny_config_dict(tmp, name=name, model=model)
    if model["name"] == "small_resnet":   # slower per step: fewer steps
        raw["data"]["n_train"] = 512
        raw["prune"].update(rounds=1)
        return raw
    raw["model"].pop("widths")
    raw["data"]["n_train"] = 1024           # 16 global batches of 64 per epoch
    raw["train"].update(epochs=3, weight_decay=1e-4)
    raw["prune"].update(epochs=2, rounds=2)
    if name == "lenet_recipe":              # torchvision's recipe options that act across ranks
        raw["train"].update(epochs=2, ra_sampler=True, ra_reps=2, model_ema=True, model_ema_steps=2,
                            clip_grad_norm=1.0, lr_warmup_epochs=1, lr_warmup_method="linear")
        raw["prune"].update(epochs=1, rounds=1)
    return raw


# LeNet has no BatchNorm: two ranks must reproduce one process up to the order of float sums.
LENET = {"name": "lenet5", "in_channels": 3, "input_size": 32}
# BatchNorm normalises over each rank's half batch (as torchvision's reference does by default).
RESNET = {"name": "small_resnet", "widths": [8, 16]}

AUDIT_SCRIPT = r'''
import json, os, sys
from pathlib import Path
root, out = sys.argv[1], Path(sys.argv[2])
events = []
WRITES = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "shutil.copyfile",
          "os.truncate", "os.link", "os.symlink")

def audit(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        paths = [path] if writing else []
    elif event in WRITES:
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
    else:
        return
    for p in paths:
        p = os.fsdecode(p) if not isinstance(p, int) else ""
        if p.startswith(root):
            events.append([event, p])

sys.addaudithook(audit)
from prunelens import distributed
from prunelens.suite import load_configs
from prunelens.pruning import prune_run
for cfg in load_configs(sys.argv[3]):
    prune_run(cfg, log=lambda *_: None)
rank = distributed.rank()
distributed.shutdown()
(out / f"writes_rank{rank}.json").write_text(json.dumps(events))
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same two configs pruned by one process (in this one) and by two ranks under torchrun."""
    tmp = tmp_path_factory.mktemp("dist")
    configs = {"lenet": LENET, "resnet": RESNET, "lenet_recipe": LENET}
    one = {k: prune_run(resolve_runs(_raw(tmp / "one", k, m))[0], log=lambda *_: None).run_dir
           for k, m in configs.items()}
    config = tmp / "two.yaml"
    config.write_text(yaml.safe_dump({"runs": [_raw(tmp / "two", k, m) for k, m in configs.items()]}))
    (tmp / "audit.py").write_text(AUDIT_SCRIPT)
    done = _torchrun(tmp / "audit.py", tmp / "two", tmp, config)
    assert done.returncode == 0, done.stderr[-3000:]
    two = {k: tmp / "two" / "runs" / k for k in configs}
    return SimpleNamespace(tmp=tmp, one=one, two=two,
                           writes=[json.loads((tmp / f"writes_rank{r}.json").read_text()) for r in (0, 1)])


def _hashes(run_dir: Path) -> dict:
    return {lv.index: lv.info["files"] for lv in Pool(run_dir).levels}


def test_two_ranks_give_the_masks_and_weights_of_one_process(runs):
    one, two = Pool(runs.one["lenet"]), Pool(runs.two["lenet"])
    assert two.complete and [lv.index for lv in two.levels] == [lv.index for lv in one.levels] == [0, 1, 2]
    dense_a, dense_b = one.level(0).state_dict(), two.level(0).state_dict()
    for n in dense_a:  # the same 48 global batches: equal up to the order of float sums
        torch.testing.assert_close(dense_b[n], dense_a[n], rtol=0, atol=1e-5)
    first_a, first_b = one.level(1).load_masks(), two.level(1).load_masks()
    assert all(torch.equal(first_a[n], first_b[n]) for n in first_a)
    for a, b in zip(one.levels, two.levels):
        # SGD amplifies those 1e-7 differences over later levels: a handful of weights may flip
        ma, mb = a.load_masks(), b.load_masks()
        agree = sum(int((ma[n] == mb[n]).sum()) for n in ma) / sum(m.numel() for m in ma.values())
        assert agree >= 0.999, (a.index, agree)
        for split in ("train", "val", "test"):
            assert abs(b.metrics[f"{split}_acc"] - a.metrics[f"{split}_acc"]) <= 2 / 64, (a.index, split)
        assert b.info["steps"] == a.info["steps"]


def test_two_ranks_with_repeated_augmentation_and_weight_average_match_one_process(runs):
    """Repeated augmentation deals each global batch out as torchvision's RASampler does, and the
    weight average (the level) and gradient clipping act on the same weights on every rank."""
    one, two = Pool(runs.one["lenet_recipe"]), Pool(runs.two["lenet_recipe"])
    assert [lv.index for lv in two.levels] == [lv.index for lv in one.levels] == [0, 1]
    dense_a, dense_b = one.level(0).state_dict(), two.level(0).state_dict()
    for n in dense_a:
        torch.testing.assert_close(dense_b[n], dense_a[n], rtol=0, atol=1e-5)
    for a, b in zip(one.levels, two.levels):
        ma, mb = a.load_masks(), b.load_masks()
        agree = sum(int((ma[n] == mb[n]).sum()) for n in ma) / sum(m.numel() for m in ma.values())
        assert agree >= 0.999, (a.index, agree)
        assert b.info["steps"] == a.info["steps"] == a.info["epochs"] * 16  # 1024 of 1024 images per epoch
        state = b.state_dict()
        assert all(int((state[n][~m] != 0).sum()) == 0 for n, m in mb.items())


def test_two_ranks_with_batchnorm_match_one_process_within_tolerance(runs):
    one, two = Pool(runs.one["resnet"]), Pool(runs.two["resnet"])
    for a, b in zip(one.levels, two.levels):
        assert b.sparsity == pytest.approx(a.sparsity, abs=1e-9)
        ma, mb = a.load_masks(), b.load_masks()
        agree = sum(int((ma[n] == mb[n]).sum()) for n in ma) / sum(m.numel() for m in ma.values())
        assert agree >= 0.99, (a.index, agree)
        for split in ("train", "val", "test"):  # 64 val/test images: one image is 1.6 %
            assert abs(b.metrics[f"{split}_acc"] - a.metrics[f"{split}_acc"]) <= 0.1, (a.index, split)


def test_only_rank_0_writes(runs):
    writes0, writes1 = runs.writes
    assert writes1 == []
    written = {Path(p).name for _, p in writes0}
    assert {"pool.json", ".lock", "level.json"} <= written
    assert any(e == "os.rename" and p.endswith("level_02") for e, p in writes0)


def _rank_pid(torchrun: subprocess.Popen, rank: int) -> int | None:
    for children in Path(f"/proc/{torchrun.pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(pid)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the rank's pid in /proc")
def test_killing_a_rank_fails_the_run_clearly_and_a_rerun_resumes(runs):
    tmp = runs.tmp / "kill"
    config = tmp / "lenet.yaml"
    tmp.mkdir()
    config.write_text(yaml.safe_dump(_raw(tmp, "lenet", LENET)))
    run_dir = tmp / "runs" / "lenet"
    proc = subprocess.Popen([*TORCHRUN, "-m", "prunelens", "prune", str(config)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (run_dir / "level_00.partial" / "train_state.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 120, "the first epoch never finished"
        time.sleep(0.02)
    victim = _rank_pid(proc, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)  # no hang: the surviving rank gives up at once
    assert proc.returncode != 0
    assert "prunelens: error (rank 0)" in err and "re-run the same command to resume" in err, err[-3000:]
    assert "Signal 9 (SIGKILL)" in err  # torchrun's report names the rank that died
    assert not Pool(run_dir).complete

    again = _torchrun("-m", "prunelens", "prune", config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming after" in again.stdout
    assert again.stdout.count("pool complete") == 1  # rank 0 alone prints
    assert _hashes(run_dir) == _hashes(runs.two["lenet"])  # as if never interrupted
    assert not list(run_dir.glob("*.partial"))


EVALUATE_SCRIPT = r'''
import json, sys
from prunelens import distributed
from prunelens.evaluate import evaluate_run
from prunelens.suite import ReportSection, Suite, register_suite
from prunelens.results import Record

@register_suite
class Probe(Suite):
    """Records which rank evaluated a level, and what after_levels saw."""
    name = "probe"
    section = ReportSection("probe", "Probe", "Which rank evaluated each level?")

    def evaluate_level(self, ctx):
        ctx.level_artifacts.mkdir(parents=True, exist_ok=True)
        with open(ctx.level_artifacts / "calls", "a") as f:
            f.write(f"{distributed.rank()}\n")
        yield Record("probe", "rank", float(distributed.rank()), item=str(ctx.level.index))

    def after_levels(self, ctx):
        present = sorted(p.name for p in ctx.artifacts.glob("level_*.csv"))
        with open(ctx.artifacts / "after_levels", "a") as f:
            f.write(json.dumps({"rank": distributed.rank(), "present": present}) + "\n")

evaluate_run(sys.argv[1], suites=["accuracy", "probe"])
distributed.shutdown()
'''


def test_evaluate_shards_suite_levels_over_ranks_and_merges_once(runs):
    from prunelens.evaluate import evaluate_run
    from prunelens.results import load_results

    two_ranks, one_process = runs.tmp / "eval2", runs.tmp / "eval1"
    shutil.copytree(runs.two["lenet"], two_ranks)
    shutil.copytree(runs.two["lenet"], one_process)
    (runs.tmp / "evaluate.py").write_text(EVALUATE_SCRIPT)
    done = _torchrun(runs.tmp / "evaluate.py", two_ranks)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = two_ranks / "results" / "probe"
    calls = {lv: (probe / f"level_{lv:02d}" / "calls").read_text().split() for lv in (0, 1, 2)}
    assert all(len(c) == 1 for c in calls.values()), calls  # each (suite, level) exactly once
    frame = load_results(two_ranks)
    ranks = frame[frame.suite == "probe"].set_index("item")["value"].to_dict()
    assert ranks == {str(lv): float(c[0]) for lv, c in calls.items()}
    assert set(ranks.values()) == {0.0, 1.0}  # both ranks worked
    after = [json.loads(line) for line in (probe / "after_levels").read_text().splitlines()]
    assert after == [{"rank": 0, "present": ["level_00.csv", "level_01.csv", "level_02.csv"]}]
    assert len(frame) == len(frame.drop_duplicates())
    assert (two_ranks / "results" / "summary.csv").is_file()

    evaluate_run(one_process, suites=["accuracy"], log=lambda *_: None)
    for lv in (0, 1, 2):
        name = f"results/accuracy/level_{lv:02d}.csv"
        assert (two_ranks / name).read_bytes() == (one_process / name).read_bytes()


COLLECTIVES_SCRIPT = r'''
import json, sys, time, torch
from prunelens import distributed
from prunelens.errors import ConfigError

distributed.init(torch.device("cpu"))
r, out = distributed.rank(), {}
sent = {"mask": torch.tensor([True, False, True]), "w": torch.arange(5.0) + 0.5,
        "i": torch.tensor([[7, -8]]), "h": torch.tensor([1.5, 2.5], dtype=torch.bfloat16)}
got = distributed.broadcast_tensors(sent if r == 0 else {k: torch.zeros_like(v) for k, v in sent.items()})
out["broadcast"] = all(torch.equal(got[k], sent[k]) and got[k].dtype == sent[k].dtype for k in sent)
out["json"] = distributed.broadcast_json({"from": [0, "rank"]} if r == 0 else None)
out["sum"] = distributed.all_reduce_sum(torch.tensor([r + 1.0, 10.0 * r])).tolist()
distributed.verify_identical("equal tensors", {"x": torch.ones(3)})
try:
    distributed.verify_identical("test tensors", {"x": torch.full((3,), float(r))})
except distributed.DistributedError as exc:
    out["mismatch"] = str(exc)

def fails():
    raise ConfigError("train.batch_size: bad value")

try:
    distributed.share_from_main(fails)
except Exception as exc:
    out["shared_error"] = [type(exc).__name__, str(exc)]
out["shared"] = distributed.share_from_main(lambda: {"n": 3})
if r == 1:
    time.sleep(4)
try:
    distributed.barrier("a slow rank", timeout=1.5)
except distributed.DistributedError as exc:
    out["barrier"] = str(exc)
open(f"{sys.argv[1]}/rank{r}.json", "w").write(json.dumps(out))
'''


def test_collectives_messages_and_clear_errors(tmp_path):
    (tmp_path / "c.py").write_text(COLLECTIVES_SCRIPT)
    done = _torchrun(tmp_path / "c.py", tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, o in enumerate(out):
        assert o["broadcast"] and o["json"] == {"from": [0, "rank"]} and o["sum"] == [3.0, 10.0]
        assert "test tensors differ between rank 0 and rank(s) [1]" in o["mismatch"]
        assert o["shared"] == {"n": 3}
        assert o["shared_error"] == [["ConfigError", "RemoteError"][r], "train.batch_size: bad value"]
    assert "rank 0/2" in out[0]["barrier"] and "(a slow rank) within 1.5 s" in out[0]["barrier"]
    assert "Ranks 1 failed to pass" in out[0]["barrier"]  # gloo names the rank that did not arrive


# ---- in one process: data sharding, seeds, messages ---------------------------------------------
def _fake_ranks(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "active", lambda: world > 1)
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full((1,), float(i)), i


def _loaders(tmp_path, n_train: int, batch: int, num_workers: int = 0):
    from prunelens.pruning.runner import _Loaders
    cfg = resolve_runs(tiny_config_dict(tmp_path, train={"batch_size": batch, "num_workers": num_workers}))[0]
    data = SimpleNamespace(split=lambda s: _Indexed(n_train if s == "train" else 10),
                           entry=SimpleNamespace(splits=("train", "val", "test")))
    return _Loaders(cfg, data)


def test_each_step_of_two_ranks_is_the_global_batch_of_one_process(tmp_path, monkeypatch):
    n, batch, level, epoch = 203, 16, 1, 2
    single = _loaders(tmp_path, n, batch)
    steps = [y.tolist() for _, y in single.for_epoch(level)(epoch)]
    assert [i for s in steps for i in s] == single.epoch_order(level, epoch)[:len(steps) * batch]
    shards, evals = [], []
    for r in (0, 1):
        _fake_ranks(monkeypatch, r, 2)
        loaders = _loaders(tmp_path, n, batch)
        assert loaders.steps_per_epoch == single.steps_per_epoch == n // batch
        shards.append([y.tolist() for _, y in loaders.for_epoch(level)(epoch)])
        evals.append([int(i) for _, y in loaders.eval["test"] for i in y])
    assert len(shards[0]) == len(shards[1]) == len(steps)
    for i, step in enumerate(steps):
        assert len(shards[0][i]) == len(shards[1][i]) == batch // 2
        assert sorted(shards[0][i] + shards[1][i]) == sorted(step)
    assert sorted(evals[0] + evals[1]) == list(range(10)) and not set(evals[0]) & set(evals[1])


def test_global_batch_must_divide_among_ranks(tmp_path, monkeypatch):
    _fake_ranks(monkeypatch, 0, 3)
    with pytest.raises(distributed.DistributedError,
                       match=r"train.batch_size 64 is the global batch .* 3 ranks; use 63 or 66"):
        _loaders(tmp_path, 100, 64)


def test_per_rank_seeds_differ_and_single_process_seeds_are_unchanged(monkeypatch):
    assert distributed.seed_parts() == ()
    _fake_ranks(monkeypatch, 1, 2)
    assert distributed.seed_parts() == ("rank", 1)


def test_helpers_are_the_identity_in_one_process():
    t = {"a": torch.ones(2)}
    assert distributed.broadcast_tensors(t) is t
    assert distributed.broadcast_json({"x": 1}) == {"x": 1}
    assert distributed.share_from_main(lambda: 5) == 5
    distributed.verify_identical("x", t)
    distributed.barrier("x")
    assert distributed.all_reduce_sum(torch.tensor([2.0])).item() == 2.0
    assert distributed.per_rank_batch(7) == 7 and distributed.is_main() and distributed.where() == ""


def test_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "12.5")
    assert distributed.timeout_s() == 12.5
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(distributed.DistributedError, match="PRUNELENS_DIST_TIMEOUT='soon'"):
        distributed.timeout_s()


def test_worker_seeds_and_order_do_not_depend_on_earlier_epochs(tmp_path):
    """Resuming at epoch 1 must see the data of an uninterrupted epoch 1 (persistent workers would
    skip the seed draw of a fresh iterator and shuffle differently)."""
    class Seeded(_Indexed):
        def __getitem__(self, i):
            return torch.tensor([float(torch.utils.data.get_worker_info().seed % 1000)]), i

    def epoch_1(skip_epoch_0: bool):
        from prunelens.pruning.runner import _Loaders
        cfg = resolve_runs(tiny_config_dict(tmp_path, train={"batch_size": 8, "num_workers": 1}))[0]
        data = SimpleNamespace(split=lambda s: Seeded(32), entry=SimpleNamespace(splits=("train",)))
        loaders = _Loaders(cfg, data)
        if not skip_epoch_0:
            list(loaders.for_epoch(0)(0))
        return [(x.tolist(), y.tolist()) for x, y in loaders.for_epoch(0)(1)]

    assert epoch_1(skip_epoch_0=True) == epoch_1(skip_epoch_0=False)


# ---- GPU-speed paths, checked on the CPU ------------------------------------------------------------
def _tiny_training(tmp_path, model_name="small_resnet", uint8=True, **train):
    from prunelens.models import create_model, spec_for
    from prunelens.pruning.masks import Masker, dense_masks, magnitude_masks, prunable_parameters
    from prunelens.pruning.schedule import lr_schedule
    from prunelens.pruning.train import Checkpoint, TrainPlan
    cfg = resolve_runs(tiny_config_dict(tmp_path, train=train))[0]
    torch.manual_seed(0)
    kw = {"widths": [8, 16]} if model_name == "small_resnet" else {"in_channels": 3, "input_size": 32}
    model = create_model(model_name, 4, **kw)
    params = prunable_parameters(model)
    masks = magnitude_masks({n: p.detach() for n, p in params.items()}, dense_masks(params), 0.5)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 4, (64,), generator=g)
    dataset = torch.utils.data.TensorDataset(images if uint8 else images.float() / 255, labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16)
    plan = TrainPlan(1, lr_schedule(cfg.train, 1, len(loader)), cfg.train.optimizer)
    return SimpleNamespace(model=model, spec=spec_for(model), loader=loader, plan=plan, cfg=cfg,
                           masker=Masker(params, masks), masks=masks, params=params,
                           checkpoint=Checkpoint.in_folder(tmp_path / "ckpt"))


def _train(t, **kw) -> dict:
    from prunelens.pruning.train import train_level
    t.checkpoint.directory.mkdir(parents=True, exist_ok=True)
    return train_level(t.model, t.spec, lambda e: t.loader, t.plan, t.cfg.train, torch.device("cpu"),
                       (0, "level", 1), t.checkpoint, t.masker, **kw)


def test_bf16_autocast_trains_in_bf16_and_keeps_fp32_weights_and_masks(tmp_path):
    t = _tiny_training(tmp_path, amp=True)
    seen = []
    t.model.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    stats = _train(t)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    assert torch.isfinite(torch.tensor(stats["train_loss"]))
    for n, p in t.params.items():
        assert torch.all(p[~t.masks[n]] == 0)


def test_channels_last_reaches_weights_and_inputs(tmp_path):
    t = _tiny_training(tmp_path, channels_last=True)
    seen = []
    t.model.conv1.register_forward_pre_hook(
        lambda m, i: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    _train(t)
    assert seen and all(seen)
    assert t.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_uint8_batches_are_scaled_on_the_device_like_float_batches(tmp_path):
    from prunelens.pruning.train import _to_device
    t = _tiny_training(tmp_path)
    x, y = next(iter(t.loader))
    a, _ = _to_device(x, y, t.spec, torch.device("cpu"), False)
    b, _ = _to_device(x.float() / 255, y, t.spec, torch.device("cpu"), False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("channels", [3, 1])
def test_normalisation_constants_are_made_once_per_device(channels):
    """spec.normalize must not copy its mean/std to the device at every call (a host sync on CUDA)."""
    from prunelens.models import create_model, spec_for
    from prunelens.models.spec import IMAGENET_MEAN, IMAGENET_STD, _stats
    spec = spec_for(create_model("small_resnet", 4, widths=[8, 16]))
    x = torch.rand(4, channels, 8, 8)
    spec.normalize(x)
    hits = _stats.cache_info().hits
    y = spec.normalize(x)
    assert _stats.cache_info().hits == hits + 1
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    if channels == 1:
        mean, std = mean.mean().expand(1), std.mean().expand(1)
    assert torch.equal(y, (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))


def test_fused_optimizer_steps_like_the_default_one(tmp_path):
    from prunelens.pruning.train import make_optimizer
    for kind in ("sgd", "adamw"):
        t = _tiny_training(tmp_path / kind, model_name="lenet5", optimizer=kind, lr=0.01)
        twin = _tiny_training(tmp_path / kind, model_name="lenet5", optimizer=kind, lr=0.01).model
        x = t.spec.normalize(torch.rand(8, 3, 32, 32))
        y = torch.arange(8) % 4
        for model, fused in ((t.model, False), (twin, True)):
            opt = make_optimizer(model, t.cfg.train, 0.01, fused=fused)
            for _ in range(3):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        for p, q in zip(t.model.parameters(), twin.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_compile_is_redone_for_every_level(tiny_config, monkeypatch):
    from prunelens.pruning import train
    calls = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: calls.append("reset"))
    monkeypatch.setattr(torch, "compile", lambda model, *a, **kw: calls.append("compile") or model)
    cfg = tiny_config(train={"compile": True}).train
    model = torch.nn.Linear(2, 2)
    assert train.training_module(model, cfg, torch.device("cuda")) is model  # (faked) compiled
    assert calls == ["reset", "compile"]
    assert train.training_module(model, cfg, torch.device("cpu")) is model and len(calls) == 2

    made = []
    real = train.training_module
    monkeypatch.setattr(train, "training_module", lambda *a: made.append(a[0]) or real(*a))
    prune_run(tiny_config(train={"epochs": 1, "max_steps_per_epoch": 1}, prune={"rounds": 2}),
              log=lambda *_: None)
    assert len(made) == 3  # levels 0, 1, 2: a fresh step module (and compile) after every round


def test_compile_is_ignored_on_the_cpu(tiny_config):
    """torch 2.13's CPU Inductor gets LeNet-5's conv gradients wrong: on the CPU we train eagerly
    (same pool, bit for bit, as without compile)."""
    base = {"model": {"name": "fcn", "input_shape": [3, 32, 32], "widths": [16]},
            "train": {"epochs": 1, "max_steps_per_epoch": 2}, "prune": {"rounds": 1}}
    eager = prune_run(tiny_config(**base), log=lambda *_: None)
    shutil.move(eager.run_dir, eager.run_dir.with_name("eager"))
    said = []
    compiled = prune_run(tiny_config(**{**base, "train": {**base["train"], "compile": True}}), log=said.append)
    assert any("train.compile applies on CUDA only" in m for m in said)
    assert _hashes(compiled.run_dir) == _hashes(eager.run_dir.with_name("eager"))
