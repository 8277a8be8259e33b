"""2-D convolution (cross-correlation, as in every DL library) and its transpose.

    y[n, f, i, j] = b[f] + Σ_{c, u, v} w[f, c, u, v] · xp[n, c, s·i + u, s·j + v]

with ``xp`` the input padded by ``pad`` (zero or reflection). Shapes: x (N, C, H, W),
w (F, C, KH, KW), b (F,), y (N, F, OH, OW), OH = (H + 2·pad − KH) // s + 1.

Backward, with ``dy`` = ∂L/∂y:

    db[f]          = Σ_{n,i,j} dy[n, f, i, j]
    dw[f, c, u, v] = Σ_{n,i,j} dy[n, f, i, j] · xp[n, c, s·i + u, s·j + v]
    dxp[n, c, p, q] = Σ_{f, u, v: p = s·i + u, q = s·j + v} dy[n, f, i, j] · w[f, c, u, v]

and dx = the adjoint of the padding applied to dxp.

``conv2d_naive`` loops over output positions: the independent reference of the tests.
The fast paths, chosen by ``conv2d_forward(..., method=...)`` and recorded in the cache,
whose method the backward follows:

============  ===========================================  ======================================
method        forward                                      backward (dx; dw)
============  ===========================================  ======================================
"im2col"      im2col + one GEMM per band of output rows;   dx by col2im of dy @ W; dw = dyᵀ @ cols
              any stride, CPU or GPU (the GPU's path)
"shifted"     shifted GEMM: KH·KW products on contiguous   the same products transposed
              row slices of the channels-last padded       (dx and dw); with at most
              input, no im2col copy (CPU, stride 1)        THIN_CHANNELS input channels dx
                                                           by output-side shifting
"winograd"    Winograd F(2×2, 3×3) (CPU, 3×3, stride 1,    dx by Winograd with the rotated
              padding 1; ``winograd.py``)                  kernel; dw by F(2×2) in the
                                                           Winograd domain
"winograd4"   Winograd F(4×4, 3×3): 4× fewer multiplies    dx with F(4×4, 3×3); dw as above
              than direct (F(2×2): 2.25×), float32 error
              3–6× F(2×2)'s (explicit only, see below)
"thin_input"  im2col of fields of T output columns + one  dx by output-side shifting (the
              GEMM, K = KH·(KW+T−1)·C, N = T·F (CPU,       rotated kernel's thin side is its
              stride 1: for few input channels)            output); dw from the im2col matrix
"thin_output" output-side shifting: one GEMM of the rows'  dx by im2col of dy (the rotated
              im2col (K = KW·C, N = KH·F), then KH         kernel's thin side is its input),
              shifted adds (CPU, stride 1: few outputs)    dw from that same matrix; without
                                                           dx, dw by the shifted GEMM
============  ===========================================  ======================================

A ReLU that follows the convolution can run inside it (``conv2d_forward(..., relu=True)``,
``conv2d_backward(..., relu_y=y)``): the "shifted" and Winograd paths take max(·, 0) of each
band of output, and the ReLU's backward as they read each band of dy (frozen layers),
while the band is in cache, instead of a pass over memory of its own; the same bits.

``method="auto"`` (the default) picks by device, stride and shapes (``auto_method``): the
GPU and strides above 1 take im2col; on the CPU a 3×3, padding-1 layer with at least
``WINOGRAD_MIN_CHANNELS`` channels on both sides (and ``WINOGRAD_MIN_WIDE`` on one: whether
64 → 64 runs faster on the shifted GEMM depends on the CPU, ``winograd_min_wide``) takes
Winograd F(2×2, 3×3), a kernel of
5×5 or more with at most ``THIN_CHANNELS`` channels on one side its thin lowering, and
every other stride-1 layer the shifted GEMM. "winograd4" is about 20 % faster than
"winograd" on VGG16's layers of 64×64 pixels and more (9–29 %), but its float32 error
is 3–6× F(2×2)'s (RMS; 6–14× at the worst element) on VGG16's real activations and
gradients, beyond the 3× we accept, so "auto" does not take it: a caller that trades that
accuracy for speed asks for it — ``method="fast"`` is "auto" with F(4×4, 3×3) wherever
"auto" takes F(2×2, 3×3) and both sides have ``WINOGRAD4_MIN_CHANNELS`` (128: with fewer
it is slower than F(2×2)), for networks whose outputs need no more than ~1e-5 relative
accuracy (the transformer, whose pixels are rounded to 1/255; VGG16 stays on "auto").
docs/layers.md derives each path and names its tests.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_xp
from ..cpu import is_zen5
from ..parallel import band_rows, chunks, gemm, image_bands, matmul, pmap, row_bands, zeros
from .activations import relu_backward, relu_forward
from .affine import ChannelAffine, images, taken_by
from .base import Layer
from .im2col import col2im_add, im2col, im2col_cpu
from .padding import pad2d, pad2d_backward, padded_rows_cl
from .winograd import WinogradWeights, winograd_conv3x3, winograd_input_grad, winograd_weight_grad

METHODS = ("auto", "fast", "im2col", "shifted", "winograd", "winograd4", "thin_input", "thin_output")
WINOGRAD_TILES = {"winograd": 2, "winograd4": 4}  # the Winograd paths, F(m×m, 3×3): method -> m
CPU_DTYPES = (np.float32, np.float64)  # the CPU-only paths run in these


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

IM2COL_MAX_BYTES = 256 * 2**20   # the GPU's bands of rows (all images at once) stay under this
IM2COL_TASK_BYTES = 4 * 2**20    # a CPU task: one image's band of rows, its matrix near this
# (written by the copy, then read by the GEMM: 8 MiB left it to memory. The transformer's
# stride-2 layers, two workers, 2 / 4 / 8 MiB: 32 → 64 from 1024² 71 / 71 / 91 ms, from
# 512² 17.1 / 16.9 / 21.0, 64 → 128 from 512² 58.5 / 61.9 / 68.5; batch 4 from 256²
# 15.7–17.4 against 18.0–19.8)


def im2col_bands(N, OH, OW, K, itemsize):
    """Bands of output rows ``(i0, i1)`` whose im2col matrix for N images at once,
    N·rows·OW·K elements, stays under IM2COL_MAX_BYTES: the memory bound of the GPU
    path, of the CPU backward (per image) and of the transposed convolution."""
    return row_bands(OH, band_rows(IM2COL_MAX_BYTES, N * OW * K * itemsize, OH))


def im2col_tasks(xp, N, OH, OW, K, itemsize):
    """Work units ``(n0, n1, bands)`` of the im2col forward. CPU: one image and one band
    of rows per unit, the band's matrix near IM2COL_TASK_BYTES (``pmap`` runs them on
    every worker); GPU: the whole batch in ``im2col_bands``, in order."""
    if xp is not np:
        return [(0, N, im2col_bands(N, OH, OW, K, itemsize))]
    rows = band_rows(IM2COL_TASK_BYTES, OW * K * itemsize, OH)
    return [(n, n + 1, [(i0, i1)]) for n, i0, i1 in image_bands(N, OH, rows)]


def _input_rows(i0, i1, stride, KH):
    """Padded input rows [r0, r1) that output rows [i0, i1) read."""
    return i0 * stride, (i1 - 1) * stride + KH


def _run(xp, fn, tasks):
    """``pmap`` on the CPU; in order on the GPU."""
    return pmap(fn, tasks) if xp is np else [fn(t) for t in tasks]


def _im2col_forward(x, w, b, stride, pad, pad_mode, OH, OW, affine=None, moments=None):
    """im2col + GEMM in bands of output rows; returns (N, F, OH, OW) (channels-last memory).
    ``affine`` (CPU): the input is its output, mapped band by band (``padded_rows_cl``);
    ``moments`` (CPU): given each band of output as it is written."""
    xp = get_xp(x)
    N = x.shape[0]
    F, C, KH, KW = w.shape
    K = KH * KW * C
    wmat = w.transpose(0, 2, 3, 1).reshape(F, K)  # (F, KH·KW·C), matches the cols order
    y = xp.empty((N, OH, OW, F), dtype=x.dtype)

    def unit(task):
        n0, n1, bands = task
        for i0, i1 in bands:
            xb = padded_rows_cl(x[n0:n1], *_input_rows(i0, i1, stride, KH), pad, pad_mode,
                                images(affine, n0, n1))
            cols = im2col(xb, KH, KW, stride, 0, i1 - i0, OW)
            yb = y[n0:n1, i0:i1]
            if xp is np:  # a CPU task is one image's rows, contiguous: the product lands in y
                np.matmul(cols.reshape(-1, K), wmat.T, out=yb.reshape(-1, F))
            else:
                yb[...] = (cols.reshape(-1, K) @ wmat.T).reshape(yb.shape)
            if b is not None:
                yb += b
            if moments is not None:
                for n in range(n0, n1):
                    moments.add(n, i0, y[n, i0:i1])

    # K + KW·C: the band's padded input rows count too
    _run(xp, unit, im2col_tasks(xp, N, OH, OW, K + KW * C, x.itemsize))
    return y.transpose(0, 3, 1, 2)


def _im2col_backward(dy, x, w, stride, pad, pad_mode, dxpad):
    """Adds the padded input gradient into ``dxpad`` (N, Hp, Wp, C) unless it is None;
    returns dw, or None when ``x`` is None (a frozen layer). On the CPU one image per
    ``pmap`` task (the bands of an image overlap in dxpad), in cache-sized bands of rows
    (IM2COL_TASK_BYTES), each task with its own part of dw, added in task order; on the
    GPU the forward's units. (Bands of IM2COL_MAX_BYTES, one per image, left dcols and
    cols to memory: the stride-2 layers' backward, batch 4 from 256², 70.3 → 51.2 ms and
    41.7 → 36.7.)"""
    xp = get_xp(dy)
    N, F, OH, OW = dy.shape
    _, C, KH, KW = w.shape
    K = KH * KW * C
    wmat = w.transpose(0, 2, 3, 1).reshape(F, K)
    dy_cl = dy.transpose(0, 2, 3, 1)
    if xp is np:  # cache-sized bands, as the forward's (IM2COL_TASK_BYTES)
        bands = row_bands(OH, band_rows(IM2COL_TASK_BYTES, OW * (K + KW * C) * dy.itemsize, OH))
        tasks = [(n, n + 1, bands) for n in range(N)]
    else:
        tasks = im2col_tasks(xp, N, OH, OW, K + KW * C, dy.itemsize)

    def unit(task):
        n0, n1, bands = task
        dwmat = xp.zeros((F, K), dtype=dy.dtype) if x is not None else None
        for i0, i1 in bands:
            r0, r1 = _input_rows(i0, i1, stride, KH)
            dyb = xp.ascontiguousarray(dy_cl[n0:n1, i0:i1]).reshape(-1, F)  # (M, F)
            buf = None
            if dxpad is not None:
                buf = (dyb @ wmat).reshape(n1 - n0, i1 - i0, OW, KH, KW, C)  # dcols
                col2im_add(dxpad[n0:n1], buf, stride, i0)
            if dwmat is not None:
                xb = padded_rows_cl(x[n0:n1], r0, r1, pad, pad_mode)
                cols = im2col(xb, KH, KW, stride, 0, i1 - i0, OW, out=buf)  # reuses dcols' memory
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

SHIFTED_BAND_BYTES = 64 * 2**20  # a task's padded input rows (one image) stay under this
# Output positions per BLAS call: a band of output (and the input rows of its taps) stays
# in cache across the KH·KW accumulating products. Measured on 2 cores, 4096 is within
# noise of the best for 64 to 512 channels (docs/performance.md).
SHIFTED_GEMM_ROWS = 4096


def shifted_band_rows(OH, Wp, C, F, itemsize):
    """Output rows per task of the shifted GEMM: a padded input row (or a row of dy in the
    padded layout), Wp·max(C, F) elements, times the rows stays under SHIFTED_BAND_BYTES."""
    return band_rows(SHIFTED_BAND_BYTES, Wp * max(C, F) * itemsize, OH)


def _shifted_gemm_forward(xflat, wtap, b, y, Wp):
    """Stride-1 convolution of one band of a channels-last padded image, without im2col.

    xflat: (Rin, C), the band's padded input rows flattened (row q = r·Wp + t).
    wtap:  (KH, KW, F, C), contiguous.  b: (F,) or None.
    y:     (P, F) output rows q = i·Wp + j, written in place.
    Output q reads input row q + u·Wp + v for tap (u, v), so for a run of outputs the
    input rows of each tap are one contiguous slice:

        y[q0:q1] (R, F) = b + Σ_{u,v} xflat[q0 + off_uv : q1 + off_uv] (R, C) @ W_uvᵀ (C, F)

    with off_uv = u·Wp + v, computed by BLAS accumulating in place (beta = 1), in runs of
    SHIFTED_GEMM_ROWS outputs. Rows with j ≥ OW are garbage and never read: (Wp − OW)/Wp
    of the work, under 1 % at 256².
    """
    KH, KW, F, C = wtap.shape
    P = y.shape[0]
    for q0, q1 in row_bands(P, SHIFTED_GEMM_ROWS):
        band = y[q0:q1]
        if b is None:
            band[...] = 0
        else:
            band[...] = b
        for u in range(KH):
            for v in range(KW):
                off = u * Wp + v
                gemm(xflat[q0 + off:q1 + off], wtap[u, v].T, band)  # (R, C) @ (C, F)


def _shifted_gemm_relu(xflat, wtap, b, out, Wp):
    """``_shifted_gemm_forward`` followed by max(·, 0), into compact output rows ``out``
    (R, OW, F) (the layout of ``relu_forward``'s output): runs of whole output rows, about
    SHIFTED_GEMM_ROWS positions each, are computed in one scratch in the padded row
    layout, and each run's valid columns go through ``np.maximum`` into ``out`` while
    they are in cache (the ReLU and the crop of the garbage columns in one pass)."""
    R, OW, F = out.shape
    k = max(1, SHIFTED_GEMM_ROWS // Wp)
    scratch = np.empty((k * Wp, F), dtype=out.dtype)
    for r0, r1 in row_bands(R, k):
        _shifted_gemm_forward(xflat[r0 * Wp:], wtap, b, scratch[:(r1 - r0 - 1) * Wp + OW], Wp)
        np.maximum(scratch[:(r1 - r0) * Wp].reshape(r1 - r0, Wp, F)[:, :OW], 0, out=out[r0:r1])


def _shifted_gemm_backward(dyext, wtap, dxflat, xflat, dwtap, Wp):
    """Adjoint of ``_shifted_gemm_forward`` for one band, accumulating in place:

        dxflat[q0 + off : q1 + off] += dyext[q0:q1] (R, F) @ W_uv (F, C)
        dwtap[u, v] (C, F)         += xflat[q0 + off : q1 + off]ᵀ (C, R) @ dyext[q0:q1]

    dyext (P, F) is dy in the padded row layout with zeros at the garbage positions;
    ``xflat``/``dwtap`` are None for a frozen layer, ``dxflat`` when only dw is wanted.
    """
    KH, KW, F, C = wtap.shape
    P = dyext.shape[0]
    for q0, q1 in row_bands(P, SHIFTED_GEMM_ROWS):
        dband = dyext[q0:q1]
        for u in range(KH):
            for v in range(KW):
                off = u * Wp + v
                if dxflat is not None:
                    gemm(dband, wtap[u, v], dxflat[q0 + off:q1 + off])  # (R, F) @ (F, C)
                if dwtap is not None:
                    gemm(xflat[q0 + off:q1 + off].T, dband, dwtap[u, v])  # (C, R) @ (R, F)


def _shifted_forward(x, w, b, pad, pad_mode, OH, OW, relu=False, affine=None, moments=None):
    """Shifted-GEMM convolution, one band of rows of one image per task (``pmap``); only
    a band's padded input is a temporary. Returns (N, F, OH, OW), channels-last memory;
    ``relu``: max(·, 0) of it, compact (``_shifted_gemm_relu``). A thin input (at most
    THIN_CHANNELS, VGG16's conv1_1) goes through ``_lowered_forward`` instead: one GEMM
    with K = KH·KW·C per cache-sized band beats KH·KW products with K = C (conv1_1 at
    256²: 8.7 → 6.0 ms on one worker, 5.8 → 3.3 on two)."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    if C <= THIN_CHANNELS:
        return _lowered_forward(x, w, b, pad, pad_mode, OH, OW, relu=relu, affine=affine,
                                moments=moments)
    Wp = W + 2 * pad
    wtap = np.ascontiguousarray(w.transpose(2, 3, 0, 1))  # (KH, KW, F, C)
    y = np.empty((N, OH, OW if relu else Wp, F), dtype=x.dtype)  # no relu: columns ≥ OW are scratch

    def band(task):
        n, i0, i1 = task
        xb = padded_rows_cl(x[n:n + 1], i0, i1 + KH - 1, pad, pad_mode, images(affine, n, n + 1))
        if relu:
            _shifted_gemm_relu(xb.reshape(-1, C), wtap, b, y[n, i0:i1], Wp)
        else:
            yb = y[n, i0:i1].reshape(-1, F)[:(i1 - i0 - 1) * Wp + OW]
            _shifted_gemm_forward(xb.reshape(-1, C), wtap, b, yb, Wp)
        if moments is not None:
            moments.add(n, i0, y[n, i0:i1, :OW])

    pmap(band, image_bands(N, OH, shifted_band_rows(OH, Wp, C, F, x.itemsize)))
    return y[:, :, :OW, :].transpose(0, 3, 1, 2)


def _shifted_backward(dy, x, w, pad, pad_mode, dxpad, relu_y=None):
    """Adds the padded input gradient into ``dxpad`` (N, Hp, Wp, C) unless it is None;
    returns dw, or None when x is None. Tasks (``pmap``): bands of rows when only dw is
    wanted; when dx is, runs of bands (``_dx_groups``: the bands of one image overlap in
    dx, so neighbouring runs never run at once); each task returns its own part of dw,
    and the parts are added in task order. ``relu_y``: dy is taken as dy · (relu_y > 0)
    (``relu_backward``) where it is copied into each band."""
    N, F, OH, OW = dy.shape
    _, C, KH, KW = w.shape
    if dxpad is not None and C <= THIN_CHANNELS:
        _thin_input_grad(dy, w, dxpad, relu_y)
        return _shifted_weight_grad(dy, x, w, pad, pad_mode)
    Wp = x.shape[3] + 2 * pad if x is not None else dxpad.shape[2]
    wtap = np.ascontiguousarray(w.transpose(2, 3, 0, 1))
    rows = shifted_band_rows(OH, Wp, C, F, dy.itemsize)
    if dxpad is None:
        tasks = [(n, [(i0, i1)]) for n, i0, i1 in image_bands(N, OH, rows)]
    else:
        tasks = _dx_groups(N, OH, rows, KH)

    def image(task):
        n, bands = task
        dwtap = np.zeros((KH, KW, C, F), dtype=dy.dtype) if x is not None else None
        for i0, i1 in bands:
            R = i1 - i0
            dyext = np.empty((R, Wp, F), dtype=dy.dtype)
            if relu_y is None:
                dyext[:, :OW] = dy[n, :, i0:i1].transpose(1, 2, 0)
            else:  # relu_backward's multiply by the boolean mask, same bits, in cache-sized runs
                for r0, r1 in row_bands(R, max(1, SHIFTED_GEMM_ROWS // OW)):
                    rows = (n, slice(None), slice(i0 + r0, i0 + r1))
                    np.multiply(dy[rows].transpose(1, 2, 0), relu_y[rows].transpose(1, 2, 0) > 0,
                                out=dyext[r0:r1, :OW])
            dyext[:, OW:] = 0  # the garbage positions must not contribute
            P = (R - 1) * Wp + OW
            dxflat = None if dxpad is None else dxpad[n, i0:i1 + KH - 1].reshape(-1, C)  # a view
            xflat = None
            if x is not None:
                xflat = padded_rows_cl(x[n:n + 1], i0, i1 + KH - 1, pad, pad_mode).reshape(-1, C)
            _shifted_gemm_backward(dyext.reshape(-1, F)[:P], wtap, dxflat, xflat, dwtap, Wp)
        return dwtap

    parts = pmap(image, tasks) if dxpad is None else _in_phases(image, tasks)
    if x is None:
        return None
    dwtap = parts[0]
    for part in parts[1:]:
        dwtap += part
    return np.ascontiguousarray(dwtap.transpose(3, 2, 0, 1))


def _dx_groups(N, OH, rows, KH):
    """Tasks ``(n, bands, k)`` of a shifted-GEMM backward that writes dx: each image's
    output rows cut into as many runs as ``image_bands`` would give it (at most one per
    KH − 1 rows), each run in bands of ``rows`` rows, k the run's number in its image. A
    run's bands write dx rows [i0, i1 + KH − 1): run k overlaps runs k ± 1 only, so the
    even runs can go at once, then the odd ones (a batch-1 backward on two workers; one
    task per image before). Shapes only, so one and two workers give the same bits."""
    per_image = max(1, min(len(image_bands(N, OH)) // max(N, 1), OH // max(1, KH - 1)))
    return [(n, [(r0 + a, r0 + b) for a, b in row_bands(r1 - r0, rows)], k)
            for n in range(N) for k, (r0, r1) in enumerate(chunks(OH, per_image))]


def _in_phases(fn, tasks) -> list:
    """``fn((n, bands))`` for the ``_dx_groups`` tasks ``(n, bands, k)``: the even runs at
    once (``pmap``), then the odd ones, so that no two runs that add into the same rows of
    dx run together; the results in task order."""
    parts = [None] * len(tasks)
    for phase in (0, 1):
        mine = [i for i, t in enumerate(tasks) if t[2] % 2 == phase]
        for i, part in zip(mine, pmap(fn, [tasks[i][:2] for i in mine])):
            parts[i] = part
    return parts


def _thin_input_grad(dy, w, dxpad, relu_y=None):
    """The padded input gradient of a stride-1 layer with few input channels (C ≤
    THIN_CHANNELS, VGG16's conv1_1), added into ``dxpad`` (N, Hp, Wp, C), by output-side
    shifting:

        Zᵀ (KH·KW·C, P) = W_allᵀ (KH·KW·C, F) @ dyᵀ (F, P),   dxpad[i + u, j + v] += Zᵀ[(u, v, ·), (i, j)]

    The shifted GEMM's products have N = C = 3 columns; this one has P. A band's taps are
    summed in float64 (channels-first, runs of OW) and added into dxpad once, so most of
    dx is rounded once (the float32 tap sums of a first version lost accuracy:
    docs/performance.md, session 9). ``relu_y``: dy · (relu_y > 0), taken as each band of
    dy is copied. Tasks are the shifted backward's runs of cache-sized bands
    (``_dx_groups``, ``_in_phases``), each adding its bands into dxpad in order."""
    N, F, OH, OW = dy.shape
    _, C, KH, KW = w.shape
    K = KH * KW * C
    wallT = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(K, F))  # rows (u, v, c)
    dy_cl = dy.transpose(0, 2, 3, 1)
    mask = None if relu_y is None else relu_y.transpose(0, 2, 3, 1)
    tasks = _dx_groups(N, OH, band_rows(THIN_BAND_BYTES, OW * (F + K) * dy.itemsize, OH), KH)

    def run(task):
        n, bands = task
        for i0, i1 in bands:
            R = i1 - i0
            if mask is None:
                d = dy_cl[n, i0:i1]
            else:  # relu_backward's multiply
                d = np.multiply(dy_cl[n, i0:i1], mask[n, i0:i1] > 0)
            zT = (wallT @ d.reshape(R * OW, F).T).reshape(KH, KW, C, R, OW)
            acc = np.zeros((C, R + KH - 1, OW + KW - 1))
            for u in range(KH):
                for v in range(KW):
                    acc[:, u:u + R, v:v + OW] += zT[u, v]
            dxpad[n, i0:i1 + KH - 1] += acc.transpose(1, 2, 0)

    _in_phases(run, tasks)


def _shifted_weight_grad(dy, x, w, pad, pad_mode):
    """dw alone by the shifted GEMM (bands of rows as tasks), None for a frozen layer."""
    if x is None:
        return None
    return _shifted_backward(dy, x, w, pad, pad_mode, None)


# --------------------------------------------------------------------------- thin-channel lowerings (CPU)

THIN_CHANNELS = 8               # a side with at most this many channels is "thin"
THIN_MIN_TAPS = 25              # only for kernels of 5×5 and more (3×3 stays on the shifted GEMM)
THIN_BAND_BYTES = 4 * 2**20     # cache-sized temporaries (of 0.5 to 8 MB, best for 9×9, 3 ↔ 32)
THIN_WIDE_MAX = 4               # output columns per row of the thin-input product (``wide_columns``)
# the thin-output lowering's row matrix per band (``_scatter_forward``). The stylisation,
# two workers, AVX-512 kernels, min of 28 / 10 / 2 alternated runs: 256² 54.1 ms at 4 MB,
# 54.3 at 2, 57.4 at 1; 512² 199 / 209 / 233; 1024² 772 / 862 / 829
SCATTER_BAND_BYTES = 4 * 2**20
SCATTER_N_MULTIPLE = 16  # the GEMM's N (KH·F columns) padded to a multiple of this


def thin_method(C, F, KH, KW):
    """The thin lowering ``auto`` takes for C → F channels and a KH × KW kernel:
    "thin_output" (F small), "thin_input" (C small), or None.

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


def thin_bands(rows, row_bytes, budget=None):
    """Bands of ``rows`` rows whose temporary, ``row_bytes`` a row, stays under ``budget``
    (default THIN_BAND_BYTES: cache-sized, the thin lowerings' im2col and product matrices)."""
    return row_bands(rows, band_rows(THIN_BAND_BYTES if budget is None else budget, row_bytes, rows))


def _rot180(w):
    """(F, C, KH, KW) -> (C, F, KH, KW) flipped in both spatial axes: the kernel of the
    input gradient, ``dxp = full_correlation(dy, rot180(w))``."""
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def wide_columns(KW):
    """T, the output columns that one row of the thin-input product computes at once:
    (KW − 1) // 2, from 1 (3×3) to ``THIN_WIDE_MAX`` (9×9: 4)."""
    return max(1, min(THIN_WIDE_MAX, (KW - 1) // 2))


def wide_weights(w, T):
    """(F, C, KH, KW) -> the (KH·(KW + T − 1)·C, T·F) weight matrix of T output columns at
    once, ``W_T[(u, v, c), (t, f)] = w[f, c, u, v − t]`` for 0 ≤ v − t < KW, else 0. T = 1:
    the plain im2col weight matrix, rows in (u, v, c) order."""
    F, C, KH, KW = w.shape
    wt = np.zeros((KH, KW + T - 1, C, T, F), dtype=w.dtype)
    for t in range(T):
        wt[:, t:t + KW, :, t, :] = w.transpose(2, 3, 1, 0)
    return wt.reshape(KH * (KW + T - 1) * C, T * F)


def _lowered_forward(x, w, b, pad, pad_mode, OH, OW, want_y=True, other=None, relu=False,
                     affine=None, moments=None):
    """Stride-1 convolution by im2col + one GEMM, one image and one band of output rows
    (``THIN_BAND_BYTES`` of im2col matrix) per task (``pmap``). Returns (N, F, OH, OW), a
    view of channels-last memory (columns ≥ OW of each row are scratch).

    Each row of the product computes T = ``wide_columns(KW)`` neighbouring outputs: the
    receptive field of T columns, KH × (KW + T − 1) pixels, times ``wide_weights`` (K =
    KH·(KW + T − 1)·C, N = T·F). The im2col copy shrinks T·KW / (KW + T − 1) times (9×9:
    3×) and the product, though a quarter of it multiplies zeros, runs at a better rate
    (N = 128 instead of 32): the transformer's 9×9 first layer at 256², 7.9 → 6.5 ms on
    two workers, 5×5 with T = 2 −20 %; 3×3 gains nothing (T = 1). In float32 the same bits
    as T = 1 (measured on OpenBLAS's SkylakeX kernel: it adds each output's products in K
    order, and the zeros add nothing); float64 differs by rounding.

    ``relu``: max(y, 0) instead, taken in each band.

    ``other(n, i0, i1)``: an (R·OW, D) array per band of output rows; then the function
    also returns ``Σ colsᵀ @ other`` (KH·KW·C, D), the weight gradient of the thin layers
    (see ``_thin_backward``), as ``(y, that)``; ``want_y=False`` skips y (None). With the
    wide fields that is ``Σ cols_Tᵀ @ other_T`` (other's T neighbouring rows side by side,
    (R·A, T·D); K_T × T·D per band) folded by ``fold_wide``: the thin layers' weight
    gradients, batch 4 at 256², on two workers: 9×9 3 → 32 (dw alone) 31.8 → 24.8 ms, 32 → 3
    (dx and dw) 63 → 49 ms; their RMS error against float64 3.8e-7 → 3.7e-7."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    T = wide_columns(KW)
    A = -(-OW // T)                      # groups of T output columns; the last one may reach past OW
    KWT = KW + T - 1
    K = KH * KWT * C
    wmat = wide_weights(w, T)
    bias = None if b is None else np.tile(b, T)
    y = np.empty((N, OH, A * T, F), dtype=x.dtype) if want_y else None

    def band(task):
        n, i0, i1 = task
        xb = padded_rows_cl(x[n:n + 1], i0, i1 + KH - 1, pad, pad_mode, images(affine, n, n + 1))
        if A * T > OW:  # zero columns for the scratch outputs of the last group to read
            xb = np.concatenate([xb, np.zeros(xb.shape[:2] + (A * T - OW, C), dtype=xb.dtype)], axis=2)
        cols = im2col_cpu(xb, KH, KWT, 1, 0, i1 - i0, A, col_stride=T).reshape(-1, K)
        if want_y:
            yb = y[n, i0:i1].reshape(-1, T * F)
            np.matmul(cols, wmat, out=yb)  # (R·A, K) @ (K, T·F)
            if bias is not None:
                yb += bias
            if relu:  # relu_forward's operation, in the band
                np.maximum(yb, 0, out=yb)
            if moments is not None:
                moments.add(n, i0, y[n, i0:i1, :OW])
        if other is None:
            return None
        o = other(n, i0, i1)
        R, D = i1 - i0, o.shape[1]
        if A * T > OW:  # the scratch outputs' rows of other are zeros
            o = np.concatenate([o.reshape(R, OW, D), np.zeros((R, A * T - OW, D), dtype=o.dtype)], axis=1)
        return cols.T @ o.reshape(R * A, T * D)  # (K_T, R·A) @ (R·A, T·D)

    rows = band_rows(THIN_BAND_BYTES, A * K * x.itemsize, OH)
    parts = pmap(band, image_bands(N, OH, rows))
    out = None if y is None else y[:, :, :OW].transpose(0, 3, 1, 2)
    if other is None:
        return out
    total = parts[0]
    for part in parts[1:]:
        total += part
    return out, fold_wide(total, KH, KW, C, T)


def fold_wide(total, KH, KW, C, T):
    """(KH·(KW + T − 1)·C, T·D) -> (KH·KW·C, D): ``Σ_t total[(u, v + t, c), (t, d)]``, the
    products of T-column fields and T neighbouring rows of other (``_lowered_forward``)
    gathered back onto the kernel's taps (t in order)."""
    if T == 1:
        return total
    D = total.shape[1] // T
    t5 = total.reshape(KH, KW + T - 1, C, T, D)
    out = t5[:, 0:KW, :, 0].copy()
    for t in range(1, T):
        out += t5[:, t:t + KW, :, t]
    return out.reshape(KH * KW * C, D)


def _scatter_forward(x, w, b, pad, pad_mode, OH, OW, affine=None):
    """Stride-1 convolution for few output channels, by lowering the kernel's columns only
    and shifting the output by its rows:

        Z[(r, j), (u, f)] = Σ_{v,c} xpad[c, r, j + v] · w[f, c, u, v]     (one GEMM)
        y[f, i, j] = b[f] + Σ_u Z[(i + u, j), (u, f)]                      (KH shifted adds)

    over the rows r of the padded input: the GEMM's K = KW·C (288 for 9×9 from 32
    channels) and N = KH·F (27, padded to ``SCATTER_N_MULTIPLE``: OpenBLAS multiplies
    27 columns at 60 % of the rate of 32); the im2col matrix of a row is KW·C floats a
    position (``im2col_cpu`` with one kernel row). Each band of input rows
    (``SCATTER_BAND_BYTES`` of matrix) is multiplied once and added onto every output row
    it reaches, in u order. Returns (N, F, OH, OW), a view of channels-last memory.

    A task (``pmap``) owns output rows [o0, o1) of one image and multiplies the input
    rows they read, [o0, o1 + KH − 1): the KH − 1 rows of halo are multiplied twice when
    an image is cut into several tasks (only when the batch is smaller than MIN_TASKS)."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    NZ = -(-KH * F // SCATTER_N_MULTIPLE) * SCATTER_N_MULTIPLE
    wrow = np.zeros((KW * C, NZ), dtype=x.dtype)  # rows (v, c), columns (u, f)
    wrow[:, :KH * F] = w.transpose(3, 1, 2, 0).reshape(KW * C, KH * F)
    y = np.empty((N, OH, OW, F), dtype=x.dtype)

    def rows_of(task):
        n, o0, o1 = task
        out = y[n, o0:o1]  # (rows, OW, F)
        out[...] = 0 if b is None else b
        for r0, r1 in thin_bands(o1 - o0 + KH - 1, OW * KW * C * x.itemsize, SCATTER_BAND_BYTES):
            xb = padded_rows_cl(x[n:n + 1], o0 + r0, o0 + r1, pad, pad_mode, images(affine, n, n + 1))
            cols = im2col_cpu(xb, 1, KW, 1, 0, r1 - r0, OW).reshape(-1, KW * C)  # one-row fields
            z = (cols @ wrow).reshape(r1 - r0, OW, NZ)
            for u in range(KH):  # input row r reaches output row r − u through kernel row u
                i0, i1 = max(0, r0 - u), min(o1 - o0, r1 - u)
                if i1 > i0:
                    out[i0:i1] += z[i0 + u - r0:i1 + u - r0, :, u * F:(u + 1) * F]
            del cols, z  # before the next band's: one band's matrices alive per task

    pmap(rows_of, image_bands(N, OH))
    return y.transpose(0, 3, 1, 2)


def _thin_forward(method, x, w, b, pad, pad_mode, OH, OW, affine=None, moments=None):
    if method == "thin_input":
        return _lowered_forward(x, w, b, pad, pad_mode, OH, OW, affine=affine, moments=moments)
    return _scatter_forward(x, w, b, pad, pad_mode, OH, OW, affine)


def _thin_backward(method, dy, x, w, pad, pad_mode, need_dx):
    """``(dxpad, dw)`` of a thin-channel layer. The input gradient is the full correlation
    of dy (zero-padded by KH − 1) with the rotated kernel, whose thin side is the other
    one: a "thin_input" layer takes its dx by output-side shifting and vice versa.

    The weight gradient comes from an im2col matrix of the thin side, one GEMM per band:
    thin input, ``dW[(u,v,c), f] = Σ_q cols_x[q, (u,v,c)] · dy[q, f]``; thin output, from
    the very matrix the input gradient builds of dy (zero-padded by KH − 1, positions p of
    the padded input): ``dW[f, c, KH−1−u, KW−1−v] = Σ_p cols_dy[p, (u,v,f)] · xpad[p, c]``
    (substitute p = q + (KH−1−u, KW−1−v) in dw's formula). A "thin_output" layer without
    dx has no such matrix to share: its dw is the shifted GEMM's (bands as tasks).
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
        return None, _shifted_weight_grad(dy, x, w, pad, pad_mode)
    if x is None:
        return _lowered_forward(dy, _rot180(w), None, KH - 1, "zero", Hp, Wp), None
    dxpad, dwr = _lowered_forward(dy, _rot180(w), None, KH - 1, "zero", Hp, Wp,
                                  other=lambda n, i0, i1: padded_rows_cl(x[n:n + 1], i0, i1, pad, pad_mode).reshape(-1, C))
    dw = np.ascontiguousarray(dwr.reshape(KH, KW, F, C)[::-1, ::-1].transpose(2, 3, 0, 1))
    return dxpad, dw


# --------------------------------------------------------------------------- choosing a path

WINOGRAD_MIN_CHANNELS = 64  # below this the 16 GEMMs are too thin to pay for the transforms


def winograd_min_wide(info: dict | None = None) -> int:
    """The channels one side of a layer needs (both having ``WINOGRAD_MIN_CHANNELS``) for
    "auto" to take Winograd rather than the shifted GEMM, on the CPU ``info`` describes
    (``cpu.cpu_info()``). 64 → 64 is the layer where the two paths are close, and which
    wins depends on the CPU (two workers; forward / input gradient of a frozen layer with
    its ReLU, ms):

    - Intel Xeon (AVX-512, 2 MB L2 per core; OpenBLAS on its SkylakeX kernels): the
      shifted GEMM. VGG16's conv1_2 at 256²
      21.3 / 25.2 by F(2×2) against 19.6 / 21.2; the transformer's residual convolutions
      at width 0.5 (reflection, batch 4 at 64², forward / dx + dw) 6.0 / 13.2 by F(2×2),
      5.3 / 11.6 shifted. From 96 channels on one side F(2×2) is ahead or level: 96.
    - AMD Zen 5 (AVX-512, 1 MB L2 per core; ``cpu.is_zen5``): F(2×2). With OpenBLAS's
      Haswell kernels conv1_2 at 256² 24.0 / 24.5 against 34.2 / 34.9, at 512² 146 / 149
      against 220 / 196; batch 4 at 64² 9.5 / 9.4 against 10.8 / 13.2 (the shifted GEMM's
      K = 64 products reach 150 GFLOP/s of the 200 of a square one there); with its
      SkylakeX kernels still 26.5 / 26.8 against 28.8 / 32.4: 64, Winograd wherever it
      may run.

    Other CPUs take the Xeon's choice, the one measured first."""
    return WINOGRAD_MIN_CHANNELS if is_zen5(info) else 96


WINOGRAD_MIN_WIDE = winograd_min_wide()
# F(4×4) ("fast") only where both sides have this many: with 64 output channels it lost to
# F(2×2) and the shifted GEMM (128 → 64 at 128², batch 4: 39.0 / 91.7 against 35.4 / 83.6
# and 35.6 / 80.3 ms), at 96 → 96 it was level with F(2×2).
WINOGRAD4_MIN_CHANNELS = 128
RELU_FUSED_METHODS = ("shifted", "winograd", "winograd4")  # take a following ReLU in their bands


def auto_method(x, w, stride, pad, fast: bool = False) -> str:
    """The path ``method="auto"`` takes for input x and weights w (see the module
    docstring). On the CPU, measured against im2col (one thread, batch 4 at 256² unless
    noted), the shifted GEMM is as fast or faster from 3 to 128 channels and 3×3 to 9×9
    kernels, forward and backward; Winograd beats it from 64 channels on both sides and
    ``WINOGRAD_MIN_WIDE`` on one (96, or 64 on some CPUs: ``winograd_min_wide``); the thin
    lowerings beat it for 9×9 layers with 3 channels (docs/performance.md). Winograd
    F(4×4) ("winograd4") is faster still on large images but not accurate enough in
    float32 to be the default (docs/layers.md); ``fast`` takes it instead of F(2×2) where
    both sides have ``WINOGRAD4_MIN_CHANNELS``."""
    F, C, KH, KW = w.shape
    if get_xp(x) is not np or stride != 1 or x.dtype not in CPU_DTYPES:
        return "im2col"
    if (KH, KW) == (3, 3) and pad == 1 and min(C, F) >= WINOGRAD_MIN_CHANNELS \
            and max(C, F) >= WINOGRAD_MIN_WIDE:
        return "winograd4" if fast and min(C, F) >= WINOGRAD4_MIN_CHANNELS else "winograd"
    return thin_method(C, F, KH, KW) or "shifted"


def _check_method(method, x, w, stride, pad):
    """A plain ValueError when ``method`` is unknown or cannot run this convolution."""
    if method not in METHODS:
        raise ValueError(f"conv2d: unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if method in ("auto", "fast", "im2col"):
        return
    if get_xp(x) is not np:
        raise ValueError(f"conv2d: method {method!r} runs on the CPU only (GPU arrays take 'im2col')")
    if x.dtype not in CPU_DTYPES:
        raise ValueError(f"conv2d: method {method!r} takes float32 or float64, got {x.dtype}")
    if stride != 1:
        raise ValueError(f"conv2d: method {method!r} needs stride 1, got stride {stride}")
    if method in WINOGRAD_TILES and (w.shape[2:] != (3, 3) or pad != 1):
        raise ValueError(f"conv2d: method {method!r} needs a 3x3 kernel with padding 1, got "
                         f"{w.shape[2]}x{w.shape[3]} with padding {pad}")


# --------------------------------------------------------------------------- dispatcher

class ConvCache(NamedTuple):
    method: str          # the path the forward took, which the backward follows (METHODS[1:])
    x: object            # the input itself (not a copy), or None for frozen layers
    w: object
    has_bias: bool
    stride: int
    pad: int
    pad_mode: str
    x_shape: tuple
    wino: object = None  # WinogradWeights of the Winograd paths (WINOGRAD_TILES), else None


def conv2d_forward(x, w, b=None, stride: int = 1, pad: int = 0, pad_mode: str = "zero",
                   keep_input: bool = True, method: str = "auto", wino=None, relu: bool = False,
                   affine=None, moments=None):
    """Convolution forward. x (N, C, H, W), w (F, C, KH, KW), b (F,) or None.

    Returns ``(y, cache)`` with y (N, F, OH, OW) (a view of channels-last memory on the
    CPU paths). ``method``: one of ``METHODS`` (the module docstring; "auto" chooses by
    ``auto_method``); a path that cannot run this convolution is a ValueError. The cache
    records the path taken, and ``conv2d_backward`` follows it.
    ``keep_input=False`` drops the input from the cache: the backward then returns only
    dx (dw = db = None), which is all a frozen network needs. The cache references ``x``
    itself (no copy): do not modify it in place before the backward.
    ``wino``: the layer's ``winograd.winograd_transform(w)``, kept by a caller whose
    weights do not change (VGG16), which keeps each transform once made; used when the path
    is a Winograd one, which otherwise transforms w per call (and the input gradient's
    kernel only in a backward that needs it).
    ``relu=True`` returns ``relu_forward(y)``'s output instead of y, the same bits in the
    same memory order (compact channels-last): the paths of ``RELU_FUSED_METHODS`` take
    max(·, 0) of each band of output as they finish it, in cache; the others run
    ``relu_forward`` after. That output is also the ReLU's cache (``relu_forward``'s cache
    is its output); the pair's backward is ``conv2d_backward(dy, cache, relu_y=output)``.
    ``affine``: an ``affine.ChannelAffine`` whose x is this x; the convolution's input is
    then its output, which the NumPy paths map band by band as they copy their input rows
    (never made whole); with ``keep_input`` (the cache needs it) or on the GPU it is made
    first. ``moments``: a ``moments.BandMoments`` of the output, which the NumPy paths but
    "thin_output" give each band of output as they write it (an instance norm after the
    convolution then reads no input of its own for its statistics).
    """
    x, affine = taken_by("conv2d", x, affine, not keep_input and get_xp(x) is np)
    N, C, H, W = x.shape
    F, Cw, KH, KW = w.shape
    if Cw != C:
        raise ValueError(f"conv2d: input has {C} channels, weights expect {Cw}")
    _check_method(method, x, w, stride, pad)
    w = w.astype(x.dtype, copy=False)
    OH = conv_output_size(H, KH, stride, pad)
    OW = conv_output_size(W, KW, stride, pad)
    if OH < 1 or OW < 1:
        raise ValueError(f"conv2d: input {H}x{W} too small for kernel {KH}x{KW} with padding {pad}")
    bias = None if b is None else b.astype(x.dtype, copy=False)
    if method in ("auto", "fast"):
        method = auto_method(x, w, stride, pad, fast=method == "fast")
    if method in WINOGRAD_TILES:
        if wino is None:
            wino = WinogradWeights(w)
        U = wino.forward(WINOGRAD_TILES[method])
        y = winograd_conv3x3(x, U.astype(x.dtype, copy=False), bias, pad_mode, relu=relu, affine=affine,
                             moments=moments)
    elif method in ("thin_input", "thin_output"):
        y = _thin_forward(method, x, w, bias, pad, pad_mode, OH, OW, affine, moments)
    elif method == "shifted":
        y = _shifted_forward(x, w, bias, pad, pad_mode, OH, OW, relu, affine, moments)
    else:
        y = _im2col_forward(x, w, bias, stride, pad, pad_mode, OH, OW, affine,
                            moments if get_xp(x) is np else None)
    if relu and method not in RELU_FUSED_METHODS:
        y, _ = relu_forward(y)
    cache = ConvCache(method, x if keep_input else None, w, b is not None, stride, pad,
                      pad_mode, tuple(x.shape), wino if method in WINOGRAD_TILES else None)
    return y, cache


def conv2d_backward(dy, cache: ConvCache, need_dx: bool = True, relu_y=None):
    """Returns ``(dx, dw, db)`` by the path ``cache.method`` names (the module docstring
    gives each path's rule); dw and db are None when the cache holds no input, dx is None
    when ``need_dx`` is False (a network's first layer: its input is the data).

    ``relu_y``: the output of a ReLU that followed this convolution (its cache, or
    ``conv2d_forward(..., relu=True)``'s output); dy is then the gradient at that output,
    and the backward is that of ``relu_backward(dy, relu_y)``. A frozen layer (no input in
    the cache) on a path of ``RELU_FUSED_METHODS`` takes the ReLU's multiply band by band
    as it first reads dy (the same bits); every other runs ``relu_backward`` first."""
    if relu_y is not None and not (cache.method in RELU_FUSED_METHODS and cache.x is None
                                   and need_dx and dy.shape == relu_y.shape):
        dy, relu_y = relu_backward(dy, relu_y), None
    db = dy.sum(axis=(0, 2, 3)) if cache.x is not None and cache.has_bias else None
    if cache.method in WINOGRAD_TILES:
        dx, dw = _winograd_backward(dy, cache, need_dx, relu_y)
    elif cache.method in ("thin_input", "thin_output"):
        dxpad, dw = _thin_backward(cache.method, dy, cache.x, cache.w, cache.pad, cache.pad_mode, need_dx)
        dx = None if dxpad is None else pad2d_backward(dxpad, cache.pad, cache.pad_mode, overwrite=True)
    else:
        dx, dw = _gemm_backward(dy, cache, need_dx, relu_y)
    return dx, dw, db


def _winograd_backward(dy, cache, need_dx, relu_y=None):
    """dx by ``winograd_input_grad`` (the rotated kernel: transformed here unless the
    caller's ``wino`` holds it), dw by ``winograd_weight_grad`` on tiles of
    ``WEIGHT_GRAD_TILE`` whatever the forward's tile; ``relu_y`` (frozen layers only) as in
    ``conv2d_backward``."""
    dx = None
    if need_dx:
        U = cache.wino.input_grad(WINOGRAD_TILES[cache.method])
        dx = winograd_input_grad(dy, U.astype(dy.dtype, copy=False), cache.pad_mode, relu_y,
                                 w=cache.w.astype(dy.dtype, copy=False))
    if cache.x is None:
        return dx, None
    return dx, winograd_weight_grad(cache.x, dy, WEIGHT_GRAD_TILE, cache.pad_mode)


# The weight gradient of the Winograd layers in the Winograd domain of F(2×2, 3×3): 0.44 of
# the shifted GEMM's products. Two workers, AMD Zen 5 (OpenBLAS's AVX2 kernels), dx + dw,
# reflection, ms: 128 → 128, batch 4 at 64², 50.8 → 41.4 (F(4×4) forward: 48.1 → 40.8);
# 128 → 64 at 128² 109–113 → 93–99; 64 → 64 at 64² level (16.3 / 16.5). F(4×4) was no
# faster (43.2 against 42.9) at 5× the error: RMS against float64 3.1e-7 (shifted), 4.7e-7
# (F(2×2)), 2.2e-6 (F(4×4)). docs/layers.md.
WEIGHT_GRAD_TILE = 2


def _gemm_backward(dy, cache, need_dx, relu_y=None):
    """dx and dw of the "shifted" and "im2col" paths: the padded input gradient is
    accumulated channels-last, then folded by the padding's adjoint. ``relu_y`` (the
    "shifted" path of a frozen layer only) as in ``conv2d_backward``."""
    if not need_dx:
        if cache.method == "shifted":
            return None, _shifted_weight_grad(dy, cache.x, cache.w, cache.pad, cache.pad_mode)
        if cache.x is None:
            return None, None
        return None, _im2col_backward(dy, cache.x, cache.w, cache.stride, cache.pad, cache.pad_mode, None)
    xp = get_xp(dy)
    N, C, H, W = cache.x_shape
    p = cache.pad
    shape = (N, H + 2 * p, W + 2 * p, C)
    dxpad = zeros(shape, dy.dtype) if xp is np else xp.zeros(shape, dtype=dy.dtype)
    if cache.method == "shifted":
        dw = _shifted_backward(dy, cache.x, cache.w, p, cache.pad_mode, dxpad, relu_y)
    else:
        dw = _im2col_backward(dy, cache.x, cache.w, cache.stride, p, cache.pad_mode, dxpad)
    # (N, C, H, W) view of channels-last memory, like the forward's output
    dx = pad2d_backward(dxpad, p, cache.pad_mode, axes=(1, 2), overwrite=True).transpose(0, 3, 1, 2)
    return dx, dw


# --------------------------------------------------------------------------- transposed conv

def _matmul(a, b):
    """``a @ b``; on the CPU cut into bands of rows on the pool's workers
    (``parallel.matmul``: the same bits)."""
    return matmul(a, b) if get_xp(a) is np else a @ b


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

    in ``im2col_bands`` of input rows, the products cut into tasks by ``_matmul``.
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
    for i0, i1 in im2col_bands(N, H, W, K, x.itemsize):
        xb = xp.ascontiguousarray(x_nhwc[:, i0:i1]).reshape(-1, C)
        cols = _matmul(xb, wmat).reshape(N, i1 - i0, W, KH, KW, F)
        col2im_add(full, cols, stride, i0)
    y = full[:, pad:pad + OH, pad:pad + OW, :].transpose(0, 3, 1, 2)
    if b is not None:
        y = y + b.astype(x.dtype, copy=False).reshape(1, F, 1, 1)
    return y, ConvTransposeCache(x, w, b is not None, stride, pad, output_padding)


def conv_transpose2d_backward(dy, cache: ConvTransposeCache):
    """Returns ``(dx, dw, db)``. dx is an ordinary strided convolution of dy:

        dx[n, c, i, j] = Σ_{f,u,v} w[c, f, u, v] · dy_full[n, f, s·i + u, s·j + v]
        dw[c, f, u, v] = Σ_{n,i,j} x[n, c, i, j] · dy_full[n, f, s·i + u, s·j + v]

    where dy_full is dy zero-padded back to the uncropped output size, in
    ``im2col_bands`` of rows, the products cut into tasks by ``_matmul``.
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
    for i0, i1 in im2col_bands(N, H, W, K, dy.itemsize):
        cols = im2col(dyfull, KH, KW, s, i0, i1, W).reshape(-1, K)  # (M, KH·KW·F)
        dx[:, i0:i1] = _matmul(cols, wmat.T).reshape(N, i1 - i0, W, C)
        xb = xp.ascontiguousarray(x_nhwc[:, i0:i1]).reshape(-1, C)
        dwmat += _matmul(xb.T, cols)
    dw = dwmat.reshape(C, KH, KW, F).transpose(0, 3, 1, 2)
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return dx.transpose(0, 3, 1, 2), xp.ascontiguousarray(dw), db


# --------------------------------------------------------------------------- classes

def _kaiming_uniform(rng, shape, fan_in, dtype):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Conv2d(Layer):
    """``params = {"weight": (F, C, KH, KW), "bias": (F,)}``; PyTorch's default init.

    ``method``: the path of ``conv2d_forward`` ("auto": chosen per call by the shapes and
    the device). The weights change every training step, so a "winograd" layer transforms
    them per call (0.3 ms at 128 × 128 channels), the input gradient's kernel only in a
    backward that needs it.
    ``input_grad=False``: a network's first layer, whose input is the data; its backward
    returns ``dx = None`` and skips that product (like a PyTorch input without
    ``requires_grad``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 pad_mode="zero", bias=True, rng=None, dtype=np.float32, input_grad=True,
                 method="auto"):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"Conv2d: unknown method {method!r}: choose one of {', '.join(METHODS)}")
        rng = rng if rng is not None else np.random.default_rng()
        fan_in = in_channels * kernel_size * kernel_size
        self.params["weight"] = _kaiming_uniform(
            rng, (out_channels, in_channels, kernel_size, kernel_size), fan_in, dtype)
        if bias:
            self.params["bias"] = _kaiming_uniform(rng, (out_channels,), fan_in, dtype)
        self.stride, self.padding, self.pad_mode = stride, padding, pad_mode
        self.input_grad = input_grad
        self.method = method
        self._kept = None  # eval mode: (weights copy, their WinogradWeights), see _kept_transform

    def forward(self, x):
        w = self.params["weight"]
        return conv2d_forward(x, w, self.params.get("bias"), self.stride, self.padding, self.pad_mode,
                              method=self.method, wino=self._kept_transform(w))

    def infer(self, x, moments=None):
        """``forward``'s output, without a cache. x: an array, or an
        ``affine.ChannelAffine`` whose output is the input (applied as the input rows are
        read, ``conv2d_forward``'s ``affine``); ``moments``: ``conv2d_forward``'s."""
        affine = x if isinstance(x, ChannelAffine) else None
        x = affine.x if affine is not None else x
        w = self.params["weight"]
        return conv2d_forward(x, w, self.params.get("bias"), self.stride, self.padding, self.pad_mode,
                              keep_input=False, method=self.method, wino=self._kept_transform(w),
                              affine=affine, moments=moments)[0]

    def _kept_transform(self, w):
        """In eval mode, the Winograd kernels of the weights, kept from call to call
        (stylising a folder or a clip: 15 ms of a 256² stylisation at width 1 was their
        transform) and made again when the weights differ from the copy they were made of
        (one comparison, ~7× cheaper than the transform). In training mode, None: the
        weights change every step, and ``conv2d_forward`` transforms them per call."""
        if self.training or get_xp(w) is not np or w.shape[2:] != (3, 3):
            self._kept = None
            return None
        kept = self._kept
        if kept is None or kept[0].dtype != w.dtype or not np.array_equal(kept[0], w):
            copy = w.copy()
            kept = self._kept = (copy, WinogradWeights(copy))
        return kept[1]

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
