"""Backbones: timm models by name, and each family's anatomy (sites, attention, tokens)."""

from .anatomy import anatomy, install_sites
from .factory import create_model
from .sites import Anatomy, ResidualSite, UnsupportedModelError

__all__ = ["Anatomy", "ResidualSite", "UnsupportedModelError", "anatomy", "install_sites", "create_model"]
