"""The compile/launch runtime of the hand-written CUDA kernels (``*.cu`` beside this file).

The launchers themselves live beside their NumPy twins (``minnst.layers.*``,
``minnst.losses``: ``op_cpu`` and ``op_gpu`` under one dispatcher ``op``); this module
gives them what every launcher needs:

* ``SOURCES``: the single list of the kernels and their template instantiations;
* ``kernel(source, name, xp, *types)``: the compiled ``name<types…>``, compiled once per
  process by ``cupy.RawModule`` (templates instantiated for float and double through
  ``name_expressions``) and cached in ``_MODULES``, the only module-level mutable state;
* ``run_1d(kern, n, args)``: a 1-D launch of ``THREADS``-thread blocks over ``n`` items
  (at most ``MAX_BLOCKS`` blocks; the kernels' grid-stride loops cover the rest);
* the traps of raw kernels: ``float_dtype`` (float32 or float64 only, ``TypeError``
  otherwise, all arrays of one dtype), ``i32`` / ``i64`` (scalars as NumPy scalars, never
  Python numbers), ``empty`` (every output allocated before the launch);
* layouts: raw kernels ignore strides, so every array argument is C-contiguous, a copy
  being made only where the memory order cannot be described to the kernel
  (``memory_order``, ``dense``, ``pixels`` / ``from_pixels``, ``as_layout``,
  ``strides_of``, ``to4``, ``inverse_permutation``).

Launchers call these through the module (``launch.empty(...)``), so that the tests can
replace them. CuPy is imported lazily, inside ``kernel``: importing minnst never imports
it. The same launchers run on NumPy arrays under the CPU emulation of the tests
(``tests/kernel_emu``), which replaces ``host_module``: the kernels then run compiled by
g++ over their whole launch grid, so the launchers' argument handling is tested too.

Nothing here imports from ``minnst.layers`` or ``minnst.losses``: dependencies point from
the ops down to this runtime.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..backend import get_xp

KERNEL_DIR = Path(__file__).resolve().parent

THREADS = 256        # threads per 1-D block (== MINNST_MAX_BLOCK in common.h, the maximum)
MAX_BLOCKS = 8192    # grid-stride loops cover the rest; tests lower it to exercise them

_F = (("float",), ("double",))
_F_IDX = (("float", "unsigned char"), ("double", "unsigned char"), ("float", "int"), ("double", "int"))

# source file -> {kernel: template argument lists}; the single list of what exists, used
# for CuPy's name_expressions, the emulator's wrappers and the compile check.
SOURCES = {
    "im2col.cu": {"im2col": _F, "col2im_add": _F},
    "pad.cu": {"pad2d_forward": _F, "pad2d_backward": _F},
    "pool.cu": {"maxpool2d_forward": _F_IDX, "maxpool2d_backward": _F_IDX,
                "avgpool2d_forward": _F, "avgpool2d_backward": _F},
    "relu.cu": {"relu_forward": _F, "relu_backward": _F},
    "norm.cu": {"norm_forward": _F, "norm_backward": _F},
    "upsample.cu": {"upsample_nearest2d_forward": _F, "upsample_nearest2d_backward": _F},
    "losses.cu": {"content_loss": _F, "style_residual": _F, "tv_loss": _F},
}

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
           np.dtype(np.uint8): "unsigned char", np.dtype(np.int32): "int"}

_MODULES: dict = {}  # source file -> compiled cupy.RawModule (the kernel cache)
NVRTC_OPTIONS = ("--std=c++14",)  # CuPy adds the architecture of the current device


def name_expressions(source: str) -> list[str]:
    """``["relu_forward<float>", …]``: every instantiation of the kernels in ``source``."""
    return [f"{k}<{', '.join(args)}>" for k, targs in SOURCES[source].items() for args in targs]


def read_source(source: str) -> str:
    """The text of ``source`` with its local ``#include "…"`` lines inlined (CuPy's
    on-disk kernel cache is keyed by the text, so an edited header must change it)."""
    def inline(m):
        return (KERNEL_DIR / m.group(1)).read_text()

    return re.sub(r'^#include "([^"]+)"\s*$', inline, (KERNEL_DIR / source).read_text(),
                  flags=re.M)


def _cupy_module(source: str):
    mod = _MODULES.get(source)
    if mod is None:
        import cupy

        mod = cupy.RawModule(code=read_source(source), options=NVRTC_OPTIONS,
                             name_expressions=name_expressions(source))
        _MODULES[source] = mod
    return mod


def host_module(source: str, names: list[str]):
    """The kernels of ``source`` for NumPy arrays. They exist only under the CPU
    emulation of the tests, which replaces this function (its signature is that of
    ``tests/kernel_emu/emu.load_module``)."""
    raise RuntimeError("the CUDA kernels run on CuPy arrays; got NumPy arrays "
                       "(tests run the kernels on the CPU through tests/kernel_emu)")


def kernel(source: str, name: str, xp, *types):
    """The compiled ``name<types…>`` from ``source`` for arrays of module ``xp``
    (``types``: the dtypes of the template arguments, e.g. ``float32`` → ``float``)."""
    expr = f"{name}<{', '.join(_CTYPES[np.dtype(t)] for t in types)}>"
    if xp is np:
        mod = host_module(source, name_expressions(source))
    else:
        mod = _cupy_module(source)
    return mod.get_function(expr)


def empty(xp, shape, dtype):
    """Every kernel output is allocated here (tests fill it with garbage to catch
    elements a kernel forgets to write)."""
    return xp.empty(shape, dtype=dtype)


def blocks_1d(n: int) -> int:
    """Blocks of a 1-D launch over ``n`` items: ``ceil(n / THREADS)``, between 1 and
    ``MAX_BLOCKS`` (grid-stride loops cover the rest)."""
    return int(max(1, min(MAX_BLOCKS, -(-n // THREADS))))


def run_1d(kern, n: int, args):
    """1-D launch of ``THREADS``-thread blocks covering ``n`` items."""
    kern((blocks_1d(n),), (THREADS,), tuple(args))


def float_dtype(op: str, *arrays):
    """The common dtype of ``arrays``, float32 or float64 (``TypeError`` naming ``op``
    otherwise, or when they differ)."""
    dt = np.dtype(arrays[0].dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{op}: the kernels take float32 or float64 arrays, got {dt}")
    for a in arrays[1:]:
        if np.dtype(a.dtype) != dt:
            raise TypeError(f"{op}: all arrays must have one dtype, got {dt} and {a.dtype}")
    return dt


def i32(v) -> np.int32:
    """A kernel's ``int`` argument."""
    return np.int32(int(v))


def i64(v) -> np.int64:
    """A kernel's ``long long`` argument."""
    return np.int64(int(v))


# --------------------------------------------------------------------------- layouts

def memory_order(x):
    """The axis permutation ``p`` such that ``x.transpose(p)`` is C-contiguous (x's memory
    order, outermost first), or None when x is not dense in any order."""
    if x.flags.c_contiguous:
        return tuple(range(x.ndim))
    p = tuple(sorted(range(x.ndim), key=lambda a: -abs(x.strides[a])))
    return p if x.transpose(p).flags.c_contiguous else None


def inverse_permutation(p):
    """``q`` with ``x.transpose(p).transpose(q)`` equal to ``x``."""
    inv = [0] * len(p)
    for i, a in enumerate(p):
        inv[a] = i
    return tuple(inv)


def dense(x, perm=None):
    """``(xc, perm)``: ``xc = x.transpose(perm)`` C-contiguous, copying only when x is not
    already dense in the order ``perm`` (default: x's own memory order, else C order)."""
    xp = get_xp(x)
    if perm is None:
        perm = memory_order(x) or tuple(range(x.ndim))
    return xp.ascontiguousarray(x.transpose(perm)), tuple(perm)


def pixels(x):
    """An NCHW array's memory as a C-contiguous channels-last ``(N', H, W, C')`` array:
    NCHW memory is ``(N·C, H, W, 1)``, channels-last memory is ``(N, H, W, C)`` (no copy in
    either case; anything else is copied to channels-last). Returns ``(xt, layout)``."""
    N, C, H, W = x.shape
    if x.flags.c_contiguous:
        return x.reshape(N * C, H, W, 1), "nchw"
    xp = get_xp(x)
    return xp.ascontiguousarray(x.transpose(0, 2, 3, 1)), "nhwc"


def from_pixels(yt, layout, N, C):
    """Inverse of ``pixels`` for a result ``yt (N', OH, OW, C')``: the NCHW view."""
    _, OH, OW, _ = yt.shape
    if layout == "nchw":
        return yt.reshape(N, C, OH, OW)
    return yt.transpose(0, 3, 1, 2)


def as_layout(a, layout):
    """An NCHW-shaped array in the memory order ``layout`` (copied only if needed)."""
    xp = get_xp(a)
    if layout == "nchw":
        return xp.ascontiguousarray(a)
    return xp.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def to4(a):
    """Prepend length-1 axes up to 4 dimensions (always a view, never a copy)."""
    return a[(None,) * (4 - a.ndim)]


def strides_of(a):
    """Element strides of ``a``'s axes, through a dense buffer: ``(buf, strides)`` with
    ``buf`` C-contiguous (``a`` itself transposed when it is dense, else a copy)."""
    xp = get_xp(a)
    if memory_order(a) is None:
        a = xp.ascontiguousarray(a)
    buf, order = dense(a)
    strides = [0] * a.ndim
    for d, ax in enumerate(order):
        strides[ax] = buf.strides[d] // buf.itemsize
    return buf, strides

