"""The transformation network: shapes for every option, the whole network's backward against
central finite differences in float64 (input and every parameter), the full training
objective (network → VGG16 perceptual loss) likewise, stylisation at any size, and model
files (round trip, float16, every kind of malformed file → ModelFileError)."""
import h5py
import numpy as np
import pytest

from minnst.gradcheck import directional_check, grad_check_sparse
from minnst.layers.base import Residual, Sequential
from minnst.layers.normalization import BatchNorm2d
from minnst.modelfile import ModelFileError, save_model
from minnst.train_fast import TrainingLoss
from minnst.transformer import TransformerConfig, TransformerNet
from minnst.vgg import VGG16



@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Tiny matrices: one BLAS thread (several spin-waiting threads on a busy 2-core
    machine made a 16-px VGG16 pass 60x slower)."""
    import scipy.linalg.blas  # noqa: F401  (load scipy's BLAS first, so the limit covers it)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


OPTIONS = [("nearest", "instance"), ("transpose", "batch"), ("nearest", "batch"), ("transpose", "instance")]
TOL = 1e-6  # float64, whole network: a composition of ~40 layers


def tiny(upsample="nearest", norm="instance", dtype=np.float64, seed=1, blocks=2, input_grad=True):
    return TransformerNet(TransformerConfig(width=0.125, norm=norm, upsample=upsample,
                                            residual_blocks=blocks), seed=seed, dtype=dtype,
                          input_grad=input_grad)


@pytest.mark.parametrize("upsample,norm", OPTIONS)
def test_shapes_range_and_channels(upsample, norm):
    net = tiny(upsample, norm, dtype=np.float32)
    assert net.config.channels == (4, 8, 16)
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 20, 24)).astype(np.float32)
    y, _ = net.forward(x)
    assert y.shape == (2, 3, 20, 24) and y.dtype == np.float32
    assert y.min() >= 0 and y.max() <= 255
    # train mode (both norms): forward without caches, instance norm + ReLU fused (rounding)
    assert np.abs(net.infer(x) - y).max() < 1e-3
    assert TransformerConfig(width=1.0).channels == (32, 64, 128)
    assert TransformerConfig(width=0.5).channels == (16, 32, 64)


def test_layout_is_the_papers():
    net = TransformerNet(TransformerConfig(width=0.25), dtype=np.float32)
    names = list(net.layers)
    assert names == ["down1", "down2", "down3", "res1", "res2", "res3", "res4", "res5",
                     "up1", "up2", "out", "tanh"]
    assert net.params["down1.conv.weight"].shape == (8, 3, 9, 9)
    assert net.params["down2.conv.weight"].shape == (16, 8, 3, 3)
    assert net.layers["down2"].layers["conv"].stride == 2
    assert net.params["out.weight"].shape == (3, 8, 9, 9)
    assert all(l.pad_mode == "reflect" for _, l in net.named_layers() if hasattr(l, "pad_mode"))


@pytest.mark.parametrize("upsample,norm", OPTIONS)
def test_whole_network_backward_matches_finite_differences(upsample, norm):
    rng = np.random.default_rng(0)
    net = tiny(upsample, norm)
    # Pixels in [0, 1] rather than [0, 255]: the normalisations make the network nearly
    # scale-invariant, so ∂f/∂x shrinks by 255 at the larger scale and sinks towards the
    # rounding noise of the differences.
    x = rng.uniform(0, 1, (2, 3, 16, 16))
    y, cache = net.forward(x)
    dy = rng.standard_normal(y.shape)
    dx, grads = net.backward(dy, cache)
    assert set(grads) == set(net.params)

    def f_x(z):
        return float((net.forward(z)[0] * dy).sum())

    assert directional_check(f_x, x, dx, h=1e-5)[0] < TOL
    for k, p in net.params.items():
        p0 = p.copy()

        def f_p(q, p=p, p0=p0):
            p[...] = q
            v = float((net.forward(x)[0] * dy).sum())
            p[...] = p0
            return v

        err, num, ana = directional_check(f_p, p0, grads[k], h=1e-6, seed=len(k))
        # The β of a residual block's last norm only shifts the residual stream by a
        # per-channel constant, which every later conv + normalisation removes: its true
        # gradient is 0, so the test is then that both are at the noise floor of the
        # differences (|f| ≈ 1e4, so rounding error / 2h ≈ 1e-6).
        assert err < TOL or (abs(ana) < 1e-9 and abs(num) < 1e-5), (k, err, num, ana)


def test_many_style_network_backward_matches_finite_differences():
    """A three-style network on a batch with one-hot and blended style rows: the input and
    every parameter (shared convolutions, each style's γ, β) against central differences."""
    rng = np.random.default_rng(5)
    net = TransformerNet(TransformerConfig(width=0.125, residual_blocks=1, styles=("a", "b", "c")),
                         seed=2, dtype=np.float64, input_grad=True)
    for k, v in net.params.items():
        if v.ndim == 2:  # (S, C) γ or β: make the styles differ
            v[...] = rng.normal(1.0 if k.endswith("weight") else 0.0, 0.3, v.shape)
    x = rng.uniform(0, 1, (2, 3, 16, 16))
    mix = np.array([[0.0, 1.0, 0.0], [0.6, 0.0, 0.4]])
    y, cache = net.forward(x, mix)
    dy = rng.standard_normal(y.shape)
    dx, grads = net.backward(dy, cache)
    assert set(grads) == set(net.params)
    assert directional_check(lambda z: float((net.forward(z, mix)[0] * dy).sum()), x, dx, h=1e-5)[0] < TOL
    for k in ("down1.norm.weight", "res1.body.norm1.bias", "up2.norm.weight", "down2.conv.weight"):
        p = net.params[k]
        p0 = p.copy()

        def f(q, p=p, p0=p0):
            p[...] = q
            v = float((net.forward(x, mix)[0] * dy).sum())
            p[...] = p0
            return v

        assert directional_check(f, p0, grads[k], h=1e-6, seed=len(k))[0] < TOL, k
    # a one-hot batch: only that style's rows have a gradient
    _, g = net.backward(dy, net.forward(x, net.style_mix("c", 2))[1])
    assert np.all(g["up1.norm.weight"][:2] == 0) and np.any(g["up1.norm.weight"][2] != 0)


def test_style_mix_accepts_names_blends_and_arrays():
    net = TransformerNet(TransformerConfig(width=0.125, residual_blocks=0, styles=("a", "b")))
    assert np.array_equal(net.style_mix("b", 2), [[0, 1], [0, 1]])
    assert np.allclose(net.style_mix({"a": 3, "b": 1}), [[0.75, 0.25]])
    assert np.allclose(net.style_mix(np.array([[1, 1], [0, 2]])), [[0.5, 0.5], [0, 1]])
    for bad in (None, "z", {"a": -1}, {"a": 0, "b": 0}, np.ones(3)):
        with pytest.raises(ValueError):
            net.style_mix(bad)
    one = TransformerNet(TransformerConfig(width=0.125, residual_blocks=0))
    assert one.style_mix(None) is None and one.styles == []
    with pytest.raises(ValueError):
        TransformerConfig(norm="batch", styles=("a", "b"))


def test_elementwise_gradient_of_a_few_coordinates():
    rng = np.random.default_rng(3)
    net = tiny(blocks=1)
    x = rng.uniform(0, 255, (1, 3, 16, 16))
    y, cache = net.forward(x)
    dy = rng.standard_normal(y.shape)
    _, grads = net.backward(dy, cache)
    for k in ("res1.body.conv2.weight", "up1.norm.weight", "out.bias"):
        p = net.params[k]
        p0 = p.copy()

        def f(q):
            p[...] = q
            v = float((net.forward(x)[0] * dy).sum())
            p[...] = p0
            return v

        assert grad_check_sparse(f, p0, grads[k], num_checks=5, h=1e-6) < 1e-6, k


@pytest.fixture(scope="module")
def vgg_max64(vgg16_f64):
    return VGG16(vgg16_f64.weights, pooling="max")


def test_training_objective_gradient_through_vgg(vgg_max64):
    """ŷ = net(x) → /255 → preprocess → VGG16 → Johnson content + style + TV: the gradient
    w.r.t. the output and w.r.t. parameters at both ends of the network."""
    rng = np.random.default_rng(5)
    style = rng.uniform(0, 1, (24, 20, 3))
    loss = TrainingLoss(vgg_max64, style, content_weight=1.0, style_weight=1e3, tv_weight=1e-2,
                        style_layer_weights=(1.0, 0.5, 2.0, 1.0), xp=np, dtype=np.float64)
    net = tiny(blocks=1)
    img = rng.uniform(0, 1, (2, 16, 16, 3))
    x = img.transpose(0, 3, 1, 2) * 255
    y, cache = net.forward(x)
    total, parts, dy = loss(y, img)
    assert total == pytest.approx(sum(parts.values()))
    assert all(v > 0 for v in parts.values())
    _, grads = net.backward(dy, cache)
    assert directional_check(lambda z: loss(z, img)[0], y, dy, h=1e-3)[0] < 1e-6
    for k in ("down1.conv.weight", "res1.body.conv1.weight", "up2.norm.bias", "out.weight"):
        p = net.params[k]
        p0 = p.copy()

        def f(q, p=p, p0=p0):
            p[...] = q
            v = loss(net.forward(x)[0], img)[0]
            p[...] = p0
            return v

        err = directional_check(f, p0, grads[k], h=1e-6)[0]
        assert err < 1e-6, (k, err)


@pytest.mark.parametrize("shape", [(16, 16), (13, 21), (5, 3), (1, 1), (37, 64)])
def test_stylize_any_size(shape):
    net = tiny(dtype=np.float32)
    img = np.random.default_rng(0).uniform(0, 1, (*shape, 3)).astype(np.float32)
    out = net.stylize(img)
    assert out.shape == (*shape, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert net.training  # restored after the eval-mode pass


def test_stylize_matches_forward_on_multiple_of_four():
    net = tiny(dtype=np.float32)
    img = np.random.default_rng(1).uniform(0, 1, (16, 20, 3)).astype(np.float32)
    y, _ = net.forward(img.transpose(2, 0, 1)[None] * 255)
    np.testing.assert_allclose(net.stylize(img), y[0].transpose(1, 2, 0) / 255, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    for upsample, norm in OPTIONS[:2]:
        net = tiny(upsample, norm, dtype=np.float32, seed=7)
        if norm == "batch":  # give the running statistics non-default values
            net.forward(np.random.default_rng(0).uniform(0, 255, (2, 3, 16, 16)).astype(np.float32))
        path = net.save(tmp_path / f"{upsample}.h5", meta={"style": "s.jpg", "iterations": 3})
        back = TransformerNet.load(path)
        assert back.config == net.config and back.meta["style"] == "s.jpg"
        for k, v in net.state_dict().items():
            assert np.array_equal(back.state_dict()[k], v), k
        img = np.random.default_rng(2).uniform(0, 1, (12, 12, 3)).astype(np.float32)
        np.testing.assert_array_equal(back.stylize(img), net.stylize(img))


def test_float16_file_is_smaller_and_close(tmp_path):
    net = tiny(dtype=np.float32)
    a = net.save(tmp_path / "a.h5")
    b = net.save(tmp_path / "b.h5", dtype=np.float16)
    assert b.stat().st_size < a.stat().st_size
    back = TransformerNet.load(b)
    assert back.params["out.weight"].dtype == np.float32
    img = np.random.default_rng(2).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    assert np.abs(back.stylize(img) - net.stylize(img)).max() < 0.02


def _tamper(path, name, value):
    with h5py.File(path, "r+") as f:
        del f["state"][name]
        f["state"].create_dataset(name, data=value)


def test_malformed_model_files_are_clear_errors(tmp_path):
    net = tiny(dtype=np.float32)
    good = net.save(tmp_path / "good.h5")
    state = net.state_dict()

    def expect(path, *words):
        with pytest.raises(ModelFileError) as e:
            TransformerNet.load(path)
        msg = str(e.value)
        assert "\n" not in msg
        for w in words:
            assert w in msg, msg

    expect(tmp_path / "missing.h5", "not found")
    (tmp_path / "text.h5").write_text("hello")
    expect(tmp_path / "text.h5", "not an HDF5")
    # a weight of the wrong shape
    bad = tmp_path / "shape.h5"
    bad.write_bytes(good.read_bytes())
    _tamper(bad, "res1.body.conv1.weight", np.zeros((16, 16, 5, 5), np.float32))
    expect(bad, "res1.body.conv1.weight", "(16, 16, 5, 5)", "expected (16, 16, 3, 3)")
    # NaN weights
    bad = tmp_path / "nan.h5"
    bad.write_bytes(good.read_bytes())
    _tamper(bad, "out.bias", np.full(3, np.nan, np.float32))
    expect(bad, "out.bias", "NaN")
    # integer weights
    bad = tmp_path / "int.h5"
    bad.write_bytes(good.read_bytes())
    _tamper(bad, "out.bias", np.zeros(3, np.int32))
    expect(bad, "out.bias", "dtype")
    # a missing array, and arrays of another width
    s = dict(state)
    del s["res2.body.norm1.weight"]
    save_model(tmp_path / "missing_key.h5", s, {"kind": "minnst-transformer", "width": 0.125, "norm": "instance",
                                                 "upsample": "nearest", "residual_blocks": 2})
    expect(tmp_path / "missing_key.h5", "missing", "res2.body.norm1.weight")
    save_model(tmp_path / "width.h5", state, {"kind": "minnst-transformer", "width": 0.25, "norm": "instance",
                                               "upsample": "nearest", "residual_blocks": 2})
    expect(tmp_path / "width.h5", "expected")
    # bad or foreign configs
    save_model(tmp_path / "kind.h5", state, {"kind": "something-else"})
    expect(tmp_path / "kind.h5", "not a transformer model")
    save_model(tmp_path / "cfg.h5", state, {"kind": "minnst-transformer", "width": "wide"})
    expect(tmp_path / "cfg.h5", "bad transformer config")
    save_model(tmp_path / "cfg2.h5", state, {"kind": "minnst-transformer", "norm": "layer"})
    expect(tmp_path / "cfg2.h5", "bad transformer config", "norm")
    save_model(tmp_path / "cfg3.h5", state, {"kind": "minnst-transformer", "depth": 3})
    expect(tmp_path / "cfg3.h5", "unknown")


def test_batch_norm_eval_uses_running_statistics():
    net = tiny("nearest", "batch", dtype=np.float64)
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 16, 16))
    net.forward(x)  # training mode: updates the running statistics
    net.eval()
    y1, _ = net.forward(x[:1])
    y2, _ = net.forward(np.concatenate([x[:1], x[1:] * 0.1]))
    np.testing.assert_allclose(y1[0], y2[0], atol=1e-10)  # per-sample: batch does not matter


def _with_bn_formula(layer, x, stats: dict):
    """The network's output with every ``BatchNorm2d`` written out here: train mode
    ``γ·(x − mean)/√(var + ε) + β`` with the batch's per-channel mean and biased variance
    (recording the running statistics PyTorch's update would leave in ``stats``), eval
    mode the same with the running statistics. Other layers run as they are."""
    if isinstance(layer, Residual):
        return x + _with_bn_formula(layer.layers["body"], x, stats)
    if isinstance(layer, Sequential):
        for child in layer.layers.values():
            x = _with_bn_formula(child, x, stats)
        return x
    if not isinstance(layer, BatchNorm2d):
        return layer.forward(x)[0]
    rm, rv = layer.buffers["running_mean"], layer.buffers["running_var"]
    if layer.training:
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        m = layer.momentum
        stats[id(layer)] = ((1 - m) * rm + m * mean, (1 - m) * rv + m * var * n / (n - 1))
    else:
        mean, var = rm, rv
        stats[id(layer)] = (rm.copy(), rv.copy())

    def c(a):
        return a.reshape(1, -1, 1, 1)

    return c(layer.params["weight"]) * (x - c(mean)) / np.sqrt(c(var) + layer.eps) + c(layer.params["bias"])


@pytest.mark.parametrize("upsample", ["nearest", "transpose"])
def test_batch_norm_train_and_eval_against_the_formula(upsample):
    """Train mode normalises with the batch's statistics and moves the running ones
    towards them; eval mode normalises with the running statistics and leaves them be.
    Both checked in float64 against ``_with_bn_formula``; the two modes really differ."""
    rng = np.random.default_rng(3)
    net = tiny(upsample, "batch")
    bns = [l for _, l in net.named_layers() if isinstance(l, BatchNorm2d)]
    assert len(bns) == 3 + 2 * 2 + 2  # down1..3, two per residual block, up1, up2
    for bn in bns:  # non-default γ, β and running statistics
        C = bn.C
        bn.params["weight"][...] = rng.uniform(0.5, 2.0, C)
        bn.params["bias"][...] = rng.standard_normal(C)
        bn.buffers["running_mean"][...] = rng.standard_normal(C)
        bn.buffers["running_var"][...] = rng.uniform(0.5, 2.0, C)
    x = rng.uniform(0, 255, (3, 3, 16, 20))
    for training in (True, False):
        net.train(training)
        before = {id(bn): (bn.buffers["running_mean"].copy(), bn.buffers["running_var"].copy()) for bn in bns}
        stats = {}
        ref = _with_bn_formula(net, x, stats)
        for bn in bns:  # the reference walk must not have touched the buffers
            assert np.array_equal(bn.buffers["running_mean"], before[id(bn)][0])
        y, _ = net.forward(x)
        np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-9 * 255)
        for bn in bns:
            np.testing.assert_allclose(bn.buffers["running_mean"], stats[id(bn)][0], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(bn.buffers["running_var"], stats[id(bn)][1], rtol=1e-12, atol=1e-12)
        if training:
            y_train = y
        else:
            assert np.abs(y - y_train).max() > 1.0  # running statistics != this batch's


def test_input_gradient_is_skipped_by_default():
    """Training needs no ∂/∂images: by default backward returns dx = None, and the very
    same parameter gradients as a network built with input_grad=True."""
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 255, (1, 3, 16, 16))
    default = TransformerNet(TransformerConfig(width=0.125, residual_blocks=1), seed=1, dtype=np.float64)
    full = tiny(blocks=1)
    y, cache = default.forward(x)
    dy = rng.standard_normal(y.shape)
    dx, grads = default.backward(dy, cache)
    dx_full, grads_full = full.backward(dy, full.forward(x)[1])
    assert dx is None and dx_full.shape == x.shape
    for k in grads:
        assert np.array_equal(grads[k], grads_full[k]), k


@pytest.mark.parametrize("upsample", ["nearest", "transpose"])
def test_inference_lets_go_of_a_norms_input_before_a_layer_that_makes_its_map(upsample, monkeypatch):
    """In inference an instance norm (+ ReLU) is a map its consumer applies band by band; a
    block that cannot (a transposed convolution, a residual sum) gets it made first, and the
    convolution output it maps must be gone by then, not held while the block runs: which
    blocks take the map (``_takes_affine``), and, when each transposed convolution runs,
    whether the input of the norm before it is still alive (a weak reference)."""
    import weakref

    from minnst import transformer as tr
    from minnst.layers import conv as convmod

    net = TransformerNet(TransformerConfig(width=0.5, upsample=upsample), seed=0).eval()
    blocks = dict(net.layers)
    assert tr._takes_affine(blocks["down2"], True) and not tr._takes_affine(blocks["res1"], True)
    assert tr._takes_affine(blocks["up1"], True) == (upsample == "nearest")
    assert not tr._takes_affine(blocks["up1"], False)
    norm_inputs, alive_at_transposed = [], []
    infer_norm, transposed = tr._infer_norm, convmod.conv_transpose2d_forward

    def recording_norm(norm, x, *args, **kwargs):
        norm_inputs.append(weakref.ref(x))
        return infer_norm(norm, x, *args, **kwargs)

    def checking_transposed(x, *args, **kwargs):
        alive_at_transposed.append(norm_inputs[-1]() is not None)
        return transposed(x, *args, **kwargs)

    monkeypatch.setattr(tr, "_infer_norm", recording_norm)
    monkeypatch.setattr(convmod, "conv_transpose2d_forward", checking_transposed)
    net.stylize(np.random.default_rng(0).random((64, 48, 3), dtype=np.float32))
    assert len(norm_inputs) == 15
    assert alive_at_transposed == ([False, False] if upsample == "transpose" else [])
