"""Convolution and transposed convolution: every path of ``conv2d_forward`` (chosen by
``method=``) against the naive loop twin, every gradient against central finite
differences in float64, the rule ``method="auto"`` follows, and the banding."""
import numpy as np
import pytest

from minnst.gradcheck import eval_numerical_gradient_array, rel_error
from minnst.layers import conv as convmod
from minnst.layers.conv import (Conv2d, ConvTranspose2d, auto_method, conv2d_backward,
                                conv2d_forward, conv2d_naive, conv_transpose2d_backward,
                                conv_transpose2d_forward)
from minnst.layers.padding import pad2d, pad2d_backward

# (N, C, H, W, F, K, stride, pad, mode): odd sizes, non-square, both paddings
CASES = [
    (2, 3, 7, 6, 4, 3, 1, 1, "zero"),       # VGG's first layer (3 channels)
    (2, 17, 7, 6, 5, 3, 1, 1, "zero"),
    (1, 16, 6, 9, 3, 3, 1, 2, "reflect"),   # reflection, pad 2
    (2, 16, 8, 7, 3, 5, 2, 2, "reflect"),   # stride 2: im2col only
    (1, 3, 9, 10, 2, 9, 1, 4, "reflect"),   # the transformer's 9×9 input layer
    (2, 18, 5, 5, 4, 1, 1, 0, "zero"),      # 1×1
    (1, 4, 7, 7, 3, 3, 2, 1, "zero"),       # stride 2, odd size
    (1, 20, 5, 6, 3, 3, 1, 0, "zero"),      # no padding (valid conv)
]


def _methods(case):
    """Every path that can run ``case``: "auto", im2col, and on stride 1 the CPU paths
    (the thin lowerings are correct for any channel counts, only slower); Winograd where
    the kernel is 3×3 with padding 1 (both tiles, F(2×2) and F(4×4))."""
    N, C, H, W, F, K, s, p, mode = case
    out = ["auto", "im2col"]
    if s == 1:
        out += ["shifted", "thin_input", "thin_output"]
        if K == 3 and p == 1:
            out += ["winograd", "winograd4"]
    return out


PAIRS = [(case, m) for case in CASES for m in _methods(case)]


def _ids(pair):
    (N, C, H, W, F, K, s, p, m), method = pair
    return f"{method}-N{N}C{C}_{H}x{W}_F{F}k{K}s{s}p{p}{m[0]}"


def _data(rng, case):
    N, C, H, W, F, K, s, p, mode = case
    return rng.standard_normal((N, C, H, W)), rng.standard_normal((F, C, K, K)), rng.standard_normal(F)


@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_conv2d_forward_matches_naive(rng, pair):
    case, method = pair
    N, C, H, W, F, K, s, p, mode = case
    x, w, b = _data(rng, case)
    y, cache = conv2d_forward(x, w, b, s, p, mode, method=method)
    assert cache.method == (auto_method(x, w, s, p) if method == "auto" else method)
    assert rel_error(y, conv2d_naive(x, w, b, s, p, mode)) < 1e-10


@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_conv2d_gradients(rng, pair):
    case, method = pair
    N, C, H, W, F, K, s, p, mode = case
    x, w, b = _data(rng, case)
    y, cache = conv2d_forward(x, w, b, s, p, mode, method=method)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, cache)

    def f(xx, ww, bb):
        return conv2d_forward(xx, ww, bb, s, p, mode, method=method)[0]

    # a linear map: central differences are exact up to rounding, so h can be large
    h = 1e-2
    assert rel_error(dx, eval_numerical_gradient_array(lambda z: f(z, w, b), x, dy, h)) < 1e-6
    assert rel_error(dw, eval_numerical_gradient_array(lambda z: f(x, z, b), w, dy, h)) < 1e-6
    assert rel_error(db, eval_numerical_gradient_array(lambda z: f(x, w, z), b, dy, h)) < 1e-6


def test_auto_picks_by_device_stride_and_shapes(rng):
    def pick(C, F, K, s=1, p=1, dtype=np.float32):
        return auto_method(np.zeros((1, C, 8, 8), dtype), np.zeros((F, C, K, K), dtype), s, p)

    assert pick(3, 64, 3) == "shifted"            # VGG conv1_1
    # VGG conv1_2: 64 → 64 takes Winograd only where the CPU's rule says so
    assert pick(64, 64, 3) == ("winograd" if convmod.WINOGRAD_MIN_WIDE <= 64 else "shifted")
    assert pick(64, 128, 3) == "winograd"         # VGG from conv2_1 on
    assert pick(96, 96, 3) == "winograd"
    assert pick(128, 64, 3) == "winograd"
    assert pick(512, 512, 3) == "winograd"        # F(4×4) ("winograd4") only when asked for
    assert pick(64, 32, 3) == "shifted"           # too few output channels for Winograd
    assert pick(64, 64, 3, p=2) == "shifted"      # Winograd needs padding 1
    assert pick(3, 32, 9, p=4) == "thin_input"    # the transformer's first layer
    assert pick(32, 3, 9, p=4) == "thin_output"   # and its last
    assert pick(32, 64, 3, s=2) == "im2col"       # strided
    assert pick(16, 16, 3, dtype=np.float16) == "im2col"


def test_fast_is_auto_with_f4_winograd(rng):
    """``method="fast"`` (the transformer's): F(4×4, 3×3) where "auto" takes F(2×2, 3×3),
    else auto's path; the values and gradients still those of the convolution."""
    def pick(C, F, K, s=1, p=1, xp_dtype=np.float32):
        x, w = np.zeros((1, C, 8, 8), xp_dtype), np.zeros((F, C, K, K), xp_dtype)
        return auto_method(x, w, s, p, fast=True), auto_method(x, w, s, p)

    assert pick(128, 128, 3) == ("winograd4", "winograd")
    # F(4×4) needs 128 channels on both sides; below, fast is auto's path
    for case in ((64, 32, 3), (3, 32, 9, 1, 4), (32, 3, 9, 1, 4), (32, 64, 3, 2), (64, 64, 3), (128, 64, 3),
                 (64, 128, 3), (96, 96, 3)):
        fast, auto = pick(*case)
        assert fast == auto, case
    x, w, b = rng.standard_normal((2, 128, 9, 7)), rng.standard_normal((128, 128, 3, 3)) / 34, rng.standard_normal(128)
    y, cache = conv2d_forward(x, w, b, 1, 1, "reflect", method="fast")
    assert cache.method == "winograd4"
    def scaled_error(a, r):  # elementwise relative errors blow up on the few outputs near 0
        return np.abs(a - r).max() / np.abs(r).max()

    assert scaled_error(y, conv2d_naive(x, w, b, 1, 1, "reflect")) < 1e-13
    dy = rng.standard_normal(y.shape)
    _, ref = conv2d_forward(x, w, b, 1, 1, "reflect", method="shifted")
    for a, r in zip(conv2d_backward(dy, cache), conv2d_backward(dy, ref)):
        assert scaled_error(a, r) < 1e-13


def test_transformer_convolutions_take_the_fast_path():
    from minnst.transformer import TransformerConfig, TransformerNet

    net = TransformerNet(TransformerConfig(width=0.5))
    convs = {name: layer.method for name, layer in net.named_layers() if isinstance(layer, Conv2d)}
    assert set(convs.values()) == {"fast"}, convs


def test_unknown_or_impossible_method_is_a_value_error(rng):
    x, w = rng.standard_normal((1, 4, 6, 6)), rng.standard_normal((2, 4, 3, 3))
    with pytest.raises(ValueError, match="unknown method"):
        conv2d_forward(x, w, method="fft")
    with pytest.raises(ValueError, match="stride 1"):
        conv2d_forward(x, w, None, 2, 1, method="shifted")
    with pytest.raises(ValueError, match="3x3 kernel with padding 1"):
        conv2d_forward(x, w, None, 1, 0, method="winograd")
    with pytest.raises(ValueError, match="'winograd4' needs a 3x3 kernel with padding 1"):
        conv2d_forward(x, w, None, 1, 2, method="winograd4")
    with pytest.raises(ValueError, match="stride 1"):
        conv2d_forward(x, w, None, 2, 1, method="winograd4")
    with pytest.raises(ValueError, match="float32 or float64"):
        conv2d_forward(x.astype(np.float16), w, None, 1, 1, method="thin_input")
    with pytest.raises(ValueError, match="unknown method"):
        Conv2d(4, 2, 3, method="winograd3")


@pytest.mark.parametrize("method", ["im2col", "shifted", "winograd", "winograd4", "thin_input", "thin_output"])
def test_frozen_cache_gives_input_gradient_only(rng, method):
    x = rng.standard_normal((1, 16, 5, 5))
    w = rng.standard_normal((4, 16, 3, 3))
    y, cache = conv2d_forward(x, w, None, 1, 1, keep_input=False, method=method)
    assert cache.x is None and cache.method == method
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, cache)
    assert dw is None and db is None
    _, full = conv2d_forward(x, w, None, 1, 1, method=method)
    assert rel_error(dx, conv2d_backward(dy, full)[0]) < 1e-12
    assert conv2d_backward(dy, cache, need_dx=False) == (None, None, None)


@pytest.mark.parametrize("C", [3, 16])
@pytest.mark.parametrize("method, stride", [("im2col", 1), ("im2col", 2), ("shifted", 1)])
def test_banding_does_not_change_results(rng, monkeypatch, C, method, stride):
    """Tiny band limits force many bands (im2col, forward and backward) / tasks and BLAS
    calls (shifted)."""
    x = rng.standard_normal((2, C, 9, 7))
    w = rng.standard_normal((5, C, 3, 3))
    b = rng.standard_normal(5)
    y0, c0 = conv2d_forward(x, w, b, stride, 1, method=method)
    dy = rng.standard_normal(y0.shape)
    g0 = conv2d_backward(dy, c0)
    monkeypatch.setattr(convmod, "IM2COL_MAX_BYTES", 1)     # im2col: one output row per band
    monkeypatch.setattr(convmod, "IM2COL_TASK_BYTES", 1)
    monkeypatch.setattr(convmod, "SHIFTED_BAND_BYTES", 1)   # shifted: one output row per task
    monkeypatch.setattr(convmod, "SHIFTED_GEMM_ROWS", 7)    # BLAS calls of 7 rows
    y1, c1 = conv2d_forward(x, w, b, stride, 1, method=method)
    g1 = conv2d_backward(dy, c1)
    assert rel_error(y0, y1) < 1e-12
    for a, b_ in zip(g0, g1):
        assert rel_error(a, b_) < 1e-12


@pytest.mark.parametrize("mode", ["zero", "reflect"])
@pytest.mark.parametrize("method", ["im2col", "shifted"])
def test_temporaries_do_not_grow_with_the_image(monkeypatch, method, mode):
    """With 2 MB bands, a conv on a 32 MB image allocates little beyond its result."""
    import tracemalloc

    monkeypatch.setattr(convmod, "IM2COL_MAX_BYTES", 2 * 2**20)
    monkeypatch.setattr(convmod, "SHIFTED_BAND_BYTES", 2 * 2**20)
    x = np.ones((1, 8, 1024, 1024), np.float32)
    w = np.ones((8, 8, 3, 3), np.float32)
    out_bytes = 8 * 1024 * 1026 * 4  # the result (with its two scratch columns per row)
    tracemalloc.start()
    y, cache = conv2d_forward(x, w, None, 1, 1, mode, method=method)
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
    bands = convmod.im2col_bands(1, 4096, 4096, 64 * 9, 4)
    assert bands[0][0] == 0 and bands[-1][1] == 4096
    biggest = max(i1 - i0 for i0, i1 in bands) * 4096 * 64 * 9 * 4
    assert biggest <= convmod.IM2COL_MAX_BYTES


@pytest.mark.parametrize("method", ["auto", "im2col", "shifted", "winograd", "winograd4",
                                    "thin_input", "thin_output"])
def test_float32_runs_and_keeps_dtype(rng, method):
    for C in (3, 16):
        x = rng.standard_normal((1, C, 6, 5)).astype(np.float32)
        w = rng.standard_normal((4, C, 3, 3)).astype(np.float32)
        b = rng.standard_normal(4).astype(np.float32)
        y, cache = conv2d_forward(x, w, b, 1, 1, method=method)
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


@pytest.mark.parametrize("method", ["im2col", "shifted", "winograd", "winograd4"])
def test_conv2d_layer_takes_its_method(rng, method):
    layer = Conv2d(5, 4, 3, padding=1, pad_mode="reflect", rng=rng, dtype=np.float64, method=method)
    x = rng.standard_normal((1, 5, 6, 7))
    y, cache = layer.forward(x)
    assert cache.method == method
    ref = conv2d_naive(x, layer.params["weight"], layer.params["bias"], 1, 1, "reflect")
    assert rel_error(y, ref) < 1e-10


def test_bad_shapes_are_rejected(rng):
    with pytest.raises(ValueError):
        conv2d_forward(rng.standard_normal((1, 3, 5, 5)), rng.standard_normal((2, 4, 3, 3)))
    with pytest.raises(ValueError):
        conv2d_forward(rng.standard_normal((1, 3, 2, 2)), rng.standard_normal((2, 3, 5, 5)))


def test_eval_mode_keeps_the_winograd_kernels_until_the_weights_change():
    """A Conv2d in eval mode reuses its transformed kernels from call to call, gives the
    bits of a fresh transform, and transforms again when its weights change in place; in
    training mode it keeps nothing."""
    rng = np.random.default_rng(0)
    layer = Conv2d(128, 128, 3, padding=1, pad_mode="reflect", bias=False, rng=rng, method="fast")
    x = rng.standard_normal((1, 128, 12, 12)).astype(np.float32)
    fresh = layer.forward(x)[0]  # training mode: transformed per call
    assert layer._kept is None
    layer.eval()
    first = layer.forward(x)[0]
    kept = layer._kept[1]
    assert np.array_equal(first, fresh) and layer.forward(x)[0] is not first
    assert layer._kept[1] is kept  # reused
    layer.params["weight"][0, 0, 1, 1] += 1.0  # an in-place update, as an optimiser makes
    changed = layer.forward(x)[0]
    assert layer._kept[1] is not kept
    layer.train()
    assert np.array_equal(changed, layer.forward(x)[0]) and layer._kept is None


@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_shifted_dx_in_runs_of_bands_matches_im2col(monkeypatch, N, mode):
    """A shifted-GEMM backward that writes dx cuts each image into runs of bands, the even
    runs first, then the odd ones (``conv._dx_groups``): with bands of one row (so that
    neighbouring runs share dx rows and every run has several bands) dx and dw equal the
    im2col path's, float64, frozen and trained."""
    from minnst.layers import conv
    monkeypatch.setattr(conv, "SHIFTED_BAND_BYTES", 1)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, 3, 17, 13))
    w = rng.standard_normal((8, 3, 3, 3))
    dy = rng.standard_normal((N, 8, 17, 13))
    groups = conv._dx_groups(N, 17, 1, 3)
    assert len(groups) == N * (4 if N == 1 else 2) and all(len(b) >= 2 for _, b, _ in groups)
    for keep in (False, True):
        got = conv.conv2d_backward(dy, conv.conv2d_forward(x, w, None, 1, 1, mode, method="shifted", keep_input=keep)[1])
        want = conv.conv2d_backward(dy, conv.conv2d_forward(x, w, None, 1, 1, mode, method="im2col", keep_input=True)[1])
        assert np.abs(got[0] - want[0]).max() < 1e-12 * np.abs(want[0]).max()
        if keep:
            assert np.abs(got[1] - want[1]).max() < 1e-12 * np.abs(want[1]).max()


@pytest.mark.parametrize("C", [1, 3, 8])
@pytest.mark.parametrize("band_bytes", [1, None])
def test_thin_input_grad_matches_im2col(rng, monkeypatch, C, band_bytes):
    """dx of a stride-1 layer with few input channels (output-side shifting, the taps
    summed in float64) against im2col in float64: a frozen layer taking its ReLU's mask, and
    a trained one (dx and dw); one-row bands (``band_bytes=1``) and whole-image ones."""
    if band_bytes:
        monkeypatch.setattr(convmod, "THIN_BAND_BYTES", band_bytes)
    for N, keep in ((1, False), (3, True)):
        x = rng.standard_normal((N, C, 9, 7))
        w = rng.standard_normal((5, C, 3, 3))
        b = rng.standard_normal(5)
        y, cache = conv2d_forward(x, w, b, 1, 1, keep_input=keep, method="shifted", relu=True)
        dy = rng.standard_normal(y.shape)
        dx, dw, _ = conv2d_backward(dy, cache, relu_y=y)
        _, ref_cache = conv2d_forward(x, w, b, 1, 1, method="im2col")
        dx_ref, dw_ref, _ = conv2d_backward(dy * (y > 0), ref_cache)
        assert rel_error(dx, dx_ref) < 1e-12
        if keep:
            assert rel_error(dw, dw_ref) < 1e-12


def test_thin_input_grad_float32_accuracy(rng):
    """In float32, the thin layer's dx is within 2e-7 (RMS, relative) of the float64 one:
    the GEMM's float32 products, each band's tap sums in float64, one rounding into dx."""
    x = rng.standard_normal((2, 3, 40, 33))
    w = rng.standard_normal((64, 3, 3, 3)) * 0.3
    dy = rng.standard_normal((2, 64, 40, 33))
    _, c64 = conv2d_forward(x, w, None, 1, 1, keep_input=False, method="shifted")
    _, c32 = conv2d_forward(x.astype(np.float32), w.astype(np.float32), None, 1, 1, keep_input=False,
                            method="shifted")
    dx64 = conv2d_backward(dy, c64)[0]
    dx32 = conv2d_backward(dy.astype(np.float32), c32)[0]
    assert dx32.dtype == np.float32
    assert np.linalg.norm(dx32 - dx64) / np.linalg.norm(dx64) < 2e-7
