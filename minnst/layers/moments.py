"""Per-image, per-channel mean and variance of an array, gathered from the blocks a layer
writes it in, while each block is in cache.

An instance norm needs μ and σ² of its input over (H, W); in inference that input is a
convolution's output, which the convolution writes band by band (``pmap`` tasks). A
``BandMoments`` handed to the convolution takes each block as it is finished: its count
m_k, its mean μ_k and its sum of squared deviations M2_k = Σ(x − μ_k)², two passes over data
still in cache. They combine exactly (Chan, Golub & LeVeque 1979):

    m = Σ m_k,   μ = Σ m_k μ_k / m,   M2 = Σ M2_k + Σ m_k (μ_k − μ)²,   σ² = M2 / m

(float32 sums inside a block, as the norm's own passes; the combination in float64, in
the order of the blocks' keys, so the result does not depend on which thread wrote what).
The norm then needs no pass of its own over its input.
"""
from __future__ import annotations

import numpy as np


class BandMoments:
    """Moments of an (N, C, H, W) array from its blocks: ``add`` each block once (any
    thread), then ``moments(shape)``."""

    def __init__(self):
        self._parts = {}  # (n, key) -> (c0, c1, count, mean (c,), M2 (c,)) float64

    def add(self, n: int, key, block, c0: int = 0):
        """Block (R, W', c) of image n, channels-last, holding channels c0 … c0 + c − 1;
        ``key`` (sortable, unique per image) orders the combination."""
        R, Wb, c = block.shape
        m = R * Wb
        if m == 0:
            return
        s = np.einsum("lc->c", block.reshape(m, c)) if block.flags.c_contiguous else np.einsum("rwc->c", block)
        mean = s / m
        d = np.subtract(block, mean.astype(block.dtype))
        M2 = np.einsum("rwc,rwc->c", d, d)
        self._parts[(n, key)] = (c0, c0 + c, m, mean.astype(np.float64), M2.astype(np.float64))

    def moments(self, shape):
        """``(mean, var)`` (N, C) float64 of the array of ``shape`` (N, C, H, W), or None
        when the blocks do not cover every pixel of every channel exactly once (a path
        that does not report them)."""
        N, C, H, W = shape
        mean = np.zeros((N, C))
        M2 = np.zeros((N, C))
        count = np.zeros((N, C))
        for (n, _), (c0, c1, m, mu, m2) in sorted(self._parts.items(), key=lambda kv: kv[0]):
            if n >= N or c1 > C:
                return None
            tot = count[n, c0:c1] + m
            delta = mu - mean[n, c0:c1]
            M2[n, c0:c1] += m2 + delta * delta * count[n, c0:c1] * m / tot
            mean[n, c0:c1] += delta * m / tot
            count[n, c0:c1] = tot
        if not np.all(count == H * W):
            return None
        return mean, M2 / count
