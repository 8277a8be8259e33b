"""VGG16 with the real weights: layer bookkeeping, activations against an independent
loop implementation, and the input gradient against finite differences."""
import numpy as np
import pytest

from minnst import vgg
from minnst.gradcheck import directional_check, rel_error
from minnst.layers.conv import conv2d_naive
from minnst.layers.pooling import avgpool2d_naive, maxpool2d_naive


def naive_vgg(weights, x, upto, pooling):
    """Independent forward: loop convolution, explicit ReLU, loop pooling."""
    out = {}
    h = x
    for name in vgg.LAYER_NAMES:
        if name.startswith("conv"):
            w, b = weights[name]
            h = conv2d_naive(h, w.astype(h.dtype), b.astype(h.dtype), 1, 1)
        elif name.startswith("relu"):
            h = np.maximum(h, 0)
        else:
            h = (maxpool2d_naive if pooling == "max" else avgpool2d_naive)(h, 2, 2)
        out[name] = h
        if name == upto:
            return out


def test_layer_names_and_shapes():
    assert vgg.CONV_NAMES[0] == "conv1_1" and vgg.CONV_NAMES[-1] == "conv5_3"
    assert len(vgg.CONV_NAMES) == 13 and "relu4_2" in vgg.LAYER_NAMES and "pool5" in vgg.LAYER_NAMES
    assert vgg.expected_shapes()["conv3_1"] == ((256, 128, 3, 3), (256,))
    with pytest.raises(ValueError, match="relu9_9"):
        vgg.check_layer_names(["relu1_1", "relu9_9"])


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_activations_match_independent_implementation(vgg16_f32, pooling, rng=np.random.default_rng(1)):
    net = vgg.VGG16(vgg16_f32.weights, pooling=pooling)
    x = rng.standard_normal((1, 3, 18, 20)).astype(np.float32)  # odd pooled sizes too
    layers = ["conv1_2", "relu2_2", "pool3", "relu4_2", "relu5_1"]
    feats, _ = net.forward(x, layers)
    ref = naive_vgg({k: (w.astype(np.float64), b.astype(np.float64)) for k, (w, b) in net.weights.items()},
                    x.astype(np.float64), "relu5_1", pooling)
    for name in layers:
        assert feats[name].shape == ref[name].shape
        scale = np.abs(ref[name]).max()
        assert np.abs(feats[name] - ref[name]).max() / scale < 1e-4, name


def test_forward_stops_at_deepest_requested_layer(vgg16_f32):
    x = np.zeros((1, 3, 32, 32), np.float32)
    feats, cache = vgg16_f32.forward(x, ["relu2_1"])
    assert [n for n, _ in cache][-1] == "relu2_1"
    assert set(feats) == {"relu2_1"} and feats["relu2_1"].shape == (1, 128, 16, 16)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_input_gradient_directional(vgg16_f64, pooling):
    """∂(Σ_l <g_l, φ_l(x)>)/∂x along random directions vs central differences (float64)."""
    rng = np.random.default_rng(3)
    net = vgg.VGG16(vgg16_f64.weights, pooling=pooling)
    x = rng.standard_normal((1, 3, 20, 22))
    layers = ["relu1_1", "conv2_2", "relu3_1", "relu4_2", "relu5_1"]
    feats, _ = net.forward(x, layers)
    g = {n: rng.standard_normal(f.shape) for n, f in feats.items()}

    def f(z):
        fz, _ = net.forward(z, layers)
        return sum(np.sum(g[n] * fz[n]) for n in layers)

    _, cache = net.forward(x, layers)
    dx = net.backward(g, cache)
    for seed in range(3):
        err, num, ana = directional_check(f, x, dx, h=1e-5, seed=seed)
        assert err < 1e-6, (err, num, ana)


def test_backward_with_gradient_at_a_shallow_layer_only(vgg16_f64):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 16, 16))
    feats, cache = vgg16_f64.forward(x, ["relu1_2", "relu3_1"])
    g = rng.standard_normal(feats["relu1_2"].shape)
    dx = vgg16_f64.backward({"relu1_2": g}, cache)
    f1, c1 = vgg16_f64.forward(x, ["relu1_2"])
    assert rel_error(dx, vgg16_f64.backward({"relu1_2": g}, c1)) < 1e-12
    with pytest.raises(ValueError):
        vgg16_f64.backward({"relu4_1": g}, c1)


def test_forward_flops_counts_the_convolutions():
    # conv1_1 at 8×8: 2·64·3·9·64 FLOPs
    assert vgg.forward_flops(8, 8, "relu1_1") == 2 * 64 * 3 * 9 * 64
    assert vgg.forward_flops(512, 512, "relu5_1") > vgg.forward_flops(512, 512, "relu4_3")


def test_matches_pytorch_if_installed(vgg16_f32):
    """Optional cross-check with PyTorch (not a dependency): same weights, same input."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, 40, 36)).astype(np.float32)
    layers = ["relu1_2", "relu3_3", "relu5_1"]
    feats, cache = vgg16_f32.forward(x, layers)
    g = {n: rng.standard_normal(f.shape).astype(np.float32) for n, f in feats.items()}
    dx = vgg16_f32.backward(g, cache)

    xt = torch.tensor(x, requires_grad=True)
    h, out = xt, {}
    for name in vgg.LAYER_NAMES[:vgg.LAYER_NAMES.index("relu5_1") + 1]:
        if name.startswith("conv"):
            w, b = vgg16_f32.weights[name]
            h = torch.nn.functional.conv2d(h, torch.tensor(w), torch.tensor(b), padding=1)
        elif name.startswith("relu"):
            h = torch.relu(h)
        else:
            h = torch.nn.functional.avg_pool2d(h, 2)
        out[name] = h
    total = sum((out[n] * torch.tensor(g[n])).sum() for n in layers)
    total.backward()
    for n in layers:
        ref = out[n].detach().numpy()
        assert np.abs(feats[n] - ref).max() / np.abs(ref).max() < 1e-4
    ref_dx = xt.grad.numpy()
    assert np.abs(dx - ref_dx).max() / np.abs(ref_dx).max() < 1e-4


def test_fast_method_takes_f4_winograd_on_wide_layers_and_agrees(vgg16_f32, vgg16_f64):
    """``forward(method="fast")`` (the training loss's path): F(4×4) Winograd on the layers
    with 128 channels on both sides, the other layers as "auto"; the features equal auto's
    to float64 rounding, and stay within 1e-5 (relative, worst element) in float32."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 40, 36))
    feats64, cache = vgg16_f64.forward(x, ["relu4_1"], method="fast")
    methods = {name: c.method for name, c in cache if name.startswith("conv")}
    assert methods["conv1_2"] == methods["conv2_1"] != "winograd4"
    assert {methods[n] for n in ("conv2_2", "conv3_1", "conv3_3", "conv4_1")} == {"winograd4"}
    ref64 = vgg16_f64.forward(x, ["relu4_1"])[0]["relu4_1"]
    assert rel_error(feats64["relu4_1"], ref64) < 1e-10
    fast32 = vgg16_f32.forward(x.astype(np.float32), ["relu4_1"], method="fast")[0]["relu4_1"]
    assert np.abs(fast32 - ref64).max() / np.abs(ref64).max() < 1e-5
