"""Convpass (Jie and Deng, 2022): a convolutional bypass beside each attention and each MLP,
working on the patch tokens as the 2-D grid they came from.

``x_{l+1} = x + F(LN(x)) + s * Convpass(LN(x))`` with
``Convpass(y) = up(drop(act(conv3x3(act(down(y))))))`` and ``act`` QuickGELU
(``z * sigmoid(1.702 z)``). The 3x3 convolution runs on the patch grid; each class/register
token is a 1x1 map of its own, which zero padding reduces to the kernel's centre tap and the
bias. The bypass reads the block's own norm output, so it sits in the residual site's
``shortcut`` slot (whose input is ``x``) and applies that frozen norm itself; in post-norm
blocks (EVA post-norm, Swin V2) the branch reads ``x`` itself, and so does the bypass.

Initialisation as the official code: ``down`` Xavier-uniform, ``up`` zero (so the model
starts unchanged), the convolution zero with an identity centre (or Xavier-uniform with
``xavier_init=True``), biases zero. Defaults: width 8, scale 1 (the paper searches
``s`` in {0.01, 0.1, 1, 10, 100} per task), dropout 0.1: 0.33M tuned parameters on ViT-B/16.
CNNs are refused: their blocks are convolutional already.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import install_sites
from ..backbones.eva import EvaPostNormSiteBlock
from ..backbones.sites import Anatomy
from .common import check_int, check_positive, check_rate, factory_kwargs
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method

CONVOLUTIONAL = (
    "Convpass adds a convolutional bypass on a transformer's token grid; a {family} block is convolutional "
    "already (use adapter or lora-conv)"
)
UNSUPPORTED = {f: CONVOLUTIONAL.format(family=f) for f in ("resnet", "regnet", "efficientnet", "convnext")}


@dataclass
class ConvpassConfig(MethodConfig):
    """Settings of Convpass.

    Attributes:
        width: channels of the bypass (8 in the paper's VTAB-1k runs).
        scale: ``s``, the fixed scale of the bypass's output.
        dropout: dropout before the up projection (0.1 in the official code).
        xavier_init: Xavier-uniform convolution instead of the identity-centred zero kernel.
    """

    method: ClassVar[str] = "convpass"

    width: int = 8
    scale: float = 1.0
    dropout: float = 0.1
    xavier_init: bool = False

    def __post_init__(self) -> None:
        check_int(self.width, "width")
        check_positive(self.scale, "scale")
        check_rate(self.dropout, "dropout")
        if not isinstance(self.xavier_init, bool):
            raise ValueError(f"xavier_init must be true or false, got {self.xavier_init!r}")


def quick_gelu(z: torch.Tensor) -> torch.Tensor:
    return z * torch.sigmoid(1.702 * z)


class Convpass(nn.Module):
    """``x + scale * up(drop(act(conv(act(down(norm(x)))))))`` on (B, N, C) tokens or (B, H, W, C) maps.

    ``norm`` (the block's frozen norm, or None) is held outside the module tree: it belongs to
    the block. ``grid`` is the (height, width) of the patch tokens after ``prefix`` class or
    register tokens; a token count that does not fit it is read as a square grid.
    """

    def __init__(
        self,
        channels: int,
        config: ConvpassConfig,
        norm: nn.Module | None,
        grid: tuple[int, int],
        prefix: int,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        width = config.width
        self.scale = float(config.scale)
        self.grid = tuple(grid)
        self.prefix = prefix
        self._norm = (norm,)
        self.down = nn.Linear(channels, width, **kw)
        self.conv = nn.Conv2d(width, width, 3, padding=1, **kw)
        self.up = nn.Linear(width, channels, **kw)
        self.dropout = nn.Dropout(config.dropout)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.down.weight)
            if config.xavier_init:
                nn.init.xavier_uniform_(self.conv.weight)
            else:
                self.conv.weight.zero_()
                self.conv.weight[:, :, 1, 1] = torch.eye(width, **kw)
            for parameter in (self.down.bias, self.conv.bias, self.up.weight, self.up.bias):
                parameter.zero_()

    def _patch_grid(self, patches: int) -> tuple[int, int]:
        if patches == self.grid[0] * self.grid[1]:
            return self.grid
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(f"Convpass: {patches} patch tokens fit neither the {self.grid} grid nor a square one")
        return side, side

    def _convolve(self, z: torch.Tensor) -> torch.Tensor:
        """The 3x3 convolution on the grid (and the centre tap on each prefix token)."""
        if z.ndim == 4:  # (B, H, W, C): a Swin map
            return self.conv(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        batch, tokens, width = z.shape
        h, w = self._patch_grid(tokens - self.prefix)
        patches = z[:, self.prefix :].reshape(batch, h, w, width).permute(0, 3, 1, 2)
        patches = self.conv(patches).permute(0, 2, 3, 1).reshape(batch, h * w, width)
        if not self.prefix:
            return patches
        prefix = F.linear(z[:, : self.prefix], self.conv.weight[:, :, 1, 1], self.conv.bias)
        return torch.cat([prefix, patches], dim=1)

    def bypass(self, y: torch.Tensor) -> torch.Tensor:
        z = self._convolve(quick_gelu(self.down(y)))
        return self.up(self.dropout(quick_gelu(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self._norm[0]
        return x + self.scale * self.bypass(x if norm is None else norm(x))


def _norms(anat: Anatomy, block: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """What each branch of ``block`` reads: its pre-norm output, or ``x`` itself (post-norm)."""
    if isinstance(block, EvaPostNormSiteBlock) or anat.family == "swinv2":
        return None, None
    return block.norm1, block.norm2


def _grid(model: nn.Module, block: nn.Module) -> tuple[int, int]:
    if hasattr(block, "input_resolution"):  # Swin: the block's own map
        return tuple(block.input_resolution)
    return tuple(model.patch_embed.grid_size)


def apply_convpass(model: nn.Module, config: ConvpassConfig) -> None:
    """Puts a :class:`Convpass` in the shortcut slot of both residual sites of every block."""
    anat = install_sites(model)
    if anat.family in UNSUPPORTED:
        raise NotApplicableError(UNSUPPORTED[anat.family])
    placement = factory_kwargs(model)
    for block, sites in zip(anat.blocks, anat.block_sites, strict=True):
        grid = _grid(model, block)
        for site, norm in zip(sites, _norms(anat, block), strict=True):
            site.fill("shortcut", Convpass(site.channels, config, norm, grid, anat.num_prefix_tokens, **placement))


register_method(
    ConvpassConfig,
    apply_convpass,
    "Convpass: a 3x3 convolutional bypass (width 8) on the token grid beside each attention and MLP",
    capabilities=Capabilities(
        mergeable=False,
        servable=False,
        unsupported_families=UNSUPPORTED,
        why_not={
            "mergeable": "the bypass is nonlinear (QuickGELU around a convolution), so it does not fold into a layer",
            "servable": "MultiTaskModel has no per-sample form of a convolutional bypass yet",
        },
    ),
)
