"""DiffFit (Xie et al., ICCV 2023): the backbone's biases and norm layers train, and a learnable
per-channel scale ``gamma`` (initialised to 1) multiplies every residual branch:
``x_{l+1} = x + gamma * F(x)``.

As the unified PETL study (Mai et al., 2024) runs it on ViT: every bias (BitFit's set), every
LayerNorm's scale and shift (LN-tune's set) and one ``gamma`` of the block width per residual
(two per transformer block). ``gamma`` fills each site's ``branch`` slot (:class:`BranchScale`).

The scale is linear and follows the branch's last affine layer (the attention's output
projection and the MLP's ``fc2``; the norm itself in post-norm blocks, EVA post-norm and
Swin V2), with only per-channel or per-sample steps between them (layer scale, dropout,
drop-path): :func:`snftune.merge` folds ``gamma`` into that layer's weight and bias exactly,
and the merged model has the backbone's parameters and cost.

Served in a mixed batch, each sample gets its own task's biases (BitFit's :class:`MixedBias`),
norms (LN-tune's :class:`MixedLayerNorm`) and branch scales (:class:`MixedBranchScale`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..backbones import install_sites
from ..backbones.eva import EvaPostNormSiteBlock
from ..backbones.sites import Anatomy
from .bitfit import bias_parameters, tuned_biases
from .common import factory_kwargs
from .ln_tune import layer_norm_parameters, tuned_layer_norms
from .mixed import MixedModule, Placed, TaskRouting, channel_view, mixed_parts, replace_each, shared_setting
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method

BATCHNORM_NETWORKS = (
    "DiffFit tunes the LayerNorms and scales the branches of transformer-style blocks; a {family} network "
    "normalises with BatchNorm (use bitfit or ssf)"
)
UNSUPPORTED = {f: BATCHNORM_NETWORKS.format(family=f) for f in ("resnet", "regnet", "efficientnet")}


@dataclass
class DiffFitConfig(MethodConfig):
    """DiffFit has no settings: biases, norms and one scale per residual branch."""

    method: ClassVar[str] = "difffit"


class BranchScale(nn.Module):
    """``gamma * branch`` per channel; merges into ``fold_into`` (the branch's last affine layer).

    ``fold_into`` is held outside the module tree (it belongs to the block), so the state dict
    names it once, under the block.
    """

    def __init__(self, channels: int, channel_dim: int, fold_into: nn.Module | None, device=None, dtype=None) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.gamma = nn.Parameter(torch.ones(channels, device=device, dtype=dtype))
        self._fold_into = (fold_into,)
        self.merged = False
        self._original: dict[str, torch.Tensor] | None = None

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return branch
        shape = [1] * branch.ndim
        shape[self.channel_dim] = -1
        return branch * self.gamma.view(shape)

    @property
    def mergeable(self) -> bool:
        layer = self._fold_into[0]
        return (
            layer is not None
            and getattr(layer, "weight", None) is not None
            and getattr(layer, "bias", None) is not None
        )

    @torch.no_grad()
    def merge(self) -> None:
        """Scales the output channels of the branch's last affine layer by ``gamma``."""
        if self.merged or not self.mergeable:
            return
        layer = self._fold_into[0]
        self._original = {"weight": layer.weight.clone(), "bias": layer.bias.clone()}
        gamma = self.gamma.to(layer.weight.dtype)
        layer.weight.mul_(gamma.view(-1, *([1] * (layer.weight.ndim - 1))))
        layer.bias.mul_(gamma)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restores the exact original weight and bias."""
        if not self.merged:
            return
        layer = self._fold_into[0]
        layer.weight.copy_(self._original["weight"])
        layer.bias.copy_(self._original["bias"])
        self._original = None
        self.merged = False

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each branch slot some task scales gets a :class:`MixedBranchScale` (the mixed-batch protocol)."""
        replace_each(model, placed, lambda scales, base: MixedBranchScale(scales, num_tasks, routing, base))


class MixedBranchScale(MixedModule):
    """The slot's previous content (``base``), each row then scaled per channel by its own task's
    ``gamma`` (other tasks' rows pass exactly)."""

    def __init__(
        self, scales: Mapping[int, BranchScale], num_tasks: int, routing: TaskRouting, base: nn.Module
    ) -> None:
        super().__init__(scales, routing, base)
        self.channel_dim = int(shared_setting((s.channel_dim for s in scales.values()), "the channel dimension"))
        reference = next(iter(scales.values())).gamma
        gamma = torch.ones(num_tasks, reference.shape[0], dtype=reference.dtype)
        with torch.no_grad():
            for task, scale in scales.items():
                gamma[task] = scale.gamma
        self.add_tables(gamma=gamma)

    def own(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return x * channel_view(self.gamma.index_select(0, ids).to(x.dtype), x, self.channel_dim)

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, channels={self.gamma.shape[1]}, channel_dim={self.channel_dim}"


def difffit_parts(model: nn.Module) -> dict[str, nn.Module]:
    """DiffFit's parts of a tuned model: its branch scales, a LayerNorm part per norm (whose bias it
    holds) and a bias part per other layer with a tuned bias."""
    norms = tuned_layer_norms(model)
    biases = {path: part for path, part in tuned_biases(model).items() if path not in norms}
    return {**mixed_parts(model), **biases, **norms}


def _last_affine_layers(anat: Anatomy, index: int) -> list[nn.Module]:
    """Per site of block ``index``, the affine layer its branch ends with."""
    block = anat.blocks[index]
    if isinstance(block, EvaPostNormSiteBlock) or anat.family == "swinv2":
        return [block.norm1, block.norm2]  # post-norm: x + norm(F(x))
    if anat.family == "convnext":
        return [anat.mlps[index].fc2]
    return [anat.attentions[index].proj, anat.mlps[index].fc2]


def apply_difffit(model: nn.Module, config: DiffFitConfig) -> None:
    """Trains biases and norms, and puts a :class:`BranchScale` in every site's branch slot."""
    anat = install_sites(model)
    if anat.family in UNSUPPORTED:
        raise NotApplicableError(UNSUPPORTED[anat.family])
    placement = factory_kwargs(model)
    for index, sites in enumerate(anat.block_sites):
        for site, layer in zip(sites, _last_affine_layers(anat, index), strict=True):
            site.fill("branch", BranchScale(site.channels, site.channel_dim, layer, **placement))
    for parameter in (*bias_parameters(model).values(), *layer_norm_parameters(model).values()):
        parameter.requires_grad_(True)


register_method(
    DiffFitConfig,
    apply_difffit,
    "DiffFit: biases, LayerNorms and a per-channel scale (init 1) on every residual branch (mergeable)",
    capabilities=Capabilities(
        mergeable=True,
        servable=True,
        unsupported_families=UNSUPPORTED,
    ),
    mixed_parts=difffit_parts,
)
