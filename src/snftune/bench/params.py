"""Tuned-parameter counts for methods x backbones, built on the meta device (no weights)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from ..backbones import UnsupportedModelError
from ..methods.peft_bridge import PeftUnavailableError
from ..methods.registry import MethodConfig, NotApplicableError, resolve_config
from ..tuning import TrainableSummary, apply, trainable_summary

PAPER_BACKBONES: dict[str, str] = {
    "ViT-B/16": "vit_base_patch16_224",
    "ViT-L/16": "vit_large_patch16_224",
    "Swin-B": "swin_base_patch4_window7_224",
    "ResNet-50": "resnet50",
    "ResNet-101": "resnet101",
}

FAMILY_BACKBONES: dict[str, str] = {
    "ConvNeXt-B": "convnext_base",
    "EVA-02-B": "eva02_base_patch14_224",
    "BEiT-B": "beit_base_patch16_224",
    "SwinV2-B": "swinv2_base_window8_256",
    "RegNetY-3.2GF": "regnety_032",
    "EfficientNet-B0": "efficientnet_b0",
}
"""One base-size model of each family beyond the paper's (the README's second table):
``snftune params --models convnext_base eva02_base_patch14_224 beit_base_patch16_224
swinv2_base_window8_256 regnety_032 efficientnet_b0``."""

PAPER_METHODS: tuple[str, ...] = (
    "full",
    "linear",
    "bitfit",
    "vpt-shallow",
    "vpt-deep",
    "adapter",
    "lora",
    "sidetune",
    "snf-shallow",
    "snf-deep",
    "noah-supernet",
)
"""The paper's methods in the order of its VTAB-1k table, then NOAH's supernet (its searched
subnets have a count per task: :func:`noah_subnet_table` for NOAH's published subnet files)."""


@dataclass(frozen=True)
class ParamCount:
    """One cell: ``tuned`` is None where the method does not fit (``note`` says why);
    ``skipless_blocks`` names the backbone's blocks without a residual (no site)."""

    method: str
    backbone: str
    model: str
    tuned: int | None
    note: str = ""
    skipless_blocks: tuple[str, ...] = ()
    settings: str = ""
    """The method's settings as JSON, when ``method`` is a label rather than a method name."""

    @property
    def millions(self) -> float | None:
        return None if self.tuned is None else self.tuned / 1e6


def _summary(model_name: str, method: str | MethodConfig, **model_kwargs) -> TrainableSummary:
    try:
        with torch.device("meta"):
            return _apply_and_summarise(timm.create_model(model_name, **model_kwargs), method)
    except NotImplementedError:
        # Some timm versions compute a buffer with an operator that has no meta kernel (Swin V2's
        # relative-coordinate table in timm 1.0.26, torch.unique): count on a CPU copy instead.
        return _apply_and_summarise(timm.create_model(model_name, **model_kwargs), method)


def _apply_and_summarise(model: torch.nn.Module, method: str | MethodConfig) -> TrainableSummary:
    apply(model, method)
    return trainable_summary(model)


def count_tuned_parameters(model_name: str, method: str | MethodConfig, **model_kwargs) -> int:
    """Trainable parameters of ``method`` (a name or a config) on ``model_name``, classifier head excluded."""
    return _summary(model_name, method, **model_kwargs).tuned


def parameter_table(
    methods: tuple[str, ...] = PAPER_METHODS, backbones: dict[str, str] | None = None
) -> list[ParamCount]:
    backbones = PAPER_BACKBONES if backbones is None else backbones
    rows = []
    for method in methods:
        resolve_config(method)
        for label, model_name in backbones.items():
            try:
                summary = _summary(model_name, method)
                rows.append(
                    ParamCount(method, label, model_name, summary.tuned, skipless_blocks=summary.skipless_blocks)
                )
            except (NotApplicableError, UnsupportedModelError, PeftUnavailableError) as error:
                rows.append(ParamCount(method, label, model_name, None, str(error)))
    return rows


def noah_subnet_table(files: list[str], backbones: dict[str, str] | None = None) -> list[ParamCount]:
    """One row per NOAH subnet file (its ``RETRAIN:`` block, method ``noah``), and their mean
    when there are several. NOAH's published files have 12 blocks: they fit ViT-B/16 only."""
    backbones = PAPER_BACKBONES if backbones is None else backbones
    rows = []
    for file in files:
        config = resolve_config("noah", subnet=file)
        label = f"noah ({Path(file).stem})"
        for backbone, model_name in backbones.items():
            try:
                tuned = count_tuned_parameters(model_name, config)
                rows.append(ParamCount(label, backbone, model_name, tuned, settings=config.to_json()))
            except (NotApplicableError, UnsupportedModelError) as error:
                rows.append(ParamCount(label, backbone, model_name, None, str(error), settings=config.to_json()))
    if len(files) > 1:
        for backbone, model_name in backbones.items():
            counts = [r.tuned for r in rows if r.backbone == backbone]
            mean = round(sum(counts) / len(counts)) if None not in counts else None
            rows.append(
                ParamCount(f"noah (mean of {len(files)})", backbone, model_name, mean, settings="the rows above")
            )
    return rows


def _cell(row: ParamCount) -> str:
    return "n/a" if row.tuned is None else f"{row.tuned:,} ({row.millions:.3f}M)"


def format_table(rows: list[ParamCount], fmt: str = "markdown") -> str:
    """The table as Markdown (methods x backbones, then the settings used), CSV or JSON."""
    if fmt == "json":
        records = [
            {
                "method": r.method,
                "backbone": r.backbone,
                "model": r.model,
                "tuned_parameters": r.tuned,
                "millions": r.millions,
                "note": r.note,
                "skipless_blocks": list(r.skipless_blocks),
            }
            for r in rows
        ]
        return json.dumps({"rows": records, "settings": _settings(rows)}, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["method", "backbone", "model", "tuned_parameters", "millions"])
        for r in rows:
            writer.writerow(
                [
                    r.method,
                    r.backbone,
                    r.model,
                    "" if r.tuned is None else r.tuned,
                    "" if r.tuned is None else f"{r.millions:.6f}",
                ]
            )
        return out.getvalue()
    if fmt != "markdown":
        raise ValueError(f"unknown format '{fmt}': use markdown, csv or json")
    methods = list(dict.fromkeys(r.method for r in rows))
    backbones = list(dict.fromkeys(r.backbone for r in rows))
    cells = {(r.method, r.backbone): r for r in rows}
    lines = [
        "Tuned parameters (classifier head excluded)",
        "",
        "| method | " + " | ".join(backbones) + " |",
        "|---|" + "---:|" * len(backbones),
    ]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(_cell(cells[method, b]) for b in backbones) + " |")
    lines += ["", "Settings:"]
    lines += [f"- {method}: {settings}" for method, settings in _settings(rows).items()]
    notes = sorted({f"- {r.method} on {r.backbone}: {r.note}" for r in rows if r.note})
    if notes:
        lines += ["", "Not applicable:", *notes]
    skipless = {r.backbone: r.skipless_blocks for r in rows if r.skipless_blocks}
    if skipless:
        lines += ["", "Blocks without a residual connection (no site; SNF and Adapter leave them as they are):"]
        lines += [f"- {b}: {len(names)} ({', '.join(names)})" for b, names in skipless.items()]
    lines.append("\nBackbones: " + ", ".join(f"{b} = timm {cells[methods[0], b].model}" for b in backbones))
    return "\n".join(lines) + "\n"


def _settings(rows: list[ParamCount]) -> dict[str, str]:
    first = {r.method: r for r in reversed(rows)}
    return {
        method: first[method].settings or resolve_config(method).to_json()
        for method in dict.fromkeys(r.method for r in rows)
    }
