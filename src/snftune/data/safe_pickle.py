"""A pickle reader that rebuilds plain data and numpy arrays and nothing else.

Some datasets are only published as pickles (CIFAR-100's python archive: dicts of numpy arrays,
written by Python 2's cPickle). ``pickle.load`` calls whatever callable the file names, so a
doctored archive could run any code on load. :func:`load_plain` gives the file only the three
callables a numpy array needs to be rebuilt (numpy's ``_reconstruct``, ``ndarray`` and
``dtype``), looked up in our own table rather than imported by the names the file holds;
everything else (``builtins.eval``, ``os.system``, any class) is refused in one line before it
is called, and so are persistent ids and object arrays.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from .errors import DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

# The (module, name) pairs a pickled numpy array refers to, under numpy 1 and numpy 2 spellings.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class UnsafePickleError(DataError):
    """The pickle names something other than plain data and numpy arrays."""


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, handle: io.BufferedIOBase, origin: str) -> None:
        super().__init__(handle, encoding="bytes")
        self.origin = origin

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"{self.origin}: refused to load: the pickle asks for {module}.{name}, and only plain data and "
                "numpy arrays are read (nothing in the file was run). Re-download the official archive."
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.origin}: refused to load: the pickle holds a persistent id ({pid!r}).")


def _check_plain(value: Any, origin: str) -> None:
    """Refuse object arrays: their elements were rebuilt plainly, but no dataset needs them."""
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        raise UnsafePickleError(f"{origin}: refused to load: the pickle holds an array of Python objects.")
    if isinstance(value, dict):
        for item in value.values():
            _check_plain(item, origin)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, origin)


def load_plain(data: bytes, origin: str) -> Any:
    """The object pickled in ``data``, if it is made of containers, strings, numbers and numpy arrays.

    Strings pickled by Python 2 come back as ``bytes`` (``encoding="bytes"``), as in CIFAR's own
    reading instructions. Anything else is an :class:`UnsafePickleError` (a :class:`DataError`)
    naming ``origin``; a truncated or corrupt file is a :class:`DataError` too.
    """
    try:
        value = _PlainUnpickler(io.BytesIO(data), origin).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # whatever a damaged stream raises, the file is the problem
        raise DataError(f"{origin}: not a readable pickle ({type(exc).__name__}: {exc}). Re-download it.") from None
    _check_plain(value, origin)
    return value
