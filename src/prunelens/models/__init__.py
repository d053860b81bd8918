"""Architectures: a registry (``create_model``) and one spec per family (``spec_for``)."""
from prunelens.models.registry import create_model, list_models, load_state_dict_strict
from prunelens.models.spec import ArchSpec, spec_for

__all__ = ["ArchSpec", "create_model", "list_models", "load_state_dict_strict", "spec_for"]
