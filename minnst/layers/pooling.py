"""2-D max and average pooling, NCHW, no padding.

Output size as PyTorch (floor): ``OH = (H − kernel) // stride + 1``, ``OW`` likewise; rows
and columns that do not fill a whole window are dropped (their gradient is 0).
``stride=None`` means ``stride = kernel``.

Three NumPy implementations behind one signature:

* average pooling with ``kernel == stride`` (VGG's 2×2/2): reshape to
  ``(N, OH, k, OW, k, C)`` and reduce, no Python loop at all;
* otherwise: a loop over the ``k²`` window offsets, never over pixels. For one
  offset ``(ki, kj)`` the window elements form one strided slice of ``x``, so windows may
  overlap (``k > s``) or leave gaps (``k < s``);
* ``*_naive``: plain loops over every output pixel, the reference the tests compare with.

Each public function dispatches on the array's device to ``op_cpu`` (the first two
above) or ``op_gpu`` (the launcher of kernels/pool.cu); both validate with ``check_pool``.

Max pooling routes each window's gradient to exactly one element, the first maximum in
row-major window order (as PyTorch), also when values tie; a NaN counts as the maximum so
that it propagates. Its cache is a compact ``(N, OH, OW, C)`` uint8 index of that element;
or, with ``lazy=True`` (a caller that keeps the input anyway, as VGG16's ReLU caches do),
the input itself, and the backward finds the same indices band by band: a forward that no
backward follows then skips them (for 2×2/2 on the CPU, 5× faster).

The CPU code computes on the channels-last view of the data (see ``_cl``), the kernels on
either memory order.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minnst.backend import get_xp, is_gpu_array
from minnst.kernels import launch
from minnst.layers.base import Layer
from minnst.parallel import image_bands, pmap


class MaxPoolCache(NamedTuple):
    idx: object  # (N, OH, OW, C) uint8: row-major offset ki·k + kj of each window's maximum
    x_shape: tuple
    kernel: int
    stride: int
    x: object = None  # the input, when idx is None: the backward finds the indices (``lazy``)


class AvgPoolCache(NamedTuple):
    x_shape: tuple
    kernel: int
    stride: int


def check_pool(x, kernel, stride):
    """Validate the arguments of a pooling; return ``(stride, OH, OW)``."""
    stride = kernel if stride is None else stride
    if x.ndim != 4:
        raise ValueError(f"pooling expects NCHW input, got shape {tuple(x.shape)}")
    if kernel < 1 or stride < 1:
        raise ValueError(f"kernel and stride must be >= 1, got {kernel} and {stride}")
    H, W = x.shape[2:]
    if H < kernel or W < kernel:
        raise ValueError(f"pooling window {kernel}x{kernel} is larger than the input {H}x{W}")
    return stride, (H - kernel) // stride + 1, (W - kernel) // stride + 1


def _offset(ki, kj, stride, OH, OW):
    """Index such that ``xt[_offset(...)]`` is the ``(N, OH, OW, C)`` array of every
    window's element at offset ``(ki, kj)``, ``xt`` being the channels-last view."""
    return (slice(None),
            slice(ki, ki + stride * (OH - 1) + 1, stride),
            slice(kj, kj + stride * (OW - 1) + 1, stride),
            slice(None))


def _cl(x):
    """The channels-last view (N, H, W, C) of an NCHW array. Pooling computes on it so
    that its outputs keep the channels-last memory order the CPU convolution produces
    (and a plain NCHW input simply gives a channels-last output)."""
    return x.transpose(0, 2, 3, 1)


def _blocks(xt, k, OH, OW):
    """The non-overlapping k×k windows (kernel == stride) as an (N, OH, k, OW, k, C) view."""
    N, C = xt.shape[0], xt.shape[3]
    return xt[:, :OH * k, :OW * k].reshape(N, OH, k, OW, k, C)


def _zeros_cl(xp, x_shape, dtype):
    N, C, H, W = x_shape
    return xp.zeros((N, H, W, C), dtype=dtype)


def _index_dtype(kernel):
    """The max-pooling index type: uint8 while the window has at most 256 elements."""
    return np.uint8 if kernel * kernel <= 256 else np.int32


# --------------------------------------------------------------------------- max pooling

def maxpool2d_forward(x, kernel=2, stride=None, lazy: bool = False):
    """``y[n,c,i,j] = max_{0≤a,b<k} x[n, c, i·s + a, j·s + b]``.

    x: (N, C, H, W) -> y: (N, C, OH, OW); cache: ``MaxPoolCache``. ``lazy`` (CPU, 2×2/2):
    the cache keeps x instead of the indices (the module docstring); same y, same gradient.
    """
    if is_gpu_array(x):
        return maxpool2d_forward_gpu(x, kernel, stride)
    return maxpool2d_forward_cpu(x, kernel, stride, lazy)


def _pool_band(xb, yb, ib, R, OW, k, stride):
    """Max and first-max index of R output rows: xb the input rows they read (1, ·, ·, C)
    channels-last, yb and ib (1, R, OW, C) written. Used by the forward, and by a lazy
    cache's backward (the same bits)."""
    if k == stride == 2 and _max2x2(xb, yb, ib, R, OW):
        return
    yb[...] = xb[_offset(0, 0, stride, R, OW)]
    ib[...] = 0
    for p in range(1, k * k):
        xs = xb[_offset(*divmod(p, k), stride, R, OW)]
        # strict '>' keeps the first maximum on ties; the first NaN wins, as in argmax
        take = (xs > yb) | (np.isnan(xs) & ~np.isnan(yb))
        np.copyto(yb, xs, where=take)
        np.copyto(ib, ib.dtype.type(p), where=take)


def maxpool2d_forward_cpu(x, kernel=2, stride=None, lazy: bool = False):
    """``maxpool2d_forward`` on NumPy: one vectorised pass per window offset (k² passes),
    never a loop over pixels; bands of output rows on both cores. ``lazy`` with 2×2/2
    windows: only the values, by ``_max2x2``'s tournament (the same bits)."""
    stride, OH, OW = check_pool(x, kernel, stride)
    k = kernel
    xt = _cl(x)
    N, C = x.shape[:2]
    y = np.empty((N, OH, OW, C), dtype=x.dtype)
    lazy = lazy and k == stride == 2
    idx = None if lazy else np.empty((N, OH, OW, C), dtype=_index_dtype(k))

    def rows(t):  # output rows r0:r1 of image n (pmap: bands on both cores)
        n, r0, r1 = t
        R = r1 - r0
        xb = xt[n:n + 1, r0 * stride:(r1 - 1) * stride + k]
        if lazy:
            _max2x2_values(xb, y[n:n + 1, r0:r1], R, OW)
            return
        _pool_band(xb, y[n:n + 1, r0:r1], idx[n:n + 1, r0:r1], R, OW, k, stride)

    pmap(rows, image_bands(N, OH))
    return y.transpose(0, 3, 1, 2), MaxPoolCache(idx, tuple(x.shape), k, stride, x if lazy else None)


def _max2x2_values(xb, yb, R, OW):
    """The tournament's values: yb = max(max(a, b), max(c, d)) over the 2×2/2 windows'
    elements a, b (top row) and c, d; returns ``((a, b, c, d), top, bottom)``."""
    a, b, c, d = (xb[_offset(ki, kj, 2, R, OW)] for ki, kj in ((0, 0), (0, 1), (1, 0), (1, 1)))
    top = np.maximum(a, b)
    bottom = np.maximum(c, d)
    np.maximum(top, bottom, out=yb)
    return (a, b, c, d), top, bottom


def _max2x2(xb, yb, ib, R, OW) -> bool:
    """VGG's 2×2/2 windows as a tournament: the top pair, the bottom pair, then the two
    winners, each by ``np.maximum`` and a strict ``>`` (so ties keep the earlier element,
    row-major). The index is arithmetic on the three 0/1 comparisons, ib = lo + g·(2 + hi
    − lo) with lo = [b > a], hi = [d > c], g = [bottom > top]: uint8 passes, where a
    masked ``np.copyto`` of uint8 has no vector loop (a band of 16 × 128 windows of 64
    channels: 1 030 → 390 µs). ``>`` cannot rank a NaN, so a band whose output holds one
    returns False: the general loop then redoes it with the NaN rule."""
    (a, b, c, d), top, bottom = _max2x2_values(xb, yb, R, OW)
    if np.isnan(yb).any():
        return False
    np.greater(b, a, out=ib.view(np.bool_))                       # lo
    hi = np.greater(d, c).view(np.uint8)
    hi += 2
    hi -= ib
    hi *= np.greater(bottom, top).view(np.uint8)
    ib += hi
    return True


def _backward_tasks(N, OH, k, stride):
    """Bands of output rows write disjoint input rows only when the windows do not
    overlap (stride ≥ kernel); otherwise one task per image."""
    return image_bands(N, OH) if stride >= k else [(n, 0, OH) for n in range(N)]


def maxpool2d_backward(dy, cache):
    """``dx[n, c, i·s + a*, j·s + b*] += dy[n, c, i, j]`` where ``(a*, b*)`` is the window's
    first maximum; every other element gets 0. dy: (N, C, OH, OW) -> dx: x's shape."""
    if is_gpu_array(dy):
        return maxpool2d_backward_gpu(dy, cache)
    return maxpool2d_backward_cpu(dy, cache)


def maxpool2d_backward_cpu(dy, cache):
    """``maxpool2d_backward`` on NumPy: per window offset, a scatter-add of the gradients
    whose index is that offset, ``dy · (idx == p)``: a multiply by the boolean mask, as
    ``relu_backward_cpu``, not ``np.where`` (VGG16's pool1 at 256², a band of 16 output
    rows on one core: 290 µs instead of 1 200; ``where`` with a scalar has no vector
    loop). Like the ReLU's, a masked-out element of a non-finite dy is NaN, not 0."""
    idx, x_shape, k, stride, x = cache
    OH, OW = dy.shape[2:]
    dyt = _cl(dy)
    if k == stride:  # the windows tile the input: each element is written once, no zeroing pass
        return _maxpool_tiled_backward(dyt, idx, x_shape, k, x).transpose(0, 3, 1, 2)
    dxt = _zeros_cl(np, x_shape, dy.dtype)

    def rows(t):
        n, r0, r1 = t
        R = r1 - r0
        db, ib = dyt[n:n + 1, r0:r1], idx[n:n + 1, r0:r1]
        dxb = dxt[n:n + 1, r0 * stride:(r1 - 1) * stride + k]
        for p in range(k * k):
            # within one offset the targets are distinct, so += on the strided slice is a
            # scatter-add; overlapping windows accumulate across offsets
            dxb[_offset(*divmod(p, k), stride, R, OW)] += db * (ib == p)

    pmap(rows, _backward_tasks(dy.shape[0], OH, k, stride))
    return dxt.transpose(0, 3, 1, 2)


def _maxpool_tiled_backward(dyt, idx, x_shape, k, x=None):
    """``maxpool2d_backward_cpu`` for kernel == stride, channels-last (N, H, W, C): every
    window offset's slice of dx is assigned ``dy`` where the index names it, else 0; the
    rows and columns no window covers are zeroed. ``idx`` None: a lazy cache, whose input
    ``x`` gives each band's indices (``_pool_band``, as the forward would have)."""
    N, C, H, W = x_shape
    OH, OW = dyt.shape[1:3]
    dxt = np.empty((N, H, W, C), dtype=dyt.dtype)
    dxt[:, OH * k:] = 0
    dxt[:, :, OW * k:] = 0

    def rows(t):
        n, r0, r1 = t
        R = r1 - r0
        db = dyt[n:n + 1, r0:r1]
        if idx is None:
            ib = np.empty(db.shape, dtype=_index_dtype(k))
            _pool_band(_cl(x)[n:n + 1, r0 * k:r1 * k], np.empty_like(db), ib, R, OW, k, k)
        else:
            ib = idx[n:n + 1, r0:r1]
        dxb = dxt[n:n + 1, r0 * k:r1 * k]
        for p in range(k * k):
            np.multiply(db, ib == p, out=dxb[_offset(*divmod(p, k), k, R, OW)])

    pmap(rows, image_bands(N, OH))
    return dxt


def _pool_naive(x, kernel, stride, reduce):
    """Loops over every output pixel, ``reduce`` applied to each window (tests only)."""
    stride, OH, OW = check_pool(x, kernel, stride)
    xp = get_xp(x)
    N, C = x.shape[:2]
    y = xp.empty((N, C, OH, OW), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    y[n, c, i, j] = reduce(x[n, c, i * stride:i * stride + kernel,
                                             j * stride:j * stride + kernel])
    return y


def maxpool2d_naive(x, kernel=2, stride=None):
    """Loop reference for ``maxpool2d_forward`` (output only; slow)."""
    return _pool_naive(x, kernel, stride, lambda w: w.max())


# ----------------------------------------------------------------------- average pooling

def avgpool2d_forward(x, kernel=2, stride=None):
    """``y[n,c,i,j] = 1/k² · Σ_{0≤a,b<k} x[n, c, i·s + a, j·s + b]``.

    x: (N, C, H, W) -> y: (N, C, OH, OW); cache: ``AvgPoolCache`` (shapes only).
    """
    if is_gpu_array(x):
        return avgpool2d_forward_gpu(x, kernel, stride)
    return avgpool2d_forward_cpu(x, kernel, stride)


def avgpool2d_forward_cpu(x, kernel=2, stride=None):
    """``avgpool2d_forward`` on NumPy: a sum over the k² window offsets, in order, then
    the division; bands of output rows on both cores. (The same bits as a ``mean`` over
    the windows' axes of a reshaped view, which took 1.85× longer: 2.0 against 1.07 ms
    for 64 channels at 256² on two workers.)"""
    stride, OH, OW = check_pool(x, kernel, stride)
    k = kernel
    xt = _cl(x)
    N, C = x.shape[:2]
    y = np.empty((N, OH, OW, C), dtype=x.dtype)

    def rows(t):  # output rows r0:r1 of image n (pmap)
        n, r0, r1 = t
        R = r1 - r0
        xb = xt[n:n + 1, r0 * stride:(r1 - 1) * stride + k]
        yb = y[n:n + 1, r0:r1]
        window = [xb[_offset(*divmod(p, k), stride, R, OW)] for p in range(k * k)]
        if k == 1:
            yb[...] = window[0]
        else:
            np.add(window[0], window[1], out=yb)
        for xs in window[2:]:
            yb += xs
        yb /= k * k

    pmap(rows, image_bands(N, OH))
    return y.transpose(0, 3, 1, 2), AvgPoolCache(tuple(x.shape), k, stride)


def avgpool2d_backward(dy, cache):
    """``dx[n, c, i·s + a, j·s + b] += dy[n, c, i, j] / k²`` for every window element.
    dy: (N, C, OH, OW) -> dx: x's shape."""
    if is_gpu_array(dy):
        return avgpool2d_backward_gpu(dy, cache)
    return avgpool2d_backward_cpu(dy, cache)


def avgpool2d_backward_cpu(dy, cache):
    """``avgpool2d_backward`` on NumPy. ``kernel == stride``: the scaled gradient is
    broadcast into the first row of each window, the window's other rows copied from it
    (whole rows of W·C floats), and only the pixels no window covers are zeroed (64
    channels at 256², two workers: 1.73 ms against 2.59 broadcasting into every row of
    a zeroed array). Else added per window offset into zeros."""
    x_shape, k, stride = cache
    OH, OW = dy.shape[2:]
    dyt = _cl(dy)
    N, C, H, W = x_shape
    dxt = np.empty((N, H, W, C), dtype=dy.dtype) if k == stride else _zeros_cl(np, x_shape, dy.dtype)

    def rows(t):
        n, r0, r1 = t
        R = r1 - r0
        g = dyt[n:n + 1, r0:r1] / (k * k)  # (1, R, OW, C)
        dxb = dxt[n:n + 1, r0 * stride:(r1 - 1) * stride + k]
        if k == stride:
            blocks = _blocks(dxb, k, R, OW)  # (1, R, k, OW, k, C), a view
            blocks[:, :, 0] = g[:, :, :, None, :]
            blocks[:, :, 1:] = blocks[:, :, :1]
            dxb[:, :, OW * k:] = 0
            return
        for p in range(k * k):
            dxb[_offset(*divmod(p, k), stride, R, OW)] += g

    pmap(rows, _backward_tasks(dy.shape[0], OH, k, stride))
    if k == stride:
        dxt[:, OH * k:] = 0
    return dxt.transpose(0, 3, 1, 2)


def avgpool2d_naive(x, kernel=2, stride=None):
    """Loop reference for ``avgpool2d_forward`` (output only; slow)."""
    return _pool_naive(x, kernel, stride, lambda w: w.sum() / (kernel * kernel))


# --------------------------------------------------------------------------------- kernels

def _pool_args(N, H, W, C, OH, OW, k, s):
    return tuple(launch.i32(v) for v in (N, H, W, C, OH, OW, k, s))


def maxpool2d_forward_gpu(x, kernel=2, stride=None):
    """``maxpool2d_forward`` by the kernel ``maxpool2d_forward`` (kernels/pool.cu), on the
    memory of x in either order: ``(y, MaxPoolCache)`` with the same (N, OH, OW, C) index
    cache."""
    stride, OH, OW = check_pool(x, kernel, stride)
    xp = get_xp(x)
    dt = launch.float_dtype("maxpool2d_forward_gpu", x)
    N, C = x.shape[:2]
    xt, layout = launch.pixels(x)
    Np, H, W, Cp = xt.shape
    it = np.dtype(_index_dtype(kernel))
    yt = launch.empty(xp, (Np, OH, OW, Cp), dt)
    idxt = launch.empty(xp, (Np, OH, OW, Cp), it)
    if yt.size:
        launch.run_1d(launch.kernel("pool.cu", "maxpool2d_forward", xp, dt, it), yt.size,
                      (xt, yt, idxt) + _pool_args(Np, H, W, Cp, OH, OW, kernel, stride))
    idx = launch.from_pixels(idxt, layout, N, C).transpose(0, 2, 3, 1)  # (N, OH, OW, C)
    return launch.from_pixels(yt, layout, N, C), MaxPoolCache(idx, tuple(x.shape), kernel, stride)


def maxpool2d_backward_gpu(dy, cache):
    """``maxpool2d_backward`` by the kernel ``maxpool2d_backward`` (kernels/pool.cu): a
    gather over the input elements."""
    xp = get_xp(dy)
    idx, x_shape, k, stride = cache[:4]  # the GPU forward is never lazy
    dt = launch.float_dtype("maxpool2d_backward_gpu", dy)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    dyt, layout = launch.pixels(dy)
    idxt, _ = launch.pixels(launch.as_layout(idx.transpose(0, 3, 1, 2), layout))
    Np, Cp = dyt.shape[0], dyt.shape[3]
    dxt = launch.empty(xp, (Np, H, W, Cp), dt)
    if dxt.size:
        launch.run_1d(launch.kernel("pool.cu", "maxpool2d_backward", xp, dt, idxt.dtype), dxt.size,
                      (dyt, idxt, dxt) + _pool_args(Np, H, W, Cp, OH, OW, k, stride))
    return launch.from_pixels(dxt, layout, N, C)


def avgpool2d_forward_gpu(x, kernel=2, stride=None):
    """``avgpool2d_forward`` by the kernel ``avgpool2d_forward`` (kernels/pool.cu)."""
    stride, OH, OW = check_pool(x, kernel, stride)
    xp = get_xp(x)
    dt = launch.float_dtype("avgpool2d_forward_gpu", x)
    N, C = x.shape[:2]
    xt, layout = launch.pixels(x)
    Np, H, W, Cp = xt.shape
    yt = launch.empty(xp, (Np, OH, OW, Cp), dt)
    if yt.size:
        launch.run_1d(launch.kernel("pool.cu", "avgpool2d_forward", xp, dt), yt.size,
                      (xt, yt) + _pool_args(Np, H, W, Cp, OH, OW, kernel, stride))
    return launch.from_pixels(yt, layout, N, C), AvgPoolCache(tuple(x.shape), kernel, stride)


def avgpool2d_backward_gpu(dy, cache):
    """``avgpool2d_backward`` by the kernel ``avgpool2d_backward`` (kernels/pool.cu): a
    gather over the input elements."""
    xp = get_xp(dy)
    x_shape, k, stride = cache
    dt = launch.float_dtype("avgpool2d_backward_gpu", dy)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    dyt, layout = launch.pixels(dy)
    Np, Cp = dyt.shape[0], dyt.shape[3]
    dxt = launch.empty(xp, (Np, H, W, Cp), dt)
    if dxt.size:
        launch.run_1d(launch.kernel("pool.cu", "avgpool2d_backward", xp, dt), dxt.size,
                      (dyt, dxt) + _pool_args(Np, H, W, Cp, OH, OW, k, stride))
    return launch.from_pixels(dxt, layout, N, C)


# --------------------------------------------------------------------------------- layers

class _Pool2d(Layer):
    """Pooling over k×k windows with stride s (``stride=None``: s = k); no parameters.
    Subclasses name their functional pair."""

    _forward = _backward = None

    def __init__(self, kernel=2, stride=None):
        super().__init__()
        self.kernel = kernel
        self.stride = kernel if stride is None else stride

    def forward(self, x):
        return type(self)._forward(x, self.kernel, self.stride)

    def backward(self, dy, cache):
        return type(self)._backward(dy, cache), {}

    def __repr__(self):
        return f"{self.__class__.__name__}(kernel={self.kernel}, stride={self.stride})"


class MaxPool2d(_Pool2d):
    """Max pooling: each window's first maximum."""
    _forward, _backward = staticmethod(maxpool2d_forward), staticmethod(maxpool2d_backward)


class AvgPool2d(_Pool2d):
    """Average pooling."""
    _forward, _backward = staticmethod(avgpool2d_forward), staticmethod(avgpool2d_backward)
