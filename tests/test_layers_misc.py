"""Activations, pooling, normalisation and upsampling: forward against independent loop or
closed-form references, backward against central finite differences (float64, rel ≤ 1e-6),
float32 runs, batch-norm running statistics, and the containers built from these layers."""
import math

import numpy as np
import pytest

from minnst.gradcheck import eval_numerical_gradient, eval_numerical_gradient_array, rel_error
from minnst.layers.activations import (ReLU, ScaledTanh, relu_backward, relu_forward,
                                       scaled_tanh_backward, scaled_tanh_forward)
from minnst.layers.base import Residual, Sequential
from minnst.layers.normalization import (BatchNorm2d, InstanceNorm2d, batch_norm_backward,
                                         batch_norm_eval_backward, batch_norm_eval_forward,
                                         batch_norm_forward, instance_norm_backward,
                                         instance_norm_forward)
from minnst.layers.pooling import (AvgPool2d, MaxPool2d, avgpool2d_backward, avgpool2d_forward,
                                   avgpool2d_naive, maxpool2d_backward, maxpool2d_forward,
                                   maxpool2d_naive)
from minnst.layers.resampling import (Upsample, upsample_nearest2d_backward,
                                      upsample_nearest2d_forward)
from minnst.layers import normalization, padding, pooling, resampling

TOL = 1e-6  # float64 layers
# Finite-difference step. f = Σ y·dy sums every output, and its rounding error divided by
# 2h swamps the small entries of a gradient when h = 1e-5 (seen: rel 3e-7 on a 2e-4 entry
# of the batch-norm dx). At 1e-4 the truncation error of these smooth maps is still far
# below TOL, and the piecewise-linear ones (ReLU, pooling) have none: their kinks are ≥ 0.05
# away (inputs from away_from_zero/distinct, pre-ReLU margins asserted).
STEP = 1e-4


def numgrad(f, x, dy):
    return eval_numerical_gradient_array(f, x, dy, h=STEP)


def away_from_zero(rng, shape, lo=0.2):
    """Magnitudes in [lo, 1.5), random signs: no kink within a finite-difference step."""
    return rng.uniform(lo, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def distinct(rng, shape):
    """All values different and ≥ 0.05 apart, so no step changes which element is a max."""
    n = math.prod(shape)
    return (rng.permutation(n).reshape(shape) - n / 2) * 0.05


def check_layer_grads(layer, x, dy, tol=TOL):
    """Gradient-check a layer object for its input and every parameter (set in place)."""
    y, cache = layer.forward(x)
    dx, grads = layer.backward(dy, cache)
    assert set(grads) == set(layer.params)
    num = numgrad(lambda z: layer.forward(z)[0], x, dy)
    assert rel_error(dx, num) < tol
    for k, p in layer.params.items():
        def f(z, p=p):
            old = p.copy()
            p[...] = z
            try:
                return layer.forward(x)[0]
            finally:
                p[...] = old
        num = numgrad(f, p, dy)
        assert rel_error(grads[k], num) < tol, k


# ---------------------------------------------------------------------------- activations

def test_relu(rng):
    x = away_from_zero(rng, (2, 3, 5, 4))
    dy = rng.standard_normal(x.shape)
    y, cache = relu_forward(x)
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0.0))
    dx = relu_backward(dy, cache)
    assert rel_error(dx, numgrad(lambda z: relu_forward(z)[0], x, dy)) < TOL
    check_layer_grads(ReLU(), x, dy)


@pytest.mark.parametrize("scale, offset", [(127.5, 127.5), (2.0, -0.5)])
def test_scaled_tanh(rng, scale, offset):
    x = rng.uniform(-2, 2, (2, 3, 3, 5))
    dy = away_from_zero(rng, x.shape, lo=0.5)
    y, cache = scaled_tanh_forward(x, scale, offset)
    np.testing.assert_allclose(y, offset + scale * np.vectorize(math.tanh)(x), rtol=1e-14)
    dx = scaled_tanh_backward(dy, cache)
    num = numgrad(lambda z: scaled_tanh_forward(z, scale, offset)[0], x, dy)
    assert rel_error(dx, num) < TOL
    check_layer_grads(ScaledTanh(scale, offset), x, dy)


def test_sequential_backward_adds_the_gradient_of_a_term_on_an_activation(rng):
    """``Sequential.backward(dy, cache, add={"t": g})`` is the gradient of
    Σ dy·y + Σ g_fixed·z, with z the input of child "t" (here: Σ a·z for a fixed a)."""
    from minnst.layers import Conv2d
    net = Sequential({"c": Conv2d(2, 3, 3, padding=1, rng=rng, dtype=np.float64), "t": ScaledTanh(2.0, 0.5)})
    x = rng.standard_normal((2, 2, 4, 5))
    dy = rng.standard_normal((2, 3, 4, 5))
    a = rng.standard_normal((2, 3, 4, 5))

    def objective(inp):
        y, cache = net.forward(inp)
        return float((dy * y).sum() + (a * cache[1][2]).sum())  # cache[1][2]: tanh's input

    _, cache = net.forward(x)
    dx, grads = net.backward(dy, cache, add={"t": a})
    num = eval_numerical_gradient(objective, x)
    assert rel_error(dx, num) < TOL
    w = net.params["c.weight"]  # the layer's own array: perturbed in place
    num_w = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        old = w[i]
        w[i] = old + 1e-5
        up = objective(x)
        w[i] = old - 1e-5
        num_w[i] = (up - objective(x)) / 2e-5
        w[i] = old
    assert rel_error(grads["c.weight"], num_w) < TOL


# -------------------------------------------------------------------------------- pooling

POOL_CASES = [  # (shape, kernel, stride)
    ((2, 3, 6, 4), 2, 2),  # fast path, even sizes
    ((2, 2, 7, 5), 2, 2),  # fast path, odd H and W: last row and column dropped
    ((1, 2, 7, 6), 3, 3),  # fast path, k = 3, non-square
    ((2, 2, 7, 5), 3, 2),  # overlapping windows
    ((1, 3, 7, 7), 2, 3),  # gaps between windows
    ((1, 2, 5, 6), 3, 1),  # dense overlap
    ((1, 1, 4, 5), 1, 2),  # 1×1 kernel: subsampling
    ((1, 2, 3, 4), 1, 1),  # 1×1 kernel, stride 1: the identity
]
POOLS = {"max": (maxpool2d_forward, maxpool2d_backward, maxpool2d_naive, MaxPool2d),
         "avg": (avgpool2d_forward, avgpool2d_backward, avgpool2d_naive, AvgPool2d)}


@pytest.mark.parametrize("kind", POOLS)
@pytest.mark.parametrize("shape, k, s", POOL_CASES)
def test_pool_forward_backward(rng, kind, shape, k, s):
    forward, backward, naive, cls = POOLS[kind]
    x = distinct(rng, shape)
    y, cache = forward(x, k, s)
    H, W = shape[2:]
    assert y.shape == shape[:2] + ((H - k) // s + 1, (W - k) // s + 1)  # floor, as PyTorch
    np.testing.assert_allclose(y, naive(x, k, s), rtol=1e-13, atol=0)
    dy = rng.standard_normal(y.shape)
    dx = backward(dy, cache)
    assert dx.shape == x.shape
    assert rel_error(dx, numgrad(lambda z: forward(z, k, s)[0], x, dy)) < TOL
    check_layer_grads(cls(k, s), x, dy)


@pytest.mark.parametrize("shape, k, s", [((2, 2, 7, 5), 2, 2), ((1, 2, 6, 7), 3, 3),
                                         ((2, 2, 7, 6), 3, 2), ((1, 2, 6, 5), 2, 1)])
def test_maxpool_ties_route_to_first_max(rng, shape, k, s):
    x = rng.integers(0, 2, shape).astype(np.float64)  # many ties, whole windows equal
    y, cache = maxpool2d_forward(x, k, s)
    dy = rng.standard_normal(y.shape)
    ref = np.zeros_like(x)
    N, C, OH, OW = y.shape
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    a = int(np.argmax(x[n, c, i * s:i * s + k, j * s:j * s + k]))  # first max
                    ref[n, c, i * s + a // k, j * s + a % k] += dy[n, c, i, j]
    np.testing.assert_allclose(maxpool2d_backward(dy, cache), ref, rtol=1e-15, atol=0)


@pytest.mark.parametrize("k, s", [(2, 2), (3, 2)])
def test_maxpool_cache_is_compact_and_nan_propagates(rng, k, s):
    x = distinct(rng, (1, 2, 6, 6))
    x[0, 1, 1, 1] = np.nan
    y, cache = maxpool2d_forward(x, k, s)
    arrays = [f for f in cache if isinstance(f, np.ndarray)]
    assert len(arrays) == 1 and cache.idx.dtype == np.uint8 and cache.idx.size == y.size
    assert np.isnan(y[0, 1, 0, 0]) and not np.isnan(y[0, 0]).any()
    assert cache.idx[0, 0, 0, 1] == (1 * k + 1)  # the NaN's own offset in its window, not the first


@pytest.mark.parametrize("data", ["ties", "distinct", "nan"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 2, 8, 8), (3, 1, 2, 3)])
def test_lazy_maxpool_cache_gives_the_same_values_and_gradient(rng, data, shape):
    """``lazy=True`` (VGG16's pools): the cache keeps the input instead of the indices,
    and the backward finds them band by band: the same y and the same dx, bit for bit, as
    the index cache, with ties, rows and columns no window covers, and a NaN window."""
    x = rng.integers(0, 2, shape).astype(np.float32) if data == "ties" else distinct(rng, shape)
    if data == "nan":
        x[0, 0, 1, 0] = np.nan
    x = channels_last(x)  # the convolutions' memory order, as in VGG16
    y, cache = maxpool2d_forward(x, 2, 2)
    y_lazy, lazy = maxpool2d_forward(x, 2, 2, lazy=True)
    assert lazy.idx is None and lazy.x is x
    np.testing.assert_array_equal(y_lazy, y)
    dy = rng.standard_normal(y.shape).astype(x.dtype)
    np.testing.assert_array_equal(maxpool2d_backward(dy, lazy), maxpool2d_backward(dy, cache))
    assert maxpool2d_forward(x, 2, 1, lazy=True)[1].idx is not None  # 2×2/2 only


def test_pool_rejects_window_larger_than_input():
    with pytest.raises(ValueError):
        maxpool2d_forward(np.zeros((1, 1, 2, 5)), 3, 3)
    with pytest.raises(ValueError):
        avgpool2d_forward(np.zeros((1, 1, 5, 2)), 3, 1)


@pytest.mark.parametrize("pad,r0,r1", [(1, 0, 5), (2, 3, 11), (1, 4, 9)])
def test_padded_rows_with_a_mask_are_the_masked_input_padded(rng, pad, r0, r1):
    """``padded_rows_cl(..., mask=m)``: the band of pad2d(x · (m > 0)), bit for bit (the
    input gradient of a convolution a ReLU followed); reflection would copy unmasked
    pixels into the border, so it is refused."""
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    m = np.maximum(rng.standard_normal(x.shape), 0).astype(np.float32)
    want = padding.pad2d(x * (m > 0), pad, "zero").transpose(0, 2, 3, 1)[:, r0:r1]
    got = padding.padded_rows_cl(x, r0, r1, pad, "zero", mask=m)
    assert got.shape == want.shape and np.array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))  # −0.0 where a negative x is masked
    with pytest.raises(ValueError, match="zero padding"):
        padding.padded_rows_cl(x, r0, r1, pad, "reflect", mask=m)


# -------------------------------------------------------------------------- normalisation

def reference_norm(x, gamma, beta, eps, axes):
    """Loop over the statistics groups, numpy's mean/var (ddof=0) on each."""
    y = np.empty_like(x)
    if axes == (2, 3):
        groups = [(n, c) for n in range(x.shape[0]) for c in range(x.shape[1])]
    else:
        groups = [(slice(None), c) for c in range(x.shape[1])]
    for g in groups:
        v = x[g]
        y[g] = (v - v.mean()) / np.sqrt(v.var() + eps) * gamma[g[1]] + beta[g[1]]
    return y


def check_norm_grads(forward, backward, x, gamma, beta, dy):
    dx, dgamma, dbeta = backward(dy, forward(x, gamma, beta)[1])
    assert rel_error(dx, numgrad(lambda z: forward(z, gamma, beta)[0], x, dy)) < TOL
    assert rel_error(dgamma, numgrad(lambda g: forward(x, g, beta)[0], gamma, dy)) < TOL
    assert rel_error(dbeta, numgrad(lambda b: forward(x, gamma, b)[0], beta, dy)) < TOL


def channels_last(a):
    """The same values in channels-last memory (N, H, W, C), seen as NCHW: what the
    convolutions return, and what the norms then run on as rows of W·C floats."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 2, 3, 7)])
def test_instance_norm(rng, shape, layout):
    C = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    dy = rng.standard_normal(shape)
    if layout == "channels_last":
        x, dy = channels_last(x), channels_last(dy)
    y, _ = instance_norm_forward(x, gamma, beta)
    np.testing.assert_allclose(y, reference_norm(x, gamma, beta, 1e-5, (2, 3)), rtol=1e-12, atol=1e-12)
    check_norm_grads(instance_norm_forward, instance_norm_backward, x, gamma, beta, dy)
    # affine=False: no parameter gradients
    y0, cache = instance_norm_forward(x, None, None)
    np.testing.assert_allclose(y0, reference_norm(x, np.ones(C), np.zeros(C), 1e-5, (2, 3)), atol=1e-12)
    dx0, dg0, db0 = instance_norm_backward(dy, cache)
    assert dg0 is None and db0 is None
    num = numgrad(lambda z: instance_norm_forward(z, None, None)[0], x, dy)
    assert rel_error(dx0, num) < TOL
    layer = InstanceNorm2d(C, dtype=np.float64)
    layer.params["weight"][...], layer.params["bias"][...] = gamma, beta
    check_layer_grads(layer, x, dy)
    assert InstanceNorm2d(C, affine=False).params == {}


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 2, 3, 1)])
def test_batch_norm_train(rng, shape):
    C = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    dy = rng.standard_normal(shape)
    y, cache = batch_norm_forward(x, gamma, beta)
    np.testing.assert_allclose(y, reference_norm(x, gamma, beta, 1e-5, (0, 2, 3)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.mean, x.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(cache.var, x.transpose(1, 0, 2, 3).reshape(C, -1).var(axis=1, ddof=1),
                               rtol=1e-13)
    check_norm_grads(batch_norm_forward, batch_norm_backward, x, gamma, beta, dy)


def test_batch_norm_eval(rng):
    shape, C = (2, 3, 3, 4), 3
    x = rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    dy = rng.standard_normal(shape)
    y, _ = batch_norm_eval_forward(x, gamma, beta, rm, rv, 1e-5)
    ref = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5) * gamma[:, None, None] + beta[:, None, None]
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-13)

    def fwd(x_, g_, b_):
        return batch_norm_eval_forward(x_, g_, b_, rm, rv, 1e-5)

    check_norm_grads(fwd, batch_norm_eval_backward, x, gamma, beta, dy)


def test_batch_norm_needs_two_values_per_channel():
    with pytest.raises(ValueError):
        batch_norm_forward(np.zeros((1, 2, 1, 1)), None, None)


# ---------------------------------------------------------------------- argument checks

BAD_CALLS = {  # op: (module, arguments that fail its check)
    "maxpool2d_forward": (pooling, (np.zeros((1, 1, 2, 5)), 3, 3)),
    "avgpool2d_forward": (pooling, (np.zeros((1, 5, 2)), 2, 2)),
    "upsample_nearest2d_forward": (resampling, (np.zeros((1, 1, 2, 2)), 1.5)),
    "instance_norm_forward": (normalization, (np.zeros((1, 3, 2, 2)), np.ones(2), None)),
    "batch_norm_forward": (normalization, (np.zeros((1, 2, 1, 1)), None, None)),
    "pad2d": (padding, (np.zeros((1, 1, 3, 3)), 3, "reflect")),
    "padded_rows_cl": (padding, (np.zeros((1, 1, 3, 3)), 0, 2, 1, "mirror")),
}


@pytest.mark.parametrize("op", BAD_CALLS)
def test_both_paths_share_the_argument_checks(op):
    """``op_cpu`` and the kernel launcher ``op_gpu`` run the same check: the same
    ValueError, raised before anything reaches a kernel (so no GPU is needed here)."""
    module, args = BAD_CALLS[op]
    messages = []
    for path in ("cpu", "gpu"):
        with pytest.raises(ValueError) as err:
            getattr(module, f"{op}_{path}")(*args)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("gamma, beta", [(np.ones((3, 2)), None),           # (N, C) with N wrong
                                         (np.ones(2), np.zeros((2, 2))),    # (C,) with (N, C)
                                         (None, np.zeros((2, 2, 1)))])
def test_per_sample_instance_norm_paths_share_the_check(gamma, beta):
    """Per-sample γ, β (N, C): the same ValueError from the NumPy path and the launcher."""
    x = np.zeros((2, 2, 3, 3))
    messages = []
    for fwd in (normalization.instance_norm_forward_cpu, normalization.instance_norm_forward_gpu):
        with pytest.raises(ValueError) as err:
            fwd(x, gamma, beta)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_batch_norm_layer_running_stats(rng):
    C, eps = 3, 1e-5
    layer = BatchNorm2d(C, dtype=np.float64)
    layer.params["weight"][...] = rng.uniform(0.5, 1.5, C)
    layer.params["bias"][...] = rng.standard_normal(C)
    rm, rv = layer.buffers["running_mean"], layer.buffers["running_var"]
    x1, x2 = rng.standard_normal((2, C, 4, 5)) + 1, rng.standard_normal((2, C, 3, 3)) * 3
    layer.forward(x1)
    layer.forward(x2)

    def stats(x):
        flat = x.transpose(1, 0, 2, 3).reshape(C, -1)
        return flat.mean(axis=1), flat.var(axis=1, ddof=1)

    (m1, v1), (m2, v2) = stats(x1), stats(x2)
    exp_mean = 0.9 * (0.9 * 0.0 + 0.1 * m1) + 0.1 * m2
    exp_var = 0.9 * (0.9 * 1.0 + 0.1 * v1) + 0.1 * v2
    assert layer.buffers["running_mean"] is rm and layer.buffers["running_var"] is rv  # updated in place
    np.testing.assert_allclose(rm, exp_mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(rv, exp_var, rtol=1e-13)

    layer.eval()
    x3 = rng.standard_normal((1, C, 4, 3))
    w, b = layer.params["weight"], layer.params["bias"]
    ref = (x3 - exp_mean[:, None, None]) / np.sqrt(exp_var[:, None, None] + eps) * w[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(layer(x3), ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(rm, exp_mean, rtol=1e-13, atol=1e-15)  # eval leaves them alone
    check_layer_grads(layer, x3, rng.standard_normal(x3.shape))


# ----------------------------------------------------------------------------- upsampling

@pytest.mark.parametrize("scale", [1, 2, 3])
def test_upsample_nearest(rng, scale):
    x = rng.standard_normal((2, 3, 3, 4))
    y, cache = upsample_nearest2d_forward(x, scale)
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x, scale, axis=2), scale, axis=3))
    assert not np.shares_memory(y, x)
    dy = rng.standard_normal(y.shape)
    dx = upsample_nearest2d_backward(dy, cache)
    num = numgrad(lambda z: upsample_nearest2d_forward(z, scale)[0], x, dy)
    assert rel_error(dx, num) < TOL
    check_layer_grads(Upsample(scale), x, dy)


@pytest.mark.parametrize("scale", [2, 3])
def test_upsample_keeps_channels_last_memory(rng, scale):
    """An NCHW view of channels-last memory (what the convolutions return) is upsampled in
    that memory order, with the same values and the same gradient as a plain NCHW array."""
    x = rng.standard_normal((2, 3, 5, 6)).transpose(0, 3, 1, 2)  # (2, 6, 3, 5), channels-last memory
    assert not x.flags.c_contiguous
    y, cache = upsample_nearest2d_forward(x, scale)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x, scale, axis=2), scale, axis=3))
    dy = rng.standard_normal(y.shape[:1] + y.shape[2:] + y.shape[1:2]).transpose(0, 3, 1, 2)
    dx = upsample_nearest2d_backward(dy, cache)
    ref = upsample_nearest2d_backward(np.ascontiguousarray(dy), cache)
    assert dx.shape == x.shape and rel_error(dx, ref) < 1e-12  # another summation order


# ---------------------------------------------------------------------------------- float32

FLOAT32_LAYERS = {
    "relu": lambda dt: ReLU(),
    "scaled_tanh": lambda dt: ScaledTanh(),
    "maxpool2": lambda dt: MaxPool2d(2, 2),
    "maxpool3/2": lambda dt: MaxPool2d(3, 2),
    "avgpool2": lambda dt: AvgPool2d(2, 2),
    "avgpool3/2": lambda dt: AvgPool2d(3, 2),
    "instance_norm": lambda dt: InstanceNorm2d(3, dtype=dt),
    "instance_norm_plain": lambda dt: InstanceNorm2d(3, affine=False, dtype=dt),
    "batch_norm": lambda dt: BatchNorm2d(3, dtype=dt),
    "batch_norm_eval": lambda dt: BatchNorm2d(3, dtype=dt).eval(),
    "upsample": lambda dt: Upsample(2),
}


@pytest.mark.parametrize("name", FLOAT32_LAYERS)
def test_float32_keeps_dtype_and_agrees_with_float64(rng, name):
    """Also: neither forward nor backward modifies its arguments."""
    x = distinct(rng, (2, 3, 7, 5))
    x32 = x.astype(np.float32)
    out = {}
    for dt, xin in ((np.float64, x), (np.float32, x32)):
        layer = FLOAT32_LAYERS[name](dt)
        x_before = xin.copy()
        y, cache = layer.forward(xin)
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(dt)
        dy_before = dy.copy()
        dx, grads = layer.backward(dy, cache)
        np.testing.assert_array_equal(xin, x_before)
        np.testing.assert_array_equal(dy, dy_before)
        assert not np.shares_memory(y, xin) and not np.shares_memory(dx, dy)
        assert y.dtype == dt and dx.dtype == dt and dx.shape == x.shape
        assert all(g.dtype == dt for g in grads.values())
        out[dt] = (y, dx)
    for a32, a64 in zip(out[np.float32], out[np.float64]):
        np.testing.assert_allclose(a32, a64, rtol=1e-4, atol=1e-5 * np.abs(a64).max())


def test_float32_functions_with_float64_parameters_keep_dtype(rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    g, b, rm, rv = np.ones(3), np.zeros(3), np.zeros(3), np.ones(3)  # float64
    for y, cache in (instance_norm_forward(x, g, b), batch_norm_forward(x, g, b),
                     batch_norm_eval_forward(x, g, b, rm, rv)):
        assert y.dtype == np.float32


# ------------------------------------------------------------------------------ containers

def randomize(net, rng):
    for k, p in net.params.items():
        p[...] = rng.uniform(0.5, 1.5, p.shape) if k.endswith("weight") else rng.standard_normal(p.shape)


def test_residual_instance_norm_relu_gradcheck(rng):
    C = 3
    net = Residual(Sequential([InstanceNorm2d(C, dtype=np.float64), ReLU()]))
    assert set(net.params) == {"body.0.weight", "body.0.bias"}
    randomize(net, rng)
    x = rng.standard_normal((2, C, 5, 4))
    pre_relu = instance_norm_forward(x, net.params["body.0.weight"], net.params["body.0.bias"])[0]
    assert np.abs(pre_relu).min() > 1e-2  # the ReLU kink stays out of reach of the steps
    check_layer_grads(net, x, rng.standard_normal(x.shape))


def test_sequential_of_all_layers_gradcheck(rng):
    C = 3
    net = Sequential({
        "res": Residual(Sequential([InstanceNorm2d(C, dtype=np.float64), ReLU()])),
        "bn": BatchNorm2d(C, dtype=np.float64),
        "pool": AvgPool2d(3, 2),
        "up": Upsample(2),
        "out": ScaledTanh(2.0, 0.5),
    })
    assert set(net.params) == {"res.body.0.weight", "res.body.0.bias", "bn.weight", "bn.bias"}
    randomize(net, rng)
    x = rng.standard_normal((2, C, 7, 6))
    pre_relu = instance_norm_forward(x, net.params["res.body.0.weight"], net.params["res.body.0.bias"])[0]
    assert np.abs(pre_relu).min() > 1e-2
    y, _ = net.forward(x)
    assert y.shape == (2, C, 6, 4)
    check_layer_grads(net, x, rng.standard_normal(y.shape))


def test_state_dict_round_trip(rng):
    C = 3

    def make():
        return Sequential([Residual(Sequential([InstanceNorm2d(C), ReLU()])), BatchNorm2d(C), MaxPool2d(2)])

    net = make()
    randomize(net, rng)
    x = rng.standard_normal((2, C, 6, 5)).astype(np.float32)
    net.forward(x)  # training step: running statistics move away from 0 and 1
    state = net.state_dict()
    assert set(state) == {"0.body.0.weight", "0.body.0.bias", "1.weight", "1.bias",
                          "1.running_mean", "1.running_var"}
    other = make()
    other.load_state_dict(state)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
        assert not np.shares_memory(v, state[k])
    net.eval(), other.eval()
    np.testing.assert_array_equal(other(x), net(x))
    with pytest.raises(ValueError):
        other.load_state_dict({k: v for k, v in state.items() if k != "1.running_var"})


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("affine", ["none", "shared", "per_sample"])
@pytest.mark.parametrize("relu", [False, True])
def test_instance_norm_infer_is_the_forward(rng, affine, relu, layout):
    """The inference norm (no cache, the ReLU in its last pass, cache-sized bands) equals
    the training forward followed by a ReLU, to float64 rounding; rows of 5 channels and a
    band limit that cuts each image into several bands; either memory layout."""
    x = rng.standard_normal((2, 5, 13, 11)) * 3 + 1
    if layout == "channels_last":
        x = channels_last(x)
    shape = {"none": None, "shared": (5,), "per_sample": (2, 5)}[affine]
    gamma = None if shape is None else rng.standard_normal(shape)
    beta = None if shape is None else rng.standard_normal(shape)
    want = normalization.instance_norm_forward(x, gamma, beta)[0]
    want = np.maximum(want, 0) if relu else want
    old = normalization.INFER_BAND_BYTES
    try:
        normalization.INFER_BAND_BYTES = 3 * 11 * 5 * 8  # three rows a band
        got = normalization.instance_norm_infer(x, gamma, beta, relu=relu)
    finally:
        normalization.INFER_BAND_BYTES = old
    assert got.shape == x.shape and rel_error(got, want) < 1e-12


def test_transformer_inference_is_its_forward():
    """``TransformerNet.infer`` (norm + ReLU fused, no caches) against ``forward``, for a
    plain and a many-style network with a blend: the same pixels to float32 rounding."""
    from minnst.transformer import TransformerConfig, TransformerNet

    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 40, 48)).astype(np.float32)
    for cfg, style in ((TransformerConfig(width=0.25), None),
                       (TransformerConfig(width=0.25, styles=("a", "b")), {"a": 0.3, "b": 0.7})):
        net = TransformerNet(cfg, seed=1)
        mix = None if style is None else net.style_mix(style, 2)
        assert np.abs(net.infer(x, style) - net.forward(x, mix)[0]).max() < 0.01  # of 255
