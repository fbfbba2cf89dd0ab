"""CIFAR batches are unpickled with a restricted unpickler, never plain pickle.load."""
import pickle

import numpy as np
import pytest

from pipeline import safe_pickle
from tests.conftest import Evil, cifar_batch


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
