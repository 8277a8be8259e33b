"""×2 nearest upsampling followed by a 3×3 reflect-padded convolution, as one op.

    y = conv3x3_reflect(upsample2_nearest(x))      x (N, C, H, W), w (F, C, 3, 3),
                                                   b (F,) or None, y (N, F, 2H, 2W)

The transformer's resize-then-convolve upsampling (``transformer.ResizeConvBlock`` in
training, ``transformer._infer`` at inference). Written on the low-resolution input, the
convolution of the resized image needs 16 products per input pixel and channel pair
instead of 36, and no resized image at all.

The fold. In one dimension, with U[p] = x[p // 2] and U reflect-padded by 1
(U[−1] = U[1] = x[0], U[2H] = U[2H − 2] = x[H − 1]), output row p = 2i + a reads
U[p − 1], U[p], U[p + 1]:

    a = 0:  w₀·x[i − 1] + (w₁ + w₂)·x[i]         (U[2i − 1] = x[i − 1], U[2i] = U[2i + 1] = x[i])
    a = 1:  (w₀ + w₁)·x[i] + w₂·x[i + 1]         (U[2i] = U[2i + 1] = x[i], U[2i + 2] = x[i + 1])

with x[−1] = x[0] and x[H] = x[H − 1]: reflect padding of the resized image is edge
replication of the input. So with xq the input edge-replicated by 1 (xq[r] = x[clamp(r − 1)]),
each output phase (a, b) ∈ {0, 1}² is a 2×2 convolution of xq:

    y[n, f, 2i + a, 2j + b] = b[f] + Σ_{s,t ∈ {0,1}} Σ_c  K[a, b, s, t][f, c] · xq[n, c, i + a + s, j + b + t]
    K[a, b, s, t] = Σ_{u,v} R[a, s, u] · R[b, t, v] · w[:, :, u, v]

where R[a, s] is the row of tap weights: R[0, 0] = (1, 0, 0), R[0, 1] = (0, 1, 1),
R[1, 0] = (1, 1, 0), R[1, 1] = (0, 0, 1).

Vectorised (CPU), like ``conv._shifted_gemm_forward``: xq channels-last, its rows
flattened, q = r·(W + 2) + t. A shift (du, dv) = (a + s, b + t) ∈ {0, 1, 2}² serves the
phases with a ∈ {du − 1, du}, b ∈ {dv − 1, dv}; its contiguous input rows times those
phases' kernels side by side is one GEMM, accumulated into the phases' columns of
Z (P, 4·F), column block 2a + b:

    Z[:, phases] += xq_flat[off : off + P] (P, C) @ [K[a, b, du − a, dv − b]ᵀ …] (C, k·F)

with off = du·(W + 2) + dv and P the band's rows q, in 11 products (the shifts (1, 0) and (1, 2) serve phase blocks
that are not side by side: two products each). Then Z's rows q = i·(W + 2) + j, j < W,
are scattered to y[2i + a, 2j + b]. One band of input rows of one image per ``pmap``
task (``image_bands``), so the bits do not depend on the number of workers.
``upconv2d_backward`` is the adjoint, product by product (its docstring).

``upconv2d_naive`` is the definition (``conv2d_naive`` of the resized image), the twin
the tests compare with; GPU arrays and other dtypes take the two layers one after the
other.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_xp
from ..parallel import band_rows, gemm, image_bands, pmap, row_bands
from .affine import apply_rows, images, taken_by
from .conv import CPU_DTYPES, Conv2d, conv2d_backward, conv2d_forward, conv2d_naive
from .resampling import Upsample, upsample_nearest2d_backward, upsample_nearest2d_forward

# R[a, s]: the weights of the three taps u that phase a's row s sums (the module docstring)
FOLD = np.array([[[1, 0, 0], [0, 1, 1]],
                 [[1, 1, 0], [0, 0, 1]]])

# A task's Z (its band of input rows, 4·F columns) stays under this: a bound on the
# temporaries, and enough rows per product for BLAS; timed from 1 to 8 MiB, the same
# within noise (docs/performance.md).
UPCONV_BAND_BYTES = 4 * 2**20


class UpConvCache(NamedTuple):
    x: object            # the input itself (not a copy), or None (keep_input=False)
    w: object
    has_bias: bool
    layers: object = None  # (UpsampleCache, ConvCache) where the two layers ran, else None


def folds_into_conv(resize, conv) -> bool:
    """Whether the layers ``resize`` then ``conv`` compute what ``upconv2d_forward`` does:
    a ×2 nearest ``Upsample``, then a 3×3, stride-1, padding-1 reflect ``Conv2d``."""
    return (isinstance(resize, Upsample) and resize.scale == 2 and isinstance(conv, Conv2d)
            and conv.params["weight"].shape[2:] == (3, 3) and conv.stride == 1
            and conv.padding == 1 and conv.pad_mode == "reflect")


def check_upconv(x, w):
    """A plain ValueError unless x (N, C, H, W) and w (F, C, 3, 3) fit."""
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"upconv2d: expects x (N, C, H, W) and w (F, C, 3, 3), "
                         f"got shapes {tuple(x.shape)} and {tuple(w.shape)}")
    if tuple(w.shape[2:]) != (3, 3):
        raise ValueError(f"upconv2d: needs a 3x3 kernel, got {w.shape[2]}x{w.shape[3]}")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"upconv2d: input has {x.shape[1]} channels, weights expect {w.shape[1]}")


def upconv2d_naive(x, w, b=None):
    """The definition: the resized image convolved by loops (slow; tests only)."""
    return conv2d_naive(upsample_nearest2d_forward(x, 2)[0], w, b, 1, 1, "reflect")


def fold_weights(w):
    """K (2, 2, 2, 2, C, F), the phase kernels transposed for the GEMMs:
    K[a, b, s, t] = (Σ_{u,v} R[a, s, u]·R[b, t, v]·w[:, :, u, v])ᵀ."""
    R = FOLD.reshape(4, 3).astype(w.dtype)                       # (a·2 + s, u)
    G = w.transpose(2, 3, 1, 0)                                  # (u, v, C, F)
    rows = np.tensordot(R, G, axes=(1, 0))                       # (a·2 + s, v, C, F)
    both = np.tensordot(R, rows, axes=(1, 1))                    # (b·2 + t, a·2 + s, C, F)
    return both.reshape(2, 2, 2, 2, *both.shape[2:]).transpose(2, 0, 3, 1, 4, 5)


def upconv_products(w):
    """The GEMMs of the fold: ``[(du, dv, block0, block1, B), …]``, B (C, k·F) the kernels
    of phase blocks block0 … block1 − 1 (block 2a + b) under shift (du, dv), C-contiguous.
    The first one, the shift (1, 1), serves all four blocks (it initialises Z)."""
    K = fold_weights(w)
    products = []
    shifts = [(1, 1)] + [(du, dv) for du in range(3) for dv in range(3) if (du, dv) != (1, 1)]
    for du, dv in shifts:
        blocks = [2 * a + b for a in (du - 1, du) if 0 <= a <= 1
                  for b in (dv - 1, dv) if 0 <= b <= 1]
        runs = [[blocks[0]]]
        for k in blocks[1:]:
            if k == runs[-1][-1] + 1:
                runs[-1].append(k)
            else:
                runs.append([k])
        for run in runs:
            B = np.concatenate([K[k // 2, k % 2, du - k // 2, dv - k % 2] for k in run], axis=1)
            products.append((du, dv, run[0], run[-1] + 1, B))
    return products


def replicate_rows_cl(x, r0: int, r1: int, affine=None):
    """Rows ``r0:r1`` (in padded coordinates) of x (N, C, H, W) edge-replicated by 1,
    channels-last: (N, r1 − r0, W + 2, C), xq[n, r, t, c] = x[n, c, clamp(r − 1), clamp(t − 1)].
    ``affine``: an ``affine.ChannelAffine`` of x; the rows of its output (the border copies
    pixels, so the map is applied to the band as a whole)."""
    N, C, H, W = x.shape
    xt = x.transpose(0, 2, 3, 1)  # (N, H, W, C) view
    out = np.empty((N, r1 - r0, W + 2, C), dtype=x.dtype)
    a, b = max(r0, 1), max(min(r1, H + 1), max(r0, 1))  # padded rows [a, b) are image rows a − 1 …
    if affine is None:
        out[:, a - r0:b - r0, 1:W + 1] = xt[:, a - 1:b - 1]
    else:  # mapped as it is copied
        apply_rows(out[:, a - r0:b - r0, 1:W + 1], affine.a, affine.b, affine.relu, src=xt[:, a - 1:b - 1])
    for r in list(range(r0, a)) + list(range(b, r1)):  # at most one row at each edge
        out[:, r - r0, 1:W + 1] = xt[:, min(max(r - 1, 0), H - 1)]
        if affine is not None:
            apply_rows(out[:, r - r0:r - r0 + 1, 1:W + 1], affine.a, affine.b, affine.relu)
    out[:, :, 0] = out[:, :, 1]  # the border columns copy mapped pixels
    out[:, :, W + 1] = out[:, :, W]
    return out


def upconv2d_forward(x, w, b=None, keep_input: bool = True, affine=None, moments=None):
    """``conv2d(upsample_nearest2d(x, 2), w, b, stride 1, padding 1, reflect)`` in one op.

    x (N, C, H, W), w (F, C, 3, 3), b (F,) or None -> ``(y, cache)``, y (N, F, 2H, 2W), on
    the CPU a view of channels-last memory (like the convolutions' outputs). NumPy float32
    and float64 take the fold (module docstring); anything else the two layers in turn.
    ``keep_input=False``: the cache keeps no input (inference; the backward then gives dx
    only), and the two layers' path keeps no resized image.
    ``affine``: an ``affine.ChannelAffine`` whose x is this x; the input is its output,
    mapped band by band in the fold (made first with ``keep_input`` or off the fold).
    ``moments``: a ``moments.BandMoments`` of the output, given each band as the fold
    writes it.
    """
    x, affine = taken_by("upconv2d", x, affine, not keep_input and folds(x))
    check_upconv(x, w)
    if not folds(x):
        up, up_cache = upsample_nearest2d_forward(x, 2)
        y, conv_cache = conv2d_forward(up, w, b, 1, 1, "reflect", keep_input=keep_input)
        return y, UpConvCache(x if keep_input else None, w, b is not None, (up_cache, conv_cache))
    w = w.astype(x.dtype, copy=False)
    N, C, H, W = x.shape
    F = w.shape[0]
    Wp = W + 2
    products = upconv_products(w)
    z_init = None if b is None else np.tile(b.astype(x.dtype, copy=False), 4)  # (4·F,)
    y = np.empty((N, H, 2, W, 2, F), dtype=x.dtype)  # (n, i, a, j, b, f): (N, 2H, 2W, F)

    def band(task):
        n, i0, i1 = task
        xq = replicate_rows_cl(x[n:n + 1], i0, i1 + 2, images(affine, n, n + 1)).reshape(-1, C)  # ((R + 2)·Wp, C)
        R = i1 - i0
        P = (R - 1) * Wp + W  # Z's rows q = i·Wp + j; those with j ≥ W are never read
        Z = np.empty((R * Wp, 4 * F), dtype=x.dtype)
        (du, dv, _, _, B), rest = products[0], products[1:]
        np.matmul(xq[du * Wp + dv:du * Wp + dv + P], B, out=Z[:P])  # all four blocks
        if z_init is not None:
            Z[:P] += z_init
        for du, dv, k0, k1, B in rest:
            off = du * Wp + dv
            gemm(xq[off:off + P], B, Z[:P, k0 * F:k1 * F])  # (P, C) @ (C, k·F), accumulated
        # Z (R, Wp, a, b, F) -> y[n, i0:i1] (R, a, W, b, F)
        y[n, i0:i1] = Z.reshape(R, Wp, 2, 2, F)[:, :W].transpose(0, 2, 1, 3, 4)
        if moments is not None:
            moments.add(n, i0, y[n, i0:i1].reshape(2 * R, 2 * W, F))

    pmap(band, image_bands(N, H, upconv_band_rows(H, Wp, F, x.itemsize)))
    cache = UpConvCache(x if keep_input else None, w, b is not None)
    return y.reshape(N, 2 * H, 2 * W, F).transpose(0, 3, 1, 2), cache


def folds(x) -> bool:
    """Whether ``upconv2d_forward`` takes the fold for x (NumPy float32 or float64)."""
    return get_xp(x) is np and x.dtype in CPU_DTYPES


def upconv_band_rows(H, Wp, F, itemsize):
    """Input rows per band: a band's Z, Wp·4·F elements a row, stays under UPCONV_BAND_BYTES."""
    return band_rows(UPCONV_BAND_BYTES, Wp * 4 * F * itemsize, H)


def upconv2d_backward(dy, cache: UpConvCache, need_dx: bool = True):
    """``(dx, dw, db)`` of ``upconv2d_forward``; dw and db are None when the cache keeps
    no input, dx when ``need_dx`` is False. The fold's adjoint, per product of the forward
    and with dZ (P, 4·F) = a band of dy gathered into Z's layout (zero where j ≥ W):

        dxq_flat[off : off + P] += dZ[:, phases] (P, k·F) @ Bᵀ (k·F, C)
        dB                      += xq_flat[off : off + P]ᵀ (C, P) @ dZ[:, phases] (P, k·F)

    then dw[f, c, u, v] = Σ_{a,b,s,t} R[a, s, u]·R[b, t, v]·dK[a, b, s, t][c, f] (dK: the
    dB of each phase kernel) and dx the edge replication's adjoint of dxq (each border
    row, then column, added onto the edge it copied). Tasks (``pmap``): whole images
    when dx is wanted (the bands of an image overlap in dxq), bands of rows when only dw
    is; each returns its part of the dBs, added in task order. Where the forward ran the
    two layers, their backwards.
    """
    if cache.layers is not None:
        up_cache, conv_cache = cache.layers
        dup, dw, db = conv2d_backward(dy, conv_cache, need_dx)
        return (None if dup is None else upsample_nearest2d_backward(dup, up_cache)), dw, db
    x, w = cache.x, cache.w
    N, F, OH, OW = dy.shape
    C = w.shape[1]
    H, W = OH // 2, OW // 2
    Wp = W + 2
    products = upconv_products(w)
    dy6 = dy.reshape(N, F, H, 2, W, 2)  # (n, f, i, a, j, b): a view in any memory order
    rows = upconv_band_rows(H, Wp, F, dy.itemsize)
    dxq = np.zeros((N, H + 2, Wp, C), dtype=dy.dtype) if need_dx else None
    if need_dx:
        tasks = [(n, row_bands(H, rows)) for n in range(N)]
    else:
        tasks = [(n, [(i0, i1)]) for n, i0, i1 in image_bands(N, H, rows)]

    def image(task):
        n, bands = task
        dBs = None if x is None else [np.zeros_like(B) for *_, B in products]
        for i0, i1 in bands:
            R = i1 - i0
            P = (R - 1) * Wp + W
            dZ = np.empty((R, Wp, 2, 2, F), dtype=dy.dtype)
            dZ[:, :W] = dy6[n, :, i0:i1].transpose(1, 3, 2, 4, 0)  # (F, R, a, W, b) -> (R, W, a, b, F)
            dZ[:, W:] = 0  # the garbage positions must not contribute
            dZ = dZ.reshape(R * Wp, 4 * F)[:P]
            xq = None if x is None else replicate_rows_cl(x[n:n + 1], i0, i1 + 2).reshape(-1, C)
            dxflat = None if dxq is None else dxq[n, i0:i1 + 2].reshape(-1, C)  # a view
            for k, (du, dv, k0, k1, B) in enumerate(products):
                off = du * Wp + dv
                dZk = dZ[:, k0 * F:k1 * F]
                if dxflat is not None:
                    gemm(dZk, B.T, dxflat[off:off + P])  # (P, k·F) @ (k·F, C)
                if dBs is not None:
                    gemm(xq[off:off + P].T, dZk, dBs[k])  # (C, P) @ (P, k·F)
        return dBs

    parts = pmap(image, tasks)
    dw = db = None
    if x is not None:
        dBs = parts[0]
        for part in parts[1:]:
            for acc, dB in zip(dBs, part):
                acc += dB
        dw = unfold_weight_grad(products, dBs, F)
        db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    dx = None
    if dxq is not None:
        dxq[:, 1] += dxq[:, 0]
        dxq[:, H] += dxq[:, H + 1]
        dxq[:, :, 1] += dxq[:, :, 0]
        dxq[:, :, W] += dxq[:, :, W + 1]
        dx = dxq[:, 1:H + 1, 1:W + 1].transpose(0, 3, 1, 2)  # (N, C, H, W), channels-last memory
    return dx, dw, db


def unfold_weight_grad(products, dBs, F):
    """dw (F, C, 3, 3) from the gradients dBs of the products' kernels B (C, k·F): each
    phase kernel's dK[a, b, s, t] (C, F) taken from its product, then folded back,
    dw[f, c, u, v] = Σ_{a,b,s,t} R[a, s, u]·R[b, t, v]·dK[a, b, s, t][c, f]."""
    dB0 = dBs[0]
    dK = np.empty((2, 2, 2, 2, dB0.shape[0], F), dtype=dB0.dtype)  # (a, s, b, t, C, F)
    for (du, dv, k0, k1, _), dB in zip(products, dBs):
        for k in range(k0, k1):
            a, b = divmod(k, 2)
            dK[a, du - a, b, dv - b] = dB[:, (k - k0) * F:(k - k0 + 1) * F]
    R = FOLD.reshape(4, 3).astype(dB0.dtype)                        # (a·2 + s, u)
    rows = np.tensordot(R, dK.reshape(4, 4, *dK.shape[4:]), axes=(0, 0))  # (u, b·2 + t, C, F)
    both = np.tensordot(R, rows, axes=(0, 1))                       # (v, u, C, F)
    return np.ascontiguousarray(both.transpose(3, 2, 1, 0))          # (F, C, u, v)
