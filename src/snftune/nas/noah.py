"""NOAH's pipeline: train the supernet, search a subnet under a parameter limit, retrain it.

Each phase has its own folder and finished phases are skipped on a rerun (an interrupted one
resumes; one made with other settings is refused, naming the difference)::

    <out>/supernet/          run folder: the supernet trained on the task's tuning split
                             (VTAB-1k: train800, evaluated on val200 with its largest subnet)
    <out>/search/state.json  the search after every generation (resumable)
    <out>/search/result.json the best subnet, its validation top-1 (supernet weights), every generation
    <out>/search/subnet.yaml the best subnet in NOAH's format (--method noah --method-options subnet=...)
    <out>/                   run folder: the subnet retrained from scratch on the final split
                             (VTAB-1k: train800val200, top-1 on test); <out>/seed<s>/ with several seeds

As NOAH's data: the supernet never sees the validation split, the search scores on it only,
and the test split is opened by the retrain alone. Settings: the task's protocol, then NOAH's
supernet recipe (:data:`SUPERNET_RECIPE`, supernet phase only), then the values given (both
training phases), then the ``supernet`` / ``retrain`` overrides of :class:`NoahSettings`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_json
from ..backbones import anatomy
from ..backbones.embedded import RANDOM, is_embedded, sha256_of
from ..data import build_transform, resolve_task
from ..engine import TUNED_NAME, DistInfo, Metrics, TrainConfig, evaluate, read_metrics, run_lock
from ..engine.trainer import amp_dtype
from ..methods.noah import NoahSupernetConfig, set_active_subnet, supernet_space
from ..methods.noah_subnets import Subnet, SubnetSpace, subnet_parameters, write_noah_subnet
from ..methods.registry import resolve_config
from ..runs import (
    CONFIG_NAME,
    PicklesFields,
    ResolvedRun,
    RunRequest,
    RunSpec,
    SettingsError,
    build_backbone,
    final_folders,
    input_config,
    plan_state,
    read_run_config,
    run_state,
    train_run,
)
from ..selection import SearchSpace
from ..tuning import apply, load_tuned
from .evolution import EvolutionSettings, evolve, read_search_file, read_search_result

__all__ = [
    "RESULT_NAME",
    "SEARCH_DIR",
    "SUBNET_NAME",
    "SUPERNET_DIR",
    "SUPERNET_RECIPE",
    "SupernetScorer",
    "NoahCheck",
    "NoahPlan",
    "NoahSettings",
    "check_plan",
    "load_supernet",
    "noah_differences",
    "parse_count",
    "plan_noah",
    "run_noah",
]

SUPERNET_DIR, SEARCH_DIR = "supernet", "search"
STATE_NAME, RESULT_NAME, SUBNET_NAME = "state.json", "result.json", "subnet.yaml"

SUPERNET_RECIPE = RunRequest(
    {
        "epochs": 500,
        "warmup_epochs": 10,
        "lr": 5e-4,
        "weight_decay": 1e-4,
        "batch_size": 64,
        "eval_every": 10,
    }
)
"""NOAH's VTAB-1k supernet (configs/NOAH/VTAB/supernet: 500 epochs, lr 5e-4, weight decay 1e-4,
batch 64; validation every 10 epochs; the engine's 10 warm-up epochs, scaled when the values
given change the length). The retrain is NOAH's VTAB retrain recipe, which is
the VTAB protocol's own (100 epochs, lr 1e-3, weight decay 1e-4): it needs no recipe here."""

PHASE_KEYS = (*TrainConfig.field_names(), "drop_path")
"""What the ``supernet`` and ``retrain`` overrides may set: the training numbers of a run."""


def parse_count(value: Any, name: str = "param_limit") -> int:
    """A parameter count: an int, or a string with a suffix as NOAH's figures are written
    (``"0.64M"``, ``"640K"``, ``"640000"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmM]?)\s*", str(value))
        if not match:
            raise SettingsError(f"{name} must be a parameter count such as 0.64M, 640K or 640000, got {value!r}")
        number, suffix = float(match.group(1)), match.group(2).upper()
        if not suffix and number != int(number):
            raise SettingsError(f"{name} {value!r}: write millions with M (0.64M) or thousands with K (640K)")
        count = round(number * {"": 1, "K": 1e3, "M": 1e6}[suffix])
    if count < 1:
        raise SettingsError(f"{name} must be at least 1 parameter, got {value!r}")
    return int(count)


@dataclass(frozen=True)
class NoahSettings:
    """NOAH's own settings beside a run's: the search, the supernet method, and per-phase
    training overrides. :meth:`from_options` reads them from one flat mapping (a suite's method
    options, or the command line): search keys (``param_limit``, ``population``, ...), supernet
    keys (``sizes``, ``depths``, ``dropout``), and ``supernet`` / ``retrain`` mappings."""

    evolution: EvolutionSettings = field(default_factory=EvolutionSettings)
    supernet_method: NoahSupernetConfig = field(default_factory=NoahSupernetConfig)
    supernet: RunRequest = field(default_factory=RunRequest)
    retrain: RunRequest = field(default_factory=RunRequest)

    @classmethod
    def from_options(cls, options: dict[str, Any], seed: int = 0) -> NoahSettings:
        search_keys = [f.name for f in dataclasses.fields(EvolutionSettings) if f.name != "seed"]
        method_keys = [f.name for f in dataclasses.fields(NoahSupernetConfig) if f.name != "sample"]
        known = [*search_keys, *method_keys, "supernet", "retrain"]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise SettingsError(
                f"NOAH has no setting {', '.join(map(repr, unknown))}; its settings: {', '.join(known)}"
            )
        search = {k: options[k] for k in search_keys if k in options}
        if "param_limit" in search:
            search["param_limit"] = parse_count(search["param_limit"])
        phases = {}
        for phase in ("supernet", "retrain"):
            overrides = dict(options.get(phase) or {})
            wrong = sorted(set(overrides) - set(PHASE_KEYS))
            if wrong:
                raise SettingsError(
                    f"NOAH's {phase} overrides: {', '.join(map(repr, wrong))} cannot be set per phase; "
                    f"known: {', '.join(PHASE_KEYS)}"
                )
            phases[phase] = RunRequest(overrides)
        method = resolve_config("noah-supernet", **{k: options[k] for k in method_keys if k in options})
        return cls(EvolutionSettings(**search, seed=seed), method, phases["supernet"], phases["retrain"])

    def supernet_method_options(self) -> dict[str, Any]:
        """The supernet's method options as plain data (lists, for config.yaml)."""
        values = self.supernet_method.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


@dataclass(frozen=True)
class NoahPlan(PicklesFields):
    """NOAH's pipeline in one folder (a :class:`snftune.runs.Plan`): the run as asked for, shared
    by its phases (method ``noah``; each phase's request derives from it: :func:`supernet_request`,
    :func:`retrain_request`), seeds for the retrain, and NOAH's settings. Built checked by
    :func:`plan_noah`; :meth:`state` needs only the seeds (``snftune bench --status``)."""

    request: RunRequest
    seeds: tuple[int, ...] | None = None
    noah: NoahSettings = field(default_factory=NoahSettings)

    def state(self, folder: Path) -> str:
        """``done`` when every retrain finished, ``resume`` when any phase started, else ``todo``."""
        return plan_state(folder, self.seeds, SUPERNET_DIR)

    @functools.cached_property
    def checked(self) -> NoahCheck:
        """:func:`check_plan` of this plan, done once (its runs resolved once)."""
        return check_plan(self)

    def check(self) -> ResolvedRun:
        return self.checked.final

    def differences(self, folder: Path) -> list[str]:
        return noah_differences(folder, self)

    def run(
        self, folder: Path, dist: DistInfo | None = None, log: Callable[[str], None] = print
    ) -> list[Metrics]:
        return run_noah(self, folder, dist, log)


@dataclass(frozen=True)
class NoahCheck:
    """What :func:`check_plan` found: the final run, the tuning splits, the subnet space and sizes,
    and the supernet's run (resolved)."""

    final: ResolvedRun
    tuning_splits: tuple[str, str]
    space: SubnetSpace
    embed_dim: int
    smallest: int
    largest: int
    supernet: RunRequest


def plan_noah(
    request: RunRequest, seeds: tuple[int, ...] | None = None, space: SearchSpace | None = None
) -> NoahPlan:
    """A checked plan from a run request whose ``method_options`` hold NOAH's settings (``space``,
    a hyper-parameter search, is refused: NOAH's phases have their own recipe)."""
    if space is not None:
        raise SettingsError(
            "NOAH's phases have their own recipe: give no hyper-parameter search space for method noah "
            "(set the supernet/retrain settings in its options instead)"
        )
    options = dict(request.get("method_options") or {})
    seed = seeds[0] if seeds else int(request.get("seed") or 0)
    base = request.without("method", "method_options", "out").replacing(method="noah")
    plan = NoahPlan(base, seeds, NoahSettings.from_options(options, seed))
    plan.checked  # noqa: B018 (every setting checked now, before anything trains)
    return plan


def supernet_request(plan: NoahPlan, tuning_splits: tuple[str, str]) -> RunRequest:
    """The supernet run: NOAH's recipe under the settings given, on the tuning pair."""
    fixed = {
        "seed": plan.noah.evolution.seed,
        "method": "noah-supernet",
        "method_options": plan.noah.supernet_method_options(),
        "train_split": tuning_splits[0],
        "eval_split": tuning_splits[1],
    }
    base = plan.request.without("method", "method_options", "train_split", "eval_split")
    phase = plan.noah.supernet
    request = SUPERNET_RECIPE.with_overrides(base.replacing(seed=fixed["seed"]), phase)
    return request.replacing(**{k: v for k, v in fixed.items() if k != "seed" or phase.get("seed") is None})


def retrain_request(plan: NoahPlan, subnet: Subnet | None, seed: int | None) -> RunRequest:
    """A retrain run of ``subnet`` (method ``noah`` with its sizes) on the final split."""
    options = {**(subnet.to_dict() if subnet else {}), "dropout": plan.noah.supernet_method.dropout}
    base = plan.request.without("method", "method_options").with_overrides(plan.noah.retrain)
    return base.replacing(method="noah", method_options=options, **({} if seed is None else {"seed": seed}))


def check_plan(plan: NoahPlan) -> NoahCheck:
    """Every setting checked before anything trains: the runs' settings, a validation split to
    search on, a ViT (the supernet is built on the meta device), and a parameter limit that the
    smallest subnet fits."""
    final = retrain_request(plan, None, None).resolved
    task = final.task
    if task.tuning_splits is None:
        raise SettingsError(
            f"{task.name} has no validation split (splits: {', '.join(task.splits)}): NOAH trains its supernet on "
            "the training split and searches on a validation split"
        )
    supernet_run = supernet_request(plan, task.tuning_splits)
    supernet = supernet_run.resolved
    settings = dataclasses.replace(
        supernet.settings, pretrained=RANDOM if is_embedded(supernet.settings.model) else None
    )
    with torch.device("meta"):
        model = apply(build_backbone(settings, drop_path=0.0), supernet.method_config)
    space, embed_dim = supernet_space(model), anatomy(model).embed_dim
    smallest, largest = (subnet_parameters(s, embed_dim) for s in (space.smallest(), space.largest()))
    limit = plan.noah.evolution.param_limit
    if smallest > limit:
        raise SettingsError(
            f"param_limit {limit:,} is below the smallest subnet of this search space on {settings.model} "
            f"({smallest:,} parameters: size {min(space.sizes)} in the first {min(space.depths)} blocks for each "
            "module); raise the limit, or search smaller sizes/depths"
        )
    return NoahCheck(final, task.tuning_splits, space, embed_dim, smallest, largest, supernet_run)


# ---------------------------------------------------------------- phases


def _train_phase(request: RunRequest, folder: Path, name: str, log: Callable[[str], None]) -> Metrics:
    """Trains one phase's run folder, resumes it, or reuses it when it finished with these settings."""
    resolved = request.resolved
    state = run_state(folder)
    if state == "done":
        differences = resolved.settings.differences(read_run_config(folder))
        if differences:
            raise SettingsError(
                f"{folder} holds a {name} run made with other settings ({'; '.join(differences[:4])}); "
                "use another --out"
            )
        log(f"{name}: finished, skipped ({folder})")
    else:
        log(f"{name}: {'resuming' if state == 'resume' else 'training'} in {folder}")
        train_run(resolved, folder, state == "resume")
    return read_metrics(folder)


@dataclass
class SupernetScorer:
    """A trained supernet ready to score subnets: ``fitness`` is the top-1 (%) on the
    supernet run's evaluation split (its validation split) with the supernet's weights."""

    model: torch.nn.Module
    space: SubnetSpace
    embed_dim: int
    split: str
    task_name: str
    model_name: str
    fingerprint: str
    top1_of_active: Callable[[], float]

    def count(self, subnet: Subnet) -> int:
        return subnet_parameters(subnet, self.embed_dim)

    def fitness(self, subnet: Subnet) -> float:
        set_active_subnet(self.model, subnet)
        return self.top1_of_active()


def load_supernet(run: Path) -> SupernetScorer:
    """The supernet of a finished run folder, on its device, with its validation images
    decoded and transformed once (a search evaluates hundreds of subnets on them)."""
    settings = RunSpec.from_record(read_run_config(run))
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_tuned(build_backbone(settings, drop_path=0.0), run / TUNED_NAME).to(device)
    task = resolve_task(settings.data, settings.data_dir, **(settings.data_options or {}))
    transform = build_transform(task.protocol, input_config(model, settings), train=False)
    split = task.dataset(settings.eval_split, transform=transform)
    images = [split[i] for i in range(len(split))]
    train = settings.train

    def top1() -> float:
        batch, dtype = train.eval_batch_size or train.batch_size, amp_dtype(train, device)
        scores = evaluate(model, images, batch_size=batch, device=device, class_subset=task.class_subset, dtype=dtype)
        return scores["top1"]

    return SupernetScorer(
        model=model,
        space=supernet_space(model),
        embed_dim=anatomy(model).embed_dim,
        split=settings.eval_split,
        task_name=task.name,
        model_name=settings.model,
        fingerprint=sha256_of(run / TUNED_NAME),
        top1_of_active=top1,
    )


def _search_phase(plan: NoahPlan, folder: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The evolutionary search with the supernet's weights, scored on its validation split."""
    out, supernet = folder / SEARCH_DIR, folder / SUPERNET_DIR
    evolution = plan.noah.evolution
    if (out / RESULT_NAME).is_file():
        result = read_search_result(out / RESULT_NAME)
        if result["settings"] != evolution.to_dict() or result["supernet_sha256"] != sha256_of(supernet / TUNED_NAME):
            raise SettingsError(f"{out} holds a search with other settings or another supernet; use another --out")
        log(f"search: finished, skipped ({out})")
        return result
    scorer = load_supernet(supernet)
    log(
        f"search: {evolution.generations} generations of {evolution.population} on {scorer.split}, "
        f"limit {evolution.param_limit:,} parameters ({out})"
    )
    with run_lock(out):
        result = evolve(
            scorer.space,
            scorer.count,
            scorer.fitness,
            evolution,
            out / STATE_NAME,
            fingerprint=scorer.fingerprint,
            log=log,
        )
        result.update(selected_on=scorer.split, supernet=str(supernet), supernet_sha256=scorer.fingerprint)
        best = result["best"]
        write_noah_subnet(
            out / SUBNET_NAME,
            Subnet.from_dict(best["subnet"]),
            f"NOAH subnet found by snftune search noah on {scorer.task_name} ({scorer.model_name}): "
            f"{best['parameters']:,} tuned parameters (limit {evolution.param_limit:,}), {scorer.split} top-1 "
            f"{best['top1']:.2f}% with the supernet's weights",
        )
        atomic_write_json(out / RESULT_NAME, result)
    return result


def run_noah(
    plan: NoahPlan, folder: Path, dist: DistInfo | None = None, log: Callable[[str], None] = print
) -> list[Metrics]:
    """Supernet, search, retrain (one per seed) in ``folder``; returns the retrain metrics."""
    if dist is not None and dist.enabled:
        raise SettingsError(
            "NOAH's pipeline runs in one process (its supernet draws one subnet per step); drop torchrun"
        )
    check = plan.checked
    log(
        f"NOAH on {check.final.task.name}: supernet {check.largest:,} tuned parameters; subnets from "
        f"{check.smallest:,}, searched under {plan.noah.evolution.param_limit:,}"
    )
    folder = Path(folder)
    _train_phase(check.supernet, folder / SUPERNET_DIR, "supernet", log)
    result = _search_phase(plan, folder, log)
    best = Subnet.from_dict(result["best"]["subnet"])
    log(f"search: best {best.label()} ({result['best']['parameters']:,} parameters)")
    seeds = plan.seeds or (None,)
    runs = final_folders(folder, plan.seeds)
    return [
        _train_phase(retrain_request(plan, best, seed), run, "retrain", log)
        for seed, run in zip(seeds, runs, strict=True)
    ]


def noah_differences(folder: Path, plan: NoahPlan) -> list[str]:
    """How the phases already in ``folder`` differ from what ``plan`` asks for (empty: reusable)."""
    check = plan.checked
    found = []
    supernet = folder / SUPERNET_DIR
    if (supernet / CONFIG_NAME).is_file():
        new = check.supernet.spec
        found += [f"supernet: {d}" for d in new.differences(read_run_config(supernet))]
    for name in (RESULT_NAME, STATE_NAME):
        path = folder / SEARCH_DIR / name
        if path.is_file():
            old, new = read_search_file(path, {"settings": dict})["settings"], plan.noah.evolution.to_dict()
            found += [f"search: {key}: {old.get(key)!r} -> {new[key]!r}" for key in new if old.get(key) != new[key]]
            break
    result = folder / SEARCH_DIR / RESULT_NAME
    if result.is_file():
        best = Subnet.from_dict(read_search_result(result)["best"]["subnet"])
        for seed, run in zip(plan.seeds or (None,), final_folders(folder, plan.seeds), strict=True):
            if (run / CONFIG_NAME).is_file():
                new = retrain_request(plan, best, seed).spec
                found += [f"retrain: {d}" for d in new.differences(read_run_config(run))]
    return found
