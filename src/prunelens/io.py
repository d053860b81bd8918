"""Atomic writes and hashes: every artifact is written to a temporary file and renamed.

Files are created with the permissions the umask allows (as ``open`` would), not the 0600 of a
temporary file, so a colleague can read a shared run folder. A full disk raises ``OSError``
(ENOSPC) naming the file, whichever library was writing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` with the permissions a new file gets under the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, new_file_mode())
    return fd, tmp


def new_file_mode() -> int:
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def naming(path: str | Path):
    """An OSError raised inside without a file name (a full disk during ``write``) names ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    with naming(path):
        fd, tmp = _temporary(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (contiguous CPU copies of the tensors)."""
    path = Path(path)
    with naming(path):
        fd, tmp = _temporary(path)
        os.close(fd)
        try:
            try:
                save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp,
                          metadata=metadata)
            except SafetensorError as exc:
                raise _as_os_error(exc, path) from None
            os.chmod(tmp, new_file_mode())  # safetensors writes the file anew
            _canonical_header(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _canonical_header(path: str) -> None:
    """Rewrite a safetensors header with its metadata keys sorted. The writer emits the metadata
    map in a different order in every process, so equal content would give files whose bytes and
    sha256 differ; sorted, a file's bytes depend on its content alone. The header keeps its length
    (the same entries, reordered), so the tensor data is not moved."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        raw = f.read(size)
        header = json.loads(raw)
        meta = header.get("__metadata__")
        if not meta:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # a spelling the writer escapes differently: leave it as written
            return
        f.seek(8)
        f.write(text + b" " * (size - len(text)))


def _as_os_error(exc: SafetensorError, path: Path) -> Exception:
    """safetensors reports a failed write as text (``… (os error 28)``): the OSError it was."""
    code = re.search(r"(?:code: |os error )(\d+)", str(exc))
    if code is None:
        return exc
    number = int(code.group(1))
    return OSError(number, os.strerror(number), str(path))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
