"""The perceptual objective of both methods: one loss over VGG16 features, its value and
its gradient with respect to the pixels.

For a batch ``x`` (N, H, W, 3) of images in [0, 1], with ``F_l`` the VGG16 features of
``images.preprocess(x)`` at layer l:

    L(x) = α · Σ_{l ∈ content} L_c(F_l, P_l) + β · Σ_{l ∈ style} w_l · E_l(F_l, A_l) + λ_tv · TV(x) / N

``L_c`` and ``E_l`` are ``losses.content_loss`` and ``losses.style_loss`` under one of the
two normalisations (``losses.GATYS``: the paper's sums; ``losses.JOHNSON``: means over the
positions and the batch). ``P_l`` are content targets (per image (N, …) or shared
(1, …)), ``A_l`` Gram targets (1, C, C). The Gatys method evaluates it on one pastiche
(N = 1) with fixed targets (``gatys.Objective``); the fast method's training step
evaluates it on a batch of the network's outputs, with the batch's own photos as content
targets (``train_fast.TrainingLoss``). Both go through ``PerceptualLoss.loss_and_grad``.

The training objective of Johnson et al. weighs each style layer by ``1/C_l²`` on top of
its weight (the mean, not the sum, of the squared Gram difference):
``mean_gram_layer_weights`` folds that into the ``w_l``, so a trained model's objective is
an ordinary set of keyword arguments of this class and of ``gatys.Objective``.

    loss = PerceptualLoss(net, ["relu4_2"], ["relu1_1", "relu2_1"], beta=1e3)
    P = loss.content_targets(photo[None])
    A = loss.style_targets([painting])
    terms, grad = loss.loss_and_grad(x[None], P, A)    # grad: (1, H, W, 3)

At print size the same loss is evaluated tile by tile, exactly, in the memory of one
tile's crop plus the image-sized arrays (``loss_and_grad_tiled``; the geometry is
``tiling``'s, the argument in docs/gatys.md):

    P = loss.content_targets(photo[None], tile=512)
    A = loss.style_targets([painting], tile=512)
    terms, grad = loss.loss_and_grad_tiled(x[None], P, A, tile=512)

Each tile's work is one method (``tile_gram_sums``, ``tile_gradient``,
``tile_content_targets``, ``tile_style_target``), a pure function of the tile's crop and
what it names; ``tiled_passes`` runs them through a ``tile_map`` (``map_tiles``: a loop
here; ``gatys.objective.ClusterTiles``: Dask tasks) and adds their results in tile order.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from . import images, losses, tiling
from .backend import get_xp
from .parallel import add_into, matmul
from .vgg import LAYER_NAMES, check_layer_names, layer_channels, layer_shapes


@dataclass(frozen=True)
class LossTerms:
    """One evaluation's loss, split up. ``content``, ``style`` and ``tv`` are the weighted
    terms (they add up to ``total``); the ``*_raw`` ones are before the weights α, β, λ
    (``style_raw`` = Σ_l w_l E_l, ``tv_raw`` = TV(x)/N); ``style_layers`` holds each
    layer's unweighted E_l."""

    total: float
    content: float
    style: float
    tv: float
    content_raw: float
    style_raw: float
    tv_raw: float
    style_layers: dict

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- argument checks

def check_weights(values, n: int, what: str, normalize: bool, items: str = "items") -> list:
    """Per-item weights: None -> n equal weights summing to 1; else n finite values ≥ 0
    (divided by their sum when ``normalize``). Raises ValueError naming ``what``."""
    if values is None:
        return [1.0 / n] * n if n else []
    values = [float(v) for v in values]
    if len(values) != n:
        raise ValueError(f"{what}: {len(values)} given for {n} {items}")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"{what} must be finite and ≥ 0, got {values}")
    if normalize:
        total = sum(values)
        if total <= 0:
            raise ValueError(f"{what} must not all be zero")
        values = [v / total for v in values]
    return values


def check_layers(layers, what: str) -> list:
    """A list of distinct VGG16 layer names (one name alone is accepted too)."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    check_layer_names(layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"{what} lists a layer twice: {layers}")
    return layers


def check_weight(value, what: str) -> float:
    """A loss weight: a finite number ≥ 0."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be a finite number ≥ 0, got {value!r}")
    return float(value)


def mean_gram_layer_weights(style_layers, weights=None) -> list:
    """The style layer weights of Johnson et al.'s training objective: ``w_l / C_l²``
    (``weights`` default 1 per layer), which makes each layer's Johnson style loss the
    mean squared difference of the (C_l × C_l) Gram matrices."""
    weights = [1.0] * len(style_layers) if weights is None else [float(v) for v in weights]
    if len(weights) != len(style_layers):
        raise ValueError(f"{len(weights)} style layer weights for {len(style_layers)} style layers")
    return [w / (layer_channels(l) * layer_channels(l)) for l, w in zip(style_layers, weights)]


# --------------------------------------------------------------------------- the objective

class PerceptualLoss:
    """``L(x)`` of the module docstring on a loaded ``VGG16`` ``net``.

    ``style_layer_weights``: the w_l (None: equal, summing to 1; used as given otherwise).
    ``alpha``, ``beta``, ``tv_weight``: α, β, λ_tv. ``normalization``: ``"gatys"`` or
    ``"johnson"``. The targets are arguments of ``loss_and_grad``, so one instance serves
    a fixed pastiche objective and a training loop alike. ``conv_method``: the path of
    VGG16's convolutions (``conv2d_forward``'s ``method``): "auto" (F(2×2) Winograd, the
    1e-6 agreement of the Gatys objective), or "fast" (F(4×4) on the layers of 128
    channels and more: ~1e-6 relative error, 3–6× F(2×2)'s, which a training loss can
    afford; ``train_fast.TrainingLoss`` takes it).
    """

    def __init__(self, net, content_layers=(), style_layers=(), style_layer_weights=None,
                 alpha=1.0, beta=1.0, tv_weight=0.0, normalization=losses.GATYS,
                 conv_method: str = "auto"):
        self.content_layers = check_layers(content_layers, "content layers")
        self.style_layers = check_layers(style_layers, "style layers")
        if not self.content_layers and not self.style_layers:
            raise ValueError("give at least one content layer or one style layer")
        losses.check_normalization(normalization)
        self.alpha = check_weight(alpha, "alpha (content weight)")
        self.beta = check_weight(beta, "beta (style weight)")
        self.tv_weight = check_weight(tv_weight, "tv_weight")
        self.style_layer_weights = check_weights(style_layer_weights, len(self.style_layers),
                                                 "style layer weights", False, "style layers")
        self.normalization = normalization
        self.net = net
        self.conv_method = conv_method
        # every layer the loss reads, in network order: the forward stops at the last one
        wanted = set(self.content_layers) | set(self.style_layers)
        self.layers = [n for n in LAYER_NAMES if n in wanted]

    def settings(self) -> dict:
        """The keyword arguments that make this loss again on another net:
        ``PerceptualLoss(net, **loss.settings())`` (what a cluster's workers rebuild it from)."""
        return {"content_layers": tuple(self.content_layers), "style_layers": tuple(self.style_layers),
                "style_layer_weights": tuple(self.style_layer_weights), "alpha": self.alpha,
                "beta": self.beta, "tv_weight": self.tv_weight, "normalization": self.normalization,
                "conv_method": self.conv_method}

    def features(self, x, layers=None) -> dict:
        """VGG16 features ``{layer: (N, C, h, w)}`` of images ``x`` ((H, W, 3) or
        (N, H, W, 3) in [0, 1]); the forward's cache is dropped at once."""
        return self.net.forward(images.preprocess(x), self.layers if layers is None else layers,
                                backward=False, method=self.conv_method)[0]

    def content_targets(self, x, tile=None) -> dict:
        """``{layer: P_l}`` for the content layers, from images ``x``. With ``tile`` (and
        an image larger than one tile) each tile's own positions are computed on its crop
        (``tile_content_targets``) and written into P_l at the image's feature size."""
        if not self.content_layers:
            return {}
        x4 = x if x.ndim == 4 else x[None]
        plan = None if tile is None else tiling.tiles(x4.shape[1], x4.shape[2], tile, self.content_layers)
        if plan is None or len(plan) == 1:
            feats = self.features(x, self.content_layers)
            return {l: feats[l] for l in self.content_layers}
        xp = get_xp(x)
        shapes = self.feature_shapes(x4.shape, self.content_layers)
        busy = owning(plan, self.content_layers)
        targets = {}
        parts = self.map_tiles(PerceptualLoss.tile_content_targets, crops(x4, busy), self.content_layers)
        for t, part in zip(busy, parts):
            for l, F in part.items():
                if l not in targets:  # channels-last, like the CPU layers' outputs (see channels_last)
                    N, C, h, w = shapes[l]
                    targets[l] = xp.empty((N, h, w, C), dtype=F.dtype).transpose(0, 3, 1, 2)
                targets[l][(..., *t.whole(l))] = F
            del part
        return targets

    def style_targets(self, styles, blend_weights=None, target_hw=None, tile=None, tile_map=None) -> dict:
        """``{layer: A_l}`` (1, C, C): the Gram targets of the style images (each (H, W, 3)
        at its own size), blended ``A_l = Σ_k b_k A_l^(k)`` with ``blend_weights`` (None:
        equal; normalised to sum 1). ``target_hw``: ``{layer: (h, w)}`` of the pastiche's
        features, for the Gatys normalisation's rescaling (``losses.style_target``).
        With ``tile``, a style image larger than one tile has its targets accumulated tile
        by tile (``tiled_style_target``, its tiles run by ``tile_map``)."""
        blend = check_weights(blend_weights, len(styles), "style blend weights", True, "style images")
        targets = {}
        for b, s in zip(blend, styles):
            if tile is not None and len(tiling.tiles(s.shape[0], s.shape[1], tile, self.style_layers)) > 1:
                for l, A in self.tiled_style_target(s, tile, target_hw, tile_map).items():
                    A = A * b
                    targets[l] = A if l not in targets else targets[l] + A
                continue
            sf = self.features(s, self.style_layers)
            for l in self.style_layers:
                hw = None if target_hw is None else target_hw[l]
                A = losses.style_target(sf[l], self.normalization, target_hw=hw) * b
                targets[l] = A if l not in targets else targets[l] + A
            del sf
        return targets

    def tiled_style_target(self, s, tile, target_hw=None, tile_map=None) -> dict:
        """``{layer: A_l}`` of one style image ``s`` (H, W, 3), tile by tile: what
        ``losses.style_target`` gives on the whole image's features.

        ``losses.style_target`` is a mean over positions (Johnson's Gram is one, and the
        Gatys Gram becomes one once rescaled to a target size), so the image's target is
        the tiles' targets of their own positions averaged with the weights M_t / M, the
        tile's share of the layer's M positions (``tile_style_target``), added in tile
        order. Under the Gatys normalisation without ``target_hw`` the target size is the
        style image's own (a factor of 1). ``tile_map``: where the tiles run
        (``map_tiles``, here, by default).
        """
        x4 = s[None]
        shapes = self.feature_shapes(x4.shape, self.style_layers)
        busy = owning(tiling.tiles(s.shape[0], s.shape[1], tile, self.style_layers), self.style_layers)
        run = tile_map or self.map_tiles
        targets = {}
        for part in run(PerceptualLoss.tile_style_target, crops(x4, busy), shapes, target_hw):
            for l, A in part.items():
                targets[l] = A if l not in targets else targets[l] + A
        return targets

    def loss_and_grad(self, x, content_targets: dict, style_targets: dict):
        """``(LossTerms, ∂L/∂x)`` for images ``x`` (N, H, W, 3) in [0, 1]; the gradient has
        x's shape, dtype and device."""
        xp = get_xp(x)
        feats, cache = self.net.forward(images.preprocess(x), self.layers, method=self.conv_method)
        grads = {}

        def add(layer, g):  # every g is a fresh array: the sum goes into the first, in place
            grads[layer] = g if layer not in grads else add_into(grads[layer], g)

        # Layer by layer, dropping each layer's features once its gradient exists: the peak
        # then holds one layer's features and gradient at a time on top of the cache.
        content_raw, style_raw, style_layers = 0.0, 0.0, {}
        style_w = dict(zip(self.style_layers, self.style_layer_weights))
        for l in self.layers:
            F = feats.pop(l)
            if l in content_targets:
                # the loss weight goes into the gradient's own pass (or the (C, C) matrix)
                v, g = losses.content_loss(F, content_targets[l], self.normalization, weight=self.alpha)
                content_raw += v
                if self.alpha:
                    add(l, g)
            if l in style_targets:
                v, g = losses.style_loss(F, style_targets[l], self.normalization,
                                         weight=self.beta * style_w[l])
                style_layers[l] = v
                style_raw += style_w[l] * v
                if self.beta and style_w[l]:
                    add(l, g)
            del F
        del feats
        if grads:
            grad = images.preprocess_backward(self.net.backward(grads, cache), batch=True)
        else:
            grad = xp.zeros_like(x)
        del cache, grads
        return self._with_tv(x, grad, content_raw, style_raw, style_layers)

    def _with_tv(self, x, grad, content_raw, style_raw, style_layers):
        """Adds λ_tv·TV(x)/N (on the whole images) to the feature terms and their gradient
        ``grad``; returns ``(LossTerms, ∂L/∂x)``."""
        N = x.shape[0]
        tv_raw = 0.0
        if self.tv_weight:
            tv_sum, g_tv = losses.tv_loss(x)  # over the (H, W) axes of (N, H, W, 3)
            tv_raw = tv_sum / N
            grad = grad + g_tv * (self.tv_weight / N)
        terms = LossTerms(
            total=self.alpha * content_raw + self.beta * style_raw + self.tv_weight * tv_raw,
            content=self.alpha * content_raw, style=self.beta * style_raw,
            tv=self.tv_weight * tv_raw, content_raw=content_raw, style_raw=style_raw,
            tv_raw=tv_raw, style_layers=style_layers)
        return terms, grad

    # ------------------------------------------------------------------ tiled evaluation

    def feature_shapes(self, x_shape, layers=None) -> dict:
        """``{layer: (N, C, h, w)}``: the features' shapes for images of shape ``x_shape``
        (N, H, W, 3) (``vgg.layer_shapes``), for ``layers`` (default: the loss's)."""
        layers = self.layers if layers is None else list(layers)
        N, H, W = x_shape[:3]
        shapes = {name: (N, C, h, w) for name, C, h, w in layer_shapes(H, W, tiling.deepest(layers))}
        return {l: shapes[l] for l in layers}

    def map_tiles(self, method, items, *shared):
        """``method(self, *item, *shared)`` for each item, here and in order: how the
        tiled evaluation runs its per-tile work unless given another ``tile_map`` (a
        callable like this one, e.g. ``gatys.objective.ClusterTiles``, which runs the same
        methods as Dask tasks). Yields the results in the items' order."""
        return (method(self, *item, *shared) for item in items)

    # One tile's work. Each is a pure function of the tile's crop (N, h_crop, w_crop, 3),
    # its geometry ``t`` (a ``tiling.Tile``), the loss's settings and net, and what its
    # other arguments name; it returns what the caller adds up in tile order. Serially
    # ``map_tiles`` calls them in a loop; on a cluster each call is a task.

    def tile_content_targets(self, crop, t, layers) -> dict:
        """``{l: P_l at t's own positions}`` (N, C, h_own, w_own) for the ``layers`` that
        ``t`` owns: the features of its crop, cut to its own positions."""
        owned = [l for l in layers if t.owns(l)]
        feats = self.net.forward(images.preprocess(crop), owned, backward=False, method=self.conv_method)[0]
        return {l: feats.pop(l)[(..., *t.local(l))] for l in owned}

    def tile_style_target(self, crop, t, shapes, target_hw=None) -> dict:
        """``{l: (M_t / M) · losses.style_target(F_own)}`` (1, C, C) for the style layers
        ``t`` owns: the tile's share of a style image's Gram target (``tiled_style_target``).
        ``shapes``: the whole style image's ``feature_shapes``; ``target_hw`` as there."""
        owned = [l for l in self.style_layers if t.owns(l)]
        feats = self.net.forward(images.preprocess(crop), owned, backward=False, method=self.conv_method)[0]
        part = {}
        for l in owned:
            F = feats.pop(l)[(..., *t.local(l))]
            h, w = shapes[l][2:]
            hw = (h, w) if target_hw is None else target_hw[l]
            share = F.shape[2] * F.shape[3] / (h * w)  # M_t / M
            part[l] = losses.style_target(F, self.normalization, target_hw=hw) * share
        return part

    def tile_gram_sums(self, crop, t, layers) -> dict:
        """Pass 1 of one tile: ``{l: S_l^t = Σ_{p ∈ own} f_p f_pᵀ}`` (N, C_l, C_l) for the
        ``layers`` ``t`` owns, from the forward on its crop up to the deepest of them."""
        owned = [l for l in layers if t.owns(l)]
        feats = self.net.forward(images.preprocess(crop), owned, backward=False, method=self.conv_method)[0]
        return {l: losses.gram_matrix(feats.pop(l)[(..., *t.local(l))], losses.GATYS) for l in owned}

    def tile_gradient(self, crop, t, content_own: dict, shapes: dict, style_D: dict):
        """Pass 2 of one tile: ``({l: Σ_own (F − P)²}, dx)``.

        At ``t``'s own positions ∂L/∂F_l = α·c·(F − P) (c = ``content_grad_factor`` of the
        whole image's ``shapes[l]``) for the layers in ``content_own`` (``{l: P_l at the
        own positions}``, the layers ``t`` owns) plus ``gram_product(F, style_D[l])`` for
        the layers in ``style_D`` (``{l: β·w_l·k·(G_l − A_l)}``, ``style_gradient_matrices``);
        zero elsewhere in the crop; back through the crop's network to its pixels: ``dx``
        (N, h_crop, w_crop, 3), the tile's part of ∂L/∂x over the crop (None when the tile
        owns nothing that has a gradient)."""
        xp = get_xp(crop)
        norm = self.normalization
        owned = [l for l in self.layers if t.owns(l) and (l in content_own or l in style_D)]
        if not owned:
            return {}, None
        feats, cache = self.net.forward(images.preprocess(crop), owned, method=self.conv_method)
        grads, content_sq = {}, {}
        for l in owned:
            F = feats.pop(l)
            own = (..., *t.local(l))
            Fo = F[own]
            g = None
            if l in content_own:
                D = Fo - channels_last(content_own[l])
                content_sq[l] = float((D * D).sum())
                if self.alpha:
                    g = D * (self.alpha * losses.content_grad_factor(shapes[l], norm))
                del D
            if l in style_D:
                gs = gram_product(Fo, style_D[l])
                g = gs if g is None else g + gs
            if g is not None:
                full = xp.zeros_like(F)  # F's memory order
                full[own] = g
                grads[l] = full
            del F, Fo, g
        del feats
        dx = images.preprocess_backward(self.net.backward(grads, cache), batch=True) if grads else None
        del cache, grads
        return content_sq, dx

    # ------------------------------------------------------------------ the two passes

    def style_gradient_matrices(self, sums: dict, style_targets: dict, shapes: dict, dtype):
        """Between the passes, from the Gram sums ``S_l`` over every own position:
        ``G_l = S_l / gram_divisor``, ``D_l = G_l − A_l``, ``E_l = style_value(Σ D_l²)``
        with the whole image's ``shapes``. Returns ``(Σ_l w_l E_l, {l: E_l}, {l:
        β·w_l·k·D_l})`` (k = ``style_grad_factor``; ``dtype``; only layers with β·w_l ≠ 0),
        the last being what pass 2 needs of the style."""
        norm = self.normalization
        style_w = dict(zip(self.style_layers, self.style_layer_weights))
        style_raw, style_layers, style_D = 0.0, {}, {}
        for l in [l for l in self.layers if l in style_targets]:
            divisor = losses.gram_divisor(shapes[l], norm)
            G = sums[l]
            D = (G if divisor == 1 else G / divisor) - style_targets[l]  # (N, C, C), symmetric
            v = losses.style_value(float((D * D).sum()), shapes[l], norm)
            style_layers[l] = v
            style_raw += style_w[l] * v
            if self.beta and style_w[l]:
                k = self.beta * style_w[l] * losses.style_grad_factor(shapes[l], norm)
                style_D[l] = (D * k).astype(dtype, copy=False)
            del G, D
        return style_raw, style_layers, style_D

    def loss_and_grad_tiled(self, x, content_targets: dict, style_targets: dict, tile: int):
        """``loss_and_grad`` evaluated tile by tile (``tiling.tiles`` with side ``tile``),
        exactly: the same ``(LossTerms, ∂L/∂x)`` within rounding, with the memory of one
        tile's crop (its activations and cache) on top of the image-sized arrays (x, the
        gradient, the content targets at their layers' sizes). The two passes are
        ``tiled_passes``; an image that fits in one tile is evaluated by ``loss_and_grad``.

        ``content_targets`` at the image's feature size (``content_targets(…, tile)``
        makes them tile by tile), ``style_targets`` as for ``loss_and_grad``.
        """
        plan = tiling.tiles(x.shape[1], x.shape[2], tile, self.layers)
        if len(plan) == 1:
            return self.loss_and_grad(x, content_targets, style_targets)
        content_layers = [l for l in self.layers if l in content_targets]
        content_own = [{l: content_targets[l][(..., *t.whole(l))] for l in content_layers if t.owns(l)}
                       for t in plan]  # views
        return self.tiled_passes(x, plan, content_layers, content_own, style_targets)

    def tiled_passes(self, x, plan, content_layers, content_own, style_targets: dict, tile_map=None):
        """The two passes of a tiled evaluation of images ``x`` (N, H, W, 3) over the tiles
        ``plan`` (``tiling.tiles`` of x for ``self.layers``): ``(LossTerms, ∂L/∂x)``.

        1. ``tile_gram_sums`` of every tile, added in tile order: ``S_l``; then
           ``style_gradient_matrices``: the style values and ``β·w_l·k·D_l``.
        2. ``tile_gradient`` of every tile, its ``dx`` added into the crop's pixels of the
           whole gradient and its Σ_own (F − P)² into the content sums, in tile order; the
           content values ``content_value`` of those sums with the whole image's shapes.

        TV on the whole image. ``content_layers``: the content layers with targets (in
        network order); ``content_own[i]``: what ``tile_gradient`` takes as the content
        targets of ``plan[i]``'s own positions (``{l: P_l at its own positions}``, or
        anything ``tile_map`` resolves to that). ``tile_map`` runs the per-tile methods
        (``map_tiles``: here, one after another). Adding in tile order makes the result
        the same bits wherever the tiles ran, if each tile's result is.
        """
        xp = get_xp(x)
        run = tile_map or self.map_tiles
        shapes = self.feature_shapes(x.shape)
        style_ls = [l for l in self.layers if l in style_targets]

        # Pass 1: the Gram sums over every tile's own positions.
        sums = {}
        busy = owning(plan, style_ls)
        for part in run(PerceptualLoss.tile_gram_sums, crops(x, busy), style_ls):
            for l, S in part.items():
                sums[l] = S if l not in sums else sums[l] + S
            del part
        style_raw, style_layers, style_D = self.style_gradient_matrices(sums, style_targets, shapes, x.dtype)
        del sums

        # Pass 2: ∂L/∂F at the own positions, back to the crop's pixels, into the gradient.
        grad = xp.zeros_like(x)
        content_sq = {l: 0.0 for l in content_layers}
        busy = [i for i, t in enumerate(plan) if any(t.owns(l) for l in (*content_sq, *style_D))]
        items = ((tile_crop(x, plan[i]), plan[i], content_own[i]) for i in busy)
        for i, (sq, dx) in zip(busy, run(PerceptualLoss.tile_gradient, items, shapes, style_D)):
            for l, v in sq.items():
                content_sq[l] += v
            if dx is not None:
                tile_crop(grad, plan[i])[...] += dx
            del dx
        content_raw = 0.0
        for l, sq in content_sq.items():
            content_raw += losses.content_value(sq, shapes[l], self.normalization)
        return self._with_tv(x, grad, content_raw, style_raw, style_layers)


def owning(plan, layers) -> list:
    """The tiles of ``plan`` that own a position of at least one of ``layers``."""
    return [t for t in plan if any(t.owns(l) for l in layers)]


def channels_last(a):
    """``a`` (N, C, h, w) in channels-last memory (a transposed view of an (N, h, w, C)
    array), the layout ``content_targets`` keeps the targets in: ``a`` itself when its
    strides already say so, else a copy so laid out. ``tile_gradient`` sums (F − P)² in
    the memory order of F − P, which NumPy takes from its operands; a target that
    travelled from another process arrives C-contiguous (Dask sends arrays so), and this
    gives it back the layout, hence the bits, of the serial evaluation."""
    s = a.strides
    if s[1] <= s[3] <= s[2]:
        return a
    xp = get_xp(a)
    return xp.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def tile_crop(x, t):
    """The crop of tile ``t`` of images ``x`` (N, H, W, 3): a view (N, h_crop, w_crop, 3)."""
    return x[(slice(None), *t.crop)]


def crops(x, plan):
    """``(tile_crop(x, t), t)`` for each tile ``t`` of ``plan``, made as they are consumed."""
    return ((tile_crop(x, t), t) for t in plan)


def gram_product(F, D):
    """``D F`` per image for features F (N, C, h, w) (any memory order) and a symmetric D
    (1 or N, C, C), as (N, C, h, w) in channels-last memory: the product is taken as
    ``F_mᵀ D`` with F_m the (N, h·w, C) position-by-channel matrix, which D's symmetry
    makes the transpose of D F_m."""
    xp = get_xp(F)
    N, C, h, w = F.shape
    Fm = F.transpose(0, 2, 3, 1).reshape(N, h * w, C)  # (N, M, C); a copy unless contiguous
    D = D.astype(F.dtype, copy=False)
    out = matmul(Fm, D) if xp is np else Fm @ D  # (N, M, C)
    return out.reshape(N, h, w, C).transpose(0, 3, 1, 2)


JOHNSON_CONTENT_LAYER = "relu2_2"
JOHNSON_STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


# VGG16's convolutions in a training loss (``PerceptualLoss``'s conv_method): F(4×4) Winograd on
# its layers of 128 channels and more. Its ~1e-6 relative error is nothing to a gradient step;
# batch 4 at 256², forward + backward to relu4_3 took 927 ms against F(2×2)'s 1122 (AMD Zen 5,
# OpenBLAS's AVX2 kernels; 811 against 880 with its AVX-512 ones).
TRAINING_CONV_METHOD = "fast"


def training_objective(content_layer=JOHNSON_CONTENT_LAYER, style_layers=JOHNSON_STYLE_LAYERS,
                       style_layer_weights=None, content_weight=1.0, style_weight=1e5, tv_weight=1e-5,
                       pooling="max") -> dict:
    """Johnson et al.'s training objective as keyword arguments of ``gatys.Objective`` (and,
    without ``pooling``, of ``PerceptualLoss``): one content layer, Johnson's normalisation,
    each style layer weighed ``w_l / C_l²`` (``mean_gram_layer_weights``)."""
    return {"content_layers": [content_layer], "style_layers": list(style_layers),
            "style_layer_weights": mean_gram_layer_weights(style_layers, style_layer_weights or None),
            "alpha": float(content_weight), "beta": float(style_weight), "tv_weight": float(tv_weight),
            "pooling": pooling, "normalization": losses.JOHNSON}
