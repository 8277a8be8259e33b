"""The Gatys objective of one pastiche: ``perceptual.PerceptualLoss`` with its targets fixed.

    L(x) = α · Σ_{l ∈ content} L_content(F_l, P_l) + β · Σ_{l ∈ style} w_l · E_l(F_l, A_l) + λ_tv · TV(x)

The content targets ``P_l`` come from the content photo, the Gram targets ``A_l`` from the
style images (blended), both computed once here; ``loss_and_grad`` evaluates L and its
gradient for a pastiche of the photo's shape, and ``flat_loss_and_grad`` is the same at
scipy's float64 boundary (what the L-BFGS-B driver calls).

With ``tile=T`` every evaluation, and the targets, are computed tile by tile
(``PerceptualLoss.loss_and_grad_tiled``, ``minnst.tiling``): the same loss and gradient
within rounding, in the memory of one tile's crop plus the image-sized arrays.
"""
from __future__ import annotations

import numpy as np

from .. import images, tiling
from ..backend import get_xp, to_host
from ..perceptual import LossTerms, PerceptualLoss, check_weights
from ..vgg import VGG16

DEFAULT_CONTENT_LAYERS = ("relu4_2",)
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def check_image(img, what: str, xp, dtype):
    """An (H, W, 3) image of at least ``images.MIN_SIZE`` pixels a side, C-contiguous in
    ``dtype`` on ``xp``; ValueError naming ``what`` otherwise."""
    a = xp.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what} must be an (H, W, 3) image, got shape {tuple(a.shape)}")
    if min(a.shape[:2]) < images.MIN_SIZE:
        raise ValueError(f"{what} is {a.shape[0]}×{a.shape[1]}; VGG16 needs at least "
                         f"{images.MIN_SIZE} pixels on each side")
    return xp.ascontiguousarray(a.astype(dtype, copy=False))


class Objective:
    """The Gatys loss of a pastiche image and its gradient with respect to the pixels.

    ``content``: (H, W, 3) in [0, 1], NumPy or CuPy; it fixes the pastiche's shape, the
    array module and the dtype (float64 content runs the whole objective in float64, for
    gradient checks). ``styles``: one image or a list, each at its own size; their Gram
    targets are blended with ``style_blend_weights`` (normalised to sum to 1; default
    equal). ``style_layer_weights``: the w_l (default equal, summing to 1; used as given).
    ``alpha``, ``beta``, ``tv_weight``: α, β, λ_tv. ``net``: a loaded ``VGG16`` to share
    (its pooling must equal ``pooling``); loaded on the content's device if None.
    ``tile``: None (the whole image at once) or a tile side in pixels (≥
    ``tiling.MIN_TILE``): the content targets, the Gram targets of every style image
    larger than one tile, and each evaluation are then computed tile by tile, exactly; an
    image within one tile is evaluated whole.
    """

    def __init__(self, content, styles=(), content_layers=DEFAULT_CONTENT_LAYERS,
                 style_layers=DEFAULT_STYLE_LAYERS, style_layer_weights=None,
                 style_blend_weights=None, alpha=1.0, beta=1e3, tv_weight=0.0,
                 pooling="avg", normalization="gatys", net=None, tile=None):
        self.tile = tiling.check_tile(tile)
        xp = get_xp(content)
        self.dtype = np.float64 if xp.asarray(content).dtype == np.float64 else np.float32
        content = check_image(content, "content image", xp, self.dtype)
        if hasattr(styles, "ndim"):  # one image, not a list
            styles = [styles]
        styles = [check_image(s, f"style image {i + 1}", xp, self.dtype) for i, s in enumerate(styles)]
        if net is not None and net.pooling != pooling:
            raise ValueError(f"the given net pools with {net.pooling!r}, but pooling={pooling!r}")
        self.loss = PerceptualLoss(net, content_layers, style_layers, style_layer_weights,
                                   alpha, beta, tv_weight, normalization)
        if self.loss.style_layers and not styles:
            raise ValueError("style layers are given but no style image")
        if net is None:
            self.loss.net = net = VGG16.load(pooling=pooling, dtype=self.dtype, xp=xp)
        self.net, self.pooling = net, pooling
        self.shape = tuple(content.shape)
        # tiles per evaluation (1: the whole image at once, also when it fits in one tile)
        self.tile_count = 1 if self.tile is None else len(
            tiling.tiles(self.shape[0], self.shape[1], self.tile, self.loss.layers))

        # Content targets, and each layer's spatial size for the pastiche (= the content's).
        if self.tile is None:
            feats = self.loss.features(content)
            self.content_targets = {l: feats[l] for l in self.loss.content_layers}
            self.layer_hw = {l: tuple(feats[l].shape[2:]) for l in self.loss.layers}
            del feats
        else:
            self.content_targets = self.loss.content_targets(content, self.tile)
            self.layer_hw = {l: s[2:] for l, s in self.loss.feature_shapes(content[None].shape).items()}
        self.style_targets = self.loss.style_targets(styles, style_blend_weights, self.layer_hw, self.tile)
        self.style_blend_weights = check_weights(style_blend_weights, len(styles), "style blend weights",
                                                 True, "style images")
        self.content = content
        self.last: LossTerms | None = None  # the terms of the latest evaluation
        self.evaluations = 0

    # the settings, as given to the loss
    content_layers = property(lambda self: self.loss.content_layers)
    style_layers = property(lambda self: self.loss.style_layers)
    style_layer_weights = property(lambda self: self.loss.style_layer_weights)
    layers = property(lambda self: self.loss.layers)
    alpha = property(lambda self: self.loss.alpha)
    beta = property(lambda self: self.loss.beta)
    tv_weight = property(lambda self: self.loss.tv_weight)
    normalization = property(lambda self: self.loss.normalization)

    @property
    def xp(self):
        return get_xp(self.content)

    def loss_and_grad(self, x_img):
        """``(L, dL/dx_img)`` for a pastiche like ``content``; the gradient has its shape,
        dtype and device. Also sets ``self.last`` (a ``LossTerms``)."""
        xp = self.xp
        x_img = xp.asarray(x_img)
        if tuple(x_img.shape) != self.shape:
            raise ValueError(f"the pastiche must have the content's shape {self.shape}, "
                             f"got {tuple(x_img.shape)}")
        x_img = x_img.astype(self.dtype, copy=False)
        if self.tile is None:
            terms, grad = self.loss.loss_and_grad(x_img[None], self.content_targets, self.style_targets)
        else:
            terms, grad = self.loss.loss_and_grad_tiled(x_img[None], self.content_targets,
                                                        self.style_targets, self.tile)
        self.last = terms
        self.evaluations += 1
        return terms.total, grad[0]

    # scipy's L-BFGS-B works on a flat float64 vector on the host; the network runs in the
    # objective's dtype on its device. These two are the only crossings of that boundary.
    def from_flat(self, z):
        """The pastiche image of scipy's flat float64 vector ``z``: a new array (scipy
        reuses ``z``) of the objective's shape, dtype and device."""
        return self.xp.array(np.asarray(z).reshape(self.shape), dtype=self.dtype)

    @staticmethod
    def to_flat(grad):
        """A gradient image as scipy's flat float64 host vector."""
        return to_host(grad).astype(np.float64).ravel()

    def flat_loss_and_grad(self, z):
        """``(float, flat float64 gradient)`` at scipy's flat float64 vector ``z``."""
        loss, grad = self.loss_and_grad(self.from_flat(z))
        return loss, self.to_flat(grad)

