"""A per-channel affine map, optionally followed by a ReLU, left for its consumer to apply.

    y[n, c] = max(x[n, c]·a[n, c] + b[n, c], 0)      (or without the max)

is what an instance norm and the ReLU after it compute, once the norm's statistics are
known: ``a = γ/σ``, ``b = β − μ·a``. Applied as a pass of its own it reads x and writes y
(three passes of NumPy: multiply, add, maximum). In inference the next layer is most often
a convolution, whose CPU paths all start by copying a band of input rows into a padded
buffer (``padding.padded_rows_cl``, ``upconv.replicate_rows_cl``): ``ChannelAffine``
carries x, a, b and the ReLU to that copy, which applies them to the band while it is in
cache, and y is never made. ``apply`` makes it for any other consumer (a residual sum: with
``add``, in the same pass).

The band's values are those of the pass, bit for bit: the same three operations on the
same floats, in the same order. Where a padded band's border copies image pixels
(reflection, edge replication) it copies the mapped ones; zero padding stays zero.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..parallel import image_bands, pmap

APPLY_BAND_BYTES = 1 << 20  # ``apply``'s bands of rows stay in cache across its passes


class ChannelAffine(NamedTuple):
    """``max(x·a + b, 0)`` (``relu``) or ``x·a + b``, not yet computed. x (N, C, H, W) a
    NumPy array (any memory order); a, b (N, C) of x's dtype."""
    x: object
    a: object
    b: object
    relu: bool

    def images(self, n0: int, n1: int) -> "ChannelAffine":
        """The map of images n0 … n1 − 1."""
        return ChannelAffine(self.x[n0:n1], self.a[n0:n1], self.b[n0:n1], self.relu)

    def apply(self, add=None):
        """y (N, C, H, W), channels-last memory; ``add`` (x's shape): y + add, in the same
        pass. In bands of rows (``pmap`` tasks)."""
        x = self.x
        N, C, H, W = x.shape
        y = np.empty((N, H, W, C), dtype=x.dtype)
        xt = x.transpose(0, 2, 3, 1)
        at = None if add is None else add.transpose(0, 2, 3, 1)
        rows = max(1, APPLY_BAND_BYTES // max(1, W * C * x.itemsize))

        def band(task):
            n, r0, r1 = task
            yb = y[n:n + 1, r0:r1]
            apply_rows(yb, self.a[n:n + 1], self.b[n:n + 1], self.relu, src=xt[n:n + 1, r0:r1])
            if at is not None:
                yb += at[n:n + 1, r0:r1]

        pmap(band, image_bands(N, H, rows))
        return y.transpose(0, 3, 1, 2)


def apply_rows(v, a, b, relu: bool, src=None):
    """In place on a channels-last block v (n, R, W, C): v = max(v·a + b, 0) (or v·a + b),
    a, b (n, C); with ``src`` (v's shape), v = max(src·a + b, 0), the product written
    straight into v (one pass fewer than copying src first). The passes run along rows of
    W·C floats with a, b tiled to that length when the last two axes merge (NumPy's
    broadcasting of a (C,) vector runs one inner loop of C floats per pixel)."""
    n, R, W, C = v.shape
    src = v if src is None else src
    if all(u.strides[3] == u.itemsize and u.strides[2] == C * u.itemsize for u in (v, src)):
        v, src = v.reshape(n, R, W * C), src.reshape(n, R, W * C)  # views: the merge was checked
        a, b = np.tile(a, (1, W)), np.tile(b, (1, W))
    a, b = a.reshape(n, 1, -1), b.reshape(n, 1, -1)
    if v.ndim == 4:
        a, b = a[:, :, None], b[:, :, None]
    np.multiply(src, a, out=v)
    v += b
    if relu:
        np.maximum(v, 0, out=v)


def taken_by(op: str, x, affine, in_bands: bool):
    """``(x, affine)`` as an op that may take ``affine`` (a ``ChannelAffine`` of x, or
    None) sees them: unchanged when ``in_bands`` (the op maps its input band by band),
    else ``(affine.apply(), None)``. A map of another array is a ValueError."""
    if affine is None:
        return x, None
    if affine.x is not x:
        raise ValueError(f"{op}: the ChannelAffine must map this input")
    return (x, affine) if in_bands else (affine.apply(), None)


def images(affine, n0: int, n1: int):
    """``affine.images(n0, n1)``, or None for None (the paths' argument when there is no map)."""
    return None if affine is None else affine.images(n0, n1)


def materialize(x):
    """x itself, or a ``ChannelAffine``'s output."""
    return x.apply() if isinstance(x, ChannelAffine) else x
