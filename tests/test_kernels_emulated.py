"""Every CUDA kernel, run on the CPU by the emulator (tests/kernel_emu), against its NumPy
twin: the real launchers (``op_gpu``, beside ``op_cpu`` in each op's module) called on
NumPy arrays, random inputs, odd shapes, both memory layouts, float32 and float64.

Under the ``emulated`` fixture the launchers' kernel modules come from the emulator,
every output buffer starts as garbage (NaN / 0xAB), grids are capped at a few blocks so
that the grid-stride loops run several rounds, and every launch runs under two thread
schedules that must agree bit for bit (see kernel_emu/emu.py). Selection, copies and the
sums whose order the kernels reproduce are compared exactly; reductions with tolerances
(float64 1e-12, float32 1e-5 relative).
"""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernel_emu import emu
from minnst import losses
from minnst.kernels import launch
from minnst.layers import activations, conv, im2col, normalization, padding, pooling, resampling

pytestmark = pytest.mark.skipif(shutil.which(emu.CXX) is None,
                                reason=f"{emu.CXX} not found: the kernel emulation compiles the .cu files with it")

TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = (np.float64, np.float32)


def _garbage_empty(xp, shape, dtype):
    a = np.empty(shape, dtype=dtype)
    if a.dtype.kind == "f":
        a.fill(np.nan)
    else:
        a.view(np.uint8).fill(0xAB)
    return a


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(launch, "host_module", emu.load_module)
    monkeypatch.setattr(launch, "empty", _garbage_empty)
    monkeypatch.setattr(launch, "THREADS", 64)
    monkeypatch.setattr(launch, "MAX_BLOCKS", 3)
    monkeypatch.setattr(normalization, "NORM_BLOCK_NHWC", (4, 3))   # odd shapes: few fibers,
    monkeypatch.setattr(normalization, "NORM_BLOCK_NCHW", (1, 12))  # not powers of two


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def channels_last(a):
    """The same NCHW array with channels-last memory."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


LAYOUTS = {"nchw": lambda a: np.ascontiguousarray(a), "nhwc": channels_last,
           "strided": lambda a: np.pad(a, ((0, 0), (0, 0), (0, 1), (1, 0)))[:, :, :-1, 1:]}


def close(a, b, dtype, scale=1.0):
    np.testing.assert_allclose(a, b, rtol=TOL[dtype] * scale, atol=TOL[dtype] * scale)


# ------------------------------------------------------------------------ the emulator itself

SELFTEST = Path(emu.__file__).with_name("selftest.cu")
SELFTEST_NAMES = [f"{k}<float>" for k in
                  ("racy_sum", "block_sum_kernel", "divergent_barrier", "out_of_bounds", "write_race")]


@pytest.fixture(scope="module")
def selftest():
    return emu.load_module(str(SELFTEST), SELFTEST_NAMES)


def test_emulator_runs_block_reduction_with_barriers(selftest):
    x = np.arange(1, 97, dtype=np.float32)
    out = np.zeros(1)
    selftest.get_function("block_sum_kernel<float>")((1,), (96,), (x, out))
    assert out[0] == x.sum()


def test_emulator_catches_missing_barrier(selftest):
    x = np.arange(1, 9, dtype=np.float32)
    with pytest.raises(emu.EmulationError, match="schedules"):
        selftest.get_function("racy_sum<float>")((1,), (8,), (x, np.zeros(1, np.float32)))


def test_emulator_catches_divergent_barrier(selftest):
    with pytest.raises(emu.EmulationError, match="divergent __syncthreads"):
        selftest.get_function("divergent_barrier<float>")((1,), (16,), (np.zeros(16, np.float32),))


def test_emulator_catches_out_of_bounds_write(selftest):
    with pytest.raises(emu.EmulationError, match="outside the array"):
        selftest.get_function("out_of_bounds<float>")((2,), (4,), (np.zeros(10, np.float32), np.int32(10)))


def test_emulator_catches_write_race(selftest):
    with pytest.raises(emu.EmulationError, match="schedules"):
        selftest.get_function("write_race<float>")((1,), (8,), (np.zeros(1, np.float32),))


@pytest.mark.parametrize("args, match", [
    ((np.zeros(4, np.float32), 4), "NumPy scalars"),                     # Python int
    ((np.zeros(4, np.float32), np.int64(4)), "takes 'i4', got 'i8'"),   # wrong scalar type
    ((np.zeros(4, np.float64), np.int32(4)), "takes '\\*f4', got '\\*f8'"),  # wrong dtype
    ((np.zeros(8, np.float32)[::2], np.int32(4)), "not C-contiguous"),
    ((np.zeros(4, np.float32),), "takes 2 arguments"),
])
def test_emulator_checks_arguments(selftest, args, match):
    with pytest.raises(emu.EmulationError, match=match):
        selftest.get_function("out_of_bounds<float>")((1,), (4,), args)


def test_importing_minnst_never_imports_cupy():
    code = ("import sys, minnst, minnst.kernels, minnst.layers, minnst.losses, minnst.vgg; "
            "sys.exit('cupy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


def test_launchers_refuse_numpy_without_emulation():
    with pytest.raises(RuntimeError, match="CuPy arrays"):
        activations.relu_forward_gpu(np.ones(3, np.float32))


def test_launchers_refuse_other_dtypes(emulated):
    with pytest.raises(TypeError, match="float32 or float64"):
        activations.relu_forward_gpu(np.ones(3, np.int32))


# ------------------------------------------------------------------------------- ReLU

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_relu(emulated, rng, dtype, layout):
    x = LAYOUTS[layout](rng.standard_normal((2, 3, 5, 7)).astype(dtype))
    x[0, 0, 0, :3] = [np.nan, 0.0, -0.0]
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, cache = activations.relu_forward_gpu(x)
    y_ref, cache_ref = activations.relu_forward_cpu(x)
    np.testing.assert_array_equal(y, y_ref)
    dx = activations.relu_backward_gpu(channels_last(dy), cache)
    np.testing.assert_array_equal(dx, activations.relu_backward_cpu(dy, cache_ref))
    assert dx.dtype == dtype


def test_relu_odd_sizes(emulated, rng):
    for shape in [(1,), (7,), (3, 1, 1, 1), (13, 17)]:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(activations.relu_forward_gpu(x)[0], np.maximum(x, 0))


# ---------------------------------------------------------------------------- pooling

POOL_CASES = [((2, 3, 8, 8), 2, 2), ((2, 3, 7, 9), 2, 2), ((1, 5, 9, 7), 3, 2),
              ((2, 2, 7, 8), 2, 3), ((1, 3, 6, 5), 3, 1), ((1, 2, 5, 6), 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape, k, s", POOL_CASES)
def test_maxpool(emulated, rng, dtype, layout, shape, k, s):
    # small integers: many ties, which must route to the first maximum as on the CPU
    x = LAYOUTS[layout](rng.integers(0, 4, shape).astype(dtype))
    y, cache = pooling.maxpool2d_forward_gpu(x, k, s)
    y_ref, cache_ref = pooling.maxpool2d_forward_cpu(x, k, s)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(cache.idx, cache_ref.idx)
    assert cache.idx.dtype == cache_ref.idx.dtype and cache[1:] == cache_ref[1:]
    dy = rng.standard_normal(y.shape).astype(dtype)
    for dyl in (np.ascontiguousarray(dy), channels_last(dy)):  # either layout of dy
        np.testing.assert_array_equal(pooling.maxpool2d_backward_gpu(dyl, cache),
                                      pooling.maxpool2d_backward_cpu(dy, cache_ref))


def test_maxpool_nan_and_large_window(emulated, rng):
    x = rng.standard_normal((1, 2, 18, 19)).astype(np.float32)
    x[0, 0, 3, 4] = np.nan
    y, cache = pooling.maxpool2d_forward_gpu(x, 17, 1)  # 289 window elements: int32 index
    y_ref, cache_ref = pooling.maxpool2d_forward_cpu(x, 17, 1)
    np.testing.assert_array_equal(y, y_ref)
    assert cache.idx.dtype == np.int32
    np.testing.assert_array_equal(cache.idx, cache_ref.idx)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(pooling.maxpool2d_backward_gpu(dy, cache),
                                  pooling.maxpool2d_backward_cpu(dy, cache_ref))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("shape, k, s", POOL_CASES)
def test_avgpool(emulated, rng, dtype, layout, shape, k, s):
    x = LAYOUTS[layout](rng.standard_normal(shape).astype(dtype))
    y, cache = pooling.avgpool2d_forward_gpu(x, k, s)
    y_ref, cache_ref = pooling.avgpool2d_forward_cpu(x, k, s)
    close(y, y_ref, dtype)
    assert cache == cache_ref
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(pooling.avgpool2d_backward_gpu(dy, cache),
                                  pooling.avgpool2d_backward_cpu(dy, cache_ref))


# ------------------------------------------------------------------------- upsampling

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("shape, scale", [((2, 3, 4, 5), 2), ((1, 2, 3, 3), 3), ((1, 1, 2, 5), 1)])
def test_upsample_nearest(emulated, rng, dtype, layout, shape, scale):
    x = LAYOUTS[layout](rng.standard_normal(shape).astype(dtype))
    y, cache = resampling.upsample_nearest2d_forward_gpu(x, scale)
    y_ref, cache_ref = resampling.upsample_nearest2d_forward_cpu(x, scale)
    np.testing.assert_array_equal(y, y_ref)
    assert cache == cache_ref
    dy = LAYOUTS[layout](rng.standard_normal(y.shape).astype(dtype))
    close(resampling.upsample_nearest2d_backward_gpu(dy, cache),
          resampling.upsample_nearest2d_backward_cpu(dy, cache_ref), dtype)


# ---------------------------------------------------------------------- normalisation

def _norm_params(rng, C, affine, dtype):
    if affine == "none":
        return None, None
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype) if affine == "both" else None
    return gamma, beta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (3, 13, 3, 5)])
@pytest.mark.parametrize("affine", ["both", "gamma", "none"])
@pytest.mark.parametrize("kind", ["instance", "batch"])
def test_norm(emulated, rng, dtype, layout, shape, affine, kind):
    x = LAYOUTS[layout]((rng.standard_normal(shape) * 2 + 0.5).astype(dtype))
    dy = LAYOUTS[layout](rng.standard_normal(shape).astype(dtype))
    gamma, beta = _norm_params(rng, shape[1], affine, dtype)
    fwd_gpu, bwd_gpu, fwd, bwd = (getattr(normalization, f"{kind}_norm_{pass_}")
                                  for pass_ in ("forward_gpu", "backward_gpu", "forward_cpu", "backward_cpu"))
    y, cache = fwd_gpu(x, gamma, beta, 1e-5)
    y_ref, cache_ref = fwd(x, gamma, beta, 1e-5)
    close(y, y_ref, dtype, 10)
    norm, norm_ref = (cache.norm, cache_ref.norm) if kind == "batch" else (cache, cache_ref)
    close(norm.xhat, norm_ref.xhat, dtype, 10)
    close(norm.inv_std, norm_ref.inv_std, dtype, 10)
    assert norm.axes == norm_ref.axes and norm.has_beta == norm_ref.has_beta
    if kind == "batch":
        close(cache.mean, cache_ref.mean, dtype, 10)
        close(cache.var, cache_ref.var, dtype, 10)
    dx, dgamma, dbeta = bwd_gpu(dy, cache)
    dx_ref, dgamma_ref, dbeta_ref = bwd(dy, cache_ref)
    close(dx, dx_ref, dtype, 100)
    for a, b in ((dgamma, dgamma_ref), (dbeta, dbeta_ref)):
        assert (a is None) == (b is None)
        if a is not None:
            close(a, b, dtype, 10)
    assert y.dtype == dx.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (3, 13, 3, 5), (4, 3, 1, 2)])
@pytest.mark.parametrize("affine", ["both", "gamma", "beta"])
def test_instance_norm_per_sample_affine(emulated, rng, dtype, layout, shape, affine):
    """Per-sample γ, β (N, C) (the kernels' affine group stride sA = C): the launchers
    against the NumPy twins, dγ and dβ the (N, C) per-sample sums."""
    N, C = shape[:2]
    x = LAYOUTS[layout]((rng.standard_normal(shape) * 2 + 0.5).astype(dtype))
    dy = LAYOUTS[layout](rng.standard_normal(shape).astype(dtype))
    gamma = rng.uniform(0.5, 1.5, (N, C)).astype(dtype) if affine != "beta" else None
    beta = rng.standard_normal((N, C)).astype(dtype) if affine != "gamma" else None
    y, cache = normalization.instance_norm_forward_gpu(x, gamma, beta, 1e-5)
    y_ref, cache_ref = normalization.instance_norm_forward_cpu(x, gamma, beta, 1e-5)
    close(y, y_ref, dtype, 10)
    assert cache.per_sample_affine and cache_ref.per_sample_affine
    dx, dgamma, dbeta = normalization.instance_norm_backward_gpu(dy, cache)
    dx_ref, dgamma_ref, dbeta_ref = normalization.instance_norm_backward_cpu(dy, cache_ref)
    close(dx, dx_ref, dtype, 100)
    for a, b in ((dgamma, dgamma_ref), (dbeta, dbeta_ref)):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape == (N, C)
            close(a, b, dtype, 10)
    # row n of the per-sample parameters is what sample n alone gets with (C,) ones
    for n in range(N):
        g_n = None if gamma is None else gamma[n]
        b_n = None if beta is None else beta[n]
        y_n, _ = normalization.instance_norm_forward_gpu(x[n:n + 1], g_n, b_n, 1e-5)
        np.testing.assert_array_equal(y[n:n + 1], y_n)


def test_norm_production_block_shapes(emulated, rng, monkeypatch):
    """The launch shapes the GPU uses: (32, 8) channels-last and (1, 256) NCHW."""
    monkeypatch.setattr(normalization, "NORM_BLOCK_NHWC", (32, 8))
    monkeypatch.setattr(normalization, "NORM_BLOCK_NCHW", (1, 256))
    for layout in ("nchw", "nhwc"):
        x = LAYOUTS[layout](rng.standard_normal((2, 35, 6, 7)))
        y, cache = normalization.instance_norm_forward_gpu(x, None, None)
        y_ref, cache_ref = normalization.instance_norm_forward_cpu(x, None, None)
        close(y, y_ref, np.float64)
        dy = rng.standard_normal(x.shape)
        close(normalization.instance_norm_backward_gpu(dy, cache)[0],
              normalization.instance_norm_backward_cpu(dy, cache_ref)[0], np.float64, 100)


# ------------------------------------------------------------------------ im2col / col2im

IM2COL_CASES = [  # (N, H, W, C), KH, KW, stride, (i0, i1)
    ((2, 7, 6, 3), 3, 3, 1, (0, 5)), ((1, 9, 8, 2), 3, 3, 2, (1, 4)),
    ((2, 6, 7, 5), 1, 1, 1, (2, 6)), ((1, 11, 10, 1), 5, 4, 3, (0, 3)),
    ((1, 8, 8, 4), 9, 9, 1, (0, 0)), ((3, 5, 5, 2), 2, 3, 2, (1, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, KH, KW, s, band", IM2COL_CASES)
def test_im2col_and_col2im(emulated, rng, dtype, shape, KH, KW, s, band):
    N, Hp, Wp, C = shape
    if KH > Hp:
        pytest.skip("kernel larger than the input")
    OW = (Wp - KW) // s + 1
    i0, i1 = band
    xpad = rng.standard_normal(shape).astype(dtype)
    cols = im2col.im2col_gpu(xpad, KH, KW, s, i0, i1, OW)
    np.testing.assert_array_equal(cols, im2col.im2col_cpu(xpad, KH, KW, s, i0, i1, OW))
    out = np.empty_like(cols)
    assert im2col.im2col_gpu(xpad, KH, KW, s, i0, i1, OW, out=out) is out
    np.testing.assert_array_equal(out, cols)
    # the adjoint, accumulated in place into a non-zero buffer: same sums, same order
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    start = rng.standard_normal(shape).astype(dtype)
    got, ref = start.copy(), start.copy()
    im2col.col2im_add_gpu(got, dcols, s, i0)
    im2col.col2im_add_cpu(ref, dcols, s, i0)
    np.testing.assert_array_equal(got, ref)


def test_col2im_into_a_noncontiguous_buffer(emulated, rng):
    big = rng.standard_normal((2, 6, 7, 6))
    got, ref = big.copy(), big.copy()
    dcols = rng.standard_normal((2, 4, 5, 3, 3, 3))
    im2col.col2im_add_gpu(got[..., ::2], dcols, 1, 0)
    im2col.col2im_add_cpu(ref[..., ::2], dcols, 1, 0)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [dict(C=3, F=4, k=3, s=1, p=1, mode="zero"),
                                  dict(C=2, F=3, k=3, s=2, p=1, mode="reflect"),
                                  dict(C=3, F=2, k=9, s=1, p=4, mode="reflect")])
def test_conv_with_kernels_wired_in(emulated, rng, monkeypatch, dtype, case):
    """conv2d by ``method="im2col"`` with the im2col and padding dispatchers sending the
    NumPy arrays to their kernels: what the GPU path runs, against the CPU's own path."""
    C, F, k, s, p = case["C"], case["F"], case["k"], case["s"], case["p"]
    x = rng.standard_normal((2, C, 10, 9)).astype(dtype)
    w = rng.standard_normal((F, C, k, k)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    dy = rng.standard_normal((2, F, (10 + 2 * p - k) // s + 1, (9 + 2 * p - k) // s + 1)).astype(dtype)
    with monkeypatch.context() as m:
        for mod in (im2col, padding):
            m.setattr(mod, "is_gpu_array", lambda a: True)
        y, cache = conv.conv2d_forward(x, w, b, s, p, case["mode"], method="im2col")
        dx, dw, db = conv.conv2d_backward(dy, cache)
    close(y, conv.conv2d_naive(x, w, b, s, p, case["mode"]), dtype, 100)
    y_ref, cache_ref = conv.conv2d_forward(x, w, b, s, p, case["mode"])
    dx_ref, dw_ref, db_ref = conv.conv2d_backward(dy, cache_ref)
    close(dx, dx_ref, dtype, 100)
    close(dw, dw_ref, dtype, 100)
    close(db, db_ref, dtype, 100)


# ---------------------------------------------------------------------------- padding

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["zero", "reflect"])
@pytest.mark.parametrize("pad", [0, 1, 2, 4])
@pytest.mark.parametrize("shape, axes", [((2, 3, 5, 6), (2, 3)), ((2, 5, 6, 3), (1, 2)),
                                         ((5, 7), (0, 1)), ((3, 6, 5), (-2, -1))])
def test_pad2d(emulated, rng, dtype, mode, pad, shape, axes):
    ah, aw = (a % len(shape) for a in axes)
    if mode == "reflect" and pad >= min(shape[ah], shape[aw]):
        pytest.skip("reflection needs a larger dimension")
    x = rng.standard_normal(shape).astype(dtype)
    y = padding.pad2d_gpu(x, pad, mode, axes)
    np.testing.assert_array_equal(y, padding.pad2d_cpu(x, pad, mode, axes))
    dy = rng.standard_normal(y.shape).astype(dtype)
    close(padding.pad2d_backward_gpu(dy, pad, mode, axes), padding.pad2d_backward_cpu(dy, pad, mode, axes),
          dtype)


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_pad2d_into_channels_last_buffer(emulated, rng, mode):
    """The convolution's call: NCHW x padded straight into a channels-last buffer, and
    the backward from a channels-last gradient along axes (1, 2)."""
    x = LAYOUTS["strided"](rng.standard_normal((2, 3, 5, 6)))
    buf = np.empty((2, 9, 10, 3))
    out = buf.transpose(0, 3, 1, 2)
    assert padding.pad2d_gpu(x, 2, mode, out=out) is out
    np.testing.assert_array_equal(buf.transpose(0, 3, 1, 2), padding.pad2d_cpu(x, 2, mode))
    dxp = rng.standard_normal((2, 9, 10, 3))
    close(padding.pad2d_backward_gpu(dxp, 2, mode, axes=(1, 2)),
          padding.pad2d_backward_cpu(dxp, 2, mode, axes=(1, 2)), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["zero", "reflect"])
@pytest.mark.parametrize("pad, r0, r1", [(0, 0, 5), (1, 0, 7), (1, 3, 6), (2, 0, 3), (2, 4, 9), (3, 2, 4)])
def test_padded_rows_cl(emulated, rng, dtype, mode, pad, r0, r1):
    x = LAYOUTS["strided"](rng.standard_normal((2, 3, 5, 4)).astype(dtype))
    if mode == "reflect" and pad >= 4:
        pytest.skip("reflection needs a larger dimension")
    np.testing.assert_array_equal(padding.padded_rows_cl_gpu(x, r0, r1, pad, mode),
                                  padding.padded_rows_cl_cpu(x, r0, r1, pad, mode))


# ------------------------------------------------------------------------------ losses

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", losses.NORMALIZATIONS)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("batch_target", [False, True])
def test_content_loss(emulated, rng, dtype, norm, layout, batch_target):
    shape = (3, 4, 5, 7)
    F = LAYOUTS[layout](rng.standard_normal(shape).astype(dtype))
    P = rng.standard_normal((1,) + shape[1:] if batch_target else shape).astype(dtype)
    value, grad = losses.content_loss_gpu(F, P, norm)
    value_ref, grad_ref = losses.content_loss_cpu(F, P, norm)
    assert value == pytest.approx(value_ref, rel=TOL[dtype] * 10)
    np.testing.assert_array_equal(grad, grad_ref)
    # fused ReLU mask: the gradient of the loss through the ReLU that produced F
    value_m, grad_m = losses.content_loss_gpu(F, P, norm, relu_mask=True)
    assert value_m == value
    np.testing.assert_array_equal(grad_m, activations.relu_backward_cpu(grad_ref, F))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", losses.NORMALIZATIONS)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("target_batch", [1, 2])
def test_style_loss(emulated, rng, dtype, norm, layout, target_batch):
    shape = (2, 5, 4, 3)
    F = LAYOUTS[layout](rng.standard_normal(shape).astype(dtype))
    A = losses.gram_matrix(rng.standard_normal((target_batch,) + shape[1:]), norm).astype(dtype)
    value, grad = losses.style_loss_gpu(F, A, norm)
    value_ref, grad_ref = losses.style_loss_cpu(F, A, norm)
    assert value == pytest.approx(value_ref, rel=TOL[dtype] * 10)
    close(grad, grad_ref, dtype, 10)
    assert grad.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axes", [((6, 7, 3), (-3, -2)), ((2, 5, 4, 3), (-3, -2)),
                                         ((2, 3, 5, 4), (2, 3)), ((4, 9), (0, 1)),
                                         ((1, 1, 3), (-3, -2))])
def test_tv_loss(emulated, rng, dtype, shape, axes):
    x = rng.standard_normal(shape).astype(dtype)
    value, grad = losses.tv_loss_gpu(x, axes)
    value_ref, grad_ref = losses.tv_loss_cpu(x, axes)
    assert value == pytest.approx(value_ref, rel=TOL[dtype] * 10, abs=1e-12)
    np.testing.assert_array_equal(grad, grad_ref)


def test_block_size_not_a_power_of_two(emulated, rng, monkeypatch):
    """The block reduction is written for any block size up to 256."""
    for threads in (1, 96, 256):
        monkeypatch.setattr(launch, "THREADS", threads)
        x = rng.standard_normal((7, 11, 3))
        assert losses.tv_loss_gpu(x)[0] == pytest.approx(losses.tv_loss_cpu(x)[0], rel=1e-12)


# ------------------------------------------------------------------ dispatch in the layers

@pytest.fixture
def dispatch_to_kernels(emulated, monkeypatch):
    """Make the layer code believe its NumPy arrays live on the GPU, so the functions
    take their kernel branch (run by the emulator)."""
    for mod in (activations, padding, pooling, normalization, resampling, losses):
        monkeypatch.setattr(mod, "is_gpu_array", lambda a: True)


def test_layer_functions_dispatch_to_the_kernels(dispatch_to_kernels, rng, monkeypatch):
    calls = []
    for mod, name in ((activations, "relu_forward_gpu"), (pooling, "maxpool2d_forward_gpu"),
                      (pooling, "avgpool2d_backward_gpu"), (normalization, "instance_norm_forward_gpu"),
                      (normalization, "batch_norm_backward_gpu"),
                      (resampling, "upsample_nearest2d_forward_gpu"), (losses, "content_loss_gpu"),
                      (losses, "style_loss_gpu"), (losses, "tv_loss_gpu"), (padding, "pad2d_gpu"),
                      (padding, "pad2d_backward_gpu"), (padding, "padded_rows_cl_gpu")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _n=name, **k: (calls.append(_n), _r(*a, **k))[1])
    x = rng.standard_normal((2, 4, 6, 6))
    dy = rng.standard_normal(x.shape)
    activations.relu_forward(x)
    pooling.maxpool2d_forward(x, 2, 2)
    pooling.avgpool2d_backward(dy[:, :, :3, :3], pooling.AvgPoolCache(x.shape, 2, 2))
    normalization.instance_norm_forward(x, None, None)
    normalization.batch_norm_backward(dy, normalization.batch_norm_forward(x, None, None)[1])
    resampling.upsample_nearest2d_forward(x, 2)
    losses.content_loss(x, dy)
    losses.style_loss(x, losses.gram_matrix(dy))
    losses.tv_loss(x)
    padding.pad2d(x, 1, "reflect")
    padding.pad2d_backward(x, 1, "reflect")
    padding.padded_rows_cl(x, 0, 3, 1)
    assert len(calls) == 12, calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_conditional_instance_norm_through_the_kernels(dispatch_to_kernels, rng, monkeypatch,
                                                       dtype, layout):
    """Conditional instance norm, a one-hot and a blended sample, forward and backward
    through the per-sample kernel path, equals the CPU path."""
    calls = []
    for name in ("instance_norm_forward_gpu", "instance_norm_backward_gpu"):
        real = getattr(normalization, name)
        monkeypatch.setattr(normalization, name,
                            lambda *a, _r=real, _n=name: (calls.append(_n), _r(*a))[1])
    N, C, S = 2, 6, 3
    x = LAYOUTS[layout]((rng.standard_normal((N, C, 5, 7)) * 2 + 0.5).astype(dtype))
    dy = LAYOUTS[layout](rng.standard_normal(x.shape).astype(dtype))
    gamma = rng.uniform(0.5, 1.5, (S, C)).astype(dtype)
    beta = rng.standard_normal((S, C)).astype(dtype)
    mix = np.array([[0.0, 1.0, 0.0], [0.25, 0.0, 0.75]])
    y, cache = normalization.conditional_instance_norm_forward(x, gamma, beta, mix)
    dx, dgamma, dbeta = normalization.conditional_instance_norm_backward(dy, cache)
    assert calls == ["instance_norm_forward_gpu", "instance_norm_backward_gpu"]
    monkeypatch.setattr(normalization, "is_gpu_array", lambda a: False)
    y_ref, cache_ref = normalization.conditional_instance_norm_forward(x, gamma, beta, mix)
    dx_ref, dgamma_ref, dbeta_ref = normalization.conditional_instance_norm_backward(dy, cache_ref)
    close(y, y_ref, dtype, 10)
    close(dx, dx_ref, dtype, 100)
    close(dgamma, dgamma_ref, dtype, 10)
    close(dbeta, dbeta_ref, dtype, 10)
    assert dgamma.shape == dbeta.shape == (S, C) and y.dtype == dx.dtype == dgamma.dtype == dtype


def test_small_network_through_the_kernels(dispatch_to_kernels, rng, monkeypatch):
    """A Sequential of every kernel-backed layer, forward and backward through the
    kernels, equals the CPU path (the GPU test does the same on a real device)."""
    from minnst.layers import (AvgPool2d, BatchNorm2d, InstanceNorm2d, MaxPool2d, ReLU, Sequential,
                               Upsample)

    def net():
        return Sequential([InstanceNorm2d(3), ReLU(), MaxPool2d(2), Upsample(2), BatchNorm2d(3),
                           ReLU(), AvgPool2d(3, 1)])
    x = rng.standard_normal((2, 3, 8, 6))
    y, cache = net().forward(x)
    dy = rng.standard_normal(y.shape)
    dx, grads = net().backward(dy, cache)
    for mod in (activations, pooling, normalization, resampling):
        monkeypatch.setattr(mod, "is_gpu_array", lambda a: False)
    y_ref, cache_ref = net().forward(x)
    dx_ref, grads_ref = net().backward(dy, cache_ref)
    close(y, y_ref, np.float64, 100)
    close(dx, dx_ref, np.float64, 1000)
    for k in grads_ref:
        close(grads[k], grads_ref[k], np.float64, 1000)


@pytest.mark.slow
def test_gpu_tests_pass_on_the_fake_gpu():
    """tests/test_gpu.py on the CPU stand-in for CuPy (kernel_emu/fake_cupy.py): the GPU
    tests themselves and the device glue (dispatch, caches, host/device boundaries,
    float64 boundary for scipy) are checked here, so a GPU session only has to confirm
    them on a device. Runs in a subprocess: the fake registers itself as ``cupy``. The
    slowest variants (L-BFGS, Johnson objective, max-pooling VGG in float64) are left to
    ``MINNST_FAKE_GPU=1 python -m pytest tests/test_gpu.py``."""
    import os

    root = Path(__file__).parents[1]
    env = dict(os.environ, MINNST_FAKE_GPU="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_gpu.py", "-k", "not lbfgs and not johnson and not max"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1], r.stdout[-500:]
