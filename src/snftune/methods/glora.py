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

Served in a mixed batch (:class:`MixedGLoRA`), each sample gets its own task's change of the
frozen output, ``(W0 * A) x + B x + W0 C + b0 * D + E``, with its task's supports gathered per
row. GLoRA on qkv layers whose biases timm keeps apart (EVA, BEiT, Swin V2) is not served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import install_sites
from .lora import LoRAConfig, _plan
from .mixed import MixedModule, Placed, TaskRouting, frozen_layer, replace_each
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

    why_not_mixed = ""
    """Empty: a plain linear layer's GLoRA has a per-sample form (:class:`MixedGLoRA`)."""

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each linear layer some task re-parameterises gets a :class:`MixedGLoRA` (the mixed-batch protocol)."""
        replace_each(model, placed, lambda layers, base: MixedGLoRA(layers, num_tasks, routing, base))


def _low_rank_b(layer: GLoRALinear, in_features: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``B`` as ``down @ up`` (out, r) and (r, in): a vector or constant ``B`` adds its value
    times the sum of the input, a rank-1 product with a row of ones."""
    form = layer.forms["B"]
    if form == "lora":
        return layer.B_down, layer.B_up
    if form == "none":
        return None
    value = layer.support("B")
    return value.reshape(-1, 1), value.new_ones(1, in_features)


def _bias_change(
    w0: torch.Tensor, b0: torch.Tensor | None, c: torch.Tensor | None, d: torch.Tensor | None, e: torch.Tensor | None
) -> torch.Tensor:
    """``W0 C + b0 * D + E`` (the supports that are not None; ``D`` scales a bias the layer may lack)."""
    change = w0.new_zeros(w0.shape[0])
    if c is not None:
        change += w0 @ c.reshape(-1)
    if d is not None and b0 is not None:
        change += b0 * d
    if e is not None:
        change += e
    return change


class MixedGLoRA(MixedModule):
    """A shared frozen ``nn.Linear`` plus each sample's own task's GLoRA change of its output:

    ``a * (W0 x) + B x + (W0 C + b0 * D + E)``

    with ``a`` a task's vector or constant ``A`` (one value per output), ``B`` a low-rank product
    (:func:`_low_rank_b`) and the bias change computed once per task from the shared ``W0, b0``;
    all gathered per row. A rank-r ``A`` (``W0 * A``, a full matrix per task) is applied to its
    task's rows only, one product per such task present.
    """

    def __init__(
        self, layers: Mapping[int, GLoRALinear], num_tasks: int, routing: TaskRouting, base: nn.Module
    ) -> None:
        super().__init__(layers, routing, base)
        frozen = frozen_layer(base)  # on the host, as the tasks' tensors: the tables move with the model
        w0 = frozen.weight.detach().to("cpu")
        b0 = None if frozen.bias is None else frozen.bias.detach().to("cpu")
        out_features, in_features = w0.shape
        factors = {t: _low_rank_b(layer, in_features) for t, layer in layers.items()}
        rank = max((f[1].shape[0] for f in factors.values() if f is not None), default=1)
        tables = {
            "scale": w0.new_zeros(num_tasks, out_features),
            "bias": w0.new_zeros(num_tasks, out_features),
            "down": w0.new_zeros(num_tasks, out_features, rank),
            "up": w0.new_zeros(num_tasks, rank, in_features),
        }
        self.full_a: dict[int, frozenset[int]] = {}
        with torch.no_grad():
            for task, layer in layers.items():
                a, c, d, e = (layer.support(name) for name in "ACDE")
                if layer.forms["A"] == "lora":
                    self.full_a[task] = routing.register({task})
                elif a is not None:
                    tables["scale"][task] = a.reshape(-1).expand(out_features)
                if factors[task] is not None:
                    down, up = factors[task]
                    tables["down"][task, :, : down.shape[1]] = down
                    tables["up"][task, : up.shape[0]] = up
                tables["bias"][task] = _bias_change(w0, b0, c, d, e)
        if self.full_a:  # rank-r A: its factors per task, zero for the others
            a_rank = max(layers[t].A_up.shape[0] for t in self.full_a)
            tables["a_down"] = w0.new_zeros(num_tasks, out_features, a_rank)
            tables["a_up"] = w0.new_zeros(num_tasks, a_rank, in_features)
            for task in self.full_a:
                rank_here = layers[task].A_up.shape[0]
                tables["a_down"][task, :, :rank_here] = layers[task].A_down.detach()
                tables["a_up"][task, :rank_here] = layers[task].A_up.detach()
        self.add_tables(**tables)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.base_layer(x)
        if not self.routing.any_present(self.tasks):
            return output
        weight = frozen_layer(self.base_layer).weight.to(x.dtype)
        rows, ids = self.routing.select(self.tasks, x.shape[0])
        mine = x if rows is None else x.index_select(0, rows)
        flat = mine.reshape(mine.shape[0], -1, mine.shape[-1])
        scale, bias, down, up = (self._gather(name, ids, x.dtype) for name in ("scale", "bias", "down", "up"))
        change = scale[:, None] * F.linear(flat, weight) + bias[:, None]
        change = change + torch.bmm(torch.bmm(flat, up.transpose(1, 2)), down.transpose(1, 2))
        change = change.reshape(*mine.shape[:-1], -1)
        output = output + change if rows is None else output.index_add(0, rows, change)
        for task, key in self.full_a.items():
            if task in self.routing.present:
                output = self._add_full_a(output, x, weight, task, key)
        return output

    def _gather(self, name: str, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return getattr(self, name).index_select(0, ids).to(dtype)

    def _add_full_a(
        self, output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, task: int, key: frozenset[int]
    ) -> torch.Tensor:
        """``(W0 * A) x`` on ``task``'s rows: a rank-r ``A`` makes a full matrix per task."""
        rows, _ = self.routing.select(key, x.shape[0])
        change = F.linear(
            x if rows is None else x.index_select(0, rows), weight * (self.a_down[task] @ self.a_up[task]).to(x.dtype)
        )
        return output + change if rows is None else output.index_add(0, rows, change)

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, rank={self.up.shape[1]}, full_a={sorted(self.full_a)}"


class GLoRASplitBiasQKV(TakesOverQKVBiases, GLoRALinear):
    """GLoRA on a fused qkv whose biases timm keeps in the attention (EVA, BEiT, Swin V2; see
    :mod:`.split_bias`): ``b0`` is the three parts, and merging writes them back."""

    why_not_mixed = (
        "GLoRA on a qkv layer whose biases timm keeps in the attention (EVA, BEiT, Swin V2) has no per-sample form yet"
    )

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
        servable=True,
        unsupported_families={family: CNN_ONLY for family in ("resnet", "regnet", "efficientnet")},
    ),
)
