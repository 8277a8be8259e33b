"""minnst.modelfile: model files and training checkpoints round-trip exactly, float16 casts
only floating-point arrays, the bytes written do not depend on when they were written, and
every kind of bad file is a one-line ModelFileError."""
from __future__ import annotations

import time

import h5py
import numpy as np
import pytest

from minnst.modelfile import MODEL_FORMAT, MODEL_FORMAT_VERSION, ModelFileError, load_model, save_model


def _state():
    rng = np.random.default_rng(1)
    return {
        "conv1.w": rng.standard_normal((32, 3, 9, 9)).astype(np.float32),
        "conv1.b": rng.standard_normal(32).astype(np.float32),
        "adam.step": np.array(17, dtype=np.int64),
        "a_last_name": rng.standard_normal((2, 2)).astype(np.float32),
    }


def test_model_roundtrip_float32_exact(tmp_path):
    state = _state()
    config = {"norm": "instance", "channels": [32, 64, 128], "upsample": "resize"}
    meta = {"style": "starry_night.jpg", "rng": {"state": 2**100 + 3}, "lr": np.float32(1e-3)}
    path = save_model(tmp_path / "m.h5", state, config, meta)
    s2, c2, m2 = load_model(path)
    assert list(s2) == list(state)  # order kept
    for k in state:
        assert s2[k].dtype == state[k].dtype and np.array_equal(s2[k], state[k])
    assert c2 == config and m2["rng"]["state"] == 2**100 + 3 and m2["style"] == "starry_night.jpg"
    assert abs(m2["lr"] - 1e-3) < 1e-9


def test_model_float16_cast(tmp_path):
    state = _state()
    save_model(tmp_path / "m16.h5", state, {}, dtype=np.float16)
    s2, _, meta = load_model(tmp_path / "m16.h5")
    assert s2["conv1.w"].dtype == np.float16 and s2["adam.step"].dtype == np.int64
    np.testing.assert_allclose(s2["conv1.w"], state["conv1.w"], rtol=1e-3, atol=1e-3)
    assert meta == {}


def test_malformed_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.h5")
    with pytest.raises(ModelFileError, match="not a file"):
        load_model(tmp_path)
    (tmp_path / "t.h5").write_text("hello")
    with pytest.raises(ModelFileError, match="not an HDF5"):
        load_model(tmp_path / "t.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ModelFileError, match="not a minnst model"):
        load_model(tmp_path / "other.h5")
    with h5py.File(tmp_path / "broken.h5", "w") as f:
        f.attrs["format"] = MODEL_FORMAT
        f.attrs["config"] = "{not json"
    with pytest.raises(ModelFileError, match="malformed"):
        load_model(tmp_path / "broken.h5")
    with h5py.File(tmp_path / "vgg16.h5", "w") as f:
        f.attrs["format"] = "minnst-vgg16"
    with pytest.raises(ModelFileError, match="minnst-vgg16"):  # VGG weights are not a model
        load_model(tmp_path / "vgg16.h5")
    with h5py.File(tmp_path / "future.h5", "w") as f:
        f.attrs["format"] = MODEL_FORMAT
        f.attrs["format_version"] = MODEL_FORMAT_VERSION + 1
    with pytest.raises(ModelFileError, match="version"):
        load_model(tmp_path / "future.h5")
    save_model(tmp_path / "names.h5", {"a": np.zeros(1)}, {})
    with h5py.File(tmp_path / "names.h5", "r+") as f:
        f["state"]["b"] = np.zeros(1)
    with pytest.raises(ModelFileError, match="recorded names"):
        load_model(tmp_path / "names.h5")
    assert issubclass(ModelFileError, ValueError)


def test_save_model_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="name"):
        save_model(tmp_path / "m.h5", {"a/b": np.zeros(1)}, {})
    with pytest.raises(ValueError, match="JSON"):
        save_model(tmp_path / "m.h5", {}, {"f": object()})
    assert list(tmp_path.iterdir()) == []


def test_save_is_deterministic(tmp_path):
    """The same state, config and meta give the same bytes, whenever they are written."""
    a = save_model(tmp_path / "a.h5", _state(), {"norm": "batch"}, {"style": "s.jpg"})
    time.sleep(1.1)  # HDF5 timestamps have one-second resolution
    b = save_model(tmp_path / "b.h5", _state(), {"norm": "batch"}, {"style": "s.jpg"})
    assert a.read_bytes() == b.read_bytes()
