"""VPT (Jia et al., ECCV 2022): learned prompt tokens in a frozen token model's sequence
(ViT/DeiT, EVA/EVA-02, BEiT).

Shallow: ``length`` prompts are inserted after the class/prefix tokens as the sequence
enters block 0 and travel through every block. Deep: every block replaces the prompts it
receives with its own. Both fill the token anatomy's slots: each block's ``token_slot``
(:class:`PromptTokens`) and the model's ``token_exit.slot`` (:class:`StripPrompts`), which
removes the prompts before the final norm, so token and average pooling see exactly the
original tokens. Position encodings stay those of the original tokens: prompts get no
position embedding (it is added before block 0), the identity rotation under EVA's rope and
no relative position bias in BEiT (the backbone's token blocks see to both).

Per-block lengths (a tuple, deep only) give each block its own prompt count; a 0 leaves
that block's input as it is, so the previous block's prompts travel on (NOAH's depth).

Served in a mixed batch (:meth:`PromptTokens.install_mixed`), tasks may have different prompt
lengths, per block too, and non-VPT tasks have none. Every sample of a batch therefore carries
the same ``P`` prompt slots (``P``: the longest prompt of any task at any block) right after the prefix tokens,
from block 0 to the token exit, where :class:`StripPromptRegion` removes them
before the final norm. In a block where a task inserts or replaces its prompts, its samples'
slots take its ``L`` prompts followed by ``P - L`` zero tokens; elsewhere they travel on, as a
single-task model's prompts do. The slots a sample's own task does not fill are left out of
every attention as keys (a key-padding mask passed to the block's attention), so the real
tokens of each sample attend to exactly the tokens of its single-task model: attention is the
only place where tokens meet, and the order of the keys does not change it. Padding tokens
still pass through the blocks as queries; their outputs are never read. A batch with no
sample of a VPT task opens no region at all, and runs as if no VPT task were served.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..backbones import anatomy, install_sites
from ..backbones.sites import NO_TOKENS_IN_FEATURE_MAPS, Anatomy, fill_slot
from ..backbones.swin import NO_TOKEN_SEQUENCE
from ..inputs import Rule, check_value
from .common import RATE, Size, factory_kwargs, normalise_size, per_block
from .mixed import Placed, TaskRouting
from .registry import Capabilities, MethodConfig, NotApplicableError, capabilities, register_method


def _no_prompts_on(family: str, why: str) -> str:
    return (
        f"VPT inserts prompt tokens into a token sequence, which this {family} backbone lacks: {why}. "
        "Use a token model (ViT/DeiT, EVA, BEiT), or a method that works on any backbone (snf, adapter, bitfit)."
    )


UNSUPPORTED_FAMILIES = {
    **{family: _no_prompts_on(family, NO_TOKEN_SEQUENCE) for family in ("swin", "swinv2")},
    **{
        family: _no_prompts_on(family, NO_TOKENS_IN_FEATURE_MAPS)
        for family in ("resnet", "regnet", "convnext", "efficientnet")
    },
}
"""The backbone families without a token sequence, and why (VPT's declared capabilities)."""

MAX_PROMPT_LENGTH = 1024
"""Every prompt token joins the attention sequence of every block (the paper uses up to 200 on a
sequence of 197): ``length=100000`` would be accepted and never finish an epoch."""


INIT_RANGE = Rule(float, 0.0, 10.0, low_open=True, optional=True, hint="unset: the paper's Xavier range")


@dataclass
class VPTConfig(MethodConfig):
    """Settings of VPT.

    Attributes:
        length: prompt tokens, an int, or (deep only) one count per block. Default 10: the
            VPT paper searches {1, 5, 10, 50, 100, 200} per task; 10 is a common VTAB-1k choice.
        deep: ``False`` for VPT-shallow (prompts at the input), ``True`` for VPT-deep.
        dropout: dropout on the prompt tokens (VPT's prompt dropout; 0.0 as in its VTAB runs).
        init_range: prompts start uniform in ``[-init_range, init_range]``; ``None`` uses
            VPT's ``sqrt(6 / (3 * patch_h * patch_w + embed_dim))``.
    """

    method: ClassVar[str] = "vpt"

    length: Size = 10
    deep: bool = False
    dropout: float = 0.0
    init_range: float | None = None

    def __post_init__(self) -> None:
        self.length = normalise_size(self.length, "length", MAX_PROMPT_LENGTH)
        check_value(self.deep, "deep", bool)
        self.dropout = RATE.check("dropout", self.dropout)
        self.init_range = INIT_RANGE.check("init_range", self.init_range)
        if isinstance(self.length, tuple) and not self.deep:
            raise ValueError("per-block prompt lengths need deep=True; VPT-shallow prompts exist only at the input")


class PromptTokens(nn.Module):
    """Drops the ``replaces`` prompts carried in, then inserts ``length`` learned ones after the prefix."""

    def __init__(
        self,
        length: int,
        dim: int,
        num_prefix_tokens: int,
        replaces: int,
        init_range: float,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.replaces = replaces
        self.prompts = nn.Parameter(torch.empty(length, dim, device=device, dtype=dtype))
        self.dropout = nn.Dropout(dropout)
        nn.init.uniform_(self.prompts, -init_range, init_range)

    @property
    def length(self) -> int:
        return self.prompts.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.num_prefix_tokens
        prompts = self.dropout(self.prompts).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :p], prompts, x[:, p + self.replaces :]], dim=1)

    def extra_repr(self) -> str:
        return f"length={self.length}, replaces={self.replaces}, num_prefix_tokens={self.num_prefix_tokens}"

    attended: ClassVar[bool] = True
    """Whether the other tokens attend to these (VPT's prompts); VQT's query tokens only read them."""

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Fills every block's token slot and the token exit of ``model`` with the prompt region
        of the VPT tasks (the mixed-batch protocol; see the module doc)."""
        anat = anatomy(model)
        block_of = {name: index for index, name in enumerate(anat.block_names)}
        by_task: dict[int, dict[int, PromptTokens]] = {}
        for path, instances in placed.items():
            block = block_of[path.rpartition(".")[0]]
            for task, prompts in instances.items():
                by_task.setdefault(task, {})[block] = prompts
        never_keys = frozenset() if cls.attended else frozenset(by_task)
        install_prompts(model, anat, by_task, num_tasks, routing, never_keys)


class StripPrompts(nn.Module):
    """Removes the ``count`` prompt tokens that follow the prefix tokens."""

    def __init__(self, num_prefix_tokens: int, count: int) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.count = count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.num_prefix_tokens
        return torch.cat([x[:, :p], x[:, p + self.count :]], dim=1)

    def extra_repr(self) -> str:
        return f"count={self.count}, num_prefix_tokens={self.num_prefix_tokens}"


class PromptRegion:
    """Whether the batch now being served carries the prompt region (set by block 0's slot), and
    what it was built from (``task_prompts``, ``never_keys``; the attention hooks it put in)."""

    def __init__(self, task_prompts: dict[int, dict[int, PromptTokens]], never_keys: frozenset[int]) -> None:
        self.tasks = frozenset(task_prompts)
        self.task_prompts = task_prompts
        self.never_keys = never_keys
        self.hooks: list = []
        self.open = False


class MixedPrompts(nn.Module):
    """One block's token slot: the prompts of each sample's own task, and its attention mask.

    Args:
        prompts: {task: the (L, D) prompts this task inserts or replaces in this block}.
        valid_before: (T, P) bool, which slots hold a task's prompts as the block is entered.
        insert: True in block 0, which opens the prompt region (all slots start as padding).
        never_keys: tasks whose prompts no token attends to (VQT's query tokens).
    """

    def __init__(
        self,
        prompts: dict[int, torch.Tensor],
        valid_before: torch.Tensor,
        num_prefix_tokens: int,
        dim: int,
        insert: bool,
        routing: TaskRouting,
        region: PromptRegion,
        dtype: torch.dtype,
        never_keys: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__()
        num_tasks, width = valid_before.shape
        self.routing = routing
        self.region = region
        self.num_prefix_tokens = num_prefix_tokens
        self.width = width
        self.insert = insert
        self.tasks = frozenset(prompts)
        table = torch.zeros(num_tasks, width, dim, dtype=dtype)
        replaces = torch.zeros(num_tasks, dtype=torch.bool)
        valid = valid_before.clone()
        with torch.no_grad():
            for task, tokens in prompts.items():
                table[task, : tokens.shape[0]] = tokens
                replaces[task] = True
                valid[task] = torch.arange(width) < (0 if task in never_keys else tokens.shape[0])
        self.register_buffer("prompts", table, persistent=False)
        self.register_buffer("replaces", replaces, persistent=False)
        self.register_buffer("valid", valid, persistent=False)
        self.masked_tasks = frozenset(int(t) for t in (~valid.all(dim=1)).nonzero().flatten())
        self._mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, p, width = x.shape[0], self.num_prefix_tokens, self.width
        gather = self.routing.gather
        self._mask = None
        if self.insert:
            self.region.open = self.routing.any_present(self.region.tasks)
        if not self.region.open:
            return x
        if self.insert:
            x = torch.cat([x[:, :p], gather(self.prompts, n).to(x.dtype), x[:, p:]], dim=1)
        elif self.routing.any_present(self.tasks):
            region = torch.where(
                gather(self.replaces, n)[:, None, None], gather(self.prompts, n).to(x.dtype), x[:, p : p + width]
            )
            x = torch.cat([x[:, :p], region, x[:, p + width :]], dim=1)
        if self.routing.any_present(self.masked_tasks):
            keys = torch.ones(n, x.shape[1], dtype=torch.bool, device=x.device)
            keys[:, p : p + width] = gather(self.valid, n)
            self._mask = keys[:, None, None, :]  # (N, heads, queries, keys): True takes part
        return x

    def attention_pre_hook(self, attention: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Passes this block's key-padding mask to its attention (timm's ``attn_mask``)."""
        if self._mask is None:
            return args, kwargs
        return args, {**kwargs, "attn_mask": self._mask}

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, width={self.width}, insert={self.insert}"


class StripPromptRegion(StripPrompts):
    """The token exit: removes the prompt region, when the batch carries one."""

    def __init__(self, num_prefix_tokens: int, width: int, region: PromptRegion) -> None:
        super().__init__(num_prefix_tokens, width)
        self.region = region

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.region.open else x


def install_prompts(
    model: nn.Module,
    anat: Anatomy,
    task_prompts: dict[int, dict[int, PromptTokens]],
    num_tasks: int,
    routing: TaskRouting,
    never_keys: frozenset[int] = frozenset(),
) -> int:
    """Fills every block's token slot and the token exit of ``model`` for the VPT tasks.

    ``task_prompts``: {task: {block index: its PromptTokens there}}; ``never_keys``: the tasks
    whose prompts no token attends to (VQT's queries). A second kind of prompts served beside
    the first (VQT beside VPT) joins its region: the region is rebuilt for both kinds' tasks.
    Returns the width ``P`` of the prompt region (0, and nothing installed, without prompts).
    """
    previous = getattr(getattr(model, "token_exit", None), "slot", None)
    if isinstance(previous, StripPromptRegion):
        task_prompts = {**previous.region.task_prompts, **task_prompts}
        never_keys = never_keys | previous.region.never_keys
        _remove_region(model, anat, previous.region)
    width = max((p.length for blocks in task_prompts.values() for p in blocks.values()), default=0)
    if not width:
        return 0
    reference = next(p.prompts for blocks in task_prompts.values() for p in blocks.values())
    valid = torch.zeros(num_tasks, width, dtype=torch.bool)
    region = PromptRegion(task_prompts, never_keys)
    p, dim = anat.num_prefix_tokens, anat.embed_dim
    for index, (block, attention) in enumerate(zip(anat.blocks, anat.attentions, strict=True)):
        here = {t: blocks[index].prompts for t, blocks in task_prompts.items() if index in blocks}
        mixed = MixedPrompts(here, valid, p, dim, index == 0, routing, region, reference.dtype, never_keys)
        valid = mixed.valid.clone()
        fill_slot(block, "token_slot", mixed)
        region.hooks.append(attention.register_forward_pre_hook(mixed.attention_pre_hook, with_kwargs=True))
    fill_slot(model.token_exit, "slot", StripPromptRegion(p, width, region))
    return width


def _remove_region(model: nn.Module, anat: Anatomy, region: PromptRegion) -> None:
    """Empties the token slots and exit that ``region`` filled, and removes its attention hooks."""
    for block in anat.blocks:
        block.token_slot = nn.Identity()
    model.token_exit.slot = nn.Identity()
    for hook in region.hooks:
        hook.remove()


def _lengths(config: VPTConfig, num_blocks: int) -> list[int]:
    if isinstance(config.length, int) and not config.deep:
        return [config.length] + [0] * (num_blocks - 1)
    return per_block(config.length, num_blocks, "length")


def apply_vpt(model: nn.Module, config: VPTConfig) -> None:
    """Fills the token slots of the blocks that get prompts, and the token exit."""
    anat = install_sites(model)
    if anat.embed_dim is None:
        raise NotApplicableError(
            capabilities(config).reason(anat.family) or _no_prompts_on(anat.family, anat.no_token_sequence)
        )
    kw = factory_kwargs(model)
    patch_h, patch_w = anat.patch_size
    init_range = config.init_range or math.sqrt(6.0 / (3 * patch_h * patch_w + anat.embed_dim))
    carried = 0
    for block, length in zip(anat.blocks, _lengths(config, len(anat.blocks)), strict=True):
        if length:
            prompts = PromptTokens(
                length, anat.embed_dim, anat.num_prefix_tokens, carried, init_range, config.dropout, **kw
            )
            fill_slot(block, "token_slot", prompts)
            carried = length
    if carried:
        fill_slot(model.token_exit, "slot", StripPrompts(anat.num_prefix_tokens, carried))


register_method(
    VPTConfig,
    apply_vpt,
    "VPT: learned prompt tokens after the class token (at the input, or replaced in every block)",
    presets={
        "vpt-shallow": ({"deep": False}, "VPT-shallow: 10 prompt tokens inserted at the input"),
        "vpt-deep": ({"deep": True}, "VPT-deep: 10 prompt tokens replaced in every block"),
    },
    capabilities=Capabilities(
        servable=True,
        unsupported_families=UNSUPPORTED_FAMILIES,
        why_not={"mergeable": "its prompt tokens lengthen the sequence; they are no update of a frozen weight"},
    ),
)
