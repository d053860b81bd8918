"""Where an image dataset's files are decoded and transformed: in the loader workers (the CPU
path), or on the model's GPU (the GPU path, ``data.decode``).

CPU path: each worker opens a file with Pillow, turns it into a uint8 tensor and runs the
dataset's transforms v2 on it (the ordinary ``DataLoader`` of the dataset).

GPU path: workers only read each file's bytes (:class:`EncodedImages`); the main process decodes a
batch's JPEGs in one call of ``torchvision.io.decode_jpeg(list, device="cuda")`` (nvJPEG), other
files (PNG in some datasets, or a JPEG nvJPEG refuses, e.g. CMYK) with Pillow, and runs the *same*
transform object on each image on the device, then stacks the batch (:class:`DeviceDecodedLoader`).
Random transforms (training) run one image per call: a v2 random transform draws one set of
parameters per call, so a batch tensor would share one crop, one flip and one policy op.
Deterministic transforms (evaluation) run once per group of images of the same decoded size
(stacked), which gives each image what it would get alone (the kernels work image by image) in
fewer calls: a call's fixed cost (dispatch, kernel launches) is paid per group, not per image.

Random draws: transforms v2 draw their parameters from the CPU's global torch RNG whatever the
image's device, except AugMix, which draws its mixing weights on the image's device (the CUDA
generator on the GPU path, also seeded by ``torch.manual_seed``: deterministic, but not the CPU
path's draws). On the GPU path they run in the main process, whose RNG the training loop reseeds
every epoch (:mod:`prunelens.pruning.train`), so a run is as deterministic per seed as on the CPU
path. With ``num_workers`` 0 the two paths draw the same parameters in the same order; with
workers the CPU path draws in the workers (seeded by the loader), so the crops differ from the
GPU path's while having the same distribution. nvJPEG's IDCT differs from libjpeg's by a few
grey levels, so the pixels differ slightly too.

Targets stay on the host (the training loop moves them), images leave on the device.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from prunelens.errors import ConfigError, DataError

#: values of ``data.decode``: auto = gpu where the device is CUDA and torchvision.io decodes JPEGs on
#: it (and the transforms run on tensors), else cpu
DECODE_CHOICES = ("auto", "cpu", "gpu")
_JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedImages(Dataset):
    """The files of an image dataset as they lie on disk: items ``(bytes as a 1-D uint8 tensor,
    label, path)``. What a loader worker does on the GPU path: read, nothing else."""

    def __init__(self, samples: Sequence[tuple[str, int]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read image file {path} ({exc}); replace or remove it") from None
        if not blob:
            raise DataError(f"image file {path} is empty; replace or remove it")
        return torch.frombuffer(bytearray(blob), dtype=torch.uint8), label, str(path)


def collate_encoded(samples):
    """A batch of :class:`EncodedImages` items: (list of byte tensors, labels, paths)."""
    blobs, labels, paths = zip(*samples)
    return list(blobs), torch.as_tensor(labels), list(paths)


def is_jpeg(blob: torch.Tensor) -> bool:
    return bytes(blob[:3].tolist()) == _JPEG_MAGIC


def pil_decode(blob: torch.Tensor, path: str) -> torch.Tensor:
    """A file's bytes decoded by Pillow as torchvision's ImageFolder loader does (``convert("RGB")``):
    a uint8 (3, H, W) tensor; an unreadable file is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError
    from prunelens.data.images import unreadable_image
    try:
        with Image.open(io.BytesIO(blob.numpy().tobytes())) as img:
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(unreadable_image(path, exc)) from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def nvjpeg_decode(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """JPEGs decoded on ``device`` in one batched call of torchvision.io (nvJPEG on CUDA), as RGB.

    On CUDA the call runs on a side stream that first waits for the current one. torchvision's
    decoder allocates its outputs on the caller's stream and has nvJPEG write them from another
    stream without waiting for the caller's (pytorch/vision#9606, meta-pytorch/torchcodec#1634):
    called between training steps, it can be handed a block that queued kernels still read, and
    overwrite it. On a side stream with nothing else queued, a block is reused only once the
    streams that used it are done (``record_stream``); the current stream then waits for the
    decode."""
    from prunelens._compat import torchvision
    torchvision()
    from torchvision.io import ImageReadMode, decode_jpeg
    device = torch.device(device)
    if device.type != "cuda":
        return decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    current, side = torch.cuda.current_stream(device), _side_stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        images = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    current.wait_stream(side)
    for image in images:
        image.record_stream(current)
    return images


@functools.lru_cache(maxsize=None)
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


class DeviceDecoder:
    """Decode a batch of encoded images on ``device`` and run ``transform`` on each there, then
    stack them. ``decode_jpeg(blobs, device)`` decodes a list of JPEGs at once (default:
    :func:`nvjpeg_decode`; tests inject another to run this on the CPU)."""

    def __init__(self, transform: Callable, device: torch.device,
                 decode_jpeg: Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]] | None = None,
                 random: bool = True) -> None:
        self.transform = transform
        self.device = torch.device(device)
        self.decode_jpeg = decode_jpeg or nvjpeg_decode
        #: whether ``transform`` draws random parameters (then one image per call, else one call
        #: per group of images of the same size)
        self.random = random

    def decode(self, blobs: list[torch.Tensor], paths: list[str]) -> list[torch.Tensor]:
        """Each file as a uint8 (3, H, W) tensor on the device: the JPEGs in one batched call (one
        by one if that call fails, so that one file nvJPEG refuses does not take the batch's
        speed), the rest and the refused with Pillow."""
        images: list[torch.Tensor | None] = [None] * len(blobs)
        jpegs = [i for i, b in enumerate(blobs) if is_jpeg(b)]
        if jpegs:
            try:
                for i, img in zip(jpegs, self.decode_jpeg([blobs[i] for i in jpegs], self.device)):
                    images[i] = img
            except (RuntimeError, ValueError):  # nvJPEG refuses one of them: decode one by one
                for i in jpegs:
                    try:
                        images[i] = self.decode_jpeg([blobs[i]], self.device)[0]
                    except (RuntimeError, ValueError):
                        pass  # Pillow below (and its DataError naming the file)
        for i, img in enumerate(images):
            if img is None:
                images[i] = pil_decode(blobs[i], paths[i]).to(self.device, non_blocking=True)
        return images

    def __call__(self, blobs: list[torch.Tensor], paths: list[str]) -> torch.Tensor:
        images = self.decode(blobs, paths)
        if self.random:
            return torch.stack([self.transform(img) for img in images])
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(img.shape), []).append(i)
        out = None
        for members in groups.values():
            done = self.transform(torch.stack([images[i] for i in members]))
            if out is None:
                out = done.new_empty((len(images), *done.shape[1:]))
            out[members] = done
        return out


class DeviceDecodedLoader:
    """Batches of a loader of :class:`EncodedImages`, decoded and transformed on the device
    (then mixed by ``mix``, MixUp / CutMix, if given): ``(images on the device, labels)``."""

    def __init__(self, loader: DataLoader, decoder: DeviceDecoder, mix: Callable | None = None) -> None:
        self.loader, self.decoder, self.mix = loader, decoder, mix

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for blobs, labels, paths in self.loader:
            x = self.decoder(blobs, paths)
            if self.mix is not None:
                if x.dtype == torch.uint8:
                    x = x.float().div_(255)
                x, labels = self.mix(x, labels)
            yield x, labels


# ---- which path ------------------------------------------------------------------------------------
def _base(dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def encoded(dataset) -> Dataset:
    """``dataset``'s files as bytes (:class:`EncodedImages`), through any ``Subset`` around it."""
    if isinstance(dataset, Subset):
        return Subset(encoded(dataset.dataset), dataset.indices)
    return dataset.encoded()


@functools.cache
def gpu_decode_problem(device: torch.device) -> str | None:
    """Why JPEGs cannot be decoded on ``device`` (None when they can): not a CUDA device, or
    torchvision.io's GPU decoder does not work in this installation (tried once on a tiny JPEG)."""
    if device.type != "cuda":
        return f"the device is {device}, not CUDA"
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="JPEG")
    try:
        nvjpeg_decode([torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)], device)
    except Exception as exc:  # noqa: BLE001 - any failure means: decode on the CPU
        return f"torchvision.io cannot decode JPEGs on {device} ({type(exc).__name__}: {exc})"
    return None


def input_path(dataset, device: torch.device | None) -> tuple[str, str | None]:
    """("cpu" or "gpu", why) for reading ``dataset`` for a model on ``device``; why is None for a
    dataset without the choice (it decodes in its own way, on the CPU).

    A dataset offers the GPU path by having ``decode`` (its ``data.decode`` choice), ``encoded()``
    (its files as :class:`EncodedImages`), ``transform`` (taking uint8 tensors),
    ``random_transform`` (whether it draws random parameters) and ``gpu_problem`` (why its
    transforms cannot run on tensors, or None). ``data.decode gpu`` where
    the GPU path cannot run is a ConfigError; ``auto`` then takes the CPU path and says why."""
    base = _base(dataset)
    choice = getattr(base, "decode", None)
    if choice is None:
        return "cpu", None
    if choice == "cpu":
        return "cpu", "data.decode cpu"
    problem = base.gpu_problem or gpu_decode_problem(torch.device(device or "cpu"))
    if choice == "gpu":
        if problem:
            raise ConfigError(f"data.decode gpu cannot run here: {problem}; use data.decode auto or cpu")
        return "gpu", "data.decode gpu"
    if problem:
        return "cpu", f"data.decode auto: {problem}"
    return "gpu", "data.decode auto: CUDA and torchvision.io's GPU JPEG decoder (nvJPEG)"


def image_loader(dataset, device: torch.device | None, collate_fn: Callable | None = None,
                 mix: Callable | None = None, **loader_kw):
    """The loader of ``dataset`` for a model on ``device``: on the CPU path a ``DataLoader`` with
    ``collate_fn``; on the GPU path a ``DataLoader`` of the files' bytes (same sampler, generator
    and workers) whose batches are decoded and transformed on ``device``, then mixed by ``mix``
    (the mixing part of ``collate_fn``)."""
    if input_path(dataset, device)[0] == "cpu":
        return DataLoader(dataset, collate_fn=collate_fn, **loader_kw)
    # the bytes stay on the host: decode_jpeg reads them there, so pinning them gains nothing
    loader = DataLoader(encoded(dataset), collate_fn=collate_encoded, **{**loader_kw, "pin_memory": False})
    base = _base(dataset)
    return DeviceDecodedLoader(loader, DeviceDecoder(base.transform, device, random=base.random_transform), mix)
