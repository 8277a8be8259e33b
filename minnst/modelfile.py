"""Model files: a trained transformer network or a training checkpoint, as HDF5.

    /state/<name>    one dataset per array, dotted names kept (``res1.conv1.weight``);
                     ``state.attrs["names"]`` is their order as JSON
    root attributes  format = "minnst-model", format_version, config and meta (JSON strings)

``save_model`` writes through ``files.atomic_write`` (temp file + rename), so a killed
process never leaves a half-written model or checkpoint under the real name.
``load_model`` (from the file, or from its bytes: what a cluster worker gets) validates
the format, version and state names and raises ``ModelFileError`` (one line) for
anything else; the callers (``TransformerNet.load``, ``train_fast.read_checkpoint``)
check the shapes against the config.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import h5py
import numpy as np

from .backend import to_host
from .files import atomic_write

MODEL_FORMAT = "minnst-model"
MODEL_FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, not HDF5, or not a minnst model (one-line message)."""


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def save_model(path, state: dict, config: dict, meta: dict | None = None, dtype=None) -> Path:
    """Write a model (or training checkpoint) file atomically.

    Layout (HDF5): ``state/<name>`` one dataset per array (dotted names such as
    ``res1.conv1.w`` kept as they are); root attributes ``format = "minnst-model"``,
    ``format_version``, ``config`` and ``meta`` (JSON strings). ``dtype`` (e.g.
    ``np.float16`` for shipping) casts floating-point arrays only; integer arrays (step
    counters, RNG words) are stored as they are. Arrays may live on the GPU.
    """
    if not isinstance(state, dict) or not isinstance(config, dict):
        raise TypeError("save_model needs state: dict[str, array] and config: dict")
    try:
        config_json = json.dumps(config, sort_keys=True, default=_json_default)
        meta_json = json.dumps(meta or {}, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model config/meta must be JSON-serialisable: {e}") from None
    names = list(state)
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ValueError(f"bad state name {name!r} (non-empty str without '/')")
    path = Path(path)
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = MODEL_FORMAT
            f.attrs["format_version"] = MODEL_FORMAT_VERSION
            f.attrs["config"] = config_json
            f.attrs["meta"] = meta_json
            g = f.create_group("state")
            g.attrs["names"] = json.dumps(names)
            for name in names:
                a = to_host(state[name])
                if dtype is not None and np.issubdtype(a.dtype, np.floating):
                    a = a.astype(dtype)
                g.create_dataset(name, data=a, track_times=False)
    return path


def source_name(source) -> str:
    """How messages name a model ``source``: its path, or "the model sent as bytes"."""
    return "the model sent as bytes" if isinstance(source, (bytes, bytearray)) else str(source)


def load_model(path) -> tuple[dict[str, np.ndarray], dict, dict]:
    """Read a file written by ``save_model``: ``(state, config, meta)``. ``path`` may also
    be the file's bytes (what a cluster worker gets instead of the file).

    ``state`` keeps the saved order and dtypes (callers cast). Raises ``ModelFileError``
    with one line for a missing file, a directory, a non-HDF5 file or a wrong format.
    """
    name = source_name(path)
    if isinstance(path, (bytes, bytearray)):
        target = io.BytesIO(path)
    else:
        target = Path(path)
        if not target.exists():
            raise ModelFileError(f"model file not found: {name}")
        if not target.is_file():
            raise ModelFileError(f"model path is not a file: {name}")
    try:
        f = h5py.File(target, "r")
    except OSError:
        raise ModelFileError(f"{name} is not an HDF5 file (expected a minnst model .h5)") from None
    with f:
        fmt = f.attrs.get("format")
        if fmt != MODEL_FORMAT:
            raise ModelFileError(f"{name} is not a minnst model file (format={fmt!r})")
        version = int(f.attrs.get("format_version", -1))
        if version > MODEL_FORMAT_VERSION:
            raise ModelFileError(f"{name} has model format version {version}; this minnst reads up to {MODEL_FORMAT_VERSION}")
        try:
            config = json.loads(f.attrs["config"])
            meta = json.loads(f.attrs.get("meta", "{}"))
            g = f["state"]
            names = json.loads(g.attrs["names"]) if "names" in g.attrs else list(g)
            if set(names) != set(g):
                raise ModelFileError(f"{name}: state arrays do not match the recorded names")
            state = {k: g[k][()] for k in names}
        except (KeyError, ValueError, TypeError) as e:
            if isinstance(e, ModelFileError):
                raise
            raise ModelFileError(f"{name} is a malformed minnst model file ({e.__class__.__name__}: {e})") from None
    return state, config, meta
