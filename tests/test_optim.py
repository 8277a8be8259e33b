"""Adam: against the textbook update written out independently, on a quadratic, in place
through a layer's parameters, and state save/load giving exactly the uninterrupted run."""
import numpy as np
import pytest

from minnst.layers.conv import Conv2d
from minnst.optim import Adam


def adam_textbook(theta, grads_seq, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Algorithm 1 of Kingma & Ba, with the bias-corrected moments spelled out."""
    theta = theta.astype(np.float64).copy()
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t, g in enumerate(grads_seq, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_matches_textbook_adam(eps):
    rng = np.random.default_rng(0)
    theta0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) * 10 ** rng.uniform(-3, 1) for _ in range(25)]
    p = {"w": theta0.copy()}
    opt = Adam(p, lr=0.01, betas=(0.8, 0.99), eps=eps)
    for g in grads:
        opt.step({"w": g})
    np.testing.assert_allclose(p["w"], adam_textbook(theta0, grads, 0.01, 0.8, 0.99, eps), rtol=1e-12, atol=1e-14)
    assert opt.t == 25


def test_minimises_a_quadratic():
    target = np.array([1.0, -2.0, 3.0])
    p = {"x": np.zeros(3)}
    opt = Adam(p, lr=0.1)
    for _ in range(500):
        opt.step({"x": 2 * (p["x"] - target)})
    np.testing.assert_allclose(p["x"], target, atol=1e-3)


def test_updates_the_layers_own_arrays_in_float32():
    conv = Conv2d(2, 3, 3, rng=np.random.default_rng(0))
    w_before = conv.params["weight"].copy()
    opt = Adam(conv.params, lr=1e-2)
    opt.step({"weight": np.ones_like(w_before), "bias": None})
    assert conv.params["weight"].dtype == np.float32
    np.testing.assert_allclose(conv.params["weight"], w_before - 1e-2, atol=1e-6)
    assert np.array_equal(opt.m["bias"], np.zeros(3, np.float32))  # no gradient, no update


def test_state_round_trip_is_exact():
    rng = np.random.default_rng(1)
    grads = [{"a": rng.standard_normal(5).astype(np.float32), "b": rng.standard_normal((2, 2)).astype(np.float32)}
             for _ in range(10)]
    init = {"a": rng.standard_normal(5).astype(np.float32), "b": rng.standard_normal((2, 2)).astype(np.float32)}
    straight = {k: v.copy() for k, v in init.items()}
    opt = Adam(straight, lr=3e-3)
    for g in grads:
        opt.step(g)
    first = {k: v.copy() for k, v in init.items()}
    opt1 = Adam(first, lr=3e-3)
    for g in grads[:4]:
        opt1.step(g)
    saved = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in opt1.state_dict().items()}
    resumed = {k: v.copy() for k, v in first.items()}
    opt2 = Adam(resumed, lr=1.0)  # the state brings its own hyper-parameters
    opt2.load_state_dict(saved)
    for g in grads[4:]:
        opt2.step(g)
    for k in init:
        assert np.array_equal(resumed[k], straight[k])
    assert opt2.t == 10 and opt2.lr == 3e-3


def test_errors():
    p = {"w": np.zeros(3)}
    opt = Adam(p)
    with pytest.raises(ValueError, match="shape"):
        opt.step({"w": np.zeros(4)})
    with pytest.raises(KeyError, match="unknown"):
        opt.step({"z": np.zeros(3)})
    with pytest.raises(ValueError):
        Adam(p, lr=0)
    with pytest.raises(ValueError):
        Adam(p, betas=(1.0, 0.999))
    state = opt.state_dict()
    with pytest.raises(ValueError, match="shape"):
        Adam({"w": np.zeros(2)}).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        Adam({"w": np.zeros(3), "u": np.zeros(1)}).load_state_dict(state)
