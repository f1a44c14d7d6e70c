"""VQT (Tu et al., CVPR 2023): visual query tokens, a few learned tokens per block that only
read the block's tokens, summarised into the classifier head.

Block ``l`` gets ``tokens`` query tokens ``q_l`` (:class:`QueryTokens`, in its ``token_slot``,
after the prefix tokens). They run through the block with the other tokens, but attention is
masked so that they are never keys or values: the queries read the class and patch tokens,
and the original tokens never see the queries, so the backbone's own features are those of
the frozen model (to rounding: the masked attention may take another kernel). The next
block's slot (or, after the last block, the token exit) takes the queries' outputs ``z_l``
away. The head reads ``[normalise(f), normalise(z_1), ..., normalise(z_L)]``: the pooled
feature ``f`` and every block's query outputs, flattened, each scaled to unit L2 norm (the
official code's default ``NORMALIZE_FEATS``); it becomes a linear layer of
``C * (1 + L * tokens)`` inputs.

Not mergeable by nature: the queries' outputs feed the head, so no weight of the backbone
can stand for them. Token models only (ViT/DeiT, EVA/EVA-02, BEiT).

Served in a mixed batch (:meth:`QueryTokens.install_mixed`), a VQT task's queries take its
samples' slots of VPT's prompt region (shared with any VPT task), never as keys; a
:class:`QueryReader` hands each task's query outputs to its own collector, which its own wider
head (the pre-hook it carries) reads when serving calls it on the task's samples.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import anatomy, install_sites
from ..backbones.sites import fill_slot
from .common import factory_kwargs
from .mixed import Placed, TaskRouting
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method
from .vpt import PromptTokens, StripPrompts


@dataclass
class VQTConfig(MethodConfig):
    """Settings of VQT.

    Attributes:
        tokens: query tokens per block (the official code's default, 5; VQT varies it per study).
        dropout: dropout on the query tokens (0.1 in the official VTAB-1k script).
        normalise: scale the pooled feature and each block's query outputs to unit L2 norm before
            the head (the official default).
    """

    method: ClassVar[str] = "vqt"

    tokens: int = 5
    dropout: float = 0.1
    normalise: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 1:
            raise ValueError(f"tokens must be an int >= 1, got {self.tokens!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.normalise, bool):
            raise ValueError(f"normalise must be true or false, got {self.normalise!r}")


class QueryOutputs(nn.Module):
    """Collects the query tokens' outputs of one forward, for the head (``model.vqt``)."""

    def __init__(self, normalise: bool) -> None:
        super().__init__()
        self.normalise = normalise
        self._outputs: list[torch.Tensor] = []

    def record(self, z: torch.Tensor) -> None:
        self._outputs.append(z)

    def start(self) -> None:
        """A new forward (the first block's slot) collects afresh."""
        self._outputs = []

    def summarise(self, head: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook of the head: the pooled feature and every block's query outputs."""
        if not self._outputs:
            raise RuntimeError("VQT's head reads the query tokens of model(x); call the model, not its head alone")
        groups = [args[0], *(z.flatten(1) for z in self._outputs)]
        if self.normalise:
            groups = [F.normalize(g, dim=-1) for g in groups]
        self._outputs = []
        return (torch.cat(groups, dim=-1), *args[1:])


class QueryTokens(PromptTokens):
    """A block's token slot: VPT's prompt slot (:class:`~.vpt.PromptTokens`: drop the
    ``replaces`` tokens carried in, insert this block's ``prompts`` after the prefix), whose
    tokens are queries: the outputs carried in go to the collector first, and
    :meth:`mask_queries` keeps every token from attending to them."""

    attended = False
    """No token attends to a query token (in a mixed batch too: see :meth:`install_mixed`)."""

    def __init__(self, *args, outputs: QueryOutputs, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "outputs", outputs)  # shared with every block: not a submodule

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """VPT's prompt region (:meth:`PromptTokens.install_mixed`), the queries never keys, and a
        :class:`QueryReader` on every block for the tasks' own collectors (which their heads read)."""
        super().install_mixed(model, placed, num_tasks, routing)
        collectors = {task: query for instances in placed.values() for task, query in instances.items()}
        reader = QueryReader(collectors, routing)
        for index, block in enumerate(anatomy(model).blocks):
            block.register_forward_hook(functools.partial(reader.block_output, index == 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.replaces:
            p = self.num_prefix_tokens
            self.outputs.record(x[:, p : p + self.replaces])
        else:
            self.outputs.start()
        return super().forward(x)

    def mask_queries(self, attention: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of the block's attention: no token attends to a query token."""
        x = args[0] if args else kwargs["x"]
        p, n = self.num_prefix_tokens, self.length
        keys = torch.ones(x.shape[1], dtype=torch.bool, device=x.device)
        keys[p : p + n] = False
        mask = keys.expand(1, 1, x.shape[1], -1)
        given = kwargs.get("attn_mask")
        if given is not None:
            mask = given & mask if given.dtype == torch.bool else given.masked_fill(~mask, float("-inf"))
        return args, {**kwargs, "attn_mask": mask}


class QueryReader:
    """Reads the query outputs of each VQT task's samples in a mixed batch (as each block leaves
    them in the prompt region) into that task's own :class:`QueryOutputs`, the collector its
    head's pre-hook summarises: the head then sees its task's samples only, in batch order, as
    serving hands them to it."""

    def __init__(self, queries: dict[int, QueryTokens], routing: TaskRouting) -> None:
        self.routing = routing
        self.tasks = {
            task: (routing.register({task}), query.outputs, query.num_prefix_tokens, query.length)
            for task, query in queries.items()
        }

    def block_output(self, first: bool, block: nn.Module, args: tuple, output: torch.Tensor) -> None:
        """Forward hook of every block (``first``: block 0, which starts a new forward)."""
        for task, (key, outputs, p, tokens) in self.tasks.items():
            if task not in self.routing.present:
                continue
            if first:
                outputs.start()
            rows, _ = self.routing.select(key, output.shape[0])
            mine = output if rows is None else output.index_select(0, rows)
            outputs.record(mine[:, p : p + tokens])


class TakeQueryOutputs(StripPrompts):
    """The token exit's slot: VPT's :class:`~.vpt.StripPrompts`, the last block's query outputs
    going to the collector."""

    def __init__(self, num_prefix_tokens: int, count: int, outputs: QueryOutputs) -> None:
        super().__init__(num_prefix_tokens, count)
        object.__setattr__(self, "outputs", outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.num_prefix_tokens
        self.outputs.record(x[:, p : p + self.count])
        return super().forward(x)


def _head_name(model: nn.Module) -> str:
    head = model.get_classifier()
    if isinstance(head, tuple):
        raise NotApplicableError(
            f"VQT widens one linear classifier head; this {type(model).__name__} has {len(head)} (a distilled "
            "DeiT: use its non-distilled form)"
        )
    name = next((n for n, child in model.named_children() if child is head), None)
    if not isinstance(head, nn.Linear) or name is None:
        raise NotApplicableError(
            f"VQT widens the linear classifier head; {type(model).__name__}'s head is a {type(head).__name__} "
            "(build the model with num_classes > 0)"
        )
    return name


def _replace_head(model: nn.Module, name: str, in_features: int, outputs: QueryOutputs) -> None:
    head = getattr(model, name)
    wider = nn.Linear(in_features, head.out_features, **factory_kwargs(head))
    wider.register_forward_pre_hook(outputs.summarise)
    setattr(model, name, wider)


def apply_vqt(model: nn.Module, config: VQTConfig) -> None:
    """Query tokens in every block's token slot, their collector ``model.vqt``, a wider head."""
    anat = install_sites(model)
    if anat.embed_dim is None:
        raise NotApplicableError(
            f"VQT adds query tokens to a token sequence, which this {anat.family} backbone lacks: "
            f"{anat.no_token_sequence}. Use a token model (ViT/DeiT, EVA, BEiT)."
        )
    head_name = _head_name(model)
    kw = factory_kwargs(model)
    patch_h, patch_w = anat.patch_size
    init_range = math.sqrt(6.0 / (3 * patch_h * patch_w + anat.embed_dim))  # VPT's, as VQT's code
    outputs = QueryOutputs(config.normalise)
    p, t = anat.num_prefix_tokens, config.tokens
    slots = []
    for i, (block, attention) in enumerate(zip(anat.blocks, anat.attentions, strict=True)):
        slot = QueryTokens(t, anat.embed_dim, p, t if i else 0, init_range, config.dropout, outputs=outputs, **kw)
        fill_slot(block, "token_slot", slot)
        slots.append((attention, slot))
    fill_slot(model.token_exit, "slot", TakeQueryOutputs(p, t, outputs))
    _replace_head(model, head_name, anat.embed_dim * (1 + len(anat.blocks) * t), outputs)
    for attention, slot in slots:
        attention.register_forward_pre_hook(slot.mask_queries, with_kwargs=True)
    model.vqt = outputs


register_method(
    VQTConfig,
    apply_vqt,
    "VQT: 5 query tokens per block that only read its tokens, their outputs summarised into the head",
    capabilities=Capabilities(
        mergeable=False,
        servable=True,
        unsupported_families={
            family: "VQT adds query tokens to a token sequence; this family computes feature maps (or windows "
            "without a class token sequence) instead"
            for family in ("swin", "swinv2", "convnext", "resnet", "regnet", "efficientnet")
        },
        why_not={
            "mergeable": "the query tokens' outputs feed the classifier head: no backbone weight can stand for them",
        },
    ),
)
