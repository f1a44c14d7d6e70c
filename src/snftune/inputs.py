"""Reading what users and earlier runs hand us, at the door: YAML whose errors fit on one line,
text files in UTF-8 (with or without a byte-order mark) or refused naming the file, JSON records
of our own formats checked against their shape, and single values checked against one declared
type and range.

Everything here raises the caller's own error class (``error=``), so each layer keeps its
one-line errors and its exit code; this module only knows how to say what is wrong."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import SnftuneError

__all__ = [
    "DamagedFileError",
    "Rule",
    "BATCH_SIZE",
    "EPOCHS",
    "THREADS",
    "WORKERS",
    "check_sequence",
    "field_rules",
    "ruled",
    "check_value",
    "read_json_record",
    "read_text",
    "load_yaml",
    "yaml_problem",
]


class DamagedFileError(SnftuneError, ValueError):
    """A file snftune wrote and reads back (metrics.json, selection.json, results.json, ...) that is
    cut short, edited or of another shape: the message names the file, what is wrong and how to recover."""


def read_text(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "file") -> str:
    """The text of ``path`` as UTF-8; a leading byte-order mark is dropped (editors on Windows
    write one, and it would otherwise stick invisibly to the first name). Any other encoding is
    refused naming the file and the first bad byte, rather than guessed."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        line = raw[: problem.start].count(b"\n") + 1
        raise error(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[problem.start]:02x} on line {line}); "
            "save it as UTF-8 and try again"
        ) from None


def yaml_problem(problem: yaml.YAMLError, source: str) -> str:
    """``<source> line L column C: <problem>`` for a YAML error that PyYAML prints over 4-8 lines."""
    mark = getattr(problem, "problem_mark", None) or getattr(problem, "context_mark", None)
    where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    words = getattr(problem, "problem", None) or str(problem).splitlines()[0]
    context = getattr(problem, "context", None)
    detail = f"{words} ({context})" if context and getattr(problem, "problem", None) else words
    return f"{source}{where}: not valid YAML: {detail}"


def load_yaml(
    path: str | os.PathLike | None = None,
    *,
    text: str | None = None,
    source: str | None = None,
    error: type[Exception] = ValueError,
) -> Any:
    """The YAML document of a file (``path``) or of ``text``, read with ``safe_load`` (no objects
    are built from tags). A syntax error is one line naming the file, line, column and problem."""
    if text is None:
        if path is None:
            raise TypeError("load_yaml needs a path or text")
        text = read_text(path, error, "YAML file")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise error(yaml_problem(problem, source or str(path))) from None


def read_json_record(
    path: str | os.PathLike,
    required: Mapping[str, type | tuple[type, ...]],
    error: type[Exception] = DamagedFileError,
    recover: str = "delete it to have it written again",
) -> dict[str, Any]:
    """A JSON object written by snftune, with every ``required`` key of its declared type.

    A file cut short (a full disk, a copy interrupted), edited by hand or of another shape is one
    line naming the file, what is wrong and ``recover`` (how to get a good one back)."""
    path = Path(path)
    try:
        data = json.loads(read_text(path, error, "JSON file"))
    except json.JSONDecodeError as problem:
        raise error(f"{path} is damaged (not JSON: {problem.msg} at line {problem.lineno}); {recover}") from None
    if not isinstance(data, dict):
        raise error(f"{path} is damaged (a JSON {type(data).__name__}, not an object); {recover}")
    for key, kind in required.items():
        if key not in data:
            raise error(f"{path} is damaged (no '{key}'); {recover}")
        value = data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise error(f"{path} is damaged ('{key}' is {value!r}, expected {_kind_words(kind)}); {recover}")
    return data


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_words(kind: type | tuple[type, ...]) -> str:
    names = {
        int: "a whole number",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dict: "an object",
        list: "a list",
        type(None): "null",
    }
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


@dataclass(frozen=True)
class Rule:
    """What one value accepts, declared once where the value is defined (a run key, a training
    setting, a method option) and checked where it enters (:meth:`check`).

    ``kind`` is int, float, bool, str or dict. Numbers may have a range: ``low``/``high`` are
    included unless ``low_open``/``high_open``. ``choices`` lists the strings allowed. ``optional``:
    None stands for "the default" and passes. ``hint`` ends the error (what to do instead)."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False
    hint: str = ""

    def describe(self) -> str:
        """What is allowed, in words: ``a whole number in [1, 4096]``, ``a finite number > 0``."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        words = {int: "a whole number", float: "a finite number", bool: "true or false", str: "a string"}
        text = words.get(self.kind, "a mapping of KEY: VALUE")
        low, high = self.low, self.high
        if low is not None and high is not None:
            opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{text} in {opening}{_number(low)}, {_number(high)}{closing}"
        if low is not None:
            return f"{text} {'>' if self.low_open else '>='} {_number(low)}"
        if high is not None:
            return f"{text} {'<' if self.high_open else '<='} {_number(high)}"
        return text

    def check(self, name: str, value: Any, error: type[Exception] = ValueError) -> Any:
        """``value`` as this rule's kind, or ``error`` naming ``name``, the value and what is allowed.

        A whole number may be written ``2.0`` (YAML and JSON readers do), but ``2.5`` is not an int;
        numbers must be finite; true/false is not a number; a string is not empty. So
        ``planar_steps=abc`` says so rather than failing a comparison later."""
        if value is None and self.optional:
            return None
        checked = self._as_kind(value)
        if checked is None or not self._in_range(checked):
            hint = f"; {self.hint}" if self.hint else ""
            raise error(f"{name} must be {self.describe()}, got {value!r}{hint}")
        return checked

    def _as_kind(self, value: Any) -> Any:
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return None
            if self.kind is int:
                return int(value) if value == int(value) else None
            return float(value)
        if not isinstance(value, self.kind):
            return None
        if self.kind is str and not (value.strip() and (self.choices is None or value in self.choices)):
            return None
        return value

    def _in_range(self, value: Any) -> bool:
        if self.kind not in (int, float):
            return True
        low, high = self.low, self.high
        above = low is None or (value > low if self.low_open else value >= low)
        below = high is None or (value < high if self.high_open else value <= high)
        return above and below


def ruled(rule: Rule, default: Any = None, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field declared with the rule its values are checked against (:func:`field_rules`)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def field_rules(cls: type) -> dict[str, Rule]:
    """The rules of a dataclass's fields declared with :func:`ruled`, by field name."""
    return {f.name: f.metadata["rule"] for f in fields(cls) if "rule" in f.metadata}


THREADS = Rule(int, 1, 4096, optional=True)
"""torch's CPU threads for a run or a command (None: one per idle core)."""
EPOCHS = Rule(int, 1, 1_000_000)
BATCH_SIZE = Rule(int, 1, 1 << 20)
WORKERS = Rule(int, 0, 1024)
"""Rules shared by a run's training settings (:class:`snftune.engine.TrainConfig`) and a command's
own flags (``snftune predict --batch-size``), which the CLI checks without importing torch."""


def check_value(
    value: Any,
    name: str,
    kind: type,
    low: float | None = None,
    high: float | None = None,
    error: type[Exception] = ValueError,
) -> Any:
    """``value`` as ``kind`` within ``low..high`` (inclusive): :class:`Rule` in one call."""
    return Rule(kind, low, high).check(name, value, error)


def check_sequence(
    value: Any,
    name: str,
    kind: type,
    low: float | None = None,
    high: float | None = None,
    error: type[Exception] = ValueError,
) -> tuple[Any, ...]:
    """``value`` as a non-empty tuple of ``kind`` items, each checked as :func:`check_value` checks
    one; a single item stands for a list of one (``targets=q`` is ``targets=[q]``)."""
    items = (value,) if isinstance(value, str | int | float) else value
    wanted = f"{name} must be a non-empty list, each {Rule(kind, low, high).describe()}, got {value!r}"
    if not isinstance(items, list | tuple) or not items:
        raise error(wanted)
    try:
        return tuple(check_value(item, name, kind, low, high, error) for item in items)
    except error:
        raise error(wanted) from None


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)
