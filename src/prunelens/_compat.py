"""Make torchvision importable on a CPU-only torch build.

The PyPI wheel of torchvision 0.28 is a CUDA build. On a CPU build of torch its compiled ops fail
to load, and the import then dies in ``torchvision._meta_registrations`` with
``operator torchvision::nms does not exist`` (pytorch/pytorch#122494). Declaring the schemas of the
two ops that module registers fakes for (``nms`` and ``qnms``) lets the import finish; the C ops
themselves stay unavailable, and prunelens does not use them.

Every prunelens module that needs torchvision imports it through :func:`torchvision`.
"""
from __future__ import annotations

import sys
import types

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keep the torch.library.Library alive: dropping it would unregister the schemas


def _declare_missing_ops() -> None:
    global _library
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


def torchvision() -> types.ModuleType:
    """Return the ``torchvision`` module, importing it with the CPU-build workaround if needed."""
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision"]
    try:
        import torchvision as tv
        import torchvision.models  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::nms does not exist" not in str(exc):
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        _declare_missing_ops()
        import torchvision as tv
        import torchvision.models  # noqa: F401
    return tv
