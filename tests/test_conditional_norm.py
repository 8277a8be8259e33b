"""Per-sample instance norm and conditional instance norm (Dumoulin, Shlens & Kudlur 2017):
forward against an independent loop over samples, x / γ / β gradients against central
finite differences (float64, rel ≤ 1e-6), the one-hot and 0.5/0.5 mixes against plain
instance norm, the sparsity of a one-hot batch's parameter gradient, the argument checks,
the layer class, and float32."""
import numpy as np
import pytest

from minnst.gradcheck import eval_numerical_gradient_array, rel_error
from minnst.layers import (ConditionalInstanceNorm2d, Residual, ScaledTanh, Sequential,
                           conditional_instance_norm_backward, conditional_instance_norm_forward,
                           instance_norm_backward, instance_norm_forward)
from minnst.layers.normalization import ConditionalNormCache

TOL = 1e-6   # float64, finite differences
STEP = 1e-4  # as tests/test_layers_misc.py: the rounding of Σ y·dy stays far below TOL


def numgrad(f, a, dy):
    return eval_numerical_gradient_array(f, a, dy, h=STEP)


def naive_instance_norm(x, gamma, beta, eps=1e-5):
    """Loops over samples and channels with NumPy's mean / var (ddof=0) on each plane;
    gamma, beta (N, C): sample n's own row."""
    N, C = x.shape[:2]
    y = np.empty_like(x)
    for n in range(N):
        for c in range(C):
            v = x[n, c]
            y[n, c] = (v - v.mean()) / np.sqrt(v.var() + eps) * gamma[n, c] + beta[n, c]
    return y


def naive_conditional_instance_norm(x, gamma, beta, mix, eps=1e-5):
    """Per sample: blend the styles' rows by hand, then normalise that sample alone."""
    N, S = mix.shape
    y = np.empty_like(x)
    for n in range(N):
        g = sum(mix[n, s] * gamma[s] for s in range(S))
        b = sum(mix[n, s] * beta[s] for s in range(S))
        y[n:n + 1] = naive_instance_norm(x[n:n + 1], g[None], b[None], eps)
    return y


def one_hot(styles, S):
    mix = np.zeros((len(styles), S))
    mix[np.arange(len(styles)), styles] = 1.0
    return mix


def random_case(rng, N=3, C=4, H=5, W=4, S=3):
    x = rng.standard_normal((N, C, H, W)) * 2 + 0.5
    gamma = rng.uniform(0.5, 1.5, (S, C))
    beta = rng.standard_normal((S, C))
    dy = rng.standard_normal(x.shape)
    return x, gamma, beta, dy


MIXES = {
    "one_hot": lambda rng, N, S: one_hot([s % S for s in range(N)], S),
    "blend": lambda rng, N, S: rng.dirichlet(np.ones(S), N),
    "signed": lambda rng, N, S: rng.uniform(-0.5, 1.5, (N, S)),  # extrapolation is allowed
}


# ------------------------------------------------------------------ per-sample instance norm

@pytest.mark.parametrize("shape", [(3, 4, 5, 4), (2, 3, 1, 6), (1, 2, 3, 3)])
def test_per_sample_instance_norm(rng, shape):
    N, C = shape[:2]
    x = rng.standard_normal(shape) * 2 + 1
    gamma, beta = rng.uniform(0.5, 1.5, (N, C)), rng.standard_normal((N, C))
    dy = rng.standard_normal(shape)
    y, cache = instance_norm_forward(x, gamma, beta)
    np.testing.assert_allclose(y, naive_instance_norm(x, gamma, beta), rtol=1e-12, atol=1e-12)
    dx, dgamma, dbeta = instance_norm_backward(dy, cache)
    assert dgamma.shape == dbeta.shape == (N, C)
    assert rel_error(dx, numgrad(lambda z: instance_norm_forward(z, gamma, beta)[0], x, dy)) < TOL
    assert rel_error(dgamma, numgrad(lambda g: instance_norm_forward(x, g, beta)[0], gamma, dy)) < TOL
    assert rel_error(dbeta, numgrad(lambda b: instance_norm_forward(x, gamma, b)[0], beta, dy)) < TOL
    # the per-sample sums, written out
    xhat = (x - x.mean(axis=(2, 3), keepdims=True)) / np.sqrt(x.var(axis=(2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(dgamma, (dy * xhat).sum(axis=(2, 3)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dbeta, dy.sum(axis=(2, 3)), rtol=1e-12, atol=1e-12)


def test_per_sample_rows_equal_to_shared_parameters_give_the_same_bits(rng):
    """(N, C) parameters whose rows all equal a (C,) vector: the same y, dx, and the
    shared gradient is the sum of the per-sample ones."""
    x, _, _, dy = random_case(rng, N=4, C=5, H=6, W=7)
    g, b = rng.uniform(0.5, 1.5, 5), rng.standard_normal(5)
    for dt in (np.float64, np.float32):
        xd, dyd, gd, bd = (a.astype(dt) for a in (x, dy, g, b))
        y1, c1 = instance_norm_forward(xd, gd, bd)
        y2, c2 = instance_norm_forward(xd, np.tile(gd, (4, 1)), np.tile(bd, (4, 1)))
        np.testing.assert_array_equal(y1, y2)
        dx1, dg1, db1 = instance_norm_backward(dyd, c1)
        dx2, dg2, db2 = instance_norm_backward(dyd, c2)
        np.testing.assert_array_equal(dx1, dx2)
        np.testing.assert_array_equal(dg1, dg2.sum(axis=0))
        np.testing.assert_array_equal(db1, db2.sum(axis=0))


def test_per_sample_gamma_only_and_beta_only(rng):
    x, _, _, dy = random_case(rng, N=2, C=3)
    g = rng.uniform(0.5, 1.5, (2, 3))
    b = rng.standard_normal((2, 3))
    for gamma, beta in ((g, None), (None, b)):
        y, cache = instance_norm_forward(x, gamma, beta)
        ref = naive_instance_norm(x, np.ones((2, 3)) if gamma is None else gamma,
                                  np.zeros((2, 3)) if beta is None else beta)
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
        _, dgamma, dbeta = instance_norm_backward(dy, cache)
        assert (dgamma is None) == (gamma is None) and (dbeta is None) == (beta is None)
        for d in (dgamma, dbeta):
            assert d is None or d.shape == (2, 3)


@pytest.mark.parametrize("gamma_shape, beta_shape", [((4,), (3, 4)), ((3, 4), (4,)), ((2, 4), None),
                                                     ((3, 4, 1), None), (None, (4, 3))])
def test_instance_norm_rejects_bad_affine_shapes(gamma_shape, beta_shape):
    """x (3, 4, 2, 2): γ, β must be (4,) or (3, 4), both of one shape."""
    x = np.zeros((3, 4, 2, 2))
    with pytest.raises(ValueError):
        instance_norm_forward(x, None if gamma_shape is None else np.ones(gamma_shape),
                              None if beta_shape is None else np.ones(beta_shape))


# ----------------------------------------------------------------- conditional instance norm

@pytest.mark.parametrize("mix_kind", MIXES)
@pytest.mark.parametrize("N, C, H, W, S", [(3, 4, 5, 4, 3), (4, 2, 3, 6, 2), (2, 3, 4, 4, 1)])
def test_conditional_instance_norm_against_loops_and_finite_differences(rng, mix_kind, N, C, H, W, S):
    x, gamma, beta, dy = random_case(rng, N, C, H, W, S)
    mix = MIXES[mix_kind](rng, N, S)
    y, cache = conditional_instance_norm_forward(x, gamma, beta, mix)
    assert isinstance(cache, ConditionalNormCache)
    np.testing.assert_allclose(y, naive_conditional_instance_norm(x, gamma, beta, mix),
                               rtol=1e-12, atol=1e-12)
    dx, dgamma, dbeta = conditional_instance_norm_backward(dy, cache)
    assert dx.shape == x.shape and dgamma.shape == dbeta.shape == (S, C)

    def f(x_=x, g_=gamma, b_=beta):
        return conditional_instance_norm_forward(x_, g_, b_, mix)[0]

    assert rel_error(dx, numgrad(lambda z: f(x_=z), x, dy)) < TOL
    assert rel_error(dgamma, numgrad(lambda z: f(g_=z), gamma, dy)) < TOL
    assert rel_error(dbeta, numgrad(lambda z: f(b_=z), beta, dy)) < TOL


def test_one_hot_mix_is_instance_norm_with_that_style(rng):
    """Exactly (the same bits): a one-hot row picks γ_s, β_s without rounding, so the
    result is instance norm's with those rows, and with a single style for the whole batch
    that of its (C,) path."""
    S = 4
    x, gamma, beta, dy = random_case(rng, N=3, C=5, S=S)
    styles = [2, 0, 2]
    for dt in (np.float64, np.float32):
        xd, dyd, gd, bd = (a.astype(dt) for a in (x, dy, gamma, beta))
        y, cache = conditional_instance_norm_forward(xd, gd, bd, one_hot(styles, S))
        dx, _, _ = conditional_instance_norm_backward(dyd, cache)
        # row n of mix @ γ is γ[styles[n]], exactly
        y_ref, c_ref = instance_norm_forward(xd, gd[styles], bd[styles])
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(dx, instance_norm_backward(dyd, c_ref)[0])
        tol = 100 * np.finfo(dt).eps
        for n, s in enumerate(styles):  # each sample alone (other bands: other sum order)
            y_n, c_n = instance_norm_forward(xd[n:n + 1], gd[s], bd[s])
            np.testing.assert_allclose(y[n:n + 1], y_n, rtol=tol, atol=tol)
            np.testing.assert_allclose(dx[n:n + 1], instance_norm_backward(dyd[n:n + 1], c_n)[0],
                                       rtol=tol, atol=tol)
        # the whole batch in one style: instance norm's (C,) path, gradients included
        y, cache = conditional_instance_norm_forward(xd, gd, bd, one_hot([1, 1, 1], S))
        y_ref, c_ref = instance_norm_forward(xd, gd[1], bd[1])
        np.testing.assert_array_equal(y, y_ref)
        dx, dgamma, dbeta = conditional_instance_norm_backward(dyd, cache)
        dx_ref, dg_ref, db_ref = instance_norm_backward(dyd, c_ref)
        np.testing.assert_array_equal(dx, dx_ref)
        tol = 100 * np.finfo(dt).eps  # the sum over samples in another order
        for got, ref in ((dgamma[1], dg_ref), (dbeta[1], db_ref)):
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(dyd).sum())
        assert not np.delete(dgamma, 1, axis=0).any() and not np.delete(dbeta, 1, axis=0).any()


def test_half_half_blend_is_instance_norm_with_the_averaged_parameters(rng):
    x, gamma, beta, dy = random_case(rng, N=2, C=4, S=3)
    mix = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    y, _ = conditional_instance_norm_forward(x, gamma, beta, mix)
    y_ref, _ = instance_norm_forward(x, (gamma[0] + gamma[1]) / 2, (beta[0] + beta[1]) / 2)
    np.testing.assert_allclose(y, y_ref, rtol=1e-15, atol=1e-15)


def test_one_hot_batch_gives_gradient_only_to_the_used_styles(rng):
    S = 5
    x, gamma, beta, dy = random_case(rng, N=4, C=3, S=S)
    y, cache = conditional_instance_norm_forward(x, gamma, beta, one_hot([3, 1, 3, 1], S))
    _, dgamma, dbeta = conditional_instance_norm_backward(dy, cache)
    unused = [0, 2, 4]
    assert not dgamma[unused].any() and not dbeta[unused].any()
    assert np.abs(dgamma[[1, 3]]).min() > 0 and np.abs(dbeta[[1, 3]]).min() > 0
    # each used row is the sum of its samples' per-sample gradients
    _, c_ref = instance_norm_forward(x, gamma[[3, 1, 3, 1]], beta[[3, 1, 3, 1]])
    _, dg_n, db_n = instance_norm_backward(dy, c_ref)
    np.testing.assert_allclose(dgamma[3], dg_n[0] + dg_n[2], rtol=1e-13)
    np.testing.assert_allclose(dbeta[1], db_n[1] + db_n[3], rtol=1e-13)


@pytest.mark.parametrize("gamma_shape, mix", [
    ((3, 4), np.ones((2, 2))),          # mix's S differs from gamma's
    ((3, 4), np.ones((3, 3))),          # mix's N differs from x's
    ((3, 4), np.ones(3)),               # mix not (N, S)
    ((3, 5), np.ones((2, 3))),          # gamma's C differs from x's
    ((4,), np.ones((2, 1))),            # gamma not (S, C)
    ((3, 4), np.array([[1.0, np.nan, 0.0], [1.0, 0.0, 0.0]])),   # not finite
    ((3, 4), np.array([[np.inf, 0.0, 0.0], [1.0, 0.0, 0.0]])),
])
def test_conditional_instance_norm_checks_its_arguments(gamma_shape, mix):
    x = np.zeros((2, 4, 3, 3))
    with pytest.raises(ValueError):
        conditional_instance_norm_forward(x, np.ones(gamma_shape), np.zeros(gamma_shape), mix)
    with pytest.raises(ValueError):  # beta of another shape than gamma
        conditional_instance_norm_forward(x, np.ones((3, 4)), np.zeros((2, 4)), np.ones((2, 3)))
    with pytest.raises(ValueError):  # not NCHW
        conditional_instance_norm_forward(x[0], np.ones((3, 4)), np.zeros((3, 4)), np.ones((2, 3)))


# ------------------------------------------------------------------------------ the layer

def test_layer(rng):
    C, S = 3, 4
    layer = ConditionalInstanceNorm2d(C, S, dtype=np.float64)
    assert layer.conditioned is True
    assert set(layer.params) == {"weight", "bias"}
    assert layer.params["weight"].shape == layer.params["bias"].shape == (S, C)
    assert (layer.params["weight"] == 1).all() and (layer.params["bias"] == 0).all()
    assert repr(layer) == "ConditionalInstanceNorm2d(3, n_styles=4, eps=1e-05)"
    layer.params["weight"][...] = rng.uniform(0.5, 1.5, (S, C))
    layer.params["bias"][...] = rng.standard_normal((S, C))
    x = rng.standard_normal((3, C, 4, 5))
    dy = rng.standard_normal(x.shape)
    style = rng.dirichlet(np.ones(S), 3)
    y, cache = layer.forward(x, style)
    np.testing.assert_allclose(y, naive_conditional_instance_norm(
        x, layer.params["weight"], layer.params["bias"], style), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(layer(x, style), y)
    dx, grads = layer.backward(dy, cache)
    assert set(grads) == set(layer.params)
    assert rel_error(dx, numgrad(lambda z: layer.forward(z, style)[0], x, dy)) < TOL
    for k, p in layer.params.items():
        def f(z, p=p):
            old = p.copy()
            p[...] = z
            try:
                return layer.forward(x, style)[0]
            finally:
                p[...] = old
        assert rel_error(grads[k], numgrad(f, p, dy)) < TOL, k
    with pytest.raises(ValueError):
        ConditionalInstanceNorm2d(C, 0)


def test_layer_float32_converts_the_style_weights(rng):
    """float64 style weights (a list, even) on a float32 layer: float32 results, the
    arguments untouched, agreement with float64."""
    C, S = 3, 2
    x = rng.standard_normal((2, C, 5, 6))
    dy = rng.standard_normal(x.shape)
    style = [[0.3, 0.7], [1.0, 0.0]]
    out = {}
    for dt in (np.float64, np.float32):
        layer = ConditionalInstanceNorm2d(C, S, dtype=dt)
        layer.params["weight"][...] = [[0.5, 1.0, 1.5], [1.2, 0.8, 1.0]]
        layer.params["bias"][...] = [[0.1, -0.2, 0.3], [0.0, 0.5, -0.5]]
        xd, dyd = x.astype(dt), dy.astype(dt)
        x_before, dy_before = xd.copy(), dyd.copy()
        y, cache = layer.forward(xd, style)
        dx, grads = layer.backward(dyd, cache)
        np.testing.assert_array_equal(xd, x_before)
        np.testing.assert_array_equal(dyd, dy_before)
        assert y.dtype == dx.dtype == dt and cache.mix.dtype == dt
        assert all(g.dtype == dt and g.shape == (S, C) for g in grads.values())
        out[dt] = (y, dx, grads["weight"], grads["bias"])
    for a32, a64 in zip(out[np.float32], out[np.float64]):
        np.testing.assert_allclose(a32, a64, rtol=1e-4, atol=1e-5 * np.abs(a64).max())


def test_in_containers(rng):
    """A residual block of conditional instance norm and a (smooth) activation: the
    containers hand the style weights to the conditioned layer; gradients of x and of
    every parameter."""
    if not getattr(Sequential, "conditioned", False):
        pytest.skip("the containers do not pass style weights yet (layers/base.py)")
    C, S = 3, 2
    net = Residual(Sequential([ConditionalInstanceNorm2d(C, S, dtype=np.float64), ScaledTanh(2.0, 0.5)]))
    assert set(net.params) == {"body.0.weight", "body.0.bias"}
    net.params["body.0.weight"][...] = rng.uniform(0.5, 1.5, (S, C))
    net.params["body.0.bias"][...] = rng.standard_normal((S, C))
    x = rng.standard_normal((2, C, 5, 4))
    style = np.array([[1.0, 0.0], [0.4, 0.6]])
    dy = rng.standard_normal(x.shape)
    y, cache = net.forward(x, style)
    dx, grads = net.backward(dy, cache)
    assert rel_error(dx, numgrad(lambda z: net.forward(z, style)[0], x, dy)) < TOL
    for k, p in net.params.items():
        def f(z, p=p):
            old = p.copy()
            p[...] = z
            try:
                return net.forward(x, style)[0]
            finally:
                p[...] = old
        assert rel_error(grads[k], numgrad(f, p, dy)) < TOL, k
