"""minnst.safe_pickle: malicious pickles are refused before anything runs; plain numeric
NumPy pickles (the form of VGG16's ``vgg16.ckpt``) load exactly."""
from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from minnst.safe_pickle import UnsafePickleError, safe_load_pickle


class _Evil:
    """Pickles as whatever ``__reduce__`` tuple it is given: ``(callable, args[, state])``."""

    def __init__(self, *reduce_value):
        self.reduce_value = reduce_value

    def __reduce__(self):
        return self.reduce_value


def _evil_pickles(marker: Path):
    cmd = f"touch {marker}"
    yield pickle.dumps(_Evil(os.system, (cmd,)), protocol=0)
    yield pickle.dumps(_Evil(os.system, (cmd,)), protocol=2)
    yield pickle.dumps({"w": np.ones(2), "x": _Evil(os.system, (cmd,))}, protocol=3)
    yield pickle.dumps(_Evil(builtins.eval, (f"__import__('os').system('{cmd}')",)), protocol=4)
    yield pickle.dumps(_Evil(subprocess.call, (["touch", str(marker)],)), protocol=5)
    yield pickle.dumps(_Evil(builtins.exec, (f"open('{marker}', 'w')",)), protocol=4)


def test_malicious_pickles_are_refused_and_do_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    for data in _evil_pickles(marker):
        with pytest.raises(UnsafePickleError):
            safe_load_pickle(io.BytesIO(data))
        assert not marker.exists()


def test_refusal_names_the_global():
    data = pickle.dumps(_Evil(os.system, ("true",)))
    with pytest.raises(UnsafePickleError, match=r"system"):
        safe_load_pickle(data)


def test_object_array_is_refused():
    data = pickle.dumps({"a": np.array([1, "x", None], dtype=object)}, protocol=3)
    with pytest.raises(UnsafePickleError, match="dtype"):
        safe_load_pickle(data)


def test_forged_dtype_flags_are_refused():
    # dtype.__setstate__ takes raw flags ("holds Python objects" among them).
    forged = _Evil(np.dtype, ("f4", False, True), (3, "<", None, None, None, -1, -1, 63))
    data = pickle.dumps(forged, protocol=3)
    with pytest.raises(UnsafePickleError):
        safe_load_pickle(data)


def test_ndarray_new_and_direct_calls_are_refused():
    # hand-made: PROTO 2, GLOBAL numpy.ndarray, args ((3,), "O"), NEWOBJ, STOP
    newobj = b"\x80\x02cnumpy\nndarray\nK\x03\x85X\x01\x00\x00\x00O\x86\x81."
    assert pickle.loads(newobj).dtype == object  # what a plain unpickler would build
    with pytest.raises(UnsafePickleError):
        safe_load_pickle(newobj)
    direct = _Evil(np.ndarray, ((3,), "O"))  # REDUCE with the class itself
    with pytest.raises(UnsafePickleError):
        safe_load_pickle(pickle.dumps(direct, protocol=3))


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_plain_numeric_pickle_loads(protocol):
    rng = np.random.default_rng(0)
    obj = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "nested": {"b": rng.standard_normal(5), "i": np.arange(6, dtype=np.int64).reshape(2, 3)},
        "f": np.asfortranarray(rng.standard_normal((2, 3))),
        "m": np.array([True, False]),
        "list": [1, 2.5, "text"],
    }
    out = safe_load_pickle(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
    assert out["a"].dtype == np.float32 and np.array_equal(out["a"], obj["a"])
    assert np.array_equal(out["nested"]["b"], obj["nested"]["b"])
    assert np.array_equal(out["nested"]["i"], obj["nested"]["i"])
    assert np.array_equal(out["f"], obj["f"]) and np.array_equal(out["m"], obj["m"])
    assert out["list"] == [1, 2.5, "text"]
