"""One family for every error snftune raises on purpose.

Each error the package means to raise derives from :class:`SnftuneError` (beside the built-in
base callers may already catch: ``ValueError``, ``ImportError``, ...) and carries the exit status
the command line gives it: :data:`BAD_INPUT` (2) for what the user asked for (a wrong name, a
file that does not fit, a missing optional dependency), :data:`RUN_FAILED` (1) for a run that
started and could not finish. The CLI catches the base and prints one line, no traceback.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["BAD_INPUT", "RUN_FAILED", "MissingExtraError", "SnftuneError"]

BAD_INPUT = 2
RUN_FAILED = 1


class SnftuneError(Exception):
    """Base of every error snftune raises on purpose; ``exit_code`` is the CLI's exit status for it."""

    exit_code: ClassVar[int] = BAD_INPUT


class MissingExtraError(SnftuneError, ImportError):
    """An optional dependency that is not installed: the message names the extra that installs it.

    Subclasses set ``package`` (what is missing), ``used_by`` (what needs it) and ``extra`` (the
    ``[project.optional-dependencies]`` name that installs it).
    """

    package: ClassVar[str] = ""
    used_by: ClassVar[str] = ""
    extra: ClassVar[str] = ""

    def __init__(self, detail: str = "") -> None:
        found = f" ({detail})" if detail else ""
        super().__init__(
            f"{self.package} is not installed{found}, and {self.used_by} cannot run without it: "
            f"pip install 'snftune[{self.extra}]'"
        )
