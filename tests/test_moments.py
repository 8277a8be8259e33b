"""layers/moments.py: per-channel mean and variance gathered from the blocks a layer writes
(Chan et al.'s combination) against NumPy's mean and var of the whole array, in float64;
and every CPU convolution path that reports its output blocks reports each pixel once."""
import numpy as np
import pytest

from minnst import parallel
from minnst.layers import winograd as wg
from minnst.layers.conv import conv2d_forward
from minnst.layers.moments import BandMoments
from minnst.layers.normalization import instance_norm_affine
from minnst.layers.upconv import upconv2d_forward


def reference(y):
    return y.mean(axis=(2, 3)), y.var(axis=(2, 3))


def check(bm, y, tol=1e-12):
    got = bm.moments(y.shape)
    assert got is not None
    mean, var = reference(y)
    assert np.abs(got[0] - mean).max() < tol * (1 + np.abs(mean).max())
    assert np.abs(got[1] - var).max() < tol * var.max()


def test_blocks_of_rows_and_channels_combine_exactly(rng):
    """Uneven bands of rows and slices of channels, added in a shuffled order: the
    moments of the whole (the data far from zero mean, where a one-pass E[x²] − μ²
    would lose digits), and the same bits whatever the order of the adds."""
    y = rng.standard_normal((2, 6, 11, 7)) * 3 + 100
    yl = y.transpose(0, 2, 3, 1)
    blocks = [(n, (r0, c0), yl[n, r0:r1, :, c0:c1], c0)
              for n in range(2) for r0, r1 in ((0, 1), (1, 5), (5, 11)) for c0, c1 in ((0, 4), (4, 6))]
    results = []
    for order in (range(len(blocks)), rng.permutation(len(blocks))):
        bm = BandMoments()
        for i in order:
            n, key, block, c0 = blocks[i]
            bm.add(n, key, block, c0)
        check(bm, y)
        results.append(bm.moments(y.shape))
    assert all(np.array_equal(a, b) for a, b in zip(*results))


def test_missing_or_foreign_blocks_give_none(rng):
    y = rng.standard_normal((1, 3, 4, 5)).transpose(0, 2, 3, 1)
    bm = BandMoments()
    bm.add(0, 0, y[0, :2])
    assert bm.moments((1, 3, 4, 5)) is None      # rows 2, 3 never came
    bm.add(0, 2, y[0, 2:])
    assert bm.moments((1, 3, 4, 5)) is not None
    assert bm.moments((1, 2, 4, 5)) is None      # channels past the array's


CASES = [  # method, C, F, kernel, stride, pad, relu
    ("im2col", 3, 4, 3, 2, 1, False), ("shifted", 12, 6, 3, 1, 1, False), ("shifted", 12, 6, 3, 1, 1, True),
    ("winograd", 6, 5, 3, 1, 1, False), ("winograd4", 6, 5, 3, 1, 1, True), ("thin_input", 3, 8, 5, 1, 2, False)]


@pytest.mark.parametrize("method, C, F, k, stride, pad, relu", CASES)
@pytest.mark.parametrize("workers", [1, 2])
def test_convolutions_report_each_output_pixel_once(rng, method, C, F, k, stride, pad, relu, workers):
    """Sizes that are not multiples of the Winograd tiles (cropped tiles must not count),
    two images, one and two workers."""
    x = rng.standard_normal((2, C, 13, 11))
    w = rng.standard_normal((F, C, k, k))
    bm = BandMoments()
    with parallel.workers(workers):
        y = conv2d_forward(x, w, None, stride, pad, "reflect", keep_input=False, method=method,
                           relu=relu, moments=bm)[0]
    check(bm, y)


def test_channel_split_winograd_reports_its_slices(rng, monkeypatch):
    monkeypatch.setattr(wg, "SPLIT_MIN_CHANNELS", 2)
    monkeypatch.setattr(wg, "SPLIT_MIN_KERNEL_BYTES", 0)
    x = rng.standard_normal((2, 5, 9, 11))
    w = rng.standard_normal((7, 5, 3, 3))
    bm = BandMoments()
    y = conv2d_forward(x, w, None, 1, 1, "zero", keep_input=False, method="winograd4", moments=bm)[0]
    assert {c0 for (c0, *_rest) in bm._parts.values()} != {0}  # the split ran
    check(bm, y)


def test_thin_output_reports_nothing_and_the_norm_falls_back(rng):
    """The one path without reports: the norm then computes its statistics itself."""
    x = rng.standard_normal((1, 8, 9, 9))
    w = rng.standard_normal((3, 8, 5, 5))
    bm = BandMoments()
    y = conv2d_forward(x, w, None, 1, 2, "zero", keep_input=False, method="thin_output", moments=bm)[0]
    assert bm.moments(y.shape) is None
    with_bm = instance_norm_affine(y, None, None, moments=bm)
    plain = instance_norm_affine(y, None, None)
    assert np.array_equal(with_bm.a, plain.a) and np.array_equal(with_bm.b, plain.b)


def test_upconv_reports_each_output_pixel_once(rng):
    x = rng.standard_normal((2, 4, 5, 7))
    w = rng.standard_normal((3, 4, 3, 3))
    bm = BandMoments()
    y = upconv2d_forward(x, w, None, keep_input=False, moments=bm)[0]
    check(bm, y)


def test_norm_from_gathered_moments_is_the_norm(rng):
    """``instance_norm_affine`` with the convolution's moments gives the same map as
    with its own passes, to float64 rounding."""
    x = rng.standard_normal((2, 6, 10, 9))
    w = rng.standard_normal((5, 6, 3, 3))
    g, b = rng.standard_normal(5), rng.standard_normal(5)
    bm = BandMoments()
    y = conv2d_forward(x, w, None, 1, 1, "reflect", keep_input=False, method="winograd", moments=bm)[0]
    got = instance_norm_affine(y, g, b, relu=True, moments=bm).apply()
    want = instance_norm_affine(y, g, b, relu=True).apply()
    assert np.abs(got - want).max() < 1e-12 * np.abs(want).max()
