"""Data layer: readers for the benchmark folders researchers hold, protocol transforms, a generated suite.

Task specs, resolved against ``data_dir``::

    vtab1k/<task>                      VTAB-1k (19 tasks; aliases such as cifar100, oxford_pet)
    fgvc/<dataset>                     FGVC with VPT json splits (cub, nabirds, oxford_flowers, …)
    fewshot/<dataset>/<k>shot/seed<s>  NOAH few-shot lists (the five FGVC datasets and imagenet)
    dg/<target>[/all1000][/seed<s>]    ImageNet 16-shot (seed s, default 0) -> imagenet, -v2/-sketch/-a/-r
    cifar100/full, cifar100/<n>        CIFAR-100 from either official archive (.tar.gz or folder)
    imagenet/16shot[/seed<s>]          ImageNet-1k 16-shot (NOAH's list), top-1 on the ILSVRC2012 val set
    folder:<path>, list:<path>         users' ImageFolder trees and <path> <label> lists
    generated/<task>                   the generated suite, in memory (no data_dir)

NOAH's and CoOp's layouts are both read as they lie (see ``layout.py``). Every spec takes the task
options ``on_bad_image`` and ``allow_outside_root`` (:class:`ReadOptions`); :func:`check_data`
checks a dataset on disk against what its benchmark expects (``snftune data check``).
"""

from . import cifar, fewshot, fgvc, folders, generated, imagenet, vtab  # noqa: F401  (register the readers)
from .check import DataReport, check_data
from .errors import DataError, DataWarning
from .lists import ImageListDataset, ReadOptions, Sample
from .protocols import ProtocolSettings, protocol_settings
from .registry import Task, list_tasks, resolve_task
from .transforms import build_transform, model_data_config

__all__ = [
    "DataError",
    "DataReport",
    "DataWarning",
    "ImageListDataset",
    "ProtocolSettings",
    "ReadOptions",
    "Sample",
    "Task",
    "build_transform",
    "check_data",
    "list_tasks",
    "model_data_config",
    "protocol_settings",
    "resolve_task",
]
