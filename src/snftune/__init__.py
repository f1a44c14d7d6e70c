"""snftune: parameter-efficient tuning of vision backbones around SNF (CVPR 2023)."""

__version__ = "0.1.0"
