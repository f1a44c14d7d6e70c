"""GLoRA (Chavan et al., 2023): generalised LoRA, one unified update of weights, biases and a
prompt-like bias per linear layer::

    f(x) = (W0 + W0 * A + B) x + W0 C + b0 + b0 * D + E

(``*`` elementwise). Each support has a form chosen per layer: ``A`` and ``B`` are a rank-r
product, a vector (one value per output), a constant or none; ``C`` (a vector of the input
width, turned into a bias by ``W0``) is a rank-r product, a vector or none; ``D`` and ``E``
are a vector, a constant or none. Everything is linear in the frozen weight and bias, so
:func:`snftune.merge` folds it into them exactly (re-parameterisation).

GLoRA searches the forms per layer (a supernet, then an evolutionary search). snftune has no
GLoRA search: the default is one fixed configuration for every layer, ``A`` vector, ``B``
rank 4, ``C`` vector, ``D`` vector, ``E`` vector: 903,168 parameters on ViT-B/16, about the
0.86M reported for GLoRA's searched VTAB-1k configurations (docs/methods.md). As in the official
code, the rank-r factors are an (out x r) factor starting at zero times a Xavier-initialised
(r x in) factor, vectors and constants start at zero: the model starts unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import install_sites
from .lora import LoRAConfig, _plan
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method
from .split_bias import TakesOverQKVBiases, keeps_qkv_biases_apart

FORMS = {
    "A": ("lora", "vector", "constant", "none"),
    "B": ("lora", "vector", "constant", "none"),
    "C": ("lora", "vector", "none"),
    "D": ("vector", "constant", "none"),
    "E": ("vector", "constant", "none"),
}


@dataclass
class GLoRAConfig(MethodConfig):
    """Settings of GLoRA (one configuration for every layer; see the module doc).

    Attributes:
        a, b, c, d, e: the form of each support (``"lora"``, ``"vector"``, ``"constant"``,
            ``"none"``; see ``FORMS`` for which each takes).
        rank: rank of the ``"lora"`` forms (4: the official supernet's default).
    """

    method: ClassVar[str] = "glora"

    a: str = "vector"
    b: str = "lora"
    c: str = "vector"
    d: str = "vector"
    e: str = "vector"
    rank: int = 4

    def __post_init__(self) -> None:
        for support, allowed in FORMS.items():
            value = getattr(self, support.lower())
            if value not in allowed:
                raise ValueError(f"{support.lower()} must be one of {allowed}, got {value!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {self.rank!r}")
        if all(getattr(self, s.lower()) == "none" for s in FORMS):
            raise ValueError("at least one of a, b, c, d, e must not be 'none'")


class GLoRALinear(nn.Module):
    """A frozen linear layer with GLoRA's five supports; parameters only for the forms in use
    (``{A,B,C}_down`` (rows x r) and ``{A,B,C}_up`` (r x columns) for ``"lora"``, ``{S}_vector``,
    ``{S}_constant``)."""

    def __init__(self, base_layer: nn.Linear, config: GLoRAConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        weight = base_layer.weight
        kw = {"device": weight.device, "dtype": weight.dtype}
        out_features, in_features = weight.shape
        shapes = {"A": (out_features, in_features), "B": (out_features, in_features), "C": (in_features, 1)}
        self.forms = {s: getattr(config, s.lower()) for s in FORMS}
        for support, form in self.forms.items():
            rows, columns = shapes.get(support, (out_features, 1))
            if form == "lora":
                down = nn.Parameter(torch.zeros(rows, config.rank, **kw))
                up = nn.Parameter(torch.empty(config.rank, columns, **kw))
                nn.init.xavier_uniform_(up)
                self.register_parameter(f"{support}_down", down)
                self.register_parameter(f"{support}_up", up)
            elif form == "vector":
                self.register_parameter(f"{support}_vector", nn.Parameter(torch.zeros(rows, **kw)))
            elif form == "constant":
                self.register_parameter(f"{support}_constant", nn.Parameter(torch.zeros(1, **kw)))
        self.merged = False
        self._original: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def support(self, name: str) -> torch.Tensor | None:
        """The support as a tensor that broadcasts against the weight (A, B), the input (C) or
        the bias (D, E), or None for ``"none"``."""
        form = self.forms[name]
        if form == "lora":
            return getattr(self, f"{name}_down") @ getattr(self, f"{name}_up")
        if form == "vector":
            vector = getattr(self, f"{name}_vector")
            return vector.unsqueeze(1) if name in ("A", "B") else vector
        if form == "constant":
            return getattr(self, f"{name}_constant")
        return None

    def _bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def _set_bias(self, value: torch.Tensor) -> None:
        self.base_layer.bias.copy_(value)

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W0 + W0 * A + B`` and ``b0 + b0 * D + E + W0 C``."""
        w0, b0 = self.base_layer.weight, self._bias()
        a, b, c, d, e = (self.support(s) for s in FORMS)
        weight = w0 if a is None else w0 + w0 * a
        weight = weight if b is None else weight + b
        bias = torch.zeros(w0.shape[0], device=w0.device, dtype=w0.dtype) if b0 is None else b0
        if d is not None and b0 is not None:
            bias = bias + b0 * d
        if e is not None:
            bias = bias + e
        if c is not None:
            bias = bias + w0 @ c.reshape(-1)
        return weight, bias

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self._linear(x, self.base_layer.weight, self._bias())
        return self._linear(x, *self.weight_and_bias())

    @property
    def mergeable(self) -> bool:
        """Bias updates (C, E; D scales the bias) fold only into a layer that has a bias."""
        return self._bias() is not None or all(self.forms[s] == "none" for s in ("C", "E"))

    @torch.no_grad()
    def merge(self) -> None:
        """Writes the re-parameterised weight and bias into the frozen layer (originals kept)."""
        if self.merged or not self.mergeable:
            return
        weight, bias = self.weight_and_bias()
        b0 = self._bias()
        self._original = (self.base_layer.weight.clone(), None if b0 is None else b0.clone())
        self.base_layer.weight.copy_(weight)
        if b0 is not None:
            self._set_bias(bias)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        weight, bias = self._original
        self.base_layer.weight.copy_(weight)
        if bias is not None:
            self._set_bias(bias)
        self._original = None
        self.merged = False

    def extra_repr(self) -> str:
        return ", ".join(f"{s}={f}" for s, f in self.forms.items())


class GLoRASplitBiasQKV(TakesOverQKVBiases, GLoRALinear):
    """GLoRA on a fused qkv whose biases timm keeps in the attention (EVA, BEiT, Swin V2; see
    :mod:`.split_bias`): ``b0`` is the three parts, and merging writes them back."""

    def __init__(self, base_layer: nn.Linear, attention: nn.Module, config: GLoRAConfig) -> None:
        super().__init__(base_layer, config)
        self.take_over_qkv_biases(attention)

    def _bias(self) -> torch.Tensor:
        return self.qkv_bias()

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """timm's own order: the bias added after the product where timm adds it so (``qkv_bias_separate``)."""
        if self.bias_separate:
            out = F.linear(x, weight)
            out += bias
            return out
        return F.linear(x, weight, bias)

    def _set_bias(self, value: torch.Tensor) -> None:
        self.set_qkv_bias(value)


def apply_glora(model: nn.Module, config: GLoRAConfig) -> None:
    """Wraps every linear layer of the blocks: attention (fused qkv or q/k/v, proj) and MLP."""
    anat = install_sites(model)
    if not anat.attentions and not anat.mlps:
        raise NotApplicableError(
            f"GLoRA re-parameterises linear layers (attention, MLP); this {anat.family} backbone's blocks "
            "have convolutions only"
        )
    fused = bool(anat.attentions) and getattr(anat.attentions[0], "qkv", None) is not None
    parts = ("qkv", "proj") if fused else ("q", "k", "v", "proj")
    targets = (*(parts if anat.attentions else ()), *(("fc1", "fc2") if anat.mlps else ()))
    plan = _plan(anat, LoRAConfig(rank=config.rank, targets=targets))
    for target, _ in plan:
        layer = getattr(target.owner, target.name)
        if type(layer) is not nn.Linear:
            raise NotApplicableError(
                f"GLoRA re-parameterises linear layers; '{target.name}' of this {anat.family} backbone is a "
                f"{type(layer).__name__} (a ConvNeXt built with conv_mlp=True): build it with linear MLP layers"
            )
    for target, _ in plan:
        layer = getattr(target.owner, target.name)
        if keeps_qkv_biases_apart(target.owner, target.name):
            wrapped = GLoRASplitBiasQKV(layer, target.owner, config)
        else:
            wrapped = GLoRALinear(layer, config)
        setattr(target.owner, target.name, wrapped)


CNN_ONLY = "GLoRA re-parameterises linear layers (attention, MLP); this CNN family's blocks have convolutions only"

register_method(
    GLoRAConfig,
    apply_glora,
    "GLoRA: generalised LoRA on every linear layer, one fixed support configuration (no search; mergeable)",
    capabilities=Capabilities(
        mergeable=True,
        servable=False,
        unsupported_families={family: CNN_ONLY for family in ("resnet", "regnet", "efficientnet")},
        why_not={
            "servable": "the supports rescale the frozen weight elementwise, which has no per-sample form in "
            "serving's mixed batches yet (the serving protocol is being reworked); merge one task's model instead"
        },
    ),
)
