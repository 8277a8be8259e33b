"""Winograd F(2×2, 3×3) and F(4×4, 3×3): the written-out transforms against the textbook
matrices, whole convolutions against the naive loop convolution (float64: to rounding),
their float32 error against the direct convolution in float64, the same bits on one and
two threads, and their use inside the conv dispatcher as ``method="winograd"`` /
``"winograd4"`` (forward, input gradient, weight gradient) against the shifted GEMM, the
naive loops and finite differences."""
import numpy as np
import pytest

from minnst import parallel
from minnst.gradcheck import eval_numerical_gradient_array, rel_error
from minnst.layers import conv
from minnst.layers import winograd as wg
from minnst.layers.conv import (WINOGRAD_TILES, Conv2d, auto_method, conv2d_backward,
                                conv2d_forward, conv2d_naive)
from minnst.layers.winograd import (MATRICES, WinogradWeights, winograd_conv3x3, winograd_weight_grad,
                                    winograd_input_grad, winograd_input_grad_weights,
                                    winograd_tile, winograd_transform, winograd_weights)

TILES = (2, 4)


def max_rel(y, ref):
    """max |y − ref| / max |ref|: the error relative to the output's scale."""
    return np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max()


@pytest.fixture
def rng():
    return np.random.default_rng(11)


# --------------------------------------------------------------------------- the algorithm

@pytest.mark.parametrize("m", TILES)
def test_one_tile_is_the_textbook_formula(rng, m):
    """Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A for a single α×α tile, one channel, one filter."""
    BT, Gm, AT = MATRICES[m]
    a = m + 2
    d = rng.standard_normal((a, a))
    g = rng.standard_normal((3, 3))
    Y = AT @ ((Gm @ g @ Gm.T) * (BT @ d @ BT.T)) @ AT.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(m)] for i in range(m)])
    assert rel_error(Y, direct) < 1e-12
    # and our implementation on the same tile (the α×α tile is the padded m×m image)
    x = d[1:m + 1, 1:m + 1].reshape(1, 1, m, m)
    d_padded = np.zeros((a, a))
    d_padded[1:m + 1, 1:m + 1] = x[0, 0]
    y = winograd_conv3x3(x, winograd_weights(g.reshape(1, 1, 3, 3), m))
    expected = np.array([[np.sum(d_padded[i:i + 3, j:j + 3] * g) for j in range(m)]
                         for i in range(m)])
    assert rel_error(y[0, 0], expected) < 1e-12


@pytest.mark.parametrize("m", TILES)
def test_written_out_transforms_are_the_matrices(rng, m):
    """The slice-add forms of Bᵀ, Aᵀ and G (one axis at a time) and the kernel transform
    U = G g Gᵀ equal the textbook matrices."""
    BT, Gm, AT = MATRICES[m]
    a = m + 2
    bt = (lambda v, o: wg._bt2(v[0:2], v[2:4], o)) if m == 2 else wg._bt4  # F(2×2): pairs
    for fn, M in ((bt, BT), (wg._AT[m], AT), (wg._G[m], Gm)):
        v = rng.standard_normal((M.shape[1], 5, 3))
        out = np.empty((M.shape[0], 5, 3))
        fn(v, out)
        assert np.abs(out - np.einsum("ij,jkl->ikl", M, v)).max() < 1e-14
    w = rng.standard_normal((5, 4, 3, 3))
    U = winograd_weights(w, m)
    assert U.shape == (a * a, 4, 5)
    ref = np.einsum("ai,fcij,bj->abcf", Gm, w, Gm).reshape(a * a, 4, 5)
    assert np.abs(U - ref).max() < 1e-14 * np.abs(ref).max()
    assert winograd_tile(U) == m


def test_tile_follows_from_the_transformed_kernels(rng):
    with pytest.raises(ValueError, match="tile must be one of"):
        winograd_weights(np.zeros((2, 2, 3, 3)), 3)
    with pytest.raises(ValueError, match="16 .* or 36"):
        winograd_conv3x3(np.zeros((1, 2, 4, 4)), np.zeros((25, 2, 2)))


SHAPES = [(1, 3, 6, 6, 4), (2, 5, 7, 9, 3), (1, 4, 1, 1, 2), (1, 2, 5, 2, 3), (1, 6, 40, 33, 5),
          (3, 7, 13, 10, 6), (2, 5, 8, 12, 3), (1, 3, 3, 11, 2), (1, 9, 17, 5, 7)]


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize("N,C,H,W,F", SHAPES)
def test_matches_naive_convolution(rng, m, N, C, H, W, F):
    """Odd sizes (not multiples of the tile: the last tiles stick out), C and F of no
    particular size, batches: equal to the direct convolution to float64 rounding."""
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, 3, 3))
    b = rng.standard_normal(F)
    y = winograd_conv3x3(x, winograd_weights(w, m), b)
    assert y.shape == (N, F, H, W)
    assert max_rel(y, conv2d_naive(x, w, b, 1, 1)) < 1e-12


@pytest.mark.parametrize("m", TILES)
def test_input_gradient_weights(rng, m):
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((5, 4, 3, 3))
    y = conv2d_naive(x, w, None, 1, 1)
    dy = rng.standard_normal(y.shape)
    num = eval_numerical_gradient_array(lambda z: conv2d_naive(z, w, None, 1, 1), x, dy, h=1e-2)
    assert rel_error(winograd_conv3x3(dy, winograd_input_grad_weights(w, m)), num) < 1e-8


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize("mode", ["zero", "reflect"])
@pytest.mark.parametrize("H,W", [(6, 6), (7, 9), (5, 4), (2, 3), (10, 13)])
def test_padding_modes_match_naive(rng, m, mode, H, W):
    """Forward and input gradient (reflection: the full correlation of dy, then the fold)
    against the naive convolution and its finite differences."""
    x = rng.standard_normal((2, 3, H, W))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    y = winograd_conv3x3(x, winograd_weights(w, m), b, mode)
    assert max_rel(y, conv2d_naive(x, w, b, 1, 1, mode)) < 1e-12
    dy = rng.standard_normal(y.shape)
    dx = winograd_input_grad(dy, winograd_input_grad_weights(w, m), mode, w=w)
    num = eval_numerical_gradient_array(lambda z: conv2d_naive(z, w, b, 1, 1, mode), x, dy, h=1e-2)
    assert rel_error(dx, num) < 1e-8  # reflection: the border folded from dy's edges
    if mode == "reflect":
        with pytest.raises(ValueError, match="forward kernel"):
            winograd_input_grad(dy, winograd_input_grad_weights(w, m), mode)
    relu_y = np.maximum(rng.standard_normal(y.shape), 0)
    dxr = winograd_input_grad(dy, winograd_input_grad_weights(w, m), mode, relu_y, w=w)
    masked = winograd_input_grad(dy * (relu_y > 0), winograd_input_grad_weights(w, m), mode, w=w)
    assert rel_error(dxr, masked) < 1e-12


@pytest.mark.parametrize("m", TILES)
def test_many_bands_give_the_same_result(rng, monkeypatch, m):
    """Bands of one tile row (many tasks per image) and whole images agree."""
    x = rng.standard_normal((2, 6, 21, 18))
    w = rng.standard_normal((5, 6, 3, 3))
    U = winograd_weights(w, m)
    y0 = winograd_conv3x3(x, U)
    monkeypatch.setitem(wg.WINOGRAD_BAND_TILES, m, ((None, 1),))
    assert max_rel(winograd_conv3x3(x, U), y0) < 1e-14
    monkeypatch.setitem(wg.WINOGRAD_BAND_TILES, m, ((None, 10**6),))
    assert max_rel(winograd_conv3x3(x, U), y0) < 1e-14


@pytest.mark.parametrize("H,W", [(9, 12), (8, 7), (1, 1), (5, 2)])
def test_band_dealt_straight_from_the_input_is_the_padded_band_dealt(rng, H, W):
    """F(2×2)'s band of a zero-padded input, dealt by column parity straight from x,
    holds the padded band's columns: xs[:, p, i] = padded column 2i + p, zeros past the
    image (odd sizes: tiles over the edge), every band of the image, batch of two."""
    x = rng.standard_normal((2, 3, H, W))
    TH, TW = -(-H // 2), -(-W // 2)
    for n in range(2):
        for t0, t1 in [(0, TH), (0, 1), (TH - 1, TH), (1, TH)]:
            if t1 <= t0:
                continue
            xs = wg._band_input(x, n, t0, t1, 2, TW, "zero")
            xb = wg._padded_band(x, n, 2 * t0, 2 * t1 + 2, 2 * TW + 2, "zero")
            assert xs.shape == (2 * (t1 - t0) + 2, 2, TW + 1, 3)
            assert np.array_equal(xs[:, 0], xb[:, 0::2]) and np.array_equal(xs[:, 1], xb[:, 1::2])


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize("mode", ["zero", "reflect"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("N,H,W", [(1, 9, 11), (3, 6, 6)])
def test_split_by_output_channels_matches_naive(rng, monkeypatch, m, mode, relu, N, H, W):
    """Deep layers on small images split their output channels among the tasks
    (``channel_chunks``, ``_by_output_channels``): forward with bias and ReLU, the masked
    input (a ReLU's backward), sizes not multiples of the tile and batches, against the
    naive convolution; the input gradient against finite differences; the same bits on
    one and two threads; and the split is what ran."""
    monkeypatch.setattr(wg, "SPLIT_MIN_CHANNELS", 2)
    monkeypatch.setattr(wg, "SPLIT_MIN_KERNEL_BYTES", 0)
    C, F = 5, 7
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, 3, 3))
    b = rng.standard_normal(F)
    ran = []
    monkeypatch.setattr(wg, "_by_output_channels",
                        lambda *args, _f=wg._by_output_channels: ran.append(args[11]) or _f(*args))  # chunks
    ys = []
    for workers in (1, 2):
        with parallel.workers(workers):
            ys.append(np.ascontiguousarray(winograd_conv3x3(x, winograd_weights(w, m), b, mode, relu=relu)))
    assert np.array_equal(ys[0], ys[1])
    assert ran and all(len(chunks) >= 2 for chunks in ran)
    ref = conv2d_naive(x, w, b, 1, 1, mode)
    assert max_rel(ys[0], np.maximum(ref, 0) if relu else ref) < 1e-12
    if mode == "zero":
        mask = rng.standard_normal(x.shape)
        got = winograd_conv3x3(x, winograd_weights(w, m), b, mode, mask=mask)
        assert max_rel(got, conv2d_naive(x * (mask > 0), w, b, 1, 1, mode)) < 1e-12
    dy = rng.standard_normal((N, F, H, W))
    dx = winograd_input_grad(dy, winograd_input_grad_weights(w, m), mode, w=w)
    num = eval_numerical_gradient_array(lambda z: conv2d_naive(z, w, b, 1, 1, mode), x, dy, h=1e-2)
    assert rel_error(dx, num) < 1e-8


def test_split_by_channels_only_where_bands_are_small_and_kernels_deep():
    """VGG16 on a 256² photo, F(2×2): conv4 (32², 512 channels) and conv5 (16²) split,
    conv3 (64², 256 channels: bands of 256 tiles) and the shallow layers do not; nor
    does a layer whose whole transformed input would exceed SPLIT_MAX_V_BYTES, nor one
    whose kernel stays in cache."""
    def chunks(N, H, C, F):
        TH = TW = H // 2
        tasks = parallel.image_bands(N, TH, wg.winograd_band_rows(TH, TW, C, 2))
        return wg.channel_chunks(N, TH, TW, C, F, tasks, 4, 4)
    assert len(chunks(1, 32, 512, 512)) == 4 and len(chunks(1, 32, 256, 512)) == 4
    assert len(chunks(1, 16, 512, 512)) == 4
    assert chunks(1, 64, 256, 256) == [] and chunks(1, 256, 64, 64) == []
    assert chunks(1, 64, 512, 512) == []     # 512² photo: conv4 at 64² keeps its bands
    assert chunks(64, 32, 512, 512) == []    # 64 × 16 MB of transformed input: too much
    TH = TW = 16                             # the transformer's residual convs at 256², F(4×4):
    tasks = parallel.image_bands(1, TH, wg.winograd_band_rows(TH, TW, 128, 4))
    assert wg.channel_chunks(1, TH, TW, 128, 128, tasks, 6, 4) == []  # a 2.4 MB kernel


# --------------------------------------------------------------------------- float32

def _vgg_like(rng, C, F, H, dtype=np.float32):
    """Post-ReLU activations (half zeros, the rest |N(0, 1)|), He-initialised weights, a
    small bias: the statistics of VGG16's inner layers."""
    x = np.maximum(rng.standard_normal((1, C, H, H)), 0).astype(dtype)
    w = (rng.standard_normal((F, C, 3, 3)) * np.sqrt(2 / (9 * C))).astype(dtype)
    b = (0.1 * rng.standard_normal(F)).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("C,F,H", [(64, 64, 20), (128, 96, 12)])
def test_float32_error_against_the_direct_convolution_in_float64(rng, C, F, H):
    """The float32 error of both tiles, forward and input gradient, on VGG-like data,
    against the direct convolution of the same float32 numbers in float64. F(2×2) is
    about as accurate as the direct method; F(4×4)'s larger coefficients (up to 8 in Aᵀ,
    1/24 in G) amplify the GEMMs' rounding: on these (uncorrelated) data about 15× more,
    on VGG16's real activations 5-10× (docs/layers.md)."""
    x, w, b = _vgg_like(rng, C, F, H)
    ref = conv2d_naive(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), 1, 1)
    dy = (rng.standard_normal(ref.shape) * (ref > 0)).astype(np.float32)  # masked by the ReLU
    dx_ref = conv2d_naive(dy.astype(np.float64), np.ascontiguousarray(
        w.astype(np.float64)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)), None, 1, 1)
    bounds = {2: 1.5e-6, 4: 3e-5}  # max relative error; measured 2.5–4.2e-7 and 4.5–9.5e-6
    for m in TILES:
        y = winograd_conv3x3(x, winograd_weights(w, m), b)
        dx = winograd_conv3x3(dy, winograd_input_grad_weights(w, m))
        assert y.dtype == dx.dtype == np.float32
        assert max_rel(y, ref) < bounds[m]
        assert max_rel(dx, dx_ref) < bounds[m]


# --------------------------------------------------------------------------- threads

CASES = [  # N, C, F, size, pad_mode, transformed by the caller
    (1, 64, 48, 13, "reflect", False),   # a residual block, one image, odd size
    (3, 40, 64, 18, "zero", True),       # VGG (frozen transforms), a batch
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}C{c[1]}F{c[2]}_{c[3]}{c[4][0]}")
@pytest.mark.parametrize("method", list(WINOGRAD_TILES))
def test_same_bits_on_one_and_two_threads(rng, dtype, case, method):
    N, C, F, size, mode, transformed = case
    x = rng.standard_normal((N, C, size, size)).astype(dtype)
    w = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    dy = rng.standard_normal((N, F, size, size)).astype(dtype)
    wino = winograd_transform(w) if transformed else None
    outs = []
    for n in (1, 2):
        with parallel.workers(n):
            y, cache = conv2d_forward(x, w, b, 1, 1, mode, method=method, wino=wino)
            outs.append((np.ascontiguousarray(y),) + conv2d_backward(dy, cache))
    for u, v in zip(*outs):
        assert u.dtype == v.dtype == dtype and np.array_equal(u, v)
    ref = conv2d_naive(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), 1, 1, mode)
    assert max_rel(outs[1][0], ref) < (5e-5 if dtype == np.float32 else 1e-12)


# --------------------------------------------------------------------------- the dispatcher

def test_frozen_transforms_are_made_once_and_kept(rng):
    w = rng.standard_normal((5, 4, 3, 3))
    wt = winograd_transform(w)
    assert isinstance(wt, WinogradWeights) and wt.nbytes == 0
    U4 = wt.forward(4)
    assert wt.forward(4) is U4 and wt.nbytes == U4.nbytes       # kept
    assert wt.input_grad(4).shape == (36, 5, 4)
    assert wt.forward(2).shape == (16, 4, 5)                     # each tile its own
    assert np.array_equal(wt.input_grad(2), winograd_input_grad_weights(w, 2))


@pytest.mark.parametrize("method", list(WINOGRAD_TILES))
@pytest.mark.parametrize("transformed", ["caller", "per call"])
@pytest.mark.parametrize("mode", ["zero", "reflect"])
@pytest.mark.parametrize("keep_input", [False, True])
@pytest.mark.parametrize("H,W", [(9, 8), (7, 5)])
def test_dispatcher_runs_winograd_and_agrees(rng, keep_input, mode, H, W, transformed, method):
    """Forward and input gradient by Winograd (with reflection: the full correlation of dy,
    then the fold) agree with the shifted GEMM, odd sizes included, whether the caller
    hands over the transformed kernels (VGG) or the dispatcher transforms them (Conv2d)."""
    x = rng.standard_normal((2, 6, H, W))
    w = rng.standard_normal((5, 6, 3, 3))
    b = rng.standard_normal(5)
    wino = winograd_transform(w) if transformed == "caller" else None
    y, cache = conv2d_forward(x, w, b, 1, 1, mode, keep_input=keep_input, method=method, wino=wino)
    assert cache.method == method
    y0, cache0 = conv2d_forward(x, w, b, 1, 1, mode, keep_input=keep_input, method="shifted")
    assert cache0.method == "shifted"
    assert max_rel(y, y0) < 1e-12
    assert max_rel(y, conv2d_naive(x, w, b, 1, 1, mode)) < 1e-12
    dy = rng.standard_normal(y.shape)
    for need_dx in (True, False):
        for a, b_ in zip(conv2d_backward(dy, cache, need_dx), conv2d_backward(dy, cache0, need_dx)):
            assert (a is None and b_ is None) or max_rel(a, b_) < 1e-12


@pytest.mark.parametrize("min_wide", [96, 64])
def test_auto_takes_winograd_from_64_channels_on_both_sides_and_min_wide_on_one(rng, monkeypatch, min_wide):
    monkeypatch.setattr(conv, "WINOGRAD_MIN_WIDE", min_wide)
    x = rng.standard_normal((1, 64, 6, 6))
    w = rng.standard_normal((128, 64, 3, 3))
    assert conv2d_forward(x, w, None, 1, 1)[1].method == "winograd"
    assert conv2d_forward(x, w[:96], None, 1, 1)[1].method == "winograd"
    assert conv2d_forward(x, w[:64], None, 1, 1)[1].method == ("winograd" if min_wide == 64 else "shifted")
    assert auto_method(x, w[:32], 1, 1) == "shifted"
    assert auto_method(x[:, :32], w[:, :32], 1, 1) == "shifted"


def test_winograd_min_wide_by_cpu():
    """64 → 64 goes to Winograd on AMD Zen 5 (family 1Ah) only; other CPUs keep 96."""
    def info(vendor, family):
        return {"vendor": vendor, "family": family, "model": "", "flags": frozenset()}

    assert conv.winograd_min_wide(info("AuthenticAMD", 0x1A)) == 64
    assert conv.winograd_min_wide(info("AuthenticAMD", 0x19)) == 96
    assert conv.winograd_min_wide(info("GenuineIntel", 6)) == 96
    assert conv.winograd_min_wide(info("", -1)) == 96


@pytest.mark.parametrize("method", list(WINOGRAD_TILES))
def test_dispatcher_ignores_winograd_where_it_does_not_apply(rng, method):
    """The caller's transformed kernels are used only on the Winograd paths; "auto" takes
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
        with pytest.raises(ValueError, match="stride 1|3x3 kernel with padding 1"):
            conv2d_forward(x, w, None, s, p, method=method)


@pytest.mark.parametrize("method", list(WINOGRAD_TILES))
def test_conv_layer_with_reflection_uses_winograd_and_its_gradients_hold(rng, method):
    """The transformer's residual convolutions: Winograd forward and input gradient (the
    full correlation folded back), shifted-GEMM weight gradient."""
    conv = Conv2d(5, 4, 3, padding=1, pad_mode="reflect", rng=rng, dtype=np.float64, method=method)
    x = rng.standard_normal((2, 5, 5, 7))
    y, cache = conv.forward(x)
    assert cache.method == method
    assert max_rel(y, conv2d_naive(x, conv.params["weight"], conv.params["bias"], 1, 1, "reflect")) < 1e-12
    dy = rng.standard_normal(y.shape)
    dx, grads = conv.backward(dy, cache)
    f = lambda z: conv2d_naive(z, conv.params["weight"], conv.params["bias"], 1, 1, "reflect")  # noqa: E731
    assert rel_error(dx, eval_numerical_gradient_array(f, x, dy, h=1e-2)) < 1e-8
    g = lambda z: conv2d_naive(x, z, conv.params["bias"], 1, 1, "reflect")  # noqa: E731
    assert rel_error(grads["weight"], eval_numerical_gradient_array(g, conv.params["weight"], dy, h=1e-2)) < 1e-8


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("N,C,F,H,W,mode", [(2, 5, 4, 7, 9, "zero"), (1, 3, 6, 10, 8, "reflect"),
                                            (3, 4, 3, 13, 11, "reflect"), (1, 2, 2, 1, 5, "zero")])
def test_weight_grad_in_the_winograd_domain_equals_the_definition(rng, tile, N, C, F, H, W, mode):
    """dw = Σ_n Σ_p dy[n, :, p] x_pad[n, :, p + (u, v)] (the definition, looped here) for
    odd sizes (tiles over the edge), batches and both paddings, in float64."""
    x, dy = rng.standard_normal((N, C, H, W)), rng.standard_normal((N, F, H, W))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect" if mode == "reflect" else "constant")
    ref = np.zeros((F, C, 3, 3))
    for u in range(3):
        for v in range(3):
            ref[:, :, u, v] = np.einsum("nfhw,nchw->fc", dy, xp[:, :, u:u + H, v:v + W])
    dw = winograd_weight_grad(x, dy, tile, mode)
    assert dw.shape == ref.shape and dw.dtype == np.float64
    assert np.abs(dw - ref).max() < 1e-12 * np.abs(ref).max()  # (taps outside a 1-row image are 0)


def test_weight_grad_float32_accuracy_and_workers(rng):
    """float32 F(2×2) weight gradient of a 128-channel layer: RMS error against float64
    under 1e-6 of dw's scale (the shifted GEMM's is ~3e-7), and the same bits on one
    worker and on two (the bands' partial sums are added in task order)."""
    x = rng.standard_normal((2, 16, 20, 18)).astype(np.float32)
    dy = rng.standard_normal((2, 24, 20, 18)).astype(np.float32)
    exact = winograd_weight_grad(x.astype(np.float64), dy.astype(np.float64), 2, "reflect")
    with parallel.workers(1):
        one = winograd_weight_grad(x, dy, 2, "reflect")
    with parallel.workers(2):
        two = winograd_weight_grad(x, dy, 2, "reflect")
    assert one.dtype == np.float32
    assert np.array_equal(one, two)
    assert np.sqrt(((one - exact) ** 2).mean() / (exact ** 2).mean()) < 1e-6
