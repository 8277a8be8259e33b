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
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from . import images, losses
from .backend import get_xp
from .vgg import LAYER_NAMES, check_layer_names, layer_channels


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
    a fixed pastiche objective and a training loop alike.
    """

    def __init__(self, net, content_layers=(), style_layers=(), style_layer_weights=None,
                 alpha=1.0, beta=1.0, tv_weight=0.0, normalization=losses.GATYS):
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
        # every layer the loss reads, in network order: the forward stops at the last one
        wanted = set(self.content_layers) | set(self.style_layers)
        self.layers = [n for n in LAYER_NAMES if n in wanted]

    def features(self, x, layers=None) -> dict:
        """VGG16 features ``{layer: (N, C, h, w)}`` of images ``x`` ((H, W, 3) or
        (N, H, W, 3) in [0, 1]); the forward's cache is dropped at once."""
        return self.net.forward(images.preprocess(x), self.layers if layers is None else layers)[0]

    def content_targets(self, x) -> dict:
        """``{layer: P_l}`` for the content layers, from images ``x``."""
        if not self.content_layers:
            return {}
        feats = self.features(x, self.content_layers)
        return {l: feats[l] for l in self.content_layers}

    def style_targets(self, styles, blend_weights=None, target_hw=None) -> dict:
        """``{layer: A_l}`` (1, C, C): the Gram targets of the style images (each (H, W, 3)
        at its own size), blended ``A_l = Σ_k b_k A_l^(k)`` with ``blend_weights`` (None:
        equal; normalised to sum 1). ``target_hw``: ``{layer: (h, w)}`` of the pastiche's
        features, for the Gatys normalisation's rescaling (``losses.style_target``)."""
        blend = check_weights(blend_weights, len(styles), "style blend weights", True, "style images")
        targets = {}
        for b, s in zip(blend, styles):
            sf = self.features(s, self.style_layers)
            for l in self.style_layers:
                hw = None if target_hw is None else target_hw[l]
                A = losses.style_target(sf[l], self.normalization, target_hw=hw) * b
                targets[l] = A if l not in targets else targets[l] + A
            del sf
        return targets

    def loss_and_grad(self, x, content_targets: dict, style_targets: dict):
        """``(LossTerms, ∂L/∂x)`` for images ``x`` (N, H, W, 3) in [0, 1]; the gradient has
        x's shape, dtype and device."""
        xp = get_xp(x)
        N = x.shape[0]
        feats, cache = self.net.forward(images.preprocess(x), self.layers)
        grads = {}

        def add(layer, g):
            grads[layer] = g if layer not in grads else grads[layer] + g

        # Layer by layer, dropping each layer's features once its gradient exists: the peak
        # then holds one layer's features and gradient at a time on top of the cache.
        content_raw, style_raw, style_layers = 0.0, 0.0, {}
        style_w = dict(zip(self.style_layers, self.style_layer_weights))
        for l in self.layers:
            F = feats.pop(l)
            if l in content_targets:
                v, g = losses.content_loss(F, content_targets[l], self.normalization)
                content_raw += v
                if self.alpha:
                    g *= self.alpha  # g is a fresh array: scale it in place, no second copy
                    add(l, g)
            if l in style_targets:
                v, g = losses.style_loss(F, style_targets[l], self.normalization)
                style_layers[l] = v
                style_raw += style_w[l] * v
                if self.beta and style_w[l]:
                    g *= self.beta * style_w[l]
                    add(l, g)
            del F
        del feats
        if grads:
            grad = images.preprocess_backward(self.net.backward(grads, cache), batch=True)
        else:
            grad = xp.zeros_like(x)
        del cache, grads
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


JOHNSON_CONTENT_LAYER = "relu2_2"
JOHNSON_STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


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
