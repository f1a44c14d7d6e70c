"""Near-miss suggestions ("did you mean ...?") for names a user typed: methods, tasks, models
and command-line options. Standard library only, so that the command line can use it before
torch is imported."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest", "did_you_mean"]


def closest(word: str, choices: Iterable[str], cutoff: float = 0.7) -> str | None:
    """The choice most like ``word`` (difflib's ratio, at least ``cutoff``: 0.7 keeps
    one-letter slips and swaps, and leaves out names that merely share a prefix), or None.

    A choice whose last ``/``-separated part is ``word`` wins outright (``shapes`` ->
    ``generated/shapes``); case is ignored (``LoRA`` -> ``lora``).
    """
    choices = list(choices)
    lowered = {choice.lower(): choice for choice in choices}
    key = word.lower()
    if key in lowered:
        return lowered[key]
    tails = [choice for choice in choices if choice.rsplit("/", 1)[-1].lower() == key]
    if tails:
        return tails[0]
    found = difflib.get_close_matches(key, list(lowered), n=1, cutoff=cutoff)
    return lowered[found[0]] if found else None


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.7, prefix: str = "") -> str:
    """``" (did you mean 'snf-shallow'?)"`` for a near miss, else an empty string: to follow the
    name in a message. ``prefix`` is shown before the match but not compared (``generated/``)."""
    match = closest(word, choices, cutoff)
    return f" (did you mean '{prefix}{match}'?)" if match is not None and match != word else ""
