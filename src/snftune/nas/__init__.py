"""Neural architecture search: NOAH's supernet -> evolutionary search -> retrain pipeline
(hyper-parameter selection is :mod:`snftune.selection`)."""

from .evolution import EvolutionSettings, evolve
from .noah import NoahPlan, NoahSettings, parse_count, plan_noah, run_noah

__all__ = ["EvolutionSettings", "NoahPlan", "NoahSettings", "evolve", "parse_count", "plan_noah", "run_noah"]
