"""prunelens: when does pruning benefit what a vision model has learned?"""
from __future__ import annotations

__version__ = "0.2.0"
