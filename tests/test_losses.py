"""Losses: values against direct (loop / einsum) computations, gradients against finite
differences in float64."""
import numpy as np
import pytest

from minnst import losses
from minnst.gradcheck import eval_numerical_gradient, rel_error


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("norm", losses.NORMALIZATIONS)
@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (2, 4, 3, 3)])
def test_content_loss_value_and_gradient(rng, norm, shape):
    F = rng.standard_normal(shape)
    P = rng.standard_normal(shape)
    value, grad = losses.content_loss(F, P, norm)
    N, C, H, W = shape
    expected = 0.5 * np.sum((F - P) ** 2) if norm == "gatys" else np.sum((F - P) ** 2) / (N * C * H * W)
    assert value == pytest.approx(expected, rel=1e-12)
    num = eval_numerical_gradient(lambda z: losses.content_loss(z, P, norm)[0], F)
    assert rel_error(grad, num) < 1e-7


@pytest.mark.parametrize("norm", losses.NORMALIZATIONS)
def test_gram_matches_explicit_sum(rng, norm):
    F = rng.standard_normal((2, 3, 4, 5))
    G = losses.gram_matrix(F, norm)
    expected = np.einsum("nchw,ndhw->ncd", F, F)
    if norm == "johnson":
        expected /= 3 * 4 * 5
    assert rel_error(G, expected) < 1e-12
    assert np.allclose(G, G.transpose(0, 2, 1))


@pytest.mark.parametrize("norm", losses.NORMALIZATIONS)
@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (2, 4, 3, 2)])
def test_style_loss_value_and_gradient(rng, norm, shape):
    F = rng.standard_normal(shape)
    S = rng.standard_normal((1,) + shape[1:])
    A = losses.style_target(S, norm)
    value, grad = losses.style_loss(F, A, norm)
    N, C, H, W = shape
    M = H * W
    # independent value: loops over images with explicit matrices
    total = 0.0
    for n in range(N):
        Fn = F[n].reshape(C, M)
        Sn = S[0].reshape(C, M)
        G, Aref = Fn @ Fn.T, Sn @ Sn.T
        if norm == "gatys":
            total += np.sum((G - Aref) ** 2) / (4 * C**2 * M**2)
        else:
            total += np.sum((G / (C * M) - Aref / (C * M)) ** 2) / N
    assert value == pytest.approx(total, rel=1e-12)
    num = eval_numerical_gradient(lambda z: losses.style_loss(z, A, norm)[0], F)
    assert rel_error(grad, num) < 1e-6


def test_gatys_style_target_rescaled_to_pastiche_size(rng):
    # a style image tiled 2×2 has the same texture statistics: its rescaled target matches
    S = rng.standard_normal((1, 3, 4, 4))
    S2 = np.tile(S, (1, 1, 2, 2))
    A_small = losses.style_target(S, "gatys", target_hw=(8, 8))
    A_big = losses.style_target(S2, "gatys", target_hw=(8, 8))
    assert rel_error(A_small, A_big) < 1e-12


@pytest.mark.parametrize("axes,shape", [((-3, -2), (5, 4, 3)), ((2, 3), (2, 3, 4, 6))])
def test_tv_loss_value_and_gradient(rng, axes, shape):
    x = rng.standard_normal(shape)
    value, grad = losses.tv_loss(x, axes=axes)
    ah, aw = (a % x.ndim for a in axes)
    expected = np.sum(np.diff(x, axis=ah) ** 2) + np.sum(np.diff(x, axis=aw) ** 2)
    assert value == pytest.approx(expected, rel=1e-12)
    num = eval_numerical_gradient(lambda z: losses.tv_loss(z, axes=axes)[0], x)
    assert rel_error(grad, num) < 1e-7


def test_saturation_penalty_value_and_gradient(rng):
    """R = mean(max(|z| − b, 0)²) against an element-wise sum, ∂R/∂z against finite
    differences (no element within the step of ±b, where R has a kink in its 2nd derivative)."""
    z = rng.uniform(-6, 6, (2, 3, 5, 4))
    z[np.abs(np.abs(z) - 3.0) < 0.05] = 0.0
    value, grad = losses.saturation_penalty(z, 3.0)
    expected = sum(max(abs(v) - 3.0, 0.0) ** 2 for v in z.ravel()) / z.size
    assert value == pytest.approx(expected, rel=1e-12)
    assert 0 < np.count_nonzero(grad) < z.size  # both sides of the bound are exercised
    num = eval_numerical_gradient(lambda t: losses.saturation_penalty(t, 3.0)[0], z)
    assert rel_error(grad, num) < 1e-7
    inside = rng.uniform(-2.9, 2.9, (3, 4))
    assert losses.saturation_penalty(inside)[0] == 0.0 and not losses.saturation_penalty(inside)[1].any()


def test_float32_keeps_dtype(rng):
    F = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    A = losses.style_target(F, "gatys")
    for fn in (lambda: losses.style_loss(F, A * 0.5), lambda: losses.content_loss(F, F * 0.5),
               lambda: losses.tv_loss(F, axes=(2, 3))):
        assert fn()[1].dtype == np.float32


def test_unknown_normalization_is_rejected(rng):
    """By every loss, on both paths (the kernel launchers check before any launch)."""
    F = rng.standard_normal((1, 2, 2, 2))
    A = losses.gram_matrix(F)
    for fn in (losses.style_loss_cpu, losses.style_loss_gpu, losses.content_loss_cpu,
               losses.content_loss_gpu):
        with pytest.raises(ValueError, match="normalization must be one of"):
            fn(F, A if "style" in fn.__name__ else F, "vgg")
    with pytest.raises(ValueError, match="normalization must be one of"):
        losses.gram_matrix(F, "vgg")


@pytest.mark.parametrize("norm", losses.NORMALIZATIONS)
def test_channels_last_features_give_the_same_values(rng, norm):
    """The CPU layers hand out NCHW views of channels-last memory; the losses must not care."""
    F = rng.standard_normal((2, 5, 4, 3))
    F_cl = np.ascontiguousarray(F.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert F_cl.strides[1] == F_cl.itemsize and np.array_equal(F, F_cl)
    A = losses.style_target(rng.standard_normal((1, 5, 3, 3)), norm)
    v0, g0 = losses.style_loss(F, A, norm)
    v1, g1 = losses.style_loss(F_cl, A, norm)
    assert v0 == pytest.approx(v1, rel=1e-12) and rel_error(g0, g1) < 1e-12
    assert g1.strides[1] == g1.itemsize  # the gradient keeps the channels-last memory
    assert rel_error(losses.gram_matrix(F, norm), losses.gram_matrix(F_cl, norm)) < 1e-12


def test_large_gram_products_cut_into_bands_give_the_sum_and_any_worker_count_the_same_bits(rng):
    """An image whose product reaches GRAM_SPLIT_MIN_MACS is summed in bands of positions on
    the pool: the value of the whole sum (float64, against einsum), and in float32 the same
    bits on one worker as on two; a batch of small ones, one product per image."""
    from minnst import parallel

    C, H, W = 64, 160, 208  # M·C² = 2²⁷ · 1.016: cut into bands
    assert H * W * C * C >= losses.GRAM_SPLIT_MIN_MACS > H * W * C * C // 2
    for F in (rng.standard_normal((1, C, H, W)), rng.standard_normal((3, 8, 5, 7))):
        for Fx in (F, np.ascontiguousarray(F.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
            G = losses.gram_matrix(Fx)
            ref = np.einsum("nchw,ndhw->ncd", F, F)
            assert np.abs(G - ref).max() < 1e-12 * np.abs(ref).max()
        f32 = F.astype(np.float32)
        with parallel.workers(1):
            one = losses.gram_matrix(f32)
        with parallel.workers(2):
            two = losses.gram_matrix(f32)
        assert one.dtype == np.float32 and np.array_equal(one, two)


@pytest.mark.parametrize("norm", losses.NORMALIZATIONS)
def test_a_loss_weight_scales_the_gradient_not_the_value(rng, norm):
    """``weight`` (the caller's α or β·w_l, taken into the gradient's own pass): the value
    unchanged, the gradient weight times the unweighted one; the content target broadcast
    over a batch; float32 the same bits on one worker as on two."""
    from minnst import parallel

    F = rng.standard_normal((3, 4, 9, 6))
    P, A = rng.standard_normal((1, 4, 9, 6)), rng.standard_normal((1, 4, 4))
    for fn, target in ((losses.content_loss, P), (losses.style_loss, A)):
        v1, g1 = fn(F, target, norm)
        v3, g3 = fn(F, target, norm, weight=2.5)
        assert v3 == pytest.approx(v1, rel=1e-12)
        assert rel_error(g3, 2.5 * g1) < 1e-12
    v, g = losses.content_loss(F, P, norm)
    assert v == pytest.approx(losses.content_value(float(((F - P) ** 2).sum()), F.shape, norm), rel=1e-12)
    assert rel_error(g, (F - P) * losses.content_grad_factor(F.shape, norm)) < 1e-12
    f32, p32 = F.astype(np.float32), P.astype(np.float32)
    with parallel.workers(1):
        one = losses.content_loss(f32, p32, norm, weight=3.0)
    with parallel.workers(2):
        two = losses.content_loss(f32, p32, norm, weight=3.0)
    assert one[0] == two[0] and np.array_equal(one[1], two[1]) and one[1].dtype == np.float32
