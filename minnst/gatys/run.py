"""``stylize``: the Gatys method end to end — the pixels of a pastiche optimised against
``Objective`` at one or more scales, by L-BFGS-B (``optim.lbfgs``) or projected Adam.

Whatever stops the run (iterations, ``time_budget``, ``tol``, Ctrl-C, a non-finite loss),
the image kept is the lowest-loss point evaluated, not the last one.

    result = stylize(content, [style], GatysConfig(size=256, iterations=200))
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import images
from ..backend import Device, select_device, to_device, to_host
from ..optim import Adam, StopOptimization, lbfgs
from ..perceptual import LossTerms
from ..vgg import VGG16
from .config import TOL_WINDOW, GatysConfig
from .objective import Objective


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


class _Tracker:
    """Evaluates the objective for an optimiser, keeps the best point, applies stop rules."""

    def __init__(self, objective, x0, iterations, deadline, tol, on_iteration):
        self.obj, self.iterations, self.deadline, self.tol = objective, iterations, deadline, tol
        self.on_iteration = on_iteration
        self.best_x = x0.copy()  # (H, W, 3) on the objective's device, its dtype
        self.best_loss = math.inf
        self.it = 0
        self.best_by_iteration = []

    def evaluate(self, img, owned: bool = False):
        """The objective at ``img``; remembers it if it is the best so far (a copy unless
        ``owned``: the caller will not modify it)."""
        if self.deadline is not None and time.perf_counter() > self.deadline and self.it > 0:
            raise StopOptimization("time budget")
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
    obj = tracker.obj

    def fun(z):
        loss, grad = tracker.evaluate(obj.from_flat(z), owned=True)
        return loss, obj.to_flat(grad)

    return lbfgs(fun, to_host(x0).astype(np.float64).ravel(), 0.0, 1.0, tracker.iterations,
                 lbfgs_memory, on_iteration=lambda _: tracker.end_iteration())


def _run_adam(tracker: _Tracker, x0, lr: float) -> str:
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
    except StopOptimization as e:
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
            device=None, callback=None, cluster=None, **options) -> StylizeResult:
    """Stylise ``content`` with ``styles`` (host (H, W, 3) images in [0, 1], any size).

    ``config`` (or keyword ``options`` naming its fields, which override it) sets the
    size, scales, weights and optimiser; the path fields (content, style, output) are not
    read here. ``device``: "cpu", "gpu", "auto" or a ``backend.Device`` (default
    ``config.device``); ``net``: a loaded VGG16 with the config's pooling on that device.
    ``callback(Progress)`` runs after every iteration. ``cluster``: a
    ``distributed.Cluster`` on whose workers the objective's tiles run, each scale tiled
    with its tile (``config.scale_tiles``) or, if None, a tile that gives every worker one
    (``Objective(cluster=…)``); the optimiser stays here, and the run is the serial tiled
    run's, bit for bit. Returns a ``StylizeResult``;
    Ctrl-C raises ``StylizeInterrupted`` and a non-finite loss ``NonFiniteLossError``,
    each carrying the result so far in ``.result``.
    """
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
    cfg.check_image_sizes(content.shape[:2], [s.shape[:2] for s in styles])
    if cfg.preserve_colors == "histogram":
        styles = [images.match_color_histogram(s, content) for s in styles]
    if net is None:
        net = VGG16.load(pooling=cfg.pooling, xp=xp)

    sizes = cfg.sizes
    t0 = time.perf_counter()
    budget_end = None if cfg.time_budget is None else t0 + cfg.time_budget
    total = cfg.total_iterations
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
                            normalization=cfg.normalization, net=net, tile=cfg.scale_tiles[k],
                            cluster=cluster)
            if k == 0:
                x0 = _init_image(cfg, content_s, init_image, cfg.seed)
            else:
                x0 = images.resize(to_host(best_raw), shape=(h, w))
            x0 = to_device(x0, dev)
            deadline = None
            if budget_end is not None:  # share what is left by the scales' cost (pixels × iterations)
                costs = [a * b * n for (a, b), n in zip(
                    (images.fit_longest(*content.shape[:2], s) for s in sizes[k:]), cfg.scale_iterations[k:])]
                share = costs[0] / sum(costs)
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

            tracker = _Tracker(obj, x0, cfg.scale_iterations[k], deadline, cfg.tol, on_iteration)
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
