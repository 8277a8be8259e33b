"""Where the tiles of an exact tiled VGG16 evaluation lie: receptive field, alignment and
each tile's own positions at every layer, read from ``vgg``'s layer table.

Along one image axis of ``n`` pixels, at a layer whose output is downsampled by the factor
``s_l = 2^(pools up to it)`` (``layer_factor``), the whole image has ``n_l = n // s_l``
positions (the pools floor). A tile owns the pixels ``[y0, y1)`` and, at every layer,
the positions

    own_l = [y0 // s_l, y1 // s_l)                 (the last tile ends at n // s_l = n_l)

so the tiles' own positions partition every layer's grid. The network runs on a crop
``[a, b)`` of the image around the tile:

    S = layer_factor(deepest)             the total stride: a must be a multiple of S, so
                                          every 2×2 pool of the crop pairs the positions the
                                          whole image's pool pairs
    R = Σ_{convs ≤ deepest} s_conv · r    the receptive-field radius in pixels (r = 1: the
                                          3×3 convolutions; 58 for relu5_1)
    a = max(0, S · ⌊(S·⌊y0/S⌋ − R) / S⌋)   b = min(n, y1 + R)

The cone of own_l (everything own_l depends on, followed back through the convolutions'
±1 and the pools' 2×) is ``[s_l·o0 − R_l, s_l·o1 + R_l)`` pixels with R_l ≤ R, and
``s_l·o0 ≥ S·⌊y0/S⌋``, ``s_l·o1 ≤ y1``: the crop holds the cone. Where the crop meets the
image border (a = 0 or b = n) its zero padding is the image's; elsewhere the wrong
values the crop's own padding makes stay outside the cone. ``exact_range`` is the
independent twin of this formula: it walks the layers forward from a crop and returns the
positions whose values equal the whole image's (the tests check that own ⊆ exact).

    for t in tiles(H, W, 256, ["relu1_1", "relu4_2"]):
        crop = img[t.rows.crop, t.cols.crop]          # t.crop: (row slice, column slice)
        feats = net.forward(preprocess(crop), ...)
        own = feats["relu4_2"][(..., *t.local("relu4_2"))]   # this tile's positions only
        # whole["relu4_2"][(..., *t.whole("relu4_2"))] is the same array
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

from .vgg import LAYER_NAMES, check_layer_names, expected_shapes

MIN_TILE = 16  # the total stride of relu5_x: a smaller tile's halo costs far more than the tile


def layer_factor(name: str) -> int:
    """``s_l``: how many input pixels one position of the layer's output steps over,
    ``2^(pools up to and including it)`` (conv1_1: 1, relu2_1: 2, pool4 and relu5_1: 16)."""
    check_layer_names([name])
    return 2 ** sum(1 for n in LAYER_NAMES[:LAYER_NAMES.index(name) + 1] if n.startswith("pool"))


def deepest(layers) -> str:
    """The last of ``layers`` in the network's order."""
    layers = list(layers)
    check_layer_names(layers)
    if not layers:
        raise ValueError("no layers given")
    return max(layers, key=LAYER_NAMES.index)


def receptive_radius(upto: str) -> int:
    """``R``: Σ over the convolutions up to ``upto`` of ``layer_factor(conv) · (KH // 2)``,
    the farthest an output of ``upto`` reaches from its own pixels (relu5_1: 58)."""
    check_layer_names([upto])
    shapes = expected_shapes()
    return sum(layer_factor(n) * (shapes[n][0][2] // 2)
               for n in LAYER_NAMES[:LAYER_NAMES.index(upto) + 1] if n.startswith("conv"))


def check_tile(tile) -> int | None:
    """``None`` (untiled) or a whole number of pixels ≥ ``MIN_TILE``; ValueError otherwise."""
    if tile is None:
        return None
    try:
        if isinstance(tile, bool):
            raise TypeError
        tile = operator.index(tile)
    except TypeError:
        raise ValueError(f"tile must be a whole number of pixels ≥ {MIN_TILE} or None, "
                         f"got {tile!r}") from None
    if tile < MIN_TILE:
        raise ValueError(f"tile must be at least {MIN_TILE} pixels, got {tile}")
    return tile


@dataclass(frozen=True)
class Span:
    """One tile along one axis: its own pixels ``[start, stop)``, the crop ``[crop_start,
    crop_stop)`` the network runs on, and ``own[layer] = (o0, o1)``, its own positions of
    each layer in the whole image's grid."""

    start: int
    stop: int
    crop_start: int
    crop_stop: int
    own: dict

    @property
    def crop(self) -> slice:
        return slice(self.crop_start, self.crop_stop)

    def whole(self, layer: str) -> slice:
        """The own positions of ``layer`` in the whole image's grid."""
        o0, o1 = self.own[layer]
        return slice(o0, o1)

    def local(self, layer: str) -> slice:
        """The own positions of ``layer`` in the crop's grid (which starts at
        ``crop_start / s_l``, an integer by the alignment)."""
        o0, o1 = self.own[layer]
        off = self.crop_start // layer_factor(layer)
        return slice(o0 - off, o1 - off)


def spans(n: int, tile: int, layers) -> list:
    """The ``Span`` s of an axis of ``n`` pixels cut into tiles of ``tile`` pixels (the
    last one shorter), for a network read at ``layers``; see the module docstring."""
    tile = check_tile(tile)
    if tile is None:
        raise ValueError("spans needs a tile size")
    last = deepest(layers)
    S, R = layer_factor(last), receptive_radius(last)
    factors = {l: layer_factor(l) for l in layers}
    out = []
    for y0 in range(0, n, tile):
        y1 = min(y0 + tile, n)
        a = max(0, (y0 // S * S - R) // S * S)
        b = min(n, y1 + R)
        out.append(Span(y0, y1, a, b, {l: (y0 // s, y1 // s) for l, s in factors.items()}))
    return out


@dataclass(frozen=True)
class Tile:
    """A 2-D tile: a row ``Span`` and a column ``Span``."""

    rows: Span
    cols: Span

    @property
    def crop(self) -> tuple:
        """``(row slice, column slice)`` of the crop in image pixels."""
        return self.rows.crop, self.cols.crop

    def owns(self, layer: str) -> bool:
        """Whether the tile owns at least one position of ``layer``."""
        (r0, r1), (c0, c1) = self.rows.own[layer], self.cols.own[layer]
        return r0 < r1 and c0 < c1

    def whole(self, layer: str) -> tuple:
        """``(rows, cols)`` slices of the own positions in the whole image's grid."""
        return self.rows.whole(layer), self.cols.whole(layer)

    def local(self, layer: str) -> tuple:
        """``(rows, cols)`` slices of the own positions in the crop's grid."""
        return self.rows.local(layer), self.cols.local(layer)

    @property
    def crop_shape(self) -> tuple:
        return (self.rows.crop_stop - self.rows.crop_start, self.cols.crop_stop - self.cols.crop_start)


def tiles(H: int, W: int, tile: int, layers) -> list:
    """The tiles of an H × W image, row-major: every row span with every column span."""
    rows, cols = spans(H, tile, layers), spans(W, tile, layers)
    return [Tile(r, c) for r in rows for c in cols]


def tile_count(H: int, W: int, tile: int) -> int:
    """How many tiles of side ``tile`` cut an H × W image: ``⌈H/T⌉ · ⌈W/T⌉``."""
    tile = check_tile(tile)
    return -(-H // tile) * -(-W // tile)


def tile_for_workers(H: int, W: int, workers: int) -> int:
    """A tile side for an evaluation spread over ``workers``: the largest
    ``T = max(MIN_TILE, ⌈max(H, W) / k⌉)``, k = 1, 2, …, that cuts the image into at least
    ``workers`` tiles (equal tiles along the longer side, as few as keep every worker
    busy: each tile costs its halo once more). An image too small for that many tiles of
    ``MIN_TILE`` gets ``MIN_TILE``; one that needs only one tile gets its longer side."""
    longer = max(H, W)
    k = 1
    while True:
        T = max(MIN_TILE, -(-longer // k))
        if T == MIN_TILE or tile_count(H, W, T) >= workers:
            return T
        k += 1


def max_crop_side(tile: int, layers) -> int:
    """An upper bound on a crop's side: ``tile + 2R + S − 1`` (the start rounded down to a
    multiple of S loses at most S − 1 pixels), for memory estimates."""
    last = deepest(layers)
    return check_tile(tile) + 2 * receptive_radius(last) + layer_factor(last) - 1


def exact_range(a: int, b: int, n: int, upto: str) -> dict:
    """``{layer: (lo, hi)}`` up to ``upto``: the positions (whole-image grid) at which a
    VGG16 run on the crop ``[a, b)`` of an axis of ``n`` pixels computes the whole image's
    values, walking forward from the crop's pixels (all exact):

    * a 3×3 convolution (and the ReLU after it) loses one position at each end of the
      range, except at an end that is the image's border (there the crop's zero padding
      is the image's);
    * a 2×2 pool keeps the windows whose two inputs are both exact, ``[⌈lo/2⌉, ⌊hi/2⌋)``,
      if the crop's windows are the image's (the crop starts at an even position of the
      pool's input); otherwise nothing.

    An empty range has ``lo ≥ hi``. This is the slow twin of ``spans``' formula.
    """
    check_layer_names([upto])
    shapes = expected_shapes()
    lo, hi, size, off, aligned = a, b, n, a, True  # off: the crop's first position, whole grid
    out = {}
    for name in LAYER_NAMES[:LAYER_NAMES.index(upto) + 1]:
        if name.startswith("conv"):
            r = shapes[name][0][2] // 2
            lo = lo if lo == 0 else lo + r
            hi = hi if hi == size else hi - r
        elif name.startswith("pool"):
            aligned = aligned and off % 2 == 0
            off, size = off // 2, size // 2
            lo, hi = -(-lo // 2), hi // 2
        out[name] = (lo, hi) if aligned else (0, 0)
    return out
