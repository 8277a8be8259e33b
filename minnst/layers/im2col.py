"""The im2col lowering of a convolution and its adjoint, col2im, in channels-last layout.

For a padded input ``xpad`` (N, Hp, Wp, C), a kernel of KH × KW taps and stride s, the
receptive fields of output rows ``i0 ≤ i < i1`` (all OW columns) are

    cols[n, r, j, u, v, c] = xpad[n, (i0 + r)·s + u, j·s + v, c]        r = i − i0

an (N, rows, OW, KH, KW, C) array, i.e. an (N·rows·OW, KH·KW·C) matrix with one receptive
field per row: a convolution is then ``cols @ Wᵀ`` with W the (F, KH·KW·C) weights. Its
adjoint (a gather's adjoint is a scatter-add) adds every element of ``dcols`` back onto
the input pixel it was read from:

    dxpad[n, p, q, c] += Σ_{r,u: (i0+r)·s + u = p} Σ_{j,v: j·s + v = q} dcols[n, r, j, u, v, c]

``im2col`` and ``col2im_add`` dispatch on the device of their array to the NumPy code
(``*_cpu``, the reference) or to the launcher of kernels/im2col.cu (``*_gpu``), which
takes the same arguments and gives the same bits. docs/layers.md derives the lowering;
``tests/test_conv.py`` checks it inside the convolution against ``conv2d_naive``.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp, is_gpu_array
from ..kernels import launch


def im2col(xpad, KH, KW, stride, i0, i1, OW, out=None):
    """Receptive fields of output rows ``i0:i1`` of the channels-last padded input
    ``xpad`` (N, Hp, Wp, C) → cols (N, i1 − i0, OW, KH, KW, C), written into ``out``
    (C-contiguous, that shape and dtype) when given."""
    if is_gpu_array(xpad):
        return im2col_gpu(xpad, KH, KW, stride, i0, i1, OW, out)
    return im2col_cpu(xpad, KH, KW, stride, i0, i1, OW, out)


def col2im_add(dxpad, cols, stride, i0):
    """Adjoint of ``im2col``: add cols (N, rows, OW, KH, KW, C) of output rows
    ``i0:i0 + rows`` into the channels-last ``dxpad`` (N, Hp, Wp, C), in place."""
    if is_gpu_array(dxpad):
        return col2im_add_gpu(dxpad, cols, stride, i0)
    return col2im_add_cpu(dxpad, cols, stride, i0)


# --------------------------------------------------------------------------- NumPy

def im2col_cpu(xpad, KH, KW, stride, i0, i1, OW, out=None, col_stride=None):
    """``im2col`` as one copy from a strided view of ``xpad``: the view's element
    [n, r, j, u, v, c] sits at xpad[n, (i0 + r)·s + u, j·t + v, c], t = ``col_stride``
    (default s; the thin convolutions' fields of T output columns take s = 1, t = T)."""
    N, C = xpad.shape[0], xpad.shape[3]
    rows = i1 - i0
    t = stride if col_stride is None else col_stride
    if (OW - 1) * t + KW > xpad.shape[2]:
        raise ValueError(f"im2col_cpu: {OW} fields of width {KW} at a step of {t} need "
                         f"{(OW - 1) * t + KW} columns, the input has {xpad.shape[2]}")
    if out is None:
        out = np.empty((N, rows, OW, KH, KW, C), dtype=xpad.dtype)
    sn, sh, sw, sc = xpad.strides
    view = np.lib.stride_tricks.as_strided(
        xpad[:, i0 * stride:], (N, rows, OW, KH, KW, C),
        (sn, sh * stride, sw * t, sh, sw, sc), writeable=False)
    out[...] = view
    return out


def col2im_add_cpu(dxpad, cols, stride, i0):
    """``col2im_add`` as one strided add per tap (u, v): tap (u, v) of output (r, j)
    lands on input pixel ((i0 + r)·s + u, j·s + v), so the taps' targets are strided
    slices of dxpad. Taps in the order u outer, v inner (the kernel sums in this order)."""
    N, rows, OW, KH, KW, C = cols.shape
    for u in range(KH):
        r0 = i0 * stride + u
        for v in range(KW):
            dxpad[:, r0:r0 + stride * (rows - 1) + 1:stride, v:v + stride * (OW - 1) + 1:stride, :] += \
                cols[:, :, :, u, v, :]


# --------------------------------------------------------------------------- CUDA (kernels/im2col.cu)

def im2col_gpu(xpad, KH, KW, stride, i0, i1, OW, out=None):
    """``im2col`` by the kernel ``im2col``: one thread per element of cols."""
    xp = get_xp(xpad)
    dt = launch.float_dtype("im2col_gpu", xpad)
    xpad = xp.ascontiguousarray(xpad)
    N, Hp, Wp, C = xpad.shape
    rows = i1 - i0
    shape = (N, rows, OW, KH, KW, C)
    if out is None:
        out = launch.empty(xp, shape, dt)
    elif tuple(out.shape) != shape or out.dtype != dt or not out.flags.c_contiguous:
        raise ValueError(f"im2col_gpu: out must be a C-contiguous {dt} array of shape {shape}")
    i32 = launch.i32
    launch.run_1d(launch.kernel("im2col.cu", "im2col", xp, dt), N * rows * OW * KH * KW * C,
                  (xpad, out, i32(N), i32(Hp), i32(Wp), i32(C), i32(KH), i32(KW),
                   i32(stride), i32(i0), i32(rows), i32(OW)))
    return out


def col2im_add_gpu(dxpad, cols, stride, i0):
    """``col2im_add`` by the kernel ``col2im_add``: a gather, one thread per element of
    the band of dxpad rows that the cols reach (no atomics); through a contiguous copy
    when ``dxpad`` is not contiguous."""
    xp = get_xp(dxpad)
    dt = launch.float_dtype("col2im_add_gpu", dxpad, cols)
    cols = xp.ascontiguousarray(cols)
    N, rows, OW, KH, KW, C = cols.shape
    _, Hp, Wp, _ = dxpad.shape
    target = dxpad if dxpad.flags.c_contiguous else xp.ascontiguousarray(dxpad)
    band = min(Hp, (i0 + rows - 1) * stride + KH) - i0 * stride
    if band > 0:
        i32 = launch.i32
        launch.run_1d(launch.kernel("im2col.cu", "col2im_add", xp, dt), N * band * Wp * C,
                      (target, cols, i32(N), i32(Hp), i32(Wp), i32(C), i32(KH), i32(KW),
                       i32(stride), i32(i0), i32(rows), i32(OW)))
    if target is not dxpad:
        dxpad[...] = target
