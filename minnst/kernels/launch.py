"""Launchers for the hand-written CUDA kernels (``*.cu`` beside this file).

Each ``op_gpu`` launcher has the signature and semantics of its NumPy twin (named in the
kernel's header comment) and owns the traps of raw kernels:

* raw kernels ignore strides: every array argument is C-contiguous (a copy is made only
  where the memory order cannot be described to the kernel);
* scalars go as ``np.int32`` / ``np.int64`` / the data's float type, never Python numbers;
* float32 and float64 only (``TypeError`` otherwise), all arrays of one dtype;
* outputs are allocated (``_empty``) before the launch.

Sources are compiled once per process by ``cupy.RawModule`` (templates instantiated for
float and double through ``name_expressions``) and cached in ``_MODULES``, the only
module-level mutable state. CuPy is imported lazily, inside the launch path: importing
minnst never imports it.

The same launchers run on NumPy arrays under the CPU emulation of the tests
(``tests/kernel_emu``), which replaces ``_host_module``: the kernels then run compiled by
g++ over their whole launch grid, so the launchers' argument handling is tested too.
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


def _host_module(source: str, names: list[str]):
    """Kernels on NumPy arrays exist only under the CPU emulation of the tests, which
    replaces this function."""
    raise RuntimeError("the CUDA kernels run on CuPy arrays; got NumPy arrays "
                       "(tests run the kernels on the CPU through tests/kernel_emu)")


def _kernel(source: str, name: str, xp, *types):
    """The compiled ``name<types…>`` from ``source`` for arrays of module ``xp``."""
    expr = f"{name}<{', '.join(_CTYPES[np.dtype(t)] for t in types)}>"
    if xp is np:
        mod = _host_module(source, name_expressions(source))
    else:
        mod = _cupy_module(source)
    return mod.get_function(expr)


def _empty(xp, shape, dtype):
    """Every kernel output is allocated here (tests fill it with garbage to catch
    elements a kernel forgets to write)."""
    return xp.empty(shape, dtype=dtype)


def _grid(n: int) -> int:
    """Blocks of a 1-D launch over ``n`` items (grid-stride loops cover the rest)."""
    return int(max(1, min(MAX_BLOCKS, -(-n // THREADS))))


def _launch(kern, n: int, args):
    """1-D launch of ``THREADS``-thread blocks covering ``n`` items."""
    kern((_grid(n),), (THREADS,), tuple(args))


def _float_dtype(op: str, *arrays):
    dt = np.dtype(arrays[0].dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{op}: the kernels take float32 or float64 arrays, got {dt}")
    for a in arrays[1:]:
        if np.dtype(a.dtype) != dt:
            raise TypeError(f"{op}: all arrays must have one dtype, got {dt} and {a.dtype}")
    return dt


def _i32(v) -> np.int32:
    return np.int32(int(v))


def _i64(v) -> np.int64:
    return np.int64(int(v))


# --------------------------------------------------------------------------- layouts

def memory_order(x):
    """The axis permutation ``p`` such that ``x.transpose(p)`` is C-contiguous (x's memory
    order, outermost first), or None when x is not dense in any order."""
    if x.flags.c_contiguous:
        return tuple(range(x.ndim))
    p = tuple(sorted(range(x.ndim), key=lambda a: -abs(x.strides[a])))
    return p if x.transpose(p).flags.c_contiguous else None


def _inverse(p):
    inv = [0] * len(p)
    for i, a in enumerate(p):
        inv[a] = i
    return tuple(inv)


def _dense(x, perm=None):
    """``(xc, perm)``: ``xc = x.transpose(perm)`` C-contiguous, copying only when x is not
    already dense in the order ``perm`` (default: x's own memory order, else C order)."""
    xp = get_xp(x)
    if perm is None:
        perm = memory_order(x) or tuple(range(x.ndim))
    return xp.ascontiguousarray(x.transpose(perm)), tuple(perm)


def _pixels(x):
    """An NCHW array's memory as a C-contiguous channels-last ``(N', H, W, C')`` array:
    NCHW memory is ``(N·C, H, W, 1)``, channels-last memory is ``(N, H, W, C)`` (no copy in
    either case; anything else is copied to channels-last). Returns ``(xt, layout)``."""
    N, C, H, W = x.shape
    if x.flags.c_contiguous:
        return x.reshape(N * C, H, W, 1), "nchw"
    xp = get_xp(x)
    return xp.ascontiguousarray(x.transpose(0, 2, 3, 1)), "nhwc"


def _from_pixels(yt, layout, N, C):
    """Inverse of ``_pixels`` for a result ``yt (N', OH, OW, C')``: the NCHW view."""
    _, OH, OW, _ = yt.shape
    if layout == "nchw":
        return yt.reshape(N, C, OH, OW)
    return yt.transpose(0, 3, 1, 2)


def _as_layout(a, layout):
    """An NCHW-shaped array in the memory order ``layout`` (copied only if needed)."""
    xp = get_xp(a)
    if layout == "nchw":
        return xp.ascontiguousarray(a)
    return xp.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------- convolution

def im2col_gpu(xpad, KH, KW, stride, i0, i1, OW, out=None):
    """Kernel twin of ``minnst.layers.conv._im2col``: receptive fields of output rows
    ``i0:i1`` of the channels-last padded input ``xpad`` (N, Hp, Wp, C) →
    cols (N, i1 − i0, OW, KH, KW, C), written into ``out`` when given (C-contiguous)."""
    xp = get_xp(xpad)
    dt = _float_dtype("im2col_gpu", xpad)
    xpad = xp.ascontiguousarray(xpad)
    N, Hp, Wp, C = xpad.shape
    rows = i1 - i0
    shape = (N, rows, OW, KH, KW, C)
    if out is None:
        out = _empty(xp, shape, dt)
    elif tuple(out.shape) != shape or out.dtype != dt or not out.flags.c_contiguous:
        raise ValueError(f"im2col_gpu: out must be a C-contiguous {dt} array of shape {shape}")
    n = N * rows * OW * KH * KW * C
    _launch(_kernel("im2col.cu", "im2col", xp, dt), n,
            (xpad, out, _i32(N), _i32(Hp), _i32(Wp), _i32(C), _i32(KH), _i32(KW),
             _i32(stride), _i32(i0), _i32(rows), _i32(OW)))
    return out


def col2im_add_gpu(dxpad, cols, stride, i0):
    """Kernel twin of ``minnst.layers.conv._col2im_add``: add the adjoint of im2col of
    ``cols`` (N, rows, OW, KH, KW, C) into the channels-last ``dxpad`` (N, Hp, Wp, C), in
    place (through a contiguous copy when ``dxpad`` is not contiguous)."""
    xp = get_xp(dxpad)
    dt = _float_dtype("col2im_add_gpu", dxpad, cols)
    cols = xp.ascontiguousarray(cols)
    N, rows, OW, KH, KW, C = cols.shape
    _, Hp, Wp, _ = dxpad.shape
    target = dxpad if dxpad.flags.c_contiguous else xp.ascontiguousarray(dxpad)
    band = min(Hp, (i0 + rows - 1) * stride + KH) - i0 * stride
    if band > 0:
        _launch(_kernel("im2col.cu", "col2im_add", xp, dt), N * band * Wp * C,
                (target, cols, _i32(N), _i32(Hp), _i32(Wp), _i32(C), _i32(KH), _i32(KW),
                 _i32(stride), _i32(i0), _i32(rows), _i32(OW)))
    if target is not dxpad:
        dxpad[...] = target


# --------------------------------------------------------------------------- padding

def _check_pad(shape, pad, mode, axes):
    """Validate as ``pad2d`` does (``shape``: the unpadded shape); returns the axes."""
    from ..layers.padding import _check

    nd = len(shape)
    ah, aw = (a % nd for a in axes)
    if nd > 4 or ah == aw:
        raise ValueError(f"pad2d_gpu: 2 distinct axes of an array of at most 4 dimensions, "
                         f"got axes {axes} of shape {tuple(shape)}")
    _check(min(shape[ah], shape[aw]), pad, mode)
    return ah, aw


def _to4(a):
    """Prepend length-1 axes up to 4 dimensions (always a view, never a copy)."""
    return a[(None,) * (4 - a.ndim)]


def _strides_of(a):
    """Element strides of ``a``'s axes, through a dense buffer: ``(buf, strides)`` with
    ``buf`` C-contiguous (``a`` itself transposed when it is dense, else a copy)."""
    xp = get_xp(a)
    if memory_order(a) is None:
        a = xp.ascontiguousarray(a)
    buf, order = _dense(a)
    strides = [0] * a.ndim
    for d, ax in enumerate(order):
        strides[ax] = buf.strides[d] // buf.itemsize
    return buf, strides


def _pad_launch(x4, y4, pads, offsets, mode):
    """Fill the 4-D ``y4`` (dense, any order) from ``x4``: y4[c] = x4[r(c + offset − pad)]
    per axis, by the pad2d_forward kernel with the loop in y4's memory order."""
    xp = get_xp(x4)
    dt = np.dtype(x4.dtype)
    yc, order = _dense(y4)  # a view of y4: the kernel writes it contiguously
    xc, xstr = _strides_of(x4)
    if yc.size:
        _launch(_kernel("pad.cu", "pad2d_forward", xp, dt), yc.size,
                (xc, yc, _i32(mode == "reflect"),
                 *(_i32(yc.shape[d]) for d in range(4)),
                 *(_i32(x4.shape[order[d]]) for d in range(4)),
                 *(_i32(pads[order[d]]) for d in range(4)),
                 *(_i32(offsets[order[d]]) for d in range(4)),
                 *(_i64(xstr[order[d]]) for d in range(4))))


def pad2d_gpu(x, pad: int, mode: str = "zero", axes=(2, 3), out=None):
    """Kernel twin of ``minnst.layers.padding.pad2d`` (zero or reflection padding of two
    axes, into ``out`` when given: any dense layout, e.g. a transposed channels-last
    buffer)."""
    xp = get_xp(x)
    ah, aw = _check_pad(x.shape, pad, mode, axes)
    dt = _float_dtype("pad2d_gpu", x)
    shape = list(x.shape)
    shape[ah] += 2 * pad
    shape[aw] += 2 * pad
    if out is None:
        out = _empty(xp, shape, dt)
    elif tuple(out.shape) != tuple(shape) or out.dtype != dt:
        raise ValueError(f"pad2d_gpu: out must be a {dt} array of shape {tuple(shape)}")
    lead = 4 - x.ndim
    pads = [0] * 4
    pads[ah + lead] = pads[aw + lead] = pad
    target = out if memory_order(out) is not None else _empty(xp, shape, dt)
    _pad_launch(_to4(x), _to4(target), pads, (0, 0, 0, 0), mode)
    if target is not out:
        out[...] = target
    return out


def padded_rows_cl_gpu(x, r0: int, r1: int, pad: int, mode: str = "zero"):
    """Kernel twin of ``minnst.layers.padding.padded_rows_cl``: rows ``r0:r1`` (padded
    coordinates) of ``x`` (N, C, H, W) padded by ``pad``, as a new channels-last
    (N, r1 − r0, W + 2·pad, C) array."""
    xp = get_xp(x)
    N, C, H, W = x.shape
    _check_pad(x.shape, pad, mode, (2, 3))
    dt = _float_dtype("padded_rows_cl_gpu", x)
    out = _empty(xp, (N, r1 - r0, W + 2 * pad, C), dt)
    # the kernel's axes are x's (N, C, H, W); out seen through them is out.transpose(0, 3, 1, 2)
    _pad_launch(x, out.transpose(0, 3, 1, 2), (0, 0, pad, pad), (0, 0, r0, 0), mode)
    return out


def pad2d_backward_gpu(dxp, pad: int, mode: str = "zero", axes=(2, 3), overwrite: bool = False):
    """Kernel twin of ``minnst.layers.padding.pad2d_backward``: the adjoint of ``pad2d``.
    As there, zero padding gives the interior view of ``dxp``; reflection gives a new
    array in the memory order of ``dxp`` (the kernel gathers the folded borders, so
    ``overwrite`` is accepted and not needed)."""
    xp = get_xp(dxp)
    dt = _float_dtype("pad2d_backward_gpu", dxp)
    shape = list(dxp.shape)
    for a in {a % dxp.ndim for a in axes}:
        shape[a] -= 2 * pad
    ah, aw = _check_pad(shape, pad, mode, axes)
    if pad == 0 or mode == "zero":
        idx = [slice(None)] * dxp.ndim
        idx[ah] = slice(pad, pad + shape[ah])
        idx[aw] = slice(pad, pad + shape[aw])
        return dxp[tuple(idx)]
    dc, dstr = _strides_of(_to4(dxp))
    order = memory_order(_to4(dxp)) or tuple(range(4))
    lead = 4 - dxp.ndim
    pads = [0] * 4
    pads[ah + lead] = pads[aw + lead] = pad
    shape4 = (1,) * lead + tuple(shape)
    # dx in dxp's memory order, written contiguously
    dxc = _empty(xp, tuple(shape4[a] for a in order), dt)
    n = int(np.prod(dxc.shape))
    if n:
        _launch(_kernel("pad.cu", "pad2d_backward", xp, dt), n,
                (dc, dxc, _i32(mode == "reflect"),
                 *(_i32(dxc.shape[d]) for d in range(4)),
                 *(_i32(pads[order[d]]) for d in range(4)),
                 *(_i64(dstr[order[d]]) for d in range(4))))
    return dxc.transpose(_inverse(order))[(0,) * lead]  # drop the prepended axes (a view)


# --------------------------------------------------------------------------- ReLU

def relu_forward_gpu(x):
    """Kernel twin of ``minnst.layers.activations.relu_forward``: ``(y, y)``, y in x's
    memory order."""
    xp = get_xp(x)
    dt = _float_dtype("relu_forward_gpu", x)
    xc, perm = _dense(x)
    yc = _empty(xp, xc.shape, dt)
    if xc.size:
        _launch(_kernel("relu.cu", "relu_forward", xp, dt), xc.size, (xc, yc, _i64(xc.size)))
    y = yc.transpose(_inverse(perm))
    return y, y


def relu_backward_gpu(dy, cache):
    """Kernel twin of ``minnst.layers.activations.relu_backward``: ``dy · [y > 0]``, in the
    memory order of the cached ``y``."""
    xp = get_xp(dy)
    y = cache
    dt = _float_dtype("relu_backward_gpu", dy, y)
    yc, perm = _dense(y)
    dyc, _ = _dense(dy, perm)
    dxc = _empty(xp, yc.shape, dt)
    if yc.size:
        _launch(_kernel("relu.cu", "relu_backward", xp, dt), yc.size,
                (dyc, yc, dxc, _i64(yc.size)))
    return dxc.transpose(_inverse(perm))


# --------------------------------------------------------------------------- pooling

def _pool_args(N, H, W, C, OH, OW, k, s):
    return tuple(_i32(v) for v in (N, H, W, C, OH, OW, k, s))


def maxpool2d_forward_gpu(x, kernel=2, stride=None):
    """Kernel twin of ``minnst.layers.pooling.maxpool2d_forward``: ``(y, MaxPoolCache)``
    with the same (N, OH, OW, C) index cache."""
    from ..layers.pooling import MaxPoolCache, _check, _index_dtype

    stride, OH, OW = _check(x, kernel, stride)
    xp = get_xp(x)
    dt = _float_dtype("maxpool2d_forward_gpu", x)
    N, C = x.shape[:2]
    xt, layout = _pixels(x)
    Np, H, W, Cp = xt.shape
    it = np.dtype(_index_dtype(kernel))
    yt = _empty(xp, (Np, OH, OW, Cp), dt)
    idxt = _empty(xp, (Np, OH, OW, Cp), it)
    if yt.size:
        _launch(_kernel("pool.cu", "maxpool2d_forward", xp, dt, it), yt.size,
                (xt, yt, idxt) + _pool_args(Np, H, W, Cp, OH, OW, kernel, stride))
    idx = _from_pixels(idxt, layout, N, C).transpose(0, 2, 3, 1)  # (N, OH, OW, C)
    return _from_pixels(yt, layout, N, C), MaxPoolCache(idx, tuple(x.shape), kernel, stride)


def maxpool2d_backward_gpu(dy, cache):
    """Kernel twin of ``minnst.layers.pooling.maxpool2d_backward``."""
    xp = get_xp(dy)
    idx, x_shape, k, stride = cache
    dt = _float_dtype("maxpool2d_backward_gpu", dy)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    dyt, layout = _pixels(dy)
    idxt, _ = _pixels(_as_layout(idx.transpose(0, 3, 1, 2), layout))
    Np, Cp = dyt.shape[0], dyt.shape[3]
    dxt = _empty(xp, (Np, H, W, Cp), dt)
    if dxt.size:
        _launch(_kernel("pool.cu", "maxpool2d_backward", xp, dt, idxt.dtype), dxt.size,
                (dyt, idxt, dxt) + _pool_args(Np, H, W, Cp, OH, OW, k, stride))
    return _from_pixels(dxt, layout, N, C)


def avgpool2d_forward_gpu(x, kernel=2, stride=None):
    """Kernel twin of ``minnst.layers.pooling.avgpool2d_forward``."""
    from ..layers.pooling import AvgPoolCache, _check

    stride, OH, OW = _check(x, kernel, stride)
    xp = get_xp(x)
    dt = _float_dtype("avgpool2d_forward_gpu", x)
    N, C = x.shape[:2]
    xt, layout = _pixels(x)
    Np, H, W, Cp = xt.shape
    yt = _empty(xp, (Np, OH, OW, Cp), dt)
    if yt.size:
        _launch(_kernel("pool.cu", "avgpool2d_forward", xp, dt), yt.size,
                (xt, yt) + _pool_args(Np, H, W, Cp, OH, OW, kernel, stride))
    return _from_pixels(yt, layout, N, C), AvgPoolCache(tuple(x.shape), kernel, stride)


def avgpool2d_backward_gpu(dy, cache):
    """Kernel twin of ``minnst.layers.pooling.avgpool2d_backward``."""
    xp = get_xp(dy)
    x_shape, k, stride = cache
    dt = _float_dtype("avgpool2d_backward_gpu", dy)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    dyt, layout = _pixels(dy)
    Np, Cp = dyt.shape[0], dyt.shape[3]
    dxt = _empty(xp, (Np, H, W, Cp), dt)
    if dxt.size:
        _launch(_kernel("pool.cu", "avgpool2d_backward", xp, dt), dxt.size,
                (dyt, dxt) + _pool_args(Np, H, W, Cp, OH, OW, k, stride))
    return _from_pixels(dxt, layout, N, C)


# --------------------------------------------------------------------------- upsampling

def upsample_nearest2d_forward_gpu(x, scale=2):
    """Kernel twin of ``minnst.layers.resampling.upsample_nearest2d_forward``."""
    from ..layers.resampling import UpsampleCache

    if x.ndim != 4:
        raise ValueError(f"upsampling expects NCHW input, got shape {tuple(x.shape)}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    s = int(scale)
    xp = get_xp(x)
    dt = _float_dtype("upsample_nearest2d_forward_gpu", x)
    N, C = x.shape[:2]
    xt, layout = _pixels(x)
    Np, H, W, Cp = xt.shape
    yt = _empty(xp, (Np, H * s, W * s, Cp), dt)
    if yt.size:
        _launch(_kernel("upsample.cu", "upsample_nearest2d_forward", xp, dt), yt.size,
                (xt, yt, _i32(Np), _i32(H), _i32(W), _i32(Cp), _i32(s)))
    return _from_pixels(yt, layout, N, C), UpsampleCache(s)


def upsample_nearest2d_backward_gpu(dy, cache):
    """Kernel twin of ``minnst.layers.resampling.upsample_nearest2d_backward``."""
    xp = get_xp(dy)
    s = cache.scale
    dt = _float_dtype("upsample_nearest2d_backward_gpu", dy)
    N, C, SH, SW = dy.shape
    dyt, layout = _pixels(dy)
    Np, Cp = dyt.shape[0], dyt.shape[3]
    H, W = SH // s, SW // s
    dxt = _empty(xp, (Np, H, W, Cp), dt)
    if dxt.size:
        _launch(_kernel("upsample.cu", "upsample_nearest2d_backward", xp, dt), dxt.size,
                (dyt, dxt, _i32(Np), _i32(H), _i32(W), _i32(Cp), _i32(s)))
    return _from_pixels(dxt, layout, N, C)


# --------------------------------------------------------------------------- normalisation

_NORM_BLOCK_NHWC = (32, 8)   # 32 contiguous channels × 8 lanes of pixels
_NORM_BLOCK_NCHW = (1, 256)  # one channel plane, 256 lanes of contiguous pixels


def _norm_geometry(x, per_sample: bool):
    """``(xc, perm, G, C, R, P, strides, block)`` for the norm kernels on NCHW ``x``."""
    N, C, H, W = x.shape
    if x.flags.c_contiguous:
        xc, perm = x, (0, 1, 2, 3)
        sN, sC, sP = C * H * W, H * W, 1
        block = _NORM_BLOCK_NCHW
    else:
        xc, perm = _dense(x, (0, 2, 3, 1))
        sN, sC, sP = H * W * C, 1, C
        block = _NORM_BLOCK_NHWC
    P = H * W
    if per_sample:   # instance norm: a group per sample
        G, R, sG, sR = N, 1, sN, 0
    else:            # batch norm: one group, the samples are reduced over
        G, R, sG, sR = 1, N, 0, sN
    return xc, perm, G, C, R, P, (sG, sC, sR, sP), block


def _norm_grid(C, G, block):
    return (max(1, min(MAX_BLOCKS, -(-C // block[0]))), max(1, min(MAX_BLOCKS, G)))


def _normalize_gpu(x, gamma, beta, eps, per_sample):
    from ..layers.normalization import NormCache, _BATCH_AXES, _INSTANCE_AXES

    if x.ndim != 4:
        raise ValueError(f"normalisation expects NCHW input, got shape {tuple(x.shape)}")
    xp = get_xp(x)
    dt = _float_dtype("normalisation kernel", x)
    N, C = x.shape[:2]

    def channel(a):
        a = xp.ascontiguousarray(xp.asarray(a, dtype=dt))
        if a.shape != (C,):
            raise ValueError(f"per-channel array of shape {tuple(a.shape)} for {C} channels")
        return a

    g = channel(gamma) if gamma is not None else xp.ones(1, dtype=dt)
    b = channel(beta) if beta is not None else xp.zeros(1, dtype=dt)
    xc, perm, G, C, R, P, strides, block = _norm_geometry(x, per_sample)
    y = _empty(xp, xc.shape, dt)
    xhat = _empty(xp, xc.shape, dt)
    mean, var, inv_std = (_empty(xp, (G, C), dt) for _ in range(3))
    if xc.size:
        kern = _kernel("norm.cu", "norm_forward", xp, dt)
        kern(_norm_grid(C, G, block), block,
             (xc, g, b, y, xhat, mean, var, inv_std,
              _i32(G), _i32(C), _i32(R), _i32(P), *(_i64(s) for s in strides),
              dt.type(eps), _i32(gamma is not None), _i32(beta is not None)))
    inv = _inverse(perm)
    axes = _INSTANCE_AXES if per_sample else _BATCH_AXES
    cache = NormCache(xhat.transpose(inv), inv_std.reshape(G, C, 1, 1),
                      g if gamma is not None else None, beta is not None, axes)
    return y.transpose(inv), cache, mean, var


def _normalize_backward_gpu(dy, cache):
    from ..layers.normalization import _INSTANCE_AXES

    xp = get_xp(dy)
    xhat, inv_std, gamma, has_beta, axes = cache
    dt = _float_dtype("normalisation kernel", dy, xhat)
    per_sample = tuple(axes) == _INSTANCE_AXES
    xc, perm, G, C, R, P, strides, block = _norm_geometry(xhat, per_sample)
    dyc, _ = _dense(dy, perm)
    g = xp.ascontiguousarray(xp.asarray(gamma, dtype=dt)) if gamma is not None else xp.ones(1, dtype=dt)
    inv = xp.ascontiguousarray(inv_std.reshape(G, C))
    dx = _empty(xp, xc.shape, dt)
    s1 = _empty(xp, (G, C), dt)
    s2 = _empty(xp, (G, C), dt)
    if xc.size:
        kern = _kernel("norm.cu", "norm_backward", xp, dt)
        kern(_norm_grid(C, G, block), block,
             (dyc, xc, g, inv, dx, s1, s2,
              _i32(G), _i32(C), _i32(R), _i32(P), *(_i64(s) for s in strides),
              _i32(gamma is not None)))
    dgamma = s2.sum(axis=0) if gamma is not None else None
    dbeta = s1.sum(axis=0) if has_beta else None
    return dx.transpose(_inverse(perm)), dgamma, dbeta


def instance_norm_forward_gpu(x, gamma, beta, eps=1e-5):
    """Kernel twin of ``minnst.layers.normalization.instance_norm_forward``."""
    y, cache, _, _ = _normalize_gpu(x, gamma, beta, eps, per_sample=True)
    return y, cache


def instance_norm_backward_gpu(dy, cache):
    """Kernel twin of ``minnst.layers.normalization.instance_norm_backward``."""
    return _normalize_backward_gpu(dy, cache)


def batch_norm_forward_gpu(x, gamma, beta, eps=1e-5):
    """Kernel twin of ``minnst.layers.normalization.batch_norm_forward`` (training mode)."""
    from ..layers.normalization import BatchNormCache

    m = x.shape[0] * x.shape[2] * x.shape[3]
    if m < 2:
        raise ValueError(f"batch norm needs more than one value per channel, got shape {tuple(x.shape)}")
    y, norm, mean, var = _normalize_gpu(x, gamma, beta, eps, per_sample=False)
    return y, BatchNormCache(norm, mean.reshape(-1), var.reshape(-1) * (m / (m - 1)))


def batch_norm_backward_gpu(dy, cache):
    """Kernel twin of ``minnst.layers.normalization.batch_norm_backward``."""
    return _normalize_backward_gpu(dy, cache.norm)


# --------------------------------------------------------------------------- losses

def _reduce(partial) -> float:
    return float(partial.sum())


def content_loss_gpu(F, P, normalization: str = "gatys", relu_mask: bool = False):
    """Kernel twin of ``minnst.losses.content_loss``: ``(value, dL/dF)``. With
    ``relu_mask`` the gradient is also masked by ``F > 0`` (F being a ReLU's output), the
    fused form of ``relu_backward(content_loss(F, P)[1], F)``."""
    from ..losses import GATYS, _check_norm

    _check_norm(normalization)
    xp = get_xp(F)
    dt = _float_dtype("content_loss_gpu", F)
    P = xp.asarray(P, dtype=dt)
    Fc, perm = _dense(F)
    if P.shape == F.shape or (P.ndim == F.ndim and P.shape[0] == 1
                              and P.shape[1:] == F.shape[1:] and perm[0] == 0):
        Pc, _ = _dense(P, perm)   # batch outermost: P repeats every Pc.size elements
    else:
        Pc, _ = _dense(xp.broadcast_to(P, F.shape), perm)
    n = Fc.size
    if normalization == GATYS:
        scale = 1.0
    else:
        k = F.size  # N·C·H·W
        scale = 2.0 / k
    D = _empty(xp, Fc.shape, dt)
    blocks = _grid(n)
    partial = _empty(xp, (blocks,), np.float64)
    _launch(_kernel("losses.cu", "content_loss", xp, dt), n,
            (Fc, Pc, D, partial, _i64(n), _i64(max(1, Pc.size)), dt.type(scale), _i32(relu_mask)))
    sq = _reduce(partial)
    value = 0.5 * sq if normalization == GATYS else sq / k
    return value, D.transpose(_inverse(perm))


def style_loss_gpu(F, A, normalization: str = "gatys"):
    """Kernel twin of ``minnst.losses.style_loss``: ``(E, dE/dF)``. The two matrix
    products (G = F Fᵀ and the gradient D·F) run on cuBLAS through ``@``; the residual
    D = (G − A)·scale and Σ (G − A)² in between is the kernel."""
    from ..losses import GATYS, _check_norm

    _check_norm(normalization)
    xp = get_xp(F)
    dt = _float_dtype("style_loss_gpu", F)
    N, C, H, W = F.shape
    M = H * W
    A = xp.ascontiguousarray(xp.asarray(A, dtype=dt))
    if A.shape not in ((1, C, C), (N, C, C)):
        raise ValueError(f"style_loss_gpu: Gram target of shape {tuple(A.shape)} for {C} channels")
    channels_last = not F.flags.c_contiguous and F.transpose(0, 2, 3, 1).flags.c_contiguous
    if channels_last:
        Ft = F.transpose(0, 2, 3, 1).reshape(N, M, C)  # (N, M, C), a view
        G = Ft.transpose(0, 2, 1) @ Ft                  # (N, C, C)
    else:
        Fm = xp.ascontiguousarray(F).reshape(N, C, M)
        G = Fm @ Fm.transpose(0, 2, 1)
    G = xp.ascontiguousarray(G)
    if normalization == GATYS:
        gdiv, scale = 1.0, 1.0 / (C * C * M * M)
    else:
        gdiv, scale = float(C * H * W), 4.0 / (C * M * N)
    D = _empty(xp, G.shape, dt)
    blocks = _grid(G.size)
    partial = _empty(xp, (blocks,), np.float64)
    _launch(_kernel("losses.cu", "style_residual", xp, dt), G.size,
            (G, A, D, partial, _i64(G.size), _i64(A.size), dt.type(gdiv), dt.type(scale)))
    sq = _reduce(partial)
    value = sq * scale / 4.0 if normalization == GATYS else sq / N
    if channels_last:
        grad = (Ft @ D).reshape(N, H, W, C).transpose(0, 3, 1, 2)  # D symmetric: (D F)ᵀ = Fᵀ D
    else:
        grad = (D @ Fm).reshape(F.shape)
    return value, grad


def tv_loss_gpu(x, axes=(-3, -2)):
    """Kernel twin of ``minnst.losses.tv_loss``: ``(value, grad)``."""
    xp = get_xp(x)
    dt = _float_dtype("tv_loss_gpu", x)
    ah, aw = sorted(a % x.ndim for a in axes)  # TV is symmetric in its two axes
    if ah == aw:
        raise ValueError(f"tv_loss_gpu: two distinct axes, got {axes}")
    xc = xp.ascontiguousarray(x)
    shape = xc.shape
    B = int(np.prod(shape[:ah]))
    K1 = int(np.prod(shape[ah + 1:aw]))
    K2 = int(np.prod(shape[aw + 1:]))
    grad = _empty(xp, shape, dt)
    blocks = _grid(xc.size)
    partial = _empty(xp, (blocks,), np.float64)
    if xc.size:
        _launch(_kernel("losses.cu", "tv_loss", xp, dt), xc.size,
                (xc, grad, partial, _i32(B), _i32(shape[ah]), _i32(K1), _i32(shape[aw]), _i32(K2)))
        value = _reduce(partial)
    else:
        value = 0.0
    return value, grad
