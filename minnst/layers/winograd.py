"""Winograd convolution F(m×m, 3×3) (Lavin & Gray 2016) for the CPU, m = 2 or 4.

For 3×3, stride-1 convolutions with padding 1 — every convolution of VGG16, the
transformer's residual blocks — each m×m block of outputs is computed from the
α×α input tile d around it (α = m + 2) as

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

F(2×2, 3×3), α = 4 (interpolation points 0, ±1, ∞):

    Bᵀ = [1  0 −1  0]    G = [ 1    0    0 ]    Aᵀ = [1  1  1  0]
         [0  1  1  0]        [ ½    ½    ½ ]         [0  1 −1 −1]
         [0 −1  1  0]        [ ½   −½    ½ ]
         [0  1  0 −1]        [ 0    0    1 ]

F(4×4, 3×3), α = 6 (points 0, ±1, ±2, ∞):

    Bᵀ = [4  0 −5  0  1  0]    G = [ 1/4     0     0  ]    Aᵀ = [1  1  1  1  1  0]
         [0 −4 −4  1  1  0]        [−1/6  −1/6  −1/6  ]         [0  1 −1  2 −2  0]
         [0  4 −4 −1  1  0]        [−1/6   1/6  −1/6  ]         [0  1  1  4  4  0]
         [0 −2 −1  2  1  0]        [1/24  1/12   1/6  ]         [0  1 −1  8 −8  1]
         [0  2 −1 −2  1  0]        [1/24 −1/12   1/6  ]
         [0  4  0 −5  0  1]        [ 0      0     1   ]

Summed over input channels, the elementwise product becomes α² matrix products, one per
position (ξ, ν) of the transformed tile:

    M_ξν (T, F) = V_ξν (T, C) @ U_ξν (C, F),   V = Bᵀ d B per tile,  U = G g Gᵀ per (c, f)

α²/m² multiply-adds per output and channel pair instead of the direct method's 9: 4 for
F(2×2) (2.25× fewer), 2.25 for F(4×4) (4× fewer), all of them in large GEMMs. The
transformed input is α²/m² times the input: 4× for F(2×2), 2.25× for F(4×4). Every
transform is written out as additions and scalings of strided slices, one axis at a time
(``_bt2``, ``_bt4``, ``_AT``, ``_G``).

Accuracy: the float32 GEMMs' rounding reaches the outputs through Aᵀ (and A), whose
entries F(4×4) lets grow to 8. On VGG16's layers with real activations (docs/layers.md),
F(2×2)'s float32 error is 1–2× the direct method's; F(4×4)'s is 3–6× F(2×2)'s (RMS)
and 6–14× at the worst element, forward and input gradient — about 1e-6 of the output's
scale. F(4×4) is ``method="winograd4"``, which "auto" does not take.

The input gradient of such a layer is again a 3×3 "same" convolution — of dy with the
kernel rotated by 180° and its channels swapped — so the backward reuses the forward
(``winograd_input_grad``).

Which tile a routine runs is the size of the transformed kernels it is handed (16 or 36
positions). Work is cut into bands of tile rows of one image (``winograd_band_rows``), run
by ``pmap``. The naive twin is ``conv.conv2d_naive``; ``tests/test_winograd.py`` compares.
"""
from __future__ import annotations

import numpy as np

from ..parallel import band_rows, image_bands, pmap
from .affine import images
from .padding import padded_rows_cl

TILES = (2, 4)  # the output tile sizes m of the algorithms here

# The textbook matrices (the tests and the docs; the code below writes them out).
BT2 = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=float)
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
AT2 = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=float)
BT4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=float)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], dtype=float)
MATRICES = {2: (BT2, G, AT2), 4: (BT4, G4, AT4)}  # m -> (Bᵀ, G, Aᵀ)


# ------------------------------------------------------------------ the transforms, written out
# Each applies one matrix along one axis: d (or m, g) holds the input's slices along that
# axis, o the output's (views, written in place), all of one shape; lists or arrays stacked
# along their first axis, but F(2×2)'s, which take stacked arrays and fuse the passes of
# one form (fewer NumPy calls: each is a GIL hand-off when two workers run, see
# ``_input_transform``).

def _bt2(lo, hi, o):
    """o = Bᵀ d, F(2×2): 4 → 4, the inputs as two stacked pairs lo = (d0, d1) and hi =
    (d2, d3), the outputs stacked (4, ...): d0 − d2 and d1 − d3 are one pass."""
    np.subtract(lo, hi, out=o[0::3])                              # o0 = d0 − d2, o3 = d1 − d3
    np.add(lo[1], hi[0], out=o[1])
    np.subtract(hi[0], lo[1], out=o[2])


def _bt4(d, o):
    """o = Bᵀ d, F(4×4): 6 → 6, 17 passes, two temporaries."""
    s = np.subtract(d[4], d[2])                                   # d4 − d2
    t = np.subtract(d[3], d[1])
    t *= 2                                                        # 2(d3 − d1)
    np.subtract(d[0], d[2], out=o[0])
    o[0] *= 4
    o[0] += s                                                     # 4d0 − 5d2 + d4
    np.add(s, t, out=o[3])                                        # −2d1 − d2 + 2d3 + d4
    np.subtract(s, t, out=o[4])                                   # 2d1 − d2 − 2d3 + d4
    np.subtract(d[5], d[3], out=o[5])
    t *= 2
    o[5] -= t                                                     # 4d1 − 5d3 + d5
    np.multiply(d[2], 4, out=s)
    np.subtract(d[4], s, out=s)                                   # d4 − 4d2
    np.multiply(d[1], 4, out=t)
    np.subtract(d[3], t, out=t)                                   # d3 − 4d1
    np.add(s, t, out=o[1])                                        # −4d1 − 4d2 + d3 + d4
    np.subtract(s, t, out=o[2])                                   # 4d1 − 4d2 − d3 + d4


def _at2(m, o):
    """o = Aᵀ m, F(2×2): 4 → 2, m and o stacked (4, ...) and (2, ...): (m0 + m1) + m2 and
    (m1 − m2) − m3. (``np.add.reduce`` over three makes each in one call but one pass
    more, its first copy: VGG16 forward paired 0.986–0.996 for these four calls.)"""
    np.add(m[0], m[1], out=o[0])
    o[0] += m[2]
    np.subtract(m[1], m[2], out=o[1])
    o[1] -= m[3]


def _at4(m, o):
    """o = Aᵀ m, F(4×4): 6 → 4, 13 passes, two temporaries."""
    a = np.add(m[1], m[2])
    c = np.add(m[3], m[4])
    np.add(m[0], a, out=o[0])
    o[0] += c                                                     # m0 + m1 + m2 + m3 + m4
    c *= 4
    np.add(a, c, out=o[2])                                        # m1 + m2 + 4(m3 + m4)
    np.subtract(m[1], m[2], out=a)
    np.subtract(m[3], m[4], out=c)
    c *= 2
    np.add(a, c, out=o[1])                                        # m1 − m2 + 2(m3 − m4)
    c *= 4
    np.add(a, c, out=o[3])
    o[3] += m[5]                                                  # m1 − m2 + 8(m3 − m4) + m5


def _g2(g, o):
    """o = G g, F(2×2): 3 → 4. The products by ½ are exact."""
    o[0][...] = g[0]
    np.add(g[0], g[2], out=o[3])                                  # scratch for g0 + g2
    np.add(o[3], g[1], out=o[1])
    np.subtract(o[3], g[1], out=o[2])
    o[1] *= 0.5
    o[2] *= 0.5
    o[3][...] = g[2]


def _g4(g, o):
    """o = G g, F(4×4): 3 → 6."""
    np.multiply(g[0], 0.25, out=o[0])                             # g0/4
    np.add(o[0], g[2], out=o[5])                                  # scratch: g0/4 + g2
    np.multiply(g[1], 0.5, out=o[4])                              # scratch: g1/2
    np.add(o[5], o[4], out=o[3])
    np.subtract(o[5], o[4], out=o[4])
    o[3] /= 6                                                     # (g0/4 + g1/2 + g2)/6
    o[4] /= 6                                                     # (g0/4 − g1/2 + g2)/6
    np.add(g[0], g[2], out=o[5])                                  # scratch: g0 + g2
    np.add(o[5], g[1], out=o[1])
    np.subtract(o[5], g[1], out=o[2])
    o[1] /= -6                                                    # −(g0 + g1 + g2)/6
    o[2] /= -6                                                    # −(g0 − g1 + g2)/6
    o[5][...] = g[2]


_AT = {2: _at2, 4: _at4}
_G = {2: _g2, 4: _g4}


def winograd_tile(U) -> int:
    """The output tile size m of transformed kernels U ((m + 2)², C, F)."""
    m = {16: 2, 36: 4}.get(U.shape[0])
    if m is None:
        raise ValueError(f"winograd: transformed kernels have {U.shape[0]} positions, "
                         f"expected 16 (F(2x2, 3x3)) or 36 (F(4x4, 3x3))")
    return m


# --------------------------------------------------------------------------- kernels

def winograd_weights(w, tile: int = 2):
    """U ((m+2)², C, F) = G g Gᵀ for every (filter f, channel c) of w (F, C, 3, 3), m = tile.

    Written out: a handful of passes over w instead of (m+2)²·C·F tiny matrix products
    (128 × 128 channels, F(2×2): 0.6 ms instead of 5; the layers of a training network
    transform their weights every call)."""
    if tile not in TILES:
        raise ValueError(f"winograd: tile must be one of {TILES}, got {tile}")
    F, C = w.shape[:2]
    a = tile + 2
    g = w.transpose(2, 3, 1, 0)  # (3, 3, C, F) view: g[i, j] is the (C, F) matrix of tap (i, j)
    t = np.empty((a, 3, C, F), dtype=w.dtype)
    _G[tile](list(g), list(t))                      # t[k, j] = Σ_i G[k, i] g[i, j]
    U = np.empty((a, a, C, F), dtype=w.dtype)
    _G[tile](list(t.transpose(1, 0, 2, 3)), list(U.transpose(1, 0, 2, 3)))  # along j
    return U.reshape(a * a, C, F)


def winograd_input_grad_weights(w, tile: int = 2):
    """U for the input gradient: the kernel rotated by 180° with channels swapped."""
    return winograd_weights(np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)), tile)


class WinogradWeights:
    """The transformed kernels of one layer's weights w (F, C, 3, 3), each made when first
    asked for and then kept: ``forward(m)`` ((m+2)², C, F) and ``input_grad(m)``
    ((m+2)², F, C), for the tile sizes m in ``TILES``. A caller whose weights do not change
    (VGG16) keeps one per layer (``winograd_transform``) and hands it to every call; for a
    layer being trained the dispatcher makes one per call, so the input gradient's kernel
    is transformed only in a backward that needs it."""

    def __init__(self, w):
        self.w = w
        self._made = {}

    def _get(self, key, make):
        U = self._made.get(key)
        if U is None:
            U = self._made[key] = make()
        return U

    def forward(self, tile: int = 2):
        return self._get(("forward", tile), lambda: winograd_weights(self.w, tile))

    def input_grad(self, tile: int = 2):
        return self._get(("input_grad", tile), lambda: winograd_input_grad_weights(self.w, tile))

    @property
    def nbytes(self) -> int:
        """Bytes of the transforms made so far."""
        return sum(U.nbytes for U in self._made.values())


def winograd_transform(w) -> WinogradWeights:
    """The (lazily made, kept) transforms of w (F, C, 3, 3), for a caller whose weights do
    not change."""
    return WinogradWeights(w)


# --------------------------------------------------------------------------- tiles

def _input_transform(xb, m, TH, TW, V):
    """V[α·a + b] (TH·TW, C) = (Bᵀ d B)[a, b] for the α×α tiles d of the band xb that
    ``_band_input`` gives (m·TH + 2 padded rows of m·TW + 2 columns, channels-last); tile
    (t, s) starts at row m·t, column m·s. Bᵀ first combines rows (one pass per term over
    every tile row at once), then the same on the columns of those (α, TH, ·, C) sums.

    F(2×2)'s band has its columns dealt out by parity (xb[:, r, i] is padded column
    2i + r): column j of every tile of a row, 2s + j, is then the run xb[:, j % 2, j // 2
    + s], so the column passes read runs of TW·C contiguous floats instead of runs of C
    strided by 2C. The transform of a band (deal included), medians of alternated runs:
    512 tiles of 64 channels 360 µs instead of 460, 256 tiles of 128 channels −26 %, of
    256 channels −17 %, 128 tiles of 512 channels −14 %. F(4×4) keeps the strided runs:
    dealt, it gained at some band shapes and lost at others, and the stylisation nothing
    (paired 1.00–1.02). The four rows (columns) of a tile are two stacked pairs, so that
    ``_bt2`` makes d0 − d2 and d1 − d3 in one call (6 NumPy calls instead of 8, each a GIL
    hand-off on two workers: VGG16 forward paired 0.98 at 256², 90 context switches per
    conv1_2 instead of 147)."""
    a = m + 2
    C = xb.shape[-1]
    if m == 4:
        Q = np.empty((a, TH, xb.shape[1], C), dtype=xb.dtype)
        _bt4([xb[i:i + 4 * TH:4] for i in range(a)], Q)
        _bt4([Q[:, :, j:j + 4 * TW:4] for j in range(a)], V.reshape(a, a, TH, TW, C).swapaxes(0, 1))
        return
    Q = np.empty((a, TH, 2, TW + 1, C), dtype=xb.dtype)

    def rows(i):  # rows (i, i + 1) of every tile, stacked: (2, TH, 2, TW + 1, C)
        return xb[i:i + 2 * TH].reshape(TH, 2, 2, TW + 1, C).swapaxes(0, 1)

    def columns(j):  # columns (j, j + 1) of every tile, stacked: (2, α, TH, TW, C)
        return Q[:, :, :, j:j + TW].transpose(2, 0, 1, 3, 4)

    _bt2(rows(0), rows(2), Q)
    _bt2(columns(0), columns(1), V.reshape(a, a, TH, TW, C).swapaxes(0, 1))


def _output_transform(M, m, TH, TW, y, b, relu=False):
    """y (m·TH, m·TW, F) = Aᵀ M A per tile, + b; M (α², TH·TW, F) (b is added to M in
    place: column 1 of Aᵀ is all ones, so b at position (1, 1) reaches every output).
    Both passes of Aᵀ write contiguous blocks, then one strided copy interleaves the
    tiles' outputs into y (faster than writing y's runs of F floats in every pass).

    ``relu``: that copy is ``np.maximum(·, 0)`` instead (relu_forward's operation, in the
    same pass), and y may be the cropped part of the band (h ≤ m·TH, w ≤ m·TW, F), the
    tiles then interleaved in a scratch first."""
    a = m + 2
    F = M.shape[2]
    Mr = M.reshape(a, a, TH, TW, F)
    if b is not None:
        Mr[1, 1] += b
    Z = np.empty((m, a, TH, TW, F), dtype=M.dtype)
    _AT[m](Mr, Z)                                                 # along ξ: Z[r, ν]
    Y = np.empty((m, m, TH, TW, F), dtype=M.dtype)
    _AT[m](Z.swapaxes(0, 1), Y.swapaxes(0, 1))                    # along ν: Y[r, k]
    if not relu:
        # y[m·t + r, m·s + k] = Y[r, k, t, s]
        y.reshape(TH, m, TW, m, F)[...] = Y.transpose(2, 0, 3, 1, 4)
        return
    whole = y.shape[:2] == (m * TH, m * TW)
    out = y if whole else np.empty((m * TH, m * TW, F), dtype=M.dtype)
    np.maximum(Y.transpose(2, 0, 3, 1, 4), 0, out=out.reshape(TH, m, TW, m, F))
    if not whole:
        y[...] = out[:y.shape[0], :y.shape[1]]


# Tiles per band: (up to this many input channels, tiles), per tile size m (see below).
WINOGRAD_BAND_TILES = {2: ((64, 512), (128, 256), (None, 1024)),
                       4: ((64, 64), (None, 128))}
# Tasks an image makes at least (``parallel.image_bands``; None: MIN_TASKS), per tile size
# m: F(4×4)'s bands are many short passes each (its written-out transforms hold the GIL
# between them), so on two workers two bands of 128 tiles beat four of 64: the
# transformer's residual convs at 64², 4.8 → 3.7–4.1 ms (docs/performance.md).
WINOGRAD_MIN_TASKS = {2: None, 4: 2}


def winograd_band_rows(TH, TW, C, tile: int = 2):
    """Tile rows per task, of the TH × TW tiles of an image with C input channels: a
    band's GEMMs (tiles, C) @ (C, F) must be large enough to run efficiently and its
    transformed input ((m+2)²·tiles·C floats) should stay in cache. WINOGRAD_BAND_TILES
    gives the tiles per band by channel count (a band is at least one row of tiles).

    F(2×2), two ``pmap`` workers (ms per convolution, bands of 256 / 512 / 1024 tiles): 64
    ch, batch 4 at 128²: 38 / 31 / 33; 128 ch at 128²: 18.5 / 22 / 23; 256 ch at 128²: 80 /
    73 / 67.5; 512 ch at 64²: 82 / 72 / 68. F(4×4), one worker (bands of 64 / 128 / 256 /
    512 tiles): 64 ch at 256²: 43 / 50 / 62 / 78; 128 ch at 128²: 24 / 26 / 29 / 27; 256 ch
    at 64²: 18.9 / 18.3 / 19.1 / 18.4; 512 ch at 32²: 20.5 / 19.7 / 20.2 / 20.0. F(4×4)
    from 65 channels takes 128 since two workers gain more than one loses (the
    stylisation, two workers: 256² −9 %, 512² −5 %; one worker +4 %, +7 %)."""
    for up_to, tiles in WINOGRAD_BAND_TILES[tile]:
        if up_to is None or C <= up_to:
            return band_rows(tiles, TW, TH)


def _padded_band(x, n, r0, r1, cols, pad_mode, mask=None, affine=None):
    """Rows [r0, r1) of image n padded by one (channels-last), ``cols`` columns wide: the
    rows and columns past the padded image (tiles over the edge of an image whose size is
    not a multiple of the tile) are zeros — their outputs are cropped. ``mask`` (zero
    padding only): the image rows are multiplied by ``mask > 0`` (x's shape). ``affine``:
    the rows of its output (``padded_rows_cl``)."""
    H = x.shape[2]
    xb = padded_rows_cl(x[n:n + 1], r0, min(r1, H + 2), 1, pad_mode, images(affine, n, n + 1),
                        None if mask is None else mask[n:n + 1])[0]
    if xb.shape[0] == r1 - r0 and xb.shape[1] == cols:
        return xb
    full = np.zeros((r1 - r0, cols, xb.shape[2]), dtype=x.dtype)
    full[:xb.shape[0], :xb.shape[1]] = xb
    return full


def _band_input(x, n, t0, t1, m, TW, pad_mode, mask=None, affine=None):
    """The input band of tile rows [t0, t1) of image n for ``_input_transform``: padded
    rows [m·t0, m·t1 + 2) of m·TW + 2 columns (``_padded_band``), for F(2×2) with its
    columns dealt out by parity, (rows, 2, TW + 1, C). Zero padding without a ``mask`` or
    an ``affine`` deals straight from x, two strided copies in place of the padded copy
    and the deal (a band of 512 tiles of 64 channels: 27 µs instead of 49; VGG16 forward
    on two workers, paired 0.97–1.00 at 256², 0.98 at 1024²; the masked multiplies, dealt
    straight, lost: forward + backward 1.008)."""
    r0, r1 = m * t0, m * t1 + 2
    if m == 4:
        return _padded_band(x, n, r0, r1, 4 * TW + 2, pad_mode, mask, affine)
    R = r1 - r0
    if pad_mode != "zero" or mask is not None or affine is not None:
        xb = _padded_band(x, n, r0, r1, 2 * TW + 2, pad_mode, mask, affine)
        xs = np.empty((R, 2, TW + 1, xb.shape[2]), dtype=xb.dtype)
        xs.transpose(0, 2, 1, 3)[...] = xb.reshape(R, TW + 1, 2, xb.shape[2])
        return xs
    C, H, W = x.shape[1:]
    xs = np.empty((R, 2, TW + 1, C), dtype=x.dtype)
    a = min(max(1 - r0, 0), R)              # band rows [a, b) are image rows r0 + i − 1
    b = max(min(H + 1 - r0, R), a)
    xs[:a] = 0
    xs[b:] = 0
    img = x[n, :, r0 + a - 1:r0 + b - 1].transpose(1, 2, 0)  # (b − a, W, C)
    even, odd = (W + 1) // 2, W // 2        # image columns 0, 2, … and 1, 3, …
    xs[a:b, 1, :even] = img[:, 0::2]        # padded column 2i + 1 is image column 2i
    xs[a:b, 1, even:] = 0
    xs[a:b, 0, 0] = 0                       # padded column 0, the left border
    xs[a:b, 0, 1:odd + 1] = img[:, 1::2]    # padded column 2i is image column 2i − 1
    xs[a:b, 0, odd + 1:] = 0
    return xs


def winograd_conv3x3(x, U, b=None, pad_mode="zero", relu=False, mask=None, affine=None,
                     moments=None):
    """3×3 convolution, stride 1, padding 1 (zero or reflection). x (N, C, H, W), U from
    ``winograd_weights(w, m)`` ((m+2)², C, F), whose size says the tile m. Returns
    (N, F, H, W), channels-last memory. One band of tile rows of one image per task
    (``pmap``). Sizes that are not a multiple of m: the last tiles stick out past the
    edge; they read zeros there, and their outputs are cropped.

    Two elementwise passes run inside the bands, on data still in cache, bit for bit
    equal to the separate passes: ``relu`` returns max(y, 0) (``relu_forward``), and
    ``mask`` (x's shape) convolves x · (mask > 0) instead of x (``relu_backward`` of a
    ReLU whose output is ``mask``: the input gradient of a convolution a ReLU followed).
    ``affine``: an ``affine.ChannelAffine`` of x; the input is its output, mapped as the
    bands are copied (``padded_rows_cl``). ``moments``: a ``moments.BandMoments`` of the
    output, given each block as it is written."""
    if mask is not None and pad_mode != "zero":
        x, mask = x * (mask > 0), None  # reflected borders copy masked pixels: mask first
    N, C, H, W = x.shape
    F = U.shape[2]
    m = winograd_tile(U)
    a = m + 2
    TH, TW = -(-H // m), -(-W // m)
    # relu: the layout of relu_forward's output, compact (cropped tiles written in bands)
    y = np.empty((N, H, W, F) if relu else (N, m * TH, m * TW, F), dtype=x.dtype)

    tasks = image_bands(N, TH, winograd_band_rows(TH, TW, C, m), WINOGRAD_MIN_TASKS[m])
    chunks = channel_chunks(N, TH, TW, C, F, tasks, a, x.itemsize)
    if chunks:
        _by_output_channels(x, U, b, pad_mode, relu, mask, m, TH, TW, y, tasks, chunks, affine,
                            moments)
        return y[:, :H, :W, :].transpose(0, 3, 1, 2)

    def band(task):
        n, t0, t1 = task
        V = np.empty((a * a, (t1 - t0) * TW, C), dtype=x.dtype)
        _input_transform(_band_input(x, n, t0, t1, m, TW, pad_mode, mask, affine), m, t1 - t0, TW, V)
        M = np.matmul(V, U)  # α² GEMMs (T, C) @ (C, F)
        _output_transform(M, m, t1 - t0, TW, y[n, m * t0:m * t1], b, relu)
        if moments is not None:
            moments.add(n, t0, y[n, m * t0:min(m * t1, H), :W])

    pmap(band, tasks)
    return y[:, :H, :W, :].transpose(0, 3, 1, 2)


# Deep layers on small images (VGG16's conv4 at 32², conv5 at 16² for a 256² photo): the
# tile-row bands hold few tiles (64 or 16: an image makes at least MIN_TASKS bands), so
# each band's GEMMs (T, C) @ (C, F) stream the whole (α², C, F) kernel (16 MB at 512
# channels) for a few rows: 43–90 GFLOP/s where 256 tiles reach 130. Such layers split
# their output channels among the tasks instead: every tile of the batch at once against a
# slice of the kernel, which is then read once.
SPLIT_MAX_BAND_TILES = 128          # tile-row bands of fewer tiles than this are split by channels
SPLIT_MIN_CHANNELS = 64             # ... into slices of at least this many output channels
SPLIT_MAX_V_BYTES = 16 * 2**20      # ... when the batch's transformed input is at most this
SPLIT_MIN_KERNEL_BYTES = 4 * 2**20  # ... and the transformed kernel at least this (past L2; the
                                    # transformer's 128-channel F(4×4) kernels, 2.4 MB, gain nothing)


def channel_chunks(N, TH, TW, C, F, tasks, a, itemsize) -> list:
    """Slices [f0, f1) of the F output channels for ``_by_output_channels`` (TH × TW tiles
    per image), or [] when the tile-row ``tasks`` are kept: their bands hold
    SPLIT_MAX_BAND_TILES tiles or more, the batch's α²·N·T·C transformed input would
    exceed SPLIT_MAX_V_BYTES, the α²·C·F kernel is under SPLIT_MIN_KERNEL_BYTES, or F makes
    fewer than two slices of SPLIT_MIN_CHANNELS. As many slices as tasks (at most F /
    SPLIT_MIN_CHANNELS); shapes only (the bits do not depend on the worker count)."""
    band_tiles = min(t1 - t0 for _, t0, t1 in tasks) * TW
    if (band_tiles >= SPLIT_MAX_BAND_TILES or a * a * N * TH * TW * C * itemsize > SPLIT_MAX_V_BYTES
            or a * a * C * F * itemsize < SPLIT_MIN_KERNEL_BYTES):
        return []
    k = min(len(tasks), F // SPLIT_MIN_CHANNELS)
    if k < 2:
        return []
    edges = [F * i // k for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _by_output_channels(x, U, b, pad_mode, relu, mask, m, TH, TW, y, tasks, chunks, affine=None,
                        moments=None):
    """``winograd_conv3x3``'s work, split by output channels: the input transform of every
    tile of the batch, in the tile-row ``tasks``, into one V (α², N·TH·TW, C); then per
    slice [f0, f1) of ``chunks`` the α² GEMMs V @ U[:, :, f0:f1] and the output transform
    into y[..., f0:f1] (every image). Each output is the same sum as in the tile-row path."""
    N, C, H, W = x.shape
    a = m + 2
    T = TH * TW
    V = np.empty((a * a, N * T, C), dtype=x.dtype)

    def transform(task):
        n, t0, t1 = task
        _input_transform(_band_input(x, n, t0, t1, m, TW, pad_mode, mask, affine), m, t1 - t0, TW,
                         V[:, n * T + t0 * TW:n * T + t1 * TW])

    pmap(transform, tasks)

    def channels(chunk):
        f0, f1 = chunk
        M = np.matmul(V, U[:, :, f0:f1])  # α² GEMMs (N·T, C) @ (C, f1 − f0)
        for n in range(N):
            _output_transform(M[:, n * T:(n + 1) * T], m, TH, TW, y[n, ..., f0:f1],
                              None if b is None else b[f0:f1], relu)
            if moments is not None:
                moments.add(n, f0, y[n, :H, :W, f0:f1], c0=f0)

    pmap(channels, chunks)


def winograd_input_grad(dy, U, pad_mode="zero", relu_y=None, w=None):
    """dx (N, C, H, W) of a 3×3, stride-1, padding-1 convolution, from dy (N, F, H, W) and
    U = ``winograd_input_grad_weights(w, m)`` ((m+2)², F, C). Channels-last memory.

    Zero padding: the input gradient of a "same" convolution is the "same" convolution of
    dy with the rotated kernel. Reflection: the gradient of the *padded* input is wanted,
    so that its border can be folded back onto the pixels it copied (``pad2d_backward``);
    that is the full correlation of dy with the rotated kernel. Its interior is the "same"
    convolution above; its one-pixel border comes from dy's edge rows and columns and the
    forward kernel ``w`` (F, C, 3, 3), which reflection needs (``_reflect_fold``).

    ``relu_y``: the output of a ReLU that followed the convolution, dy being the gradient
    at that output; the ReLU's backward, dy · (relu_y > 0), is then taken band by band as
    the bands of dy are read (zero padding)."""
    if pad_mode == "zero":
        return winograd_conv3x3(dy, U, mask=relu_y)
    if w is None:
        raise ValueError("winograd_input_grad: reflection padding needs the forward kernel w")
    if relu_y is not None:
        dy = dy * (relu_y > 0)
    dx = winograd_conv3x3(dy, U)  # the interior of the padded input's gradient
    _reflect_fold(dx.transpose(0, 2, 3, 1), dy.transpose(0, 2, 3, 1), w)
    return dx


def _reflect_fold(dx, dy, w):
    """Add the one-pixel border of the padded input's gradient onto dx, in place, as the
    reflection padding's adjoint folds it (``pad2d_backward``: columns, then rows).
    dx (N, H, W, C): the interior, dxp[1:H+1, 1:W+1]; dy (N, H, W, F); w (F, C, 3, 3).

    The border of dxp[p, q] = Σ_{u,v} dy[p − u, q − v] · w[:, :, u, v] (dy zero outside
    the image) reads dy's edge rows and columns only: row p = 0 takes u = 0 and dy's row
    0, row H + 1 takes u = 2 and row H − 1; column 0 (rows 1 … H) takes v = 0 and dy's
    column 0, column W + 1 takes v = 2 and column W − 1. Twelve (N·W, F) @ (F, C) products
    instead of a Winograd pass over dy padded by one (13 % more tiles at 64², and its
    copies): the transformer's residual convs at 64², batch 4, dx 18.8–19.4 → 16.7 ms
    (zero padding's: 14.2–14.9)."""
    N, H, W, C = dx.shape
    top = np.zeros((N, W + 2, C), dtype=dx.dtype)     # dxp[0, :], padded columns
    bottom = np.zeros((N, W + 2, C), dtype=dx.dtype)  # dxp[H + 1, :]
    left = np.zeros((N, H, C), dtype=dx.dtype)        # dxp[1:H+1, 0]
    right = np.zeros((N, H, C), dtype=dx.dtype)       # dxp[1:H+1, W + 1]
    for k in range(3):  # the kernel's row u = k (top, bottom) or column v = k (left, right)
        top[:, k:k + W] += dy[:, 0] @ w[:, :, 0, k]             # q = j + v
        bottom[:, k:k + W] += dy[:, H - 1] @ w[:, :, 2, k]
        # image row p − 1 = r − 1 + u for dy row r: rows max(0, 1 − u) … H − u of dy land inside
        r0, r1 = max(0, 1 - k), min(H, H + 1 - k)
        left[:, r0 - 1 + k:r1 - 1 + k] += dy[:, r0:r1, 0] @ w[:, :, k, 0]
        right[:, r0 - 1 + k:r1 - 1 + k] += dy[:, r0:r1, W - 1] @ w[:, :, k, 2]
    # columns (every padded row), then rows, as pad2d_backward
    dx[:, :, 1] += left
    dx[:, :, W - 2] += right
    for strip in (top, bottom):
        strip[:, 2] += strip[:, 0]
        strip[:, W - 1] += strip[:, W + 1]
    dx[:, 1] += top[:, 1:W + 1]
    dx[:, H - 2] += bottom[:, 1:W + 1]


# --------------------------------------------------------------------------- weight gradient

def _apply(mat, d, o):
    """o[i] = Σ_j mat[i, j] d[j] for a small constant matrix of ±1 and a few other entries
    (A of F(m×m) for dy's tiles); d and o lists of equally shaped arrays (views)."""
    for i, row in enumerate(mat):
        terms = [(c, d[j]) for j, c in enumerate(row) if c]
        c, t = terms[0]
        if c == 1:
            o[i][...] = t
        else:
            np.multiply(t, c, out=o[i])
        for c, t in terms[1:]:
            if c == 1:
                o[i] += t
            elif c == -1:
                o[i] -= t
            else:
                o[i] += c * t


def _dy_transform(dy, n, t0, t1, m, TW, H, W, dM):
    """dM[α·ξ + ν] (T, F) = (A dY Aᵀ)[ξ, ν] for the m×m tiles dY of dy's image n in tile
    rows [t0, t1) (dy zero past the image), A = Aᵀ's transpose ((m+2) × m): the adjoint of
    the output transform Y = Aᵀ M A."""
    a = m + 2
    F = dy.shape[1]
    TH = t1 - t0
    r0, r1 = m * t0, min(m * t1, H)
    dyb = np.zeros((m * TH, m * TW, F), dtype=dy.dtype)
    dyb[:r1 - r0, :W] = dy[n, :, r0:r1].transpose(1, 2, 0)
    A = MATRICES[m][2].T
    Z = np.empty((a, TH, m * TW, F), dtype=dy.dtype)
    _apply(A, [dyb[r::m] for r in range(m)], list(Z))                          # along rows
    out = dM.reshape(a, a, TH, TW, F)
    _apply(A, [Z[:, :, k::m] for k in range(m)], list(out.transpose(1, 0, 2, 3, 4)))  # columns


def winograd_weight_grad(x, dy, tile: int = 2, pad_mode: str = "zero"):
    """dw (F, C, 3, 3) of a 3×3, stride-1, padding-1 convolution of x (N, C, H, W), from
    dy (N, F, H, W), in the Winograd domain of F(m×m, 3×3), m = ``tile``.

    The forward is, per tile, Y = Aᵀ [Σ_c U_c ⊙ V_c] A with U = G g Gᵀ and V = Bᵀ d B (the
    padded input's (m+2)² window d). Its adjoint in g: dM = A dY Aᵀ per tile,
    dU[ξν] (C, F) = Σ_tiles V[ξν]ᵀ dM[ξν] — (m+2)² GEMMs with K = the tiles —, and
    dg = Gᵀ dU G. The products are (m+2)²/(9m²) of the direct ones (0.44 for F(2×2), 0.25
    for F(4×4)). Tasks are the forward's bands (``pmap``); each returns its dU, summed in
    task order. The input transform V is made again here rather than kept from the
    forward: a training step would hold (m+2)²/m² times each input until its backward."""
    N, C, H, W = x.shape
    F = dy.shape[1]
    m = tile
    a = m + 2
    TH, TW = -(-H // m), -(-W // m)
    tasks = image_bands(N, TH, winograd_band_rows(TH, TW, C, m), WINOGRAD_MIN_TASKS[m])

    def band(task):
        n, t0, t1 = task
        T = (t1 - t0) * TW
        V = np.empty((a * a, T, C), dtype=x.dtype)
        _input_transform(_band_input(x, n, t0, t1, m, TW, pad_mode), m, t1 - t0, TW, V)
        dM = np.empty((a * a, T, F), dtype=dy.dtype)
        _dy_transform(dy, n, t0, t1, m, TW, H, W, dM)
        return np.matmul(V.transpose(0, 2, 1), dM)  # (a², C, F)

    parts = pmap(band, tasks)
    dU = parts[0]
    for part in parts[1:]:
        dU += part
    Gm = MATRICES[m][1]  # (a, 3)
    dg = np.einsum("xi,xycf,yj->fcij", Gm, dU.reshape(a, a, C, F), Gm, optimize=True)
    return dg.astype(dy.dtype, copy=False)
