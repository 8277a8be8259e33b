"""The Gatys objective of one pastiche: ``perceptual.PerceptualLoss`` with its targets fixed.

    L(x) = α · Σ_{l ∈ content} L_content(F_l, P_l) + β · Σ_{l ∈ style} w_l · E_l(F_l, A_l) + λ_tv · TV(x)

The content targets ``P_l`` come from the content photo, the Gram targets ``A_l`` from the
style images (blended), both computed once here; ``loss_and_grad`` evaluates L and its
gradient for a pastiche of the photo's shape, and ``flat_loss_and_grad`` is the same at
scipy's float64 boundary (what the L-BFGS-B driver calls).

With ``tile=T`` every evaluation, and the targets, are computed tile by tile
(``PerceptualLoss.loss_and_grad_tiled``, ``minnst.tiling``): the same loss and gradient
within rounding, in the memory of one tile's crop plus the image-sized arrays.

With ``cluster=`` (a ``distributed.Cluster``) the tiles' work runs as Dask tasks
(``ClusterTiles``): one evaluation is two waves of tasks, the optimiser and the
image-sized arrays stay here, and the result is the serial tiled one, bit for bit
(docs/gatys.md, "On a cluster").
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .. import images, tiling
from ..backend import Device, get_xp, to_host
from ..perceptual import LossTerms, PerceptualLoss, check_weights, crops
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

    ``cluster``: a ``distributed.Cluster`` to run the tiles' work on (``ClusterTiles``),
    the same bits as serially. Without a ``tile`` it chooses one that gives every worker
    a tile (``tiling.tile_for_workers``). The content targets then stay on the workers
    (``content_targets`` is None, ``content_tiles`` holds one future per tile); an
    image within one tile is evaluated whole, here.
    """

    def __init__(self, content, styles=(), content_layers=DEFAULT_CONTENT_LAYERS,
                 style_layers=DEFAULT_STYLE_LAYERS, style_layer_weights=None,
                 style_blend_weights=None, alpha=1.0, beta=1e3, tv_weight=0.0,
                 pooling="avg", normalization="gatys", net=None, tile=None, cluster=None):
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
        if cluster is not None and self.tile is None:
            self.tile = tiling.tile_for_workers(self.shape[0], self.shape[1], cluster.n_workers)
        # the tiles of an evaluation (one: the whole image at once, also when it fits in one tile)
        self.plan = None if self.tile is None else tiling.tiles(self.shape[0], self.shape[1], self.tile,
                                                                self.loss.layers)
        self.tile_count = 1 if self.plan is None else len(self.plan)
        # where the tiles run: None here, else the cluster's workers
        self.tiles = None
        if cluster is not None and self.tile_count > 1:
            self.tiles = ClusterTiles(cluster, self.loss, xp, self.dtype)

        # Content targets, and each layer's spatial size for the pastiche (= the content's).
        self.content_tiles = None
        if self.tile is None:
            feats = self.loss.features(content)
            self.content_targets = {l: feats[l] for l in self.loss.content_layers}
            self.layer_hw = {l: tuple(feats[l].shape[2:]) for l in self.loss.layers}
            del feats
        else:
            if self.tiles is None:
                self.content_targets = self.loss.content_targets(content, self.tile)
            else:
                self.content_targets = None
                self.content_tiles = self.tiles.content_targets(content[None], self.tile)
            self.layer_hw = {l: s[2:] for l, s in self.loss.feature_shapes(content[None].shape).items()}
        self.style_targets = self.loss.style_targets(styles, style_blend_weights, self.layer_hw, self.tile,
                                                     self.tiles)
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
        elif self.tiles is None:
            terms, grad = self.loss.loss_and_grad_tiled(x_img[None], self.content_targets,
                                                        self.style_targets, self.tile)
        else:
            content_layers = [l for l in self.layers if l in self.content_layers]
            terms, grad = self.loss.tiled_passes(x_img[None], self.plan, content_layers, self.content_tiles,
                                                 self.style_targets, self.tiles)
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


# --------------------------------------------------------------------------- on a cluster

@dataclass(frozen=True)
class WorkerLoss:
    """What a worker rebuilds a ``PerceptualLoss`` from: its ``settings()`` (as sorted
    items), the network's pooling, dtype and device, and the sha256 of the client's VGG16
    weights (``weights_digest``), which the worker's own copy must match. A few hundred
    bytes: what each task carries of the network."""

    settings: tuple
    pooling: str
    dtype: str
    device: str
    weights: str

    def make(self) -> PerceptualLoss:
        """On a worker: the loss on this process's VGG16, loaded once (``worker_cached``
        under ``("vgg16", pooling, dtype, device)``, the key every minnst task that needs
        the network shares), its weights checked once against the client's."""
        from ..distributed import worker_cached, worker_vgg16

        net = worker_vgg16(self.pooling, self.dtype, self.device)
        digest = worker_cached(("vgg16-sha256", self.pooling, self.dtype, self.device),
                               lambda: weights_digest(net))
        if digest != self.weights:
            raise ValueError(f"this worker's VGG16 weights (sha256 {digest[:12]}…) differ from the "
                             f"client's ({self.weights[:12]}…): install the same vgg16.h5 everywhere")
        return PerceptualLoss(net, **dict(self.settings))


def weights_digest(net) -> str:
    """sha256 of a VGG16's weights, layer by layer (names, shapes, dtype, bytes)."""
    h = hashlib.sha256()
    for name, (w, b) in net.weights.items():
        for a in (to_host(w), to_host(b)):
            h.update(f"{name}{a.shape}{a.dtype.str}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class ClusterTiles:
    """The per-tile work of ``loss``'s tiled evaluations as Dask tasks on ``cluster``.

    Called like ``PerceptualLoss.map_tiles`` (``tiles(method, items, *shared)``, the
    ``tile_map`` of ``PerceptualLoss.tiled_passes`` and ``style_targets``), it runs
    ``method(loss, *item, *shared)`` for each item as a task and yields the results in
    the items' order, so the caller adds them as serially. Each item (a tile's crop and
    geometry, and its content targets' future) travels with its task; each ``shared``
    argument that holds arrays (the style gradient matrices) goes to every worker once
    per call (``Cluster.broadcast``). A worker builds the loss from ``WorkerLoss`` (VGG16
    loaded once per process), moves the arrays to its device and returns host arrays.

    ``content_targets`` leaves each tile's content targets on the worker that computed
    them (one future per tile): a task that needs them runs there, or fetches them; a
    lost worker's are recomputed by Dask from the tile's content crop.
    """

    def __init__(self, cluster, loss: PerceptualLoss, xp, dtype):
        self.cluster, self.xp = cluster, xp
        self.spec = WorkerLoss(settings=tuple(sorted(loss.settings().items())), pooling=loss.net.pooling,
                               dtype=np.dtype(dtype).name, device="cpu" if xp is np else "gpu",
                               weights=weights_digest(loss.net))
        self.content_layers = loss.content_layers

    def __call__(self, method, items, *shared):
        shared = tuple(self.cluster.broadcast(a) if _holds_array(a) else a for a in shared)
        outcomes = self.cluster.map_ordered(tile_task, (_to_host(item) for item in items), self.spec, method,
                                            *shared, key=method.__name__)
        for _, ok, value in outcomes:
            if not ok:
                raise value
            yield _to_xp(value, self.xp)

    def content_targets(self, x, tile) -> list:
        """One future per tile of the evaluation's plan (``tiling.tiles(H, W, tile, loss's
        layers)``: the same tiles in the same order) of ``tile_content_targets`` of the
        tile in the content layers' own geometry (as ``PerceptualLoss.content_targets``
        cuts it, hence the same bits), left on the worker; ``{}`` for a tile that owns no
        content position. ``x``: the content image (1, H, W, 3)."""
        if not self.content_layers:
            return [{}] * tiling.tile_count(x.shape[1], x.shape[2], tile)
        out = []
        for i, (crop, t) in enumerate(crops(x, tiling.tiles(x.shape[1], x.shape[2], tile, self.content_layers))):
            if not any(t.owns(l) for l in self.content_layers):
                out.append({})
                continue
            out.append(self.cluster.submit(tile_task, _to_host((crop, t)), self.spec,
                                           PerceptualLoss.tile_content_targets, self.content_layers,
                                           key="tile_content_targets"))
        return out


def tile_task(item, spec: WorkerLoss, method, *shared):
    """On a worker: ``method(loss, *item, *shared)`` with the arrays on the worker's
    device, the loss from ``spec``; returns host arrays."""
    xp = Device(spec.device).xp
    return _to_host(method(spec.make(), *_to_xp(item, xp), *_to_xp(shared, xp)))


def _holds_array(obj) -> bool:
    if isinstance(obj, dict):
        return any(_holds_array(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_array(v) for v in obj)
    return hasattr(obj, "__array__")


def _to_host(obj):
    """``obj`` with every array in it (through dicts, lists, tuples) on the host."""
    if isinstance(obj, dict):
        return {k: _to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v) for v in obj)
    return to_host(obj) if hasattr(obj, "__array__") else obj


def _to_xp(obj, xp):
    """``obj`` with every array in it (through dicts, lists, tuples) on ``xp``'s device."""
    if xp is np:
        return obj
    if isinstance(obj, dict):
        return {k: _to_xp(v, xp) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_xp(v, xp) for v in obj)
    return xp.asarray(obj) if hasattr(obj, "__array__") else obj
