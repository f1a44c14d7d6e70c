"""NOAH's evolutionary search (its ``evolution.py``, after AutoFormer's), over any fitness.

Generation 0 is a random population; every later generation breeds from the ``top_k`` best
candidates seen so far: ``mutation`` children and ``crossover`` children, then random ones up
to ``population``. A candidate is evaluated once (duplicates are skipped) and only if its
tuned parameters are within ``param_limit``; the result is the best candidate of all
generations (ties: fewer parameters, then the earlier one).

As NOAH's operators: a mutation touches each module type with probability ``mutation_prob``;
it then redraws that module's depth with probability ``depth_prob`` (new blocks get random
sizes, a shallower depth drops blocks), otherwise keeps it; a crossover takes each module
type's sizes from one of two parents. Breeding stops after ten tries per wanted child.

The state is written as JSON after every generation (atomically), and every generation draws
from its own generator seeded by (seed, generation): a search killed at any point and resumed
gives the same candidates and the same result as one that never stopped.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..inputs import DamagedFileError, Rule, field_rules, read_json_record, ruled
from ..methods.noah_subnets import MODULES, Subnet, SubnetSpace
from ..runs import SettingsError

__all__ = ["EvolutionSettings", "STATE_FORMAT", "evolve"]

STATE_FORMAT = "snftune-evolution/1"


@dataclass(frozen=True)
class EvolutionSettings:
    """NOAH's search settings; defaults as its VTAB-1k script (``configs/NOAH/VTAB/search``:
    15 generations, ``evolution.py``'s defaults for the rest)."""

    param_limit: int = ruled(Rule(int, 1), 640_000)
    population: int = ruled(Rule(int, 1), 50)
    generations: int = ruled(Rule(int, 0), 15)
    top_k: int = ruled(Rule(int, 1), 10)
    mutation: int = ruled(Rule(int, 0), 25)
    crossover: int = ruled(Rule(int, 0), 25)
    mutation_prob: float = ruled(Rule(float, 0.0, 1.0), 0.2)
    depth_prob: float = ruled(Rule(float, 0.0, 1.0), 0.4)
    seed: int = ruled(Rule(int, 0, 2**64 - 1), 0)

    def __post_init__(self) -> None:
        for name, rule in field_rules(type(self)).items():
            object.__setattr__(self, name, rule.check(f"search setting {name}", getattr(self, name), SettingsError))
        if self.mutation + self.crossover > self.population:
            raise SettingsError(
                f"mutation ({self.mutation}) + crossover ({self.crossover}) children exceed the population "
                f"({self.population})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Candidate:
    subnet: Subnet
    parameters: int
    top1: float
    generation: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "subnet": self.subnet.to_dict(),
            "parameters": self.parameters,
            "top1": self.top1,
            "generation": self.generation,
        }


STATE_FIELDS = {"format": str, "candidates": list, "over_limit": int, "history": list, "search_s": (int, float)}
CANDIDATE_FIELDS = {"subnet": dict, "parameters": int, "top1": (int, float), "generation": int}


def _redo_search(path: Path) -> str:
    return f"delete {Path(path).parent} to redo the search (the supernet's folder is kept)"


def read_search_file(path: Path, required: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """A search state or result written here, checked for ``required`` fields: one cut short or of
    another shape is one line naming the file and how to redo the search (a DamagedFileError)."""
    return read_json_record(path, required, recover=_redo_search(path))


def subnet_in(data: Any, path: Path) -> Subnet:
    """The subnet recorded in a search file at ``path``; one that does not read as a subnet is damage."""
    try:
        return Subnet.from_dict(data)
    except (KeyError, TypeError, ValueError):
        raise DamagedFileError(f"{path} is damaged (a subnet reads {str(data)[:80]}); {_redo_search(path)}") from None


def _candidate_in(data: Any, path: Path) -> _Candidate:
    if not isinstance(data, dict) or any(
        not isinstance(data.get(key), kind) or isinstance(data.get(key), bool) for key, kind in CANDIDATE_FIELDS.items()
    ):
        raise DamagedFileError(f"{path} is damaged (a candidate reads {str(data)[:80]}); {_redo_search(path)}")
    return _Candidate(subnet_in(data["subnet"], path), data["parameters"], data["top1"], data["generation"])


def read_search_result(path: Path) -> dict[str, Any]:
    """The finished search's ``result.json``, with its best subnet checked to read as one."""
    result = read_search_file(path, {"settings": dict, "supernet_sha256": str, "best": dict})
    best = result["best"]
    if not isinstance(best.get("parameters"), int) or not isinstance(best.get("top1"), int | float):
        raise DamagedFileError(f"{path} is damaged (best reads {str(best)[:80]}); {_redo_search(path)}")
    subnet_in(best.get("subnet"), path)
    return result


def _generation_rng(seed: int, generation: int) -> random.Random:
    digest = hashlib.sha256(f"noah-evolution:{seed}:{generation}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _mutate(parent: Subnet, space: SubnetSpace, rng: random.Random, settings: EvolutionSettings) -> Subnet:
    child = parent
    for module in MODULES:
        if rng.random() >= settings.mutation_prob:
            continue
        sizes, depth = list(parent.sizes(module)), parent.depth(module)
        new_depth = rng.choice(space.depths) if rng.random() < settings.depth_prob else depth
        kept = sizes[: min(depth, new_depth)] + space.random_sizes(max(new_depth - depth, 0), rng.randrange)
        child = child.with_sizes(module, space.padded(kept))
    return child


def _crossover(first: Subnet, second: Subnet, rng: random.Random) -> Subnet:
    return Subnet(**{module: rng.choice([first.sizes(module), second.sizes(module)]) for module in MODULES})


class _Search:
    """The search's state: every evaluated candidate in order, over-limit proposals counted."""

    def __init__(self, space, count, fitness, settings, path, fingerprint, log) -> None:
        self.space, self.count, self.fitness, self.settings = space, count, fitness, settings
        self.path, self.fingerprint, self.log = path, fingerprint, log
        self.candidates: list[_Candidate] = []
        self.seen: set[Subnet] = set()
        self.over_limit = 0
        self.history: list[dict[str, Any]] = []
        self.search_s = 0.0

    # ---- state on disk
    def header(self) -> dict[str, Any]:
        return {"settings": self.settings.to_dict(), "space": self.space.to_dict(), "fitness_of": self.fingerprint}

    def save(self) -> None:
        state = {
            "format": STATE_FORMAT,
            **self.header(),
            "generation": len(self.history) - 1,
            "candidates": [c.to_dict() for c in self.candidates],
            "over_limit": self.over_limit,
            "history": self.history,
            "search_s": self.search_s,
        }
        atomic_write_json(self.path, state)

    def load(self) -> None:
        state = read_search_file(self.path, STATE_FIELDS)
        if state["format"] != STATE_FORMAT:
            raise SettingsError(f"{self.path} is not a search state this version reads ({state.get('format')!r})")
        candidates = [_candidate_in(c, self.path) for c in state["candidates"]]
        saved = {key: state.get(key) for key in self.header()}
        if saved != self.header():
            changed = [key for key in saved if saved[key] != self.header()[key]]
            raise SettingsError(
                f"{self.path} holds a search with other {', '.join(changed)} ({saved}); resume with the same "
                "settings and supernet, or use another output folder"
            )
        self.candidates = candidates
        self.seen = {c.subnet for c in self.candidates}
        self.over_limit, self.history, self.search_s = state["over_limit"], state["history"], state["search_s"]

    # ---- evaluation
    def consider(self, subnet: Subnet, generation: int) -> bool:
        """Evaluates ``subnet`` if it is new and within the limit; True when it joined the population."""
        if subnet in self.seen:
            return False
        parameters = self.count(subnet)
        if parameters > self.settings.param_limit:
            self.over_limit += 1
            return False
        self.seen.add(subnet)
        self.candidates.append(_Candidate(subnet, parameters, float(self.fitness(subnet)), generation))
        return True

    def ranked(self) -> list[_Candidate]:
        order = sorted(
            range(len(self.candidates)), key=lambda i: (-self.candidates[i].top1, self.candidates[i].parameters, i)
        )
        return [self.candidates[i] for i in order]

    def breed(self, wanted: int, make: Callable[[], Subnet], generation: int) -> int:
        added = 0
        for _ in range(10 * wanted):
            if added == wanted:
                break
            added += self.consider(make(), generation)
        return added

    def generation(self, index: int) -> None:
        settings = self.settings
        rng = _generation_rng(settings.seed, index)
        added = 0
        if index > 0:
            parents = [c.subnet for c in self.ranked()[: settings.top_k]]
            added += self.breed(
                settings.mutation, lambda: _mutate(rng.choice(parents), self.space, rng, settings), index
            )
            added += self.breed(
                settings.crossover, lambda: _crossover(rng.choice(parents), rng.choice(parents), rng), index
            )
        attempts = 0
        while added < settings.population and attempts < 100 * settings.population:
            attempts += 1
            added += self.consider(self.space.random(rng.randrange), index)
        if not self.candidates:
            raise SettingsError(
                f"no subnet within the parameter limit ({settings.param_limit:,}) was found in "
                f"{attempts} random draws; raise the limit"
            )
        best = self.ranked()[0]
        self.history.append(
            {
                "generation": index,
                "evaluated": added,
                "best_top1": best.top1,
                "best_parameters": best.parameters,
                "best": best.subnet.to_dict(),
                "param_limit": settings.param_limit,
                "over_limit": self.over_limit,
            }
        )
        self.log(
            f"  generation {index}/{settings.generations}: {added} evaluated, best val top-1 {best.top1:.2f}% with "
            f"{best.parameters:,} parameters (limit {settings.param_limit:,}; {self.over_limit} proposals over it)"
        )


def evolve(
    space: SubnetSpace,
    count: Callable[[Subnet], int],
    fitness: Callable[[Subnet], float],
    settings: EvolutionSettings,
    state_path: Path,
    *,
    fingerprint: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs (or resumes, from ``state_path``) the search and returns its result.

    Args:
        space: the subnets to draw from.
        count: tuned parameters of a subnet (candidates above ``settings.param_limit`` are refused).
        fitness: the score to maximise (validation top-1 with the supernet's weights).
        settings: population, generations, top-k, children, probabilities, limit, seed.
        state_path: the JSON written after every generation; an existing one is resumed if it
            was made with the same settings, space and ``fingerprint``.
        fingerprint: names what ``fitness`` measures (e.g. the supernet weights' hash).
    """
    search = _Search(space, count, fitness, settings, Path(state_path), fingerprint, log)
    if search.path.is_file():
        search.load()
        log(f"  resuming the search after generation {len(search.history) - 1}")
    for index in range(len(search.history), settings.generations + 1):
        start = time.perf_counter()
        search.generation(index)
        search.search_s += time.perf_counter() - start
        search.save()
    best = search.ranked()[0]
    return {
        "best": {
            "subnet": best.subnet.to_dict(),
            "parameters": best.parameters,
            "top1": best.top1,
            "generation": best.generation,
        },
        "top_k": [c.to_dict() for c in search.ranked()[: settings.top_k]],
        "evaluated": len(search.candidates),
        "over_limit": search.over_limit,
        "history": search.history,
        "settings": settings.to_dict(),
        "space": space.to_dict(),
        "timing": {"search_s": search.search_s, "per_candidate_s": search.search_s / len(search.candidates)},
    }
