"""User-facing errors.

Everything a user can cause (a bad config key, a missing dataset folder, a corrupt checkpoint, a run
folder owned by another process) raises a :class:`PrunelensError` whose message names the thing and
the fix. The CLI prints the message without a traceback and exits with code 2.
"""
from __future__ import annotations


class PrunelensError(Exception):
    """Base class: the message is shown to the user as is."""

    exit_code = 2


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
