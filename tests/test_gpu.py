"""The GPU path equals the CPU path (float32 tolerance): every kernel-backed layer, the
convolutions, the losses, VGG16 forward and backward, the Gatys objective and a short
L-BFGS run, and a feed-forward stylisation end to end.

Marked ``gpu`` and skipped, with the reason, where CuPy cannot run a kernel
(``backend.gpu_available``). Random weights throughout: nothing is downloaded, so the
tests run on a machine without network. ``scripts/gpu_check.sh`` runs them. With
``MINNST_FAKE_GPU=1`` they run on the CPU against a stand-in for CuPy whose kernels are
emulated (tests/kernel_emu/fake_cupy.py): a check of this file and of the dispatch glue,
not of CuPy.
"""
import os

import numpy as np
import pytest

from minnst import backend, losses
from minnst.layers import activations, conv, im2col, normalization, padding, pooling, resampling

if os.environ.get("MINNST_FAKE_GPU"):  # CPU stand-in for CuPy: checks this file and the glue
    from kernel_emu import fake_cupy

    fake_cupy.install()

GPU_OK, GPU_WHY = backend.gpu_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not GPU_OK, reason=GPU_WHY or "no GPU")]

if GPU_OK:
    import cupy as cp


def rel(a, b) -> float:
    """max |a − b| relative to the larger of max |b| and 1e-6."""
    a, b = backend.to_host(a).astype(np.float64), backend.to_host(b).astype(np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)) if b.size else 0.0


def compare(got, ref, tol, path="result"):
    """Recursively compare a GPU result with the CPU one: arrays, floats, tuples/caches."""
    if ref is None:
        assert got is None, path
    elif isinstance(ref, (tuple, list)):
        assert len(got) == len(ref), path
        for i, (g, r) in enumerate(zip(got, ref)):
            compare(g, r, tol, f"{path}[{i}]")
    elif isinstance(ref, (float, int, np.floating)) and not hasattr(ref, "shape"):
        assert float(got) == pytest.approx(float(ref), rel=tol, abs=1e-12), path
    elif hasattr(ref, "shape"):
        assert backend.is_gpu_array(got) or np.ndim(got) == 0, f"{path} came back on the host"
        assert tuple(got.shape) == tuple(ref.shape), path
        assert got.dtype == ref.dtype, path
        assert rel(got, ref) < tol, f"{path}: relative error {rel(got, ref):.2e} > {tol}"
    elif not isinstance(ref, str):  # strings name device-specific methods ("shifted", "im2col")
        assert got == ref, path


def run_both(fn, *args, tol=1e-5, **kw):
    """``fn`` on NumPy and on CuPy copies of the array arguments; compare; return both."""
    ref = fn(*args, **kw)
    gargs = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    got = fn(*gargs, **kw)
    compare(got, ref, tol)
    return got, ref


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def cl(a):
    """Channels-last memory, NCHW shape (what the convolution produces)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------- layers

@pytest.mark.parametrize("layout", [np.ascontiguousarray, cl])
def test_relu(rng, layout):
    x = layout(f32(rng, 2, 16, 33, 31))
    (y, cache), _ = run_both(activations.relu_forward, x)
    dy = f32(rng, *x.shape)
    run_both(activations.relu_backward, dy, backend.to_host(cache))


@pytest.mark.parametrize("layout", [np.ascontiguousarray, cl])
@pytest.mark.parametrize("k, s", [(2, 2), (3, 2), (3, 1)])
def test_pooling(rng, layout, k, s):
    x = layout(f32(rng, 2, 24, 37, 30))
    dy_shape = ((x.shape[0], x.shape[1], (37 - k) // s + 1, (30 - k) // s + 1))
    dy = f32(rng, *dy_shape)
    for fwd, bwd in ((pooling.maxpool2d_forward, pooling.maxpool2d_backward),
                     (pooling.avgpool2d_forward, pooling.avgpool2d_backward)):
        (_, gcache), (_, cache) = run_both(fwd, x, k, s)
        compare(bwd(cp.asarray(dy), gcache), bwd(dy, cache), 1e-5)


@pytest.mark.parametrize("layout", [np.ascontiguousarray, cl])
def test_upsample(rng, layout):
    x = layout(f32(rng, 2, 8, 13, 11))
    (_, gcache), (_, cache) = run_both(resampling.upsample_nearest2d_forward, x, 2)
    dy = f32(rng, 2, 8, 26, 22)
    compare(resampling.upsample_nearest2d_backward(cp.asarray(dy), gcache),
            resampling.upsample_nearest2d_backward(dy, cache), 1e-5)


@pytest.mark.parametrize("layout", [np.ascontiguousarray, cl])
@pytest.mark.parametrize("kind", ["instance", "batch"])
def test_normalisation(rng, layout, kind):
    x = layout(f32(rng, 4, 40, 17, 19) * 3 + 1)
    gamma, beta = rng.uniform(0.5, 1.5, 40).astype(np.float32), f32(rng, 40)
    fwd, bwd = ((normalization.instance_norm_forward, normalization.instance_norm_backward)
                if kind == "instance" else
                (normalization.batch_norm_forward, normalization.batch_norm_backward))
    (_, gcache), (_, cache) = run_both(fwd, x, gamma, beta, tol=1e-4)
    dy = layout(f32(rng, *x.shape))
    compare(bwd(cp.asarray(dy), gcache), bwd(dy, cache), 1e-4)


@pytest.mark.parametrize("layout", [np.ascontiguousarray, cl])
def test_conditional_instance_norm(rng, layout):
    """Per-sample γ, β through the kernels (sA = C), via conditional instance norm: a
    one-hot, a blended and an extrapolated row; style weights given on the device and on
    the host (float64, converted)."""
    from minnst.layers import ConditionalInstanceNorm2d

    N, C, S = 3, 40, 4
    x = layout(f32(rng, N, C, 17, 19) * 3 + 1)
    dy = layout(f32(rng, *x.shape))
    gamma, beta = rng.uniform(0.5, 1.5, (S, C)).astype(np.float32), f32(rng, S, C)
    mix = np.array([[0, 0, 1, 0], [0.3, 0.7, 0, 0], [0.5, -0.25, 0.25, 0.5]], dtype=np.float32)
    (_, gcache), (_, cache) = run_both(normalization.conditional_instance_norm_forward,
                                       x, gamma, beta, mix, tol=1e-4)
    compare(normalization.conditional_instance_norm_backward(cp.asarray(dy), gcache),
            normalization.conditional_instance_norm_backward(dy, cache), 1e-4)
    layer_cpu = ConditionalInstanceNorm2d(C, S)
    layer_cpu.params["weight"][...], layer_cpu.params["bias"][...] = gamma, beta
    layer_gpu = ConditionalInstanceNorm2d(C, S).to(cp)
    layer_gpu.params["weight"][...], layer_gpu.params["bias"][...] = cp.asarray(gamma), cp.asarray(beta)
    y, c = layer_cpu.forward(x, mix.astype(np.float64))
    gy, gc = layer_gpu.forward(cp.asarray(x), mix.astype(np.float64))  # host style weights
    compare(gy, y, 1e-4)
    (gdx, ggrads), (dx, grads) = layer_gpu.backward(cp.asarray(dy), gc), layer_cpu.backward(dy, c)
    compare(gdx, dx, 1e-4)
    for k in grads:
        compare(ggrads[k], grads[k], 1e-4, k)


@pytest.mark.parametrize("case", [dict(C=3, F=64, k=3, s=1, p=1, mode="zero"),
                                  dict(C=64, F=32, k=3, s=1, p=1, mode="zero"),
                                  dict(C=32, F=64, k=3, s=2, p=1, mode="reflect"),
                                  dict(C=3, F=32, k=9, s=1, p=4, mode="reflect"),
                                  dict(C=16, F=8, k=1, s=1, p=0, mode="zero")])
def test_conv2d(rng, case):
    C, F, k, s, p = case["C"], case["F"], case["k"], case["s"], case["p"]
    x, w, b = f32(rng, 2, C, 29, 34), f32(rng, F, C, k, k) * 0.1, f32(rng, F)
    (gy, gcache), (y, cache) = run_both(conv.conv2d_forward, x, w, b, s, p, case["mode"], tol=1e-4)
    dy = f32(rng, *y.shape)
    compare(conv.conv2d_backward(cp.asarray(dy), gcache), conv.conv2d_backward(dy, cache), 1e-4)


def test_conv_transpose2d(rng):
    x, w, b = f32(rng, 2, 32, 9, 11), f32(rng, 32, 16, 3, 3) * 0.1, f32(rng, 16)
    (gy, gcache), (y, cache) = run_both(conv.conv_transpose2d_forward, x, w, b, 2, 1, 1, tol=1e-4)
    dy = f32(rng, *y.shape)
    compare(conv.conv_transpose2d_backward(cp.asarray(dy), gcache),
            conv.conv_transpose2d_backward(dy, cache), 1e-4)


def test_conv_kernels_directly(rng):
    """The im2col, col2im and padding functions the convolution calls, on the device
    against the host."""
    xpad = f32(rng, 2, 11, 12, 5)
    for s, (i0, i1) in ((1, (0, 9)), (2, (1, 4))):
        OW = (12 - 3) // s + 1
        run_both(im2col.im2col, xpad, 3, 3, s, i0, i1, OW, tol=1e-7)
        dcols = f32(rng, 2, i1 - i0, OW, 3, 3, 5)
        got, ref = cp.asarray(xpad), xpad.copy()
        im2col.col2im_add(got, cp.asarray(dcols), s, i0)
        im2col.col2im_add(ref, dcols, s, i0)
        compare(got, ref, 1e-6)
    x = f32(rng, 2, 5, 9, 8)
    for mode in ("zero", "reflect"):
        run_both(padding.pad2d, x, 3, mode, tol=1e-7)
        dxp = f32(rng, 2, 15, 14, 5)
        run_both(padding.pad2d_backward, dxp, 3, mode, axes=(1, 2), tol=1e-6)
        run_both(padding.padded_rows_cl, x, 2, 9, 3, mode, tol=1e-7)


# --------------------------------------------------------------------------- losses

@pytest.mark.parametrize("norm", losses.NORMALIZATIONS)
def test_losses(rng, norm):
    F, P = cl(f32(rng, 2, 64, 23, 21)), f32(rng, 1, 64, 23, 21)
    run_both(losses.content_loss, F, P, norm, tol=1e-5)
    A = losses.style_target(f32(rng, 1, 64, 30, 30), norm, target_hw=(23, 21)).astype(np.float32)
    run_both(losses.style_loss, F, A, norm, tol=1e-4)
    run_both(losses.style_loss, np.ascontiguousarray(F), A, norm, tol=1e-4)
    run_both(losses.tv_loss, f32(rng, 37, 41, 3), tol=1e-5)


# --------------------------------------------------------------------------- networks

def random_vgg(pooling, xp, dtype=np.float32):
    from minnst.vgg import VGG16, expected_shapes

    r = np.random.default_rng(1)
    weights = {name: ((r.standard_normal(ws) * np.sqrt(2.0 / np.prod(ws[1:]))).astype(dtype),
                      (r.standard_normal(bs) * 0.01).astype(dtype))
               for name, (ws, bs) in expected_shapes().items()}
    return VGG16(weights, pooling=pooling).to(xp, dtype)


# Max pooling routes each gradient to one element, so a float32 rounding difference that
# flips a near-tie moves a whole gradient entry: the max-pooling network is compared in
# float64, where such flips do not happen at these sizes.
@pytest.mark.parametrize("pooling, dtype, tol", [("avg", np.float32, 1e-3), ("max", np.float64, 1e-9)])
def test_vgg16_forward_backward(rng, pooling, dtype, tol):
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
    x = rng.standard_normal((1, 3, 72, 88)).astype(dtype)
    net_cpu, net_gpu = random_vgg(pooling, np, dtype), random_vgg(pooling, cp, dtype)
    feats, cache = net_cpu.forward(x, layers)
    gfeats, gcache = net_gpu.forward(cp.asarray(x), layers)
    for l in layers:
        assert rel(gfeats[l], feats[l]) < tol, l
    grads = {l: rng.standard_normal(feats[l].shape).astype(dtype) for l in layers}
    dx = net_cpu.backward(grads, cache)
    gdx = net_gpu.backward({l: cp.asarray(g) for l, g in grads.items()}, gcache)
    assert rel(gdx, dx) < tol


def _objectives(normalization="gatys"):
    gatys = pytest.importorskip("minnst.gatys")
    if not hasattr(gatys, "Objective"):
        pytest.skip("minnst.gatys has no Objective yet")
    r = np.random.default_rng(2)
    content = r.uniform(0, 1, (64, 80, 3)).astype(np.float32)
    style = r.uniform(0, 1, (56, 56, 3)).astype(np.float32)
    kw = dict(content_layers=["relu4_2"],
              style_layers=["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
              alpha=1.0, beta=1e3, tv_weight=1e-2, pooling="avg", normalization=normalization)
    cpu = gatys.Objective(content, [style], net=random_vgg("avg", np), **kw)
    gpu = gatys.Objective(cp.asarray(content), [cp.asarray(style)], net=random_vgg("avg", cp), **kw)
    return cpu, gpu, content


@pytest.mark.parametrize("normalization", ["gatys", "johnson"])
def test_gatys_objective(normalization):
    cpu, gpu, content = _objectives(normalization)
    x = np.random.default_rng(3).uniform(0, 1, content.shape).astype(np.float32)
    loss, grad = cpu.loss_and_grad(x)
    gloss, ggrad = gpu.loss_and_grad(cp.asarray(x))
    assert gloss == pytest.approx(loss, rel=1e-4)
    assert rel(ggrad, grad) < 1e-3
    # the float64 host boundary scipy sees
    z = x.astype(np.float64).ravel()
    l64, g64 = gpu.flat_loss_and_grad(z)
    assert isinstance(l64, float) and g64.dtype == np.float64 and g64.shape == z.shape


def test_short_lbfgs_run_agrees():
    from scipy.optimize import minimize

    cpu, gpu, content = _objectives()
    z0 = np.random.default_rng(4).uniform(0, 1, content.size)
    results = [minimize(o.flat_loss_and_grad, z0, jac=True, method="L-BFGS-B",
                        bounds=[(0, 1)] * z0.size, options=dict(maxiter=6))
               for o in (cpu, gpu)]
    assert results[1].fun == pytest.approx(results[0].fun, rel=2e-2)
    assert results[1].fun < cpu.flat_loss_and_grad(z0)[0]


def test_feed_forward_stylisation_end_to_end():
    transformer = pytest.importorskip("minnst.transformer")
    img = np.random.default_rng(5).uniform(0, 1, (45, 61, 3)).astype(np.float32)
    for cfg in (transformer.TransformerConfig(), transformer.TransformerConfig(norm="batch", upsample="transpose")):
        net_cpu = transformer.TransformerNet(cfg, seed=0)
        net_gpu = transformer.TransformerNet(cfg, seed=0).to(cp)
        out, gout = net_cpu.stylize(img), net_gpu.stylize(img)
        assert gout.shape == out.shape == img.shape
        assert np.abs(gout - out).max() < 2e-3
