"""Winograd F(2×2, 3×3): against the naive loop convolution, and its use inside the
conv dispatcher as ``method="winograd"`` (forward, input gradient, weight gradient)
against the shifted GEMM, the naive loops and finite differences."""
import numpy as np
import pytest

from minnst.gradcheck import eval_numerical_gradient_array, rel_error
from minnst.layers.conv import Conv2d, auto_method, conv2d_backward, conv2d_forward, conv2d_naive
from minnst.layers.winograd import (G, winograd_conv3x3, winograd_input_grad_weights,
                                    winograd_transform, winograd_weights)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def test_one_tile_is_the_textbook_formula(rng):
    """Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A for a single 4×4 tile, one channel, one filter."""
    BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
    AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)
    d = rng.standard_normal((4, 4))
    g = rng.standard_normal((3, 3))
    Y = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(2)] for i in range(2)])
    assert rel_error(Y, direct) < 1e-12
    # and our implementation on the same tile (the 4×4 tile is the padded 2×2 image)
    x = d[1:3, 1:3].reshape(1, 1, 2, 2)
    d_padded = np.zeros((4, 4))
    d_padded[1:3, 1:3] = x[0, 0]
    y = winograd_conv3x3(x, winograd_weights(g.reshape(1, 1, 3, 3)))
    expected = np.array([[np.sum(d_padded[i:i + 3, j:j + 3] * g) for j in range(2)] for i in range(2)])
    assert rel_error(y[0, 0], expected) < 1e-12


@pytest.mark.parametrize("N,C,H,W,F", [(1, 3, 6, 6, 4), (2, 5, 7, 9, 3), (1, 4, 1, 1, 2),
                                       (1, 2, 5, 2, 3), (1, 6, 40, 33, 5)])
def test_matches_naive_convolution(rng, N, C, H, W, F):
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, 3, 3))
    b = rng.standard_normal(F)
    assert rel_error(winograd_conv3x3(x, winograd_weights(w), b), conv2d_naive(x, w, b, 1, 1)) < 1e-10


def test_input_gradient_weights(rng):
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((5, 4, 3, 3))
    y = conv2d_naive(x, w, None, 1, 1)
    dy = rng.standard_normal(y.shape)
    num = eval_numerical_gradient_array(lambda z: conv2d_naive(z, w, None, 1, 1), x, dy, h=1e-2)
    assert rel_error(winograd_conv3x3(dy, winograd_input_grad_weights(w)), num) < 1e-8


def test_float32_accuracy(rng):
    x = rng.standard_normal((1, 64, 20, 20)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    ref = conv2d_naive(x.astype(np.float64), w.astype(np.float64), None, 1, 1)
    y = winograd_conv3x3(x, winograd_weights(w))
    assert y.dtype == np.float32
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-5


@pytest.mark.parametrize("transformed", ["caller", "per call"])
@pytest.mark.parametrize("mode", ["zero", "reflect"])
@pytest.mark.parametrize("keep_input", [False, True])
@pytest.mark.parametrize("H,W", [(9, 8), (7, 5)])
def test_dispatcher_runs_winograd_and_agrees(rng, keep_input, mode, H, W, transformed):
    """Forward and input gradient by Winograd (with reflection: the full correlation of dy,
    then the fold) agree with the shifted GEMM, odd sizes included, whether the caller
    hands over the transformed kernels (VGG) or the dispatcher transforms them (Conv2d)."""
    x = rng.standard_normal((2, 6, H, W))
    w = rng.standard_normal((5, 6, 3, 3))
    b = rng.standard_normal(5)
    wino = winograd_transform(w) if transformed == "caller" else None
    y, cache = conv2d_forward(x, w, b, 1, 1, mode, keep_input=keep_input, method="winograd", wino=wino)
    assert cache.method == "winograd"
    y0, cache0 = conv2d_forward(x, w, b, 1, 1, mode, keep_input=keep_input, method="shifted")
    assert cache0.method == "shifted"
    assert rel_error(y, y0) < 1e-10
    assert rel_error(y, conv2d_naive(x, w, b, 1, 1, mode)) < 1e-10
    dy = rng.standard_normal(y.shape)
    for need_dx in (True, False):
        for a, b_ in zip(conv2d_backward(dy, cache, need_dx), conv2d_backward(dy, cache0, need_dx)):
            assert (a is None and b_ is None) or rel_error(a, b_) < 1e-10


def test_auto_takes_winograd_from_64_channels_on_both_sides(rng):
    x = rng.standard_normal((1, 64, 6, 6))
    w = rng.standard_normal((64, 64, 3, 3))
    assert conv2d_forward(x, w, None, 1, 1)[1].method == "winograd"
    assert auto_method(x, w[:32], 1, 1) == "shifted"
    assert auto_method(x[:, :32], w[:, :32], 1, 1) == "shifted"


def test_dispatcher_ignores_winograd_where_it_does_not_apply(rng):
    """The caller's transformed kernels are used only on the Winograd path; "auto" takes
    another path for a stride of 2 or a padding of 2, and its backward follows that path
    (a padding-2 layer's input gradient is not a 3×3 "same" convolution)."""
    x = rng.standard_normal((1, 64, 6, 6))
    w = rng.standard_normal((64, 64, 3, 3)) / 24
    wino = winograd_transform(w)
    assert conv2d_forward(x, w, None, 2, 1, wino=wino)[1].method == "im2col"       # stride 2
    y, cache = conv2d_forward(x, w, None, 1, 2, wino=wino)                         # pad 2
    assert cache.method == "shifted" and cache.wino is None
    dy = rng.standard_normal(y.shape)
    dx, dw, _ = conv2d_backward(dy, cache)
    _, c_im2col = conv2d_forward(x, w, None, 1, 2, method="im2col")
    dx_ref, dw_ref, _ = conv2d_backward(dy, c_im2col)
    assert rel_error(dx, dx_ref) < 1e-10 and rel_error(dw, dw_ref) < 1e-10
    for s, p in ((2, 1), (1, 2), (1, 0)):
        with pytest.raises(ValueError):
            conv2d_forward(x, w, None, s, p, method="winograd")


@pytest.mark.parametrize("H,W", [(6, 6), (7, 9), (5, 4)])
def test_reflection_padding_matches_naive(rng, H, W):
    x = rng.standard_normal((2, 3, H, W))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    y = winograd_conv3x3(x, winograd_weights(w), b, "reflect")
    assert rel_error(y, conv2d_naive(x, w, b, 1, 1, "reflect")) < 1e-10


def test_conv_layer_with_reflection_uses_winograd_and_its_gradients_hold(rng):
    """The transformer's residual convolutions: Winograd forward and input gradient (the
    full correlation folded back), shifted-GEMM weight gradient."""
    conv = Conv2d(5, 4, 3, padding=1, pad_mode="reflect", rng=rng, dtype=np.float64, method="winograd")
    x = rng.standard_normal((2, 5, 5, 7))
    y, cache = conv.forward(x)
    assert cache.method == "winograd"
    assert rel_error(y, conv2d_naive(x, conv.params["weight"], conv.params["bias"], 1, 1, "reflect")) < 1e-10
    dy = rng.standard_normal(y.shape)
    dx, grads = conv.backward(dy, cache)
    f = lambda z: conv2d_naive(z, conv.params["weight"], conv.params["bias"], 1, 1, "reflect")  # noqa: E731
    assert rel_error(dx, eval_numerical_gradient_array(f, x, dy, h=1e-2)) < 1e-8
    g = lambda z: conv2d_naive(x, z, conv.params["bias"], 1, 1, "reflect")  # noqa: E731
    assert rel_error(grads["weight"], eval_numerical_gradient_array(g, conv.params["weight"], dy, h=1e-2)) < 1e-8
