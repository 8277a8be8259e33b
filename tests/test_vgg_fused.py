"""The ReLU fused into the convolution before it (CPU): ``conv2d_forward(..., relu=True)``
and ``conv2d_backward(..., relu_y=y)`` against the separate ``relu_forward`` /
``relu_backward`` passes on every path, and VGG16 fused against VGG16 with
``fuse_relu=False`` — bit for bit (the sign of zero included), in float32 and float64, on
one worker and on two, with both poolings. The separate passes are themselves checked
against independent loops (tests/test_conv.py, tests/test_vgg.py); one float64 check
against the naive convolution here ties the fused forward to the definition."""
import numpy as np
import pytest

from minnst import parallel, vgg
from minnst.layers.activations import relu_backward, relu_forward
from minnst.layers.conv import conv2d_backward, conv2d_forward, conv2d_naive

# (N, C, H, W, F, pad_mode, methods): VGG's first layer (3 channels, "auto" is the shifted
# GEMM), a Winograd-sized layer with odd sizes (tiles over the edge), reflection padding
CASES = [
    (2, 3, 13, 10, 8, "zero", ("auto", "shifted", "im2col", "thin_input", "thin_output")),
    (2, 64, 11, 14, 64, "zero", ("auto", "winograd", "winograd4", "shifted", "im2col")),
    (1, 16, 9, 7, 12, "reflect", ("winograd", "winograd4", "shifted", "im2col")),
    # rows of 79 padded pixels: the fused shifted GEMM's runs of whole rows (51 rows, 4029
    # positions) cut the products elsewhere than the runs of 4096 positions without ReLU
    (1, 3, 90, 77, 8, "zero", ("shifted",)),
]
PAIRS = [(case, m) for case in CASES for m in case[-1]]


def same_bits(a, b) -> bool:
    """Equal shapes and identical bit patterns (−0.0 differs from +0.0, NaNs compare)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ints = {4: np.uint32, 8: np.uint64}[a.itemsize]
    return np.array_equal(np.ascontiguousarray(a).view(ints), np.ascontiguousarray(b).view(ints))


def _layer(case, dtype, seed=0):
    N, C, H, W, F, mode, _ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype) * 0.1
    dy = rng.standard_normal((N, F, H, W)).astype(dtype)
    return x, w, b, dy, mode


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case,method", PAIRS)
def test_conv_relu_forward_is_the_separate_relu(case, method, dtype):
    x, w, b, _, mode = _layer(case, dtype)
    for n in (1, 2):
        with parallel.workers(n):
            y0, _ = conv2d_forward(x, w, b, 1, 1, mode, keep_input=False, method=method)
            r0, _ = relu_forward(y0)
            r1, c1 = conv2d_forward(x, w, b, 1, 1, mode, keep_input=False, method=method, relu=True)
            assert same_bits(r1, r0), (method, n)
            assert r1.strides == r0.strides  # the same memory order as relu_forward's output
            assert c1.method != "auto" and c1.x is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("keep_input", [False, True])
@pytest.mark.parametrize("case,method", PAIRS)
def test_conv_backward_with_relu_is_relu_backward_first(case, method, keep_input, dtype):
    """dy · (y > 0) taken inside the band loops (frozen layers of the fused paths) or
    before (every other): the same dx, dw, db as relu_backward then conv2d_backward."""
    x, w, b, dy, mode = _layer(case, dtype, seed=1)
    y, cache = conv2d_forward(x, w, b, 1, 1, mode, keep_input=keep_input, method=method, relu=True)
    assert (y == 0).mean() > 0.2  # the mask has work to do
    for n in (1, 2):
        with parallel.workers(n):
            ref = conv2d_backward(relu_backward(dy, y), cache)
            got = conv2d_backward(dy, cache, relu_y=y)
            for r, g in zip(ref, got):
                assert (r is None) == (g is None)
                assert r is None or same_bits(g, r), (method, n)


def test_fused_forward_matches_the_naive_convolution():
    """The independent twin: max(conv2d_naive(x), 0) in float64."""
    case = CASES[1]
    x, w, b, _, mode = _layer(case, np.float64, seed=2)
    ref = np.maximum(conv2d_naive(x, w, b, 1, 1), 0)
    for method in ("winograd", "shifted"):
        y, _ = conv2d_forward(x, w, b, 1, 1, method=method, relu=True)
        assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-12, method


def test_backward_with_relu_keeps_dy():
    """The mask is applied to the bands, never to the caller's dy (no in-place edit)."""
    x, w, b, dy, mode = _layer(CASES[1], np.float32, seed=3)
    y, cache = conv2d_forward(x, w, b, 1, 1, keep_input=False, relu=True)
    before = dy.copy()
    conv2d_backward(dy, cache, relu_y=y)
    assert same_bits(dy, before)


# --------------------------------------------------------------------------- VGG16

LAYERS = ["relu1_2", "conv2_2", "relu3_1", "pool3", "relu4_3", "relu5_1"]


def _gradients(feats, cache, dtype, rng):
    """A gradient per requested layer, in its memory order, plus one at a convolution that
    was not requested (conv3_2: before its ReLU) and one at a ReLU whose convolution was."""
    shapes = {name: c.shape for name, c in cache if name.startswith("relu")}
    g = {}
    for name, f in feats.items():
        g[name] = np.empty_like(f)
        g[name][...] = rng.standard_normal(f.shape)
    g["conv3_2"] = rng.standard_normal(shapes["relu3_2"]).astype(dtype)  # NCHW order
    g["relu2_2"] = rng.standard_normal(shapes["relu2_2"]).astype(dtype)
    return g


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vgg16_fused_is_bit_identical(vgg16_f32, vgg16_f64, pooling, dtype):
    """Features and input gradients of the fused network equal the separate passes
    exactly, on one worker and on two; the caches hold the same layers and arrays."""
    base = vgg16_f32 if dtype == np.float32 else vgg16_f64
    net = vgg.VGG16(base.weights, pooling=pooling)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 38, 34)).astype(dtype)  # odd sizes after pooling
    for n in (1, 2):
        with parallel.workers(n):
            f0, c0 = net.forward(x, LAYERS, fuse_relu=False)
            f1, c1 = net.forward(x, LAYERS)
            assert [name for name, _ in c1] == [name for name, _ in c0]
            for name in LAYERS:
                assert same_bits(f1[name], f0[name]), (name, n)
                assert f1[name].strides == f0[name].strides, name
            for (name, a), (_, b) in zip(c1, c0):
                if name.startswith("relu"):
                    assert same_bits(a, b), name  # the ReLU's cache: its output
            g = _gradients(f0, c0, dtype, rng)
            dx0 = net.backward(g, c0, fuse_relu=False)
            assert same_bits(net.backward(g, c1), dx0), n
            assert same_bits(net.backward(g, c0), dx0), n  # the cache is the same either way
            g1 = {"relu4_3": g["relu4_3"]}
            assert same_bits(net.backward(g1, c1), net.backward(g1, c0, fuse_relu=False)), n


def test_vgg16_deepest_layer_a_convolution(vgg16_f32):
    """A convolution asked for as the deepest layer is returned before its ReLU."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 3, 20, 24)).astype(np.float32)
    f1, c1 = vgg16_f32.forward(x, ["relu1_1", "conv2_1"])
    f0, c0 = vgg16_f32.forward(x, ["relu1_1", "conv2_1"], fuse_relu=False)
    assert (f1["conv2_1"] < 0).any() and same_bits(f1["conv2_1"], f0["conv2_1"])
    assert [name for name, _ in c1][-1] == "conv2_1"
    g = {name: rng.standard_normal(f.shape).astype(np.float32) for name, f in f1.items()}
    assert same_bits(vgg16_f32.backward(g, c1), vgg16_f32.backward(g, c0, fuse_relu=False))


def test_vgg16_fused_at_a_training_size(vgg16_f32):
    """128² to relu4_3 (max pooling): several bands per image and several runs of the
    shifted GEMM per band, as in training."""
    net = vgg.VGG16(vgg16_f32.weights, pooling="max")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 3, 128, 128)).astype(np.float32)
    layers = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
    for n in (1, 2):
        with parallel.workers(n):
            f0, c0 = net.forward(x, layers, fuse_relu=False)
            f1, c1 = net.forward(x, layers)
            assert all(same_bits(f1[name], f0[name]) for name in layers), n
            g = {}
            for name, f in f0.items():
                g[name] = np.empty_like(f)
                g[name][...] = rng.standard_normal(f.shape)
            assert same_bits(net.backward(g, c1), net.backward(g, c0, fuse_relu=False)), n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vgg16_forward_without_backward_hint(vgg16_f32, vgg16_f64, dtype):
    """``forward(..., backward=False)`` (max pooling keeps its input, not its indices):
    the same features, and a backward run anyway gives the same input gradient, bit for
    bit, on one worker and on two; its pool caches hold no indices."""
    base = vgg16_f32 if dtype == np.float32 else vgg16_f64
    net = vgg.VGG16(base.weights, pooling="max")
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 38, 34)).astype(dtype)  # odd sizes after pooling
    for n in (1, 2):
        with parallel.workers(n):
            f0, c0 = net.forward(x, LAYERS)
            f1, c1 = net.forward(x, LAYERS, backward=False)
            assert all(same_bits(f1[name], f0[name]) for name in LAYERS), n
            pools = [c for name, c in c1 if name.startswith("pool")]
            assert pools and all(c.idx is None for c in pools)
            g = _gradients(f0, c0, dtype, rng)
            assert same_bits(net.backward(g, c1), net.backward(g, c0)), n
