"""The thin-channel lowerings of the CPU convolution (9×9 layers with 3 channels on one
side, the transformer's first and last): im2col + one GEMM when the input is thin,
output-side shifting when the output is thin. Each against the naive loop twin and by
central differences in float64; banding, float32, memory, and the skipped input gradient.
Paths are chosen by ``method=``; the cases are those "auto" sends to each lowering."""
import numpy as np
import pytest

from minnst.gradcheck import eval_numerical_gradient_array, rel_error
from minnst.layers import conv as convmod
from minnst.layers.conv import Conv2d, conv2d_backward, conv2d_forward, conv2d_naive
from minnst.parallel import num_workers

# (N, C, H, W, F, K, pad, mode, method): odd and non-square sizes, both paddings
CASES = [
    (2, 3, 10, 9, 4, 9, 4, "reflect", "thin_input"),    # the transformer's first layer
    (1, 4, 11, 10, 3, 9, 4, "reflect", "thin_output"),  # ... and its last
    (2, 3, 7, 8, 6, 5, 2, "zero", "thin_input"),
    (1, 7, 8, 6, 2, 5, 1, "zero", "thin_output"),       # padding smaller than the kernel's half
    (1, 3, 6, 7, 3, 5, 0, "zero", "thin_output"),       # valid convolution, both sides thin
    (2, 12, 9, 9, 3, 7, 3, "reflect", "thin_output"),
]


def _ids(case):
    N, C, H, W, F, K, p, m, meth = case
    return f"{meth}_N{N}C{C}_{H}x{W}_F{F}k{K}p{p}{m[0]}"


def _data(rng, case, dtype=np.float64):
    N, C, H, W, F, K, p, mode, _ = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, K, K)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_auto_takes_the_thin_lowering_and_it_matches_naive(rng, case):
    x, w, b = _data(rng, case)
    p, mode, method = case[6:]
    y, cache = conv2d_forward(x, w, b, 1, p, mode)
    assert cache.method == method
    assert rel_error(y, conv2d_naive(x, w, b, 1, p, mode)) < 1e-10
    y0, _ = conv2d_forward(x, w, None, 1, p, mode, method=method)
    assert rel_error(y0, conv2d_naive(x, w, None, 1, p, mode)) < 1e-10


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_the_other_lowering_matches_naive_too(rng, case):
    """Each lowering is correct for any channel counts (only slower on the other side)."""
    x, w, b = _data(rng, case)
    p, mode, method = case[6:]
    other = "thin_output" if method == "thin_input" else "thin_input"
    y, cache = conv2d_forward(x, w, b, 1, p, mode, method=other)
    assert cache.method == other
    assert rel_error(y, conv2d_naive(x, w, b, 1, p, mode)) < 1e-10


@pytest.mark.parametrize("which", ["own", "other"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_gradients_match_finite_differences(rng, case, which):
    x, w, b = _data(rng, case)
    p, mode, method = case[6:]
    if which == "other":
        method = "thin_output" if method == "thin_input" else "thin_input"
    y, cache = conv2d_forward(x, w, b, 1, p, mode, method=method)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, cache)
    h = 1e-2  # a linear map: central differences are exact up to rounding

    def f(xx, ww, bb):
        return conv2d_forward(xx, ww, bb, 1, p, mode, method=method)[0]

    assert rel_error(dx, eval_numerical_gradient_array(lambda z: f(z, w, b), x, dy, h)) < 1e-6
    assert rel_error(dw, eval_numerical_gradient_array(lambda z: f(x, z, b), w, dy, h)) < 1e-6
    assert rel_error(db, eval_numerical_gradient_array(lambda z: f(x, w, z), b, dy, h)) < 1e-6


def _same_after(rng, case, change, method="auto"):
    """Forward + backward of ``case`` on its lowering, then again after ``change()`` on
    ``method``: the same numbers. Returns the second forward's cache."""
    x, w, b = _data(rng, case)
    p, mode, _ = case[6:]
    y0, c0 = conv2d_forward(x, w, b, 1, p, mode)
    dy = rng.standard_normal(y0.shape)
    g0 = conv2d_backward(dy, c0)
    change()
    y1, c1 = conv2d_forward(x, w, b, 1, p, mode, method=method)
    assert rel_error(y0, y1) < 1e-12
    for a, b_ in zip(g0, conv2d_backward(dy, c1)):
        assert rel_error(a, b_) < 1e-12
    return c1


@pytest.mark.parametrize("case", CASES[:2], ids=_ids)
def test_agrees_with_the_shifted_gemm(rng, case):
    """The same numbers as the shifted GEMM on the same layer (forward and backward)."""
    cache = _same_after(rng, case, lambda: None, method="shifted")
    assert cache.method == "shifted"


def test_three_by_three_layers_keep_the_shifted_gemm():
    assert convmod.thin_method(3, 64, 3, 3) is None       # VGG conv1_1
    assert convmod.thin_method(64, 64, 9, 9) is None
    assert convmod.thin_method(3, 32, 9, 9) == "thin_input"
    assert convmod.thin_method(32, 3, 9, 9) == "thin_output"


@pytest.mark.parametrize("case", CASES[:2], ids=_ids)
def test_banding_does_not_change_results(rng, monkeypatch, case):
    """A one-byte band limit: one row per band, every band boundary exercised."""
    _same_after(rng, case, lambda: monkeypatch.setattr(convmod, "THIN_BAND_BYTES", 1))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_fields_of_several_columns_give_the_numbers_of_single_columns(rng, monkeypatch, case):
    """The thin-input product computes T = wide_columns(KW) outputs a row (9×9: 4, 5×5: 2;
    the widths of CASES leave 0 to 3 scratch columns in the last group): the same numbers
    as one output a row (T = 1) up to rounding: the forward, the weight gradients folded
    from the wide products (``fold_wide``), and the thin-output lowering's input gradient
    (dy's fields) with and without the weight gradient that shares them."""
    x, w, b = _data(rng, case)
    p, mode, _ = case[6:]

    def run():
        y, cache = conv2d_forward(x, w, b, 1, p, mode, method="thin_input")
        y2, cache2 = conv2d_forward(x, w, b, 1, p, mode, method="thin_output")
        dy = np.random.default_rng(1).standard_normal(y.shape)
        return (y, *conv2d_backward(dy, cache)[:2], *conv2d_backward(dy, cache2)[:2],
                conv2d_backward(dy, cache2._replace(x=None))[0])

    wide = run()
    monkeypatch.setattr(convmod, "THIN_WIDE_MAX", 1)
    single = run()
    for a, b_ in zip(wide, single):
        assert rel_error(a, b_) < 1e-10  # float64 rounding (the products group K differently)


def test_wide_weights_hold_the_kernel_shifted_by_each_column(rng):
    """W_T[(u, v, c), (t, f)] = w[f, c, u, v − t] inside the kernel, zero elsewhere: a field
    of KW + T − 1 columns times W_T is T neighbouring outputs."""
    F, C, K, T = 2, 3, 5, 2
    w = rng.standard_normal((F, C, K, K))
    wt = convmod.wide_weights(w, T).reshape(K, K + T - 1, C, T, F)
    for t in range(T):
        for v in range(K + T - 1):
            want = w[:, :, :, v - t].transpose(2, 1, 0) if 0 <= v - t < K else 0
            assert np.array_equal(wt[:, v, :, t, :], np.broadcast_to(want, (K, C, F)))
    assert [convmod.wide_columns(k) for k in (1, 3, 5, 7, 9, 11)] == [1, 1, 2, 3, 4, 4]


def test_im2col_refuses_fields_past_the_input():
    from minnst.layers.im2col import im2col_cpu

    xpad = np.zeros((1, 12, 12, 3))
    assert im2col_cpu(xpad, 9, 12, 1, 0, 4, 1, col_stride=4).shape == (1, 4, 1, 9, 12, 3)
    with pytest.raises(ValueError, match="columns"):
        im2col_cpu(xpad, 9, 12, 1, 0, 4, 2, col_stride=4)  # the second field ends at column 16


@pytest.mark.parametrize("case", CASES[:2], ids=_ids)
def test_float32_runs_and_keeps_dtype(rng, case):
    x, w, b = _data(rng, case)
    p, mode, _ = case[6:]
    y32, cache = conv2d_forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), 1, p, mode)
    assert y32.dtype == np.float32
    y64, c64 = conv2d_forward(x, w, b, 1, p, mode)
    assert np.max(np.abs(y32 - y64)) < 1e-4 * np.max(np.abs(y64))
    dy = rng.standard_normal(y64.shape)
    g32 = conv2d_backward(dy.astype(np.float32), cache)
    for a, ref in zip(g32, conv2d_backward(dy, c64)):
        assert a.dtype == np.float32
        assert np.max(np.abs(a - ref)) < 1e-4 * np.max(np.abs(ref))


@pytest.mark.parametrize("C,F", [(3, 16), (16, 3)])
def test_temporaries_do_not_grow_with_the_image(monkeypatch, C, F):
    """A 9×9 layer at 1024² allocates little beyond its result, forward and backward (the
    weight gradient's shifted GEMM with 2 MB bands, as in test_conv.py): band buffers of a
    fixed size, whatever the image."""
    import tracemalloc

    monkeypatch.setattr(convmod, "SHIFTED_BAND_BYTES", 2 * 2**20)
    x = np.ones((1, C, 1024, 1024), np.float32)
    w = np.ones((F, C, 9, 9), np.float32) / (81 * C)
    out_bytes = F * 1024 * 1032 * 4      # the result, with the scratch columns of its rows
    dxpad_bytes = C * 1032 * 1032 * 4    # the padded input gradient
    tracemalloc.start()
    y, cache = conv2d_forward(x, w, None, 1, 4, "reflect")
    fwd_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    conv2d_backward(y, cache)
    bwd_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # beyond the results: a band buffer per worker (the thin-output lowering's product:
    # SCATTER_BAND_BYTES, taken by the thin input's dx and the thin output's forward)
    bands = num_workers() * convmod.SCATTER_BAND_BYTES + 8 * 2**20
    assert fwd_peak < out_bytes + bands
    assert bwd_peak < out_bytes + dxpad_bytes + bands


@pytest.mark.parametrize("method", ["shifted", "thin_input", "thin_output", "im2col", "winograd"])
def test_skipping_the_input_gradient(rng, method):
    """need_dx=False returns dx = None and the very same dw, db, whatever the path."""
    C, F, K = {"shifted": (5, 6, 3), "thin_input": (3, 6, 9), "thin_output": (6, 3, 9),
               "im2col": (5, 6, 3), "winograd": (5, 6, 3)}[method]
    x = rng.standard_normal((2, C, 10, 11))
    w = rng.standard_normal((F, C, K, K))
    b = rng.standard_normal(F)
    y, cache = conv2d_forward(x, w, b, 1, K // 2, "reflect", method=method)
    assert cache.method == method
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, cache)
    none, dw1, db1 = conv2d_backward(dy, cache, need_dx=False)
    assert none is None
    assert rel_error(dw, dw1) < 1e-12 and rel_error(db, db1) < 1e-12


def test_conv2d_layer_without_input_gradient(rng):
    layer = Conv2d(3, 5, 9, padding=4, pad_mode="reflect", rng=rng, dtype=np.float64, input_grad=False)
    x = rng.standard_normal((1, 3, 12, 10))
    y, cache = layer.forward(x)
    dx, grads = layer.backward(np.ones_like(y), cache)
    assert dx is None and set(grads) == {"weight", "bias"}
    ref = conv2d_backward(np.ones_like(y), cache)
    assert rel_error(grads["weight"], ref[1]) < 1e-12
