"""LN-tune (as the unified PETL study of Mai et al., 2024, defines it): only the affine scale
and shift of the backbone's LayerNorms train.

Every ``nn.LayerNorm`` outside the classifier (timm's ``LayerNorm``/``LayerNorm2d`` subclass it)
with an elementwise affine map is tuned: on ViT the two norms of every block and the final
norm. The method adds nothing, so the tuned model is the backbone itself: it is "merged" from
the start and costs the backbone's inference. Networks that normalise with BatchNorm (ResNet,
RegNet, EfficientNet) have no LayerNorm and are refused.

Served in a mixed batch (:class:`MixedLayerNorm`), each sample is normalised as the frozen norm
normalises it and gets its own task's scale and shift. The tuned tensors are the backbone's own,
so the method's parts are small modules holding them (:func:`tuned_layer_norms`, as BitFit's
:func:`~snftune.methods.bitfit.tuned_biases`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, LayerNorm2d
from torch import nn

from .common import output_channel_dim
from .mixed import MixedModule, Placed, TaskRouting, channel_view, frozen_layer, replace_each
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method

BATCHNORM_ONLY = "it normalises with BatchNorm and has no LayerNorm to tune; use bitfit or ssf"


@dataclass
class LNTuneConfig(MethodConfig):
    """LN-tune has no settings."""

    method: ClassVar[str] = "ln-tune"


def layer_norm_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight and bias of every affine LayerNorm outside the classifier, by qualified name."""
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if get_classifier is not None else None
    skip = {id(m) for m in head.modules()} if isinstance(head, nn.Module) else set()
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and module.elementwise_affine and id(module) not in skip:
            for leaf, parameter in module.named_parameters(recurse=False):
                found[f"{name}.{leaf}"] = parameter
    return found


def apply_ln_tune(model: nn.Module, config: LNTuneConfig) -> None:
    """Makes every LayerNorm's scale and shift trainable."""
    norms = layer_norm_parameters(model)
    if not norms:
        raise NotApplicableError(f"LN-tune does not fit {type(model).__name__}: {BATCHNORM_ONLY}")
    for parameter in norms.values():
        parameter.requires_grad_(True)


SERVED_NORMS = (nn.LayerNorm, LayerNorm, LayerNorm2d)
"""LayerNorms whose forward is ``F.layer_norm`` over the channels (last, or first for ``LayerNorm2d``)."""

AFFINE = ("weight", "bias")


class TunedLayerNorm(nn.Module):
    """The tuned scale and/or shift of one backbone LayerNorm: the part LN-tune and DiffFit serve
    (its tensors are the norm's own, registered here under the same names)."""

    def __init__(self, norm: nn.Module, names: list[str]) -> None:
        super().__init__()
        for name in names:
            self.register_parameter(name, getattr(norm, name))
        self.why_not_mixed = ""
        if type(norm) not in SERVED_NORMS or len(norm.normalized_shape) != 1:
            self.why_not_mixed = (
                f"the scale and shift of a {type(norm).__name__} over {tuple(norm.normalized_shape)} have no "
                "per-sample form (only LayerNorms over one channel dimension)"
            )

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each LayerNorm some task tunes gets a :class:`MixedLayerNorm` (the mixed-batch protocol)."""
        replace_each(model, placed, lambda tuned, base: MixedLayerNorm(tuned, num_tasks, routing, base))


def tuned_layer_norms(model: nn.Module) -> dict[str, nn.Module]:
    """The parts of a tuned model's LayerNorms: a :class:`TunedLayerNorm` per norm with a trainable
    scale or shift."""
    parts: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            names = [n for n in AFFINE if getattr(module, n, None) is not None and getattr(module, n).requires_grad]
            if names:
                parts[name] = TunedLayerNorm(module, names)
    return parts


class MixedLayerNorm(MixedModule):
    """A frozen LayerNorm (``base``, or a mixed module wrapping it) whose rows of its tasks are
    normalised as the frozen norm does and then scaled and shifted by their own task's tensors;
    rows of other tasks get ``base``'s output exactly."""

    def __init__(
        self, tuned: Mapping[int, TunedLayerNorm], num_tasks: int, routing: TaskRouting, base: nn.Module
    ) -> None:
        super().__init__(tuned, routing, base)
        norm = frozen_layer(base)
        self.eps = norm.eps
        self.channel_dim = output_channel_dim(norm)
        channels = norm.normalized_shape[-1]
        reference = next(iter(tuned.values()))
        dtype = next(reference.parameters()).dtype
        own = {task: dict(part.named_parameters()) for task, part in tuned.items()}
        tables = {}
        for name, default in (("weight", 1.0), ("bias", 0.0)):
            frozen = getattr(norm, name, None)
            table = torch.full((num_tasks, channels), default, dtype=dtype)
            if frozen is not None:
                table[:] = frozen.detach().to("cpu", dtype)
            with torch.no_grad():
                for task, tensors in own.items():
                    if name in tensors:
                        table[task] = tensors[name]
            tables[name] = table
        self.add_tables(**tables)
        self._take_over_pre_hooks(norm)

    def _take_over_pre_hooks(self, norm: nn.Module) -> None:
        """The frozen norm's forward pre-hooks (the token exit before a ViT's final norm, which
        strips prompt tokens) run on this module instead: its own rows are normalised from its
        input, which the hooks must have seen first."""
        for key, hook in list(norm._forward_pre_hooks.items()):
            self.register_forward_pre_hook(hook, with_kwargs=key in norm._forward_pre_hooks_with_kwargs)
            del norm._forward_pre_hooks[key]
            norm._forward_pre_hooks_with_kwargs.pop(key, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of this module's tasks normalised from ``x`` (the norm's input); the others ``base(x)``."""
        if not self.routing.any_present(self.tasks):
            return self.base_layer(x)
        rows, ids = self.routing.select(self.tasks, x.shape[0])
        if rows is None:  # every row is this module's: base's output would be thrown away
            return self.own(x, ids)
        return self.base_layer(x).index_copy(0, rows, self.own(x.index_select(0, rows), ids))

    def own(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        z = x.movedim(self.channel_dim, -1)
        normalised = F.layer_norm(z, z.shape[-1:], None, None, self.eps)
        weight, bias = (
            channel_view(t.index_select(0, ids).to(normalised.dtype), normalised, -1) for t in (self.weight, self.bias)
        )
        return torch.addcmul(bias, normalised, weight).movedim(-1, self.channel_dim)

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, channels={self.weight.shape[1]}, channel_dim={self.channel_dim}"


register_method(
    LNTuneConfig,
    apply_ln_tune,
    "LN-tune: the scale and shift of every LayerNorm of the backbone",
    capabilities=Capabilities(
        mergeable=True,
        servable=True,
        unsupported_families={f: BATCHNORM_ONLY for f in ("resnet", "regnet", "efficientnet")},
    ),
    mixed_parts=tuned_layer_norms,
)
