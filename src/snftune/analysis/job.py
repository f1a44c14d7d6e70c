"""``snftune analyze`` as a library call: build the models, sample the images, measure, write."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..backbones import anatomy
from ..engine.acceleration import use_threads
from .measure import OUTPUT_DESCRIPTION, AnalysisSettings, compare_models
from .report import write_analysis
from .sources import AnalysisInputs, build_models, sample_images

__all__ = ["run_analysis"]


def run_analysis(
    inputs: AnalysisInputs,
    out: str | Path,
    *,
    samples: int = 64,
    labels: list[str] | None = None,
    settings: AnalysisSettings | None = None,
    device: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measures the untouched backbone and every tuned model of ``inputs`` on ``samples`` images and
    writes ``analysis.json``, ``analysis.md`` and ``lipschitz.png`` to ``out``.

    ``threads``: torch CPU threads (default: the idle cores; an oversubscribed torch thread
    spin-waits and runs many times slower). Returns the analysis, with ``written`` (the paths).
    """
    settings = settings or AnalysisSettings()
    saved_threads = torch.get_num_threads()
    use_threads(threads)
    try:
        start = time.perf_counter()
        models = build_models(inputs, labels)
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        images = sample_images(inputs, models[0][1], samples).to(chosen)
        for _, model in models:
            model.to(chosen)
        backbone = anatomy(models[0][1])
        total = len(models) * len(backbone.sites) * math.ceil(len(images) / settings.batch_size)
        with tqdm(total=total, desc="analyze", unit="site", disable=not progress, leave=False) as bar:
            measured = compare_models(models, images, settings, bar)
        for entry, (_, model), source in zip(measured, models, [None, *inputs.tuned], strict=True):
            state = getattr(model, "snftune_state", None)
            entry["source"] = source.given if source else None
            entry["method"] = {"method": state.config.method, **state.config.to_dict()} if state else None
        analysis = _document(inputs, backbone.family, len(images), settings, measured)
        analysis.update(device=str(chosen), threads=torch.get_num_threads(), seconds=time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved_threads)  # may be called in-process (tests, notebooks)
    written = write_analysis(analysis, out)
    return {**analysis, "written": written}


def _document(
    inputs: AnalysisInputs, family: str, samples: int, settings: AnalysisSettings, models: list[dict[str, Any]]
) -> dict[str, Any]:
    from .. import __version__

    return {
        "snftune_version": __version__,
        "backbone": {
            "model": inputs.backbone.model,
            "pretrained": inputs.backbone.pretrained,
            "model_kwargs": inputs.backbone.model_kwargs,
            "img_size": inputs.backbone.img_size,
            "family": family,
        },
        "data": inputs.task.name,
        "split": inputs.split,
        "samples": samples,
        "output": OUTPUT_DESCRIPTION,
        "settings": settings.to_dict(),
        "models": models,
    }
