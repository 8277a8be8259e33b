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

Each normalisation's factors are written once, in ``gram_divisor``, ``content_value`` /
``content_grad_factor`` and ``style_value`` / ``style_grad_factor``, and used by both
paths of each loss: ``op_cpu`` (array code, the reference) and ``op_gpu`` (the launcher
of kernels/losses.cu), under one dispatcher ``op``.
"""
from __future__ import annotations

import numpy as np

from .backend import get_xp, is_gpu_array
from .kernels import launch
from .parallel import batch_slices, image_bands, matmul, pmap

GATYS = "gatys"
JOHNSON = "johnson"
NORMALIZATIONS = (GATYS, JOHNSON)


def check_normalization(normalization):
    """``ValueError`` unless ``normalization`` is one of ``NORMALIZATIONS``."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


# --------------------------------------------------------------------------- normalisations
# S = Σ (F − P)² for the content loss and S = Σ (G − A)² for the style loss; features F
# of shape (N, C, H, W), M = H·W.

def content_value(sq: float, shape, normalization: str) -> float:
    """The content loss from S = Σ (F − P)²: ½·S (Gatys) or S / (N·C·H·W) (Johnson)."""
    if normalization == GATYS:
        return 0.5 * sq
    N, C, H, W = shape
    return sq / (C * H * W * N)


def content_grad_factor(shape, normalization: str) -> float:
    """∂L/∂F = factor · (F − P): 1 (Gatys) or 2 / (N·C·H·W) (Johnson)."""
    if normalization == GATYS:
        return 1.0
    N, C, H, W = shape
    return 2.0 / (C * H * W * N)


def gram_divisor(shape, normalization: str) -> int:
    """G = F Fᵀ / divisor per image: 1 (Gatys) or C·H·W (Johnson)."""
    if normalization == GATYS:
        return 1
    N, C, H, W = shape
    return C * H * W


def style_grad_factor(shape, normalization: str) -> float:
    """∂E/∂F = factor · (G − A) F per image: 1/(C² M²) (Gatys) or 4/(C·M·N) (Johnson)."""
    N, C, H, W = shape
    M = H * W
    if normalization == GATYS:
        return 1.0 / (C * C * M * M)
    return 4.0 / (C * M * N)


def style_value(sq: float, shape, normalization: str) -> float:
    """The style loss from S = Σ (G − A)²: S/(4 C² M²) (Gatys) or S / N (Johnson)."""
    if normalization == GATYS:
        return sq * style_grad_factor(shape, normalization) / 4.0
    return sq / shape[0]


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

def content_loss(F, P, normalization: str = GATYS, weight: float = 1.0):
    """Content loss of features F against target features P (same shape, or P (1, …)):
    ``(value, weight · dvalue/dF)`` (the caller's loss weight taken into the gradient's
    own pass instead of a pass of its own)."""
    if is_gpu_array(F):
        return _weighted(content_loss_gpu(F, P, normalization), weight)
    return content_loss_cpu(F, P, normalization, weight)


def _weighted(loss, weight: float):
    """``(value, weight · gradient)`` from a kernel's ``(value, gradient)``, in place."""
    value, g = loss
    if weight != 1.0:
        g *= weight
    return value, g


def content_loss_cpu(F, P, normalization: str = GATYS, weight: float = 1.0):
    """``content_loss`` in array code: D = F − P (P broadcast over the batch), the value
    from Σ D² and the gradient weight · factor · D, in one pass per band of rows on the
    pool's workers (``batch_slices``; Σ D² summed band by band in task order, the same for
    any worker count): a training step's content layer, batch 4 of 128 × 128² relu2_2,
    ran three passes on one thread before."""
    check_normalization(normalization)
    D = np.empty_like(F)  # F's memory order
    Pb = np.broadcast_to(P, F.shape)
    scale = F.dtype.type(content_grad_factor(F.shape, normalization) * weight)

    def band(s):
        d = np.subtract(F[s], Pb[s], out=D[s])
        sq = float((d * d).sum())
        if scale != 1:
            d *= scale
        return sq

    value = content_value(sum(pmap(band, batch_slices(F.shape))), F.shape, normalization)
    return value, D


# --------------------------------------------------------------------------- Gram / style

# An image's Gram product is cut into bands of its positions, summed in order, from this
# many multiply-adds (M·C²): a 256² photo's relu1_1 and relu4_1 gain on two workers (3.4 →
# 2.0 ms, 2.1 → 1.5), its relu5_1 (M·C² = 2²⁶) would lose (0.7 → 0.9).
GRAM_SPLIT_MIN_MACS = 2 ** 27


def gram_matrix(F, normalization: str = GATYS):
    """G (N, C, C) = F Fᵀ per image, divided by ``gram_divisor`` (C·H·W for Johnson's
    normalisation).

    On the CPU the products run on the pool's workers (``pmap``), which otherwise leave
    BLAS one thread: one task per image, and an image whose product is large
    (``GRAM_SPLIT_MIN_MACS``) cut into bands of its M positions (``image_bands``) whose
    partial products are added in band order. The cut depends on the shapes only, so the
    bits do not depend on the worker count. Batch 4 of a training step's four style
    layers at 256², two workers: 41.6 → 22.2 ms."""
    check_normalization(normalization)
    Fm, cl = _as_matrices(F)
    if get_xp(F) is not np:
        G = Fm.transpose(0, 2, 1) @ Fm if cl else Fm @ Fm.transpose(0, 2, 1)
    else:
        G = _gram_cpu(Fm, cl)
    divisor = gram_divisor(F.shape, normalization)
    return G if divisor == 1 else G / divisor


def _gram_cpu(Fm, cl):
    """(N, C, C) = FmᵀFm per image (``cl``: Fm (N, M, C)) or Fm Fmᵀ (Fm (N, C, M)), each
    band of positions one product (NumPy's symmetric rank-k update)."""
    N = Fm.shape[0]
    C, M = (Fm.shape[2], Fm.shape[1]) if cl else Fm.shape[1:]
    G = np.empty((N, C, C), dtype=Fm.dtype)
    split = M * C * C >= GRAM_SPLIT_MIN_MACS
    tasks = image_bands(N, M) if split else [(n, 0, M) for n in range(N)]

    def band(task):
        n, r0, r1 = task
        f = Fm[n, r0:r1] if cl else Fm[n, :, r0:r1].T  # (positions, C)
        if (r0, r1) == (0, M):
            np.matmul(f.T, f, out=G[n])
            return None
        return f.T @ f

    parts = pmap(band, tasks)
    for (n, r0, _), part in zip(tasks, parts):
        if part is not None:
            if r0 == 0:
                G[n] = part
            else:
                G[n] += part
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


def style_loss(F, A, normalization: str = GATYS, weight: float = 1.0):
    """Style loss of features F (N, C, H, W) against the Gram target A (1 or N, C, C).

    Returns ``(E, weight · dE/dF)``; see the module docstring for both normalisations.
    """
    if is_gpu_array(F):
        return _weighted(style_loss_gpu(F, A, normalization), weight)
    return style_loss_cpu(F, A, normalization, weight)


def style_loss_cpu(F, A, normalization: str = GATYS, weight: float = 1.0):
    """``style_loss`` in array code: the Gram matrix and the gradient (G − A)·F as batched
    matrix products in the features' memory order. The factor and ``weight`` scale the
    (C, C) matrix G − A before the product, not the (N, C, H, W) gradient after it (two
    passes over the gradient on one thread before)."""
    check_normalization(normalization)
    N, C, H, W = F.shape
    G = gram_matrix(F, normalization)
    D = G - A  # (N, C, C), symmetric
    sq = float((D * D).sum())
    Fm, cl = _as_matrices(F)
    value = style_value(sq, F.shape, normalization)
    D = (D * (style_grad_factor(F.shape, normalization) * weight)).astype(F.dtype, copy=False)
    if cl:  # (N, M, C) @ D: the gradient keeps the features' channels-last memory
        return value, matmul(Fm, D).reshape(N, H, W, C).transpose(0, 3, 1, 2)
    return value, (D @ Fm).reshape(F.shape)


# --------------------------------------------------------------------------- total variation

def tv_loss(x, axes=(-3, -2)):
    """Squared total variation of an image or batch and its gradient.

    ``x``: (…, H, W, C) by default (``axes`` = the two spatial axes; pass ``(2, 3)`` for
    NCHW). L = Σ (x[i+1, j] − x[i, j])² + Σ (x[i, j+1] − x[i, j])²;
    ∂L/∂x[i, j] = 2 (dv[i−1, j] − dv[i, j] + dh[i, j−1] − dh[i, j]) with the differences
    dv, dh taken as 0 outside the image.
    """
    if is_gpu_array(x):
        return tv_loss_gpu(x, axes)
    return tv_loss_cpu(x, axes)


def tv_loss_cpu(x, axes=(-3, -2)):
    """``tv_loss`` in array code: the differences by ``diff``, the gradient added in the
    order +dv, −dv, +dh, −dh (which the kernel reproduces)."""
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


def saturation_penalty(z, bound: float = 3.0):
    """Mean squared excess of a pre-activation over ``±bound`` and its gradient.

    ``z``: any shape (the input of the network's output tanh). R = mean(max(|z| − b, 0)²);
    ∂R/∂z = 2 · sign(z) · max(|z| − b, 0) / z.size. Zero wherever |z| ≤ b, so it only
    acts where tanh has saturated (tanh'(3) ≈ 0.01): there the perceptual loss's gradient
    through tanh vanishes (≈ e^-2|z|) and cannot bring a pixel back, this one can.
    """
    xp = get_xp(z)
    excess = xp.maximum(xp.abs(z) - z.dtype.type(bound), 0)
    n = max(z.size, 1)
    value = float((excess.astype(np.float64) ** 2).sum()) / n
    grad = xp.sign(z) * excess * z.dtype.type(2.0 / n)
    return value, grad


# --------------------------------------------------------------------------- kernels

def _reduce(partial) -> float:
    """The loss value from the kernels' per-block partial sums (float64)."""
    return float(partial.sum())


def content_loss_gpu(F, P, normalization: str = GATYS, relu_mask: bool = False):
    """``content_loss`` by the kernel ``content_loss`` (kernels/losses.cu): ``(value,
    dL/dF)``, dL/dF in F's memory order. With ``relu_mask`` the gradient is also masked by
    ``F > 0`` (F being a ReLU's output), the fused form of
    ``relu_backward(content_loss(F, P)[1], F)``."""
    check_normalization(normalization)
    xp = get_xp(F)
    dt = launch.float_dtype("content_loss_gpu", F)
    P = xp.asarray(P, dtype=dt)
    Fc, perm = launch.dense(F)
    if P.shape == F.shape or (P.ndim == F.ndim and P.shape[0] == 1
                              and P.shape[1:] == F.shape[1:] and perm[0] == 0):
        Pc, _ = launch.dense(P, perm)   # batch outermost: P repeats every Pc.size elements
    else:
        Pc, _ = launch.dense(xp.broadcast_to(P, F.shape), perm)
    n = Fc.size
    scale = content_grad_factor(F.shape, normalization)
    D = launch.empty(xp, Fc.shape, dt)
    partial = launch.empty(xp, (launch.blocks_1d(n),), np.float64)
    launch.run_1d(launch.kernel("losses.cu", "content_loss", xp, dt), n,
                  (Fc, Pc, D, partial, launch.i64(n), launch.i64(max(1, Pc.size)),
                   dt.type(scale), launch.i32(relu_mask)))
    value = content_value(_reduce(partial), F.shape, normalization)
    return value, D.transpose(launch.inverse_permutation(perm))


def style_loss_gpu(F, A, normalization: str = GATYS):
    """``style_loss`` with the two matrix products (G = F Fᵀ and the gradient D·F) on
    cuBLAS through ``@`` and, between them, the kernel ``style_residual``
    (kernels/losses.cu): D = (G / gram_divisor − A)·factor and Σ (G / gram_divisor − A)²."""
    check_normalization(normalization)
    xp = get_xp(F)
    dt = launch.float_dtype("style_loss_gpu", F)
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
    gdiv = float(gram_divisor(F.shape, normalization))
    scale = style_grad_factor(F.shape, normalization)
    D = launch.empty(xp, G.shape, dt)
    partial = launch.empty(xp, (launch.blocks_1d(G.size),), np.float64)
    launch.run_1d(launch.kernel("losses.cu", "style_residual", xp, dt), G.size,
                  (G, A, D, partial, launch.i64(G.size), launch.i64(A.size),
                   dt.type(gdiv), dt.type(scale)))
    value = style_value(_reduce(partial), F.shape, normalization)
    if channels_last:
        grad = (Ft @ D).reshape(N, H, W, C).transpose(0, 3, 1, 2)  # D symmetric: (D F)ᵀ = Fᵀ D
    else:
        grad = (D @ Fm).reshape(F.shape)
    return value, grad


def tv_loss_gpu(x, axes=(-3, -2)):
    """``tv_loss`` by the kernel ``tv_loss`` (kernels/losses.cu) on x viewed as
    (B, H, K1, W, K2), C-contiguous: ``(value, grad)``."""
    xp = get_xp(x)
    dt = launch.float_dtype("tv_loss_gpu", x)
    ah, aw = sorted(a % x.ndim for a in axes)  # TV is symmetric in its two axes
    if ah == aw:
        raise ValueError(f"tv_loss_gpu: two distinct axes, got {axes}")
    xc = xp.ascontiguousarray(x)
    shape = xc.shape
    B = int(np.prod(shape[:ah]))
    K1 = int(np.prod(shape[ah + 1:aw]))
    K2 = int(np.prod(shape[aw + 1:]))
    grad = launch.empty(xp, shape, dt)
    partial = launch.empty(xp, (launch.blocks_1d(xc.size),), np.float64)
    i32 = launch.i32
    if xc.size:
        launch.run_1d(launch.kernel("losses.cu", "tv_loss", xp, dt), xc.size,
                      (xc, grad, partial, i32(B), i32(shape[ah]), i32(K1), i32(shape[aw]), i32(K2)))
        value = _reduce(partial)
    else:
        value = 0.0
    return value, grad
