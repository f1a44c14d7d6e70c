"""NOAH (Zhang, Zhou, Liu: "Neural Prompt Search"): VPT-deep prompts, LoRA and an adapter in
every ViT block, with sizes searched per block. Two methods:

- ``noah-supernet``: every block holds the three modules at their largest size; an *active
  subnet* slices them (weight entanglement, as in AutoFormer: a size-``n`` module is the first
  ``n`` prompts, LoRA ranks or adapter channels of the largest one). In training mode every
  forward draws a random subnet (from torch's global generator, which the engine seeds every
  step, so supernet training is deterministic and resumes exactly); in eval mode the subnet set
  by :func:`set_active_subnet` runs (the largest until one is set).
- ``noah``: the plain modules at fixed per-block sizes, for retraining the subnet a search
  found or one NOAH published (``subnet=<NOAH subnet YAML>`` reads its ``RETRAIN:`` block).

Both reuse the baselines' modules (:class:`PromptTokens`, :class:`LoRALinear`,
:class:`Adapter`): the entangled ones subclass them and slice their parameters with a
``torch.nn.utils.parametrize`` parametrization, so the module math exists once. As in NOAH:
LoRA updates the whole fused ``qkv`` (query, key and value) with scale 1; the adapter sits after
the MLP, sequential; dropout 0.1 on prompts and on LoRA's input. Unlike NOAH: GELU instead of
QuickGELU and no dropout inside the adapter (the shared :class:`Adapter`), the adapter's up
projection starts at zero (NOAH: Xavier), and no input-level prompts (NOAH's are replaced by
block 0's before they act, so they never train).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..backbones import install_sites
from ..backbones.sites import Anatomy, families, fill_slot
from ..inputs import check_sequence, check_value
from .adapter import Adapter, AdapterConfig, apply_adapter
from .common import MAX_SIZE, Size, factory_kwargs, normalise_size, per_block
from .lora import LoRALinear
from .noah_subnets import MODULES, NOAH_SIZES, Subnet, SubnetSpace, quarter_depths, read_noah_subnet
from .registry import Capabilities, MethodConfig, MethodSettingsError, NotApplicableError, register_method
from .vpt import PromptTokens, StripPrompts, VPTConfig, apply_vpt

__all__ = [
    "EntangledAdapter",
    "EntangledLoRA",
    "EntangledPrompts",
    "NoahConfig",
    "NoahSupernetConfig",
    "SubnetSwitch",
    "active_subnet",
    "set_active_subnet",
    "supernet_space",
]

NOAH_DROPOUT = 0.1
"""NOAH's ``drop_rate_prompt`` and ``drop_rate_LoRA`` (supernet_train_prompt.py)."""


def _check_dropout(value: float) -> None:
    check_value(value, "dropout", float, 0.0, 1.0)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value}")


def _only_vit(method: str) -> dict[str, str]:
    """Every family but ViT/DeiT, and why: NOAH's declared unsupported families."""
    return {
        family: f"{method} puts prompt tokens, LoRA and adapters in ViT blocks; this is a {family} backbone. "
        "Use a ViT/DeiT model."
        for family in families()
        if family != "vit"
    }


def _vit_anatomy(model: nn.Module, method: str) -> Anatomy:
    anat = install_sites(model)
    if anat.family != "vit":
        raise NotApplicableError(_only_vit(method)[anat.family])
    return anat


def _prompt_init_range(anat: Anatomy) -> float:
    patch_h, patch_w = anat.patch_size
    return math.sqrt(6.0 / (3 * patch_h * patch_w + anat.embed_dim))  # VPT's initialisation


# ---------------------------------------------------------------- entangled modules


class ActiveSlice(nn.Module):
    """Parametrization: the first ``size`` entries of a parameter along ``dim``."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.dim = dim
        self.size = size

    def forward(self, full: torch.Tensor) -> torch.Tensor:
        return full.narrow(self.dim, 0, self.size)


class _Entangled:
    """Mixin: the module's parameters hold the largest size; ``set_size`` picks how much of them acts.
    Size 0 means no module in that block (the subclass's forward passes its input through)."""

    largest: int
    size: int

    def _entangle(self, dims: dict[str, int]) -> None:
        """Slices each named parameter (``"down.weight"``: the ``weight`` of child ``down``) along its dim."""
        for path, dim in dims.items():
            owner_path, _, name = path.rpartition(".")
            owner = self.get_submodule(owner_path) if owner_path else self
            self.largest = self.size = getattr(owner, name).shape[dim]
            parametrize.register_parametrization(owner, name, ActiveSlice(dim, self.largest), unsafe=True)

    def set_size(self, size: int) -> None:
        if not 0 <= size <= self.largest:
            raise ValueError(f"{type(self).__name__}: size {size} is outside 0..{self.largest}")
        self.size = size
        for module in self.modules():
            if isinstance(module, ActiveSlice):
                module.size = size


class EntangledPrompts(_Entangled, PromptTokens):
    """VPT-deep prompts of one block: the first ``size`` of ``largest`` learned tokens, replacing
    the ``replaces`` tokens the previous prompted block inserted; size 0 lets them travel on."""

    def __init__(self, largest: int, dim: int, num_prefix_tokens: int, init_range: float, dropout: float, **kw):
        super().__init__(largest, dim, num_prefix_tokens, 0, init_range, dropout, **kw)
        self._entangle({"prompts": 0})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.size else x


class EntangledLoRA(_Entangled, LoRALinear):
    """LoRA on a whole fused ``qkv`` at scale 1 (NOAH's), rank sliced to ``size``; 0: the frozen layer alone."""

    mergeable = False  # the update changes with the active subnet: nothing fixed to fold in

    def __init__(self, base_layer: nn.Linear, largest: int, dropout: float) -> None:
        super().__init__(base_layer, largest, alpha=float(largest), dropout=dropout)
        self._entangle({"lora_A": 0, "lora_B": 1})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.size else self.base_layer(x)


class EntangledAdapter(_Entangled, Adapter):
    """An adapter whose bottleneck is the first ``size`` of ``largest`` channels; 0: the identity."""

    def __init__(self, channels: int, largest: int, channel_dim: int, **kw) -> None:
        super().__init__(channels, largest, channel_dim, **kw)
        self._entangle({"down.weight": 0, "down.bias": 0, "up.weight": 1})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.size else x


def _check_qkv(anat: Anatomy) -> None:
    """Refuses, before anything is edited, attention layers whose fused qkv is not a plain linear."""
    for attn in anat.attentions:
        if type(getattr(attn, "qkv", None)) is not nn.Linear:
            found = type(getattr(attn, "qkv", None)).__name__
            raise NotApplicableError(f"NOAH's LoRA wraps the attention's fused qkv nn.Linear, found {found}")


# ---------------------------------------------------------------- the supernet


@dataclass
class NoahSupernetConfig(MethodConfig):
    """Settings of NOAH's supernet.

    Attributes:
        sizes: the embedding sizes a block's prompt length, LoRA rank and adapter width take
            (NOAH: 5, 10, 50, 100); the modules are built at the largest.
        depths: how many blocks from the input carry each module type; ``None``: NOAH's
            {3, 6, 9, 12} as quarters of the model's depth.
        dropout: on prompt tokens and on LoRA's input (NOAH's 0.1).
        sample: draw a random subnet in every training forward (NOAH's supernet training);
            ``False`` trains the subnet set with :func:`set_active_subnet`.
    """

    method: ClassVar[str] = "noah-supernet"

    sizes: tuple[int, ...] = NOAH_SIZES
    depths: tuple[int, ...] | None = None
    dropout: float = NOAH_DROPOUT
    sample: bool = True

    def __post_init__(self) -> None:
        for name in ("sizes", "depths"):
            value = getattr(self, name)
            if value is None:
                continue
            value = check_sequence(value, name, int, 1, MAX_SIZE)
            if len(set(value)) != len(value):
                raise ValueError(f"{name} lists a value twice: {list(value)}")
            setattr(self, name, tuple(sorted(value)))
        _check_dropout(self.dropout)
        if not isinstance(self.sample, bool):
            raise ValueError(f"sample must be true or false, got {self.sample!r}")

    def space(self, num_blocks: int) -> SubnetSpace:
        depths = self.depths or quarter_depths(num_blocks)
        if max(depths) > num_blocks:
            raise NotApplicableError(f"depths {list(depths)} exceed the model's {num_blocks} blocks")
        return SubnetSpace(self.sizes, depths, num_blocks)


class SubnetSwitch(nn.Module):
    """Chooses the subnet of each forward (a pre-hook of the model): a random one while training
    with ``sample``, else the one set by :func:`set_active_subnet`. Holds no parameters."""

    def __init__(self, space: SubnetSpace, sample: bool) -> None:
        super().__init__()
        self.space = space
        self.sample = sample
        self.chosen = space.largest()
        self.current: Subnet | None = None

    def pre_hook(self, model: nn.Module, args: tuple) -> None:
        subnet = self.space.random(_torch_draw) if self.training and self.sample else self.chosen
        if subnet != self.current:
            _activate(model, subnet)
            self.current = subnet


def _torch_draw(n: int) -> int:
    return int(torch.randint(n, ()).item())


def _switch(model: nn.Module) -> SubnetSwitch:
    switch = getattr(model, "noah_switch", None)
    if not isinstance(switch, SubnetSwitch):
        raise ValueError("this model has no NOAH supernet; apply 'noah-supernet' first")
    return switch


def _activate(model: nn.Module, subnet: Subnet) -> None:
    prompts_of, loras, adapters = [], [], []
    for module in model.modules():  # one of each per block, in forward order
        if isinstance(module, EntangledPrompts):
            prompts_of.append(module)
        elif isinstance(module, EntangledLoRA):
            loras.append(module)
        elif isinstance(module, EntangledAdapter):
            adapters.append(module)
    carried = 0
    for prompts, size in zip(prompts_of, subnet.prompt, strict=True):
        prompts.set_size(size)
        if size:
            prompts.replaces, carried = carried, size
    model.token_exit.slot.count = carried
    for lora, rank in zip(loras, subnet.lora, strict=True):
        lora.set_size(rank)
    for adapter, width in zip(adapters, subnet.adapter, strict=True):
        adapter.set_size(width)


def set_active_subnet(model: nn.Module, subnet: Subnet) -> None:
    """Makes ``subnet`` the one that runs in eval mode (and in training when ``sample`` is off).
    Any sizes up to the largest work, in the search space or not."""
    switch = _switch(model)
    largest = switch.space.largest_size
    if subnet.num_blocks != switch.space.num_blocks:
        raise ValueError(f"the subnet has {subnet.num_blocks} blocks, the model {switch.space.num_blocks}")
    if any(size > largest for module in MODULES for size in subnet.sizes(module)):
        raise ValueError(f"subnet sizes go up to the supernet's largest, {largest}: {subnet.label()}")
    switch.chosen = subnet
    _activate(model, subnet)
    switch.current = subnet


def active_subnet(model: nn.Module) -> Subnet:
    """The subnet that eval-mode forwards run."""
    return _switch(model).chosen


def supernet_space(model: nn.Module) -> SubnetSpace:
    """The search space of a model tuned with ``noah-supernet``."""
    return _switch(model).space


def apply_noah_supernet(model: nn.Module, config: NoahSupernetConfig) -> None:
    """Fills every block with entangled prompts, LoRA and adapter at the largest size, and hooks
    the :class:`SubnetSwitch` in front of the model's forward."""
    anat = _vit_anatomy(model, "noah-supernet")
    space = config.space(len(anat.blocks))
    kw = factory_kwargs(model)
    largest = space.largest_size
    init_range = _prompt_init_range(anat)
    _check_qkv(anat)
    for block, attn, sites in zip(anat.blocks, anat.attentions, anat.block_sites, strict=True):
        prompts = EntangledPrompts(largest, anat.embed_dim, anat.num_prefix_tokens, init_range, config.dropout, **kw)
        fill_slot(block, "token_slot", prompts)
        attn.qkv = EntangledLoRA(attn.qkv, largest, config.dropout)
        mlp_site = sites[1]
        mlp_site.fill("branch", EntangledAdapter(mlp_site.channels, largest, mlp_site.channel_dim, **kw))
    fill_slot(model.token_exit, "slot", StripPrompts(anat.num_prefix_tokens, 0))
    model.noah_switch = SubnetSwitch(space, config.sample)
    model.register_forward_pre_hook(model.noah_switch.pre_hook)
    set_active_subnet(model, space.largest())


# ---------------------------------------------------------------- a subnet retrained (or NOAH's published ones)


@dataclass
class NoahConfig(MethodConfig):
    """Settings of a NOAH subnet as a plain model.

    Attributes:
        prompt, lora, adapter: per-block prompt lengths, LoRA ranks and adapter widths (an int
            for every block, or one per block; 0: none). Sizes not given mean no such module.
        subnet: a NOAH subnet YAML; its ``RETRAIN:`` block gives the three sizes (read when the
            config is built, then recorded in ``source``, so a tuned file does not need the YAML).
        source: where the sizes came from (informational).
        dropout: on prompt tokens and on LoRA's input (NOAH's 0.1).
    """

    method: ClassVar[str] = "noah"

    prompt: Size | None = None
    lora: Size | None = None
    adapter: Size | None = None
    subnet: str | None = None
    source: str | None = None
    dropout: float = NOAH_DROPOUT

    def __post_init__(self) -> None:
        if self.subnet is not None:
            check_value(self.subnet, "subnet", str)
            if any(getattr(self, m) is not None for m in MODULES):
                raise ValueError("give either subnet=<NOAH subnet YAML> or prompt/lora/adapter sizes, not both")
            found = read_noah_subnet(self.subnet)
            self.prompt, self.lora, self.adapter = found.prompt, found.lora, found.adapter
            self.source, self.subnet = str(self.subnet), None
        for module in MODULES:
            value = getattr(self, module)
            if value is not None:
                setattr(self, module, normalise_size(value, module))
        _check_dropout(self.dropout)

    @property
    def has_sizes(self) -> bool:
        return any(getattr(self, m) is not None for m in MODULES)


def apply_noah(model: nn.Module, config: NoahConfig) -> None:
    """Prompts (VPT-deep per block), LoRA on the fused qkv and a sequential adapter after the MLP,
    each at its per-block size; all sizes are checked against the model before it is edited."""
    if not config.has_sizes:
        raise MethodSettingsError(
            "method 'noah' needs per-block sizes: subnet=<NOAH subnet YAML> (its RETRAIN: block) or "
            "prompt/lora/adapter; to find them, run the search: snftune search noah"
        )
    anat = _vit_anatomy(model, "noah")
    blocks = len(anat.blocks)
    prompt, lora, adapter = (
        per_block(getattr(config, m), blocks, m) if getattr(config, m) is not None else [0] * blocks for m in MODULES
    )
    _check_qkv(anat)
    apply_vpt(model, VPTConfig(length=tuple(prompt), deep=True, dropout=config.dropout))
    for attn, rank in zip(anat.attentions, lora, strict=True):
        if rank:
            attn.qkv = LoRALinear(attn.qkv, rank, alpha=float(rank), dropout=config.dropout)  # scale 1, as NOAH
    apply_adapter(model, AdapterConfig(width=tuple(adapter), position="mlp", form="sequential"))


register_method(
    NoahSupernetConfig,
    apply_noah_supernet,
    "NOAH's supernet: prompts, LoRA and adapter at size 100 in every block, a random subnet per training step",
    capabilities=Capabilities(
        unsupported_families=_only_vit("noah-supernet"),
        why_not={
            "mergeable": "its update changes with the active subnet: there is nothing fixed to fold in",
            "servable": "its modules change with the active subnet; serve a retrained subnet ('noah') instead",
        },
    ),
)
register_method(
    NoahConfig,
    apply_noah,
    "NOAH: prompts, LoRA (qkv) and adapter with per-block sizes (subnet=<NOAH subnet YAML>, or a search's result)",
    capabilities=Capabilities(
        servable=True,
        unsupported_families=_only_vit("noah"),
        why_not={"mergeable": "its prompts and adapters are no update of a frozen weight"},
    ),
)
