"""Reconstruction networks: the MOL deep-equilibrium model, its CNN prior, the MoDL baseline and the builder."""

from .cnn import ConvDenoiser
from .factory import build_method, build_model
from .modl import MoDL
from .mol import MOL

__all__ = ["MOL", "ConvDenoiser", "MoDL", "build_model", "build_method"]
