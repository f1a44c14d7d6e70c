"""What ``train``, ``eval`` and ``bench`` share: run settings resolved from protocol defaults,
a YAML file and the command line (in that order of precedence, lowest first), and the
model/data/run built from them. Everything is checked before any training starts."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..engine import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    ConfigError,
    DistInfo,
    ResumeError,
    TrainConfig,
    train,
)

CONFIG_NAME = "config.yaml"

# Keys of a run besides the training-loop settings (TrainConfig's fields).
RUN_KEYS = (
    "model",
    "pretrained",
    "model_kwargs",
    "method",
    "method_options",
    "data",
    "data_dir",
    "data_options",
    "train_split",
    "eval_split",
    "num_classes",
    "img_size",
    "drop_path",
    "device",
    "out",
)
# Protocol settings (snftune.data.protocol_settings) that the engine takes over as defaults.
PROTOCOL_TRAIN_KEYS = (
    "lr",
    "weight_decay",
    "epochs",
    "warmup_epochs",
    "warmup_lr",
    "min_lr",
    "batch_size",
    "mixup",
    "cutmix",
    "label_smoothing",
)


class CLIError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a message for the user), not a bug (a traceback)."""
    from ..backbones import UnsupportedModelError
    from ..backbones.factory import WeightsUnavailableError
    from ..data import DataError
    from ..methods.registry import NotApplicableError, UnknownMethodError
    from ..tuning import TunedFileError

    return (
        CLIError,
        ConfigError,
        ResumeError,
        DataError,
        UnknownMethodError,
        NotApplicableError,
        UnsupportedModelError,
        WeightsUnavailableError,
        TunedFileError,
    )


def known_keys() -> list[str]:
    return [*RUN_KEYS, *TrainConfig.field_names()]


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["depth=2", "patch_size=8"]`` -> ``{"depth": 2, "patch_size": 8}`` (values read as YAML)."""
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CLIError(f"{flag} takes KEY=VALUE pairs, got '{item}' (e.g. {flag} depth=2)")
        try:
            values[key] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise CLIError(f"{flag} {item}: the value is not valid YAML ({error})") from error
    return values


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file of run settings (the same names as the command-line options, with
    underscores), every key checked."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise CLIError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise CLIError(f"config file {path} must be a mapping of settings, e.g. 'lr: 0.001'")
    if "train" in data and isinstance(data["train"], dict):  # accept a resolved config.yaml as defaults
        data = {**{k: v for k, v in data.items() if k in RUN_KEYS}, **data["train"]}
    unknown = sorted(set(data) - set(known_keys()))
    if unknown:
        raise CLIError(
            f"config file {path}: unknown setting(s) {', '.join(map(repr, unknown))}. "
            f"Known settings: {', '.join(known_keys())}"
        )
    return data


@dataclass
class RunSettings:
    """Everything needed to rebuild a run: written as ``config.yaml`` in the run folder."""

    model: str
    method: str
    data: str
    train: TrainConfig
    pretrained: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    train_split: str | None = None
    eval_split: str | None = None
    num_classes: int | None = None
    img_size: int | None = None
    drop_path: float = 0.0
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "train"}
        return {**values, "train": self.train.to_dict()}


def _absolute(path: str | None, is_path: bool) -> str | None:
    return str(Path(path).expanduser().resolve()) if path is not None and is_path else path


def resolve_settings(values: dict[str, Any]):
    """Settings and the resolved task from merged values (protocol defaults filled in).

    Returns ``(RunSettings, task, method_config)``; raises a user error when anything is
    missing, unknown or inconsistent.
    """
    from ..backbones.factory import _looks_like_path
    from ..data import protocol_settings, resolve_task
    from ..methods.registry import resolve_config

    for key, flag in (("model", "--model"), ("method", "--method"), ("data", "--data")):
        if not values.get(key):
            raise CLIError(f"missing {flag} (or '{key}:' in the --config file)")
    try:
        method_config = resolve_config(values["method"], **(values.get("method_options") or {}))
    except (TypeError, ValueError) as error:
        if isinstance(error, user_error_types()):
            raise
        raise CLIError(f"method '{values['method']}': {error}") from error
    task = resolve_task(values["data"], values.get("data_dir"), **(values.get("data_options") or {}))
    if values.get("num_classes") is not None and int(values["num_classes"]) != task.num_classes:
        raise CLIError(
            f"--num-classes {values['num_classes']} does not match {task.name}, which has {task.num_classes} "
            "classes; drop --num-classes (it is read from the task) or pick the task you meant"
        )
    protocol = protocol_settings(task.protocol)
    train_values = {key: getattr(protocol, key) for key in PROTOCOL_TRAIN_KEYS}
    train_values.update({k: values[k] for k in TrainConfig.field_names() if values.get(k) is not None})
    train_config = TrainConfig.from_dict(train_values)
    train_split = values.get("train_split") or task.train_split
    eval_split = values.get("eval_split") or task.eval_split
    for flag, split in (("--split", train_split), ("--eval-split", eval_split)):
        if split is not None and split not in task.splits:
            raise CLIError(f"{flag} {split}: {task.name} has the splits {', '.join(task.splits)}")
    pretrained = values.get("pretrained")
    data_dir = values.get("data_dir")
    settings = RunSettings(
        model=values["model"],
        method=str(values["method"]),
        data=values["data"],
        train=train_config,
        pretrained=_absolute(pretrained, pretrained is not None and _looks_like_path(pretrained)),
        model_kwargs=dict(values.get("model_kwargs") or {}),
        method_options=dict(values.get("method_options") or {}),
        data_dir=_absolute(data_dir, data_dir is not None),
        data_options=dict(values.get("data_options") or {}),
        train_split=train_split,
        eval_split=eval_split,
        num_classes=task.num_classes,
        img_size=values.get("img_size"),
        drop_path=float(values["drop_path"] if values.get("drop_path") is not None else protocol.drop_path),
        device=values.get("device"),
    )
    if str(settings.method).endswith((".yaml", ".yml")):
        settings.method = _absolute(settings.method, True)
    return settings, task, method_config


def build_backbone(settings: RunSettings, drop_path: float | None = None) -> torch.nn.Module:
    """The timm backbone of the settings, untuned (seeded, so the head's initialisation is
    the same in every process and every rerun)."""
    from ..backbones.factory import create_model

    kwargs = dict(settings.model_kwargs or {})
    if settings.img_size is not None:
        kwargs["img_size"] = settings.img_size
    rate = settings.drop_path if drop_path is None else drop_path
    if rate:
        kwargs["drop_path_rate"] = rate
    torch.manual_seed(settings.train.seed)
    try:
        return create_model(settings.model, settings.pretrained, num_classes=settings.num_classes, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise CLIError(
                f"timm has no model '{settings.model}'; list names with python -c \"import timm; "
                f"print(timm.list_models('*{settings.model.split('_')[0]}*'))\""
            ) from error
        raise
    except TypeError as error:
        raise CLIError(f"timm model '{settings.model}' rejected its settings {kwargs}: {error}") from error


def build_model(settings: RunSettings) -> torch.nn.Module:
    """The backbone with the settings' method applied."""
    from ..tuning import apply

    model = build_backbone(settings)
    try:
        apply(model, settings.method, **(settings.method_options or {}))
    except (TypeError, ValueError) as error:
        if isinstance(error, user_error_types()):
            raise
        raise CLIError(f"method '{settings.method}' on {settings.model}: {error}") from error
    return model


def input_config(model: torch.nn.Module, settings: RunSettings) -> dict[str, Any]:
    """timm's data config for the model, at the size the model was built for."""
    from ..data import model_data_config

    size = settings.img_size
    if size is None:
        patch_embed = getattr(model, "patch_embed", None)
        size = getattr(patch_embed, "img_size", None)
    if isinstance(size, (tuple, list)):
        size = tuple(int(s) for s in size)
    return model_data_config(model, input_size=size) if size is not None else model_data_config(model)


def build_datasets(model: torch.nn.Module, settings: RunSettings, task, eval_split: str | None = None):
    """(train set, eval set or None) with the protocol's transforms."""
    from ..data import build_transform

    data_config = input_config(model, settings)
    train_set = task.dataset(settings.train_split, transform=build_transform(task.protocol, data_config, train=True))
    split = eval_split or settings.eval_split
    eval_set = None
    if split is not None:
        eval_set = task.dataset(split, transform=build_transform(task.protocol, data_config, train=False))
    return train_set, eval_set


def check_run_folder(out: Path, resume: bool) -> str:
    """'fresh', 'resume' or 'finished', refusing to overwrite a run by accident."""
    if (out / METRICS_NAME).is_file():
        if resume:
            return "finished"
        raise CLIError(f"{out} already holds a finished run ({METRICS_NAME}); choose another --out")
    if (out / CHECKPOINT_NAME).is_file():
        if resume:
            return "resume"
        raise CLIError(f"{out} holds an unfinished run ({CHECKPOINT_NAME}); pass --resume to continue it")
    return "fresh"


def write_config(out: Path, settings: RunSettings, task, method_config) -> None:
    from .. import __version__

    record = {
        **settings.to_dict(),
        "method_config": {"method": method_config.method, **method_config.to_dict()},
        "task": {
            "name": task.name,
            "num_classes": task.num_classes,
            "protocol": task.protocol,
            "group": task.group,
            "class_subset": list(task.class_subset) if task.class_subset else None,
        },
        "snftune_version": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{CONFIG_NAME}.tmp"
    tmp.write_text(yaml.safe_dump(record, sort_keys=False))
    os.replace(tmp, out / CONFIG_NAME)


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise CLIError(f"{run_dir} is not a run folder: {CONFIG_NAME} is missing")
    return yaml.safe_load(path.read_text())


def settings_from_record(record: dict[str, Any]) -> RunSettings:
    names = {f.name for f in dataclasses.fields(RunSettings)} - {"train"}
    return RunSettings(train=TrainConfig.from_dict(record["train"]), **{k: record.get(k) for k in names if k in record})


def run_training(
    settings: RunSettings, task, method_config, out: Path, resume: bool, dist: DistInfo
) -> dict[str, Any] | None:
    """Builds everything, writes config.yaml, trains. None when the run had already finished."""
    state = check_run_folder(out, resume)
    if state == "finished":
        if dist.is_main:
            print(f"{out} already finished; nothing to do")
        return None
    model = build_model(settings)
    train_set, eval_set = build_datasets(model, settings, task)
    if dist.is_main:
        write_config(out, settings, task, method_config)
    record = {
        "model": settings.model,
        "pretrained": settings.pretrained,
        "method": settings.method,
        "method_config": {"method": method_config.method, **method_config.to_dict()},
        "data": task.name,
        "train_split": settings.train_split,
        "protocol": task.protocol,
        "class_subset": "restricted to the task's classes" if task.class_subset else None,
        "drop_path": settings.drop_path,
    }
    return train(
        model,
        train_set,
        settings.train,
        out,
        eval_set=eval_set,
        eval_split=settings.eval_split or "none",
        class_subset=task.class_subset,
        num_classes=task.num_classes,
        dist=dist,
        resume=state == "resume",
        record=record,
    )


def add_train_options(parser: argparse.ArgumentParser, with_run: bool = True) -> None:
    """Options shared by ``train`` and ``bench``; every default is None (= not given), so
    that YAML files and protocol defaults can fill them."""
    if with_run:
        parser.add_argument("--model", help="timm model name, e.g. vit_base_patch16_224")
        parser.add_argument("--method", help="method or preset name (snf-deep, lora, ...) or a method YAML file")
        parser.add_argument("--data", help="task spec, e.g. vtab1k/cifar, fgvc/cub, generated/shapes")
    if with_run:
        parser.add_argument(
            "--pretrained", help="weights: a local .npz/.pth/.safetensors file, or a hub tag (needs network)"
        )
    else:
        parser.add_argument(
            "--pretrained",
            nargs="+",
            metavar="FILE_OR_LABEL=FILE",
            help="backbone weights (a local file or hub tag); LABEL=FILE pairs for suites with several backbones",
        )
    parser.add_argument("--data-dir", help="folder holding the datasets (not needed for generated/...)")
    parser.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE", help="extra timm.create_model arguments")
    parser.add_argument("--data-options", nargs="+", metavar="KEY=VALUE", help="task options, e.g. image_size=32")
    parser.add_argument("--method-options", nargs="+", metavar="KEY=VALUE", help="method settings, e.g. planar_steps=3")
    parser.add_argument("--config", help="YAML file of defaults for these options (the command line wins)")
    group = parser.add_argument_group("training (defaults: the task's protocol, DATA.md)")
    group.add_argument("--epochs", type=int)
    group.add_argument("--lr", type=float)
    group.add_argument("--batch-size", type=int, help="global batch of one optimiser step")
    group.add_argument("--weight-decay", type=float)
    group.add_argument("--warmup-epochs", type=float)
    group.add_argument("--warmup-lr", type=float)
    group.add_argument("--min-lr", type=float)
    group.add_argument("--drop-path", type=float)
    group.add_argument("--label-smoothing", type=float)
    group.add_argument("--mixup", type=float, help="mixup alpha (0: off)")
    group.add_argument("--cutmix", type=float, help="cutmix alpha (0: off)")
    group.add_argument("--accum-steps", type=int, help="split each batch into this many accumulation steps")
    group.add_argument("--grad-clip", type=float)
    group.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], help="mixed precision on CUDA")
    group.add_argument("--eval-every", type=int, help="evaluate every k epochs (0: at the end only)")
    group.add_argument("--eval-batch-size", type=int)
    group.add_argument("--seed", type=int)
    group.add_argument("--workers", type=int, help="data-loading processes")
    group.add_argument("--img-size", type=int, help="input size (ViT/Swin are built for it)")
    group.add_argument("--num-classes", type=int, help="checked against the task's class count")
    group.add_argument("--split", dest="train_split", help="training split (default: the protocol's)")
    group.add_argument("--eval-split", help="evaluation split (default: the protocol's)")
    group.add_argument(
        "--report",
        choices=["final", "best"],
        help="headline top-1: the final epoch's (default) or the best evaluation, labelled as such",
    )
    group.add_argument("--checkpoint-every", type=int, help="also checkpoint every N optimiser steps")
    group.add_argument("--log-every", type=int)
    group.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    group.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bars")


def values_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Merged settings: the --config file, then every option given on the command line."""
    values = load_config_file(args.config) if getattr(args, "config", None) else {}
    given = {k: v for k, v in vars(args).items() if k in known_keys() and v is not None}
    for key, flag in (("model_kwargs", "--model-kwargs"), ("data_options", "--data-options")):
        if key in given:
            given[key] = {**(values.get(key) or {}), **parse_key_values(given[key], flag)}
    if "method_options" in given:
        given["method_options"] = {
            **(values.get("method_options") or {}),
            **parse_key_values(given["method_options"], "--method-options"),
        }
    return {**values, **given}
