"""Benchmark suites as plain data: which backbones, methods and tasks, with which settings.

A suite is a YAML file (the paper's suites ship in ``snftune/bench/suites/``)::

    name: vtab1k
    description: ...
    model: vit_base_patch16_224          # or models: [{label, model, pretrained, ...}, ...]
    pretrained: orig_in21k
    train: {}                            # overrides of the protocol's training settings
    methods: [linear, snf-shallow, {label: snf-j3, method: snf, options: {planar_steps: 3}}]
    groups: [Natural, Specialized, Structured]
    tasks:
      - {data: vtab1k/cifar, column: Cifar100, group: Natural}
      - {data: dg/imagenet-v2, column: -V2, train_from: dg/imagenet}   # evaluate another cell's weights
      - grid: {data: "fewshot/{dataset}/{shots}shot/seed{seed}", column: "{dataset}/{shots}",
               group: "{dataset}", dataset: [food101, ...], shots: [1, 2], seed: [0, 1, 2]}

A cell is (model, method, task); its run folder is ``<out>/<row>/<task>``. Cells that share
a column (e.g. three seeds) are averaged in the table.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SnftuneError
from ..inputs import load_yaml, read_text
from ..suggest import did_you_mean

if TYPE_CHECKING:  # imported where used: suite_names() serves `snftune bench --help`, which must not load torch
    from ..selection import SearchSpace

__all__ = ["Suite", "SuiteError", "SuiteMethod", "SuiteModel", "SuiteTask", "Cell", "load_suite", "suite_names"]

SUITE_KEYS = {"name", "description", "model", "pretrained", "model_kwargs", "img_size", "models", "train"}
SUITE_KEYS |= {"methods", "groups", "tasks", "data_options", "table", "search", "seeds"}
TASK_KEYS = {"data", "column", "group", "train_from", "meta"}


class SuiteError(SnftuneError, ValueError):
    """A suite file that is malformed, or a selection that matches nothing."""


@dataclass(frozen=True)
class SuiteMethod:
    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] | None = None
    """This method's search space (replaces the suite's ``search``); ``{}`` for none."""


@dataclass(frozen=True)
class SuiteModel:
    label: str
    model: str
    pretrained: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = None


@dataclass(frozen=True)
class SuiteTask:
    data: str
    column: str
    group: str | None = None
    train_from: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    model: SuiteModel
    method: SuiteMethod
    task: SuiteTask
    row: str

    def folder(self, out: Path) -> Path:
        return out / slug(self.row) / slug(self.task.data)


@dataclass
class Suite:
    name: str
    description: str
    models: list[SuiteModel]
    methods: list[SuiteMethod]
    tasks: list[SuiteTask]
    groups: list[str] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    table: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    """Hyper-parameters chosen on validation for every method (snftune.selection), e.g. {lr: [1e-3, 5e-3]},
    and how trials are judged (``select_seeds: 3``, ``select_folds: 5``, ``unstable_range: 10``)."""
    seeds: list[int] | None = None
    """Final runs per cell, one per seed (None: one run with the settings' seed)."""

    def search_space(self, method: SuiteMethod) -> SearchSpace | None:
        """The method's own search space, else the suite's; None when there is nothing to search.
        How trials are judged (``select_seeds``, ``select_folds``, ``unstable_range``) may sit in
        the suite's ``search:`` (for every method) and in a method's own (which wins)."""
        from ..runs import PLAN_KEYS
        from ..selection import SearchSpace

        space = self.search if method.search is None else method.search
        if not space or (method.search is None and set(space) <= set(PLAN_KEYS)):
            return None
        suite_options = {key: value for key, value in self.search.items() if key in PLAN_KEYS}
        return SearchSpace.parse(space, f"suite {self.name}, search of {method.label}", options=suite_options)

    def with_search(self, search: dict[str, Any]) -> Suite:
        """The suite with one search space for every method (checked here); how the suite's
        search judges trials (``select_seeds``, ...) is kept."""
        from ..runs import PLAN_KEYS

        kept = {key: value for key, value in self.search.items() if key in PLAN_KEYS}
        suite = dataclasses.replace(
            self, search={**kept, **search}, methods=[dataclasses.replace(m, search=None) for m in self.methods]
        )
        for method in suite.methods:
            suite.search_space(method)
        return suite

    def row_label(self, model: SuiteModel, method: SuiteMethod) -> str:
        return method.label if len(self.models) == 1 else f"{method.label} @ {model.label}"

    def cells(self) -> list[Cell]:
        """Every (model, method, task), trained tasks before the tasks evaluated from them."""
        ordered = sorted(self.tasks, key=lambda t: t.train_from is not None)
        return [
            Cell(model, method, task, self.row_label(model, method))
            for model, method in itertools.product(self.models, self.methods)
            for task in ordered
        ]

    def source_cell(self, cell: Cell) -> Cell:
        for task in self.tasks:
            if task.data == cell.task.train_from:
                return Cell(cell.model, cell.method, task, cell.row)
        raise SuiteError(f"suite {self.name}: {cell.task.data} trains from {cell.task.train_from}, which is no task")

    def select(
        self, methods: list[str] | None = None, tasks: list[str] | None = None, models: list[str] | None = None
    ) -> Suite:
        """The suite restricted to some methods (labels, or any registered method name), tasks
        (by spec or column) and models (by label or timm name)."""
        chosen_methods = self.methods
        if methods:
            known = {m.label: m for m in self.methods}
            chosen_methods = [known.get(name, SuiteMethod(name, name)) for name in methods]
        chosen_tasks = self.tasks
        if tasks:
            chosen_tasks = [t for t in self.tasks if t.data in tasks or t.column in tasks or _short(t.data) in tasks]
            needed = {t.train_from for t in chosen_tasks if t.train_from}
            chosen_tasks = [t for t in self.tasks if t in chosen_tasks or t.data in needed]
            if not chosen_tasks:
                raise SuiteError(
                    f"--tasks {' '.join(tasks)} matches no task of suite {self.name}; its tasks: "
                    + ", ".join(t.data for t in self.tasks)
                )
        chosen_models = self.models
        if models:
            chosen_models = [m for m in self.models if m.label in models or m.model in models]
            if not chosen_models:
                raise SuiteError(
                    f"--models {' '.join(models)} matches no model of suite {self.name}; its models: "
                    + ", ".join(m.label for m in self.models)
                )
        _check_folders(chosen_models, chosen_methods, chosen_tasks, f"suite {self.name}")
        return dataclasses.replace(self, models=chosen_models, methods=chosen_methods, tasks=chosen_tasks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "models": [vars(m) for m in self.models],
            "methods": [vars(m) for m in self.methods],
            "tasks": [vars(t) for t in self.tasks],
            "groups": self.groups,
            "train": self.train,
            "data_options": self.data_options,
            "search": self.search,
            "seeds": self.seeds,
        }


MAX_FOLDER_NAME = 120
"""File systems refuse names over 255 bytes; a cell's folder also gets ``.previous-N`` suffixes."""


def slug(text: str) -> str:
    """A folder name made of letters, digits, '.', '_' and '-' that never starts with '.': so never
    ``..`` or ``.`` (a cell written outside ``--out``) nor a hidden name such as ``.lock``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).lstrip(".-").rstrip("-") or "_"


def _short(spec: str) -> str:
    return spec.split("/", 1)[-1].split(":", 1)[-1]


def suite_names() -> list[str]:
    """The suites shipped with snftune."""
    folder = resources.files("snftune.bench") / "suites"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_path: str) -> Suite:
    """A shipped suite by name (``vtab1k``, ``generated``, ...) or a suite YAML file."""
    if name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise SuiteError(f"suite file {path} does not exist")
        text, source = read_text(path, SuiteError, "suite file"), str(path)
    else:
        if name_or_path not in suite_names():
            hint = did_you_mean(name_or_path, suite_names())
            raise SuiteError(f"unknown suite '{name_or_path}'{hint}; known: {', '.join(suite_names())}, or a YAML file")
        text = (resources.files("snftune.bench") / "suites" / f"{name_or_path}.yaml").read_text()
        source = f"suite {name_or_path}"
    return parse_suite(load_yaml(text=text, source=source, error=SuiteError), source)


def parse_suite(data: Any, source: str = "suite") -> Suite:
    if not isinstance(data, dict):
        raise SuiteError(f"{source} must be a mapping with 'tasks' and 'methods'")
    unknown = sorted(set(data) - SUITE_KEYS)
    if unknown:
        raise SuiteError(f"{source}: unknown key(s) {unknown}; known: {sorted(SUITE_KEYS)}")
    for key in ("models", "methods", "tasks", "groups"):
        if key in data and not isinstance(data[key], list):
            raise SuiteError(f"{source}: '{key}' must be a list (e.g. {key}: [a, b]), got {data[key]!r}")
    for key in ("train", "data_options", "model_kwargs", "table"):
        if key in data and data[key] is not None and not isinstance(data[key], dict):
            raise SuiteError(f"{source}: '{key}' must be a mapping (e.g. {key}: {{epochs: 10}}), got {data[key]!r}")
    if "models" in data:
        models = [_model(entry, source) for entry in data["models"]]
    elif "model" in data:
        models = [
            SuiteModel(
                data["model"],
                data["model"],
                data.get("pretrained"),
                data.get("model_kwargs") or {},
                data.get("img_size"),
            )
        ]
    else:
        raise SuiteError(f"{source} names no backbone: add 'model:' or 'models:'")
    methods = [_method(entry, source) for entry in data.get("methods") or []]
    tasks = [task for entry in data.get("tasks") or [] for task in _tasks(entry, source)]
    if not tasks:
        raise SuiteError(f"{source} lists no tasks")
    for task in tasks:
        if task.train_from and task.train_from not in {t.data for t in tasks}:
            raise SuiteError(f"{source}: {task.data} trains from {task.train_from}, which is not one of its tasks")
    _check_folders(models, methods, tasks, source)
    seeds = data.get("seeds")
    if seeds is not None and (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
    ):
        raise SuiteError(f"{source}: 'seeds' must be a list of integers, e.g. seeds: [0, 1, 2]; got {seeds!r}")
    suite = Suite(
        name=str(data.get("name", source)),
        description=str(data.get("description", "")),
        models=models,
        methods=methods,
        tasks=tasks,
        groups=list(data.get("groups") or []),
        train=dict(data.get("train") or {}),
        data_options=dict(data.get("data_options") or {}),
        table=dict(data.get("table") or {}),
        search=dict(data.get("search") or {}),
        seeds=list(seeds) if seeds is not None else None,
    )
    for method in suite.methods:
        suite.search_space(method)  # a bad search space fails now, naming what to fix
    return suite


def _check_folders(models: list[SuiteModel], methods: list[SuiteMethod], tasks: list[SuiteTask], source: str) -> None:
    """Every row and task gets a folder of its own: labels that differ only in characters a folder
    name cannot hold (``a/b``, ``a b``, ``a?b``) would share one and show one run's number twice."""
    rows = (
        [m.label for m in methods] if len(models) == 1 else [f"{m.label} @ {b.label}" for b in models for m in methods]
    )
    for kind, names in (("row", rows), ("task", [t.data for t in tasks])):
        seen: dict[str, str] = {}
        for name in names:
            if (
                not isinstance(name, str)
                or name.startswith(".")
                or len(name) > MAX_FOLDER_NAME
                or slug(name) == "_" != name
            ):
                raise SuiteError(
                    f"{source}: the {kind} {str(name)[:60]!r} cannot name a folder (labels are strings of at most "
                    f"{MAX_FOLDER_NAME} characters, with letters or digits, not starting with '.')"
                )
            folder = slug(name)
            if folder in seen:
                if seen[folder] == name:
                    raise SuiteError(f"{source}: the {kind} '{name}' is listed twice; give each entry its own label")
                raise SuiteError(
                    f"{source}: the {kind}s '{seen[folder]}' and '{name}' would share the folder '{folder}'; "
                    "give them labels that differ in letters, digits, '.', '_' or '-'"
                )
            seen[folder] = name


def _model(entry: Any, source: str) -> SuiteModel:
    if isinstance(entry, str):
        return SuiteModel(entry, entry)
    if not isinstance(entry, dict) or "model" not in entry:
        raise SuiteError(f"{source}: a models entry is a timm name or a mapping with 'model', got {entry!r}")
    unknown = sorted(set(entry) - {"label", "model", "pretrained", "model_kwargs", "img_size"})
    if unknown:
        raise SuiteError(f"{source}: unknown model key(s) {unknown}")
    return SuiteModel(
        entry.get("label", entry["model"]),
        entry["model"],
        entry.get("pretrained"),
        entry.get("model_kwargs") or {},
        entry.get("img_size"),
    )


def _method(entry: Any, source: str) -> SuiteMethod:
    if isinstance(entry, str):
        return SuiteMethod(entry, entry)
    if not isinstance(entry, dict) or "method" not in entry:
        raise SuiteError(f"{source}: a methods entry is a name or a mapping with 'method', got {entry!r}")
    unknown = sorted(set(entry) - {"label", "method", "options", "search"})
    if unknown:
        raise SuiteError(f"{source}: unknown method key(s) {unknown}")
    search = entry.get("search")
    if search is not None and not isinstance(search, dict):
        raise SuiteError(f"{source}: the search of {entry['method']} must be a mapping, got {search!r}")
    return SuiteMethod(entry.get("label", entry["method"]), entry["method"], entry.get("options") or {}, search)


def _tasks(entry: Any, source: str) -> list[SuiteTask]:
    if isinstance(entry, str):
        return [SuiteTask(entry, _short(entry))]
    if not isinstance(entry, dict):
        raise SuiteError(f"{source}: a tasks entry is a spec or a mapping, got {entry!r}")
    if "grid" in entry:
        return _grid(entry["grid"], source)
    unknown = sorted(set(entry) - TASK_KEYS)
    if unknown or "data" not in entry:
        raise SuiteError(f"{source}: a task needs 'data' and takes {sorted(TASK_KEYS)}; got {sorted(entry)}")
    return [
        SuiteTask(
            entry["data"],
            str(entry.get("column", _short(entry["data"]))),
            entry.get("group"),
            entry.get("train_from"),
            dict(entry.get("meta") or {}),
        )
    ]


def _grid(grid: dict[str, Any], source: str) -> list[SuiteTask]:
    """Expands ``{data: "fewshot/{dataset}/{shots}shot/seed{seed}", dataset: [...], ...}``."""
    templates = {k: grid[k] for k in ("data", "column", "group") if k in grid}
    axes = {k: v for k, v in grid.items() if k not in templates}
    if "data" not in templates or not axes or not all(isinstance(v, list) for v in axes.values()):
        raise SuiteError(f"{source}: a grid needs a 'data' template and lists to expand it over")
    tasks = []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values, strict=True))
        try:
            filled = {k: str(v).format(**point) for k, v in templates.items()}
        except KeyError as error:
            raise SuiteError(f"{source}: grid template uses {error}, which is not one of {list(axes)}") from error
        tasks.append(
            SuiteTask(filled["data"], filled.get("column", _short(filled["data"])), filled.get("group"), None, point)
        )
    return tasks
