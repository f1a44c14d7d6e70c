"""The files ``snftune analyze`` writes: ``analysis.json`` (every number), ``analysis.md`` (tables
with what each column means) and ``lipschitz.png`` (:mod:`snftune.analysis.plots`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json, atomic_write_text
from ..errors import SnftuneError
from .plots import plot_lipschitz

__all__ = [
    "JSON_NAME",
    "MARKDOWN_NAME",
    "FIGURE_NAME",
    "AnalysisFileError",
    "read_analysis",
    "render_markdown",
    "write_analysis",
]

JSON_NAME = "analysis.json"
MARKDOWN_NAME = "analysis.md"
FIGURE_NAME = "lipschitz.png"


class AnalysisFileError(SnftuneError, ValueError):
    """A file that is not an ``analysis.json`` written by ``snftune analyze``."""


_COLUMNS = """\
- **K_l (branch)**: local Lipschitz constant of the residual branch `F_l` at site `l`, the largest
  singular value of its Jacobian with respect to the site input `x_l`, by power iteration; mean and
  max over the images.
- **K_l^phi (shortcut)**: the same for the shortcut `S_l = phi_l o h` (exactly 1 for an empty slot
  on an identity shortcut; `max exp(log_scale)` for an affine flow).
- **flow bound**: a global bound of the flow alone, `max exp(log_scale) * prod_j (1 + |u_j| |w_j|)`
  (each planar step's Jacobian `I + tanh'(.) u w^T` has norm at most `1 + |u| |w|`, as `tanh' <= 1`).
- **T_l**: local constant of what lies between the site's output and the next site's input (1 inside
  a block; after a block's last site, e.g. ResNet's ReLU or Swin's patch merging; after the model's
  last site, the final norm and pooling up to the output).
- **bound**: `prod_{i >= l} T_i (K_i^phi + K_i)`, the paper's error-propagation bound from site `l`
  to the output, each image's own constants multiplied; max over the images.
- **end-to-end**: local constant of the whole map from the site input to the output,
  `sigma_max(dy/dx_l)` (power iteration): the growth of the worst direction, which the bound bounds.
- **growth**: measured `|y(x_l + d) - y(x_l)| / |d|` at the output for a random `d` of relative size
  {perturbation}; mean and max over the images. **within** is the share of images whose growth is at
  most their bound.
- **CKA**: linear CKA of the site's output with the untouched backbone's, on the same images (1: no drift).

The constants are local (at these images) and power iteration approaches each from below, so the
bound estimates the paper's bound at these images; it is not a certificate.
"""


def _pair(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.3g} / {stats['max']:.3g}"


def _information(slot: dict[str, Any]) -> str:
    if slot["kind"] == "identity":
        return "identity"
    if slot["kind"] == "module":
        return f"{slot['module']}: no inverse"
    log_det = slot["log_det"]
    return (
        f"flow: max error {slot['reconstruction_error']:.2g} ({slot['relative_reconstruction_error']:.2g} rel.), "
        f"log-det {log_det['mean']:.3g} [{log_det['min']:.3g}, {log_det['max']:.3g}]"
    )


def _model_section(model: dict[str, Any]) -> list[str]:
    lines = [
        f"## {model['label']}",
        "",
        f"Source: {model['source'] or 'the untouched backbone'}. Output CKA with the backbone: "
        f"{model['pooled_cka']:.4f}. Measured in {model['seconds']:.1f} s.",
        "",
        "| site | K_l branch (mean / max) | K_l^phi shortcut (mean / max) | flow bound | T_l (max) "
        "| bound (max) | end-to-end (mean / max) | growth (mean / max) | within | CKA |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for site in model["sites"]:
        flow_bound = f"{site['flow_bound']:.3g}" if site["flow_bound"] is not None else "-"
        lines.append(
            f"| {site['name']} | {_pair(site['branch'])} | {_pair(site['shortcut'])} | {flow_bound} "
            f"| {site['transition']['max']:.3g} | {site['bound']['max']:.3g} | {_pair(site['end_to_end'])} "
            f"| {_pair(site['growth'])} "
            f"| {site['growth_within_bound']:.0%} | {site['cka']:.4f} |"
        )
    lines += ["", "Information preservation (inverse on real activations; log-det per token or position):", ""]
    lines += ["| site | shortcut slot | branch slot |", "|---|---|---|"]
    for site in model["sites"]:
        lines.append(
            f"| {site['name']} | {_information(site['shortcut_slot'])} | {_information(site['branch_slot'])} |"
        )
    return [*lines, ""]


def render_markdown(analysis: dict[str, Any]) -> str:
    """``analysis.md``: what was measured on what, the column definitions, a section per model."""
    backbone = analysis["backbone"]
    settings = analysis["settings"]
    lines = [
        f"# Lipschitz, drift and information analysis of {backbone['model']}",
        "",
        f"Backbone {backbone['model']} (weights: {backbone['pretrained'] or 'default'}, family {backbone['family']}); "
        f"{analysis['samples']} images of {analysis['data']}:{analysis['split']}; output "
        f"y = {analysis['output']}. Power iteration: at most {settings['iterations']} steps per site constant "
        f"and {settings['end_to_end_iterations']} per end-to-end constant, tolerance "
        f"{settings['tolerance']:g}; seed {settings['seed']}. {analysis['seconds']:.1f} s on {analysis['device']} "
        f"({analysis['threads']} threads).",
        "",
        _COLUMNS.replace("{perturbation}", f"{settings['perturbation']:g}"),
    ]
    for model in analysis["models"]:
        lines += _model_section(model)
    return "\n".join(lines)


def write_analysis(analysis: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Writes the three files into ``out`` (each atomically) and returns their paths."""
    out = Path(out)
    return {
        "json": atomic_write_json(out / JSON_NAME, analysis),
        "markdown": atomic_write_text(out / MARKDOWN_NAME, render_markdown(analysis)),
        "figure": plot_lipschitz(analysis, out / FIGURE_NAME),
    }


def read_analysis(path: str | Path) -> dict[str, Any]:
    """An ``analysis.json``, checked enough to draw it."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisFileError(f"{path} does not exist; pass the {JSON_NAME} written by snftune analyze")
    try:
        analysis = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise AnalysisFileError(
            f"{path} is not JSON ({error}); pass the {JSON_NAME} written by snftune analyze"
        ) from error
    missing = _missing_keys(analysis)
    if missing:
        raise AnalysisFileError(f"{path} is not an {JSON_NAME} written by snftune analyze (no {missing})")
    return analysis


def _missing_keys(analysis: Any) -> str | None:
    """The first key a figure needs that ``analysis`` lacks, or None."""
    if not isinstance(analysis, dict):
        return "top-level mapping"
    for key in ("backbone", "data", "split", "samples", "output", "models"):
        if key not in analysis:
            return repr(key)
    for model in analysis["models"] or [None]:
        if not isinstance(model, dict) or not model.get("sites"):
            return "'sites' in every model"
        for key in ("label", "pooled_cka"):
            if key not in model:
                return repr(key)
        for site in model["sites"]:
            for key in ("name", "branch", "shortcut", "flow_bound", "bound", "end_to_end", "growth", "cka"):
                if key not in site:
                    return f"'{key}' in every site"
    return None
