"""Predictions of many tuned tasks over image files, batched across tasks (``snftune predict``).

Each image is decoded once, transformed once per distinct evaluation transform among the
tasks, and sent through one :class:`MultiTaskModel` forward together with the other images
of its batch, once per task. The result is one row per image and task with the task's top-k
classes (their names when the task's run folder names them) and probabilities.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..atomic import atomic_write_text
from ..data import DataError, build_transform, resolve_task
from ..data.lists import IMAGE_EXTENSIONS, image_files, load_rgb
from ..engine import TrainConfig
from ..inputs import read_text
from ..runs import RunSettings, build_backbone, read_run_config, read_tuned_source
from .multitask import MultiTaskModel
from .tasks import ServingError

__all__ = [
    "ImageRef",
    "Prediction",
    "TaskSource",
    "backbone_settings",
    "list_images",
    "predict",
    "predictions_csv",
    "serve_sources",
    "task_source",
    "write_predictions",
]

DEFAULT_PROTOCOL = "vtab"
"""The evaluation transform of a bare tuned file: resize to the model's input size, no crop."""
BACKBONE_KEYS = ("model", "pretrained", "model_kwargs", "img_size")


@dataclass(frozen=True)
class TaskSource:
    """A task to serve: its tuned file, and what its run folder says about it (when given one).

    Attributes:
        settings: the run's settings (backbone and task), None for a bare tuned file.
        class_names: the task's class names, when its data can be resolved.
        class_subset: logit indices predictions are restricted to (ImageNet-A/-R), or None.
        protocol: whose evaluation transform the task's images get.
        note: why the class names are missing, when a run folder should have given them.
    """

    name: str
    tuned: Path
    settings: RunSettings | None = None
    class_names: tuple[str, ...] | None = None
    class_subset: tuple[int, ...] | None = None
    protocol: str = DEFAULT_PROTOCOL
    note: str | None = None


def _class_names(settings: RunSettings) -> tuple[tuple[str, ...] | None, str | None]:
    try:
        task = resolve_task(settings.data, settings.data_dir, **(settings.data_options or {}))
    except DataError as error:
        return None, f"class indices, not names: its task {settings.data} could not be read ({error})"
    if task.class_names is None:
        return None, f"class indices, not names: {task.name} does not name its classes"
    return tuple(task.class_names), None


def task_source(spec: str | os.PathLike) -> TaskSource:
    """A task from ``PATH`` or ``NAME=PATH``; PATH is a tuned file or a run folder.

    The name defaults to the run folder's name, or the file's stem.
    """
    text = str(spec)
    name, sep, rest = text.partition("=")
    if not sep or not name or "/" in name or Path(text).expanduser().exists():
        name, rest = "", text
    path = Path(rest).expanduser()
    tuned, settings = read_tuned_source(path)
    if settings is not None:
        names, note = _class_names(settings)
        task = read_run_config(path).get("task") or {}
        subset = task.get("class_subset")
        return TaskSource(
            name=name or path.resolve().name,
            tuned=tuned,
            settings=settings,
            class_names=names,
            class_subset=tuple(subset) if subset else None,
            protocol=task.get("protocol") or DEFAULT_PROTOCOL,
            note=note,
        )
    return TaskSource(name=name or path.stem, tuned=tuned)


def backbone_settings(sources: Sequence[TaskSource], **given: object) -> RunSettings:
    """The settings that build the shared backbone: the given values (``model``, ``pretrained``,
    ``model_kwargs``, ``img_size``; None = not given), the rest from the run folders, which must agree."""
    runs = [s for s in sources if s.settings is not None]
    values: dict[str, object] = {}
    for key in BACKBONE_KEYS:
        if given.get(key) is not None:
            values[key] = given[key]
            continue
        seen = {repr(getattr(s.settings, key)): s for s in runs}
        if len(seen) > 1:
            (a, first), (b, second) = list(seen.items())[:2]
            raise ServingError(
                f"tasks '{first.name}' and '{second.name}' were tuned on different backbones ({key} {a} and {b}); "
                "serve tasks of one backbone together"
            )
        if runs:
            values[key] = getattr(runs[0].settings, key)
    if not values.get("model"):
        raise ServingError(
            "bare tuned files do not say which weights they were tuned on: pass --model (and --pretrained), "
            "or give a run folder"
        )
    return RunSettings(
        model=str(values["model"]),
        method="(served)",
        data="(served)",
        train=TrainConfig(),
        pretrained=values.get("pretrained"),
        model_kwargs=dict(values.get("model_kwargs") or {}),
        img_size=values.get("img_size"),
    )


def serve_sources(sources: Sequence[TaskSource], settings: RunSettings) -> MultiTaskModel:
    """The backbone of ``settings`` serving every source's tuned file."""
    names = [s.name for s in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ServingError(f"task name(s) {twice} given twice; name the tasks with NAME=PATH")
    return MultiTaskModel(build_backbone(settings, drop_path=0.0), {s.name: s.tuned for s in sources})


@dataclass(frozen=True)
class ImageRef:
    """An image to predict: its file and how the output names it."""

    path: Path
    label: str


def list_images(spec: str | os.PathLike) -> list[ImageRef]:
    """The images of a folder (recursively, named relative to it), of a list file (one path per
    line, relative to the list's folder; a trailing integer label is ignored), or one image file."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [ImageRef(p, str(p.relative_to(path))) for p in image_files(path)]
        if not found:
            raise DataError(f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); pass a folder of images")
        return found
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass an image folder, a list of image paths, or an image")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return [ImageRef(path, path.name)]
    lines = read_text(path, DataError, "image list (or an image of unknown extension)").splitlines()
    refs = []
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        head, _, tail = line.rpartition(" ")
        entry = head.strip() if head and tail.isdigit() else line
        refs.append(ImageRef(Path(entry) if Path(entry).is_absolute() else path.parent / entry, entry))
    missing = [r.label for r in refs if not r.path.is_file()]
    if missing:
        raise DataError(f"{path} lists {len(missing)} missing file(s), e.g. {missing[:3]}")
    if not refs:
        raise DataError(f"{path} lists no images; write one image path per line")
    return refs


class _Images(Dataset):
    """Each image decoded once, under every distinct transform."""

    def __init__(self, refs: Sequence[ImageRef], transforms: Sequence[Callable]) -> None:
        self.refs, self.transforms = list(refs), list(transforms)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        path = self.refs[index].path
        try:
            image = load_rgb(str(path), "an image to predict")
        except DataError as error:
            raise DataError(f"cannot decode image {path} ({error.__cause__}); replace it or leave it out") from error
        return tuple(transform(image) for transform in self.transforms)


@dataclass(frozen=True)
class Prediction:
    """One image under one task: the top classes, best first, and their probabilities."""

    image: str
    task: str
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]


def predict(
    model: MultiTaskModel,
    sources: Sequence[TaskSource],
    images: Sequence[ImageRef],
    data_config: dict,
    top_k: int = 5,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device | None = None,
) -> list[Prediction]:
    """Top-k predictions of every task (``sources``, in the model's task order) for every image.

    ``batch_size`` counts (image, task) pairs per forward: each batch holds
    ``batch_size // len(sources)`` images (at least one), each once per task.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if [s.name for s in sources] != model.task_names:
        raise ValueError("sources must be the model's tasks, in its order")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    protocols = sorted({s.protocol for s in sources})
    transforms = [build_transform(protocol, data_config, train=False) for protocol in protocols]
    view_of_task = [protocols.index(s.protocol) for s in sources]
    subset_masks = _subset_masks(sources, max(model.num_classes), device)
    per_batch = max(1, batch_size // len(sources))
    loader = DataLoader(_Images(images, transforms), batch_size=per_batch, num_workers=workers)
    results: list[Prediction] = []
    done = 0
    with torch.inference_mode():
        for views in loader:
            count = views[0].shape[0]
            pairs = torch.stack([views[view_of_task[t]] for t in range(len(sources))], dim=1)  # (images, tasks, ...)
            ids = torch.arange(len(sources)).repeat(count)
            output = model(pairs.flatten(0, 1).to(device), ids)
            valid = output.mask
            if subset_masks is not None:
                valid = valid & subset_masks.index_select(0, ids.to(device))
            probabilities = output.logits.float().masked_fill(~valid, float("-inf")).softmax(dim=-1)
            top = probabilities.topk(min(top_k, valid.shape[1]), dim=-1)
            values, indices = top.values.cpu(), top.indices.cpu()
            classes = valid.sum(dim=1).cpu()  # per row: the classes its task may predict
            for row, task in enumerate(ids.tolist()):
                source = sources[task]
                picked = indices[row, : min(top_k, int(classes[row]))].tolist()
                names = source.class_names
                results.append(
                    Prediction(
                        image=images[done + row // len(sources)].label,
                        task=source.name,
                        classes=tuple(names[c] if names and c < len(names) else str(c) for c in picked),
                        probabilities=tuple(values[row, : len(picked)].tolist()),
                    )
                )
            done += count
    return results


def _subset_masks(sources: Sequence[TaskSource], width: int, device: torch.device) -> torch.Tensor | None:
    """(tasks, width) bool: the logits each task's predictions may pick (its class subset), or None."""
    if not any(s.class_subset for s in sources):
        return None
    masks = torch.ones(len(sources), width, dtype=torch.bool)
    for task, source in enumerate(sources):
        if source.class_subset:
            masks[task] = False
            masks[task, list(source.class_subset)] = True
    return masks.to(device)


def predictions_csv(predictions: Sequence[Prediction], top_k: int) -> str:
    """CSV text: ``image, task, class_1, probability_1, ..., class_k, probability_k`` (a task with
    fewer than k classes leaves the last cells empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["image", "task", *(f"{kind}_{i}" for i in range(1, top_k + 1) for kind in ("class", "probability"))]
    )
    for p in predictions:
        cells = [value for pair in zip(p.classes, (f"{q:.6g}" for q in p.probabilities), strict=True) for value in pair]
        writer.writerow([p.image, p.task, *cells, *[""] * (2 * top_k - len(cells))])
    return buffer.getvalue()


def write_predictions(path: str | os.PathLike, predictions: Sequence[Prediction], top_k: int) -> Path:
    """Writes :func:`predictions_csv` to ``path`` atomically."""
    return atomic_write_text(path, predictions_csv(predictions, top_k))
