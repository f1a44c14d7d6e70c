"""The one exception type of the data layer, and its one warning type."""

from __future__ import annotations

from ..errors import SnftuneError


class DataError(SnftuneError, ValueError):
    """Data on disk does not match what a reader expects.

    Messages say what was expected, what was found, and what to do about it. Raised in a
    DataLoader worker process, it keeps its message (see :func:`original_message`).
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (original_message(args[0], type(self)),)
        super().__init__(*args)


def original_message(text: str, error_type: type[BaseException]) -> str:
    """The message of an error that a DataLoader worker raised, without the worker's traceback.

    torch re-raises a worker's exception in the main process as ``error_type(text)`` where
    ``text`` is ``"Caught <Name> in DataLoader worker process <n>.\\nOriginal Traceback ..."``:
    the whole formatted traceback, whose last entry reads ``<module>.<Name>: <message>``. A
    one-line error (a bad image met mid-epoch) would reach the user as a page of traceback.
    Any other text is returned unchanged.
    """
    if not text.startswith(f"Caught {error_type.__name__} in DataLoader worker"):
        return text
    marker = f"\n{error_type.__module__}.{error_type.__qualname__}: "
    at = text.rfind(marker)
    return text[at + len(marker) :].strip() if at >= 0 else text


class DataWarning(UserWarning):
    """Data that loads but deserves a word: images skipped on request (``on_bad_image="skip"``) or a
    list that names an image more than once. The message carries the counts."""
