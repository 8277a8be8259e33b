"""The exact tiled evaluation of the Gatys objective (``minnst.tiling``,
``PerceptualLoss.loss_and_grad_tiled``, ``gatys.Objective(tile=…)``).

* the geometry: tiles partition every layer's grid, crops start on the total stride, and
  every own position lies where a crop computes the whole image's value — by
  ``tiling.exact_range``, the forward walk that is the formula's independent twin, itself
  checked against the real network;
* exactness: tiled loss, terms and gradient against the untiled ones with the real VGG16,
  in float64 (≤ 1e-10 relative) and float32 (loss ≤ 1e-5, gradient ≤ 1e-4), on sizes that
  are multiples of neither the tile nor 16, tiles smaller than the receptive field, both
  poolings and normalisations, two styles blended, one style tiled itself, up to relu5_1;
  and the finite-difference check on a tiled objective;
* ``stylize`` with ``tile`` against ``stylize`` without;
* memory: tracemalloc's peak of a tiled evaluation against the untiled one.

Gradients are compared by ``max|g_tiled − g| / max|g|``.
"""
import tracemalloc

import numpy as np
import pytest

from minnst import gatys, images, losses, perceptual, procedural, tiling
from minnst.errors import ConfigError
from minnst.gradcheck import directional_check
from minnst.vgg import LAYER_NAMES, VGG16

SHALLOW = dict(content_layers=["relu2_2"], style_layers=["relu1_1", "relu2_1", "relu3_1"],
               style_layer_weights=[0.5, 0.3, 0.2])
DEEP = dict(content_layers=["relu4_2"], style_layers=["relu1_1", "relu3_1", "relu5_1"])


def rel(a, b) -> float:
    """``max|a − b| / max|b|``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def image(h, w, seed, dtype=np.float64):
    """A smooth picture with texture: gradients, a disc, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.3 + 0.5 * x, 0.2 + 0.6 * y, 0.5 + 0.3 * np.sin(9 * x + 5 * y)], -1)
    img[(y - 0.4) ** 2 + (x - 0.6) ** 2 < 0.05] = [0.9, 0.8, 0.2]
    return np.clip(img + 0.1 * rng.standard_normal((h, w, 3)), 0, 1).astype(dtype)


def pastiche(content, seed=7):
    rng = np.random.default_rng(seed)
    return np.clip(content + 0.3 * rng.standard_normal(content.shape), 0, 1).astype(content.dtype)


def balanced(c, styles, net, **kw):
    """Objective keyword arguments with α, β, λ_tv chosen so that content, style and TV
    each contribute 1 at ``pastiche(c)``: no term hides another's error."""
    probe = gatys.Objective(c, styles, alpha=1.0, beta=1.0, tv_weight=1.0, net=net, **kw)
    probe.loss_and_grad(pastiche(c))
    t = probe.last
    return dict(kw, alpha=1 / t.content_raw, beta=1 / t.style_raw, tv_weight=1 / t.tv_raw, net=net)


def compare(c, styles, tile, **kw):
    """(untiled Objective, tiled Objective, relative errors of loss, terms, gradient)."""
    x = pastiche(c)
    whole = gatys.Objective(c, styles, **kw)
    tiled = gatys.Objective(c, styles, tile=tile, **kw)
    assert tiled.tile_count > 1
    lw, gw = whole.loss_and_grad(x)
    lt, gt = tiled.loss_and_grad(x)
    assert gt.shape == gw.shape and gt.dtype == gw.dtype
    a, b = whole.last, tiled.last
    terms = max(abs(getattr(b, k) - getattr(a, k)) / abs(getattr(a, k)) for k in ("content", "style", "tv"))
    layers = max(abs(b.style_layers[l] - v) / abs(v) for l, v in a.style_layers.items())
    return whole, tiled, abs(lt - lw) / abs(lw), max(terms, layers), rel(gt, gw)


@pytest.fixture(scope="module")
def vgg16_max_f64(vgg16_path):
    return VGG16.load(vgg16_path, pooling="max", dtype=np.float64)


# ------------------------------------------------------------------------ geometry (no network)


def test_receptive_field_and_stride():
    assert tiling.receptive_radius("relu5_1") == 58  # 2·1 + 2·2 + 3·4 + 3·8 + 1·16
    assert tiling.receptive_radius("relu1_1") == 1
    assert tiling.receptive_radius("pool2") == tiling.receptive_radius("relu2_2") == 6
    names = ("conv1_1", "pool1", "relu2_1", "relu4_3", "pool4", "relu5_1")
    assert [tiling.layer_factor(n) for n in names] == [1, 2, 2, 8, 16, 16]
    assert tiling.deepest(["relu5_1", "relu1_1", "relu4_2"]) == "relu5_1"
    for bad in (8, 15, 16.0, "auto", True, -32):
        with pytest.raises(ValueError, match="tile"):
            tiling.check_tile(bad)
    assert tiling.check_tile(np.int64(16)) == 16 and tiling.check_tile(None) is None


@pytest.mark.parametrize("layers", [["relu1_1"], ["relu1_2", "relu2_1"], ["relu2_2", "relu3_1"],
                                    ["relu1_1", "relu4_2"], ["relu1_1", "relu3_1", "relu5_1"], ["pool5"]])
def test_spans_partition_align_and_are_exact(layers):
    """For many axis lengths and tiles (smaller and larger than the receptive field):
    the own positions partition each used layer's grid [0, n // s_l), each crop starts on
    a multiple of the total stride S, and exact_range says the crop computes the whole
    image's values at every own position. Cutting the halo by S, or starting the crop
    S/2 earlier (misaligned), loses that for some tile."""
    last = tiling.deepest(layers)
    S = tiling.layer_factor(last)
    def covers(ex, own):
        return own[0] >= own[1] or ex[0] <= own[0] and own[1] <= ex[1]

    less_halo = misaligned = False
    for n in range(S, 260, 7):
        for tile in (16, 24, 40, 64):
            sp = tiling.spans(n, tile, layers)
            assert [s.start for s in sp] == list(range(0, n, tile)) and sp[-1].stop == n
            for l in layers:
                s_l = tiling.layer_factor(l)
                assert [s.own[l][0] for s in sp][0] == 0 and sp[-1].own[l][1] == n // s_l
                assert all(a.own[l][1] == b.own[l][0] for a, b in zip(sp, sp[1:]))
            for s in sp:
                assert s.crop_start % S == 0 and 0 <= s.crop_start <= s.start < s.stop <= s.crop_stop <= n
                exact = tiling.exact_range(s.crop_start, s.crop_stop, n, last)
                assert all(covers(exact[l], s.own[l]) for l in layers), (n, tile, s, exact)
                if S > 1 and s.crop_start >= S:  # the halo and the alignment are needed
                    own, a, b = s.own[last], s.crop_start, s.crop_stop
                    less_halo |= not covers(tiling.exact_range(a + S, b, n, last)[last], own)
                    misaligned |= not covers(tiling.exact_range(a - S // 2, b, n, last)[last], own)
    assert S == 1 or (less_halo and misaligned)


def test_exact_range_matches_the_network(vgg16_f64):
    """exact_range against VGG16 itself: on a crop of the rows, positions inside the
    range equal the whole image's (1e-12), the first positions outside differ; a crop
    start that is even but not a multiple of 4 misaligns pool2, which then matches nowhere."""
    img = image(60, 24, 0)
    check = [n for n in LAYER_NAMES[:LAYER_NAMES.index("conv3_1") + 1] if not n.startswith("relu")]
    whole = vgg16_f64.forward(images.preprocess(img), check)[0]
    for a, b in ((8, 52), (0, 37), (12, 60), (6, 60)):
        crop = vgg16_f64.forward(images.preprocess(img[a:b]), check)[0]
        exact = tiling.exact_range(a, b, 60, "conv3_1")
        for name in check:
            s = tiling.layer_factor(name)
            off, rows = a // s, crop[name].shape[2]
            lo, hi = exact[name]
            W, C = whole[name][0, :, :, :], crop[name][0]
            if a % (2 * s) and lo >= hi:  # the misaligned pool and after: no row is right
                assert all(np.abs(C[:, r] - W[:, r + off]).max() > 1e-6 for r in range(rows)
                           if r + off < W.shape[1])
                continue
            assert np.abs(C[:, lo - off:hi - off] - W[:, lo:hi]).max() < 1e-12, (a, b, name)
            for r in (lo - 1, hi):
                if 0 <= r - off < rows:
                    assert np.abs(C[:, r - off] - W[:, r]).max() > 1e-6, (a, b, name, r)


def test_tile_for_workers():
    """The tile a cluster gets when none is given: at least as many tiles as workers (or
    ``MIN_TILE`` for an image too small for that), and the largest tile of its family
    ``⌈max(H, W) / k⌉`` that does it; ``tile_count`` counts what ``tiles`` makes."""
    for H, W in ((40, 56), (1024, 768), (75, 61), (16, 300), (4096, 3072)):
        for workers in (1, 2, 3, 5, 16, 64):
            T = tiling.tile_for_workers(H, W, workers)
            n = tiling.tile_count(H, W, T)
            assert n == len(tiling.tiles(H, W, T, ["relu5_1"]))
            assert n >= workers or T == tiling.MIN_TILE, (H, W, workers, T)
            k = -(-max(H, W) // T)  # T = ⌈max(H, W) / k⌉: the one larger tile is ⌈max(H, W) / (k − 1)⌉
            assert k == 1 or tiling.tile_count(H, W, -(-max(H, W) // (k - 1))) < workers
    assert tiling.tile_for_workers(1024, 768, 1) == 1024  # one worker: one tile, the whole image
    assert tiling.tile_for_workers(1024, 768, 2) == 512 and tiling.tile_for_workers(20, 20, 8) == tiling.MIN_TILE


# ------------------------------------------------------------------------ exactness (real VGG16)


@pytest.mark.parametrize("norm", losses.NORMALIZATIONS)
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_tiled_equals_untiled_float64(vgg16_f64, vgg16_max_f64, pooling, norm):
    """75×61 pixels (a multiple of neither 16 nor the tile), tiles of 20 (smaller than the
    receptive field of relu3_1, 24 pixels), two styles blended 3:1 of which the first
    (56×45) is tiled itself, content relu2_2, style relu1_1/relu2_1/relu3_1 weighted
    unequally, TV: loss, every term and the gradient within 1e-10."""
    net = vgg16_f64 if pooling == "avg" else vgg16_max_f64
    c = image(75, 61, 0)
    styles = [procedural.stained_glass(56, 45, seed=1).astype(np.float64), image(18, 19, 3)]
    kw = balanced(c, styles, net, style_blend_weights=[3, 1], pooling=pooling, normalization=norm,
                  **SHALLOW)
    whole, tiled, e_loss, e_terms, e_grad = compare(c, styles, 20, **kw)
    assert tiled.tile_count == 16
    for targets in ("content_targets", "style_targets"):
        a, b = getattr(whole, targets), getattr(tiled, targets)
        assert max(rel(b[l], a[l]) for l in a) < 1e-12, targets
    assert e_loss < 1e-10 and e_terms < 1e-10 and e_grad < 1e-10, (e_loss, e_terms, e_grad)


def test_tiled_equals_untiled_to_relu5_1(vgg16_f64):
    """Down to relu5_1 (receptive radius 58, stride 16): 150×40 pixels in tiles of 32, so
    the later crops start inside the image (at 32 and 64) and every crop is cut at the
    image's border somewhere."""
    c = image(150, 40, 1)
    styles = [procedural.stained_glass(40, 44, seed=2).astype(np.float64)]
    kw = balanced(c, styles, vgg16_f64, **DEEP)
    plan = tiling.tiles(150, 40, 32, kw["style_layers"] + kw["content_layers"])
    starts = sorted({t.rows.crop_start for t in plan})
    assert starts == [0, 32, 64]
    _, tiled, e_loss, e_terms, e_grad = compare(c, styles, 32, **kw)
    assert tiled.tile_count == 10
    assert e_loss < 1e-10 and e_terms < 1e-10 and e_grad < 1e-10, (e_loss, e_terms, e_grad)


def test_tile_gradient_does_not_depend_on_the_targets_layout(vgg16_f64):
    """A tile's content sum Σ (F − P)² is summed in the memory order of F − P, which NumPy
    takes from P's: content targets that arrive C-contiguous (from a Dask worker) give the
    bits of the serial targets (channels-last views) because ``tile_gradient`` puts them
    back in channels-last memory (``perceptual.channels_last``)."""
    c = image(40, 56, 0)
    obj = gatys.Objective(c, [], net=vgg16_f64, content_layers=["relu1_2", "relu2_2"], style_layers=[],
                          tile=16)
    x = pastiche(c)[None]
    shapes = obj.loss.feature_shapes(x.shape)
    for t in obj.plan:
        own = {l: obj.content_targets[l][(..., *t.whole(l))] for l in obj.content_layers if t.owns(l)}
        moved = {l: np.ascontiguousarray(P) for l, P in own.items()}
        assert all(not perceptual.channels_last(P) is P for P in moved.values())
        crop = perceptual.tile_crop(x, t)
        (a, da), (b, db) = (obj.loss.tile_gradient(crop, t, P, shapes, {}) for P in (own, moved))
        assert a == b and np.array_equal(da, db)


@pytest.mark.parametrize("norm", losses.NORMALIZATIONS)
def test_tiled_equals_untiled_float32(vgg16_f32, norm):
    """The run-time dtype: loss within 1e-5, gradient within 1e-4 (relative)."""
    c = image(70, 53, 2, np.float32)
    styles = [procedural.stained_glass(50, 60, seed=4), image(30, 30, 5, np.float32)]
    kw = balanced(c, styles, vgg16_f32, normalization=norm, **SHALLOW)
    _, _, e_loss, e_terms, e_grad = compare(c, styles, 24, **kw)
    assert e_loss < 1e-5 and e_terms < 1e-5 and e_grad < 1e-4, (e_loss, e_terms, e_grad)


def test_perceptual_loss_tiled_on_a_batch(vgg16_f64):
    """``PerceptualLoss.loss_and_grad_tiled`` on a batch of two, as training evaluates it:
    a content target per image, Johnson's normalisation, style weights w_l / C_l²."""
    style_layers = ["relu1_2", "relu2_2"]
    loss = perceptual.PerceptualLoss(vgg16_f64, ["relu2_2"], style_layers,
                                     perceptual.mean_gram_layer_weights(style_layers),
                                     beta=1e3, tv_weight=1e-3, normalization=losses.JOHNSON)
    photos = np.stack([image(41, 50, 1), image(41, 50, 2)])
    x = np.stack([pastiche(p, seed=i) for i, p in enumerate(photos)])
    style = procedural.stained_glass(44, 36, seed=1).astype(np.float64)
    P, A = loss.content_targets(photos), loss.style_targets([style])
    Pt, At = loss.content_targets(photos, tile=16), loss.style_targets([style], tile=16)
    (a, ga), (b, gb) = loss.loss_and_grad(x, P, A), loss.loss_and_grad_tiled(x, Pt, At, 16)
    assert gb.shape == x.shape
    for k in ("total", "content", "style", "tv"):
        assert getattr(b, k) == pytest.approx(getattr(a, k), rel=1e-10), k
    assert rel(gb, ga) < 1e-10


def test_one_tile_is_the_untiled_evaluation(vgg16_f64):
    """An image (and style image) within one tile is evaluated whole: bit for bit the
    untiled objective."""
    c = image(40, 33, 0)
    styles = [procedural.stained_glass(44, 48, seed=1).astype(np.float64)]
    x = pastiche(c)
    whole = gatys.Objective(c, styles, net=vgg16_f64, tv_weight=1.0, **SHALLOW)
    tiled = gatys.Objective(c, styles, net=vgg16_f64, tv_weight=1.0, tile=48, **SHALLOW)
    assert tiled.tile_count == 1
    (lw, gw), (lt, gt) = whole.loss_and_grad(x), tiled.loss_and_grad(x)
    assert lt == lw and np.array_equal(gt, gw)


def test_tiled_gradient_matches_finite_differences(vgg16_f64):
    """The float64 central-difference check, along random directions, on a tiled objective
    (at a point away from the ReLUs' kinks, as in test_gatys)."""
    c = image(37, 45, 4)
    styles = [procedural.stained_glass(40, 40, seed=1).astype(np.float64)]
    kw = balanced(c, styles, vgg16_f64, **SHALLOW)
    obj = gatys.Objective(c, styles, tile=16, **kw)
    assert obj.tile_count == 9
    x = np.clip(c * 0.6 + 0.4 * np.random.default_rng(0).random(c.shape), 0.05, 0.95)
    value, grad = obj.loss_and_grad(x)
    f = lambda z: obj.loss_and_grad(z)[0]  # noqa: E731
    for seed in range(2):
        err, num, ana = directional_check(f, x, grad, h=1e-5, seed=seed)
        assert err < 1e-6, (seed, num, ana)


def test_objective_and_config_check_the_tile(vgg16_f32):
    c = image(32, 32, 0, np.float32)
    for bad in (8, 0, 20.5, "auto"):
        with pytest.raises(ValueError, match="tile"):
            gatys.Objective(c, [c], net=vgg16_f32, tile=bad, **SHALLOW)
        with pytest.raises(ConfigError, match="tile"):
            gatys.GatysConfig(tile=bad).validate()
    assert gatys.GatysConfig(tile=512).validate().to_json()["tile"] == 512
    # one tile per scale (None: that scale whole); one value for all scales
    per_scale = gatys.GatysConfig(scales=[128, 256, 512], tile=[None, None, 64]).validate()
    assert per_scale.scale_tiles == [None, None, 64] and per_scale.to_json()["tile"] == [None, None, 64]
    assert gatys.GatysConfig(scales=[128, 256], tile=[64]).validate().tile == 64
    assert gatys.GatysConfig(scales=[128, 256], tile=64).validate().scale_tiles == [64, 64]
    for bad in ([None, 8], [64, 64, 64], [None, "auto"]):
        with pytest.raises(ConfigError, match="tile"):
            gatys.GatysConfig(scales=[128, 256], tile=bad).validate()


def test_stylize_passes_the_tile_through(vgg16_f32):
    """Two scales (the first within one tile, the second in 3×3 tiles), two styles blended,
    style scale, luminance preservation: the same run tiled and untiled."""
    c, styles = image(45, 60, 0, np.float32), [procedural.stained_glass(50, 50, seed=1), image(40, 40, 2)]
    opts = dict(scales=[24, 56], iterations=3, style_blend_weights=[2, 1], style_scale=0.7,
                style_weight=1e4, preserve_colors="luminance", device="cpu", quiet=True, **SHALLOW)
    runs = [gatys.stylize(c, styles, gatys.GatysConfig(tile=t, **opts), net=vgg16_f32) for t in (None, 20)]
    a, b = runs
    assert a.image.shape == b.image.shape == (42, 56, 3)
    assert b.evaluations == a.evaluations
    assert [h["loss"] for h in b.history] == pytest.approx([h["loss"] for h in a.history], rel=1e-4)
    assert np.abs(a.image - b.image).max() < 1e-3


def test_stylize_tiles_only_the_scales_given(vgg16_f32, monkeypatch):
    """A tile per scale: the scale given None is evaluated whole, bit for bit the untiled
    run's, and the next one in tiles (the same run within rounding)."""
    c, styles = image(45, 60, 0, np.float32), [procedural.stained_glass(50, 50, seed=1)]
    opts = dict(scales=[40, 56], iterations=3, style_weight=1e4, device="cpu", quiet=True, **SHALLOW)
    counts = []

    class Spy(gatys.Objective):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            counts.append(self.tile_count)

    monkeypatch.setattr(gatys.run, "Objective", Spy)
    whole = gatys.stylize(c, styles, gatys.GatysConfig(**opts), net=vgg16_f32)
    mixed = gatys.stylize(c, styles, gatys.GatysConfig(tile=[None, 20], **opts), net=vgg16_f32)
    assert counts == [1, 1, 1, 9]  # 30×40 whole, then 42×56 in 3×3 tiles of 20
    first = [h["loss"] for h in whole.history if h["scale"] == 0]
    assert [h["loss"] for h in mixed.history[:len(first)]] == first
    assert [h["loss"] for h in mixed.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-4)


# ------------------------------------------------------------------------ memory


def test_tiled_evaluation_memory_is_bounded_by_the_tile(vgg16_f32):
    """tracemalloc's peak during one evaluation (targets made before): 160×160 pixels in
    tiles of 32 allocate under a fifth of the untiled peak (measured: 10× less, 5.3 MB
    against 51 MB)."""
    c = image(160, 160, 0, np.float32)
    styles = [procedural.stained_glass(48, 48, seed=1)]
    x = pastiche(c)
    peaks = {}
    for tile in (None, 32):
        obj = gatys.Objective(c, styles, net=vgg16_f32, tv_weight=1.0, tile=tile,
                              content_layers=["relu2_1"], style_layers=["relu1_1", "relu2_1"])
        obj.loss_and_grad(x)  # warm: the network's one-off transforms
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            obj.loss_and_grad(x)
            peaks[tile] = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert peaks[32] < peaks[None] / 5, {k: v / 2**20 for k, v in peaks.items()}
