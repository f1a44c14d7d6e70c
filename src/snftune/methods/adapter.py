"""Adapter: a bottleneck MLP ``x + scale * up(act(down(x)))`` in a residual site's slot.

One module, two forms, told apart only by the slot it fills:

- sequential (Houlsby et al., 2019): in the ``branch`` slot, it adapts the branch output,
  ``x_{l+1} = x + A(F(x))`` with ``A(y) = y + up(act(down(y)))``;
- parallel (He et al., 2022; AdaptFormer): in the ``shortcut`` slot, whose input is the block
  input ``h(x)``, it adds an adapter path beside the frozen branch,
  ``x_{l+1} = h(x) + up(act(down(h(x)))) + F(x)``.

``up`` starts at zero, so the model starts unchanged. The default (width 8, after the MLP,
sequential, biases on) is the adapter baseline the paper compares against: 0.16M on ViT-B/16.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..backbones import install_sites
from ..backbones.sites import Anatomy, ResidualSite
from ..inputs import check_value
from .common import Size, factory_kwargs, normalise_size, per_block
from .mixed import MixedModule, Placed, TaskRouting, replace_each, shared_setting
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method

POSITIONS = ("mlp", "attn", "both")
FORMS = ("sequential", "parallel")
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


@dataclass
class AdapterConfig(MethodConfig):
    """Settings of the adapter baseline.

    Attributes:
        width: bottleneck width, an int or one per block (0: no adapter in that block).
        position: after the MLP (``"mlp"``, default), after attention (``"attn"``) or ``"both"``.
            On ResNet each block has one residual site, which ``"mlp"`` and ``"both"`` select.
        form: ``"sequential"`` (on the branch output) or ``"parallel"`` (beside the branch).
        activation: ``"gelu"``, ``"relu"`` or ``"silu"``.
        scale: multiplies the adapter's output (AdaptFormer uses 0.1 for its parallel form).
    """

    method: ClassVar[str] = "adapter"

    width: Size = 8
    position: str = "mlp"
    form: str = "sequential"
    activation: str = "gelu"
    scale: float = 1.0

    def __post_init__(self) -> None:
        self.width = normalise_size(self.width, "width")
        self.scale = check_value(self.scale, "scale", float, -1e3, 1e3)
        for name, value, allowed in (
            ("position", self.position, POSITIONS),
            ("form", self.form, FORMS),
            ("activation", self.activation, tuple(ACTIVATIONS)),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got '{value}'")


class Adapter(nn.Module):
    """``x + scale * up(act(down(x)))`` on the channel vector at ``channel_dim``; ``up`` zero-initialised.

    ``bias=False`` gives SNF's bottleneck ablation (Table 7), which has no biases.
    """

    def __init__(
        self,
        channels: int,
        width: int,
        channel_dim: int = -1,
        activation: str = "gelu",
        scale: float = 1.0,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.scale = scale
        self.down = nn.Linear(channels, width, bias=bias, device=device, dtype=dtype)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(width, channels, bias=bias, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        if bias:
            nn.init.zeros_(self.up.bias)

    @property
    def width(self) -> int:
        return self.down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.movedim(self.channel_dim, -1)
        return x + (self.scale * self.up(self.act(self.down(z)))).movedim(-1, self.channel_dim)

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each slot holding some task's adapter gets a :class:`MixedAdapter` (the mixed-batch protocol)."""
        replace_each(model, placed, lambda adapters, base: MixedAdapter(adapters, num_tasks, routing, base))


class MixedAdapter(MixedModule):
    """Each sample's own task's :class:`Adapter` after ``base`` (the slot's previous content):
    ``x + scale * up(act(down(x)))``, any width, activation and scale per task (narrower tasks
    padded with zero rows and columns, which add exactly 0)."""

    def __init__(
        self,
        adapters: Mapping[int, Adapter],
        num_tasks: int,
        routing: TaskRouting,
        base: nn.Module | None = None,
    ) -> None:
        super().__init__(adapters, routing, base)
        self.channel_dim = int(shared_setting((a.channel_dim for a in adapters.values()), "the channel dimension"))
        channels = int(shared_setting((a.down.in_features for a in adapters.values()), "channels"))
        width = max(a.width for a in adapters.values())
        kw = {"dtype": next(iter(adapters.values())).down.weight.dtype}
        down_w = torch.zeros(num_tasks, width, channels, **kw)
        down_b = torch.zeros(num_tasks, width, **kw)
        up_w = torch.zeros(num_tasks, channels, width, **kw)
        up_b = torch.zeros(num_tasks, channels, **kw)
        scale = torch.zeros(num_tasks, **kw)
        # Activations by type: a task's hidden units pass its own activation, selected per sample.
        kinds: dict[type, list[int]] = {}
        with torch.no_grad():
            for task, adapter in adapters.items():
                k = adapter.width
                down_w[task, :k], up_w[task, :, :k] = adapter.down.weight, adapter.up.weight
                if adapter.down.bias is not None:
                    down_b[task, :k], up_b[task] = adapter.down.bias, adapter.up.bias
                scale[task] = adapter.scale
                kinds.setdefault(type(adapter.act), []).append(task)
        self.add_tables(down_w=down_w, down_b=down_b, up_w=up_w, up_b=up_b, scale=scale)
        self.activations = nn.ModuleList(kind() for kind in kinds)
        for i, tasks in enumerate(kinds.values()):
            mask = torch.zeros(num_tasks, **kw)
            mask[tasks] = 1.0
            self.add_tables(**{f"activation_mask_{i}": mask})

    def _activate(self, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if len(self.activations) == 1:
            return self.activations[0](h)
        mixed = torch.zeros_like(h)
        for i, act in enumerate(self.activations):
            mask = getattr(self, f"activation_mask_{i}").index_select(0, ids).to(h.dtype)
            mixed.addcmul_(act(h), mask[:, None, None])
        return mixed

    def _update(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``scale * up(act(down(x)))`` of task ``ids[i]`` on row ``i`` of ``x``."""
        down_w, down_b, up_w, up_b, scale = (
            t.index_select(0, ids).to(x.dtype) for t in (self.down_w, self.down_b, self.up_w, self.up_b, self.scale)
        )
        z = x.movedim(self.channel_dim, -1)
        flat = z.reshape(z.shape[0], -1, z.shape[-1])
        hidden = self._activate(torch.baddbmm(down_b[:, None], flat, down_w.transpose(1, 2)), ids)
        update = torch.baddbmm(up_b[:, None], hidden, up_w.transpose(1, 2)) * scale[:, None, None]
        return update.reshape(z.shape).movedim(-1, self.channel_dim)

    def own(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return x + self._update(x, ids)

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, width={self.down_w.shape[1]}, channel_dim={self.channel_dim}"


def _chosen_sites(anat: Anatomy, position: str) -> list[list[ResidualSite]]:
    """Per block, the sites that ``position`` selects."""
    if not anat.attentions:
        if position == "attn":
            raise NotApplicableError(
                f"a {anat.family} block has no attention residual; use position='mlp' (the block's one residual)"
            )
        return anat.block_sites
    picks = {"attn": (0,), "mlp": (1,), "both": (0, 1)}[position]
    return [[sites[i] for i in picks] for sites in anat.block_sites]


def apply_adapter(model: nn.Module, config: AdapterConfig) -> None:
    """Puts an adapter in the branch (sequential) or shortcut (parallel) slot of the chosen sites."""
    anat = install_sites(model)
    placement = factory_kwargs(model)
    slot = "branch" if config.form == "sequential" else "shortcut"
    widths = per_block(config.width, len(anat.blocks), "width")
    for sites, width in zip(_chosen_sites(anat, config.position), widths, strict=True):
        for site in sites if width else ():
            site.fill(
                slot, Adapter(site.channels, width, site.channel_dim, config.activation, config.scale, **placement)
            )


register_method(
    AdapterConfig,
    apply_adapter,
    "Adapter: a bottleneck MLP (width 8) after each block's MLP, up-projection zero-initialised",
    presets={
        "adapter-parallel": ({"form": "parallel"}, "parallel adapter beside each MLP branch (AdaptFormer form)"),
    },
    capabilities=Capabilities(
        servable=True,
        why_not={"mergeable": "its bottleneck has a nonlinear activation, which no frozen weight can absorb"},
    ),
)
