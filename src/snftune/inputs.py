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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import SnftuneError

__all__ = [
    "DamagedFileError",
    "check_sequence",
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


def check_value(
    value: Any,
    name: str,
    kind: type,
    low: float | None = None,
    high: float | None = None,
    error: type[Exception] = ValueError,
) -> Any:
    """``value`` as ``kind`` (int, float, bool or str), within ``low..high`` (inclusive) when given.

    A whole number may be written ``2.0`` (YAML and JSON readers do), but ``2.5`` is not an int;
    numbers must be finite; true/false is not a number. The error names the key, the value and
    what is allowed, so ``planar_steps=abc`` says so rather than failing a comparison later."""
    allowed = _allowed(kind, low, high)
    if kind is bool or kind is str:
        if not isinstance(value, kind):
            raise error(f"{name} must be {allowed}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise error(f"{name} must be {allowed}, got {value!r}")
    if kind is int:
        if value != int(value):
            raise error(f"{name} must be {allowed}, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"{name} must be {allowed}, got {value!r}")
    return value


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
    if not isinstance(items, list | tuple) or not items:
        raise error(f"{name} must be a non-empty list, each {_allowed(kind, low, high)}, got {value!r}")
    try:
        return tuple(check_value(item, name, kind, low, high, error) for item in items)
    except error:
        raise error(f"{name} must be a non-empty list, each {_allowed(kind, low, high)}, got {value!r}") from None


def _allowed(kind: type, low: float | None, high: float | None) -> str:
    words = {int: "a whole number", float: "a finite number", bool: "true or false", str: "a string"}[kind]
    if low is not None and high is not None:
        return f"{words} in {_number(low)}..{_number(high)}"
    if low is not None:
        return f"{words} >= {_number(low)}"
    if high is not None:
        return f"{words} <= {_number(high)}"
    return words


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)
