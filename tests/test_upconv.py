"""layers/upconv.py: the ×2 resize folded into the 3×3 reflect convolution equals the two
layers (``conv2d_naive`` of the resized image, and the fast ``conv2d_forward``), its
backward equals central differences and the two layers' backwards, both give the same
bits on one worker and on two, and the transformer with the fold (inference and the
training block ``ResizeConvBlock``) equals the same layers run one by one."""
import numpy as np
import pytest

from minnst import parallel
from minnst.gradcheck import eval_numerical_gradient_array, rel_error
from minnst.layers.base import Sequential
from minnst.layers.conv import conv2d_backward, conv2d_forward
from minnst.layers.resampling import upsample_nearest2d_backward, upsample_nearest2d_forward
from minnst.layers.upconv import (FOLD, check_upconv, fold_weights, replicate_rows_cl,
                                  upconv2d_backward, upconv2d_forward, upconv2d_naive)
from minnst.transformer import ResizeConvBlock, TransformerConfig, TransformerNet, _infer


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(1e-30, np.abs(b).max()))


def unfused(x, w, b=None):
    """The two layers one after the other, by the default convolution path."""
    return conv2d_forward(upsample_nearest2d_forward(x, 2)[0], w, b, 1, 1, "reflect")[0]


def channels_last(x):
    """x as the layers hand it on: an NCHW view of channels-last memory."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def test_fold_rows_are_the_resized_taps():
    """R[a, s] sums the taps u of the padded resized row 2i + a − 1 + u that read input row
    i − 1 + a + s (edge-replicated): the rows cover each tap exactly once per phase."""
    for a in (0, 1):
        for s in (0, 1):
            want = [1 if (2 + a - 1 + u) // 2 == 1 + a + s - 1 else 0 for u in range(3)]
            assert FOLD[a, s].tolist() == want
        assert FOLD[a].sum(axis=0).tolist() == [1, 1, 1]


def test_fold_weights_by_loops(rng):
    w = rng.standard_normal((3, 2, 3, 3))
    K = fold_weights(w)
    for a, b, s, t in np.ndindex(2, 2, 2, 2):
        want = sum(FOLD[a, s, u] * FOLD[b, t, v] * w[:, :, u, v] for u in range(3) for v in range(3))
        np.testing.assert_allclose(K[a, b, s, t], want.T, rtol=0, atol=1e-15)


@pytest.mark.parametrize("H", [1, 2, 5])
def test_replicate_rows_cl_equals_edge_padding(rng, H):
    x = rng.standard_normal((2, 3, H, 4))
    full = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge").transpose(0, 2, 3, 1)
    for r0 in range(H + 2):
        for r1 in range(r0 + 1, H + 3):
            assert np.array_equal(replicate_rows_cl(x, r0, r1), full[:, r0:r1])


@pytest.mark.parametrize("N, C, F, H, W", [
    (1, 3, 4, 5, 7),     # odd sizes
    (2, 8, 5, 6, 3),     # a batch
    (1, 1, 1, 1, 2),     # a single input row
    (2, 16, 24, 9, 11),
])
def test_forward_equals_the_naive_twin(rng, N, C, F, H, W):
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, 3, 3))
    b = rng.standard_normal(F)
    for bias in (None, b):
        y, cache = upconv2d_forward(x, w, bias)
        assert y.shape == (N, F, 2 * H, 2 * W) and y.dtype == x.dtype
        assert rel(y, upconv2d_naive(x, w, bias)) < 1e-13
        assert cache.x is x and cache.has_bias == (bias is not None)


@pytest.mark.parametrize("N, C, F, H, W", [
    (1, 128, 64, 16, 16),   # up1 of the width-1 transformer (at 64² input pixels)
    (1, 64, 32, 33, 31),    # up2, odd sizes
    (2, 32, 16, 12, 20),
    (1, 4, 3, 70, 9),       # tall: several bands per image
])
def test_forward_equals_the_two_layers_in_float64_and_float32(rng, N, C, F, H, W):
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)
    assert rel(upconv2d_forward(x, w)[0], unfused(x, w)) < 1e-12
    x32, w32 = channels_last(x.astype(np.float32)), w.astype(np.float32)
    y32 = upconv2d_forward(x32, w32)[0]
    assert y32.dtype == np.float32
    assert rel(y32, unfused(x, w)) < 2e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bits_on_one_worker_and_two(rng, dtype):
    x = rng.standard_normal((2, 24, 37, 21)).astype(dtype)
    w = rng.standard_normal((40, 24, 3, 3)).astype(dtype)
    b = rng.standard_normal(40).astype(dtype)
    with parallel.workers(1):
        one = upconv2d_forward(x, w, b)[0]
    with parallel.workers(2):
        two = upconv2d_forward(x, w, b)[0]
    assert np.array_equal(one, two)


def test_other_dtypes_take_the_two_layers(rng):
    x = rng.standard_normal((1, 3, 4, 5)).astype(np.float16)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float16)
    y = upconv2d_forward(x, w)[0]
    assert y.shape == (1, 2, 8, 10)
    np.testing.assert_allclose(y.astype(np.float64), unfused(x.astype(np.float64), w.astype(np.float64)),
                               rtol=0, atol=0.05)


def test_bad_shapes_are_plain_errors():
    with pytest.raises(ValueError, match="3x3"):
        check_upconv(np.zeros((1, 2, 4, 4)), np.zeros((3, 2, 5, 5)))
    with pytest.raises(ValueError, match="channels"):
        upconv2d_forward(np.zeros((1, 2, 4, 4)), np.zeros((3, 4, 3, 3)))
    with pytest.raises(ValueError, match="expects"):
        upconv2d_forward(np.zeros((2, 4, 4)), np.zeros((3, 2, 3, 3)))


# --------------------------------------------------------------------------- backward

@pytest.mark.parametrize("N, C, F, H, W", [(1, 2, 3, 3, 4), (2, 3, 2, 1, 2), (1, 4, 5, 5, 3)])
def test_backward_matches_finite_differences(rng, N, C, F, H, W):
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, 3, 3))
    b = rng.standard_normal(F)
    dy = rng.standard_normal((N, F, 2 * H, 2 * W))
    dx, dw, db = upconv2d_backward(dy, upconv2d_forward(x, w, b)[1])
    h = 1e-3  # linear in each argument: central differences are exact up to rounding, ~eps/h

    def numerical(f, v):
        return eval_numerical_gradient_array(f, v, dy, h)

    assert rel_error(dx, numerical(lambda v: upconv2d_forward(v, w, b)[0], x)) < 1e-8
    assert rel_error(dw, numerical(lambda v: upconv2d_forward(x, v, b)[0], w)) < 1e-8
    assert rel_error(db, numerical(lambda v: upconv2d_forward(x, w, v)[0], b)) < 1e-8


def layers_backward(x, w, b, dy):
    """dx, dw, db of the two layers one after the other."""
    up, up_cache = upsample_nearest2d_forward(x, 2)
    dup, dw, db = conv2d_backward(dy, conv2d_forward(up, w, b, 1, 1, "reflect")[1])
    return upsample_nearest2d_backward(dup, up_cache), dw, db


@pytest.mark.parametrize("N, C, F, H, W", [(2, 64, 32, 17, 12), (1, 128, 64, 8, 8), (2, 5, 7, 40, 3)])
def test_backward_equals_the_two_layers(rng, N, C, F, H, W):
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)
    b = rng.standard_normal(F)
    dy = rng.standard_normal((N, F, 2 * H, 2 * W))
    want = layers_backward(x, w, b, dy)
    cache = upconv2d_forward(x, w, b)[1]
    for got, ref in zip(upconv2d_backward(dy, cache), want):
        assert rel(got, ref) < 1e-12
    dx, dw, db = upconv2d_backward(dy, cache, need_dx=False)
    assert dx is None and rel(dw, want[1]) < 1e-12
    dx, dw, db = upconv2d_backward(dy, upconv2d_forward(x, w, b, keep_input=False)[1])
    assert dw is None and db is None and rel(dx, want[0]) < 1e-12
    x32, w32, dy32 = (channels_last(a.astype(np.float32)) for a in (x, w, dy))
    for got, ref in zip(upconv2d_backward(dy32, upconv2d_forward(x32, w32, b.astype(np.float32))[1]), want):
        assert got.dtype == np.float32 and rel(got, ref) < 2e-6


@pytest.mark.parametrize("need_dx", [True, False])
def test_backward_same_bits_on_one_worker_and_two(rng, need_dx):
    x = rng.standard_normal((2, 12, 30, 9)).astype(np.float32)
    w = rng.standard_normal((20, 12, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 20, 60, 18)).astype(np.float32)
    cache = upconv2d_forward(x, w)[1]
    with parallel.workers(1):
        one = upconv2d_backward(dy, cache, need_dx)
    with parallel.workers(2):
        two = upconv2d_backward(dy, cache, need_dx)
    for a, b in zip(one, two):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_other_dtypes_backward_by_the_two_layers(rng):
    x = rng.standard_normal((1, 2, 3, 4))
    w = rng.standard_normal((3, 2, 3, 3))
    dy = rng.standard_normal((1, 3, 6, 8))
    y, cache = upconv2d_forward(x.astype(np.float16), w.astype(np.float16))
    assert cache.layers is not None
    dx, dw, _ = upconv2d_backward(dy.astype(np.float16), cache)
    want = layers_backward(x, w, None, dy)
    np.testing.assert_allclose(dx, want[0], rtol=0, atol=0.05 * np.abs(want[0]).max())
    np.testing.assert_allclose(dw, want[1], rtol=0, atol=0.05 * np.abs(want[1]).max())


# --------------------------------------------------------------------------- in the transformer

@pytest.mark.parametrize("styles", [(), ("a", "b")])
def test_inference_with_the_fold_equals_the_layers(rng, styles):
    net = TransformerNet(TransformerConfig(width=0.25, residual_blocks=1, styles=styles), seed=3)
    net.eval()
    x = rng.uniform(0, 255, (2, 3, 20, 28)).astype(np.float32)
    style = "b" if styles else None
    folded = net.infer(x, style)
    mix = net.style_mix(style, len(x))  # (N, S) weights, or None for one style
    layers = _infer(net, x, None if mix is None else mix.astype(x.dtype), fold=False)
    forward = net.forward(x, style)[0]
    assert np.abs(folded - layers).max() < 1e-3  # pixels in [0, 255]: float32 rounding
    assert np.abs(layers - forward).max() < 1e-3


def test_stylize_with_the_fold_equals_the_layers(rng):
    """``stylize`` (which folds) against its steps run with ``fold=False``."""
    net = TransformerNet(TransformerConfig(width=0.25, residual_blocks=2), seed=5)
    img = rng.uniform(0, 1, (24, 32, 3)).astype(np.float32)
    out = net.stylize(img)
    net.eval()
    x = (img.transpose(2, 0, 1)[None] * 255.0).astype(np.float32)
    want = np.clip(_infer(net, x, None, fold=False)[0].transpose(1, 2, 0) / 255.0, 0, 1)
    assert np.abs(out - want).max() < 4e-6  # float32 rounding of pixels in [0, 1]


def test_transposed_upsampling_is_left_alone(rng):
    net = TransformerNet(TransformerConfig(width=0.25, residual_blocks=1, upsample="transpose"), seed=1)
    net.eval()
    x = rng.uniform(0, 255, (1, 3, 16, 16)).astype(np.float32)
    assert np.array_equal(net.infer(x), _infer(net, x, None, fold=False))


@pytest.mark.gpu
def test_gpu_arrays_take_the_two_layers(rng):
    from minnst import backend

    ok, why = backend.gpu_available()
    if not ok:
        pytest.skip(why or "no GPU")
    import cupy as cp

    x = rng.standard_normal((2, 6, 7, 9)).astype(np.float32)
    w = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    y = upconv2d_forward(cp.asarray(x), cp.asarray(w))[0]
    assert isinstance(y, cp.ndarray)
    assert rel(cp.asnumpy(y), unfused(x.astype(np.float64), w.astype(np.float64))) < 2e-6


def test_resize_conv_block_equals_its_layers_one_by_one(rng):
    """The training block: output, input gradient and every parameter gradient as a plain
    ``Sequential`` of the same layers gives them."""
    net = TransformerNet(TransformerConfig(width=0.25, residual_blocks=1), seed=2, dtype=np.float64)
    block = net.layers["up1"]
    assert isinstance(block, ResizeConvBlock)
    plain = Sequential(dict(block.layers))
    x = rng.standard_normal((2, 32, 6, 7))
    y, cache = block.forward(x)
    y0, cache0 = plain.forward(x)
    assert rel(y, y0) < 1e-12
    dy = rng.standard_normal(y.shape)
    dx, grads = block.backward(dy, cache)
    dx0, grads0 = plain.backward(dy, cache0)
    assert rel(dx, dx0) < 1e-12
    assert grads.keys() == grads0.keys()
    for k in grads:
        assert rel(grads[k], grads0[k]) < 1e-12, k
    with pytest.raises(ValueError, match="resized image"):
        block.backward(dy, cache, add={"conv": dy})
