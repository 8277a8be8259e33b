"""layers/affine.py: a per-channel map max(x·a + b, 0) left for its consumer. Applied in
the padded band copies of the convolutions (``padded_rows_cl``, ``replicate_rows_cl``) it
must give the very bits of the map made first and then consumed: every CPU convolution
path, both paddings, several images and bands, and the fold of the up blocks."""
import numpy as np
import pytest

from minnst import parallel
from minnst.layers.affine import ChannelAffine, apply_rows, materialize
from minnst.layers.conv import conv2d_forward
from minnst.layers.padding import padded_rows_cl
from minnst.layers.upconv import replicate_rows_cl, upconv2d_forward


def channels_last(x):
    """x as the layers hand it on: an NCHW view of channels-last memory."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def random_affine(rng, shape, relu=True, dtype=np.float64):
    N, C = shape[:2]
    x = channels_last(rng.standard_normal(shape).astype(dtype))
    a = rng.uniform(0.5, 2, (N, C)).astype(dtype)
    b = rng.standard_normal((N, C)).astype(dtype)
    return ChannelAffine(x, a, b, relu)


@pytest.mark.parametrize("relu", [False, True])
def test_apply_is_the_formula(rng, relu):
    """apply() against the formula written with broadcasting, bit for bit (the same
    multiply, then add, then maximum), and with ``add`` the residual sum after them."""
    f = random_affine(rng, (2, 5, 7, 9), relu)
    want = f.x * f.a[:, :, None, None] + f.b[:, :, None, None]
    if relu:
        want = np.maximum(want, 0)
    assert np.array_equal(f.apply(), want)
    extra = rng.standard_normal(f.x.shape)
    assert np.array_equal(f.apply(add=extra), want + extra)
    assert materialize(f.x) is f.x


def test_apply_rows_on_a_strided_block(rng):
    """A block whose rows do not merge (the interior of a padded band) gets the same
    values as a contiguous copy of it."""
    band = rng.standard_normal((1, 4, 9, 3))
    a, b = rng.standard_normal((1, 3)), rng.standard_normal((1, 3))
    inner = band[:, :, 1:8]
    want = np.maximum(inner * a[:, None, None] + b[:, None, None], 0)
    apply_rows(inner, a, b, True)
    assert np.array_equal(inner, want)


@pytest.mark.parametrize("mode", ["zero", "reflect"])
@pytest.mark.parametrize("pad", [1, 3])
def test_padded_rows_of_the_map_are_the_rows_of_its_output(rng, mode, pad):
    f = random_affine(rng, (2, 3, 6, 5))
    y = f.apply()
    for r0 in range(0, 6 + 2 * pad):
        for r1 in range(r0 + 1, 6 + 2 * pad + 1):
            got = padded_rows_cl(f.x, r0, r1, pad, mode, affine=f)
            assert np.array_equal(got, padded_rows_cl(y, r0, r1, pad, mode)), (r0, r1)


def test_replicated_rows_of_the_map_are_the_rows_of_its_output(rng):
    f = random_affine(rng, (2, 3, 4, 5))
    y = f.apply()
    for r0 in range(6):
        for r1 in range(r0 + 1, 7):
            assert np.array_equal(replicate_rows_cl(f.x, r0, r1, f), replicate_rows_cl(y, r0, r1))


CASES = [  # method, C, F, kernel, stride, pad
    ("im2col", 3, 4, 3, 1, 1), ("im2col", 5, 4, 3, 2, 1), ("shifted", 12, 6, 3, 1, 1),
    ("winograd", 6, 5, 3, 1, 1), ("winograd4", 6, 5, 3, 1, 1), ("thin_input", 3, 8, 5, 1, 2),
    ("thin_output", 8, 3, 5, 1, 2), ("shifted", 3, 8, 3, 1, 1)]


@pytest.mark.parametrize("method, C, F, k, stride, pad", CASES)
@pytest.mark.parametrize("mode", ["zero", "reflect"])
@pytest.mark.parametrize("workers", [1, 2])
def test_convolution_of_the_map_is_the_convolution_of_its_output(rng, method, C, F, k, stride,
                                                                  pad, mode, workers):
    """Every CPU path, float32: the same bits as convolving the applied map, on one worker
    and on two; with ``keep_input`` the map is made first and kept in the cache."""
    f = random_affine(rng, (2, C, 13, 11), dtype=np.float32)
    w = rng.standard_normal((F, C, k, k)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    with parallel.workers(workers):
        want = conv2d_forward(f.apply(), w, b, stride, pad, mode, method=method, keep_input=False)[0]
        got = conv2d_forward(f.x, w, b, stride, pad, mode, method=method, keep_input=False, affine=f)[0]
        kept, cache = conv2d_forward(f.x, w, b, stride, pad, mode, method=method, affine=f)
    assert np.array_equal(got, want)
    assert np.array_equal(kept, want) and np.array_equal(cache.x, f.apply())


def test_convolution_rejects_the_map_of_another_input(rng):
    f = random_affine(rng, (1, 3, 5, 5))
    w = rng.standard_normal((2, 3, 3, 3))
    with pytest.raises(ValueError, match="ChannelAffine"):
        conv2d_forward(f.x.copy(), w, None, 1, 1, affine=f)


@pytest.mark.parametrize("workers", [1, 2])
def test_upconv_of_the_map_is_the_upconv_of_its_output(rng, workers):
    f = random_affine(rng, (2, 6, 7, 5), dtype=np.float32)
    w = rng.standard_normal((4, 6, 3, 3)).astype(np.float32)
    with parallel.workers(workers):
        want = upconv2d_forward(f.apply(), w, None, keep_input=False)[0]
        got = upconv2d_forward(f.x, w, None, keep_input=False, affine=f)[0]
    assert np.array_equal(got, want)
