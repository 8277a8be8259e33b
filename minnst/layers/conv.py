"""2-D convolution (cross-correlation, as in every DL library) and its transpose.

    y[n, f, i, j] = b[f] + Σ_{c, u, v} w[f, c, u, v] · xp[n, c, s·i + u, s·j + v]

with ``xp`` the input padded by ``pad`` (zero or reflection). Shapes: x (N, C, H, W),
w (F, C, KH, KW), b (F,), y (N, F, OH, OW), OH = (H + 2·pad − KH) // s + 1.

Backward, with ``dy`` = ∂L/∂y:

    db[f]          = Σ_{n,i,j} dy[n, f, i, j]
    dw[f, c, u, v] = Σ_{n,i,j} dy[n, f, i, j] · xp[n, c, s·i + u, s·j + v]
    dxp[n, c, p, q] = Σ_{f, u, v: p = s·i + u, q = s·j + v} dy[n, f, i, j] · w[f, c, u, v]

and dx = the adjoint of the padding applied to dxp.

Three implementations, one signature:

* ``conv2d_naive``: loops over output positions; the independent reference of the tests.
* im2col + GEMM (``_im2col`` / ``_col2im``): gathers each receptive field into a row of a
  matrix and multiplies by the (F, KH·KW·C) weight matrix; any stride and kernel size;
  written with ``xp.`` so it also runs on CuPy; processed in row bands so no temporary
  exceeds ``MAX_TEMP_BYTES``.
* "shifted GEMM" (CPU, every stride-1 layer): see ``_conv_shifted_forward``. No im2col
  copy at all: in a channels-last padded image flattened to (N·Hp·Wp, C), the input
  rows that tap (u, v) needs for every output are one contiguous slice, so the
  convolution is KH·KW matrix products accumulated in place by BLAS (``beta = 1``).
* thin-channel lowerings (CPU, kernels ≥ 5×5 with ≤ 8 channels on one side: the
  transformer's 9×9 layers with 3 channels): im2col + one GEMM with K = KH·KW·C when the
  input is thin, "output-side shifting" when the output is thin (``_thin_method``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_xp, is_gpu_array
from ..parallel import gemm, image_bands, pmap
from .base import Layer
from .padding import pad2d, pad2d_backward, padded_rows_cl
from .winograd import (WinogradWeights, winograd_conv3x3, winograd_input_grad_weights,
                       winograd_weights)

MAX_TEMP_BYTES = 256 * 2**20  # im2col bands are cut to stay under this


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


# --------------------------------------------------------------------------- naive twin

def conv2d_naive(x, w, b=None, stride: int = 1, pad: int = 0, pad_mode: str = "zero"):
    """Reference convolution by loops over output pixels (slow; tests only)."""
    xp = get_xp(x)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    xpad = pad2d(x, pad, pad_mode)
    OH = conv_output_size(H, KH, stride, pad)
    OW = conv_output_size(W, KW, stride, pad)
    y = xp.zeros((N, F, OH, OW), dtype=x.dtype)
    for i in range(OH):
        for j in range(OW):
            patch = xpad[:, :, i * stride:i * stride + KH, j * stride:j * stride + KW]
            y[:, :, i, j] = xp.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    return y


# --------------------------------------------------------------------------- im2col + GEMM

def _im2col(xpad, KH, KW, stride, i0, i1, OW, out=None):
    """Receptive fields of output rows ``i0:i1`` → (N, i1−i0, OW, KH, KW, C).

    ``xpad`` is the padded input in channels-last layout (N, Hp, Wp, C). On the CPU one
    copy from a strided view (3.6× faster than a copy per tap, measured at 512²×3); the
    per-tap form runs on any array module.
    """
    if is_gpu_array(xpad):
        from ..kernels import im2col_gpu  # the CUDA twin (kernels/im2col.cu)
        return im2col_gpu(xpad, KH, KW, stride, i0, i1, OW, out)
    xp = get_xp(xpad)
    N, C = xpad.shape[0], xpad.shape[3]
    rows = i1 - i0
    if out is None:
        out = xp.empty((N, rows, OW, KH, KW, C), dtype=xpad.dtype)
    if xp is np:
        sn, sh, sw, sc = xpad.strides
        view = np.lib.stride_tricks.as_strided(
            xpad[:, i0 * stride:], (N, rows, OW, KH, KW, C),
            (sn, sh * stride, sw * stride, sh, sw, sc), writeable=False)
        out[...] = view
        return out
    for u in range(KH):
        r0 = i0 * stride + u
        for v in range(KW):
            out[:, :, :, u, v, :] = xpad[:, r0:r0 + stride * (rows - 1) + 1:stride,
                                         v:v + stride * (OW - 1) + 1:stride, :]
    return out


def _col2im_add(dxpad, cols, stride, i0):
    """Adjoint of ``_im2col``: scatter-add cols (N, rows, OW, KH, KW, C) into the
    channels-last ``dxpad`` (N, Hp, Wp, C), in place."""
    if is_gpu_array(dxpad):
        from ..kernels import col2im_add_gpu  # a gather over input pixels, no atomics
        return col2im_add_gpu(dxpad, cols, stride, i0)
    N, rows, OW, KH, KW, C = cols.shape
    for u in range(KH):
        r0 = i0 * stride + u
        for v in range(KW):
            dxpad[:, r0:r0 + stride * (rows - 1) + 1:stride, v:v + stride * (OW - 1) + 1:stride, :] += \
                cols[:, :, :, u, v, :]


def _row_bands(N, OH, OW, K, itemsize):
    """Split output rows into bands whose im2col matrix stays under MAX_TEMP_BYTES."""
    per_row = max(1, N * OW * K * itemsize)
    rows = max(1, min(OH, MAX_TEMP_BYTES // per_row))
    return [(i, min(OH, i + rows)) for i in range(0, OH, rows)]


def _input_rows(i0, i1, stride, KH):
    """Padded input rows [r0, r1) that output rows [i0, i1) read."""
    return i0 * stride, (i1 - 1) * stride + KH


IM2COL_TASK_BYTES = 8 * 2**20  # im2col matrix of one CPU task (pmap), one image's band of rows


def _im2col_tasks(xp, N, OH, OW, K, itemsize):
    """``(n0, n1, bands)`` work units. CPU: one image per unit and bands of rows whose
    im2col matrix stays near IM2COL_TASK_BYTES (``pmap`` runs them on both cores); GPU:
    the whole batch, bands under MAX_TEMP_BYTES, in order."""
    if xp is not np:
        return [(0, N, _row_bands(N, OH, OW, K, itemsize))]
    rows = max(1, IM2COL_TASK_BYTES // max(1, OW * K * itemsize))
    return [(n, n + 1, [(i0, i1)]) for n, i0, i1 in image_bands(N, OH, rows)]


def _run(xp, fn, tasks):
    """``pmap`` on the CPU; in order on the GPU (no behaviour change for CuPy)."""
    return pmap(fn, tasks) if xp is np else [fn(t) for t in tasks]


def _conv_im2col_forward(x, w, b, stride, pad, pad_mode, OH, OW):
    """im2col + GEMM in bands of output rows; returns (N, F, OH, OW) (channels-last memory)."""
    xp = get_xp(x)
    N = x.shape[0]
    F, C, KH, KW = w.shape
    K = KH * KW * C
    wmat = w.transpose(0, 2, 3, 1).reshape(F, K)  # (F, KH·KW·C), matches the cols order
    y = xp.empty((N, OH, OW, F), dtype=x.dtype)

    def unit(task):
        n0, n1, bands = task
        for i0, i1 in bands:
            xb = padded_rows_cl(x[n0:n1], *_input_rows(i0, i1, stride, KH), pad, pad_mode)
            cols = _im2col(xb, KH, KW, stride, 0, i1 - i0, OW)
            yb = (cols.reshape(-1, K) @ wmat.T).reshape(n1 - n0, i1 - i0, OW, F)
            if b is not None:
                yb += b
            y[n0:n1, i0:i1] = yb

    _run(xp, unit, _im2col_tasks(xp, N, OH, OW, K + KW * C, x.itemsize))
    return y.transpose(0, 3, 1, 2)


def _conv_im2col_backward(dy, x, w, stride, pad, pad_mode, dxpad):
    """Accumulates the padded input gradient into ``dxpad`` (N, Hp, Wp, C); returns dw
    (None when ``x`` is None: a frozen layer). On the CPU one image per ``pmap`` task
    (the bands of an image overlap in dxpad), each with its own part of dw, added in
    task order."""
    xp = get_xp(dy)
    N, F, OH, OW = dy.shape
    _, C, KH, KW = w.shape
    K = KH * KW * C
    wmat = w.transpose(0, 2, 3, 1).reshape(F, K)
    dy_cl = dy.transpose(0, 2, 3, 1)
    if xp is np:
        tasks = [(n, n + 1, _row_bands(1, OH, OW, K + KW * C, dy.itemsize)) for n in range(N)]
    else:
        tasks = _im2col_tasks(xp, N, OH, OW, K + KW * C, dy.itemsize)

    def unit(task):
        n0, n1, bands = task
        dwmat = xp.zeros((F, K), dtype=dy.dtype) if x is not None else None
        for i0, i1 in bands:
            r0, r1 = _input_rows(i0, i1, stride, KH)
            dyb = xp.ascontiguousarray(dy_cl[n0:n1, i0:i1]).reshape(-1, F)  # (M, F)
            dcols = (dyb @ wmat).reshape(n1 - n0, i1 - i0, OW, KH, KW, C)
            _col2im_add(dxpad[n0:n1], dcols, stride, i0)
            if dwmat is not None:
                xb = padded_rows_cl(x[n0:n1], r0, r1, pad, pad_mode)
                cols = _im2col(xb, KH, KW, stride, 0, i1 - i0, OW, out=dcols)
                dwmat += dyb.T @ cols.reshape(-1, K)
        return dwmat

    parts = _run(xp, unit, tasks)
    if x is None:
        return None
    dwmat = parts[0]
    for part in parts[1:]:
        dwmat += part
    return dwmat.reshape(F, KH, KW, C).transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------- shifted GEMM (CPU)

BAND_BYTES = 64 * 2**20  # padded input rows per band of the shifted GEMM (one image at a time)


def _band_rows(C, F):
    """Output rows per BLAS call. Banding keeps a band of output (and the input rows of
    its taps) in cache across the KH·KW accumulating products; measured on 2 cores,
    4096 rows is within noise of the best for 64 to 512 channels (64 ch at 512²: 134
    GFLOP/s vs 98 unbanded; 512 ch at 64²: 170 vs 160 at 256 rows)."""
    return 4096


def _image_bands(OH, Wp, C, F, itemsize):
    """Bands of output rows whose padded input (and output gradient) fit BAND_BYTES."""
    rows = _image_band_rows(OH, Wp, C, F, itemsize)
    return [(i, min(OH, i + rows)) for i in range(0, OH, rows)]


def _image_band_rows(OH, Wp, C, F, itemsize):
    per_row = Wp * max(C, F) * itemsize
    return max(1, min(OH, BAND_BYTES // per_row))


def _shifted_gemm_forward(xflat, wtap, b, y, Wp):
    """Stride-1 convolution of one band of a channels-last padded image, without im2col.

    xflat: (Rin, C), the band's padded input rows flattened (row q = r·Wp + t).
    wtap:  (KH, KW, F, C), contiguous.  b: (F,) or None.
    y:     (P, F) output rows q = i·Wp + j, written in place.
    Output q reads input row q + u·Wp + v for tap (u, v), so for a run of outputs the
    input rows of each tap are one contiguous slice:

        y[q0:q1] (R, F) = b + Σ_{u,v} xflat[q0 + off_uv : q1 + off_uv] (R, C) @ W_uvᵀ (C, F)

    with off_uv = u·Wp + v, computed by BLAS accumulating in place (beta = 1). Rows with
    j ≥ OW are garbage and never read: (Wp − OW)/Wp of the work, under 1 % at 256².
    """
    KH, KW, F, C = wtap.shape
    P = y.shape[0]
    R = _band_rows(C, F)
    for q0 in range(0, P, R):
        q1 = min(P, q0 + R)
        band = y[q0:q1]
        if b is None:
            band[...] = 0
        else:
            band[...] = b
        for u in range(KH):
            for v in range(KW):
                off = u * Wp + v
                gemm(xflat[q0 + off:q1 + off], wtap[u, v].T, band)  # (R, C) @ (C, F)


def _shifted_gemm_backward(dyext, wtap, dxflat, xflat, dwtap, Wp):
    """Adjoint of ``_shifted_gemm_forward`` for one band, accumulating in place:

        dxflat[q0 + off : q1 + off] += dyext[q0:q1] (R, F) @ W_uv (F, C)
        dwtap[u, v] (C, F)         += xflat[q0 + off : q1 + off]ᵀ (C, R) @ dyext[q0:q1]

    dyext (P, F) is dy in the padded row layout with zeros at the garbage positions;
    ``xflat``/``dwtap`` are None for a frozen layer, ``dxflat`` when only dw is wanted.
    """
    KH, KW, F, C = wtap.shape
    P = dyext.shape[0]
    R = _band_rows(C, F)
    for q0 in range(0, P, R):
        q1 = min(P, q0 + R)
        dband = dyext[q0:q1]
        for u in range(KH):
            for v in range(KW):
                off = u * Wp + v
                if dxflat is not None:
                    gemm(dband, wtap[u, v], dxflat[q0 + off:q1 + off])  # (R, F) @ (F, C)
                if dwtap is not None:
                    gemm(xflat[q0 + off:q1 + off].T, dband, dwtap[u, v])  # (C, R) @ (R, F)


def _conv_shifted_forward(x, w, b, pad, pad_mode, OH, OW):
    """Shifted-GEMM convolution, one band of rows of one image per task (``pmap``: the
    bands run on both cores); only a band's padded input is a temporary. Returns
    (N, F, OH, OW), channels-last memory."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    Wp = W + 2 * pad
    wtap = np.ascontiguousarray(w.transpose(2, 3, 0, 1))  # (KH, KW, F, C)
    y = np.empty((N, OH, Wp, F), dtype=x.dtype)  # columns ≥ OW are scratch

    def band(task):
        n, i0, i1 = task
        xb = padded_rows_cl(x[n:n + 1], i0, i1 + KH - 1, pad, pad_mode)
        yb = y[n, i0:i1].reshape(-1, F)[:(i1 - i0 - 1) * Wp + OW]
        _shifted_gemm_forward(xb.reshape(-1, C), wtap, b, yb, Wp)

    pmap(band, image_bands(N, OH, _image_band_rows(OH, Wp, C, F, x.itemsize)))
    return y[:, :, :OW, :].transpose(0, 3, 1, 2)


def _conv_shifted_backward(dy, x, w, pad, pad_mode, dxpad):
    """Accumulates into ``dxpad`` (N, Hp, Wp, C) unless it is None; returns dw, or None
    when x is None. Tasks (``pmap``): whole images when dx is wanted (the bands of one
    image overlap in dx), bands of rows when only dw is; each task returns its own part
    of dw, and the parts are added in task order."""
    N, F, OH, OW = dy.shape
    _, C, KH, KW = w.shape
    Wp = x.shape[3] + 2 * pad if x is not None else dxpad.shape[2]
    wtap = np.ascontiguousarray(w.transpose(2, 3, 0, 1))
    band_rows = _image_band_rows(OH, Wp, C, F, dy.itemsize)
    if dxpad is None:
        tasks = [(n, [(i0, i1)]) for n, i0, i1 in image_bands(N, OH, band_rows)]
    else:
        tasks = [(n, _image_bands(OH, Wp, C, F, dy.itemsize)) for n in range(N)]

    def image(task):
        n, bands = task
        dwtap = np.zeros((KH, KW, C, F), dtype=dy.dtype) if x is not None else None
        for i0, i1 in bands:
            rows = i1 - i0
            dyext = np.empty((rows, Wp, F), dtype=dy.dtype)
            dyext[:, :OW] = dy[n, :, i0:i1].transpose(1, 2, 0)
            dyext[:, OW:] = 0  # the garbage positions must not contribute
            P = (rows - 1) * Wp + OW
            dxflat = None if dxpad is None else dxpad[n, i0:i1 + KH - 1].reshape(-1, C)  # a view
            xflat = None
            if x is not None:
                xflat = padded_rows_cl(x[n:n + 1], i0, i1 + KH - 1, pad, pad_mode).reshape(-1, C)
            _shifted_gemm_backward(dyext.reshape(-1, F)[:P], wtap, dxflat, xflat, dwtap, Wp)
        return dwtap

    parts = pmap(image, tasks)
    if x is None:
        return None
    dwtap = parts[0]
    for part in parts[1:]:
        dwtap += part
    return np.ascontiguousarray(dwtap.transpose(3, 2, 0, 1))


# --------------------------------------------------------------------------- thin-channel lowerings (CPU)

THIN_CHANNELS = 8               # a side with at most this many channels is "thin"
THIN_MIN_TAPS = 25              # only for kernels of 5×5 and more (3×3 stays on the shifted GEMM)
THIN_BAND_BYTES = 4 * 2**20     # cache-sized temporaries (of 0.5 to 8 MB, best for 9×9, 3 ↔ 32)


def _thin_method(C, F, KH, KW):
    """"thin_input" (C small: im2col then one GEMM with K = KH·KW·C), "thin_output" (F
    small: one GEMM with N = KH·KW·F, then shifted adds of its output), or None.

    The shifted GEMM runs one product per tap with K = C (or N = F); with 3 channels that is
    a 3-wide matrix product 81 times over, at ~2 % of the machine's GEMM rate. Lowering the
    thin side instead gives one product whose short side is the wide one (32 channels)."""
    if KH * KW < THIN_MIN_TAPS:
        return None
    if F <= THIN_CHANNELS and F <= C:
        return "thin_output"
    if C <= THIN_CHANNELS:
        return "thin_input"
    return None


def _thin_rows(rows_total, per_row_bytes):
    """Bands of rows whose temporary of ``per_row_bytes`` a row stays under THIN_BAND_BYTES."""
    rows = max(1, min(rows_total, THIN_BAND_BYTES // max(1, per_row_bytes)))
    return [(i, min(rows_total, i + rows)) for i in range(0, rows_total, rows)]


def _rot180(w):
    """(F, C, KH, KW) -> (C, F, KH, KW) flipped in both spatial axes: the kernel of the
    input gradient, ``dxp = full_correlation(dy, rot180(w))``."""
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def _lowered_forward(x, w, b, pad, pad_mode, OH, OW, want_y=True, other=None):
    """Stride-1 convolution by im2col + one GEMM (K = KH·KW·C), one image and one small band
    of output rows per task (``pmap``). Returns (N, F, OH, OW), a view of channels-last memory.

    ``other(n, i0, i1)``: an (R·OW, D) array per band of output rows; then the function
    also returns ``Σ colsᵀ @ other`` (K, D), the weight gradient of the thin layers (see
    ``_conv_thin_backward``), as ``(y, that)``; ``want_y=False`` skips y (None)."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    K = KH * KW * C
    wmat = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(K, F))  # rows in (u, v, c) order
    y = np.empty((N, OH, OW, F), dtype=x.dtype) if want_y else None

    def band(task):
        n, i0, i1 = task
        xb = padded_rows_cl(x[n:n + 1], i0, i1 + KH - 1, pad, pad_mode)
        cols = _im2col(xb, KH, KW, 1, 0, i1 - i0, OW).reshape(-1, K)       # (R·OW, K)
        if want_y:
            yb = y[n, i0:i1].reshape(-1, F)
            np.matmul(cols, wmat, out=yb)  # (R·OW, K) @ (K, F)
            if b is not None:
                yb += b
        return None if other is None else cols.T @ other(n, i0, i1)

    rows = _thin_rows(OH, OW * K * x.itemsize)[0][1]
    parts = pmap(band, image_bands(N, OH, rows))
    out = None if y is None else y.transpose(0, 3, 1, 2)
    if other is None:
        return out
    total = parts[0]
    for part in parts[1:]:
        total += part
    return out, total


def _scatter_forward(x, w, b, pad, pad_mode, OH, OW):
    """Stride-1 convolution for few output channels, by "output-side shifting":

        Z (KH·KW·F, P) = W_all (KH·KW·F, C) @ Xᵀ (C, P),  y[f, q] = b[f] + Σ_{u,v} Z[(u,v,f), q + u·Wp + v]

    over the padded input flattened to positions p = r·Wp + t (channels-first, q = i·Wp + j
    for the outputs). One GEMM with the wide side N = KH·KW·F (243 for 9×9 → 3), then
    KH·KW shifted adds over F planes; each band of input rows is multiplied once and
    scattered onto every output row it reaches. Returns (N, F, OH, OW), a view of NCHW
    memory (columns ≥ OW of each row are scratch).

    A task (``pmap``) owns output rows [o0, o1) of one image and multiplies the input
    rows they read, [o0, o1 + KH − 1): the KH − 1 rows of halo are multiplied twice when
    an image is cut into several tasks (only when the batch is smaller than MIN_TASKS)."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    Wp = OW + KW - 1
    T = KH * KW
    wall = np.ascontiguousarray(w.transpose(2, 3, 0, 1).reshape(T * F, C))  # rows (u, v, f)
    y = np.empty((N, F, OH * Wp), dtype=x.dtype)

    def rows_of(task):
        n, o0, o1 = task
        out = y[n, :, o0 * Wp:o1 * Wp]  # the task's output rows, q relative to o0·Wp
        out[...] = 0 if b is None else b.reshape(F, 1)
        P = out.shape[1]
        for r0, r1 in _thin_rows(o1 - o0 + KH - 1, Wp * T * F * x.itemsize):
            xb = padded_rows_cl(x[n:n + 1], o0 + r0, o0 + r1, pad, pad_mode).reshape(-1, C)  # (Pb, C)
            z = (wall @ xb.T).reshape(T, F, -1)                                               # (T, F, Pb)
            p0, Pb = r0 * Wp, z.shape[2]
            sT, sF, sP = z.strides
            for u in range(KH):
                # the KW taps of row u at once: zu[v, f, q] = z[(u, v), f, q + u·Wp + v − p0].
                # Each tap reaches q in [p0 − u·Wp − v, p0 + Pb − u·Wp − v); only the part all
                # taps share is added: what it leaves out lies in the KW − 1 garbage columns
                # (j ≥ OW) at the ends of output rows (band ends are row boundaries).
                q0, q1 = max(0, p0 - u * Wp), min(P, p0 + Pb - u * Wp - (KW - 1))
                if q1 > q0:
                    zu = np.lib.stride_tricks.as_strided(
                        z[u * KW, :, q0 + u * Wp - p0:], (KW, F, q1 - q0), (sT + sP, sF, sP),
                        writeable=False)
                    out[:, q0:q1] += zu.sum(axis=0)

    pmap(rows_of, image_bands(N, OH))
    return y.reshape(N, F, OH, Wp)[:, :, :, :OW]


def _conv_thin_forward(method, x, w, b, pad, pad_mode, OH, OW):
    if method == "thin_input":
        return _lowered_forward(x, w, b, pad, pad_mode, OH, OW)
    return _scatter_forward(x, w, b, pad, pad_mode, OH, OW)


def _conv_thin_backward(method, dy, x, w, pad, pad_mode, need_dx):
    """``(dxpad, dw)`` of a thin-channel layer. The input gradient is the full correlation
    of dy (zero-padded by KH − 1) with the rotated kernel, whose thin side is the other
    one: a "thin_input" layer takes its dx by output-side shifting and vice versa.

    The weight gradient comes from an im2col matrix of the thin side, one GEMM per band:
    thin input, ``dW[(u,v,c), f] = Σ_q cols_x[q, (u,v,c)] · dy[q, f]``; thin output, from
    the very matrix the input gradient builds of dy (zero-padded by KH − 1, positions p of
    the padded input): ``dW[f, c, KH−1−u, KW−1−v] = Σ_p cols_dy[p, (u,v,f)] · xpad[p, c]``
    (substitute p = q + (KH−1−u, KW−1−v) in dw's formula). On two cores these beat the
    shifted GEMM's 81 thin products per band (batch 4 at 256², 2 threads: ≈ 110 → 50 ms
    and 180 → 110 ms for the first and the last layer's backward).
    dxpad is (N, C, Hp, Wp) (any memory order) or None; dw is None when x is None."""
    F, C, KH, KW = w.shape
    Hp, Wp = dy.shape[2] + KH - 1, dy.shape[3] + KW - 1
    dy_cl = dy.transpose(0, 2, 3, 1)
    dxpad = dw = None
    if method == "thin_input":
        if need_dx:
            dxpad = _scatter_forward(dy, _rot180(w), None, KH - 1, "zero", Hp, Wp)
        if x is not None:
            _, dwk = _lowered_forward(x, w, None, pad, pad_mode, *dy.shape[2:], want_y=False,
                                      other=lambda n, i0, i1: np.ascontiguousarray(dy_cl[n, i0:i1]).reshape(-1, F))
            dw = np.ascontiguousarray(dwk.reshape(KH, KW, C, F).transpose(3, 2, 0, 1))
        return dxpad, dw
    if not need_dx:
        return None, (None if x is None else _conv_shifted_backward(dy, x, w, pad, pad_mode, None))
    if x is None:
        return _lowered_forward(dy, _rot180(w), None, KH - 1, "zero", Hp, Wp), None
    dxpad, dwr = _lowered_forward(dy, _rot180(w), None, KH - 1, "zero", Hp, Wp,
                                  other=lambda n, i0, i1: padded_rows_cl(x[n:n + 1], i0, i1, pad, pad_mode).reshape(-1, C))
    dw = np.ascontiguousarray(dwr.reshape(KH, KW, F, C)[::-1, ::-1].transpose(2, 3, 0, 1))
    return dxpad, dw


# --------------------------------------------------------------------------- dispatcher

class ConvCache(NamedTuple):
    method: str          # "winograd", "shifted", "thin_input", "thin_output" or "im2col"
    x: object            # the input itself (not a copy), or None for frozen layers
    w: object
    has_bias: bool
    stride: int
    pad: int
    pad_mode: str
    x_shape: tuple
    wino: object = None  # WinogradWeights, when the caller transformed the kernel


WINOGRAD_MIN_CHANNELS = 64  # below this the 16 GEMMs are too thin to pay for the transforms


def _winograd_fits(x, w, stride, pad, pad_mode) -> bool:
    """3×3, stride 1, padding 1 (zero: VGG; reflection: the transformer), on the CPU."""
    return (get_xp(x) is np and w.shape[2:] == (3, 3) and stride == 1 and pad == 1
            and x.dtype in (np.float32, np.float64))


def _use_shifted(x, stride) -> bool:
    """The CPU takes the shifted GEMM for every stride-1 convolution: measured against
    im2col (single-threaded CPU time, batch 4 at 256² unless noted) it is as fast or
    faster from 3 to 128 channels and 3×3 to 9×9 kernels, forward and backward
    (e.g. 9×9, 32→3: 298/179 ms vs 824/2104 ms; VGG conv1_1 at 512²: 30/58 vs 36/105)."""
    return get_xp(x) is np and stride == 1 and x.dtype in (np.float32, np.float64)


def conv2d_forward(x, w, b=None, stride: int = 1, pad: int = 0, pad_mode: str = "zero",
                   keep_input: bool = True, wino=None):
    """Convolution forward. x (N, C, H, W), w (F, C, KH, KW), b (F,) or None.

    Returns ``(y, cache)`` with y (N, F, OH, OW) (a view of channels-last memory).
    ``keep_input=False`` drops the input from the cache: the backward then returns only
    dx (dw = db = None), which is all a frozen network needs. The cache references ``x``
    itself (no copy): do not modify it in place before the backward.
    ``wino``: the layer's ``winograd.winograd_transform(w)``, computed once by a caller
    whose weights do not change (VGG16); where it applies (CPU, 3×3, stride 1, zero
    padding 1, ≥ 64 channels) the forward and the input gradient use Winograd F(2×2, 3×3);
    ``WinogradWeights(forward, None)`` leaves the input gradient's kernel to the backward.
    """
    N, C, H, W = x.shape
    F, Cw, KH, KW = w.shape
    if Cw != C:
        raise ValueError(f"conv2d: input has {C} channels, weights expect {Cw}")
    w = w.astype(x.dtype, copy=False)
    OH = conv_output_size(H, KH, stride, pad)
    OW = conv_output_size(W, KW, stride, pad)
    if OH < 1 or OW < 1:
        raise ValueError(f"conv2d: input {H}x{W} too small for kernel {KH}x{KW} with padding {pad}")
    bias = None if b is None else b.astype(x.dtype, copy=False)
    if wino is not None and _winograd_fits(x, w, stride, pad, pad_mode) and C >= WINOGRAD_MIN_CHANNELS:
        method = "winograd"
        y = winograd_conv3x3(x, wino.forward.astype(x.dtype, copy=False), bias, pad_mode)
    elif _use_shifted(x, stride) and _thin_method(C, F, KH, KW):
        method = _thin_method(C, F, KH, KW)
        y = _conv_thin_forward(method, x, w, bias, pad, pad_mode, OH, OW)
    elif _use_shifted(x, stride):
        method = "shifted"
        y = _conv_shifted_forward(x, w, bias, pad, pad_mode, OH, OW)
    else:
        method = "im2col"
        y = _conv_im2col_forward(x, w, bias, stride, pad, pad_mode, OH, OW)
    cache = ConvCache(method, x if keep_input else None, w, b is not None,
                      stride, pad, pad_mode, tuple(x.shape), wino)
    return y, cache


def conv2d_backward(dy, cache: ConvCache, need_dx: bool = True):
    """Returns ``(dx, dw, db)``; dw and db are None when the cache holds no input, dx is
    None when ``need_dx`` is False (a network's first layer: its input is the data)."""
    xp = get_xp(dy)
    N, C, H, W = cache.x_shape
    p = cache.pad
    F = cache.w.shape[0]
    db = dy.sum(axis=(0, 2, 3)) if cache.x is not None and cache.has_bias else None
    if cache.method in ("thin_input", "thin_output"):
        dxpad, dw = _conv_thin_backward(cache.method, dy, cache.x, cache.w, p, cache.pad_mode, need_dx)
        dx = None if dxpad is None else pad2d_backward(dxpad, p, cache.pad_mode, overwrite=True)
        return dx, dw, db
    if not need_dx and cache.method != "im2col":
        return None, _conv_shifted_backward(dy, cache.x, cache.w, p, cache.pad_mode, None), db
    if (cache.wino is not None and need_dx
            and cache.method != "im2col" and min(F, C) >= WINOGRAD_MIN_CHANNELS):
        # the input gradient of a zero-padded 3×3 "same" convolution is one too (rotated
        # kernel). With reflection, the gradient of the *padded* input is wanted (its
        # border folds back onto the pixels it copied): the full correlation of dy with
        # the rotated kernel, i.e. the same "same" convolution of dy zero-padded by one.
        U = cache.wino.input_grad
        if U is None:  # the caller transformed only the forward kernel (Conv2d: per call)
            U = winograd_input_grad_weights(cache.w)
        U = U.astype(dy.dtype, copy=False)
        if cache.pad_mode == "zero":
            dx = winograd_conv3x3(dy, U)
        else:
            dy1 = pad2d(dy.transpose(0, 2, 3, 1), 1, "zero", axes=(1, 2)).transpose(0, 3, 1, 2)
            dxpad = winograd_conv3x3(dy1, U)  # (N, C, H + 2, W + 2), channels-last memory
            dx = pad2d_backward(dxpad, p, cache.pad_mode, overwrite=True)
        dw = None
        if cache.x is not None:
            dw = _conv_shifted_backward(dy, cache.x, cache.w, p, cache.pad_mode, None)
        return dx, dw, db
    dxpad = xp.zeros((N, H + 2 * p, W + 2 * p, C), dtype=dy.dtype)
    if cache.method in ("shifted", "winograd"):
        dw = _conv_shifted_backward(dy, cache.x, cache.w, p, cache.pad_mode, dxpad)
    else:
        dw = _conv_im2col_backward(dy, cache.x, cache.w, cache.stride, p, cache.pad_mode, dxpad)
    # (N, C, H, W) view of channels-last memory, like the forward's output
    dx = pad2d_backward(dxpad, p, cache.pad_mode, axes=(1, 2), overwrite=True).transpose(0, 3, 1, 2)
    return (dx if need_dx else None), dw, db


# --------------------------------------------------------------------------- transposed conv

class ConvTransposeCache(NamedTuple):
    x: object
    w: object
    has_bias: bool
    stride: int
    pad: int
    output_padding: int


def conv_transpose_output_size(size, kernel, stride, pad, output_padding):
    return (size - 1) * stride - 2 * pad + kernel + output_padding


def conv_transpose2d_forward(x, w, b=None, stride: int = 2, pad: int = 1, output_padding: int = 1):
    """Fractionally-strided convolution, the adjoint of conv2d in x.

    x (N, C, H, W), w (C, F, KH, KW) (PyTorch's layout), y (N, F, OH, OW) with
    OH = (H − 1)·s − 2·pad + KH + output_padding. Each input pixel scatters
    ``x[n, c, i, j] · w[c, :, :, :]`` onto the output window at (s·i − pad, s·j − pad):

        y = crop_pad( col2im( x_mat (N·H·W, C) @ w_mat (C, KH·KW·F) ) ) + b
    """
    xp = get_xp(x)
    N, C, H, W = x.shape
    Cw, F, KH, KW = w.shape
    if Cw != C:
        raise ValueError(f"conv_transpose2d: input has {C} channels, weights expect {Cw}")
    if output_padding < 0 or (output_padding > 0 and output_padding >= stride):
        raise ValueError(f"output_padding {output_padding} must be smaller than the stride {stride}")
    w = w.astype(x.dtype, copy=False)
    OH = conv_transpose_output_size(H, KH, stride, pad, output_padding)
    OW = conv_transpose_output_size(W, KW, stride, pad, output_padding)
    # the full (uncropped) output, channels-last; output_padding adds rows/cols beyond it
    Hf, Wf = OH + 2 * pad, OW + 2 * pad
    full = xp.zeros((N, Hf, Wf, F), dtype=x.dtype)
    wmat = w.transpose(0, 2, 3, 1).reshape(C, KH * KW * F)  # (C, KH·KW·F)
    x_nhwc = x.transpose(0, 2, 3, 1)
    K = KH * KW * F
    for i0, i1 in _row_bands(N, H, W, K, x.itemsize):
        xb = xp.ascontiguousarray(x_nhwc[:, i0:i1]).reshape(-1, C)
        cols = (xb @ wmat).reshape(N, i1 - i0, W, KH, KW, F)
        _col2im_add(full, cols, stride, i0)
    y = full[:, pad:pad + OH, pad:pad + OW, :].transpose(0, 3, 1, 2)
    if b is not None:
        y = y + b.astype(x.dtype, copy=False).reshape(1, F, 1, 1)
    return y, ConvTransposeCache(x, w, b is not None, stride, pad, output_padding)


def conv_transpose2d_backward(dy, cache: ConvTransposeCache):
    """Returns ``(dx, dw, db)``. dx is an ordinary strided convolution of dy:

        dx[n, c, i, j] = Σ_{f,u,v} w[c, f, u, v] · dy_full[n, f, s·i + u, s·j + v]
        dw[c, f, u, v] = Σ_{n,i,j} x[n, c, i, j] · dy_full[n, f, s·i + u, s·j + v]

    where dy_full is dy zero-padded back to the uncropped output size.
    """
    xp = get_xp(dy)
    x, w = cache.x, cache.w
    N, C, H, W = x.shape
    _, F, KH, KW = w.shape
    s, p = cache.stride, cache.pad
    OH, OW = dy.shape[2:]
    Hneed = (H - 1) * s + KH
    Wneed = (W - 1) * s + KW
    dyfull = xp.zeros((N, max(Hneed, OH + 2 * p), max(Wneed, OW + 2 * p), F), dtype=dy.dtype)
    dyfull[:, p:p + OH, p:p + OW, :] = dy.transpose(0, 2, 3, 1)
    K = KH * KW * F
    wmat = w.transpose(0, 2, 3, 1).reshape(C, K)
    x_nhwc = x.transpose(0, 2, 3, 1)
    dx = xp.empty((N, H, W, C), dtype=dy.dtype)
    dwmat = xp.zeros((C, K), dtype=dy.dtype)
    for i0, i1 in _row_bands(N, H, W, K, dy.itemsize):
        cols = _im2col(dyfull, KH, KW, s, i0, i1, W).reshape(-1, K)  # (M, KH·KW·F)
        dx[:, i0:i1] = (cols @ wmat.T).reshape(N, i1 - i0, W, C)
        xb = xp.ascontiguousarray(x_nhwc[:, i0:i1]).reshape(-1, C)
        dwmat += xb.T @ cols
    dw = dwmat.reshape(C, KH, KW, F).transpose(0, 3, 1, 2)
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return dx.transpose(0, 3, 1, 2), xp.ascontiguousarray(dw), db


# --------------------------------------------------------------------------- classes

def _kaiming_uniform(rng, shape, fan_in, dtype):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Conv2d(Layer):
    """``params = {"weight": (F, C, KH, KW), "bias": (F,)}``; PyTorch's default init.

    ``input_grad=False``: a network's first layer, whose input is the data; its backward
    returns ``dx = None`` and skips that product (like a PyTorch input without
    ``requires_grad``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 pad_mode="zero", bias=True, rng=None, dtype=np.float32, input_grad=True):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        fan_in = in_channels * kernel_size * kernel_size
        self.params["weight"] = _kaiming_uniform(
            rng, (out_channels, in_channels, kernel_size, kernel_size), fan_in, dtype)
        if bias:
            self.params["bias"] = _kaiming_uniform(rng, (out_channels,), fan_in, dtype)
        self.stride, self.padding, self.pad_mode = stride, padding, pad_mode
        self.input_grad = input_grad

    def forward(self, x):
        w = self.params["weight"]
        wino = None
        if (_winograd_fits(x, w, self.stride, self.padding, self.pad_mode)
                and min(w.shape[:2]) >= WINOGRAD_MIN_CHANNELS):
            # the weights change every training step: transform them per call (0.3 ms at
            # 128 × 128 channels); the input gradient's kernel only in a backward that needs it
            wino = WinogradWeights(winograd_weights(w.astype(x.dtype, copy=False)), None)
        return conv2d_forward(x, w, self.params.get("bias"), self.stride, self.padding,
                              self.pad_mode, wino=wino)

    def backward(self, dy, cache):
        dx, dw, db = conv2d_backward(dy, cache, need_dx=self.input_grad)
        grads = {"weight": dw}
        if "bias" in self.params:
            grads["bias"] = db
        return dx, grads

    def __repr__(self):
        F, C, KH, _ = self.params["weight"].shape
        return (f"Conv2d({C}, {F}, kernel={KH}, stride={self.stride}, "
                f"pad={self.padding} {self.pad_mode})")


class ConvTranspose2d(Layer):
    """``params = {"weight": (C, F, KH, KW), "bias": (F,)}``."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=2, padding=1,
                 output_padding=1, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        fan_in = out_channels * kernel_size * kernel_size
        self.params["weight"] = _kaiming_uniform(
            rng, (in_channels, out_channels, kernel_size, kernel_size), fan_in, dtype)
        if bias:
            self.params["bias"] = _kaiming_uniform(rng, (out_channels,), fan_in, dtype)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding

    def forward(self, x):
        return conv_transpose2d_forward(x, self.params["weight"], self.params.get("bias"),
                                        self.stride, self.padding, self.output_padding)

    def backward(self, dy, cache):
        dx, dw, db = conv_transpose2d_backward(dy, cache)
        grads = {"weight": dw}
        if "bias" in self.params:
            grads["bias"] = db
        return dx, grads

    def __repr__(self):
        C, F, KH, _ = self.params["weight"].shape
        return f"ConvTranspose2d({C}, {F}, kernel={KH}, stride={self.stride})"
