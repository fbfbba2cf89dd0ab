"""A restricted unpickler for the CIFAR "python version" batches.

Those files are pickles, and ``pickle.load`` on a file from the internet can run any code. Even the
numpy globals a batch needs are unsafe as they are: pickle's BUILD hands an attacker-chosen state to
``numpy.dtype`` and ``ndarray.__setstate__`` (an object dtype reads raw bytes as pointers). So no real
numpy object is built while unpickling: the admitted globals are inert stand-ins that only record a
shape, a numeric dtype string and the raw bytes; afterwards each array is made with
``np.frombuffer``. Any other global, an object or structured dtype, or bytes that do not fill the
shape raise ``pickle.UnpicklingError`` naming the file and what was refused.
"""
from __future__ import annotations

import io
import pickle
import re
from typing import Any

import numpy as np

_NUMERIC = re.compile(r"^[<>|=]?[biuf][1248]$")  # bool, signed, unsigned, float of 1/2/4/8 bytes


class _Refused(Exception):
    pass


class _NdarrayMarker:
    """Stands for ``numpy.ndarray``, which ``_reconstruct`` is told to build; never instantiated."""

    def __new__(cls, *args, **kwargs):
        raise _Refused("numpy.ndarray called directly")


class _Dtype:
    """Stands for ``numpy.dtype(spec, align, copy)`` and its pickled state (byte order only)."""

    def __init__(self, spec, align=False, copy=False):
        spec = spec.decode("ascii", "replace") if isinstance(spec, bytes) else str(spec)
        if not _NUMERIC.match(spec):
            raise _Refused(f"dtype {spec!r} (only numeric dtypes: bool, int, uint, float)")
        self.spec, self.byteorder = spec, "|"

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2:
            raise _Refused(f"dtype state {state!r}")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        extra = state[2:5]  # subarray, field names, fields: all None for a plain numeric dtype
        flags = state[7] if len(state) > 7 else 0
        if order not in ("<", ">", "|", "=") or any(v is not None for v in extra) or flags != 0:
            raise _Refused(f"dtype {self.spec!r} with state {state!r} (not a plain numeric dtype)")
        self.byteorder = order

    def numpy(self) -> np.dtype:
        dtype = np.dtype(self.spec)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


class _Array:
    """Stands for ``_reconstruct(ndarray, ...)``; its state records shape, dtype and raw bytes."""

    def __init__(self):
        self.state = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused(f"array state of {len(state) if isinstance(state, tuple) else type(state).__name__}")
        shape, dtype, fortran, raw = state[-4:]
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise _Refused(f"array shape {shape!r}")
        if not isinstance(dtype, _Dtype):  # (a _Guard of numpy.dtype called gives a _Dtype)
            raise _Refused(f"array dtype {type(dtype).__name__}")
        if isinstance(raw, pickle.PickleBuffer):
            raw = raw.raw()
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise _Refused(f"array data of type {type(raw).__name__} (object arrays are pickled as lists)")
        self.state = (shape, dtype, bool(fortran), bytes(raw))

    def numpy(self) -> np.ndarray:
        if self.state is None:
            raise _Refused("an array without data")
        shape, dtype, fortran, raw = self.state
        dt = dtype.numpy()
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if size * dt.itemsize != len(raw):
            raise _Refused(f"array of shape {shape} and dtype {dt} needs {size * dt.itemsize} bytes, got {len(raw)}")
        return np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct(cls, shape, typecode):
    if not (isinstance(cls, _Guard) and cls.target is _NdarrayMarker):
        raise _Refused(f"_reconstruct of {getattr(cls, '__name__', cls)!r}")
    return _Array()


def _frombuffer(buffer, dtype, shape, order):
    """How numpy pickles arrays with protocol 5: ``_frombuffer(bytes, dtype, shape, order)``."""
    array = _Array()
    array.__setstate__((shape, dtype, order == "F", buffer))
    return array


def _encode(text, encoding="utf-8"):
    """How Python 3 writes bytes in protocol-2 pickles: ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


STAND_INS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy < 2 pickles
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy >= 2 pickles
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol 5
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NdarrayMarker,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _encode,
}


class _Guard:
    """What ``find_class`` hands the pickle: a fresh wrapper per reference, so a BUILD on a global
    (pickle may set attributes on anything) changes nothing that outlives this load."""

    def __init__(self, target):
        self.target = target

    def __call__(self, *args):
        return self.target(*args)

    def __setstate__(self, state):
        raise _Refused(f"a state for the global {getattr(self.target, '__name__', self.target)}")


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _Guard(STAND_INS[(module, name)])
        except KeyError:
            raise _Refused(f"global {module}.{name}: CIFAR batches only contain dicts, lists, strings "
                           f"and numeric numpy arrays") from None


MAX_BYTES = 2 ** 31  # arrays of one file, all together (a CIFAR batch holds 30 MB)


def _arrays(obj: Any, seen: dict, budget: list) -> Any:
    """``obj`` with every stand-in array made a real one (containers rebuilt, nothing else kept).
    Shared references are converted once (a pickle of [x, x] nested 60 deep is 200 bytes), and the
    arrays' bytes are counted against ``MAX_BYTES``."""
    key = id(obj)
    if key in seen:
        return seen[key]
    if isinstance(obj, _Array):
        out = obj.numpy()
        budget[0] -= out.nbytes
        if budget[0] < 0:
            raise _Refused(f"arrays of more than {MAX_BYTES} bytes in all")
    elif isinstance(obj, dict):
        out = {_arrays(k, seen, budget): _arrays(v, seen, budget) for k, v in obj.items()}
    elif isinstance(obj, (list, tuple, set, frozenset)):
        out = type(obj)(_arrays(v, seen, budget) for v in obj)
    elif isinstance(obj, (_Dtype, _Guard, type)) or callable(obj):
        raise _Refused(f"a bare {type(obj).__name__} outside an array")
    else:
        out = obj
    seen[key] = out
    return out


def loads(data: bytes, name: str = "<bytes>"):
    """Unpickle with CIFAR's conventions (Python 2 pickles, so byte strings stay bytes); ``name``
    (the file) is in every error."""
    try:
        loaded = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
        return _arrays(loaded, {}, [MAX_BYTES])
    except _Refused as e:
        raise pickle.UnpicklingError(f"{name}: refused {e}") from None
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"{name}: {e}") from None
    except (EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError, RecursionError,
            MemoryError) as e:
        raise pickle.UnpicklingError(f"{name}: not a valid pickle: {type(e).__name__}: {e}") from None
