"""A restricted unpickler for the CIFAR "python version" batches.

Those files are pickles, and ``pickle.load`` on a file from the internet can run any code. This
unpickler admits only the globals a batch of numpy arrays needs; anything else raises
``pickle.UnpicklingError`` naming the refused global.
"""
from __future__ import annotations

import io
import pickle

ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),  # numpy < 2 pickles
    ("numpy._core.multiarray", "_reconstruct"),  # numpy >= 2 pickles
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles; only encodes a string
})


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: CIFAR batches only contain dicts, lists, strings "
                f"and numpy arrays")
        return super().find_class(module, name)


def loads(data: bytes):
    """Unpickle with CIFAR's conventions (Python 2 pickles, so byte strings stay bytes)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
