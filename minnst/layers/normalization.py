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
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minnst.backend import get_xp, is_gpu_array
from minnst.layers.base import Layer

_INSTANCE_AXES = (2, 3)
_BATCH_AXES = (0, 2, 3)


class NormCache(NamedTuple):
    xhat: object     # (N, C, H, W) normalised input
    inv_std: object  # 1/σ, broadcastable to x: (N, C, 1, 1) or (1, C, 1, 1)
    gamma: object    # (C,) or None
    has_beta: bool
    axes: tuple      # the axes the statistics were taken over


class BatchNormCache(NamedTuple):
    norm: NormCache
    mean: object     # (C,) batch mean, for the running statistics
    var: object      # (C,) unbiased batch variance, for the running statistics (as PyTorch)


class BatchNormEvalCache(NamedTuple):
    xhat: object     # (N, C, H, W) (x − running_mean) / sqrt(running_var + eps)
    scale: object    # (1, C, 1, 1) γ / sqrt(running_var + eps)
    has_gamma: bool
    has_beta: bool


def _channel(a, x):
    """A per-channel (C,) array as (1, C, 1, 1) in x's dtype and array module."""
    if x.ndim != 4:
        raise ValueError(f"normalisation expects NCHW input, got shape {tuple(x.shape)}")
    a = get_xp(x).asarray(a, dtype=x.dtype)
    if a.shape != (x.shape[1],):
        raise ValueError(f"per-channel array of shape {tuple(a.shape)} for {x.shape[1]} channels")
    return a.reshape(1, -1, 1, 1)


def _normalize(x, gamma, beta, eps, axes):
    """Shared forward: returns ``(y, NormCache, mean, biased var)``."""
    xp = get_xp(x)
    if x.ndim != 4:
        raise ValueError(f"normalisation expects NCHW input, got shape {tuple(x.shape)}")
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
    """Shared backward: ``(dx, dγ, dβ)`` for a ``NormCache``."""
    xhat, inv_std, gamma, has_beta, axes = cache
    dxhat = dy if gamma is None else dy * _channel(gamma, dy)
    dx = inv_std * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                    - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
    dgamma = None if gamma is None else (dy * xhat).sum(axis=_BATCH_AXES)
    dbeta = dy.sum(axis=_BATCH_AXES) if has_beta else None
    return dx, dgamma, dbeta


# ------------------------------------------------------------------------ instance norm

def instance_norm_forward(x, gamma, beta, eps=1e-5):
    """Instance normalisation: statistics per sample and channel over (H, W).

    x: (N, C, H, W), gamma/beta: (C,) or None -> y: (N, C, H, W);
    ``y = γ · (x − mean_{HW} x) / sqrt(var_{HW} x + eps) + β``.
    """
    if is_gpu_array(x):
        from minnst.kernels import instance_norm_forward_gpu  # the CUDA twin (kernels/norm.cu)
        return instance_norm_forward_gpu(x, gamma, beta, eps)
    y, cache, _, _ = _normalize(x, gamma, beta, eps, _INSTANCE_AXES)
    return y, cache


def instance_norm_backward(dy, cache):
    """``(dx, dgamma, dbeta)``; the formula in the module docstring with means over (H, W)."""
    if is_gpu_array(dy):
        from minnst.kernels import instance_norm_backward_gpu
        return instance_norm_backward_gpu(dy, cache)
    return _normalize_backward(dy, cache)


# --------------------------------------------------------------------------- batch norm

def batch_norm_forward(x, gamma, beta, eps=1e-5):
    """Batch normalisation, training mode: statistics per channel over (N, H, W).

    x: (N, C, H, W), gamma/beta: (C,) or None -> y: (N, C, H, W). The cache exposes the
    batch ``mean`` and the *unbiased* variance ``var`` (×m/(m−1), m = N·H·W), which is what
    PyTorch folds into the running statistics.
    """
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if m < 2:
        raise ValueError(f"batch norm needs more than one value per channel, got shape {tuple(x.shape)}")
    if is_gpu_array(x):
        from minnst.kernels import batch_norm_forward_gpu
        return batch_norm_forward_gpu(x, gamma, beta, eps)
    y, norm, mu, var = _normalize(x, gamma, beta, eps, _BATCH_AXES)
    return y, BatchNormCache(norm, mu.reshape(-1), var.reshape(-1) * (m / (m - 1)))


def batch_norm_backward(dy, cache):
    """``(dx, dgamma, dbeta)``; the formula in the module docstring with means over (N, H, W)."""
    if is_gpu_array(dy):
        from minnst.kernels import batch_norm_backward_gpu
        return batch_norm_backward_gpu(dy, cache)
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
