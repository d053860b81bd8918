"""User-facing errors.

Everything a user can cause (a bad config key, a missing dataset folder, a corrupt checkpoint, a run
folder owned by another process) raises a :class:`PrunelensError` whose message names the thing and
the fix. The CLI prints the message without a traceback and exits with code 2.
"""
from __future__ import annotations


class PrunelensError(Exception):
    """Base class: the message is shown to the user as is.

    A DataLoader worker's error reaches the main process re-raised by torch with the worker's whole
    traceback as its message; the user's message is the traceback's last line, so that is kept.
    """

    exit_code = 2

    def __init__(self, *args) -> None:
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught "):
            args = (_from_worker(args[0], type(self).__name__),)
        super().__init__(*args)


def _from_worker(text: str, name: str) -> str:
    """The original message of an error torch re-raised from a DataLoader worker (or ``text``)."""
    head, sep, traceback = text.partition("\nOriginal Traceback")
    marker = f"{name}: "
    if not sep or marker not in traceback:
        return text
    where = head.removeprefix(f"Caught {name} ").rstrip(".")
    return f"{traceback.rsplit(marker, 1)[1].strip()} ({where})"


class ConfigError(PrunelensError):
    """A config file, key or value is wrong."""


class DataError(PrunelensError):
    """A dataset is missing, malformed, or does not fit the model."""


class ModelError(PrunelensError):
    """An unknown architecture, or weights that do not fit it."""


class PoolError(PrunelensError):
    """A run folder / pool is missing, corrupt, locked, or made by another config."""


class RunLockedError(PoolError):
    """Another process holds the run folder."""


class DivergedError(PrunelensError):
    """Training diverged: the loss or a weight became NaN or infinite."""
