"""One batch's activations at every block and residual site, and the model's maps between them.

The *input* ``x_l`` of residual site ``l`` is the tensor both its shortcut and its branch are
computed from: the block's input for a block's first site, the previous site's output
otherwise. Around each site the model computes::

    o_l     = S_l(x_l) + F_l(x_l)     S_l = shortcut slot o h   (h: identity, or ResNet's downsample)
                                      F_l = branch slot o the block's branch
    x_{l+1} = T_l(o_l)

``T_l`` is the identity between two sites of one block. After a block's last site it is
whatever runs up to the next block's input (ResNet's ReLU, Swin's reshape and patch merging);
after the model's last site it ends at the pooled features, the classifier's input (timm's
``forward_head(pre_logits=True)``).

Each map is evaluated by running the model with sites redirected (a site returns an injected
tensor, or records what it receives) and with the blocks that cannot matter *replayed*: they
return their recorded output without computing. A map then costs about one block's forward,
whatever the depth. This only reads the anatomy of :mod:`snftune.backbones`, so every family
it supports (ViT, Swin, ResNet) works without code of its own here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..backbones import anatomy

__all__ = ["SiteTrace", "pooled_output"]


def pooled_output(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pooled features the classifier head receives."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


@dataclass
class _BlockCall:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: torch.Tensor


@dataclass
class _Seen:
    """A tensor as a hook saw it: the object (which later code may change in place) and a copy of
    its values at that moment."""

    tensor: torch.Tensor
    values: torch.Tensor

    @classmethod
    def of(cls, tensor: torch.Tensor) -> _Seen:
        return cls(tensor, tensor.clone())

    def same(self, other: _Seen) -> bool:
        """The very same tensor, with the same values: nothing was computed between the two sightings."""
        return self.tensor is other.tensor and torch.equal(self.values, other.values)


@contextlib.contextmanager
def _redirected(forwards: list[tuple[nn.Module, Callable[..., Any]]]) -> Iterator[None]:
    """Gives modules another ``forward`` for the duration (an instance attribute shadows the class's)."""
    try:
        for module, forward in forwards:
            module.forward = forward
        yield
    finally:
        for module, _ in forwards:
            module.__dict__.pop("forward", None)


def _returning(tensor: torch.Tensor) -> Callable[..., torch.Tensor]:
    """A forward that ignores its arguments and returns a copy of ``tensor`` (a copy, because
    what follows may work in place, as ResNet's ReLU does)."""
    return lambda *args, **kwargs: tensor.clone()


@contextlib.contextmanager
def _hooked(module: nn.Module, pre_hook: Callable[..., Any]) -> Iterator[None]:
    handle = module.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


class SiteTrace:
    """Records one forward pass of ``model`` (in eval mode) on ``images``, and evaluates the maps
    ``S_l``, ``F_l``, ``T_l`` and "site input to pooled features" at any tensor."""

    def __init__(self, model: nn.Module, images: torch.Tensor) -> None:
        self.model = model
        self.images = images
        anat = anatomy(model)
        self.blocks = anat.blocks
        self.block_sites = anat.block_sites
        self.sites = anat.sites
        self.site_names = anat.site_names
        self.position = [(b, k) for b, sites in enumerate(anat.block_sites) for k in range(len(sites))]
        self.calls: list[_BlockCall] = []
        self.site_args: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.site_outputs: list[torch.Tensor] = []
        self.pooled = self._record()

    def _record(self) -> torch.Tensor:
        """Runs the model once, keeping every block's input and output and every site's arguments
        and output as they were at that moment: later in-place operations (ResNet's
        ``ReLU(inplace=True)`` on the site's sum) must not change what was recorded."""
        block_in: dict[int, tuple[tuple[Any, ...], dict[str, Any], _Seen]] = {}
        block_out: dict[int, _Seen] = {}
        site_in: dict[int, tuple[_Seen, _Seen]] = {}
        site_out: dict[int, _Seen] = {}
        handles = []
        for b, block in enumerate(self.blocks):

            def before(module, args, kwargs, b=b):
                block_in[b] = (args, kwargs, _Seen.of(args[0]))

            def after(module, args, output, b=b):
                block_out[b] = _Seen.of(output)

            handles.append(block.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(block.register_forward_hook(after))
        for index, site in enumerate(self.sites):

            def seen(module, args, output, index=index):
                site_in[index] = (_Seen.of(args[0]), _Seen.of(args[1]))
                site_out[index] = _Seen.of(output)

            handles.append(site.register_forward_hook(seen))
        try:
            with torch.no_grad():
                pooled = pooled_output(self.model, self.images)
        finally:
            for handle in handles:
                handle.remove()
        self.calls = [
            _BlockCall((block_in[b][2].values, *block_in[b][0][1:]), block_in[b][1], block_out[b].values)
            for b in range(len(self.blocks))
        ]
        self.site_args = [(site_in[i][0].values, site_in[i][1].values) for i in range(len(self.sites))]
        self.site_outputs = [site_out[i].values for i in range(len(self.sites))]

        def seen_input(index: int) -> _Seen:
            b, k = self.position[index]
            return block_in[b][2] if k == 0 else site_out[index - 1]

        self._slot_only = [site_in[i][0].same(seen_input(i)) for i in range(len(self.sites))]
        self._identity_after = []
        for i in range(len(self.sites)):
            b, _ = self.position[i]
            passed_on = (
                b + 1 < len(self.blocks) and site_out[i].same(block_out[b]) and block_out[b].same(block_in[b + 1][2])
            )
            self._identity_after.append(not self.is_last_in_block(i) or passed_on)
        return pooled

    def site_input(self, index: int) -> torch.Tensor:
        """``x_l``: the block's input for a block's first site, else the previous site's output."""
        b, k = self.position[index]
        return self.calls[b].args[0] if k == 0 else self.site_outputs[index - 1]

    def shortcut_is_slot_only(self, index: int) -> bool:
        """Whether the site's shortcut receives ``x_l`` itself (``h`` is the identity), so that
        ``S_l`` is the shortcut slot alone."""
        return self._slot_only[index]

    def is_last_in_block(self, index: int) -> bool:
        b, k = self.position[index]
        return k == len(self.block_sites[b]) - 1

    def transition_is_identity(self, index: int) -> bool:
        """Whether ``T_l`` is the identity: inside a block, or where a block returns its last site's
        output untouched and the next block receives it as it is (ViT)."""
        return self._identity_after[index]

    def _site_input_redirects(self, index: int, x: torch.Tensor) -> tuple[tuple[Any, ...], list]:
        """The block's arguments and site redirects that make ``x`` the input of site ``index``."""
        b, k = self.position[index]
        call = self.calls[b]
        if k == 0:
            return (x, *call.args[1:]), []
        previous = self.block_sites[b][k - 1]
        return call.args, [(previous, _returning(x))]

    def _site_part(self, index: int, x: torch.Tensor, part: int) -> torch.Tensor:
        """``S_l(x)`` (part 0) or ``F_l(x)`` (part 1), by running the site's block."""
        site = self.sites[index]
        slot = site.shortcut if part == 0 else site.branch
        b, _ = self.position[index]
        args, redirects = self._site_input_redirects(index, x)
        captured: list[torch.Tensor] = []

        def capture(shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
            captured.append(slot((shortcut, branch)[part]))
            return shortcut.clone()  # the rest of the block only needs a tensor of the right shape

        with _redirected([*redirects, (site, capture)]):
            self.blocks[b](*args, **self.calls[b].kwargs)
        return captured[0]

    def shortcut_map(self, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``S_l``: site input -> shortcut slot output."""
        if self.shortcut_is_slot_only(index):
            return self.sites[index].shortcut
        return lambda x: self._site_part(index, x, 0)

    def branch_map(self, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``F_l``: site input -> branch slot output."""
        return lambda x: self._site_part(index, x, 1)

    def _replayed(self, *live: int) -> list[tuple[nn.Module, Callable[..., Any]]]:
        """Redirects that make every block but ``live`` return its recorded output."""
        return [
            (block, _returning(call.output))
            for b, (block, call) in enumerate(zip(self.blocks, self.calls, strict=True))
            if b not in live
        ]

    def transition_map(self, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``T_l`` after a block's last site: site output -> next block's input, or -> pooled
        features after the model's last site."""
        if not self.is_last_in_block(index):
            raise ValueError(f"{self.site_names[index]} is not its block's last site: T_l is the identity there")
        b, _ = self.position[index]
        site = self.sites[index]
        last_block = b + 1 == len(self.blocks)

        def transition(z: torch.Tensor) -> torch.Tensor:
            received: list[torch.Tensor] = []
            with contextlib.ExitStack() as stack:
                stack.enter_context(_redirected([*self._replayed(b), (site, _returning(z))]))
                if not last_block:
                    stack.enter_context(_hooked(self.blocks[b + 1], lambda module, args: received.append(args[0])))
                pooled = pooled_output(self.model, self.images)
            return pooled if last_block else received[0]

        return transition

    def output_map(self, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Site input ``x_l`` -> pooled features, every later block computed."""
        b, k = self.position[index]
        earlier = self._replayed(*range(b, len(self.blocks)))

        def output(x: torch.Tensor) -> torch.Tensor:
            with contextlib.ExitStack() as stack:
                if k == 0:
                    stack.enter_context(_hooked(self.blocks[b], lambda module, args: (x, *args[1:])))
                    stack.enter_context(_redirected(earlier))
                else:
                    previous = self.block_sites[b][k - 1]
                    stack.enter_context(_redirected([*earlier, (previous, _returning(x))]))
                return pooled_output(self.model, self.images)

        return output
