"""Per-task classifier heads of different class counts, and the padded output they give."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

__all__ = ["MultiTaskOutput", "TaskHeads"]


class MultiTaskOutput(NamedTuple):
    """Logits of a mixed-task batch, one row per sample, padded to the widest head.

    Attributes:
        logits: (B, max classes). Row ``i`` holds sample ``i``'s own task's logits in its first
            ``num_classes[task]`` columns and ``-inf`` after them, so ``softmax``, ``argmax`` and
            ``topk`` of a row are exactly those of the task's own logits.
        mask: (B, max classes) bool, True where a column is one of the sample's task's classes.
    """

    logits: torch.Tensor
    mask: torch.Tensor

    def per_sample(self) -> list[torch.Tensor]:
        """Each sample's own task's logits, unpadded (a list of B tensors of their class counts)."""
        return [row[valid] for row, valid in zip(self.logits, self.mask, strict=True)]


class TaskHeads(nn.Module):
    """One classifier per task; each sample's pooled features go through its own task's head."""

    def __init__(self, heads: list[nn.Module], num_classes: list[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.num_classes = list(num_classes)
        self.register_buffer("_classes", torch.tensor(self.num_classes), persistent=False)

    def forward(self, features: torch.Tensor, ids: torch.Tensor, groups: dict[int, torch.Tensor]) -> MultiTaskOutput:
        """``groups``: {task: the rows of its samples} for the tasks present, on the features' device."""
        width = max(self.num_classes)
        logits = features.new_full((features.shape[0], width), float("-inf"))
        # One head call per task present, on its samples only: the heads are tiny, and each row
        # then comes from the task's own nn.Linear, not from a padded copy of it.
        for task, rows in groups.items():
            logits[rows, : self.num_classes[task]] = self.heads[task](features.index_select(0, rows)).to(logits.dtype)
        mask = torch.arange(width, device=ids.device)[None, :] < self._classes.index_select(0, ids)[:, None]
        return MultiTaskOutput(logits, mask)
