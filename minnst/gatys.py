"""Style transfer by optimisation (Gatys, Ecker & Bethge 2016), and its command-line tool.

The pastiche's pixels are the variables. Each evaluation runs the image through the
frozen VGG16 (up to the deepest layer used), adds

    L = α · Σ_{l ∈ content} L_content(F_l, P_l) + β · Σ_{l ∈ style} w_l · E_l(F_l, A_l) + λ_tv · TV(x)

and carries the gradient back to the pixels (``VGG16.backward``, then the adjoint of the
ImageNet normalisation). The content targets ``P_l`` and the style Gram targets ``A_l``
(blended over the style images) are computed once. ``losses.py`` has the formulas;
``docs/gatys.md`` derives them.

Two optimisers over the pixel image in [0, 1]:

* ``lbfgs`` (default): scipy's L-BFGS-B with bounds [0, 1]. scipy works on the flat
  float64 vector; the network runs in float32 on the chosen device, and only the loss
  (a float) and the gradient (flattened to float64 on the host) cross back.
* ``adam``: ``optim.Adam`` on the image itself, clipped to [0, 1] after each step.

Whatever stops the run (iterations, ``time_budget``, ``tol``, Ctrl-C, a non-finite loss),
the image kept is the lowest-loss point evaluated, not the last one.

    obj = Objective(content, [style], beta=1e3)
    loss, grad = obj.loss_and_grad(x)           # x like content: (H, W, 3) in [0, 1]
    result = stylize(content, [style], GatysConfig(size=256, iterations=200))

Command line: ``python -m minnst.gatys --help``; with no arguments it runs a demo
(matplotlib's photo of Grace Hopper in the style of ``procedural.stained_glass``).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import images, losses
from .backend import get_xp, to_host
from .vgg import LAYER_NAMES, VGG16, check_layer_names

DEFAULT_CONTENT_LAYERS = ("relu4_2",)
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
OPTIMIZERS = ("lbfgs", "adam")
INITS = ("noise", "content", "image")
PRESERVE_COLORS = ("none", "luminance", "histogram")
# Default weights per normalisation, for the default 512-pixel output (α = 1), chosen by
# eye on tubingen × starry_night (docs/gatys.md, "Choosing the weights"). Under the Gatys
# normalisation the content term grows with the pixel count M while the style term does
# not, so the same balance at another size needs β ∝ M; the Johnson losses are
# size-independent, and 0.7 is 3e6 converted at 512 px.
DEFAULT_STYLE_WEIGHT = {"gatys": 3e6, "johnson": 0.7}
DEFAULT_TV_WEIGHT = {"gatys": 1.0, "johnson": 1e-6}
TOL_WINDOW = 20  # --tol compares the best loss with the one TOL_WINDOW iterations before
DEMO_SIZE, DEMO_ITERATIONS = 256, 150  # the no-argument demo: about two minutes on 2 cores
DEMO_STYLE_WEIGHT = 2.5e5  # the stained glass is a loud style: balanced at 256 px with this β
DEMO_STYLE_NAME = "stained_glass"
PROG = "python -m minnst.gatys"


class NonFiniteLossError(ValueError):
    """The loss or its gradient became NaN/inf. ``result`` holds the last good image."""

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result


class StylizeInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``stylize``; ``result`` holds the best image so far."""

    def __init__(self, result):
        super().__init__("interrupted")
        self.result = result


# ======================================================================================
# The objective
# ======================================================================================


@dataclass(frozen=True)
class LossTerms:
    """One evaluation's loss, split up. ``content``, ``style`` and ``tv`` are the weighted
    terms (they add up to ``total``); the ``*_raw`` ones are before the weights α, β, λ
    (``style_raw`` = Σ_l w_l E_l); ``style_layers`` holds each layer's unweighted E_l."""

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


def _check_weights(values, n: int, what: str, normalize: bool, items: str = "items"):
    """Per-item weights: None -> equal weights summing to 1; else n finite values ≥ 0."""
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


def _check_layers(layers, what: str) -> list:
    layers = [layers] if isinstance(layers, str) else list(layers)
    check_layer_names(layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"{what} lists a layer twice: {layers}")
    return layers


def _check_image(img, what: str, xp, dtype):
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
    """

    def __init__(self, content, styles=(), content_layers=DEFAULT_CONTENT_LAYERS,
                 style_layers=DEFAULT_STYLE_LAYERS, style_layer_weights=None,
                 style_blend_weights=None, alpha=1.0, beta=1e3, tv_weight=0.0,
                 pooling="avg", normalization="gatys", net=None):
        xp = get_xp(content)
        self.dtype = np.float64 if xp.asarray(content).dtype == np.float64 else np.float32
        content = _check_image(content, "content image", xp, self.dtype)
        if hasattr(styles, "ndim"):  # one image, not a list
            styles = [styles]
        styles = [_check_image(s, f"style image {i + 1}", xp, self.dtype) for i, s in enumerate(styles)]
        self.content_layers = _check_layers(content_layers, "content layers")
        self.style_layers = _check_layers(style_layers, "style layers")
        if not self.content_layers and not self.style_layers:
            raise ValueError("give at least one content layer or one style layer")
        if self.style_layers and not styles:
            raise ValueError("style layers are given but no style image")
        if normalization not in losses.NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {losses.NORMALIZATIONS}, got {normalization!r}")
        for what, v in (("alpha (content weight)", alpha), ("beta (style weight)", beta),
                        ("tv_weight", tv_weight)):
            if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{what} must be a finite number ≥ 0, got {v!r}")
        self.style_layer_weights = _check_weights(style_layer_weights, len(self.style_layers),
                                                  "style layer weights", False, "style layers")
        self.style_blend_weights = _check_weights(style_blend_weights, len(styles),
                                                  "style blend weights", True, "style images")
        self.alpha, self.beta, self.tv_weight = float(alpha), float(beta), float(tv_weight)
        self.normalization = normalization
        if net is None:
            net = VGG16.load(pooling=pooling, dtype=self.dtype, xp=xp)
        elif net.pooling != pooling:
            raise ValueError(f"the given net pools with {net.pooling!r}, but pooling={pooling!r}")
        self.net, self.pooling = net, pooling
        self.shape = tuple(content.shape)
        # Every layer the loss reads, in network order: the forward stops at the last one.
        wanted = set(self.content_layers) | set(self.style_layers)
        self.layers = [n for n in LAYER_NAMES if n in wanted]

        # Content targets, and each layer's spatial size for the pastiche (= the content's).
        feats = net.forward(images.preprocess(content), self.layers)[0]  # the cache is dropped at once
        self.content_targets = {l: feats[l] for l in self.content_layers}
        self.layer_hw = {l: tuple(feats[l].shape[2:]) for l in self.layers}
        del feats
        # Style targets: A_l = Σ_k b_k A_l^(k), each style image at its own size.
        self.style_targets = {}
        for b, s in zip(self.style_blend_weights, styles):
            sf = net.forward(images.preprocess(s), self.style_layers)[0]
            for l in self.style_layers:
                A = losses.style_target(sf[l], normalization, target_hw=self.layer_hw[l]) * b
                self.style_targets[l] = A if l not in self.style_targets else self.style_targets[l] + A
            del sf
        self.content = content
        self.last: LossTerms | None = None  # the terms of the latest evaluation
        self.evaluations = 0

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
        feats, cache = self.net.forward(images.preprocess(x_img), self.layers)
        grads = {}

        def add(layer, g):
            grads[layer] = g if layer not in grads else grads[layer] + g

        # Layer by layer, dropping each layer's features once its gradient exists: the peak
        # then holds one layer's features and gradient at a time on top of the cache.
        content_raw, style_raw, style_layers = 0.0, 0.0, {}
        style_w = dict(zip(self.style_layers, self.style_layer_weights))
        for l in self.layers:
            F = feats.pop(l)
            if l in self.content_targets:
                v, g = losses.content_loss(F, self.content_targets[l], self.normalization)
                content_raw += v
                if self.alpha:
                    g *= self.alpha  # g is a fresh array: scale it in place, no second copy
                    add(l, g)
            if l in self.style_targets:
                v, g = losses.style_loss(F, self.style_targets[l], self.normalization)
                style_layers[l] = v
                style_raw += style_w[l] * v
                if self.beta and style_w[l]:
                    g *= self.beta * style_w[l]
                    add(l, g)
            del F, g
        del feats
        if grads:
            grad = images.preprocess_backward(self.net.backward(grads, cache))  # (H, W, 3)
        else:
            grad = xp.zeros_like(x_img)
        del cache, grads
        tv_raw = 0.0
        if self.tv_weight:
            tv_raw, g_tv = losses.tv_loss(x_img)
            grad = grad + g_tv * self.tv_weight
        terms = LossTerms(
            total=self.alpha * content_raw + self.beta * style_raw + self.tv_weight * tv_raw,
            content=self.alpha * content_raw, style=self.beta * style_raw,
            tv=self.tv_weight * tv_raw, content_raw=content_raw, style_raw=style_raw,
            tv_raw=tv_raw, style_layers=style_layers)
        self.last = terms
        self.evaluations += 1
        return terms.total, grad

    def flat_loss_and_grad(self, z):
        """For scipy: ``z`` is the flat float64 pixel vector on the host; returns
        ``(float, flat float64 gradient)``. The network runs in the objective's dtype on
        its device; only the gradient comes back."""
        img = self.xp.asarray(np.asarray(z).reshape(self.shape), dtype=self.dtype)
        loss, grad = self.loss_and_grad(img)
        return loss, to_host(grad).astype(np.float64).ravel()


# ======================================================================================
# Configuration
# ======================================================================================


@dataclass
class GatysConfig:
    """Everything a run depends on; ``python -m minnst.gatys`` fills it from argparse."""

    content: str | None = None        # content image path; None: matplotlib's grace_hopper.jpg
    style: list = field(default_factory=list)  # style image paths; empty: the procedural stained glass
    style_blend_weights: list | None = None  # one per style image, normalised (None: equal)
    output: str | None = None         # output image (.png/.jpg); None: ./minnst_out/<content>_<style>.png
    size: int = 512                   # longest side of the output, pixels
    style_scale: float = 1.0          # style images' longest side = style_scale × size
    content_layers: list = field(default_factory=lambda: list(DEFAULT_CONTENT_LAYERS))
    style_layers: list = field(default_factory=lambda: list(DEFAULT_STYLE_LAYERS))
    style_layer_weights: list | None = None  # w_l per style layer (None: equal, summing to 1)
    content_weight: float = 1.0       # α
    style_weight: float | None = None  # β (None: DEFAULT_STYLE_WEIGHT of the normalisation)
    tv_weight: float | None = None    # λ_tv, pixels in [0, 1] (None: DEFAULT_TV_WEIGHT of the normalisation)
    normalization: str = "gatys"      # "gatys" (the notes) or "johnson" (normalised losses)
    pooling: str = "avg"              # "avg" (Gatys' choice) or "max" (the trained VGG16)
    init: str = "noise"               # "noise", "content" or "image" (with init_image)
    init_image: str | None = None     # start image for init == "image"
    seed: int = 0                     # seeds the noise start
    iterations: int = 500             # per scale
    optimizer: str = "lbfgs"          # "lbfgs" (L-BFGS-B) or "adam"
    learning_rate: float = 0.02       # Adam's step size, in pixel units
    lbfgs_memory: int = 10            # L-BFGS history (pairs kept); memory ≈ 16·m bytes per pixel value
    print_every: int = 50             # print the losses every N iterations (0: never)
    save_every: int = 0               # save an intermediate image every N iterations (0: never)
    preserve_colors: str = "none"     # "none", "luminance" (keep the content's colours) or "histogram"
    scales: list | None = None        # coarse-to-fine sizes, e.g. [256, 512]; the last is the output size
    time_budget: float | None = None  # seconds for the whole run (None: no limit)
    tol: float | None = None          # stop a scale once the best loss fell < tol·loss over TOL_WINDOW steps
    device: str = "auto"              # "cpu", "gpu" or "auto"
    quiet: bool = False               # no progress bar or printed losses

    @property
    def sizes(self) -> list:
        return list(self.scales) if self.scales else [self.size]

    @property
    def beta(self) -> float:
        return DEFAULT_STYLE_WEIGHT[self.normalization] if self.style_weight is None else self.style_weight

    @property
    def tv(self) -> float:
        return DEFAULT_TV_WEIGHT[self.normalization] if self.tv_weight is None else self.tv_weight

    def validate(self) -> "GatysConfig":
        """Raise ``UsageError`` (one line) for any value a run cannot use."""
        from .cli import UsageError

        def number(name, lo=0.0, strict=False, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or (v <= lo if strict else v < lo):
                cmp = ">" if strict else "≥"
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number {cmp} {lo:g}, "
                                 f"got {v!r}")

        def integer(name, lo, hi):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise UsageError(f"--{name.replace('_', '-')} must be a whole number in [{lo}, {hi}], "
                                 f"got {v!r}")

        try:
            for s in self.sizes:
                images.check_size(s, "--scales" if self.scales else "--size")
        except images.ImageError as e:
            raise UsageError(str(e)) from None
        if self.scales and list(self.scales) != sorted(set(self.scales)):
            raise UsageError(f"--scales must increase (coarse to fine), got {list(self.scales)}")
        number("style_scale", strict=True)
        number("content_weight")
        number("style_weight", allow_none=True)
        number("tv_weight", allow_none=True)
        number("learning_rate", strict=True)
        number("time_budget", strict=True, allow_none=True)
        number("tol", allow_none=True)
        integer("iterations", 1, 10**7)
        integer("seed", 0, 2**63 - 1)
        integer("lbfgs_memory", 1, 1000)
        integer("print_every", 0, 10**9)
        integer("save_every", 0, 10**9)
        for name, allowed in (("normalization", losses.NORMALIZATIONS), ("pooling", ("avg", "max")),
                              ("init", INITS), ("optimizer", OPTIMIZERS),
                              ("preserve_colors", PRESERVE_COLORS), ("device", ("cpu", "gpu", "auto"))):
            if getattr(self, name) not in allowed:
                raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        try:
            _check_layers(self.content_layers, "--content-layers")
            _check_layers(self.style_layers, "--style-layers")
            n_styles = max(1, len(self.style))
            _check_weights(self.style_blend_weights, n_styles, "--style-blend-weights", normalize=True,
                           items="style images")
            _check_weights(self.style_layer_weights, len(self.style_layers), "--style-layer-weights",
                           normalize=False, items="style layers")
        except ValueError as e:
            raise UsageError(str(e)) from None
        if not self.content_layers and not self.style_layers:
            raise UsageError("give at least one content layer or one style layer")
        if self.init == "image" and not self.init_image:
            raise UsageError("--init image needs --init-image PATH")
        for s in self.sizes:
            st = self.style_size(s)
            if not images.MIN_SIZE <= st <= images.MAX_SIZE:
                raise UsageError(f"--style-scale {self.style_scale:g} × {s} gives {st}-pixel style images; "
                                 f"they must be between {images.MIN_SIZE} and {images.MAX_SIZE}")
        return self

    def style_size(self, size: int) -> int:
        return int(math.ceil(self.style_scale * size))

    def to_json(self) -> dict:
        """The configuration as stored in the output's metadata (without the output path,
        which does not change the image)."""
        d = dataclasses.asdict(self)
        d.pop("output", None)
        d["style_weight"], d["tv_weight"] = self.beta, self.tv
        return d


# ======================================================================================
# Memory estimate
# ======================================================================================


def _fit_longest(h: int, w: int, size: int) -> tuple[int, int]:
    """(H', W') with the longest side ``size`` and the aspect kept, as ``images.resize`` does."""
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _layer_shapes(h: int, w: int, upto: str):
    """(name, channels, height, width) of each VGG16 layer's output up to ``upto``."""
    c, out = 3, []
    for name in LAYER_NAMES[:LAYER_NAMES.index(upto) + 1]:
        if name.startswith("conv"):
            c = (64, 128, 256, 512, 512)[int(name[4]) - 1]
        elif name.startswith("pool"):
            h, w = h // 2, w // 2
        out.append((name, c, h, w))
    return out


VGG16_PARAMS = 14_714_688  # weights and biases of the 13 convolutions
# Calibrated with tracemalloc on a 2-iteration L-BFGS run (default layers, float32, CPU),
# tests/test_gatys.py::test_memory_estimate_is_calibrated. Measured bytes per pixel over
# what was allocated before: 3819 at 256², 3593 at 384², 3580 at 1024². The model:
# device = _KEPT_FACTOR × (the ReLU outputs the forward keeps for the backward: 1064 B/px
# up to relu5_1) — the factor covers the features handed to the losses, their gradients
# and the backward's layer-sized transients — plus the targets; host = L-BFGS-B's float64
# arrays, (2m + 5) vectors of workspace and ~8 more (x, g, bounds, scipy's copies), plus
# our float32/float64 copies at the scipy boundary (~3 vectors).
_KEPT_FACTOR = 2.6
_LBFGS_EXTRA_VECTORS = 8 + 3
_OVERHEAD = 16 * 2**20  # small arrays, Python objects
# The CPU convolutions keep each frozen layer's Winograd-transformed kernels (forward and
# input gradient), allocated on first use: 135.5 MB measured, 2.4× the weights.
_WINOGRAD_FACTOR = 2.4


def estimate_memory(h: int, w: int, content_layers=DEFAULT_CONTENT_LAYERS,
                    style_layers=DEFAULT_STYLE_LAYERS, style_hw=(), optimizer: str = "lbfgs",
                    lbfgs_memory: int = 10, device: str = "cpu", itemsize: int = 4) -> dict:
    """Peak bytes of one stylisation at (h, w): ``{"fixed", "device", "host", "total"}``.

    fixed: the VGG16 weights (and, on the CPU, their Winograd transforms), allocated once
    per network. device: fixed, plus the larger of the pastiche's forward + backward (the
    kept ReLU outputs times a calibrated factor, the targets) and the forward of the
    largest style image (``style_hw`` sizes). host: the optimiser's state — L-BFGS-B's
    float64 vectors, or Adam's moments.
    """
    layers = list(content_layers) + list(style_layers)
    upto = max(layers, key=LAYER_NAMES.index)

    def kept(hh, ww):
        return sum(c * a * b for name, c, a, b in _layer_shapes(hh, ww, upto) if name.startswith("relu"))

    shapes = _layer_shapes(h, w, upto)
    targets = sum(c * a * b for name, c, a, b in shapes if name in content_layers)
    targets += sum(c * c for name, c, _, _ in shapes if name in style_layers)
    pastiche = (_KEPT_FACTOR * kept(h, w) + targets) * itemsize
    styles = max([1.6 * kept(a, b) * itemsize for a, b in style_hw] or [0])  # forward only
    fixed = VGG16_PARAMS * itemsize * (1 + (_WINOGRAD_FACTOR if device == "cpu" else 0))
    n = 3 * h * w
    if optimizer == "lbfgs":
        host = (2 * lbfgs_memory + 5 + _LBFGS_EXTRA_VECTORS) * n * 8
    else:
        host = 4 * n * itemsize  # Adam's m and v, the best image, the gradient
    dev = fixed + max(pastiche, styles) + _OVERHEAD
    return {"fixed": int(fixed), "device": int(dev), "host": int(host), "total": int(dev + host)}


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpu_free_memory() -> int | None:
    """Free bytes on the current GPU, counting CuPy's pool's cached blocks as free."""
    try:
        import cupy

        free, _ = cupy.cuda.runtime.memGetInfo()
        return int(free + cupy.get_default_memory_pool().free_bytes())
    except Exception:
        return None


def _gb(n) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


# ======================================================================================
# Optimisation
# ======================================================================================


@dataclass
class Progress:
    """What ``stylize`` tells its callback after every iteration."""

    iteration: int              # global, over all scales, from 1
    total_iterations: int       # the planned number (a stop rule may end sooner)
    scale_index: int
    size: tuple                 # (H, W) of this scale
    terms: LossTerms            # of the latest evaluation
    best_loss: float
    elapsed: float              # seconds since stylize started
    best_image: Callable        # () -> host (H, W, 3) float32, colours preserved as asked
    record: dict                # this iteration's line of the loss log


@dataclass
class StylizeResult:
    image: np.ndarray           # host (H, W, 3) float32 in [0, 1]: the best iterate, colours preserved
    raw_image: np.ndarray       # the same before colour preservation
    loss: float                 # its loss (at the final scale); inf if nothing was evaluated
    iterations: int             # iterations done, all scales together
    evaluations: int            # objective evaluations, all scales together
    stop_reason: str
    seconds: float
    history: list = field(default_factory=list)  # one dict per iteration (what the loss log holds)


class _Stop(Exception):
    """Raised inside the objective to end the optimiser early (time budget)."""


class _Tracker:
    """Evaluates the objective for an optimiser, keeps the best point, applies stop rules."""

    def __init__(self, objective, x0, iterations, deadline, tol, on_iteration):
        self.obj, self.iterations, self.deadline, self.tol = objective, iterations, deadline, tol
        self.on_iteration = on_iteration
        self.best_x = x0.copy()  # (H, W, 3) on the objective's device, its dtype
        self.best_loss = math.inf
        self.it = 0
        self.best_by_iteration = []
        self.reason = None

    def evaluate(self, img, owned: bool = False):
        """The objective at ``img``; remembers it if it is the best so far (a copy unless
        ``owned``: the caller will not modify it)."""
        if self.deadline is not None and time.perf_counter() > self.deadline and self.it > 0:
            raise _Stop("time budget")
        loss, grad = self.obj.loss_and_grad(img)
        xp = self.obj.xp
        if not (math.isfinite(loss) and bool(xp.isfinite(grad).all())):
            what = "loss" if not math.isfinite(loss) else "gradient"
            raise NonFiniteLossError(f"the {what} became non-finite ({loss:g}) at iteration "
                                     f"{self.it + 1}; the weights may be too large")
        if loss < self.best_loss:
            self.best_loss = loss
            self.best_x = img if owned else xp.array(img, dtype=self.obj.dtype, copy=True)
        return loss, grad

    def end_iteration(self):
        """Count an iteration; returns the reason to stop, or None."""
        self.it += 1
        self.best_by_iteration.append(self.best_loss)
        self.on_iteration(self)
        if self.it >= self.iterations:
            return "iterations"
        if self.deadline is not None and time.perf_counter() > self.deadline:
            return "time budget"
        if self.tol is not None and self.it > TOL_WINDOW:
            before = self.best_by_iteration[-1 - TOL_WINDOW]
            if math.isfinite(before) and before - self.best_loss <= self.tol * abs(before):
                return f"converged (best loss fell by < {self.tol:g} in {TOL_WINDOW} iterations)"
        return None


def _run_lbfgs(tracker: _Tracker, x0, lbfgs_memory: int) -> str:
    from scipy.optimize import minimize

    obj = tracker.obj
    shape = obj.shape

    def fun(z):
        img = obj.xp.array(z.reshape(shape), dtype=obj.dtype)  # a copy: scipy reuses z
        loss, grad = tracker.evaluate(img, owned=True)
        return loss, to_host(grad).astype(np.float64).ravel()

    def callback(intermediate_result):  # scipy ≥ 1.11 passes the iterate under this name
        reason = tracker.end_iteration()
        if reason:
            tracker.reason = reason
            raise StopIteration

    z0 = to_host(x0).astype(np.float64).ravel()
    # scipy turns a Bounds object into a list of n fresh (lo, hi) tuples (~100 bytes per
    # pixel value, alive for the whole run); a list of n references to one tuple costs 8.
    bounds = [(0.0, 1.0)] * z0.size
    try:
        res = minimize(fun, z0, method="L-BFGS-B", jac=True, bounds=bounds, callback=callback,
                       options={"maxiter": tracker.iterations, "maxfun": 3 * tracker.iterations + 20,
                                "maxcor": lbfgs_memory})
    except _Stop as e:
        return str(e)
    if tracker.reason:
        return tracker.reason
    msg = res.message.decode() if isinstance(res.message, bytes) else str(res.message)
    return f"L-BFGS-B: {msg.lower()}"


def _run_adam(tracker: _Tracker, x0, lr: float) -> str:
    from .optim import Adam

    x = x0.copy()
    opt = Adam({"image": x}, lr=lr)
    try:
        while True:
            _, grad = tracker.evaluate(x)
            opt.step({"image": grad})
            tracker.obj.xp.clip(x, 0.0, 1.0, out=x)  # projected: the pixels stay in [0, 1]
            reason = tracker.end_iteration()
            if reason:
                return reason
    except _Stop as e:
        return str(e)


def _init_image(cfg: GatysConfig, content, init_image, seed: int):
    h, w = content.shape[:2]
    if cfg.init == "content":
        return content.copy()
    if cfg.init == "image":
        if init_image is None:
            raise ValueError("init='image' needs an init_image")
        return images.resize(np.asarray(init_image, dtype=np.float32), shape=(h, w))
    rng = np.random.default_rng(seed)
    return rng.random((h, w, 3), dtype=np.float32)  # white noise in [0, 1)


def _preserve(cfg: GatysConfig, content, img):
    if cfg.preserve_colors == "luminance":
        return images.transfer_luminance(content, img)
    return img


def stylize(content, styles, config: GatysConfig | None = None, *, init_image=None, net=None,
            device=None, callback=None, **options) -> StylizeResult:
    """Stylise ``content`` with ``styles`` (host (H, W, 3) images in [0, 1], any size).

    ``config`` (or keyword ``options`` naming its fields, which override it) sets the
    size, scales, weights and optimiser; the path fields (content, style, output) are not
    read here. ``device``: "cpu", "gpu", "auto" or a ``backend.Device`` (default
    ``config.device``); ``net``: a loaded VGG16 with the config's pooling on that device.
    ``callback(Progress)`` runs after every iteration. Returns a ``StylizeResult``;
    Ctrl-C raises ``StylizeInterrupted`` and a non-finite loss ``NonFiniteLossError``,
    each carrying the result so far in ``.result``.
    """
    from .backend import Device, select_device, to_device

    cfg = dataclasses.replace(config or GatysConfig(), **options)
    if hasattr(styles, "ndim"):
        styles = [styles]
    styles = list(styles)
    if not cfg.style:  # the path list only sizes the blend-weight check
        cfg = dataclasses.replace(cfg, style=[f"style{i}" for i in range(len(styles))])
    cfg.validate()
    if not styles and cfg.style_layers:
        raise ValueError("stylize needs at least one style image (or style_layers=[])")
    dev = device if isinstance(device, Device) else select_device(device or cfg.device)
    xp = dev.xp
    content = np.asarray(content, dtype=np.float32)
    styles = [np.asarray(s, dtype=np.float32) for s in styles]
    if cfg.preserve_colors == "histogram":
        styles = [images.match_color_histogram(s, content) for s in styles]
    if net is None:
        net = VGG16.load(pooling=cfg.pooling, xp=xp)

    sizes = cfg.sizes
    t0 = time.perf_counter()
    budget_end = None if cfg.time_budget is None else t0 + cfg.time_budget
    total = cfg.iterations * len(sizes)
    history, done, evaluations = [], 0, 0
    best_raw, best_loss, reason = None, math.inf, "iterations"

    def result(img_raw, loss, why):
        img_raw = to_host(img_raw).astype(np.float32)
        final_content = images.resize(content, shape=img_raw.shape[:2])
        return StylizeResult(image=_preserve(cfg, final_content, img_raw), raw_image=img_raw,
                             loss=loss, iterations=done, evaluations=evaluations, stop_reason=why,
                             seconds=time.perf_counter() - t0, history=history)

    for k, size in enumerate(sizes):
        tracker = None
        try:
            content_s = images.resize(content, size=size)
            h, w = content_s.shape[:2]
            styles_s = [images.resize(s, size=cfg.style_size(size)) for s in styles]
            obj = Objective(to_device(content_s, dev), [to_device(s, dev) for s in styles_s],
                            content_layers=cfg.content_layers, style_layers=cfg.style_layers,
                            style_layer_weights=cfg.style_layer_weights,
                            style_blend_weights=cfg.style_blend_weights, alpha=cfg.content_weight,
                            beta=cfg.beta, tv_weight=cfg.tv, pooling=cfg.pooling,
                            normalization=cfg.normalization, net=net)
            if k == 0:
                x0 = _init_image(cfg, content_s, init_image, cfg.seed)
            else:
                x0 = images.resize(to_host(best_raw), shape=(h, w))
            x0 = to_device(x0, dev)
            deadline = None
            if budget_end is not None:  # share what is left by the scales' cost (pixels × iterations)
                costs = [_fit_longest(*content.shape[:2], s) for s in sizes[k:]]
                share = (costs[0][0] * costs[0][1]) / sum(a * b for a, b in costs)
                deadline = time.perf_counter() + max(0.0, budget_end - time.perf_counter()) * share

            def on_iteration(tr, k=k, size_hw=(h, w), content_s=content_s):
                nonlocal done
                done += 1
                terms = tr.obj.last
                entry = {"iteration": done, "scale": k, "size": list(size_hw), "loss": terms.total,
                         "content": terms.content, "style": terms.style, "tv": terms.tv,
                         "best": tr.best_loss, "seconds": round(time.perf_counter() - t0, 4),
                         "style_layers": terms.style_layers}
                history.append(entry)
                if callback is not None:
                    def best_image(tr=tr, content_s=content_s):
                        return _preserve(cfg, content_s, to_host(tr.best_x).astype(np.float32))

                    callback(Progress(done, total, k, size_hw, terms, tr.best_loss,
                                      time.perf_counter() - t0, best_image, entry))

            tracker = _Tracker(obj, x0, cfg.iterations, deadline, cfg.tol, on_iteration)
            if cfg.optimizer == "lbfgs":
                reason = _run_lbfgs(tracker, x0, cfg.lbfgs_memory)
            else:
                reason = _run_adam(tracker, x0, cfg.learning_rate)
        except KeyboardInterrupt:
            if tracker is not None and (tracker.best_loss < math.inf or k > 0):
                evaluations += tracker.obj.evaluations
                raise StylizeInterrupted(result(tracker.best_x, tracker.best_loss, "interrupted")) from None
            if best_raw is not None:  # between scales: the previous scale's result
                raise StylizeInterrupted(result(best_raw, best_loss, "interrupted")) from None
            raise  # nothing evaluated yet: nothing to keep
        except NonFiniteLossError as e:
            evaluations += tracker.obj.evaluations
            good = tracker.best_loss < math.inf or k > 0
            e.result = result(tracker.best_x, tracker.best_loss, "non-finite loss") if good else None
            raise
        evaluations += obj.evaluations
        best_raw, best_loss = tracker.best_x, tracker.best_loss
        del obj, tracker
    return result(best_raw, best_loss, reason)


# ======================================================================================
# Command line
# ======================================================================================


def _split(values, convert, what):
    """``--opt a,b c`` -> [a, b, c] (commas and spaces both separate)."""
    out = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(convert(part))
            except (ValueError, argparse.ArgumentTypeError) as e:
                raise argparse.ArgumentTypeError(f"{what}: {e}") from None
    return out


def _float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return v


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def build_parser():
    from .cli import ArgumentParser

    p = ArgumentParser(
        prog=PROG,
        description="Neural style transfer by optimisation (Gatys et al.): the pixels of a new image are "
                    "optimised until VGG16 sees the content photo's features in it and the style "
                    "images' Gram matrices. With no arguments: a demo (Grace Hopper in stained glass, "
                    f"{DEMO_SIZE} px, {DEMO_ITERATIONS} iterations) into ./minnst_out/.",
        epilog="Lists take commas or spaces (--style-layers relu1_1,relu2_1 or relu1_1 relu2_1). "
               "Exit codes: 0 done, 2 bad input, 130 interrupted (the best image so far is saved). "
               "The maths and the choice of weights: docs/gatys.md.")
    g = p.add_argument_group("images")
    g.add_argument("--content", metavar="PATH", help="content photo (default: matplotlib's grace_hopper.jpg)")
    g.add_argument("--style", nargs="+", metavar="PATH", default=[],
                   help="one or more style images (default: minnst's procedural stained glass)")
    g.add_argument("--style-blend-weights", nargs="+", metavar="W",
                   help="one weight per style image, normalised to sum 1 (default: equal)")
    g.add_argument("--output", "-o", metavar="PATH",
                   help="output .png or .jpg (default: minnst_out/<content>_<style>.png); the loss log "
                        "(.losses.jsonl) and loss curve (.losses.png) go next to it")
    g.add_argument("--size", type=_int, default=None, metavar="N",
                   help=f"longest side of the output in pixels (default 512; the demo {DEMO_SIZE})")
    g.add_argument("--style-scale", type=_float, default=1.0, metavar="S",
                   help="style images are resized to S × size, longest side (default 1)")
    g.add_argument("--scales", nargs="+", metavar="N",
                   help="coarse-to-fine sizes, e.g. 256,512: optimise at each size, starting from the "
                        "previous result upsampled; the last is the output size")

    g = p.add_argument_group("loss")
    g.add_argument("--content-layers", nargs="+", metavar="LAYER", default=list(DEFAULT_CONTENT_LAYERS),
                   help=f"VGG16 layers of the content loss (default {','.join(DEFAULT_CONTENT_LAYERS)})")
    g.add_argument("--style-layers", nargs="+", metavar="LAYER", default=list(DEFAULT_STYLE_LAYERS),
                   help=f"VGG16 layers of the style loss (default {','.join(DEFAULT_STYLE_LAYERS)})")
    g.add_argument("--style-layer-weights", nargs="+", metavar="W",
                   help="one weight per style layer (default: equal, summing to 1)")
    g.add_argument("--content-weight", type=_float, default=1.0, metavar="ALPHA",
                   help="content weight α (default 1)")
    g.add_argument("--style-weight", type=_float, default=None, metavar="BETA",
                   help=f"style weight β (default {DEFAULT_STYLE_WEIGHT['gatys']:g} with gatys, "
                        f"{DEFAULT_STYLE_WEIGHT['johnson']:g} with johnson; with gatys, scale it with the "
                        f"pixel count for the same look at another size)")
    g.add_argument("--tv-weight", type=_float, default=None, metavar="LAMBDA",
                   help=f"total-variation weight λ, smooths (default {DEFAULT_TV_WEIGHT['gatys']:g} with "
                        f"gatys, {DEFAULT_TV_WEIGHT['johnson']:g} with johnson; 0: off)")
    g.add_argument("--normalization", choices=losses.NORMALIZATIONS, default="gatys",
                   help="gatys (default): ½Σ(F−P)² and Σ(G−A)²/(4N²M²), as in the paper; johnson: "
                        "‖F−P‖²/(NM) and ‖G/(NM) − A‖², independent of the image size")
    g.add_argument("--pooling", choices=("avg", "max"), default="avg",
                   help="VGG16 pooling: avg (default; Gatys et al.: smoother gradients) or max")

    g = p.add_argument_group("optimisation")
    g.add_argument("--init", choices=INITS, default=None,
                   help="start from noise (default), the content photo, or --init-image")
    g.add_argument("--init-image", metavar="PATH",
                   help="start image, resized to the output (implies --init image)")
    g.add_argument("--seed", type=_int, default=0, metavar="N",
                   help="seed of the noise start (default 0); the same seed gives the same image")
    g.add_argument("--iterations", type=_int, default=None, metavar="N",
                   help=f"iterations per scale (default 500; the demo {DEMO_ITERATIONS})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="lbfgs",
                   help="lbfgs (default: scipy's L-BFGS-B, pixels bounded to [0, 1]) or adam")
    g.add_argument("--learning-rate", type=_float, default=0.02, metavar="LR",
                   help="Adam's step size, pixels in [0, 1] (default 0.02)")
    g.add_argument("--lbfgs-memory", type=_int, default=10, metavar="M",
                   help="L-BFGS history length (default 10; each pair costs 48 bytes per pixel)")
    g.add_argument("--time-budget", type=_float, default=None, metavar="SECONDS",
                   help="stop after this many seconds and keep the best image")
    g.add_argument("--tol", type=_float, default=None, metavar="T",
                   help=f"stop a scale once the best loss fell by less than the fraction T over "
                        f"{TOL_WINDOW} iterations")
    g.add_argument("--device", choices=("cpu", "gpu", "auto"), default=None,
                   help="where VGG16 runs (default: $MINNST_DEVICE, else auto: the GPU if CuPy can use one)")

    g = p.add_argument_group("output")
    g.add_argument("--print-every", type=_int, default=50, metavar="N",
                   help="print the losses every N iterations (default 50; 0: never)")
    g.add_argument("--save-every", type=_int, default=0, metavar="N",
                   help="also save the best image so far every N iterations as <output>_<N>.png "
                        "(default 0: no)")
    g.add_argument("--preserve-colors", choices=PRESERVE_COLORS, default="none",
                   help="luminance: keep the photo's colours, take the result's luminance (YIQ); "
                        "histogram: recolour the style images to the photo's colour mean and covariance "
                        "first (default none)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar or loss lines")
    return p


def config_from_args(argv) -> tuple[GatysConfig, bool]:
    """Parse ``argv`` into a validated ``GatysConfig``; also whether this is the demo."""
    from .cli import UsageError

    args = build_parser().parse_args(argv)
    try:
        content_layers = _split(args.content_layers, str, "--content-layers")
        style_layers = _split(args.style_layers, str, "--style-layers")
        blend = layer_w = scales = None
        if args.style_blend_weights:
            blend = _split(args.style_blend_weights, _float, "--style-blend-weights")
        if args.style_layer_weights:
            layer_w = _split(args.style_layer_weights, _float, "--style-layer-weights")
        if args.scales:
            scales = _split(args.scales, _int, "--scales")
    except argparse.ArgumentTypeError as e:
        raise UsageError(str(e)) from None
    if args.scales is not None and not scales:
        raise UsageError("--scales needs at least one size")
    if scales and args.size is not None and args.size != scales[-1]:
        raise UsageError(f"--size {args.size} and --scales {','.join(map(str, scales))} disagree: "
                         f"the last scale is the output size")
    demo = args.content is None and not args.style  # the demo's own size, length and β
    size = args.size if args.size is not None else (DEMO_SIZE if demo else 512)
    iterations = args.iterations if args.iterations is not None else (DEMO_ITERATIONS if demo else 500)
    style_weight = args.style_weight
    if style_weight is None and demo and args.normalization == "gatys" and not scales:
        style_weight = DEMO_STYLE_WEIGHT * (size / DEMO_SIZE) ** 2  # β ∝ M
    init = args.init or ("image" if args.init_image else "noise")
    if args.init_image and init != "image":
        raise UsageError(f"--init-image goes with --init image, not --init {init}")
    cfg = GatysConfig(
        content=args.content, style=list(args.style), style_blend_weights=blend, output=args.output,
        size=scales[-1] if scales else size, style_scale=args.style_scale, content_layers=content_layers,
        style_layers=style_layers, style_layer_weights=layer_w, content_weight=args.content_weight,
        style_weight=style_weight, tv_weight=args.tv_weight, normalization=args.normalization,
        pooling=args.pooling, init=init, init_image=args.init_image, seed=args.seed,
        iterations=iterations, optimizer=args.optimizer, learning_rate=args.learning_rate,
        lbfgs_memory=args.lbfgs_memory, print_every=args.print_every, save_every=args.save_every,
        preserve_colors=args.preserve_colors, scales=scales, time_budget=args.time_budget,
        tol=args.tol, device=args.device or os.environ.get("MINNST_DEVICE") or "auto", quiet=args.quiet)
    return cfg.validate(), demo


def demo_content_path() -> Path:
    """matplotlib's bundled photo of Grace Hopper."""
    from .cli import UsageError

    try:
        from matplotlib import cbook

        path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except Exception as e:  # matplotlib missing or built without its sample data
        raise UsageError(f"matplotlib's sample photo grace_hopper.jpg is unavailable ({e}); "
                         f"pass --content PATH") from None
    if not path.is_file():
        raise UsageError(f"matplotlib's sample photo is missing ({path}); pass --content PATH")
    return path


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _output_paths(cfg: GatysConfig, content_name: str, style_names: list) -> dict:
    from .cli import UsageError

    out = Path(cfg.output) if cfg.output else (
        Path("minnst_out") / f"{content_name}_{'+'.join(style_names)}.png")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UsageError(f"--output must end in .png or .jpg, got {out}")
    if out.is_dir():
        raise UsageError(f"--output is a directory: {out}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the output folder {out.parent}: {e.strerror}") from None
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"cannot write into the output folder {out.parent}")
    stem = out.with_suffix("")
    return {"image": out, "log": Path(f"{stem}.losses.jsonl"), "curve": Path(f"{stem}.losses.png"),
            "stem": stem, "suffix": out.suffix}


def draw_losses(ax, history: list, fontsize=None):
    """The weighted terms of a run's loss log (total, content, style, TV; log scale) on a
    matplotlib axis; dashed lines where a new scale starts."""
    it = [h["iteration"] for h in history]
    for key, style in (("loss", "k-"), ("content", "C0-"), ("style", "C3-"), ("tv", "C2-")):
        ys = [h[key] for h in history]
        if any(y > 0 for y in ys):
            ax.plot(it, [y if y > 0 else np.nan for y in ys], style, lw=1.2,
                    label="total" if key == "loss" else key)
    for k in sorted({h["scale"] for h in history})[1:]:
        first = next(h["iteration"] for h in history if h["scale"] == k)
        ax.axvline(first - 0.5, color="0.7", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("iteration", fontsize=fontsize)
    ax.grid(True, which="both", alpha=0.3)
    if fontsize:
        ax.tick_params(labelsize=fontsize - 1)
    ax.legend(loc="upper right", fontsize=fontsize)


def plot_losses(history: list, path) -> Path:
    """Loss curve (total, content, style, TV; log scale) as a PNG, without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .weights import atomic_write

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    draw_losses(ax, history)
    ax.set_ylabel("weighted loss")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


class _Reporter:
    """The CLI's per-iteration work: progress bar, printed losses, loss log, saved images."""

    def __init__(self, cfg: GatysConfig, paths: dict, metadata: dict):
        from tqdm import tqdm

        self.cfg, self.paths, self.metadata = cfg, paths, metadata
        self.bar = tqdm(total=cfg.iterations * len(cfg.sizes), unit="it", disable=cfg.quiet,
                        dynamic_ncols=True, file=sys.stderr, leave=True)
        self.log = open(paths["log"], "w", encoding="utf-8")
        self.history = []

    def __call__(self, p: Progress):
        t = p.terms
        self.history.append(p.record)
        self.bar.set_description(f"{p.size[1]}×{p.size[0]}", refresh=False)
        self.bar.set_postfix_str(f"content {t.content:.3g} style {t.style:.3g} tv {t.tv:.3g}", refresh=False)
        self.bar.update(1)
        self.log.write(json.dumps(p.record) + "\n")
        self.log.flush()
        if self.cfg.print_every and p.iteration % self.cfg.print_every == 0 and not self.cfg.quiet:
            self.bar.write(f"iteration {p.iteration:5d}  loss {t.total:.4g}  content {t.content:.4g}  "
                           f"style {t.style:.4g}  tv {t.tv:.4g}  ({p.elapsed:.1f} s)", file=sys.stderr)
        if self.cfg.save_every and p.iteration % self.cfg.save_every == 0:
            path = Path(f"{self.paths['stem']}_{p.iteration:04d}{self.paths['suffix']}")
            images.save_image(path, p.best_image(), metadata=dict(self.metadata, iteration=str(p.iteration)))

    def close(self):
        self.bar.close()
        self.log.close()
        if self.history:
            try:
                plot_losses(self.history, self.paths["curve"])
            except Exception as e:  # a missing or broken matplotlib must not lose the image
                print(f"note: could not draw the loss curve ({e.__class__.__name__}: {e})", file=sys.stderr)


def _say(cfg, msg):
    if not cfg.quiet:
        print(msg, file=sys.stderr)


def _estimate_for(content_hw, cfg: GatysConfig, styles, size: int, device: str = "cpu") -> dict:
    h, w = _fit_longest(*content_hw, size)
    style_hw = [_fit_longest(*s.shape[:2], cfg.style_size(size)) for s in styles]
    return estimate_memory(h, w, cfg.content_layers, cfg.style_layers, style_hw, cfg.optimizer,
                           cfg.lbfgs_memory, device)


def _largest_fitting_size(content_hw, cfg, styles, device: str, where: str, have: int) -> int | None:
    """The largest output size (a multiple of 16) whose estimate fits in ``have`` bytes."""
    part = "device" if (device == "gpu" and where == "GPU") else ("host" if device == "gpu" else "total")
    lo, hi = images.MIN_SIZE // 16, cfg.sizes[-1] // 16
    if _estimate_for(content_hw, cfg, styles, lo * 16, device)[part] > have:
        return None
    while lo < hi:  # the estimate grows with the size
        mid = (lo + hi + 1) // 2
        if _estimate_for(content_hw, cfg, styles, mid * 16, device)[part] <= have:
            lo = mid
        else:
            hi = mid - 1
    return lo * 16


def _main(argv) -> int:
    from . import procedural
    from .backend import keep_freed_memory, select_device
    from .cli import EXIT_INTERRUPTED, EXIT_USAGE, UsageError

    argv = sys.argv[1:] if argv is None else list(argv)
    cfg, demo_defaults = config_from_args(argv)

    # Inputs first, so that a bad file fails before anything slow.
    content_path = Path(cfg.content) if cfg.content else demo_content_path()
    content = images.load_image(content_path)
    if cfg.style:
        styles = [images.load_image(s) for s in cfg.style]
        style_names = [Path(s).stem for s in cfg.style]
        style_meta = [{"path": str(s), "sha256": _sha256(s)} for s in cfg.style]
    else:
        styles = [procedural.stained_glass(cfg.style_size(cfg.sizes[-1]), seed=0)]
        style_names = [DEMO_STYLE_NAME]
        style_meta = [{"procedural": "minnst.procedural.stained_glass", "seed": 0}]
    init_image = images.load_image(cfg.init_image) if cfg.init == "image" else None
    paths = _output_paths(cfg, content_path.stem, style_names)
    if demo_defaults:
        _say(cfg, f"minnst demo: {content_path.name} in the style of minnst's procedural stained glass, "
                  f"{cfg.size} px, {cfg.iterations} iterations, style weight {cfg.beta:g} "
                  f"(about two minutes on 2 CPU cores)")

    # Memory: estimate the largest scale, refuse if it cannot fit.
    device = select_device(cfg.device)
    h, w = _fit_longest(*content.shape[:2], cfg.sizes[-1])
    est = _estimate_for(content.shape[:2], cfg, styles, cfg.sizes[-1], device.name)
    avail = available_memory()
    if device.name == "gpu":
        free = gpu_free_memory()
        checks = [("GPU", est["device"], free), ("host", est["host"], avail)]
    else:
        checks = [("host", est["total"], avail)]
    for where, need, have in checks:
        if have is not None and need > have:
            fit = _largest_fitting_size(content.shape[:2], cfg, styles, device.name, where, have)
            hint = (f"try --size {fit} (with --scales, the last scale must fit: e.g. --scales "
                    f"{max(images.MIN_SIZE, fit // 2)},{fit})" if fit else "this machine is too small")
            raise UsageError(f"a {w}×{h} pastiche needs about {_gb(need)} of {where} memory but only "
                             f"{_gb(have)} is available: {hint}")
    _say(cfg, f"{w}×{h} pastiche on the {device.name.upper()}: estimated peak memory {_gb(est['total'])}"
              + (f" ({_gb(avail)} available)" if avail else ""))
    # Keeping freed blocks in the heap makes the per-iteration allocations cheaper (17% less
    # wall time at 1024²) but fragments: peak RSS at 1024² went from 3.7 to 4.4 GB. Only
    # where memory is plentiful.
    if avail is not None and est["total"] * 2 < avail:
        keep_freed_memory()

    net = VGG16.load(pooling=cfg.pooling, xp=device.xp)
    meta_config = cfg.to_json()
    meta_config["content"] = str(content_path)
    metadata = {"Software": "minnst.gatys", "minnst-seed": str(cfg.seed),
                "minnst-config": json.dumps(meta_config, sort_keys=True),
                "minnst-inputs": json.dumps({"content": {"path": str(content_path),
                                                         "sha256": _sha256(content_path)},
                                             "styles": style_meta}, sort_keys=True)}
    reporter = _Reporter(cfg, paths, metadata)
    result, status, failure = None, 0, None
    try:
        result = stylize(content, styles, cfg, init_image=init_image, net=net, device=device,
                         callback=reporter)
    except StylizeInterrupted as e:
        result, status = e.result, EXIT_INTERRUPTED
    except NonFiniteLossError as e:
        result, status, failure = e.result, EXIT_USAGE, str(e)
    finally:
        reporter.close()  # also on an unexpected error: the log so far stays readable
    if result is None:
        raise UsageError(f"{failure}; no finite loss was ever reached, so there is no image to save")
    metadata["minnst-result"] = json.dumps({"loss": result.loss, "iterations": result.iterations,
                                            "stop_reason": result.stop_reason})
    images.save_image(paths["image"], result.image, metadata=metadata)
    if failure:
        raise UsageError(f"{failure}; saved the last good image (iteration {result.iterations}) "
                         f"to {paths['image']}")
    if status == EXIT_INTERRUPTED:
        print(f"\ninterrupted after {result.iterations} iterations: saved the best image so far to "
              f"{paths['image']}", file=sys.stderr)
        return status
    _say(cfg, f"stopped: {result.stop_reason} after {result.iterations} iterations "
              f"({result.evaluations} evaluations) in {result.seconds:.1f} s; best loss {result.loss:.4g}")
    print(f"wrote {paths['image']}  (loss log {paths['log'].name}, loss curve {paths['curve'].name})")
    return 0


def main(argv=None) -> int:
    """``python -m minnst.gatys``; returns the exit code (see ``minnst.cli``)."""
    from .cli import run

    try:
        return run(_main, argv, prog=PROG)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, its line already printed)
        return e.code if isinstance(e.code, int) else 2


if __name__ == "__main__":
    sys.exit(main())
