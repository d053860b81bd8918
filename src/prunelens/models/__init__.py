"""Architectures: a registry (one entry per architecture: builder, class, spec) and one spec per
family holding every per-architecture fact."""
from prunelens.models.registry import (ARCHITECTURES, create_model, list_models, load_state_dict_strict,
                                       spec_for, spec_of)
from prunelens.models.spec import ArchSpec

__all__ = ["ARCHITECTURES", "ArchSpec", "create_model", "list_models", "load_state_dict_strict",
           "spec_for", "spec_of"]
