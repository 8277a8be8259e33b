"""Winograd F(2×2, 3×3) convolution (Lavin & Gray 2016) for the CPU.

For 3×3, stride-1 convolutions with zero padding 1 — every convolution of VGG16 — each
2×2 block of outputs is computed from a 4×4 input tile d with 16 multiplies per
(channel, filter) pair instead of 36:

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

    Bᵀ = [1  0 −1  0]    G = [ 1    0    0 ]    Aᵀ = [1  1  1  0]
         [0  1  1  0]        [ ½    ½    ½ ]         [0  1 −1 −1]
         [0 −1  1  0]        [ ½   −½    ½ ]
         [0  1  0 −1]        [ 0    0    1 ]

Summed over input channels, the elementwise product becomes 16 matrix products, one per
position (ξ, ν) of the 4×4 transformed tile:

    M_ξν (T, F) = V_ξν (T, C) @ U_ξν (C, F),   V = Bᵀ d B per tile,  U = G g Gᵀ per (c, f)

2.25× fewer multiply-adds than the direct convolution, all of them in large GEMMs; the
transforms are additions of strided slices (the coefficients are 0, ±½, ±1, so float32
accuracy is that of the direct method). The input gradient of such a layer is again a
3×3 "same" convolution — of dy with the kernel rotated by 180° and its channels swapped —
so the backward reuses the forward (``winograd_input_grad``).

Work is cut into bands of tile rows of one image (``winograd_band_rows``), run by ``pmap``.
The naive twin is ``conv.conv2d_naive``; ``tests/test_winograd.py`` compares.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..parallel import band_rows, image_bands, pmap
from .padding import pad2d, pad2d_backward, padded_rows_cl

G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


class WinogradWeights(NamedTuple):
    """The transformed kernels of one layer: U for the forward (16, C, F) and for the
    input gradient (16, F, C), or None there when only the forward was transformed (a
    backward that needs it transforms it then). A caller whose weights do not change
    transforms both once (``winograd_transform``)."""
    forward: np.ndarray
    input_grad: np.ndarray | None


def winograd_weights(w):
    """U (16, C, F) = G g Gᵀ for every (filter f, channel c) of w (F, C, 3, 3).

    Written out, as G's rows are (g0), ½(g0 + g1 + g2), ½(g0 − g1 + g2), (g2): a handful
    of passes over w instead of 16·C·F tiny matrix products (128 × 128 channels: 0.6 ms
    instead of 5; the layers of a training network transform their weights every call).
    The products by ½ are exact, so this equals ``G @ g @ Gᵀ`` evaluated in order."""
    F, C = w.shape[:2]
    g = w.transpose(2, 3, 1, 0)  # (3, 3, C, F) view: g[i, j] is the (C, F) matrix of tap (i, j)

    def rows(a, out):  # out[0..3] = G a along the first axis of a (3, …)
        out[0] = a[0]
        np.add(a[0], a[2], out=out[3])  # scratch for g0 + g2
        np.add(out[3], a[1], out=out[1])
        np.subtract(out[3], a[1], out=out[2])
        out[1] *= 0.5
        out[2] *= 0.5
        out[3] = a[2]

    t = np.empty((4, 3, C, F), dtype=w.dtype)
    rows(g, t)
    U = np.empty((4, 4, C, F), dtype=w.dtype)
    rows(t.transpose(1, 0, 2, 3), U.transpose(1, 0, 2, 3))
    return U.reshape(16, C, F)


def winograd_transform(w) -> WinogradWeights:
    """Both transforms of w (F, C, 3, 3)."""
    return WinogradWeights(winograd_weights(w), winograd_input_grad_weights(w))


def _input_transform(xb, TH, TW, V):
    """V[4a+b] (TH·TW, C) = (Bᵀ d B)[a, b] for the 4×4 tiles of the padded band xb.

    xb: (2·TH + 2, 2·TW + 2, C) channels-last; tile (t, s) starts at row 2t, column 2s.
    Bᵀ d first combines rows (d0 − d2, d1 + d2, d2 − d1, d1 − d3), then the same on
    columns.
    """
    C = xb.shape[2]
    rows = [xb[i:i + 2 * TH:2] for i in range(4)]  # (TH, 2TW+2, C) views
    q = [rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3]]
    out = V.reshape(4, 4, TH, TW, C)
    for a in range(4):
        cols = [q[a][:, j:j + 2 * TW:2] for j in range(4)]
        np.subtract(cols[0], cols[2], out=out[a, 0])
        np.add(cols[1], cols[2], out=out[a, 1])
        np.subtract(cols[2], cols[1], out=out[a, 2])
        np.subtract(cols[1], cols[3], out=out[a, 3])


def _output_transform(M, TH, TW, y, b):
    """y (2·TH, 2·TW, F) = Aᵀ M A per tile (+ b); M (16, TH·TW, F)."""
    F = M.shape[2]
    m = M.reshape(4, 4, TH, TW, F)
    s0 = m[0] + m[1] + m[2]  # (4, TH, TW, F): rows of Aᵀ M
    s1 = m[1] - m[2] - m[3]
    for r, s in ((0, s0), (1, s1)):
        top = y[r::2]
        np.add(s[0] + s[1], s[2], out=top[:, 0::2])
        np.subtract(s[1] - s[2], s[3], out=top[:, 1::2])
    if b is not None:
        y += b


def winograd_band_rows(TH, TW, C):
    """Tile rows per task, of the TH × TW tiles of an image with C input channels: a
    band's 16 GEMMs (tiles, C) @ (C, F) must be large enough to run efficiently and its
    transformed input (16·tiles·C floats) should stay in cache. Bands of 512 tiles up to
    64 channels, 256 up to 128, 1024 above, measured with two ``pmap`` workers (ms per
    convolution, bands of 256 / 512 / 1024 tiles): 64 ch, batch 4 at 128²: 38 / 31 / 33;
    128 ch at 128²: 18.5 / 22 / 23; 256 ch at 128²: 80 / 73 / 67.5; 512 ch at 64²:
    82 / 72 / 68."""
    tiles = 512 if C <= 64 else 256 if C <= 128 else 1024
    return band_rows(tiles, TW, TH)


def winograd_conv3x3(x, U, b=None, pad_mode="zero"):
    """3×3 convolution, stride 1, padding 1 (zero or reflection). x (N, C, H, W), U from
    ``winograd_weights`` (16, C, F). Returns (N, F, H, W), channels-last memory.
    One band of tile rows of one image per task (``pmap``). Tiles that stick out past an
    odd edge read padding beyond the image; their outputs are cropped, so what is there
    does not matter."""
    N, C, H, W = x.shape
    F = U.shape[2]
    TH, TW = (H + 1) // 2, (W + 1) // 2
    y = np.empty((N, 2 * TH, 2 * TW, F), dtype=x.dtype)
    extra = 2 * TW + 2 - (W + 2)  # one zero column more when W is odd

    def band(task):
        n, t0, t1 = task
        xb = padded_rows_cl(x[n:n + 1], 2 * t0, 2 * t1 + 2, 1, pad_mode)[0]
        if extra:
            xb = np.concatenate([xb, np.zeros_like(xb[:, :extra])], axis=1)
        T = (t1 - t0) * TW
        V = np.empty((16, T, C), dtype=x.dtype)
        _input_transform(xb, t1 - t0, TW, V)
        M = np.matmul(V, U)  # 16 GEMMs (T, C) @ (C, F)
        _output_transform(M, t1 - t0, TW, y[n, 2 * t0:2 * t1], b)

    pmap(band, image_bands(N, TH, winograd_band_rows(TH, TW, C)))
    return y[:, :H, :W, :].transpose(0, 3, 1, 2)


def winograd_input_grad_weights(w):
    """U for the input gradient: the kernel rotated by 180° with channels swapped."""
    return winograd_weights(np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)))


def winograd_input_grad(dy, U, pad_mode="zero"):
    """dx (N, C, H, W) of a 3×3, stride-1, padding-1 convolution, from dy (N, F, H, W) and
    U = ``winograd_input_grad_weights(w)`` (16, F, C). Channels-last memory.

    Zero padding: the input gradient of a "same" convolution is the "same" convolution of
    dy with the rotated kernel. Reflection: the gradient of the *padded* input is wanted,
    so that its border can be folded back onto the pixels it copied (``pad2d_backward``);
    that is the full correlation of dy with the rotated kernel, i.e. the same "same"
    convolution of dy zero-padded by one, of size (H + 2, W + 2)."""
    if pad_mode == "zero":
        return winograd_conv3x3(dy, U)
    dy1 = pad2d(dy.transpose(0, 2, 3, 1), 1, "zero", axes=(1, 2)).transpose(0, 3, 1, 2)
    dxpad = winograd_conv3x3(dy1, U)  # (N, C, H + 2, W + 2), channels-last memory
    return pad2d_backward(dxpad, 1, pad_mode, overwrite=True)

