"""Spatial padding (zero or reflection) and its adjoint, for any two axes.

Forward: ``xp[..., i, j] = x[..., r(i − p), r(j − p)]`` where ``r`` is the identity inside
and mirrors without repeating the edge outside (``reflect``: … x2 x1 | x0 x1 x2 … ), or
zero outside (``zero``). The backward is the adjoint: the gradient of the interior plus,
for reflection, each border gradient folded back onto the element it copied.

The axes are arguments because the CPU convolution pads in channels-last layout
(N, H, W, C) while the layer API is NCHW.

Each public function dispatches on the array's device to ``op_cpu`` (array code, the
reference) or ``op_gpu`` (the launcher of kernels/pad.cu); both validate with
``check_pad``.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp, is_gpu_array
from ..kernels import launch
from .affine import apply_rows

PAD_MODES = ("zero", "reflect")


def check_pad(size: int, pad: int, mode: str):
    """Validate a padding of ``pad`` in ``mode`` of a dimension of length ``size``
    (reflection needs ``pad < size``)."""
    if mode not in PAD_MODES:
        raise ValueError(f"unknown padding mode {mode!r}: choose one of {PAD_MODES}")
    if pad < 0:
        raise ValueError(f"padding must be >= 0, got {pad}")
    if mode == "reflect" and pad >= size:
        raise ValueError(f"reflection padding {pad} needs a dimension larger than {pad}, got {size}")


def _sl(ndim, axis, s):
    idx = [slice(None)] * ndim
    idx[axis] = s
    return tuple(idx)


def pad2d(x, pad: int, mode: str = "zero", axes=(2, 3), out=None):
    """Pad ``x`` by ``pad`` on both sides of the two ``axes``.

    ``out``: an optional pre-allocated array of the padded shape (any layout, e.g. a
    transposed view); the function fills it completely and returns it.
    """
    if is_gpu_array(x):
        return pad2d_gpu(x, pad, mode, axes, out)
    return pad2d_cpu(x, pad, mode, axes, out)


def pad2d_backward(dxp, pad: int, mode: str = "zero", axes=(2, 3), overwrite: bool = False):
    """Adjoint of ``pad2d``: ``(…, H+2p, W+2p) -> (…, H, W)``.

    For zero padding this is the interior *view* of ``dxp``. Reflection padding folds the
    border gradients onto the interior of a copy, or of ``dxp`` itself when
    ``overwrite`` (a caller that owns the buffer saves a full-size copy).
    """
    if is_gpu_array(dxp):
        return pad2d_backward_gpu(dxp, pad, mode, axes, overwrite)
    return pad2d_backward_cpu(dxp, pad, mode, axes, overwrite)


def padded_rows_cl(x, r0: int, r1: int, pad: int, mode: str = "zero", affine=None, mask=None):
    """Rows ``r0:r1`` (in padded coordinates) of ``x`` padded by ``pad``, channels-last.

    x: (N, C, H, W) (any memory order) -> (N, r1 − r0, W + 2·pad, C), a new array equal to
    ``pad2d(x, pad, mode).transpose(0, 2, 3, 1)[:, r0:r1]`` without ever building the whole
    padded image: the convolutions pad band by band so that no temporary grows with the
    image.

    ``affine``: an ``affine.ChannelAffine`` of x's images (NumPy only); the rows are then
    those of its output, ``affine.apply()``, mapped in the band (see ``affine``).
    ``mask`` (x's shape, NumPy, zero padding only): the rows are those of x · (mask > 0),
    ``relu_backward``'s multiply (the same bits), for the input gradient of a convolution
    that a ReLU followed.
    """
    if is_gpu_array(x):
        if affine is not None or mask is not None:
            raise ValueError("padded_rows_cl: a ChannelAffine or a mask is applied on the CPU only")
        return padded_rows_cl_gpu(x, r0, r1, pad, mode)
    return padded_rows_cl_cpu(x, r0, r1, pad, mode, affine, mask)


# --------------------------------------------------------------------------- array code

def pad2d_cpu(x, pad: int, mode: str = "zero", axes=(2, 3), out=None):
    """``pad2d`` in array code: the interior copied, then the borders zeroed or mirrored
    (rows first, then whole columns)."""
    xp = get_xp(x)
    ah, aw = axes
    H, W = x.shape[ah], x.shape[aw]
    check_pad(min(H, W), pad, mode)
    shape = list(x.shape)
    shape[ah] += 2 * pad
    shape[aw] += 2 * pad
    if out is None:
        out = xp.empty(shape, dtype=x.dtype)
    if pad == 0:
        out[...] = x
        return out
    nd = x.ndim
    inner = _sl(nd, ah, slice(pad, pad + H))
    out[_sl(nd, aw, slice(pad, pad + W))][inner] = x
    if mode == "zero":
        out[_sl(nd, ah, slice(0, pad))] = 0
        out[_sl(nd, ah, slice(pad + H, None))] = 0
        out[_sl(nd, aw, slice(0, pad))] = 0
        out[_sl(nd, aw, slice(pad + W, None))] = 0
        return out
    # reflection: rows first (interior columns only), then whole columns
    for i in range(pad):
        rows = out[_sl(nd, aw, slice(pad, pad + W))]
        rows[_sl(nd, ah, pad - 1 - i)] = rows[_sl(nd, ah, pad + 1 + i)]
        rows[_sl(nd, ah, pad + H + i)] = rows[_sl(nd, ah, pad + H - 2 - i)]
    for j in range(pad):
        out[_sl(nd, aw, pad - 1 - j)] = out[_sl(nd, aw, pad + 1 + j)]
        out[_sl(nd, aw, pad + W + j)] = out[_sl(nd, aw, pad + W - 2 - j)]
    return out


def pad2d_backward_cpu(dxp, pad: int, mode: str = "zero", axes=(2, 3), overwrite: bool = False):
    """``pad2d_backward`` in array code: the forward's border copies undone in reverse
    order (columns, then rows), each border row or column added onto its source."""
    ah, aw = axes
    nd = dxp.ndim
    if pad == 0:
        return dxp
    if mode == "zero":
        return dxp[_sl(nd, ah, slice(pad, -pad))][_sl(nd, aw, slice(pad, -pad))]
    g = dxp if overwrite else dxp.copy()
    Hp, Wp = g.shape[ah], g.shape[aw]
    W = Wp - 2 * pad
    H = Hp - 2 * pad
    # undo the forward in reverse order: columns, then rows
    for j in reversed(range(pad)):
        g[_sl(nd, aw, pad + 1 + j)] += g[_sl(nd, aw, pad - 1 - j)]
        g[_sl(nd, aw, pad + W - 2 - j)] += g[_sl(nd, aw, pad + W + j)]
    g = g[_sl(nd, aw, slice(pad, pad + W))]
    for i in reversed(range(pad)):
        g[_sl(nd, ah, pad + 1 + i)] += g[_sl(nd, ah, pad - 1 - i)]
        g[_sl(nd, ah, pad + H - 2 - i)] += g[_sl(nd, ah, pad + H + i)]
    return g[_sl(nd, ah, slice(pad, pad + H))]


def padded_rows_cl_cpu(x, r0: int, r1: int, pad: int, mode: str = "zero", affine=None, mask=None):
    """``padded_rows_cl`` in array code: the band's image rows transposed into place, the
    at most 2·pad edge rows, then the border columns. ``affine`` maps the image rows
    before any border is made of them (zero borders stay zero); ``mask`` multiplies them."""
    xp = get_xp(x)
    N, C, H, W = x.shape
    check_pad(min(H, W), pad, mode)
    if mask is not None and mode != "zero":
        raise ValueError("padded_rows_cl: a mask needs zero padding (reflected borders would "
                         "copy unmasked pixels)")
    Wp = W + 2 * pad
    out = xp.empty((N, r1 - r0, Wp, C), dtype=x.dtype)
    a = min(max(pad - r0, 0), r1 - r0)          # band rows [a, b) are real image rows
    b = max(min(pad + H - r0, r1 - r0), a)
    if b > a:
        rows = slice(r0 + a - pad, r0 + b - pad)
        src, dst = x[:, :, rows, :].transpose(0, 2, 3, 1), out[:, a:b, pad:pad + W, :]
        if mask is not None:  # (rows, W, C) · (rows, W, C) booleans: relu_backward's multiply
            np.multiply(src, mask[:, :, rows, :].transpose(0, 2, 3, 1) > 0, out=dst)
            if affine is not None:
                apply_rows(dst, affine.a, affine.b, affine.relu)
        elif affine is not None:  # mapped as it is copied
            apply_rows(dst, affine.a, affine.b, affine.relu, src=src)
        else:
            dst[...] = src
    for i in list(range(a)) + list(range(b, r1 - r0)):  # at most 2·pad rows, at the edges
        if mode == "zero":
            out[:, i] = 0
            continue
        src = abs(r0 + i - pad)
        if src > H - 1:
            src = 2 * (H - 1) - src
        out[:, i, pad:pad + W, :] = x[:, :, src, :].transpose(0, 2, 1)
    if affine is not None and mode != "zero":  # the edge rows are image pixels too: map them
        for lo, hi in ((0, a), (b, r1 - r0)):
            if hi > lo:
                apply_rows(out[:, lo:hi, pad:pad + W], affine.a, affine.b, affine.relu)
    if pad:
        if mode == "zero":
            out[:, :, :pad] = 0
            out[:, :, pad + W:] = 0
        else:
            for j in range(pad):
                out[:, :, pad - 1 - j] = out[:, :, pad + 1 + j]
                out[:, :, pad + W + j] = out[:, :, pad + W - 2 - j]
    return out


# --------------------------------------------------------------------------- kernels

def _kernel_axes(shape, pad: int, mode: str, axes):
    """Validate as ``pad2d`` does (``shape``: the unpadded shape) and for the kernels,
    which loop over at most 4 dimensions; returns the two axes, non-negative."""
    nd = len(shape)
    ah, aw = (a % nd for a in axes)
    if nd > 4 or ah == aw:
        raise ValueError(f"pad2d_gpu: 2 distinct axes of an array of at most 4 dimensions, "
                         f"got axes {axes} of shape {tuple(shape)}")
    check_pad(min(shape[ah], shape[aw]), pad, mode)
    return ah, aw


def _pad_launch(x4, y4, pads, offsets, mode):
    """Fill the 4-D ``y4`` (dense, any order) from ``x4``: y4[c] = x4[r(c + offset − pad)]
    per axis, by the pad2d_forward kernel with the loop in y4's memory order."""
    xp = get_xp(x4)
    dt = np.dtype(x4.dtype)
    yc, order = launch.dense(y4)  # a view of y4: the kernel writes it contiguously
    xc, xstr = launch.strides_of(x4)
    i32, i64 = launch.i32, launch.i64
    if yc.size:
        launch.run_1d(launch.kernel("pad.cu", "pad2d_forward", xp, dt), yc.size,
                      (xc, yc, i32(mode == "reflect"),
                       *(i32(yc.shape[d]) for d in range(4)),
                       *(i32(x4.shape[order[d]]) for d in range(4)),
                       *(i32(pads[order[d]]) for d in range(4)),
                       *(i32(offsets[order[d]]) for d in range(4)),
                       *(i64(xstr[order[d]]) for d in range(4))))


def pad2d_gpu(x, pad: int, mode: str = "zero", axes=(2, 3), out=None):
    """``pad2d`` by the kernel ``pad2d_forward`` (kernels/pad.cu), into ``out`` when
    given: any dense layout, e.g. a transposed channels-last buffer."""
    xp = get_xp(x)
    ah, aw = _kernel_axes(x.shape, pad, mode, axes)
    dt = launch.float_dtype("pad2d_gpu", x)
    shape = list(x.shape)
    shape[ah] += 2 * pad
    shape[aw] += 2 * pad
    if out is None:
        out = launch.empty(xp, shape, dt)
    elif tuple(out.shape) != tuple(shape) or out.dtype != dt:
        raise ValueError(f"pad2d_gpu: out must be a {dt} array of shape {tuple(shape)}")
    lead = 4 - x.ndim
    pads = [0] * 4
    pads[ah + lead] = pads[aw + lead] = pad
    target = out if launch.memory_order(out) is not None else launch.empty(xp, shape, dt)
    _pad_launch(launch.to4(x), launch.to4(target), pads, (0, 0, 0, 0), mode)
    if target is not out:
        out[...] = target
    return out


def padded_rows_cl_gpu(x, r0: int, r1: int, pad: int, mode: str = "zero"):
    """``padded_rows_cl`` by the kernel ``pad2d_forward`` (kernels/pad.cu) with a window
    offset: rows ``r0:r1`` (padded coordinates) of ``x`` (N, C, H, W) padded by ``pad``,
    as a new channels-last (N, r1 − r0, W + 2·pad, C) array."""
    xp = get_xp(x)
    N, C, H, W = x.shape
    _kernel_axes(x.shape, pad, mode, (2, 3))
    dt = launch.float_dtype("padded_rows_cl_gpu", x)
    out = launch.empty(xp, (N, r1 - r0, W + 2 * pad, C), dt)
    # the kernel's axes are x's (N, C, H, W); out seen through them is out.transpose(0, 3, 1, 2)
    _pad_launch(x, out.transpose(0, 3, 1, 2), (0, 0, pad, pad), (0, 0, r0, 0), mode)
    return out


def pad2d_backward_gpu(dxp, pad: int, mode: str = "zero", axes=(2, 3), overwrite: bool = False):
    """``pad2d_backward`` by the kernel ``pad2d_backward`` (kernels/pad.cu). As there,
    zero padding gives the interior view of ``dxp``; reflection gives a new array in the
    memory order of ``dxp`` (the kernel gathers the folded borders, so ``overwrite`` is
    accepted and not needed)."""
    xp = get_xp(dxp)
    dt = launch.float_dtype("pad2d_backward_gpu", dxp)
    shape = list(dxp.shape)
    for a in {a % dxp.ndim for a in axes}:
        shape[a] -= 2 * pad
    ah, aw = _kernel_axes(shape, pad, mode, axes)
    if pad == 0 or mode == "zero":
        idx = [slice(None)] * dxp.ndim
        idx[ah] = slice(pad, pad + shape[ah])
        idx[aw] = slice(pad, pad + shape[aw])
        return dxp[tuple(idx)]
    dc, dstr = launch.strides_of(launch.to4(dxp))
    order = launch.memory_order(launch.to4(dxp)) or tuple(range(4))
    lead = 4 - dxp.ndim
    pads = [0] * 4
    pads[ah + lead] = pads[aw + lead] = pad
    shape4 = (1,) * lead + tuple(shape)
    # dx in dxp's memory order, written contiguously
    dxc = launch.empty(xp, tuple(shape4[a] for a in order), dt)
    n = int(np.prod(dxc.shape))
    i32, i64 = launch.i32, launch.i64
    if n:
        launch.run_1d(launch.kernel("pad.cu", "pad2d_backward", xp, dt), n,
                      (dc, dxc, i32(mode == "reflect"),
                       *(i32(dxc.shape[d]) for d in range(4)),
                       *(i32(pads[order[d]]) for d in range(4)),
                       *(i64(dstr[order[d]]) for d in range(4))))
    return dxc.transpose(launch.inverse_permutation(order))[(0,) * lead]  # drop the prepended axes (a view)
