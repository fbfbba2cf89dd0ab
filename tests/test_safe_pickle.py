"""CIFAR batches are unpickled with a restricted unpickler, never plain pickle.load."""
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline import safe_pickle
from tests.helpers import Evil, cifar_batch


def test_real_format_cifar_batch_loads():
    batch = safe_pickle.loads(cifar_batch(4, labels=[1, 2, 3, 4]))
    assert batch[b"data"].shape == (4, 3072) and batch[b"data"].dtype == np.uint8
    assert batch[b"labels"] == [1, 2, 3, 4]


def test_a_pickle_that_would_run_code_is_refused_naming_the_global():
    with pytest.raises(pickle.UnpicklingError, match="refused global (posix|os).system"):
        safe_pickle.loads(pickle.dumps({b"data": Evil()}, protocol=2))


def test_other_classes_are_refused_too():
    import collections

    with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
        safe_pickle.loads(pickle.dumps(collections.OrderedDict(a=1)))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numeric_arrays_of_any_layout_come_back_equal(protocol):
    arrays = {b"u8": np.arange(24, dtype=np.uint8).reshape(2, 12), b"fortran": np.asfortranarray(np.eye(3)),
              b"big_endian": np.arange(3, dtype=">i4"), b"flags": np.array([True, False])}
    out = safe_pickle.loads(pickle.dumps({**arrays, b"labels": [1, 2]}, protocol=protocol))
    for key, value in arrays.items():
        assert np.array_equal(out[key], value) and out[key].dtype == value.dtype, key
    assert out[b"labels"] == [1, 2] and isinstance(out[b"u8"], np.ndarray)


@pytest.mark.parametrize("dtype", [object, [("a", "i4")], "U3", "c16", "M8[s]"])
def test_object_and_non_numeric_dtypes_are_refused_naming_the_file(dtype):
    data = pickle.dumps({b"data": np.zeros(2, dtype=dtype)}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_1: refused dtype"):
        safe_pickle.loads(data, "data_batch_1")


def test_a_forged_object_dtype_state_is_refused_before_numpy_sees_it(tmp_path):
    """The attack: a numeric array's pickle with its dtype string changed to 'O8' (NPY_LIST_PICKLE
    cleared, so numpy would read the raw bytes as object pointers: a segfault, or any live object).
    Loaded in a subprocess, so the old unpickler's crash fails this test instead of the suite."""
    import subprocess
    import sys

    raw = pickle.dumps({b"data": np.zeros(4, dtype="u8")}, protocol=2)
    assert raw.count(b"u8") == 1
    forged = tmp_path / "data_batch_1"
    forged.write_bytes(raw.replace(b"u8", b"O8"))
    code = ("import pickle, sys; from pipeline import safe_pickle\n"
            "try:\n    out = safe_pickle.loads(open(sys.argv[1], 'rb').read(), sys.argv[1])\n"
            "    print('LOADED', type(out[b'data']))\n"
            "except pickle.UnpicklingError as e:\n    print('REFUSED', e)\n")
    run = subprocess.run([sys.executable, "-c", code, str(forged)], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parent.parent))
    assert run.returncode == 0, f"the unpickler crashed: {run.returncode} {run.stderr[-300:]}"
    assert run.stdout.startswith("REFUSED") and "data_batch_1" in run.stdout and "'O8'" in run.stdout


class ShortArray:
    """Pickles as an array of shape (2, 4) uint8 whose data holds only 6 bytes."""

    def __reduce__(self):
        return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                (1, (2, 4), np.dtype("u1"), False, b"\x00" * 6))


def test_data_that_does_not_fill_the_shape_is_refused():
    with pytest.raises(pickle.UnpicklingError, match=r"x: refused array of shape \(2, 4\).*needs 8 bytes, got 6"):
        safe_pickle.loads(pickle.dumps({b"data": ShortArray()}, protocol=2), "x")


def test_shared_references_nested_deep_load_once_not_exponentially():
    import time

    x = [np.zeros(3, dtype=np.uint8)]
    for _ in range(60):  # 2^60 paths to the same array
        x = [x, x]
    started = time.time()
    out = safe_pickle.loads(pickle.dumps({b"data": x}, protocol=2), "deep")
    assert time.time() - started < 5
    assert out[b"data"][0] is out[b"data"][1]  # shared stays shared


class HugeShape:
    def __reduce__(self):
        return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, (2 ** 70,), np.dtype("u1"), False, b""))


def test_an_absurd_shape_is_an_unpickling_error_naming_the_file():
    with pytest.raises(pickle.UnpicklingError, match="^huge: "):
        safe_pickle.loads(pickle.dumps({b"data": HugeShape()}, protocol=2), "huge")


def test_a_state_for_a_global_changes_nothing_beyond_the_load():
    """pickle's BUILD can target the object find_class returned: each load gets a fresh guard."""
    forged = (b"\x80\x02cnumpy\nndarray\nq\x00}q\x01X\x05\x00\x00\x00extraq\x02K\x01sb.")
    with pytest.raises(pickle.UnpicklingError, match="refused a state for the global"):
        safe_pickle.loads(forged, "f")
    assert not hasattr(safe_pickle._NdarrayMarker, "extra")
