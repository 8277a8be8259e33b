"""Instance and batch normalisation, NCHW.

Both normalise ``x̂ = (x − μ) / σ`` with ``σ = sqrt(var + eps)`` (biased variance) and apply
the affine map ``y = γ·x̂ + β`` per channel; they differ in the axes of ``μ`` and ``var``:
instance norm over (H, W) per sample and channel, batch norm over (N, H, W) per channel.
Both backward passes are the same formula over those ``m`` elements:

    dx̂ = γ·dy
    dx = (1/σ) · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂))
    dγ = Σ_{N,H,W} dy · x̂,   dβ = Σ_{N,H,W} dy

(``x̂`` has zero mean and unit mean square over the axes, which removes the ``μ`` and
``σ`` paths' terms down to those two means.) Statistics are computed in the input dtype
with two passes (mean, then mean of squared deviations). ``gamma``/``beta`` may be
``None`` (no affine map); their gradients are then ``None``.

Instance norm also takes a per-sample affine map, γ and β of shape (N, C):
``y[n] = γ[n]·x̂[n] + β[n]``, whose gradients are the per-sample sums
``dγ[n] = Σ_{H,W} dy[n]·x̂[n]`` and ``dβ[n] = Σ_{H,W} dy[n]``. Conditional instance norm
(Dumoulin, Shlens & Kudlur 2017) is built on it: S styles, each with its own (γ_s, β_s),
and a batch of style weights ``mix`` (N, S) that picks or blends them,

    y[n] = x̂[n]·(mix @ γ)[n] + (mix @ β)[n],    dγ = mixᵀ @ dγ_n,   dβ = mixᵀ @ dβ_n

with ``dγ_n``, ``dβ_n`` the (N, C) per-sample sums above.

The training-mode functions dispatch on the array's device to ``op_cpu`` (array code, the
reference) or ``op_gpu`` (the launcher of kernels/norm.cu); both validate with
``check_nchw``, ``channel_vector`` (batch norm), ``instance_affine`` (instance norm) and,
for batch norm, ``check_batch_norm``; conditional instance norm validates with
``check_conditional_norm`` and runs on either.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minnst.backend import get_xp, is_gpu_array, to_host
from minnst.kernels import launch
from minnst.layers.affine import ChannelAffine
from minnst.layers.base import Layer
from minnst.parallel import image_bands, pmap

_INSTANCE_AXES = (2, 3)
_BATCH_AXES = (0, 2, 3)


class NormCache(NamedTuple):
    xhat: object     # (N, C, H, W) normalised input
    inv_std: object  # 1/σ, broadcastable to x: (N, C, 1, 1) or (1, C, 1, 1)
    gamma: object    # (C,), (N, C) (per-sample, instance norm) or None
    has_beta: bool
    axes: tuple      # the axes the statistics were taken over
    per_sample_affine: bool = False  # γ, β and their gradients are (N, C)


class BatchNormCache(NamedTuple):
    norm: NormCache
    mean: object     # (C,) batch mean, for the running statistics
    var: object      # (C,) unbiased batch variance, for the running statistics (as PyTorch)


class ConditionalNormCache(NamedTuple):
    norm: NormCache  # the per-sample instance norm's, with γ_mix = mix @ γ (N, C)
    mix: object      # (N, S) style weights, in x's dtype and array module


class BatchNormEvalCache(NamedTuple):
    xhat: object     # (N, C, H, W) (x − running_mean) / sqrt(running_var + eps)
    scale: object    # (1, C, 1, 1) γ / sqrt(running_var + eps)
    has_gamma: bool
    has_beta: bool


def check_nchw(x):
    """Normalisation takes NCHW input (``ValueError`` otherwise)."""
    if x.ndim != 4:
        raise ValueError(f"normalisation expects NCHW input, got shape {tuple(x.shape)}")


def channel_vector(a, x):
    """A per-channel array (γ, β, running statistics) checked to be (C,) for NCHW ``x``,
    in x's dtype and array module."""
    check_nchw(x)
    a = get_xp(x).asarray(a, dtype=x.dtype)
    if a.shape != (x.shape[1],):
        raise ValueError(f"per-channel array of shape {tuple(a.shape)} for {x.shape[1]} channels")
    return a


def _channel(a, x):
    """``channel_vector(a, x)`` as (1, C, 1, 1), broadcastable against x."""
    return channel_vector(a, x).reshape(1, -1, 1, 1)


def instance_affine(gamma, beta, x):
    """γ and β of instance norm checked against NCHW ``x`` (N, C, H, W): each ``None``, (C,)
    (shared by the batch) or (N, C) (per sample), one shape when both are given, in x's
    dtype and array module. Returns ``(gamma, beta, per_sample)``."""
    check_nchw(x)
    N, C = x.shape[:2]
    xp = get_xp(x)
    out = []
    for name, a in (("gamma", gamma), ("beta", beta)):
        if a is not None:
            a = xp.asarray(a, dtype=x.dtype)
            if a.shape not in ((C,), (N, C)):
                raise ValueError(f"instance norm {name} of shape {tuple(a.shape)} for {C} channels "
                                 f"and {N} samples: expected ({C},) or ({N}, {C})")
        out.append(a)
    gamma, beta = out
    if gamma is not None and beta is not None and gamma.shape != beta.shape:
        raise ValueError(f"instance norm gamma {tuple(gamma.shape)} and beta {tuple(beta.shape)} "
                         f"must have one shape, ({C},) or ({N}, {C})")
    per_sample = any(a is not None and a.ndim == 2 for a in (gamma, beta))
    return gamma, beta, per_sample


def check_conditional_norm(x, gamma, beta, mix):
    """The arguments of conditional instance norm checked and converted to x's dtype and
    array module: x (N, C, H, W), gamma and beta (S, C), mix (N, S) finite (``mix`` may
    come from either array module). Returns ``(gamma, beta, mix)``."""
    check_nchw(x)
    N, C = x.shape[:2]
    xp = get_xp(x)
    gamma, beta = xp.asarray(gamma, dtype=x.dtype), xp.asarray(beta, dtype=x.dtype)
    if gamma.ndim != 2 or gamma.shape[1] != C or beta.shape != gamma.shape:
        raise ValueError(f"conditional instance norm needs gamma and beta of shape (styles, {C}), "
                         f"got {tuple(gamma.shape)} and {tuple(beta.shape)}")
    S = gamma.shape[0]
    mix = xp.asarray(to_host(mix) if xp is np else mix, dtype=x.dtype)
    if mix.shape != (N, S):
        raise ValueError(f"style weights of shape {tuple(mix.shape)} for {N} samples and {S} styles: "
                         f"expected ({N}, {S})")
    if not bool(xp.isfinite(mix).all()):
        raise ValueError("style weights must be finite")
    return gamma, beta, mix


def check_batch_norm(x) -> int:
    """Batch statistics need more than one value per channel; returns m = N·H·W."""
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if m < 2:
        raise ValueError(f"batch norm needs more than one value per channel, got shape {tuple(x.shape)}")
    return m


def _batch_norm_cache(norm, mean, var, m):
    """The training-mode cache: the batch mean and the unbiased variance var·m/(m − 1)
    (what PyTorch folds into the running statistics) as (C,) arrays."""
    return BatchNormCache(norm, mean.reshape(-1), var.reshape(-1) * (m / (m - 1)))


def _normalize(x, gamma, beta, eps, axes):
    """Shared forward: returns ``(y, NormCache, mean, biased var)``."""
    xp = get_xp(x)
    check_nchw(x)
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=axes, keepdims=True)
    inv_std = 1 / xp.sqrt(var + eps)
    xhat = xc * inv_std
    y = xhat
    if gamma is not None:
        y = y * _channel(gamma, x)
    if beta is not None:
        y = y + _channel(beta, x)
    return y, NormCache(xhat, inv_std, gamma, beta is not None, axes), mu, var


def _normalize_backward(dy, cache):
    """Shared backward: ``(dx, dγ, dβ)`` for a ``NormCache`` with (C,) γ, β."""
    xhat, inv_std, gamma, has_beta, axes, _ = cache
    dxhat = dy if gamma is None else dy * _channel(gamma, dy)
    dx = inv_std * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                    - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
    dgamma = None if gamma is None else (dy * xhat).sum(axis=_BATCH_AXES)
    dbeta = dy.sum(axis=_BATCH_AXES) if has_beta else None
    return dx, dgamma, dbeta


# ------------------------------------------------------------------------ instance norm

def instance_norm_forward(x, gamma, beta, eps=1e-5):
    """Instance normalisation: statistics per sample and channel over (H, W).

    x: (N, C, H, W), gamma/beta: (C,), (N, C) (per sample) or None -> y: (N, C, H, W);
    ``y[n] = γ[n] · (x[n] − mean_{HW} x[n]) / sqrt(var_{HW} x[n] + eps) + β[n]``
    (γ[n] = γ for (C,) parameters).
    """
    if is_gpu_array(x):
        return instance_norm_forward_gpu(x, gamma, beta, eps)
    return instance_norm_forward_cpu(x, gamma, beta, eps)


def instance_norm_backward(dy, cache):
    """``(dx, dgamma, dbeta)``; the formula in the module docstring with means over (H, W).
    dgamma/dbeta have the shape of the forward's gamma/beta: (C,) sums over (N, H, W), or
    (N, C) per-sample sums over (H, W)."""
    if is_gpu_array(dy):
        return instance_norm_backward_gpu(dy, cache)
    return instance_norm_backward_cpu(dy, cache)


def _per_image(N, tasks, parts):
    """Add the (C,) partial sums of the tasks ``(n, r0, r1)`` per image, in task order."""
    out = [None] * N
    for (n, _, _), p in zip(tasks, parts):
        out[n] = p.copy() if out[n] is None else out[n] + p
    return np.stack(out)  # (N, C)


def _colsum(a, b=None, C=None):
    """Σ over the rows and columns of a band (R, W, C) → (C,), or of ``a·b`` without the
    product in memory: einsum over the (R·W, C) view, one pass (3× faster than
    ``np.square(a, out=…).sum(axis=(0, 1))`` for 32 channels at 512²). A wide band
    (R, W·C) (``_wide``) is summed over its rows first, then the (W, C) row over W."""
    if a.ndim == 2:
        s = a.sum(axis=0) if b is None else np.einsum("rk,rk->k", a, b)
        return s.reshape(-1, C).sum(axis=0)
    a2 = a.reshape(-1, a.shape[-1])
    if b is None:
        return np.einsum("lc->c", a2)
    return np.einsum("lc,lc->c", a2, b.reshape(-1, b.shape[-1]))


def _wide(*views):
    """Channels-last views (N, H, W, C) as rows (N, H, W·C), when W and C of every one
    merge without a copy; else the views unchanged. Returns ``(views, W)``, W = None when
    unchanged. The elementwise passes over a band then run along rows of W·C floats with
    per-channel vectors tiled to (W·C,) (``_tiled``), where NumPy's broadcasting of a (C,)
    vector runs one inner loop of C floats per pixel: 1.1–1.4× faster for 32–128 channels."""
    N, H, W, C = views[0].shape
    if all(v.strides[3] == v.itemsize and v.strides[2] == C * v.itemsize for v in views):
        return [v.reshape(N, H, W * C) for v in views], W
    return list(views), None


def _tiled(a, W):
    """Per-image channel vectors (N, C) as (N, W·C) rows for ``_wide`` bands (W not None)."""
    return a if W is None else np.tile(a, (1, W))


def instance_norm_forward_cpu(x, gamma, beta, eps=1e-5):
    """The forward of ``_normalize`` over (H, W) on NumPy, on the channels-last view
    (N, H, W, C) (the convolutions' memory order) in bands of rows (``pmap`` tasks): the
    band sums of x, then of (x − μ)², are added per image in task order; then the band is
    normalised. Four passes over the data and no temporary of its size. Per-sample γ, β
    (N, C) scale and shift image n by row n; (C,) ones are every image's row."""
    gamma, beta, per_sample = instance_affine(gamma, beta, x)
    N, C, H, W = x.shape
    M = H * W
    xhat = np.empty((N, H, W, C), dtype=x.dtype)  # channels-last, like the convolutions' output
    y = np.empty((N, H, W, C), dtype=x.dtype)
    (v, xh, yw), Wt = _wide(x.transpose(0, 2, 3, 1), xhat, y)
    tasks = image_bands(N, H)
    mu = _per_image(N, tasks, pmap(lambda t: _colsum(v[t[0], t[1]:t[2]], C=C), tasks)) / M
    mu_t = _tiled(mu.astype(x.dtype), Wt)

    def centre(task):
        n, r0, r1 = task
        hb = xh[n, r0:r1]
        np.subtract(v[n, r0:r1], mu_t[n], out=hb)
        return _colsum(hb, hb, C)

    var = _per_image(N, tasks, pmap(centre, tasks)) / M
    inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype)  # (N, C)
    inv_t = _tiled(inv_std, Wt)
    # row n: image n's γ, β
    g = None if gamma is None else _tiled(np.broadcast_to(gamma, (N, C)), Wt)
    bt = None if beta is None else _tiled(np.broadcast_to(beta, (N, C)), Wt)

    def scale(task):
        n, r0, r1 = task
        hb, yb = xh[n, r0:r1], yw[n, r0:r1]
        hb *= inv_t[n]
        if g is None:
            yb[...] = hb
        else:
            np.multiply(hb, g[n], out=yb)
        if bt is not None:
            yb += bt[n]

    pmap(scale, tasks)
    cache = NormCache(xhat.transpose(0, 3, 1, 2), inv_std.reshape(N, C, 1, 1), gamma,
                      beta is not None, _INSTANCE_AXES, per_sample)
    return y.transpose(0, 3, 1, 2), cache


# Inference bands: a band of rows of the channels-last view stays in cache between its read
# and the centred sum's temporary (the norms are memory-bound, and the two cores share
# about one core's memory bandwidth: docs/performance.md).
INFER_BAND_BYTES = 1 << 20


def instance_norm_infer(x, gamma, beta, eps=1e-5, relu: bool = False):
    """Instance norm without a cache (inference), optionally followed by a ReLU:
    ``max(γ·(x − μ)/σ + β, 0)``. On NumPy: ``instance_norm_affine(...).apply()``, three
    reads of x and one write of y, where the training forward followed by a ReLU makes
    about ten passes; y differs from ``instance_norm_forward`` followed by a ReLU only by
    rounding. Other arrays: that."""
    if is_gpu_array(x):
        y = instance_norm_forward(x, gamma, beta, eps)[0]
        return get_xp(x).maximum(y, 0) if relu else y
    return instance_norm_affine(x, gamma, beta, eps, relu).apply()


def instance_norm_affine(x, gamma, beta, eps=1e-5, relu: bool = False, moments=None) -> ChannelAffine:
    """The instance norm of NumPy x (and the ReLU after it, ``relu``) as the per-channel
    map it is once the statistics are known, ``y = x·a + b`` with ``a = γ/σ``,
    ``b = β − μ·a`` (``affine.ChannelAffine``; its consumer applies it). The statistics:
    from ``moments`` (a ``moments.BandMoments`` that the layer which wrote x filled), else
    in bands of rows of the channels-last view (``pmap`` tasks) while a band is in cache:
    Σx per band, then Σ(x − μ)² from a band-sized temporary; float sums over bands added
    per image in task order, as in the training forward."""
    gamma, beta, _ = instance_affine(gamma, beta, x)
    N, C, H, W = x.shape
    gathered = None if moments is None else moments.moments(x.shape)
    if gathered is not None:
        mu, var = gathered
    else:
        (v,), Wt = _wide(x.transpose(0, 2, 3, 1))
        tasks = image_bands(N, H, max(1, INFER_BAND_BYTES // max(1, W * C * x.itemsize)))
        mu = _per_image(N, tasks, pmap(lambda t: _colsum(v[t[0], t[1]:t[2]], C=C), tasks)) / (H * W)
        mu_t = _tiled(mu.astype(x.dtype), Wt)

        def centred(task):
            n, r0, r1 = task
            t = np.subtract(v[n, r0:r1], mu_t[n])  # a band-sized temporary
            return _colsum(t, t, C)

        var = _per_image(N, tasks, pmap(centred, tasks)) / (H * W)
    a = (1 / np.sqrt(var + eps)).astype(x.dtype)                     # (N, C)
    if gamma is not None:
        a = a * gamma                                                # (C,) or (N, C) rows
    b = -mu.astype(x.dtype) * a
    if beta is not None:
        b = b + beta
    return ChannelAffine(x, np.ascontiguousarray(np.broadcast_to(a, (N, C)), dtype=x.dtype),
                         np.ascontiguousarray(np.broadcast_to(b, (N, C)), dtype=x.dtype), relu)


def instance_norm_backward_cpu(dy, cache):
    """The backward of ``_normalize`` over (H, W) on NumPy, in bands of rows of the
    channels-last view, with the means written as sums:  s1 = Σ dy,  s2 = Σ dy·x̂  (over H, W), and

        dx = γ/σ · (dy − s1/M − x̂ · s2/M),   dβ = Σ_n s1,   dγ = Σ_n s2

    (per-sample γ (N, C): γ[n] for image n, and dβ = s1, dγ = s2, both (N, C))."""
    xhat, inv_std, gamma, has_beta, axes, per_sample = cache
    N, C, H, W = dy.shape
    M = H * W
    dx = np.empty((N, H, W, C), dtype=dy.dtype)
    (d, h, dxw), Wt = _wide(dy.transpose(0, 2, 3, 1), xhat.transpose(0, 2, 3, 1), dx)
    tasks = image_bands(N, H)

    def sums(task):
        n, r0, r1 = task
        db = d[n, r0:r1]
        return np.concatenate([_colsum(db, C=C), _colsum(db, h[n, r0:r1], C)])

    s = _per_image(N, tasks, pmap(sums, tasks))
    s1, s2 = s[:, :C], s[:, C:]
    k = inv_std.reshape(N, C) * (1 if gamma is None else gamma.astype(dy.dtype, copy=False))
    m1, m2 = s1 / M, s2 / M
    k, m1, m2 = (_tiled(np.asarray(t, dtype=dy.dtype), Wt) for t in (k, m1, m2))

    def grad(task):
        n, r0, r1 = task
        xb = dxw[n, r0:r1]
        np.subtract(d[n, r0:r1], m1[n], out=xb)
        xb -= h[n, r0:r1] * m2[n]
        xb *= k[n]

    pmap(grad, tasks)
    dgamma = None if gamma is None else (s2.copy() if per_sample else s2.sum(axis=0))
    dbeta = None if not has_beta else (s1.copy() if per_sample else s1.sum(axis=0))
    return dx.transpose(0, 3, 1, 2), dgamma, dbeta


# --------------------------------------------------------------------------- batch norm

def batch_norm_forward(x, gamma, beta, eps=1e-5):
    """Batch normalisation, training mode: statistics per channel over (N, H, W).

    x: (N, C, H, W), gamma/beta: (C,) or None -> y: (N, C, H, W). The cache exposes the
    batch ``mean`` and the *unbiased* variance ``var`` (×m/(m−1), m = N·H·W), which is what
    PyTorch folds into the running statistics.
    """
    if is_gpu_array(x):
        return batch_norm_forward_gpu(x, gamma, beta, eps)
    return batch_norm_forward_cpu(x, gamma, beta, eps)


def batch_norm_backward(dy, cache):
    """``(dx, dgamma, dbeta)``; the formula in the module docstring with means over (N, H, W)."""
    if is_gpu_array(dy):
        return batch_norm_backward_gpu(dy, cache)
    return batch_norm_backward_cpu(dy, cache)


def batch_norm_forward_cpu(x, gamma, beta, eps=1e-5):
    """``batch_norm_forward`` in array code (``_normalize`` over (N, H, W))."""
    m = check_batch_norm(x)
    y, norm, mu, var = _normalize(x, gamma, beta, eps, _BATCH_AXES)
    return y, _batch_norm_cache(norm, mu, var, m)


def batch_norm_backward_cpu(dy, cache):
    """``batch_norm_backward`` in array code (``_normalize_backward``)."""
    return _normalize_backward(dy, cache.norm)


def batch_norm_eval_forward(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Batch normalisation, eval mode: a fixed per-channel affine map.

    ``y = γ · (x − running_mean) / sqrt(running_var + eps) + β``; x: (N, C, H, W).
    """
    xp = get_xp(x)
    inv_std = 1 / xp.sqrt(_channel(running_var, x) + eps)
    xhat = (x - _channel(running_mean, x)) * inv_std
    g = 1 if gamma is None else _channel(gamma, x)
    scale = inv_std * g
    y = xhat * g
    if beta is not None:
        y = y + _channel(beta, x)
    return y, BatchNormEvalCache(xhat, scale, gamma is not None, beta is not None)


def batch_norm_eval_backward(dy, cache):
    """``dx = dy · γ / sqrt(running_var + eps)``, ``dγ = Σ_{N,H,W} dy·x̂``,
    ``dβ = Σ_{N,H,W} dy``; returns ``(dx, dgamma, dbeta)``."""
    xhat, scale, has_gamma, has_beta = cache
    dgamma = (dy * xhat).sum(axis=_BATCH_AXES) if has_gamma else None
    dbeta = dy.sum(axis=_BATCH_AXES) if has_beta else None
    return dy * scale, dgamma, dbeta


# ------------------------------------------------------------------------------ kernels

NORM_BLOCK_NHWC = (32, 8)   # kernel blocks: 32 contiguous channels × 8 lanes of pixels
NORM_BLOCK_NCHW = (1, 256)  # one channel plane, 256 lanes of contiguous pixels


def _norm_geometry(x, per_sample: bool):
    """``(xc, perm, G, C, R, P, strides, block)`` for the norm kernels on NCHW ``x``: the
    data as a dense ``xc = x.transpose(perm)``, statistics per (g, c) over R·P elements,
    ``strides = (sG, sC, sR, sP)`` in elements, and the thread block for that layout."""
    N, C, H, W = x.shape
    if x.flags.c_contiguous:
        xc, perm = x, (0, 1, 2, 3)
        sN, sC, sP = C * H * W, H * W, 1
        block = NORM_BLOCK_NCHW
    else:
        xc, perm = launch.dense(x, (0, 2, 3, 1))
        sN, sC, sP = H * W * C, 1, C
        block = NORM_BLOCK_NHWC
    P = H * W
    if per_sample:   # instance norm: a group per sample
        G, R, sG, sR = N, 1, sN, 0
    else:            # batch norm: one group, the samples are reduced over
        G, R, sG, sR = 1, N, 0, sN
    return xc, perm, G, C, R, P, (sG, sC, sR, sP), block


def _norm_grid(C, G, block):
    """Grid of the norm kernels: channel tiles along x, groups along y."""
    return (max(1, min(launch.MAX_BLOCKS, -(-C // block[0]))), max(1, min(launch.MAX_BLOCKS, G)))


def _normalize_gpu(x, gamma, beta, eps, per_sample):
    """``_normalize`` by the kernel ``norm_forward``: ``(y, NormCache, mean, biased var)``
    with the statistics as (G, C) arrays. Instance norm (``per_sample``) takes (C,) or
    per-sample (N, C) γ, β (the kernel's affine group stride sA = 0 or C), batch norm (C,)."""
    check_nchw(x)
    xp = get_xp(x)
    dt = launch.float_dtype("normalisation kernel", x)
    if per_sample:
        gamma, beta, affine_per_sample = instance_affine(gamma, beta, x)
    else:
        gamma = None if gamma is None else channel_vector(gamma, x)
        beta = None if beta is None else channel_vector(beta, x)
        affine_per_sample = False
    g = xp.ascontiguousarray(gamma) if gamma is not None else xp.ones(1, dtype=dt)
    b = xp.ascontiguousarray(beta) if beta is not None else xp.zeros(1, dtype=dt)
    xc, perm, G, C, R, P, strides, block = _norm_geometry(x, per_sample)
    sA = C if affine_per_sample else 0
    y = launch.empty(xp, xc.shape, dt)
    xhat = launch.empty(xp, xc.shape, dt)
    mean, var, inv_std = (launch.empty(xp, (G, C), dt) for _ in range(3))
    i32, i64 = launch.i32, launch.i64
    if xc.size:
        kern = launch.kernel("norm.cu", "norm_forward", xp, dt)
        kern(_norm_grid(C, G, block), block,
             (xc, g, b, y, xhat, mean, var, inv_std,
              i32(G), i32(C), i32(R), i32(P), *(i64(s) for s in strides), i64(sA),
              dt.type(eps), i32(gamma is not None), i32(beta is not None)))
    inv = launch.inverse_permutation(perm)
    axes = _INSTANCE_AXES if per_sample else _BATCH_AXES
    cache = NormCache(xhat.transpose(inv), inv_std.reshape(G, C, 1, 1),
                      g if gamma is not None else None, beta is not None, axes, affine_per_sample)
    return y.transpose(inv), cache, mean, var


def _normalize_backward_gpu(dy, cache):
    """``_normalize_backward`` by the kernel ``norm_backward``: ``(dx, dγ, dβ)``, dx in the
    memory order of the cached x̂; dγ, dβ summed over the groups for (C,) γ, β, the
    kernel's per-sample sums themselves (N, C) for per-sample ones."""
    xp = get_xp(dy)
    xhat, inv_std, gamma, has_beta, axes, affine_per_sample = cache
    dt = launch.float_dtype("normalisation kernel", dy, xhat)
    per_sample = tuple(axes) == _INSTANCE_AXES
    xc, perm, G, C, R, P, strides, block = _norm_geometry(xhat, per_sample)
    dyc, _ = launch.dense(dy, perm)
    g = xp.ascontiguousarray(xp.asarray(gamma, dtype=dt)) if gamma is not None else xp.ones(1, dtype=dt)
    inv = xp.ascontiguousarray(inv_std.reshape(G, C))
    dx = launch.empty(xp, xc.shape, dt)
    s1 = launch.empty(xp, (G, C), dt)
    s2 = launch.empty(xp, (G, C), dt)
    sA = C if affine_per_sample else 0
    i32, i64 = launch.i32, launch.i64
    if xc.size:
        kern = launch.kernel("norm.cu", "norm_backward", xp, dt)
        kern(_norm_grid(C, G, block), block,
             (dyc, xc, g, inv, dx, s1, s2,
              i32(G), i32(C), i32(R), i32(P), *(i64(s) for s in strides), i64(sA),
              i32(gamma is not None)))
    dgamma = None if gamma is None else (s2 if affine_per_sample else s2.sum(axis=0))
    dbeta = None if not has_beta else (s1 if affine_per_sample else s1.sum(axis=0))
    return dx.transpose(launch.inverse_permutation(perm)), dgamma, dbeta


def instance_norm_forward_gpu(x, gamma, beta, eps=1e-5):
    """``instance_norm_forward`` by the kernel ``norm_forward`` (kernels/norm.cu)."""
    y, cache, _, _ = _normalize_gpu(x, gamma, beta, eps, per_sample=True)
    return y, cache


def instance_norm_backward_gpu(dy, cache):
    """``instance_norm_backward`` by the kernel ``norm_backward`` (kernels/norm.cu)."""
    return _normalize_backward_gpu(dy, cache)


def batch_norm_forward_gpu(x, gamma, beta, eps=1e-5):
    """``batch_norm_forward`` (training mode) by the kernel ``norm_forward``
    (kernels/norm.cu)."""
    m = check_batch_norm(x)
    y, norm, mean, var = _normalize_gpu(x, gamma, beta, eps, per_sample=False)
    return y, _batch_norm_cache(norm, mean, var, m)


def batch_norm_backward_gpu(dy, cache):
    """``batch_norm_backward`` by the kernel ``norm_backward`` (kernels/norm.cu)."""
    return _normalize_backward_gpu(dy, cache.norm)


# ---------------------------------------------------------- conditional instance norm

def conditional_instance_norm_forward(x, gamma, beta, mix, eps=1e-5):
    """Conditional instance normalisation (Dumoulin, Shlens & Kudlur 2017): S styles, each
    with its own per-channel scale and shift, mixed per sample.

    x: (N, C, H, W), gamma/beta: (S, C) (row s: style s's γ_s, β_s), mix: (N, S) (row n:
    the style weights of sample n, one-hot for one style, convex for a blend; any array
    module, converted to x's dtype and module) -> ``(y, ConditionalNormCache)`` with

        y[n] = x̂[n] · (mix @ γ)[n] + (mix @ β)[n]

    ``x̂`` instance-normalised over (H, W): ``instance_norm_forward`` with the per-sample
    (N, C) parameters ``mix @ γ`` and ``mix @ β``, so the CPU and the GPU path both run it.
    """
    gamma, beta, mix = check_conditional_norm(x, gamma, beta, mix)
    y, norm = instance_norm_forward(x, mix @ gamma, mix @ beta, eps)
    return y, ConditionalNormCache(norm, mix)


def conditional_instance_norm_backward(dy, cache):
    """``(dx, dgamma (S, C), dbeta (S, C))`` of ``conditional_instance_norm_forward``:
    ``dx`` is instance norm's with the per-sample γ_mix = mix @ γ, and by the chain rule
    through ``γ_mix = mix @ γ``

        dγ = mixᵀ @ dγ_n,   dβ = mixᵀ @ dβ_n,

    with ``dγ_n[n] = Σ_{H,W} dy[n]·x̂[n]``, ``dβ_n[n] = Σ_{H,W} dy[n]`` the (N, C)
    per-sample sums of ``instance_norm_backward``."""
    dx, dgamma_n, dbeta_n = instance_norm_backward(dy, cache.norm)
    mix_t = cache.mix.T  # (S, N)
    return dx, mix_t @ dgamma_n, mix_t @ dbeta_n


# ------------------------------------------------------------------------------- layers

class InstanceNorm2d(Layer):
    """Instance normalisation over (H, W); with ``affine`` a learned per-channel
    ``weight`` (γ, ones) and ``bias`` (β, zeros)."""

    def __init__(self, C, affine=True, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.C, self.affine, self.eps = C, affine, eps
        if affine:
            self.params = {"weight": np.ones(C, dtype=dtype), "bias": np.zeros(C, dtype=dtype)}

    def forward(self, x):
        return instance_norm_forward(x, self.params.get("weight"), self.params.get("bias"), self.eps)

    def backward(self, dy, cache):
        dx, dgamma, dbeta = instance_norm_backward(dy, cache)
        return dx, ({"weight": dgamma, "bias": dbeta} if self.affine else {})

    def __repr__(self):
        return f"InstanceNorm2d({self.C}, affine={self.affine}, eps={self.eps})"


class ConditionalInstanceNorm2d(Layer):
    """Conditional instance normalisation: instance norm over (H, W) with one learned
    per-channel ``weight`` (γ) and ``bias`` (β) per style, (S, C) each (ones and zeros).

    ``forward(x, style)`` takes the batch's style weights ``style`` (N, S) (any array
    module; converted to x's dtype and module) and returns ``(y, cache)``;
    ``backward(dy, cache)`` returns ``(dx, {"weight": dγ, "bias": dβ})``, (S, C) each.
    """

    conditioned = True  # containers hand it the batch's style weights

    def __init__(self, C, n_styles, eps=1e-5, dtype=np.float32):
        super().__init__()
        if n_styles < 1:
            raise ValueError(f"conditional instance norm needs at least one style, got {n_styles}")
        self.C, self.n_styles, self.eps = C, n_styles, eps
        self.params = {"weight": np.ones((n_styles, C), dtype=dtype),
                       "bias": np.zeros((n_styles, C), dtype=dtype)}

    def forward(self, x, style):
        return conditional_instance_norm_forward(x, self.params["weight"], self.params["bias"],
                                                 style, self.eps)

    def backward(self, dy, cache):
        dx, dgamma, dbeta = conditional_instance_norm_backward(dy, cache)
        return dx, {"weight": dgamma, "bias": dbeta}

    def __call__(self, x, style):
        return self.forward(x, style)[0]

    def __repr__(self):
        return f"ConditionalInstanceNorm2d({self.C}, n_styles={self.n_styles}, eps={self.eps})"


class BatchNorm2d(Layer):
    """Batch normalisation with a learned per-channel ``weight`` (γ) and ``bias`` (β).

    Training mode (``self.training``) normalises with the batch statistics and updates the
    buffers as PyTorch does, ``running = (1 − momentum)·running + momentum·batch`` (the
    unbiased batch variance for ``running_var``). The update writes into the buffer arrays'
    contents, so references from ``state_dict()`` stay valid. Eval mode uses the buffers.
    """

    def __init__(self, C, momentum=0.1, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.C, self.momentum, self.eps = C, momentum, eps
        self.params = {"weight": np.ones(C, dtype=dtype), "bias": np.zeros(C, dtype=dtype)}
        self.buffers = {"running_mean": np.zeros(C, dtype=dtype), "running_var": np.ones(C, dtype=dtype)}

    def forward(self, x):
        w, b = self.params["weight"], self.params["bias"]
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        if not self.training:
            return batch_norm_eval_forward(x, w, b, rm, rv, self.eps)
        y, cache = batch_norm_forward(x, w, b, self.eps)
        mom = self.momentum
        rm[...] = (1 - mom) * rm + mom * cache.mean.astype(rm.dtype)
        rv[...] = (1 - mom) * rv + mom * cache.var.astype(rv.dtype)
        return y, cache

    def backward(self, dy, cache):
        # the cache's type says which forward ran, whatever self.training is now
        if isinstance(cache, BatchNormEvalCache):
            dx, dgamma, dbeta = batch_norm_eval_backward(dy, cache)
        else:
            dx, dgamma, dbeta = batch_norm_backward(dy, cache)
        return dx, {"weight": dgamma, "bias": dbeta}

    def __repr__(self):
        return f"BatchNorm2d({self.C}, momentum={self.momentum}, eps={self.eps})"
