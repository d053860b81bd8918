"""torch.distributed for prunelens: the process group from torchrun's environment, rank helpers and
the few collectives the pruning loop and the evaluate driver need.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) prunelens joins the process group
on first use (gloo on CPU; gloo for CPU tensors + NCCL for CUDA tensors when CUDA is there) and
trains with DistributedDataParallel. Launched by plain ``python -m prunelens`` (or torchrun with
one process) nothing here touches torch.distributed and every helper is the identity.

Control messages (masks, outcomes, hashes, barriers) travel on a gloo group, so that
``monitored_barrier`` can name a rank that never arrives. Collectives give up after
``PRUNELENS_DIST_TIMEOUT`` seconds (default 1800): a rank that dies makes the others fail instead
of waiting forever (torchrun also stops every rank as soon as one exits with an error).
"""
from __future__ import annotations

import atexit
import datetime
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from prunelens.errors import PrunelensError

TIMEOUT_ENV = "PRUNELENS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
RESUME_HINT = "Everything up to the last complete epoch is kept: re-run the same command to resume."

_control: dist.ProcessGroup | None = None  # gloo group for control messages (None: the default group)

# fragments of the messages gloo / NCCL / c10d raise when a peer is gone or too slow
_COMM_FAILURES = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
                  "timeout", "nccl", "gloo", "processgroup", "socket", "monitoredbarrier",
                  "failed to recv", "failed to send")


class DistributedError(PrunelensError):
    """The ranks of a distributed run lost each other or disagree (masks, weights, resume point)."""


class RemoteError(PrunelensError):
    """An error raised on rank 0 and mirrored on this rank: rank 0 prints it, the others exit."""


# ---- who am I ------------------------------------------------------------------------------------
def launched() -> bool:
    """True when this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True once this process is in a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


def is_main() -> bool:
    return rank() == 0


def where() -> str:
    """``rank r/W`` for messages (empty in a single-process run)."""
    return f"rank {rank()}/{world_size()}" if active() else ""


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise DistributedError(f"environment variable {TIMEOUT_ENV}={raw!r} must be a positive number "
                               "of seconds (e.g. 1800)")
    return value


# ---- set-up and tear-down ------------------------------------------------------------------------
def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (once per process) and return this rank's device.

    ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; outside torchrun ``device`` is returned
    unchanged and nothing is initialised.
    """
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        global _control
        timeout = datetime.timedelta(seconds=timeout_s())
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        try:
            dist.init_process_group(backend=backend, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"cannot join the torchrun process group ({_first_line(exc)}); "
                                   "check MASTER_ADDR/MASTER_PORT and that every node runs the same "
                                   "torchrun command") from None
        _control = None if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
        atexit.register(shutdown)
    return device


def shutdown() -> None:
    """Leave the process group (idempotent)."""
    global _control
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control = None


def per_rank_batch(global_batch: int, key: str = "train.batch_size") -> int:
    """The per-rank share of a global batch; an error when the ranks cannot share it evenly."""
    world = world_size()
    if global_batch % world:
        lower, upper = global_batch - global_batch % world, global_batch + world - global_batch % world
        raise DistributedError(
            f"{key} {global_batch} is the global batch and must divide evenly among the {world} "
            f"ranks; use {lower} or {upper}, or another number of processes")
    return global_batch // world


def seed_parts() -> tuple:
    """What a per-rank seed adds to the shared seed parts (nothing in a single-process run)."""
    return ("rank", rank()) if active() else ()


# ---- failures ----------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    """The gist of a backend error: its first sentence without the source location gloo/NCCL
    put in front."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^(\[[^\]]*\]:?\s*)+", "", lines[0]) if lines else ""
    return text.split(". ")[0][:200] or type(exc).__name__


def is_comm_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because a peer died or stalled."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _COMM_FAILURES)


@contextmanager
def comm_failures(what: str) -> Iterator[None]:
    """Turn a failed collective inside the block into a :class:`DistributedError` for people."""
    try:
        yield
    except RuntimeError as exc:
        if not active() or isinstance(exc, PrunelensError) or not is_comm_failure(exc):
            raise
        raise DistributedError(
            f"{where()} on {socket.gethostname()} lost contact with the other ranks while {what} "
            f"({_first_line(exc)}). Another rank has probably failed or was killed: its own error "
            f"and torchrun's report name it. {RESUME_HINT}") from exc


# ---- collectives -------------------------------------------------------------------------------------
def barrier(what: str, timeout: float | None = None) -> None:
    """Wait for every rank; a rank missing after ``timeout`` seconds is named in the error."""
    if not active():
        return
    limit = datetime.timedelta(seconds=timeout if timeout is not None else timeout_s())
    try:
        dist.monitored_barrier(group=_control, timeout=limit, wait_all_ranks=True)
    except RuntimeError as exc:
        raise DistributedError(
            f"{where()} on {socket.gethostname()}: not every rank arrived at the barrier ({what}) "
            f"within {limit.total_seconds():g} s ({_first_line(exc)}). {RESUME_HINT}") from exc


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over the ranks (on the tensor's device), returned for chaining."""
    if active():
        with comm_failures("adding up metrics across ranks"):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM,
                            group=_control if tensor.device.type == "cpu" else None)
    return tensor


def broadcast_tensors(tensors: dict[str, torch.Tensor], src: int = 0) -> dict[str, torch.Tensor]:
    """Rank ``src``'s tensors on every rank, in one message.

    Every rank passes tensors of the same names, shapes and dtypes (the receivers' values are
    ignored); the result is on the CPU.
    """
    if not active():
        return tensors
    names = list(tensors)
    raw = [tensors[n].detach().cpu().contiguous().reshape(-1).view(torch.uint8) for n in names]
    flat = torch.cat(raw) if raw else torch.zeros(0, dtype=torch.uint8)
    with comm_failures("receiving the pruning masks from rank 0"):
        dist.broadcast(flat, src=src, group=_control)
    out, start = {}, 0
    for n, r in zip(names, raw):
        t = tensors[n]
        out[n] = flat[start:start + r.numel()].clone().view(t.dtype).reshape(t.shape)
        start += r.numel()
    return out


def broadcast_json(obj: Any = None, src: int = 0) -> Any:
    """Rank ``src``'s JSON-able ``obj`` on every rank (no pickling)."""
    if not active():
        return obj
    blob = json.dumps(obj).encode() if rank() == src else b""
    size = torch.tensor([len(blob)], dtype=torch.int64)
    with comm_failures("receiving a message from rank 0"):
        dist.broadcast(size, src=src, group=_control)
        data = (torch.frombuffer(bytearray(blob), dtype=torch.uint8) if rank() == src
                else torch.zeros(int(size), dtype=torch.uint8))
        dist.broadcast(data, src=src, group=_control)
    return json.loads(data.numpy().tobytes().decode())


def share_from_main(compute: Callable[[], Any]) -> Any:
    """Run ``compute`` on rank 0 only and return its JSON-able result on every rank.

    An error it raises is raised on every rank: on rank 0 as it is, on the others as a
    :class:`RemoteError` with the same message (printed by rank 0 only), so no rank is left
    waiting for a message that never comes.
    """
    if not active():
        return compute()
    outcome, error = None, None
    if is_main():
        try:
            outcome = {"ok": True, "value": compute()}
        except BaseException as exc:  # every rank must hear about it, then rank 0 re-raises
            error = exc
            outcome = {"ok": False, "message": str(exc) if isinstance(exc, PrunelensError)
                       else f"rank 0 failed ({type(exc).__name__}: {_first_line(exc)})"}
    outcome = broadcast_json(outcome)
    if error is not None:
        raise error
    if not outcome["ok"]:
        raise RemoteError(outcome["message"])
    return outcome["value"]


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` (in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def verify_identical(what: str, tensors: dict[str, torch.Tensor], extra: Any = None) -> None:
    """Check that every rank holds the same ``tensors`` (and ``extra``), by sha256 via all_gather.

    A mismatch raises a :class:`DistributedError` naming the ranks that differ from rank 0.
    """
    if not active():
        return
    h = hashlib.sha256((tensors_digest(tensors) + json.dumps(extra, sort_keys=True)).encode())
    mine = torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8)
    gathered = [torch.zeros_like(mine) for _ in range(world_size())]
    with comm_failures(f"comparing the {what} of every rank"):
        dist.all_gather(gathered, mine, group=_control)
    odd = [r for r, g in enumerate(gathered) if not torch.equal(g, gathered[0])]
    if odd:
        raise DistributedError(
            f"the {what} differ between rank 0 and rank(s) {odd}. Every rank must see the same run "
            "folder (across machines: output_dir on a shared filesystem) and run the same prunelens "
            "and torch versions; delete the run's *.partial folders if they were copied between "
            "machines, then re-run")
