"""Opening image files: a file Pillow cannot read is a DataError naming it, not a traceback."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from prunelens.errors import DataError


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator:
    """``PIL.Image.open(path)`` as a context manager; unreadable or truncated files raise DataError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            yield img
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DataError(f"image file {path} does not exist") from None
        raise DataError(unreadable_image(path, exc)) from None


def unreadable_image(path: str | Path, exc: Exception) -> str:
    """The message for an image file Pillow refused: too many pixels to decode safely, or damaged."""
    from PIL import Image

    if isinstance(exc, Image.DecompressionBombError):
        return (f"image file {path} is too large to decode safely ({exc}); downscale it (images this "
                "large are not photographs a vision model takes) or remove it")
    return f"cannot read image file {path} ({exc}); replace or remove it"
