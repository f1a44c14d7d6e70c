"""One writer per run folder: a lock file holding the writer's pid and host.

Two runs writing one folder would overwrite each other's checkpoints and results while both
report success. ``run_lock`` creates ``<folder>/.lock`` exclusively; a second writer fails at
once. A lock left by a process that died (same host, pid gone) is taken over. Other lock names
serve locks held around more than one run (``snftune bench`` holds one per cell), and
:func:`lock_holder` tells who holds a lock without taking it (``snftune bench --status``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import RUN_FAILED, SnftuneError

__all__ = ["LOCK_NAME", "RunLockedError", "lock_holder", "run_lock"]

LOCK_NAME = ".lock"


class RunLockedError(SnftuneError, RuntimeError):
    """Another live process is writing the run folder."""

    exit_code = RUN_FAILED


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock's record, or None when it holds none: empty (its writer was killed between creating
    and filling it), or damaged (not JSON, a list, a pid that is not a number)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    pid, host = record.get("pid"), record.get("host")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31 or not isinstance(host, str):
        return None
    return record


def _is_stale(holder: dict | None, path: Path) -> bool:
    """A lock whose process is gone. An unreadable lock is stale once it is a minute old (a
    writer killed between creating and filling it)."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > 60
        except FileNotFoundError:
            return True
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process: we cannot tell, so it holds
    return not _alive(holder["pid"])


def lock_holder(folder: str | os.PathLike, name: str = LOCK_NAME) -> dict | None:
    """The record (``pid``, ``host``, ``since``) of the live process holding ``<folder>/<name>``;
    None when nobody holds it or its holder died. A holder on another host counts as live."""
    path = Path(folder) / name
    if not path.exists():
        return None
    holder = _holder(path)
    if _is_stale(holder, path):
        return None
    return holder or {"pid": None, "host": None, "since": None}


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, name: str = LOCK_NAME) -> Iterator[Path]:
    """Holds ``<folder>/<name>`` for the duration; raises :class:`RunLockedError` when a live
    process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if not _is_stale(holder, path):
                who = (
                    f"process {holder['pid']} on {holder['host']} since {holder.get('since')}"
                    if holder
                    else "a process whose lock holds no valid record yet (a damaged one is taken over after a minute)"
                )
                raise RunLockedError(
                    f"{folder} is being written by {who}; wait for it, or use another --out "
                    f"(if that process is gone, delete {path})"
                ) from None
            # Take over a dead writer's lock: move it aside first so that two takers cannot both win.
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, folder / f"{name}.stale-{os.getpid()}")
                os.remove(folder / f"{name}.stale-{os.getpid()}")
            continue
        with os.fdopen(descriptor, "w") as handle:
            json.dump(mine, handle)
        break
    else:
        raise RunLockedError(f"could not take the lock {path}; another process keeps taking it")
    try:
        yield path
    finally:
        if _holder(path) == mine:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
