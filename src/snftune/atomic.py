"""Atomic file writes: a kill at any moment leaves either the old file or the new one."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], None], io_errors: tuple[type[BaseException], ...] = ()
) -> Path:
    """Calls ``write(tmp_path)`` on a temporary file in ``path``'s folder, flushes it to disk,
    then renames it over ``path`` (``os.replace`` is atomic within one file system).

    Any failure (a full or read-only disk) leaves the previous ``path`` as it was and no temporary
    file behind. ``io_errors`` are the exception types ``write`` uses for failed writes when they are
    not ``OSError`` (``torch.save`` raises ``RuntimeError`` on a full disk, safetensors its own
    error): they are raised as ``OSError``, so a full disk is a failure of the run in the system's
    words (``[Errno 28] No space left on device``), never a traceback."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(tmp)
        except io_errors as error:
            raise write_failure(error, path) from None
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual permissions
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_failure(error: BaseException, path: Path) -> OSError:
    """An ``OSError`` for a library's failed write: its errno when the library's message carries one
    (``os error 28``, ``code: 28``), ``ENOSPC`` when it speaks of space, else ``EIO``."""
    text = str(error)
    found = re.search(r"(?:os error|code:?|errno:?)\s*(\d+)", text, re.IGNORECASE)
    if found:
        number = int(found.group(1))
    elif re.search(r"no space|disk full|storage ?full|write failed|file write", text, re.IGNORECASE):
        number = errno.ENOSPC
    else:
        number = errno.EIO
    return OSError(
        number, f"{os.strerror(number)} (writing {path.name}: {text.splitlines()[0][:160] if text else ''})", str(path)
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Writes ``data`` as indented JSON atomically. NaN and infinities are refused (``ValueError``):
    they are not JSON, and a file that holds them breaks every strict reader."""
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
