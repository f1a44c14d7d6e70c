"""Serving: many tuned tasks on one backbone in one batch (:class:`MultiTaskModel`), and batch
prediction over image folders (:mod:`.predict`, ``snftune predict``)."""

from .heads import MultiTaskOutput
from .multitask import MultiTaskModel
from .tasks import ServingError

__all__ = ["MultiTaskModel", "MultiTaskOutput", "ServingError"]
