"""A training run as a library call: its settings, its folder, its model and data.

Settings are resolved from three sources, lowest precedence first: the task's protocol, a
settings file (YAML), and the values given explicitly (the command line). Everything is
checked before any training starts; the resolved settings are written as ``config.yaml`` in
the run folder, so a run can be rebuilt, resumed or evaluated from its folder alone.

Sources are merged by :func:`merge_layers` (protocol -> suite -> YAML -> command line -> a
trial), every key checked against its declaration (:data:`RUN_VALUES`, :class:`TrainConfig`)
and resolved into one frozen :class:`RunSpec`, which writes, reads and compares ``config.yaml``.
What travels between layers is a :class:`RunRequest` (the merged sources, resolved once, in
one place: :attr:`RunRequest.resolved`) or what it resolved to (:class:`ResolvedRun`); a
trial, a final run or a NOAH phase is a request derived from its plan's
(:meth:`RunRequest.with_overrides`).

Work in a folder is a :class:`Plan` (``check``, ``state``, ``differences``, ``run``): one run
(:class:`RunPlan`), a selection (:class:`snftune.selection.SelectionPlan`), NOAH's pipeline
(:class:`snftune.nas.NoahPlan`). ``snftune train`` runs one of the first two, ``snftune bench``
one per cell; ``snftune eval`` is :func:`evaluate_tuned`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from .atomic import atomic_write_json, atomic_write_text
from .backbones.embedded import RANDOM, is_embedded
from .backbones.factory import create_model, looks_like_path, require_known_model
from .data import Task, build_transform, model_data_config, protocol_settings, resolve_task
from .data.folds import MAX_FOLDS
from .data.image_cache import CACHE_MODES, ImageCache
from .data.transforms import is_deterministic
from .engine import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    TUNED_NAME,
    DistInfo,
    Metrics,
    TrainConfig,
    evaluate,
    run_lock,
    train,
)
from .engine.acceleration import amp_dtype, autocast_name
from .engine.features import train_head_on_features, trains_head_only
from .engine.trainer import RESUMABLE_CHANGES
from .errors import RUN_FAILED, SnftuneError
from .inputs import THREADS, Rule, field_rules, load_yaml, ruled
from .methods.registry import MethodConfig, resolve_config
from .provenance import PROVENANCE_NAME, run_provenance
from .tuning import apply, load_tuned, read_tuned_metadata

__all__ = [
    "CONFIG_NAME",
    "PLAN_KEYS",
    "RUN_KEYS",
    "RUN_VALUES",
    "PLAN_VALUES",
    "check_given",
    "spec_rules",
    "ResolvedRun",
    "RunFailedError",
    "Plan",
    "PicklesFields",
    "plan_state",
    "RunPlan",
    "RunRequest",
    "RunSettings",
    "RunSpec",
    "final_folders",
    "SettingsError",
    "build_backbone",
    "build_datasets",
    "build_model",
    "check_device",
    "recorded_values",
    "settings_differences",
    "evaluate_tuned",
    "evaluation_settings",
    "read_tuned_source",
    "input_config",
    "known_keys",
    "load_settings_file",
    "merge_layers",
    "probes_cached_features",
    "read_run_config",
    "resolve_settings",
    "run_state",
    "settings_from_record",
    "train_run",
    "train_settings",
    "write_run_config",
]

CONFIG_NAME = "config.yaml"
MAX_IMAGE_SIZE = 4096
MAX_CLASSES = 1_000_000
MAX_SELECT_SEEDS = 100


class SettingsError(SnftuneError, ValueError):
    """A run setting that is missing, unknown or inconsistent with the task or the folder."""


class RunFailedError(SnftuneError, RuntimeError):
    """A run that started and failed (not bad input): the message says where the details are."""

    exit_code = RUN_FAILED


class PicklesFields:
    """For a frozen dataclass that caches what it resolves: pickled (sent to a Ray task) with its
    fields only, so the other process resolves, and checks, again from the settings."""

    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def check_given(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as a source gives them, each key known and each value of its declared type and
    range (:data:`RUN_VALUES`, :meth:`TrainConfig.rules`, :data:`PLAN_VALUES`; None: not given),
    as those types (``8.0`` -> ``8``); the first bad one raises, in one line."""
    checked = {}
    for key, value in values.items():
        if key in RUN_VALUES:
            checked[key] = RUN_VALUES[key].check(key, value, SettingsError)
        elif key in PLAN_VALUES:
            checked[key] = PLAN_VALUES[key].check(key, value, SettingsError)
        elif key in TrainConfig.rules():
            checked[key] = None if value is None else TrainConfig.check_setting(key, value, SettingsError)
        else:
            raise SettingsError(f"unknown setting {key!r}; known settings: {', '.join(known_keys())}")
    return checked


def known_keys() -> list[str]:
    """Every setting a settings file takes: the run keys, the training loop's and the selection's."""
    return [*RUN_KEYS, *TrainConfig.field_names(), *PLAN_KEYS]


def load_settings_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file of run settings (the command-line options' names, with underscores), every
    key checked. A run folder's ``config.yaml`` is accepted too, as defaults for a new run."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"settings file {path} does not exist")
    data = load_yaml(path, source=f"settings file {path}", error=SettingsError) or {}
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path} must be a mapping of settings, e.g. 'lr: 0.001'")
    if "train" in data and isinstance(data["train"], dict):
        data = {**{k: v for k, v in data.items() if k in RUN_KEYS}, **data["train"]}
    unknown = sorted(set(data) - set(known_keys()))
    if unknown:
        raise SettingsError(
            f"settings file {path}: unknown setting(s) {', '.join(map(repr, unknown))}. "
            f"Known settings: {', '.join(known_keys())}"
        )
    try:
        return check_given(data)
    except SettingsError as error:
        raise SettingsError(f"settings file {path}: {error}") from None


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run, typed and checked when built: the backbone and its
    weights, the method and its options, the task and its data options, the training loop's
    settings (:class:`TrainConfig`: numbers, schedule, ``amp``), and where it runs (device,
    threads; ``compile`` and ``grad_checkpointing`` are training settings, in :class:`TrainConfig`).
    Written as ``config.yaml`` (:meth:`to_record`), read
    back (:meth:`from_record`), and compared with a recorded one (:meth:`differences`) by the
    resume and bench-cell checks alike. Change one with :func:`dataclasses.replace`."""

    model: str = ruled(Rule(str))
    method: str = ruled(Rule(str))
    data: str = ruled(Rule(str))
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrained: str | None = ruled(Rule(str, optional=True))
    model_kwargs: dict[str, Any] = ruled(Rule(dict), factory=dict)
    method_options: dict[str, Any] = ruled(Rule(dict), factory=dict)
    data_dir: str | None = ruled(Rule(str, optional=True))
    data_options: dict[str, Any] = ruled(Rule(dict), factory=dict)
    train_split: str | None = ruled(Rule(str, optional=True))
    eval_split: str | None = ruled(Rule(str, optional=True))
    num_classes: int | None = ruled(Rule(int, 1, MAX_CLASSES, optional=True))
    img_size: int | None = ruled(Rule(int, 1, MAX_IMAGE_SIZE, optional=True))
    drop_path: float = ruled(Rule(float, 0.0, 1.0, high_open=True), 0.0)
    device: str | None = ruled(Rule(str, optional=True))
    threads: int | None = ruled(THREADS)
    cache: str = ruled(Rule(str, choices=CACHE_MODES), "auto")
    cache_dir: str | None = ruled(Rule(str, optional=True))
    feature_cache: bool = ruled(Rule(bool), True)

    def __post_init__(self) -> None:
        for key, rule in spec_rules().items():
            object.__setattr__(self, key, rule.check(key, getattr(self, key), SettingsError))
        if not isinstance(self.train, TrainConfig):
            raise SettingsError(f"train must be the training loop's settings (TrainConfig), got {self.train!r}")

    def to_record(self) -> dict[str, Any]:
        """Plain data for ``config.yaml``: every field, the training settings as a mapping."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "train"}
        return {**values, "train": self.train.to_dict()}

    to_dict = to_record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RunSpec:
        """The spec of a ``config.yaml`` record (keys it does not define are ignored: the
        record also holds the method config and the task it resolved)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"train"}
        return cls(train=TrainConfig.from_dict(record["train"]), **{k: record[k] for k in names if k in record})

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """The defining settings in which this spec differs from a run folder's ``config.yaml``,
        as ``"key: recorded -> new"`` lines (empty: the folder's runs are this spec's)."""
        new = self.to_record()
        found = []
        for key in sorted(set(new) | set(recorded)):
            if key in RESUMABLE_RUN_KEYS or key == "train" or key not in new:
                continue
            old = recorded.get(key, LATER_RUN_KEYS.get(key))
            if old != new[key]:
                found.append(f"{key}: {old!r} -> {new[key]!r}")
        old_train, new_train = recorded.get("train") or {}, new["train"]
        for key in sorted(new_train):
            if key not in RESUMABLE_TRAIN_KEYS and old_train.get(key) != new_train[key]:
                found.append(f"{key}: {old_train.get(key)!r} -> {new_train[key]!r}")
        return found


@functools.cache
def spec_rules() -> dict[str, Rule]:
    """Each :class:`RunSpec` field's type and range (the training loop's are :class:`TrainConfig`'s)."""
    return field_rules(RunSpec)


RUN_VALUES: dict[str, Rule] = {
    **{key: dataclasses.replace(rule, optional=True) for key, rule in spec_rules().items()},
    "out": Rule(str, optional=True),
}
"""Every run key with what it accepts (None: not given), checked where settings enter
(:class:`RunRequest`): the spec's fields, and the folder the run is written to."""

RUN_KEYS = tuple(RUN_VALUES)
"""Keys of a run besides the training-loop settings (TrainConfig's fields)."""

PLAN_VALUES: dict[str, Rule] = {
    "select_seeds": Rule(int, 1, MAX_SELECT_SEEDS, optional=True),
    "select_folds": Rule(int, 2, MAX_FOLDS, optional=True),
    "unstable_range": Rule(float, 0.0, 100.0, optional=True),
}
"""Settings of a hyper-parameter selection, not of a run (:class:`snftune.selection.SelectionOptions`):
a settings file and the command line carry them to the plan; a run ignores them."""

PLAN_KEYS = tuple(PLAN_VALUES)

RunSettings = RunSpec
"""The former name of :class:`RunSpec`."""

RESUMABLE_RUN_KEYS = {"device", "data_dir", "out", "cache", "cache_dir", "threads"}
"""Run settings that may change between a run and its resumption without changing its numbers
(the data may move to another mount; the engine still checks the training set's size; the
image cache gives the images the uncached pipeline gives)."""
LATER_RUN_KEYS = {"feature_cache": True}
"""Defining settings added after run folders were first written, with the value that such a
folder's ``config.yaml`` (which lacks them) stands for."""
RESUMABLE_TRAIN_KEYS = RESUMABLE_CHANGES  # the engine's list: compile and grad_checkpointing included


@dataclass
class ResolvedRun:
    """A run's settings with the task and method config they name, checked; ``notes`` are
    one-line remarks for the user about settings derived from others (a scaled warm-up)."""

    settings: RunSpec
    task: Task
    method_config: MethodConfig
    notes: tuple[str, ...] = ()


MERGED_KEYS = ("model_kwargs", "method_options", "data_options")
"""Settings that are mappings: a later source adds to and replaces keys of an earlier one."""


def _scaled_warmup(below: dict[str, Any], layer: dict[str, Any]) -> float | None:
    """The warm-up that keeps ``below``'s fraction of the schedule when ``layer`` changes the
    number of epochs without setting a warm-up (None: nothing to scale)."""
    epochs, warmup = below.get("epochs"), below.get("warmup_epochs")
    new_epochs = layer.get("epochs")
    if new_epochs is None or layer.get("warmup_epochs") is not None or epochs is None or warmup is None:
        return None
    if epochs <= 0 or new_epochs == epochs:
        return None
    return float(warmup) * float(new_epochs) / float(epochs)


def _warmup_note(warmup: float, epochs: Any, source: str, old_warmup: Any, old_epochs: Any) -> str:
    return (
        f"warm-up: {warmup:g} of {epochs} epochs ({source}'s {old_warmup:g} of {old_epochs}, scaled with the "
        "run's length; --warmup-epochs sets it)"
    )


def merge_layers(*layers: dict[str, Any], names: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """Settings from sources of rising precedence (a suite, a settings file, the command line,
    a trial): later values win, mappings (:data:`MERGED_KEYS`) merge key by key, and a source
    that changes ``epochs`` without a warm-up keeps the warm-up's fraction of the schedule
    (10 of 100 epochs -> 1 of 10). Returns the values and a note per scaled warm-up."""
    merged: dict[str, Any] = {}
    notes = []
    for index, layer in enumerate(check_given(layer) for layer in layers):
        scaled = _scaled_warmup(merged, layer)
        if scaled is not None:
            source = names[index - 1] if 0 < index <= len(names) else "the settings"
            notes.append(_warmup_note(scaled, layer["epochs"], source, merged["warmup_epochs"], merged["epochs"]))
            merged["warmup_epochs"] = scaled
        for key, value in layer.items():
            if key in MERGED_KEYS and isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged, notes


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path is not None else None


def train_settings(protocol: str, values: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """The training loop's settings: the protocol's, then ``values``; a changed length without
    a warm-up keeps the protocol's warm-up fraction (10 of 100 epochs -> 0.1 of 1), said in the
    note returned."""
    train = protocol_settings(protocol).train
    given = {k: values[k] for k in TrainConfig.field_names() if values.get(k) is not None}
    defaults = {**TrainConfig().to_dict(), **train}
    notes = []
    scaled = _scaled_warmup(defaults, given)
    if scaled is not None:
        source = f"the {protocol} protocol"
        notes.append(_warmup_note(scaled, given["epochs"], source, defaults["warmup_epochs"], defaults["epochs"]))
        given["warmup_epochs"] = scaled
    return TrainConfig.from_dict({**train, **given}), notes


def resolve_settings(values: dict[str, Any]) -> ResolvedRun:
    """Settings from merged values, with the protocol's defaults filled in.

    Raises a user error (:class:`SettingsError`, ``DataError``, ``UnknownMethodError``, ...)
    when anything is missing, unknown or inconsistent.
    """
    for key in ("model", "method", "data"):
        if values.get(key) is None or values.get(key) == "":
            raise SettingsError(f"missing {key} (--{key} on the command line, or '{key}:' in a settings file)")
    values = check_given(values)
    method_config = resolve_config(values["method"], **(values.get("method_options") or {}))
    task = resolve_task(values["data"], values.get("data_dir"), **(values.get("data_options") or {}))
    if values.get("num_classes") is not None and int(values["num_classes"]) != task.num_classes:
        raise SettingsError(
            f"--num-classes {values['num_classes']} does not match {task.name}, which has {task.num_classes} "
            "classes; drop --num-classes (it is read from the task) or pick the task you meant"
        )
    protocol = protocol_settings(task.protocol)
    train_config, notes = train_settings(task.protocol, values)
    train_split = values.get("train_split") or task.train_split
    eval_split = values.get("eval_split") or task.eval_split
    for flag, split in (("--split", train_split), ("--eval-split", eval_split)):
        if split is not None and split not in task.splits:
            raise SettingsError(f"{flag} {split}: {task.name} has the splits {', '.join(task.splits)}")
    if train_config.report == "best" and eval_split is not None and eval_split == task.eval_split:
        raise SettingsError(
            f"report best picks the epoch with the best score on the split it reports, and {task.name}'s "
            f"{eval_split} split is read once, at the end: use report final, or --eval-split with a validation "
            "split to report the best validation score"
        )
    check_device(values.get("device"))
    cache, feature_cache = values.get("cache") or "auto", values.get("feature_cache")
    pretrained = values.get("pretrained")
    _check_weights_named(str(values["model"]), pretrained)
    method = str(values["method"])
    settings = RunSpec(
        model=values["model"],
        method=_absolute(method) if method.endswith((".yaml", ".yml")) else method,
        data=values["data"],
        train=train_config,
        pretrained=_absolute(pretrained) if pretrained is not None and looks_like_path(pretrained) else pretrained,
        model_kwargs=dict(values.get("model_kwargs") or {}),
        method_options=dict(values.get("method_options") or {}),
        data_dir=_absolute(values.get("data_dir")),
        data_options=dict(values.get("data_options") or {}),
        train_split=train_split,
        eval_split=eval_split,
        num_classes=task.num_classes,
        img_size=values.get("img_size"),
        drop_path=float(values["drop_path"] if values.get("drop_path") is not None else protocol.drop_path),
        device=values.get("device"),
        threads=values.get("threads"),
        cache=cache,
        cache_dir=_absolute(values.get("cache_dir")),
        feature_cache=feature_cache is not False,
    )
    return ResolvedRun(settings, task, method_config, tuple(notes))


@dataclass(frozen=True)
class RunRequest(PicklesFields):
    """A run as asked for: the settings its sources gave (a suite, a settings file, the command
    line, merged by :func:`merge_layers`), before the protocol fills in the rest. It resolves
    once, when first needed (:attr:`resolved`: checked, typed, with its task and method config).
    A trial or a phase is a new request on top of it (:meth:`with_overrides`), so a changed
    length scales the warm-up of the sources it was given, exactly as a direct request would."""

    given: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "given", check_given(self.given))

    @functools.cached_property
    def resolved(self) -> ResolvedRun:
        """The request resolved and checked (:func:`resolve_settings`), once."""
        return resolve_settings(dict(self.given))

    @property
    def spec(self) -> RunSpec:
        return self.resolved.settings

    def get(self, key: str, default: Any = None) -> Any:
        """A setting as given (None when no source gave it: the protocol's default applies)."""
        return self.given.get(key, default)

    def with_overrides(self, *layers: RunRequest | Mapping[str, Any]) -> RunRequest:
        """This request under sources of higher precedence (a trial's values, a phase's
        overrides, another request), merged by :func:`merge_layers`."""
        given = [layer.given if isinstance(layer, RunRequest) else layer for layer in layers]
        return RunRequest(merge_layers(dict(self.given), *(dict(layer) for layer in given))[0])

    def replacing(self, **values: Any) -> RunRequest:
        """This request with settings set outright (no merge of mappings, no warm-up scaling)."""
        return RunRequest({**self.given, **values})

    def without(self, *keys: str) -> RunRequest:
        """This request without the settings ``keys`` (their protocol defaults apply)."""
        return RunRequest({key: value for key, value in self.given.items() if key not in keys})


def _check_weights_named(model: str, pretrained: Any) -> None:
    """A timm backbone trains from the weights it is given: without any, the run would tune a
    random network and report it like a pretrained one, so random initialisation must be asked
    for by name (``pretrained: random``). The shipped backbones carry their own weights. A name
    that is no model at all is refused first, with the nearest right name."""
    require_known_model(model)
    if pretrained is None and not is_embedded(model):
        raise SettingsError(
            f"--model {model} has no weights: pass --pretrained FILE (a local .npz/.pth/.safetensors file) or "
            f"--pretrained TAG (a timm hub tag, e.g. orig_in21k; needs network), or --pretrained {RANDOM} to tune "
            "a randomly initialised backbone on purpose"
        )


def build_backbone(settings: RunSpec, drop_path: float | None = None) -> torch.nn.Module:
    """The timm backbone of the settings, untuned (seeded, so the head's initialisation is
    the same in every process and every rerun)."""
    kwargs = dict(settings.model_kwargs or {})
    if settings.img_size is not None:
        kwargs["img_size"] = settings.img_size
    rate = settings.drop_path if drop_path is None else drop_path
    if rate:
        kwargs["drop_path_rate"] = rate
    torch.manual_seed(settings.train.seed)
    weights = settings.pretrained
    if weights == RANDOM and not is_embedded(settings.model):
        weights = None  # timm's own initialisation
    try:
        return create_model(settings.model, weights, num_classes=settings.num_classes, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise SettingsError(
                f"timm has no model '{settings.model}'; list names with python -c \"import timm; "
                f"print(timm.list_models('*{settings.model.split('_')[0]}*'))\""
            ) from error
        raise
    except TypeError as error:
        raise SettingsError(f"timm model '{settings.model}' rejected its settings {kwargs}: {error}") from error


def build_model(settings: RunSpec) -> torch.nn.Module:
    """The backbone with the settings' method applied."""
    model = build_backbone(settings)
    apply(model, settings.method, **(settings.method_options or {}))
    return model


def input_config(model: torch.nn.Module, settings: RunSpec) -> dict[str, Any]:
    """timm's data config for the model, at the size the model was built for."""
    size = settings.img_size
    if size is None:
        size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, (tuple, list)):
        size = tuple(int(s) for s in size)
    return model_data_config(model, input_size=size) if size is not None else model_data_config(model)


def monitored_split(settings: RunSpec, task: Task) -> str | None:
    """The split evaluated during training: a tuning split only. The task's validation split
    when the run trains on the split it is held out from (train -> val; VTAB-1k's train800 ->
    val200), an evaluation split the run chose itself (a trial's val200); none when the run
    trains on the validation images too (VTAB-1k's train800val200). The protocol's evaluation
    split (test) is read once, after the last epoch (:func:`train_run`)."""
    if settings.eval_split is not None and settings.eval_split != task.eval_split:
        return settings.eval_split
    if task.tuning_splits is not None and settings.train_split == task.tuning_splits[0]:
        return task.tuning_splits[1]
    return None


def build_dataset(model: torch.nn.Module, settings: RunSpec, task: Task, split: str, train: bool):
    """One split with the protocol's transforms, served from the decoded-image cache of
    ``settings.cache`` (``snftune.data.image_cache``: the same tensors, decoded once)."""
    dataset = task.dataset(split, transform=build_transform(task.protocol, input_config(model, settings), train=train))
    cache = ImageCache(settings.cache, Path(settings.cache_dir) if settings.cache_dir else None)
    return cache.wrap(dataset, settings.train.workers)


def build_datasets(model: torch.nn.Module, settings: RunSpec, task: Task):
    """(train set, the set evaluated during training or None: :func:`monitored_split`)."""
    train_set = build_dataset(model, settings, task, settings.train_split, train=True)
    monitor = monitored_split(settings, task)
    return train_set, build_dataset(model, settings, task, monitor, train=False) if monitor else None


def probes_cached_features(model: torch.nn.Module, settings: RunSpec, train_set) -> bool:
    """Whether the run trains its head on features computed once (``snftune.engine.features``):
    ``feature_cache`` is on, only the head trains, and every epoch would show the backbone the
    same inputs (a deterministic transform, no mixup or cutmix)."""
    return (
        settings.feature_cache
        and trains_head_only(model)
        and is_deterministic(getattr(train_set, "transform", None))
        and not settings.train.uses_mixup
    )


def final_folders(folder: Path, seeds: tuple[int, ...] | None) -> list[Path]:
    """The final run folders of a plan: ``folder`` itself, or one ``seed<s>`` folder per seed."""
    return [folder] if not seeds else [folder / f"seed{seed}" for seed in seeds]


def plan_state(folder: Path, seeds: tuple[int, ...] | None, *work: str) -> str:
    """A plan's state from its folder: ``"done"`` when every final run finished, ``"resume"`` when
    any final run or the plan's own earlier work (the sub-folders ``work``: trials, a supernet)
    started, else ``"todo"``."""
    states = [run_state(run) for run in final_folders(folder, seeds)]
    if all(state == "done" for state in states):
        return "done"
    started = any(state != "todo" for state in states) or any((folder / name).is_dir() for name in work)
    return "resume" if started else "todo"


class Plan(Protocol):
    """Work that runs itself in a folder: a single run (:class:`RunPlan`), a selection of
    hyper-parameters then seeds (:class:`snftune.selection.SelectionPlan`), NOAH's pipeline
    (:class:`snftune.nas.NoahPlan`). ``train``, ``search noah``, ``bench``, its ``--status``
    and its executors only ever call these three methods."""

    seeds: tuple[int, ...] | None
    """The final runs' seeds (None: one final run, in the folder itself)."""

    def check(self) -> ResolvedRun:
        """Every run of the plan resolved (a bad setting raises now, before anything trains);
        returns the final run's."""
        ...

    def state(self, folder: Path) -> str:
        """``"done"`` when every final run has finished, ``"resume"`` when anything was
        started, else ``"todo"``; from the folder alone."""
        ...

    def differences(self, folder: Path) -> list[str]:
        """How the runs already in ``folder`` differ from this plan (empty: reusable)."""
        ...

    def run(self, folder: Path, dist: DistInfo | None = None, log: Callable[[str], None] = print) -> list[Metrics]:
        """Runs what is left in ``folder``; returns the final runs' metrics."""
        ...


@dataclass(frozen=True)
class RunPlan:
    """One run in one folder (``snftune train``): refused when the folder holds a run and
    ``resume`` is not asked for; with ``resume``, continued when its settings match."""

    resolved: ResolvedRun
    resume: bool = False
    seeds: tuple[int, ...] | None = None

    def check(self) -> ResolvedRun:
        return self.resolved

    def state(self, folder: Path) -> str:
        return run_state(folder)

    def differences(self, folder: Path) -> list[str]:
        if not (folder / CONFIG_NAME).is_file():
            return []
        return self.resolved.settings.differences(read_run_config(folder))

    def run(self, folder: Path, dist: DistInfo | None = None, log: Callable[[str], None] = print) -> list[Metrics]:
        """The run's metrics; none when ``folder`` held this run finished (said in ``log``)."""
        metrics = train_run(self.resolved, folder, self.resume, dist)
        if metrics is None:
            log(f"{folder} already finished; nothing to do")
            return []
        return [metrics]


def _awaits_final_evaluation(folder: Path) -> bool:
    """Training finished but the reported split (test) was not read yet: ``metrics.json`` holds
    the training's figures, whose split differs from the one the run reports."""
    try:
        metrics = json.loads((folder / METRICS_NAME).read_text())
    except (OSError, ValueError):
        return False
    settings = metrics.get("settings") if isinstance(metrics, dict) else None  # damage is reported by read_metrics
    reported = settings.get("reported_split") if isinstance(settings, dict) else None
    return reported is not None and metrics.get("eval_split") != reported


def run_state(folder: Path) -> str:
    """``"done"`` (metrics written), ``"resume"`` (a checkpoint waits, or training ended and the
    final evaluation is left) or ``"todo"``."""
    if (folder / METRICS_NAME).is_file():
        return "resume" if _awaits_final_evaluation(folder) else "done"
    if (folder / CHECKPOINT_NAME).is_file():
        return "resume"
    return "todo"


def write_run_config(out: Path, resolved: ResolvedRun) -> None:
    """``config.yaml``: the resolved settings, the method config and the task, as plain data."""
    from . import __version__

    task = resolved.task
    record = {
        **resolved.settings.to_dict(),
        "method_config": {"method": resolved.method_config.method, **resolved.method_config.to_dict()},
        "task": {
            "name": task.name,
            "num_classes": task.num_classes,
            "protocol": task.protocol,
            "group": task.group,
            "class_subset": list(task.class_subset) if task.class_subset else None,
        },
        "snftune_version": __version__,
    }
    atomic_write_text(out / CONFIG_NAME, yaml.safe_dump(record, sort_keys=False))


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The ``config.yaml`` of a run folder."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise SettingsError(f"{run_dir} is not a run folder: {CONFIG_NAME} is missing")
    record = load_yaml(path, error=SettingsError)
    if not isinstance(record, dict) or not isinstance(record.get("train"), dict):
        raise SettingsError(f"{path} is not a run's config.yaml (no 'train' settings); the run folder is damaged")
    for key in ("model", "method", "data"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise SettingsError(
                f"{path} is damaged ('{key}' is {record.get(key)!r}, expected a name); restore the run's "
                "config.yaml, or start the run again in another --out"
            )
    return record


def settings_from_record(record: dict[str, Any]) -> RunSpec:
    """The :class:`RunSpec` of a ``config.yaml`` record (:meth:`RunSpec.from_record`)."""
    return RunSpec.from_record(record)


def settings_differences(recorded: dict[str, Any], spec: RunSpec) -> list[str]:
    """:meth:`RunSpec.differences`, for callers that hold the record first."""
    return spec.differences(recorded)


def recorded_values(out: Path) -> dict[str, Any]:
    """A run folder's settings as values for :func:`resolve_settings`, so that ``--resume --out
    DIR`` alone continues the run as it was started (given values still override them)."""
    read_run_config(out)  # a damaged config.yaml is named as such, not as a missing option
    values = load_settings_file(Path(out) / CONFIG_NAME)
    values.pop("num_classes", None)  # derived from the task, and checked against it again
    return values


def check_device(device: str | None) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` (when CUDA is there), ``mps`` (when available); None = automatic."""
    if device is None or device == "cpu":
        return
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise SettingsError(f"--device {device}: no CUDA device is available here; use --device cpu")
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            raise SettingsError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return
    if device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SettingsError("--device mps: Apple's MPS is not available here; use --device cpu")
        return
    raise SettingsError(f"--device {device!r} is not a device snftune runs on; use cpu, cuda, cuda:N or mps")


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files that a killed writer left behind (atomic writes name them ``.<name>.*.tmp``)."""
    for leftover in out.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def train_run(resolved: ResolvedRun, out: Path, resume: bool, dist: DistInfo | None = None) -> Metrics | None:
    """Builds the model and data, writes ``config.yaml`` and trains in ``out``, holding the
    folder's lock.

    ``resume``: continue the run whose checkpoint is in ``out``; refused (before anything is
    touched) when no checkpoint is there or when a defining setting differs from the folder's
    ``config.yaml``. Returns the metrics, or None when ``out`` holds that run finished.
    Without ``resume``, a folder with a finished or unfinished run is refused. Nothing is
    written before the model and the data have been built.
    """
    dist = dist or DistInfo()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SettingsError(f"--out {out} is a file, not a folder; choose a folder for the run")
    check_device(resolved.settings.device)
    autocast = autocast_name(amp_dtype(resolved.settings.train, dist.device))  # refused here, before any write
    if _check_folder(resolved, out, resume) == "done":
        return None
    if resolved.settings.threads is not None:
        torch.set_num_threads(resolved.settings.threads)
    settings, task, method_config = resolved.settings, resolved.task, resolved.method_config
    model = build_model(settings)
    if _awaits_final_evaluation(out):
        load_tuned(model, out / TUNED_NAME)
        with run_lock(out) if dist.is_main else contextlib.nullcontext():
            return _final_evaluation(model, settings, task, out, dist)
    train_set, monitor_set = build_datasets(model, settings, task)
    monitor = monitored_split(settings, task)
    with run_lock(out) if dist.is_main else contextlib.nullcontext():
        state = _check_folder(resolved, out, resume)  # again: another writer may have finished meanwhile
        if state == "done":
            return None
        provenance = run_provenance(
            model,
            settings.pretrained,
            input_config(model, settings),
            task,
            [settings.train_split, settings.eval_split],
            {"method": method_config.method, **method_config.to_dict()},
            settings.train.to_dict(),
            dist.device,
            autocast=autocast,
        )
        if dist.is_main:
            _remove_stale_temporaries(out)
            write_run_config(out, resolved)
            atomic_write_json(out / PROVENANCE_NAME, provenance)
        record = {
            "model": settings.model,
            "pretrained": settings.pretrained,
            "method": settings.method,
            "method_config": {"method": method_config.method, **method_config.to_dict()},
            "data": task.name,
            "train_split": settings.train_split,
            "reported_split": settings.eval_split,
            "protocol": task.protocol,
            "class_subset": "restricted to the task's classes" if task.class_subset else None,
            "drop_path": settings.drop_path,
            "provenance": provenance,
        }
        # Linear probing on features computed once; --no-feature-cache trains end to end.
        trainer = train_head_on_features if probes_cached_features(model, settings, train_set) else train
        metrics = trainer(
            model,
            train_set,
            settings.train,
            out,
            eval_set=monitor_set,
            eval_split=monitor or "none",
            class_subset=task.class_subset,
            num_classes=task.num_classes,
            dist=dist,
            resume=state == "resume",
            record=record,
        )
        if settings.eval_split is None or settings.eval_split == monitor:
            return metrics
        return _final_evaluation(model, settings, task, out, dist)


def _final_evaluation(model: torch.nn.Module, settings: RunSpec, task: Task, out: Path, dist: DistInfo) -> Metrics:
    """The reported split (test) read once, with the trained weights: its top-1 becomes the
    run's headline in ``metrics.json``, beside the figures of the split watched in training."""
    metrics = json.loads((out / METRICS_NAME).read_text())
    split = settings.eval_split
    dataset = build_dataset(model, settings, task, split, train=False)
    result = evaluate(
        model.to(dist.device),
        dataset,
        batch_size=settings.train.eval_batch_size or settings.train.batch_size,
        device=dist.device,
        workers=settings.train.workers,
        class_subset=task.class_subset,
        dtype=amp_dtype(settings.train, dist.device),
        dist=dist,
    )
    monitored = metrics.get("eval_split")
    epochs = settings.train.epochs
    metrics.update(
        top1=result["top1"],
        eval_split=split,
        monitored_on=monitored,
        final={"epoch": epochs, "top1": result["top1"], "loss": result["loss"]},
        reported="final",
        reported_as=f"top-1 on '{split}' after the final epoch ({epochs}), read once at the end"
        + (f"; training watched '{monitored}'" if monitored != "none" else ""),
    )
    metrics.pop("best", None)
    if dist.is_main:
        atomic_write_json(out / METRICS_NAME, metrics)
    return metrics


def _check_folder(resolved: ResolvedRun, out: Path, resume: bool) -> str:
    """The folder's :func:`run_state`, after refusing what the request cannot do with it."""
    state = run_state(out)
    if not resume and state != "todo":
        found = METRICS_NAME if state == "done" else CHECKPOINT_NAME
        what = "a finished" if state == "done" else "an unfinished"
        hint = "choose another --out" if state == "done" else "pass --resume to continue it"
        raise SettingsError(f"{out} already holds {what} run ({found}); {hint}")
    if resume:
        if state == "todo":
            raise SettingsError(f"--resume: {out} holds no checkpoint to continue; drop --resume to start the run")
        if (out / CONFIG_NAME).is_file():
            differences = resolved.settings.differences(read_run_config(out))
            if differences:
                raise SettingsError(
                    f"--resume: {out} was run with other settings ({'; '.join(differences)}); resume with the "
                    "folder's settings (snftune train --resume --out DIR alone), or use another --out"
                )
    return state


def read_tuned_source(source: str | os.PathLike) -> tuple[Path, RunSpec | None]:
    """A run folder or a bare tuned file: (the tuned file, the run's settings or None for a file)."""
    path = Path(source)
    if path.is_dir():
        settings = settings_from_record(read_run_config(path))
        tuned = path / TUNED_NAME
        if not tuned.is_file():
            raise SettingsError(
                f"{path} has no {TUNED_NAME}: the run has not finished; continue it with "
                f"snftune train --resume --out {path}"
            )
        return tuned, settings
    if path.is_file():
        read_tuned_metadata(path)
        return path, None
    raise SettingsError(f"{path} does not exist; pass a run folder or a tuned .safetensors file")


def evaluation_settings(
    source: str | os.PathLike, *, data: str | None = None, model: str | None = None, **given: Any
) -> tuple[RunSpec, Path]:
    """The settings that evaluate ``source`` (a run folder, or a tuned file with ``model`` and
    ``data``): the run's own, with what is given replacing them (``data`` resets the splits and
    data options; ``data_dir``, ``pretrained``, ``img_size``, ``model_kwargs``, ``data_options``)."""
    tuned, settings = read_tuned_source(source)
    if settings is None:
        if not (model and data):
            raise SettingsError(
                f"{source} is a tuned file: pass --model and --data (the backbone and task it was tuned on)"
            )
        settings = RunSpec(model=model, method="(from file)", data=data, train=TrainConfig())
    if data and data != settings.data:
        settings = dataclasses.replace(settings, data=data, eval_split=None, data_options={})
    if model is not None:
        settings = dataclasses.replace(settings, model=model)
    return dataclasses.replace(settings, **{k: v for k, v in given.items() if v is not None}), tuned


def evaluate_tuned(
    settings: RunSpec,
    tuned: Path,
    split: str | None = None,
    batch_size: int = 256,
    workers: int = 2,
    device: str | None = None,
) -> dict[str, Any]:
    """Top-1 of a tuned-weights file on ``split`` of the settings' task (default: its eval split)."""
    check_device(device)
    TrainConfig.rules()["batch_size"].check("--batch-size", batch_size, SettingsError)
    TrainConfig.rules()["workers"].check("--workers", workers, SettingsError)
    task = resolve_task(settings.data, settings.data_dir, **(settings.data_options or {}))
    if settings.num_classes is not None and settings.num_classes != task.num_classes:
        raise SettingsError(
            f"the run was tuned for {settings.num_classes} classes, {task.name} has {task.num_classes}; "
            "evaluate on a task with the same classes"
        )
    settings = dataclasses.replace(settings, num_classes=task.num_classes)
    split = split or settings.eval_split or task.eval_split
    if split not in task.splits:
        raise SettingsError(f"--split {split}: {task.name} has the splits {', '.join(task.splits)}")
    model = build_backbone(settings, drop_path=0.0)
    load_tuned(model, tuned)
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(chosen)
    dataset = task.dataset(split, transform=build_transform(task.protocol, input_config(model, settings), train=False))
    result = evaluate(
        model,
        dataset,
        batch_size=batch_size,
        device=chosen,
        workers=workers,
        class_subset=task.class_subset,
        dtype=amp_dtype(settings.train, chosen),
    )
    return {
        **result,
        "data": task.name,
        "split": split,
        "class_subset": len(task.class_subset) if task.class_subset else None,
        "tuned": str(tuned),
        "model": settings.model,
    }
