"""SNF: a small normalizing flow on every shortcut of a frozen backbone (Wang et al., CVPR 2023).

``x_{l+1} = phi_l(h(x_l)) + F(x_l)``: the branch ``F`` stays frozen, the cheap shortcut ``h``
is adapted by an invertible flow ``phi_l``, so no information about the input is lost.
The ablations of the paper are settings of the same config: ``placement="residual"``
puts the flow on the branch output instead (Table 6), ``module="bottleneck"`` puts a
bottleneck MLP on the shortcut instead of the flow (Table 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ..backbones import install_sites
from ..backbones.sites import ResidualSite
from ..inputs import check_value
from .adapter import Adapter
from .common import MAX_SIZE, factory_kwargs
from .flows import ShortcutFlow
from .registry import Capabilities, MethodConfig, register_method

PLACEMENTS = ("shortcut", "residual")
MODULES = ("flow", "bottleneck")
MAX_PLANAR_STEPS = 64
"""The paper uses 0-9 steps; each step is a sequential pass over every position, so a bound keeps a typo
(``planar_steps=100000000``, tens of GB) from being allocated."""


@dataclass
class SNFConfig(MethodConfig):
    """Settings of SNF.

    Attributes:
        planar_steps: planar steps after the affine step (0: SNF-shallow; 6: SNF-deep,
            which matches the paper's parameter counts on ViT-B/L and Swin-B).
        placement: ``"shortcut"`` (the method) or ``"residual"`` (flow on the branch output).
        module: ``"flow"`` or ``"bottleneck"`` (a bottleneck MLP adapter in the flow's place).
        bottleneck_width: hidden width of the bottleneck module (8 gives the paper's 0.29M
            on ViT-B/16).
        init_range: planar parameters start uniform in ``[-init_range, init_range]``.
        memory_efficient: the fused flow (one autograd node saving J scalars per position);
            ``False`` runs the plain sequence of steps (reference, for benchmarks).
    """

    method: ClassVar[str] = "snf"

    planar_steps: int = 6
    placement: str = "shortcut"
    module: str = "flow"
    bottleneck_width: int = 8
    init_range: float = 0.01
    memory_efficient: bool = True

    def __post_init__(self) -> None:
        self.planar_steps = check_value(self.planar_steps, "planar_steps", int, 0, MAX_PLANAR_STEPS)
        self.bottleneck_width = check_value(self.bottleneck_width, "bottleneck_width", int, 1, MAX_SIZE)
        self.init_range = check_value(self.init_range, "init_range", float, 0.0, 10.0)
        check_value(self.memory_efficient, "memory_efficient", bool)
        check_value(self.placement, "placement", str)
        check_value(self.module, "module", str)
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got '{self.placement}'")
        if self.module not in MODULES:
            raise ValueError(f"module must be one of {MODULES}, got '{self.module}'")


def _build_module(site: ResidualSite, config: SNFConfig, placement: dict) -> nn.Module:
    if config.module == "bottleneck":
        # Table 7's bottleneck: the adapter's MLP without biases, on the shortcut.
        return Adapter(site.channels, config.bottleneck_width, site.channel_dim, bias=False, **placement)
    return ShortcutFlow(
        site.channels,
        config.planar_steps,
        channel_dim=site.channel_dim,
        init_range=config.init_range,
        memory_efficient=config.memory_efficient,
        **placement,
    )


def apply_snf(model: nn.Module, config: SNFConfig) -> None:
    """Puts a flow (or the configured module) in a slot of every residual site."""
    placement = factory_kwargs(model)
    slot = "shortcut" if config.placement == "shortcut" else "branch"
    for site in install_sites(model).sites:
        site.fill(slot, _build_module(site, config, placement))


register_method(
    SNFConfig,
    apply_snf,
    "SNF: an invertible flow (affine + planar steps) on every shortcut",
    presets={
        "snf-shallow": ({"planar_steps": 0}, "SNF-shallow: the per-channel affine step only"),
        "snf-deep": ({"planar_steps": 6}, "SNF-deep: affine step + 6 planar steps"),
        "snf-bottleneck": ({"module": "bottleneck"}, "ablation (Table 7): bottleneck MLP on the shortcut"),
        "snf-residual": ({"placement": "residual", "planar_steps": 0}, "ablation (Table 6): flow on the branch"),
    },
    capabilities=Capabilities(
        servable=True,
        why_not={
            "mergeable": "the flow acts on the identity shortcut, which has no weight to fold it into "
            "(and its planar steps are not linear)"
        },
    ),
)
