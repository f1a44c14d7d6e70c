"""Finds a model's family, converts its blocks to site-exposing ones, reports the anatomy."""

from __future__ import annotations

import warnings

import timm
from torch import nn

from . import beit, convnext, efficientnet, eva, regnet, resnet, swin, vit  # noqa: F401  (registers the families)
from .sites import Anatomy, Family, ResidualSite, UnsupportedModelError, families

SUPPORTED_TIMM = ((1, 0, 26), (1, 1, 0))
"""The timm versions whose block forwards the site blocks reproduce: [low, high)."""


def _timm_version() -> tuple[int, ...]:
    return tuple(int(p) for p in timm.__version__.split("+")[0].split(".")[:3] if p.isdigit())


def _check_timm_version() -> None:
    low, high = SUPPORTED_TIMM
    if not low <= _timm_version() < high:
        warnings.warn(
            f"snftune's site blocks mirror timm {'.'.join(map(str, low))} to <{'.'.join(map(str, high))};"
            f" timm {timm.__version__} is installed. Run the test suite (tests/test_backbones.py) "
            "to confirm that outputs still match timm's own forward.",
            stacklevel=3,
        )


def _block_type_names(model: nn.Module) -> list[str]:
    names = {
        type(m).__name__
        for m in model.modules()
        if any(word in type(m).__name__.lower() for word in ("block", "bottleneck", "residual"))
    }
    if not names:
        names = {type(m).__name__ for m in model.children()}
    return sorted(names)


def _installed_family(model: nn.Module) -> Family | None:
    """The family whose site blocks ``model`` already holds, or None."""
    for family in families().values():
        site_types = tuple(family.block_types.values())
        if any(isinstance(module, site_types) for module in model.modules()):
            return family
    return None


def _family_of(model: nn.Module) -> Family:
    """The one family whose blocks ``model`` holds; refuses unsupported, mixed or partly exposable models."""
    found = [
        family
        for family in families().values()
        if any(type(m) in family.block_types or type(m) in family.block_types.values() for m in model.modules())
    ]
    if not found:
        raise _unsupported(model)
    if len(found) > 1:
        raise UnsupportedModelError(f"{type(model).__name__} mixes block families {sorted(f.name for f in found)}.")
    family = found[0]
    refused = {
        type(m).__name__: family.refused_block_types[type(m)]
        for m in model.modules()
        if type(m) in family.refused_block_types
    }
    if refused:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in sorted(refused.items()))
        raise UnsupportedModelError(
            f"{type(model).__name__} has {family.name} blocks whose residuals snftune does not expose ({reasons}); "
            "tuning it would leave those shortcuts out. Use a model without these blocks."
        )
    if family.has_residual is not None and not any(
        type(m) in family.block_types.values() or (type(m) in family.block_types and family.has_residual(m))
        for m in model.modules()
    ):
        raise _unsupported(model, f" (its {family.name} blocks have no residual connection)")
    return family


def _unsupported(model: nn.Module, detail: str = "") -> UnsupportedModelError:
    supported = sorted(
        f"{t.__module__.rsplit('.', 1)[-1]}.{t.__name__}" for f in families().values() for t in f.block_types
    )
    return UnsupportedModelError(
        f"{type(model).__name__} has no block type snftune supports{detail}. Block types found: "
        f"{', '.join(_block_type_names(model)) or 'none'}. Supported timm blocks: {', '.join(supported)} "
        f"(families: {', '.join(sorted(families()))})."
    )


def install_sites(model: nn.Module) -> Anatomy:
    """Converts every supported timm block of ``model`` in place and returns its anatomy.

    Converting swaps each block's class for a subclass whose forward routes the residual
    additions through empty :class:`ResidualSite` slots, so parameters, state-dict keys and
    outputs stay exactly those of the timm model. Calling it again changes nothing. A model
    that cannot be converted as a whole is refused before anything is changed.
    """
    family = _family_of(model)
    _check_timm_version()
    for module in model.modules():
        if type(module) in family.block_types:
            module.__class__ = family.block_types[type(module)]
            family.add_sites(module)
    if family.prepare_model is not None:
        family.prepare_model(model)
    return anatomy(model)


def anatomy(model: nn.Module) -> Anatomy:
    """The residual sites, attention modules and token facts of a model whose sites are
    installed (by :func:`install_sites` or ``snftune.apply``). Reads only: the model is not changed."""
    family = _installed_family(model)
    if family is None:
        raise ValueError(
            f"{type(model).__name__} has no residual sites yet; call snftune.backbones.install_sites(model) "
            "(or snftune.apply) first"
        )
    site_types = tuple(family.block_types.values())
    blocks, block_names, block_sites, sites, site_names = [], [], [], [], []
    for name, module in model.named_modules():
        if isinstance(module, site_types):
            blocks.append(module)
            block_names.append(name)
            block_sites.append([])
        elif isinstance(module, ResidualSite):
            block_sites[-1].append(module)
            sites.append(module)
            site_names.append(name)
    return Anatomy(
        family=family.name,
        blocks=blocks,
        sites=sites,
        site_names=site_names,
        block_sites=block_sites,
        block_names=block_names,
        skipless_blocks=[name for name, own in zip(block_names, block_sites, strict=True) if not own],
        **family.describe(model, blocks),
    )
