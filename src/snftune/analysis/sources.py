"""What ``snftune analyze`` compares: one backbone, its tuned models, and a sample of a task's images.

A run folder says everything (backbone, weights, task). A bare tuned file says only its method:
the backbone comes from ``model=`` (or from a run folder given beside it) and the task from
``data=``. Every tuned model must be of one backbone, so that their sites correspond.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import install_sites
from ..backbones.factory import looks_like_path
from ..bench.plots import evenly_spaced
from ..data import Task, build_transform, resolve_task
from ..engine import TrainConfig
from ..runs import RunSettings, SettingsError, build_backbone, input_config, read_tuned_source
from ..tuning import load_tuned

__all__ = ["AnalysisInputs", "TunedSource", "build_models", "resolve_inputs", "sample_images"]

_BACKBONE_KEYS = ("model", "pretrained", "model_kwargs", "img_size")


@dataclass
class TunedSource:
    """One tuned model: its file, the settings that rebuild its backbone, and what the user named."""

    given: str
    tuned: Path
    settings: RunSettings


@dataclass
class AnalysisInputs:
    """The backbone (``backbone``: settings without a method), the task and split, the tuned models."""

    backbone: RunSettings
    task: Task
    split: str
    tuned: list[TunedSource]


def _backbone_of(settings: RunSettings) -> dict[str, Any]:
    return {key: getattr(settings, key) or None for key in _BACKBONE_KEYS}


def _describe(backbone: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in backbone.items() if value is not None)


def resolve_inputs(
    sources: list[str],
    *,
    model: str | None = None,
    pretrained: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    img_size: int | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    data_options: dict[str, Any] | None = None,
    split: str | None = None,
) -> AnalysisInputs:
    """Reads run folders and tuned files and checks that they fit together.

    ``model``/``pretrained``/``model_kwargs``/``img_size`` name the backbone (default: the first
    run folder's), which every run folder must match; ``data``/``data_dir``/``data_options``/
    ``split`` the images (default: the first run folder's task and evaluation split). With no
    sources, the backbone alone is analysed.

    Raises:
        SettingsError: a missing or unfinished source, no backbone or task named, or run
            folders of different backbones.
        TunedFileError: a file that is not a tuned file.
    """
    if pretrained is not None and looks_like_path(pretrained):
        pretrained = str(Path(pretrained).expanduser().resolve())  # as a run folder records it
    read = [(source, *read_tuned_source(source)) for source in sources]
    runs = [settings for _, _, settings in read if settings is not None]
    first_run = runs[0] if runs else None
    if model is not None:
        backbone = RunSettings(
            model=model,
            method="none",
            data=data or "",
            train=TrainConfig(),
            pretrained=pretrained,
            model_kwargs=dict(model_kwargs or {}),
            img_size=img_size,
        )
    elif first_run is not None:
        given = {"pretrained": pretrained, "model_kwargs": model_kwargs, "img_size": img_size}
        backbone = dataclasses.replace(
            first_run, method="none", **{key: value for key, value in given.items() if value is not None}
        )
    else:
        raise SettingsError("no backbone named: pass --model (and --pretrained), or a run folder")
    for given, _, settings in read:
        if settings is not None and _backbone_of(settings) != _backbone_of(backbone):
            raise SettingsError(
                f"{given} was tuned on {_describe(_backbone_of(settings))}, but the backbone analysed is "
                f"{_describe(_backbone_of(backbone))}; analyze one backbone at a time"
            )
    same_task = first_run is not None and data in (None, first_run.data)
    task_spec = data or (first_run.data if first_run else None)
    if not task_spec:
        raise SettingsError("no task named: pass --data (e.g. generated/shapes), or a run folder")
    options = data_options if data_options is not None else (first_run.data_options if same_task else {})
    root = data_dir or (first_run.data_dir if first_run else None)
    task = resolve_task(task_spec, root, **(options or {}))
    split = split or (first_run.eval_split if same_task else None) or task.eval_split or task.train_split
    if split not in task.splits:
        raise SettingsError(f"--split {split}: {task.name} has the splits {', '.join(task.splits)}")
    backbone = dataclasses.replace(backbone, data=task_spec, num_classes=task.num_classes, drop_path=0.0)
    tuned = [TunedSource(given, path, settings or backbone) for given, path, settings in read]
    return AnalysisInputs(backbone=backbone, task=task, split=split, tuned=tuned)


def build_models(inputs: AnalysisInputs, labels: list[str] | None = None) -> list[tuple[str, nn.Module]]:
    """``[("backbone", untouched backbone), (label, tuned model), ...]``, each with its sites installed.

    Raises:
        UnsupportedModelError: a backbone without residual sites snftune knows.
        TunedFileError: a tuned file made for another backbone.
    """
    if labels is not None and len(labels) != len(inputs.tuned):
        raise SettingsError(f"{len(labels)} labels for {len(inputs.tuned)} tuned models: give one label per model")
    backbone = build_backbone(inputs.backbone, drop_path=0.0)
    install_sites(backbone)
    models: list[tuple[str, nn.Module]] = [("backbone", backbone)]
    for index, source in enumerate(inputs.tuned):
        model = build_backbone(source.settings, drop_path=0.0)
        load_tuned(model, source.tuned)
        models.append((labels[index] if labels else model.snftune_state.label, model))
    counts = {label: [name for name, _ in models].count(label) for label, _ in models}
    return [
        (f"{label} ({Path(inputs.tuned[i - 1].given).name})" if counts[label] > 1 and i else label, model)
        for i, (label, model) in enumerate(models)
    ]


def sample_images(inputs: AnalysisInputs, model: nn.Module, count: int) -> torch.Tensor:
    """``count`` images of the split, evenly spaced through it, with the evaluation transform."""
    if count < 1:
        raise SettingsError(f"--samples must be >= 1, got {count}")
    transform = build_transform(inputs.task.protocol, input_config(model, inputs.backbone), train=False)
    dataset = evenly_spaced(inputs.task.dataset(inputs.split, transform=transform), count)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])
