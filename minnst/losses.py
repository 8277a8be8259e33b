"""Perceptual losses on VGG features, each with its analytic gradient.

Features ``F`` are (N, C, H, W); write ``F_n`` for one image's features as a (C, M) matrix,
M = H·W. Two normalisations, chosen by the caller once (``GATYS`` or ``JOHNSON``):

=========  ==========================================  ==========================================
           Gatys et al. (the notes)                    Johnson et al.
=========  ==========================================  ==========================================
content    ½ Σ (F − P)²                                1/(C·M) · Σ (F − P)², mean over the batch
Gram       G = F Fᵀ                                    G = F Fᵀ / (C·M)
style      1/(4 C² M²) · Σ (G − A)²                    Σ (G − A)², mean over the batch
=========  ==========================================  ==========================================

Gradients (derived in docs/gatys.md; G − A is symmetric):

    content  ∂/∂F = F − P                       |  2 (F − P) / (C·M·N)
    style    ∂/∂F = (G − A) F / (C² M²)          |  4 (G − A) F / (C·M·N)      (per image)

The style gradient is a batched matrix product, never an elementwise loop. Total
variation (on images, not features): ``Σ (x[i+1,j] − x[i,j])² + (x[i,j+1] − x[i,j])²``.

Every function returns ``(value, gradient)`` with ``value`` a Python float and the
gradient shaped like its input, in the input's dtype and on its device.
"""
from __future__ import annotations

from .backend import get_xp, is_gpu_array

GATYS = "gatys"
JOHNSON = "johnson"
NORMALIZATIONS = (GATYS, JOHNSON)


def _check_norm(normalization):
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def _channels_last(F) -> bool:
    """Whether F's memory is channels-last (what the CPU convolutions produce)."""
    return F.shape[1] == 1 or F.strides[1] == F.itemsize


def _as_matrices(F):
    """F as a batch of matrices without copying: (N, M, C) for channels-last memory
    (then G = FᵀF), else (N, C, M) (then G = F Fᵀ). Returns (matrices, channels_last)."""
    N, C, H, W = F.shape
    if _channels_last(F):
        return F.transpose(0, 2, 3, 1).reshape(N, H * W, C), True
    return F.reshape(N, C, H * W), False


# --------------------------------------------------------------------------- content

def content_loss(F, P, normalization: str = GATYS):
    """Content loss of features F against target features P (same shape, or P (1, …))."""
    _check_norm(normalization)
    if is_gpu_array(F):
        from .kernels import content_loss_gpu  # the CUDA twin (kernels/losses.cu)
        return content_loss_gpu(F, P, normalization)
    D = F - P
    if normalization == GATYS:
        return 0.5 * float((D * D).sum()), D
    N, C, H, W = F.shape
    k = C * H * W * N
    return float((D * D).sum()) / k, D * (2.0 / k)


# --------------------------------------------------------------------------- Gram / style

def gram_matrix(F, normalization: str = GATYS):
    """G (N, C, C) = F Fᵀ per image, divided by C·H·W for Johnson's normalisation."""
    _check_norm(normalization)
    N, C, H, W = F.shape
    Fm, cl = _as_matrices(F)
    G = Fm.transpose(0, 2, 1) @ Fm if cl else Fm @ Fm.transpose(0, 2, 1)
    if normalization == JOHNSON:
        G = G / (C * H * W)
    return G


def style_target(F, normalization: str = GATYS, target_hw=None):
    """The Gram target A (1, C, C) of a style image's features, averaged over its batch.

    With the Gatys normalisation G grows with the number of positions M, so a target
    taken at another resolution is rescaled to the pastiche's ``target_hw = (H, W)``:
    A ← A · M_pastiche / M_style (identical when the sizes agree).
    """
    G = gram_matrix(F, normalization).mean(axis=0, keepdims=True)
    if normalization == GATYS and target_hw is not None:
        M_style = F.shape[2] * F.shape[3]
        G = G * (target_hw[0] * target_hw[1] / M_style)
    return G


def style_loss(F, A, normalization: str = GATYS):
    """Style loss of features F (N, C, H, W) against the Gram target A (1 or N, C, C).

    Returns ``(E, dE/dF)``; see the module docstring for both normalisations.
    """
    _check_norm(normalization)
    if is_gpu_array(F):
        from .kernels import style_loss_gpu  # cuBLAS products around a residual kernel
        return style_loss_gpu(F, A, normalization)
    N, C, H, W = F.shape
    M = H * W
    G = gram_matrix(F, normalization)
    D = G - A  # (N, C, C), symmetric
    sq = float((D * D).sum())
    Fm, cl = _as_matrices(F)
    if normalization == GATYS:
        scale = 1.0 / (C * C * M * M)
        value = sq * scale / 4.0
    else:
        scale = 4.0 / (C * M * N)
        value = sq / N
    D = D.astype(F.dtype, copy=False)
    if cl:  # (N, M, C) @ D: the gradient keeps the features' channels-last memory
        grad = (Fm @ D).reshape(N, H, W, C).transpose(0, 3, 1, 2)
    else:
        grad = (D @ Fm).reshape(F.shape)
    grad *= F.dtype.type(scale)
    return value, grad


# --------------------------------------------------------------------------- total variation

def tv_loss(x, axes=(-3, -2)):
    """Squared total variation of an image or batch and its gradient.

    ``x``: (…, H, W, C) by default (``axes`` = the two spatial axes; pass ``(2, 3)`` for
    NCHW). L = Σ (x[i+1, j] − x[i, j])² + Σ (x[i, j+1] − x[i, j])²;
    ∂L/∂x[i, j] = 2 (dv[i−1, j] − dv[i, j] + dh[i, j−1] − dh[i, j]) with the differences
    dv, dh taken as 0 outside the image.
    """
    if is_gpu_array(x):
        from .kernels import tv_loss_gpu
        return tv_loss_gpu(x, axes)
    xp = get_xp(x)
    ah, aw = (a % x.ndim for a in axes)
    dv = xp.diff(x, axis=ah)
    dh = xp.diff(x, axis=aw)
    value = float((dv * dv).sum() + (dh * dh).sum())
    grad = xp.zeros_like(x)

    def sl(axis, s):
        idx = [slice(None)] * x.ndim
        idx[axis] = s
        return tuple(idx)

    grad[sl(ah, slice(1, None))] += 2 * dv
    grad[sl(ah, slice(None, -1))] -= 2 * dv
    grad[sl(aw, slice(1, None))] += 2 * dh
    grad[sl(aw, slice(None, -1))] -= 2 * dh
    return value, grad
