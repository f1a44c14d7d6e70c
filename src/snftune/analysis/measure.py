"""Every measure of one model at every residual site, and several models side by side.

For site ``l`` with input ``x_l`` (see :mod:`snftune.analysis.trace`) and every sample:

- ``branch``  ``K_l = sigma_max(dF_l/dx_l)``, the frozen (or tuned) branch's local constant;
- ``shortcut``  ``K_l^phi = sigma_max(dS_l/dx_l)``, the shortcut's (1 for an empty slot on an
  identity shortcut; ``max exp(log_scale)`` for an affine flow);
- ``transition``  ``sigma_max(dT_l/do_l)``: 1 inside a block; after the last site, the map to
  the pooled features (final norm and pooling);
- ``bound``  the paper's error-propagation bound, read from the site to the pooled features::

      |y(x_l + d) - y(x_l)| <= prod_{i >= l} K_{T_i} (K_i^phi + K_i) |d|     (to first order)

  with each factor taken at the same sample (the product of that sample's local constants);
- ``end_to_end``  ``sigma_max(dy/dx_l)``, the local constant of the whole map from the site to the
  output: the worst direction's growth, which the product bound bounds;
- ``growth``  the measured ``|y(x_l + d) - y(x_l)| / |d|`` for a small random ``d``.

Per sample, ``growth <= end_to_end <= bound`` (to first order, and up to the power iterations'
shortfall).

``y`` is the pooled features (the classifier's input): the same for every model of one
backbone, whatever its head. Every estimate is local (at the samples) and from below, so
``bound`` is an estimate of the paper's bound at those samples, not a certificate.

Drift is linear CKA (Kornblith et al., 2019) between a site's outputs in a reference model (the
untouched backbone) and in another, on the same images. Information preservation is measured
where a slot holds a flow (:mod:`snftune.analysis.information`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..backbones import install_sites
from ..methods.flows import ShortcutFlow
from .drift import gram_matrix, linear_cka
from .information import SlotInformation
from .lipschitz import differentiable, flow_lipschitz_bound, local_lipschitz, perturbation_growth
from .trace import SiteTrace

__all__ = ["AnalysisSettings", "ModelAnalysis", "analyze_model", "compare_models", "OUTPUT_DESCRIPTION"]

OUTPUT_DESCRIPTION = "pooled features (the classifier head's input)"

_PER_SAMPLE = ("branch", "shortcut", "transition", "bound", "end_to_end", "growth")


@dataclass(frozen=True)
class AnalysisSettings:
    """How the measures are taken.

    Attributes:
        batch_size: images per pass (samples are independent; memory grows with it).
        iterations: most power-iteration steps per site constant.
        end_to_end_iterations: most steps for the end-to-end constants, each of which runs the whole
            network after its site (most of the time spent); their maxima settle within a few steps.
        tolerance: power iteration stops once no sample's estimate moves by more than this (relative).
        perturbation: size of the injected error, relative to the site input's norm.
        seed: for the power iterations' start vectors and the perturbation directions.
    """

    batch_size: int = 64
    iterations: int = 15
    end_to_end_iterations: int = 6
    tolerance: float = 1e-4
    perturbation: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.batch_size, self.iterations, self.end_to_end_iterations) < 1:
            raise ValueError(
                "batch_size, iterations and end_to_end_iterations must be >= 1, got "
                f"{self.batch_size}, {self.iterations}, {self.end_to_end_iterations}"
            )
        if not 0 < self.perturbation < 1:
            raise ValueError(f"perturbation must be in (0, 1), relative to the input's norm; got {self.perturbation}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "iterations": self.iterations,
            "end_to_end_iterations": self.end_to_end_iterations,
            "tolerance": self.tolerance,
            "perturbation": self.perturbation,
            "seed": self.seed,
        }


@dataclass
class _Site:
    """One site's measures, per sample, accumulated over batches."""

    name: str
    flow_bound: float | None
    slots: dict[str, SlotInformation]
    samples: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {k: [] for k in _PER_SAMPLE})
    features: list[torch.Tensor] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        values = {k: torch.cat(v).double() for k, v in self.samples.items()}
        stats = {k: {"mean": v.mean().item(), "max": v.max().item()} for k, v in values.items()}
        return {
            "name": self.name,
            **stats,
            "flow_bound": self.flow_bound,
            "growth_within_bound": (values["growth"] <= values["bound"]).double().mean().item(),
            "shortcut_slot": self.slots["shortcut"].to_dict(),
            "branch_slot": self.slots["branch"].to_dict(),
        }


@dataclass
class ModelAnalysis:
    """One model's per-site summaries (JSON-ready), and the Gram matrices that CKA compares."""

    sites: list[dict[str, Any]]
    grams: list[torch.Tensor]
    pooled_gram: torch.Tensor
    seconds: float


def _ones(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[0], dtype=torch.float64, device=x.device)


def _exact_shortcut_constant(trace: SiteTrace, index: int, x: torch.Tensor) -> torch.Tensor | None:
    """``K_l^phi`` where it is known exactly: 1 for an empty slot on an identity shortcut, and
    ``max exp(log_scale)`` for an affine-only flow there (its Jacobian is that diagonal at every token)."""
    if not trace.shortcut_is_slot_only(index):
        return None
    slot = trace.sites[index].shortcut
    if isinstance(slot, nn.Identity):
        return _ones(x)
    if isinstance(slot, ShortcutFlow) and slot.planar_steps == 0:
        return _ones(x) * flow_lipschitz_bound(slot)
    return None


def _measure_batch(trace: SiteTrace, sites: list[_Site], settings: AnalysisSettings, generator, bar) -> None:
    model = trace.model

    def constant(f, x, iterations=settings.iterations):
        return local_lipschitz(f, x, iterations, settings.tolerance, generator).double()

    factors = []
    for index, site in enumerate(trace.sites):
        x = trace.site_input(index)
        with differentiable(model):
            branch = constant(trace.branch_map(index), x)
            shortcut = _exact_shortcut_constant(trace, index, x)
            if shortcut is None:
                shortcut = constant(trace.shortcut_map(index), x)
            transition = (
                _ones(x)
                if trace.transition_is_identity(index)
                else constant(trace.transition_map(index), trace.site_outputs[index])
            )
            end_to_end = constant(trace.output_map(index), x, settings.end_to_end_iterations)
        growth = perturbation_growth(trace.output_map(index), x, settings.perturbation, generator).double()
        record = sites[index]
        measured = {"branch": branch, "shortcut": shortcut, "transition": transition, "end_to_end": end_to_end}
        for key, value in (*measured.items(), ("growth", growth)):
            record.samples[key].append(value.cpu())
        record.features.append(trace.site_outputs[index].flatten(1).cpu())
        for slot, argument in zip(("shortcut", "branch"), trace.site_args[index], strict=True):
            record.slots[slot].update(getattr(site, slot), argument)
        factors.append(transition * (shortcut + branch))
        if bar is not None:
            bar.update(1)
    running = torch.ones_like(factors[-1])
    for index in reversed(range(len(factors))):
        running = running * factors[index]
        sites[index].samples["bound"].append(running.cpu())


def analyze_model(
    model: nn.Module, images: torch.Tensor, settings: AnalysisSettings | None = None, bar: Any = None
) -> ModelAnalysis:
    """Measures ``model`` at every residual site on ``images``. The model is put in eval mode and
    its sites are installed if they are not (which leaves its outputs as they were).

    ``bar``: an optional tqdm bar, advanced once per site and batch.
    """
    settings = settings or AnalysisSettings()
    start = time.perf_counter()
    install_sites(model)
    model.eval()
    generator = torch.Generator().manual_seed(settings.seed)
    sites: list[_Site] | None = None
    pooled = []
    with torch.no_grad():
        for batch in images.split(settings.batch_size):
            trace = SiteTrace(model, batch)
            if sites is None:
                sites = [
                    _Site(
                        name,
                        flow_lipschitz_bound(site.shortcut) if isinstance(site.shortcut, ShortcutFlow) else None,
                        {slot: SlotInformation.of(getattr(site, slot)) for slot in ("shortcut", "branch")},
                    )
                    for name, site in zip(trace.site_names, trace.sites, strict=True)
                ]
            _measure_batch(trace, sites, settings, generator, bar)
            pooled.append(trace.pooled.flatten(1).cpu())
    assert sites is not None, "no images to analyze"
    return ModelAnalysis(
        sites=[site.summary() for site in sites],
        grams=[gram_matrix(torch.cat(site.features)) for site in sites],
        pooled_gram=gram_matrix(torch.cat(pooled)),
        seconds=time.perf_counter() - start,
    )


def compare_models(
    models: Sequence[tuple[str, nn.Module]],
    images: torch.Tensor,
    settings: AnalysisSettings | None = None,
    bar: Any = None,
) -> list[dict[str, Any]]:
    """:func:`analyze_model` for each ``(label, model)``, with each site's CKA against the first
    model (the reference, normally the untouched backbone). All models must share one backbone
    architecture, so that their sites correspond."""
    results: list[dict[str, Any]] = []
    reference: ModelAnalysis | None = None
    for label, model in models:
        analysis = analyze_model(model, images, settings, bar)
        reference = reference or analysis
        names = [site["name"] for site in analysis.sites]
        expected = [site["name"] for site in reference.sites]
        if names != expected:
            raise ValueError(f"{label} has the sites {names}, the reference {expected}: compare models of one backbone")
        for site, gram, reference_gram in zip(analysis.sites, analysis.grams, reference.grams, strict=True):
            site["cka"] = linear_cka(reference_gram, gram)
        results.append(
            {
                "label": label,
                "seconds": analysis.seconds,
                "pooled_cka": linear_cka(reference.pooled_gram, analysis.pooled_gram),
                "sites": analysis.sites,
            }
        )
    return results
