"""Convolution and transposed convolution: the fast paths (channels-last shifted GEMM,
im2col + GEMM) against the naive loop twin, and every gradient against central finite
differences in float64."""
import numpy as np
import pytest

from minnst.gradcheck import eval_numerical_gradient_array, rel_error
from minnst.layers import conv as convmod
from minnst.layers.conv import (Conv2d, ConvTranspose2d, conv2d_backward, conv2d_forward,
                                conv2d_naive, conv_transpose2d_backward, conv_transpose2d_forward)
from minnst.layers.padding import pad2d, pad2d_backward

# (N, C, H, W, F, K, stride, pad, mode): odd sizes, non-square, both methods, both paddings
CASES = [
    (2, 3, 7, 6, 4, 3, 1, 1, "zero"),       # VGG's first layer (3 channels)
    (2, 17, 7, 6, 5, 3, 1, 1, "zero"),
    (1, 16, 6, 9, 3, 3, 1, 2, "reflect"),   # reflection, pad 2
    (2, 16, 8, 7, 3, 5, 2, 2, "reflect"),   # stride 2 -> im2col
    (1, 3, 9, 10, 2, 9, 1, 4, "reflect"),   # the transformer's 9×9 input layer
    (2, 18, 5, 5, 4, 1, 1, 0, "zero"),      # 1×1
    (1, 4, 7, 7, 3, 3, 2, 1, "zero"),       # stride 2, odd size
    (1, 20, 5, 6, 3, 3, 1, 0, "zero"),      # no padding (valid conv)
]


@pytest.fixture(params=["auto", "im2col"])
def method(request, monkeypatch):
    """Run each case on the CPU's choice (shifted GEMM for stride 1) and forced through
    im2col, the path the GPU takes."""
    if request.param == "im2col":
        monkeypatch.setattr(convmod, "_use_shifted", lambda x, stride: False)
    return request.param


def _ids(case):
    N, C, H, W, F, K, s, p, m = case
    return f"N{N}C{C}_{H}x{W}_F{F}k{K}s{s}p{p}{m[0]}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_conv2d_forward_matches_naive(rng, case, method):
    N, C, H, W, F, K, s, p, mode = case
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, K, K))
    b = rng.standard_normal(F)
    y, cache = conv2d_forward(x, w, b, s, p, mode)
    expected = (convmod._thin_method(C, F, K, K) or "shifted") if method == "auto" and s == 1 else "im2col"
    assert cache.method == expected
    assert rel_error(y, conv2d_naive(x, w, b, s, p, mode)) < 1e-10


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_conv2d_gradients(rng, case, method):
    N, C, H, W, F, K, s, p, mode = case
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, K, K))
    b = rng.standard_normal(F)
    y, cache = conv2d_forward(x, w, b, s, p, mode)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, cache)
    # a linear map: central differences are exact up to rounding, so h can be large
    h = 1e-2
    ndx = eval_numerical_gradient_array(lambda z: conv2d_forward(z, w, b, s, p, mode)[0], x, dy, h)
    ndw = eval_numerical_gradient_array(lambda z: conv2d_forward(x, z, b, s, p, mode)[0], w, dy, h)
    ndb = eval_numerical_gradient_array(lambda z: conv2d_forward(x, w, z, s, p, mode)[0], b, dy, h)
    assert rel_error(dx, ndx) < 1e-6
    assert rel_error(dw, ndw) < 1e-6
    assert rel_error(db, ndb) < 1e-6


def test_frozen_cache_gives_input_gradient_only(rng):
    x = rng.standard_normal((1, 16, 5, 5))
    w = rng.standard_normal((4, 16, 3, 3))
    y, cache = conv2d_forward(x, w, None, 1, 1, keep_input=False)
    assert cache.x is None
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, cache)
    assert dw is None and db is None
    _, full = conv2d_forward(x, w, None, 1, 1)
    assert rel_error(dx, conv2d_backward(dy, full)[0]) < 1e-12


@pytest.mark.parametrize("C", [3, 16])
def test_banding_does_not_change_results(rng, monkeypatch, C, method):
    """Tiny band limits force many bands (im2col) / BLAS calls (shifted)."""
    x = rng.standard_normal((2, C, 9, 7))
    w = rng.standard_normal((5, C, 3, 3))
    b = rng.standard_normal(5)
    y0, c0 = conv2d_forward(x, w, b, 1, 1)
    dy = rng.standard_normal(y0.shape)
    g0 = conv2d_backward(dy, c0)
    monkeypatch.setattr(convmod, "MAX_TEMP_BYTES", 1)   # im2col: one output row per band
    monkeypatch.setattr(convmod, "BAND_BYTES", 1)       # shifted: one output row per image band
    monkeypatch.setattr(convmod, "_band_rows", lambda C, F: 7)  # BLAS calls of 7 rows
    y1, c1 = conv2d_forward(x, w, b, 1, 1)
    g1 = conv2d_backward(dy, c1)
    assert rel_error(y0, y1) < 1e-12
    for a, b_ in zip(g0, g1):
        assert rel_error(a, b_) < 1e-12


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_temporaries_do_not_grow_with_the_image(monkeypatch, method, mode):
    """With 2 MB bands, a conv on a 32 MB image allocates little beyond its result."""
    import tracemalloc

    monkeypatch.setattr(convmod, "MAX_TEMP_BYTES", 2 * 2**20)
    monkeypatch.setattr(convmod, "BAND_BYTES", 2 * 2**20)
    x = np.ones((1, 8, 1024, 1024), np.float32)
    w = np.ones((8, 8, 3, 3), np.float32)
    out_bytes = 8 * 1024 * 1026 * 4  # the result (with its two scratch columns per row)
    tracemalloc.start()
    y, cache = conv2d_forward(x, w, None, 1, 1, mode)
    fwd_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    dx, dw, _ = conv2d_backward(y, cache)
    bwd_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert fwd_peak < out_bytes + 16 * 2**20
    # the backward holds y (its input) and builds dx of the padded input's size
    assert bwd_peak < 2 * out_bytes + 8 * 1026 * 1026 * 4 + 16 * 2**20


def test_im2col_band_stays_under_memory_cap():
    # a 4096² image with 64 channels and a 3×3 kernel: the full im2col matrix is 38 GB
    rows = convmod._row_bands(1, 4096, 4096, 64 * 9, 4)
    biggest = max(i1 - i0 for i0, i1 in rows) * 4096 * 64 * 9 * 4
    assert biggest <= convmod.MAX_TEMP_BYTES


def test_float32_runs_and_keeps_dtype(rng):
    for C in (3, 16):
        x = rng.standard_normal((1, C, 6, 5)).astype(np.float32)
        w = rng.standard_normal((4, C, 3, 3)).astype(np.float32)
        b = rng.standard_normal(4).astype(np.float32)
        y, cache = conv2d_forward(x, w, b, 1, 1)
        assert y.dtype == np.float32
        ref = conv2d_naive(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), 1, 1)
        assert np.max(np.abs(y - ref)) < 1e-4
        dx, dw, db = conv2d_backward(np.ones(y.shape, np.float32), cache)
        assert dx.dtype == dw.dtype == db.dtype == np.float32


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_padding_backward_is_the_adjoint(rng, mode):
    x = rng.standard_normal((2, 3, 5, 4))
    g = rng.standard_normal((2, 3, 9, 8))
    lhs = np.sum(pad2d(x, 2, mode) * g)
    rhs = np.sum(x * pad2d_backward(g, 2, mode))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    if mode == "reflect":
        assert np.allclose(pad2d(x, 2, mode), np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect"))


def conv_transpose_naive(x, w, b, s, p, op):
    """Scatter each input pixel's weighted kernel onto the output, then crop."""
    N, C, H, W = x.shape
    _, F, K, _ = w.shape
    OH = (H - 1) * s - 2 * p + K + op
    OW = (W - 1) * s - 2 * p + K + op
    full = np.zeros((N, F, OH + 2 * p, OW + 2 * p))
    for i in range(H):
        for j in range(W):
            full[:, :, i * s:i * s + K, j * s:j * s + K] += np.einsum("nc,cfuv->nfuv", x[:, :, i, j], w)
    return full[:, :, p:p + OH, p:p + OW] + b.reshape(1, F, 1, 1)


@pytest.mark.parametrize("N,C,H,W,F,K,s,p,op", [
    (2, 3, 4, 5, 4, 3, 2, 1, 1),   # the transformer's ×2 upsampling
    (1, 4, 3, 3, 2, 3, 2, 1, 0),
    (1, 2, 3, 4, 3, 4, 2, 1, 0),
    (1, 3, 4, 4, 2, 3, 1, 1, 0),
])
def test_conv_transpose2d_forward_and_gradients(rng, N, C, H, W, F, K, s, p, op):
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((C, F, K, K))
    b = rng.standard_normal(F)
    y, cache = conv_transpose2d_forward(x, w, b, s, p, op)
    assert rel_error(y, conv_transpose_naive(x, w, b, s, p, op)) < 1e-10
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv_transpose2d_backward(dy, cache)
    h = 1e-2
    f = conv_transpose2d_forward
    assert rel_error(dx, eval_numerical_gradient_array(lambda z: f(z, w, b, s, p, op)[0], x, dy, h)) < 1e-6
    assert rel_error(dw, eval_numerical_gradient_array(lambda z: f(x, z, b, s, p, op)[0], w, dy, h)) < 1e-6
    assert rel_error(db, eval_numerical_gradient_array(lambda z: f(x, w, z, s, p, op)[0], b, dy, h)) < 1e-6


def test_conv_transpose_is_adjoint_of_conv(rng):
    """<convT(x; w), z> = <x, conv(z; w)> for matching stride/padding (no bias)."""
    x = rng.standard_normal((1, 4, 4, 5))
    w = rng.standard_normal((4, 3, 3, 3))  # convT: (C=4 -> F=3); conv: (F=4 <- C=3)
    y, _ = conv_transpose2d_forward(x, w, None, 2, 1, 1)
    z = rng.standard_normal(y.shape)
    cz, _ = conv2d_forward(z, w, None, 2, 1)
    assert np.sum(y * z) == pytest.approx(np.sum(x * cz), rel=1e-12)


def test_layer_classes_follow_the_contract(rng):
    conv = Conv2d(3, 4, 3, stride=1, padding=1, pad_mode="reflect", rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 3, 5, 6))
    y, cache = conv.forward(x)
    dx, grads = conv.backward(np.ones_like(y), cache)
    assert set(grads) == set(conv.params) == {"weight", "bias"}
    assert grads["weight"].shape == conv.params["weight"].shape
    up = ConvTranspose2d(4, 2, rng=rng, dtype=np.float64)
    y2, c2 = up.forward(y)
    assert y2.shape == (2, 2, 10, 12)
    dx2, g2 = up.backward(np.ones_like(y2), c2)
    assert dx2.shape == y.shape and set(g2) == {"weight", "bias"}


def test_bad_shapes_are_rejected(rng):
    with pytest.raises(ValueError):
        conv2d_forward(rng.standard_normal((1, 3, 5, 5)), rng.standard_normal((2, 4, 3, 3)))
    with pytest.raises(ValueError):
        conv2d_forward(rng.standard_normal((1, 3, 2, 2)), rng.standard_normal((2, 3, 5, 5)))
