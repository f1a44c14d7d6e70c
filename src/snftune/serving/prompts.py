"""VPT tasks mixed in one batch: a prompt region of fixed width, padded and masked per sample.

Tasks may have different prompt lengths, per block too (VPT-deep with per-block lengths), and
non-VPT tasks have none. Every sample of a batch therefore carries the same ``P`` prompt
slots (``P``: the longest prompt of any task at any block) right after the prefix tokens,
from block 0 to the token exit, where :class:`~snftune.methods.vpt.StripPrompts` removes them
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

import torch
from torch import nn

from ..backbones.sites import Anatomy, fill_slot
from ..methods.vpt import PromptTokens, StripPrompts
from .routing import TaskRouting

__all__ = ["MixedPrompts", "PromptRegion", "StripPromptRegion", "install_prompts"]


class PromptRegion:
    """Whether the batch now being served carries the prompt region (set by block 0's slot)."""

    def __init__(self, tasks: frozenset[int]) -> None:
        self.tasks = tasks
        self.open = False


class MixedPrompts(nn.Module):
    """One block's token slot: the prompts of each sample's own task, and its attention mask.

    Args:
        prompts: {task: the (L, D) prompts this task inserts or replaces in this block}.
        valid_before: (T, P) bool, which slots hold a task's prompts as the block is entered.
        insert: True in block 0, which opens the prompt region (all slots start as padding).
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
                valid[task] = torch.arange(width) < tokens.shape[0]
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
) -> int:
    """Fills every block's token slot and the token exit of ``model`` for the VPT tasks.

    ``task_prompts``: {task: {block index: its PromptTokens there}}. Returns the width ``P``
    of the prompt region (0, and nothing installed, without prompts).
    """
    width = max((p.length for blocks in task_prompts.values() for p in blocks.values()), default=0)
    if not width:
        return 0
    reference = next(p.prompts for blocks in task_prompts.values() for p in blocks.values())
    valid = torch.zeros(num_tasks, width, dtype=torch.bool)
    region = PromptRegion(frozenset(task_prompts))
    for index, (block, attention) in enumerate(zip(anat.blocks, anat.attentions, strict=True)):
        here = {t: blocks[index].prompts for t, blocks in task_prompts.items() if index in blocks}
        mixed = MixedPrompts(
            here, valid, anat.num_prefix_tokens, anat.embed_dim, index == 0, routing, region, reference.dtype
        )
        valid = mixed.valid.clone()
        fill_slot(block, "token_slot", mixed)
        attention.register_forward_pre_hook(mixed.attention_pre_hook, with_kwargs=True)
    fill_slot(model.token_exit, "slot", StripPromptRegion(anat.num_prefix_tokens, width, region))
    return width
