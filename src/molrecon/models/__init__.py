"""Reconstruction networks: the MOL deep-equilibrium model and its CNN prior (MoDL lives in ``models.modl``)."""

from .cnn import ConvDenoiser
from .factory import build_model  # training engineer: model factory
from .modl import MoDL  # training engineer: MoDL baseline
from .mol import MOL

__all__ = ["MOL", "ConvDenoiser", "MoDL", "build_model"]
