"""Spatial padding (zero or reflection) and its adjoint, for any two axes.

Forward: ``xp[..., i, j] = x[..., r(i − p), r(j − p)]`` where ``r`` is the identity inside
and mirrors without repeating the edge outside (``reflect``: … x2 x1 | x0 x1 x2 … ), or
zero outside (``zero``). The backward is the adjoint: the gradient of the interior plus,
for reflection, each border gradient folded back onto the element it copied.

The axes are arguments because the CPU convolution pads in channels-last layout
(N, H, W, C) while the layer API is NCHW.
"""
from __future__ import annotations

from ..backend import get_xp, is_gpu_array

PAD_MODES = ("zero", "reflect")


def _check(size: int, pad: int, mode: str):
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
        from ..kernels import pad2d_gpu  # the CUDA twin (kernels/pad.cu)
        return pad2d_gpu(x, pad, mode, axes, out)
    xp = get_xp(x)
    ah, aw = axes
    H, W = x.shape[ah], x.shape[aw]
    _check(min(H, W), pad, mode)
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


def pad2d_backward(dxp, pad: int, mode: str = "zero", axes=(2, 3), overwrite: bool = False):
    """Adjoint of ``pad2d``: ``(…, H+2p, W+2p) -> (…, H, W)``.

    For zero padding this is the interior *view* of ``dxp``. Reflection padding folds the
    border gradients onto the interior of a copy, or of ``dxp`` itself when
    ``overwrite`` (a caller that owns the buffer saves a full-size copy).
    """
    if is_gpu_array(dxp):
        from ..kernels import pad2d_backward_gpu
        return pad2d_backward_gpu(dxp, pad, mode, axes, overwrite)
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


def padded_rows_cl(x, r0: int, r1: int, pad: int, mode: str = "zero"):
    """Rows ``r0:r1`` (in padded coordinates) of ``x`` padded by ``pad``, channels-last.

    x: (N, C, H, W) (any memory order) -> (N, r1 − r0, W + 2·pad, C), a new array equal to
    ``pad2d(x, pad, mode).transpose(0, 2, 3, 1)[:, r0:r1]`` without ever building the whole
    padded image: the convolutions pad band by band so that no temporary grows with the
    image.
    """
    if is_gpu_array(x):
        from ..kernels import padded_rows_cl_gpu
        return padded_rows_cl_gpu(x, r0, r1, pad, mode)
    xp = get_xp(x)
    N, C, H, W = x.shape
    _check(min(H, W), pad, mode)
    Wp = W + 2 * pad
    out = xp.empty((N, r1 - r0, Wp, C), dtype=x.dtype)
    a = min(max(pad - r0, 0), r1 - r0)          # band rows [a, b) are real image rows
    b = max(min(pad + H - r0, r1 - r0), a)
    if b > a:
        out[:, a:b, pad:pad + W, :] = x[:, :, r0 + a - pad:r0 + b - pad, :].transpose(0, 2, 3, 1)
    for i in list(range(a)) + list(range(b, r1 - r0)):  # at most 2·pad rows, at the edges
        if mode == "zero":
            out[:, i] = 0
            continue
        src = abs(r0 + i - pad)
        if src > H - 1:
            src = 2 * (H - 1) - src
        out[:, i, pad:pad + W, :] = x[:, :, src, :].transpose(0, 2, 1)
    if pad:
        if mode == "zero":
            out[:, :, :pad] = 0
            out[:, :, pad + W:] = 0
        else:
            for j in range(pad):
                out[:, :, pad - 1 - j] = out[:, :, pad + 1 + j]
                out[:, :, pad + W + j] = out[:, :, pad + W - 2 - j]
    return out
