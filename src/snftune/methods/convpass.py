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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import anatomy, install_sites
from ..backbones.eva import EvaPostNormSiteBlock
from ..backbones.sites import Anatomy
from .common import POSITIVE, RATE, WIDTH, factory_kwargs
from .mixed import MixedModule, Placed, TaskRouting, frozen_layer, replace_each, shared_setting
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
        self.width = WIDTH.check("width", self.width)
        self.scale = POSITIVE.check("scale", self.scale)
        self.dropout = RATE.check("dropout", self.dropout)
        if not isinstance(self.xavier_init, bool):
            raise ValueError(f"xavier_init must be true or false, got {self.xavier_init!r}")


def quick_gelu(z: torch.Tensor) -> torch.Tensor:
    return z * torch.sigmoid(1.702 * z)


def _patch_grid(grid: tuple[int, int], patches: int) -> tuple[int, int]:
    if patches == grid[0] * grid[1]:
        return grid
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"Convpass: {patches} patch tokens fit neither the {grid} grid nor a square one")
    return side, side


def convolve_tokens(
    z: torch.Tensor,
    grid: tuple[int, int],
    prefix: int,
    conv: Callable[[torch.Tensor], torch.Tensor],
    centre: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """A 3x3 convolution (``conv`` on (B, C, H, W) maps) of (B, N, C) tokens on their patch grid,
    or of a (B, H, W, C) Swin map; each of the ``prefix`` tokens gets ``centre`` (the kernel's
    centre tap and bias, all that zero padding leaves of it on a 1x1 map)."""
    if z.ndim == 4:  # (B, H, W, C): a Swin map
        return conv(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    batch, tokens, width = z.shape
    h, w = _patch_grid(grid, tokens - prefix)
    patches = z[:, prefix:].reshape(batch, h, w, width).permute(0, 3, 1, 2)
    patches = conv(patches).permute(0, 2, 3, 1).reshape(batch, h * w, width)
    if not prefix:
        return patches
    return torch.cat([centre(z[:, :prefix]), patches], dim=1)


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

    def _convolve(self, z: torch.Tensor) -> torch.Tensor:
        """The 3x3 convolution on the grid (and the centre tap on each prefix token)."""
        weight, bias = self.conv.weight, self.conv.bias
        return convolve_tokens(
            z, self.grid, self.prefix, self.conv, lambda tokens: F.linear(tokens, weight[:, :, 1, 1], bias)
        )

    def bypass(self, y: torch.Tensor) -> torch.Tensor:
        z = self._convolve(quick_gelu(self.down(y)))
        return self.up(self.dropout(quick_gelu(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self._norm[0]
        return x + self.scale * self.bypass(x if norm is None else norm(x))

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each shortcut slot holding some task's bypass gets a :class:`MixedConvpass` reading the
        shared model's own frozen norm of that block (the mixed-batch protocol)."""
        anat = anatomy(model)
        norm_of_site = {}
        for block, sites in zip(anat.blocks, anat.block_sites, strict=True):
            for site, norm in zip(sites, _norms(anat, block), strict=True):
                norm_of_site[id(site)] = None if norm is None else frozen_layer(norm)

        fixed_grid = not getattr(model, "dynamic_img_size", False)
        for path, bypasses in placed.items():
            norm = norm_of_site[id(model.get_submodule(path.rpartition(".")[0]))]
            replace_each(
                model,
                {path: bypasses},
                lambda b, base, norm=norm: MixedConvpass(b, num_tasks, routing, base, norm, fixed_grid),
            )


def _per_sample_conv(maps: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Row ``i`` of (N, C, H, W) ``maps`` convolved with its own (C, C, 3, 3) kernel ``weight[i]``
    and bias ``bias[i]``: one grouped convolution, a group per row."""
    n, c, h, w = maps.shape
    out = F.conv2d(maps.reshape(1, n * c, h, w), weight.flatten(0, 1), bias.flatten(), padding=1, groups=n)
    return out.reshape(n, c, h, w)


class MixedConvpass(MixedModule):
    """The shortcut slot's previous content (``base``), then each row of a task with a bypass here
    gets ``x + scale * up(act(conv(act(down(norm(x))))))`` with its own task's tensors (narrower
    tasks padded with zero channels, which QuickGELU and the zero weights keep exactly 0).

    ``norm`` is the shared model's frozen norm the block's branch reads (held outside the module
    tree: it belongs to the block), or None in post-norm blocks. On a backbone of fixed input size
    (``fixed_grid``) the patch tokens are the last ones of the sequence: the prompt region that VPT
    tasks served beside it open after the prefix tokens (padding in this task's rows, never read
    and never a key) goes with the prefix tokens.
    """

    def __init__(
        self,
        bypasses: Mapping[int, Convpass],
        num_tasks: int,
        routing: TaskRouting,
        base: nn.Module,
        norm: nn.Module | None,
        fixed_grid: bool = True,
    ) -> None:
        super().__init__(bypasses, routing, base)
        self._norm = (norm,)
        self.fixed_grid = fixed_grid
        self.grid = tuple(shared_setting((b.grid for b in bypasses.values()), "the token grid"))
        self.prefix = int(shared_setting((b.prefix for b in bypasses.values()), "the prefix tokens"))
        channels = int(shared_setting((b.down.in_features for b in bypasses.values()), "channels"))
        width = max(b.down.out_features for b in bypasses.values())
        kw = {"dtype": next(iter(bypasses.values())).down.weight.dtype}
        tables = {
            "down_w": torch.zeros(num_tasks, width, channels, **kw),
            "down_b": torch.zeros(num_tasks, width, **kw),
            "conv_w": torch.zeros(num_tasks, width, width, 3, 3, **kw),
            "conv_b": torch.zeros(num_tasks, width, **kw),
            "up_w": torch.zeros(num_tasks, channels, width, **kw),
            "up_b": torch.zeros(num_tasks, channels, **kw),
            "scale": torch.zeros(num_tasks, **kw),
        }
        with torch.no_grad():
            for task, bypass in bypasses.items():
                k = bypass.down.out_features
                tables["down_w"][task, :k], tables["down_b"][task, :k] = bypass.down.weight, bypass.down.bias
                tables["conv_w"][task, :k, :k], tables["conv_b"][task, :k] = bypass.conv.weight, bypass.conv.bias
                tables["up_w"][task, :, :k], tables["up_b"][task] = bypass.up.weight, bypass.up.bias
                tables["scale"][task] = bypass.scale
        self.add_tables(**tables)

    def own(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        norm = self._norm[0]
        y = x if norm is None else norm(x)
        down_w, down_b, conv_w, conv_b, up_w, up_b, scale = (
            t.index_select(0, ids).to(y.dtype)
            for t in (self.down_w, self.down_b, self.conv_w, self.conv_b, self.up_w, self.up_b, self.scale)
        )
        flat = y.reshape(y.shape[0], -1, y.shape[-1])
        hidden = quick_gelu(torch.baddbmm(down_b[:, None], flat, down_w.transpose(1, 2)))
        hidden = hidden.reshape(*y.shape[:-1], -1)
        centre_w = conv_w[:, :, :, 1, 1].transpose(1, 2)
        prefix = self.prefix
        if self.fixed_grid and hidden.ndim == 3:
            prefix = hidden.shape[1] - self.grid[0] * self.grid[1]
        hidden = convolve_tokens(
            hidden,
            self.grid,
            prefix,
            lambda maps: _per_sample_conv(maps, conv_w, conv_b),
            lambda tokens: torch.baddbmm(conv_b[:, None], tokens, centre_w),
        )
        hidden = quick_gelu(hidden).reshape(y.shape[0], -1, hidden.shape[-1])
        update = torch.baddbmm(up_b[:, None], hidden, up_w.transpose(1, 2)) * scale[:, None, None]
        return x + update.reshape(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, width={self.down_w.shape[1]}, grid={self.grid}, prefix={self.prefix}"


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
        servable=True,
        unsupported_families=UNSUPPORTED,
        why_not={
            "mergeable": "the bypass is nonlinear (QuickGELU around a convolution), so it does not fold into a layer",
        },
    ),
)
