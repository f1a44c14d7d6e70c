"""Engine: trains and evaluates whatever is trainable (AMP, DDP, schedules, checkpoints, logs)."""

from .checkpoint import CHECKPOINT_NAME, CheckpointError
from .config import ConfigError, TrainConfig
from .distributed import DistInfo, cleanup_distributed, setup_distributed
from .lock import LOCK_NAME, RunLockedError, lock_holder, run_lock
from .records import Metrics, read_metrics
from .schedule import WarmupCosine
from .trainer import LOG_NAME, METRICS_NAME, TUNED_NAME, DivergenceError, ResumeError, evaluate, train

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "LOG_NAME",
    "METRICS_NAME",
    "TUNED_NAME",
    "ConfigError",
    "DivergenceError",
    "LOCK_NAME",
    "RunLockedError",
    "lock_holder",
    "run_lock",
    "Metrics",
    "read_metrics",
    "DistInfo",
    "ResumeError",
    "TrainConfig",
    "WarmupCosine",
    "cleanup_distributed",
    "evaluate",
    "setup_distributed",
    "train",
]
