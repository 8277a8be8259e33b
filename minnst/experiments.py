"""The notes' findings as experiments, one command each: ``python -m minnst.experiments NAME``.

Each experiment runs the current code on the images of a data folder (``--data DIR`` with
``content/`` and ``styles/``; default ``$MINNST_DATA``, else ``../shared/data`` from the
current folder, where the project's data lies beside a checkout),
then writes a figure ``NAME.jpg`` and a record ``NAME.json`` (the command, image size,
iterations, weights, seconds, and the numbers the figure shows) to ``--output-dir``.
The figure carries the same facts in its footer. ``docs/experiments.md`` presents them.

    content       content reconstructions from noise at relu1_1 … relu5_1, with PSNR
    style         style reconstructions from the layer sets {relu1_1}, …, {relu1_1 … relu5_1}
    tradeoff      the α/β trade-off: more content to more style, with both losses
    pooling       average vs max pooling: results and loss curves
    content-layer relu2_2 vs relu4_2 as the content layer
    fast          the fast network's one-pass loss vs L-BFGS per iteration (same objective);
                  for a many-style model, fast-styles
    fast-styles   the same for every style of a many-style model, with its median against 50
    gallery       a few Gatys results and the shipped fast model on held-out photos
    all           every one of the above but fast-styles, in that order

Gatys runs use ``gatys.stylize`` (L-BFGS-B from white noise, average pooling, the Gatys
normalisation); ``fast`` uses the training objective of ``train_fast.TrainingLoss``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import images
from .optim import lbfgs
from .cli import ArgumentParser, UsageError, run, whole
from .files import atomic_write, check_writable

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
MAX_JPEG_BYTES = 300_000


def default_data() -> Path:
    """``$MINNST_DATA``, else ``../shared/data`` relative to the current folder."""
    return Path(os.environ.get("MINNST_DATA") or Path("..") / "shared" / "data")


# --------------------------------------------------------------------------- running

@dataclass
class Context:
    """What every experiment reads: the settings, the data, shared nets, a progress bar."""

    name: str
    data: Path
    out_dir: Path
    size: int
    iterations: int
    content: str             # content photo file name in data/content
    style: str               # style image file name in data/styles
    seed: int = 0
    quiet: bool = False
    command: str = ""
    model: str | None = None  # model file of the fast experiments (None: the shipped default)
    _nets: dict = field(default_factory=dict)
    _bar: object = None

    def image(self, folder: str, name: str, size: int | None = None):
        path = self.data / folder / name
        if not path.is_file():
            raise UsageError(f"{path} not found (pass --data DIR with content/ and styles/)")
        return images.load_image(path, size=size)

    def vgg(self, pooling: str = "avg"):
        from .vgg import VGG16

        if pooling not in self._nets:
            self._nets[pooling] = VGG16.load(pooling=pooling)
        return self._nets[pooling]

    def progress(self, total: int):
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="it", disable=self.quiet, dynamic_ncols=True,
                         file=sys.stderr, desc=self.name)
        return self._bar

    def step(self, label: str, **postfix):
        if self._bar is not None:
            self._bar.set_description(f"{self.name}: {label}", refresh=False)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def say(self, msg: str):
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)


def gatys_run(ctx: Context, label: str, content, styles, **options):
    """``gatys.stylize`` at ``ctx.size`` for ``ctx.iterations`` from white noise (seed
    ``ctx.seed``), advancing the progress bar; ``options`` override GatysConfig fields."""
    from .gatys import GatysConfig, stylize

    settings = dict(size=ctx.size, iterations=ctx.iterations, seed=ctx.seed, init="noise",
                    pooling="avg", quiet=True, device="cpu")
    settings.update(options)
    cfg = GatysConfig(**settings)
    return stylize(content, styles, cfg, net=ctx.vgg(cfg.pooling),
                   callback=lambda p: ctx.step(label, loss=f"{p.terms.total:.3g}"))


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1]: 10·log10(1 / MSE)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def square(img, size: int):
    """Centre crop to a square, then resize to size × size."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return images.resize(img[top:top + s, left:left + s], shape=(size, size))


# --------------------------------------------------------------------------- figures

def new_figure(rows: int, cols: int, panel: float = 2.4, aspect: float = 1.0):
    """A grid figure of panels ``panel`` inches wide and ``aspect`` × that high (+ titles)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * panel, rows * (panel * aspect + 0.35) + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def show(ax, img, title: str = ""):
    ax.imshow(np.clip(np.asarray(img), 0, 1), interpolation="lanczos")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)


def footer(ctx: Context, seconds: float, weights: str) -> str:
    return (f"{ctx.command}   |   {ctx.size} px, {ctx.iterations} iterations, {weights}   |   "
            f"{seconds:.0f} s on this machine")


def save_figure(fig, path: Path, note: str) -> Path:
    """Figure → JPEG under MAX_JPEG_BYTES (lowering the quality if needed), atomically."""
    fig.text(0.5, 0.006, note, ha="center", va="bottom", fontsize=6.5, color="0.25", wrap=True)
    fig.tight_layout(rect=(0, 0.035, 1, 1))
    for quality in (88, 80, 70, 60, 50):
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="jpeg", bbox_inches="tight", pad_inches=0.08,
                        pil_kwargs={"quality": quality, "optimize": True})
        if path.stat().st_size <= MAX_JPEG_BYTES:
            break
    return path


def write_record(ctx: Context, seconds: float, weights: dict, results, **extra) -> Path:
    record = {"experiment": ctx.name, "command": ctx.command, "size": ctx.size,
              "iterations": ctx.iterations, "seed": ctx.seed, "content": ctx.content,
              "style": ctx.style, "weights": weights, "seconds": round(seconds, 1),
              "date": time.strftime("%Y-%m-%d"), "results": results, **extra}
    path = ctx.out_dir / f"{ctx.name}.json"
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- experiments

def exp_content(ctx: Context):
    """Content reconstructions: α·½Σ(F_l − P_l)² alone, from white noise, per layer."""
    photo = ctx.image("content", ctx.content)
    target = images.resize(photo, size=ctx.size)
    ctx.progress(len(LAYERS) * ctx.iterations)
    t0 = time.perf_counter()
    results, panels = [], []
    for layer in LAYERS:
        r = gatys_run(ctx, layer, photo, [], content_layers=[layer], style_layers=[],
                      tv_weight=0.0)
        db = psnr(r.image, target)
        results.append({"layer": layer, "psnr_db": round(db, 2), "loss": r.loss,
                        "seconds": round(r.seconds, 1)})
        panels.append((r.image, f"{layer}: {db:.1f} dB"))
        ctx.say(f"{layer}: PSNR {db:.2f} dB, loss {r.loss:.4g}, {r.seconds:.0f} s")
    seconds = time.perf_counter() - t0
    fig = new_figure(1, len(LAYERS) + 1, aspect=target.shape[0] / target.shape[1])
    show(fig.add_subplot(1, len(LAYERS) + 1, 1), target, "photo")
    for k, (img, title) in enumerate(panels):
        show(fig.add_subplot(1, len(LAYERS) + 1, k + 2), img, title)
    weights = {"content_weight": 1.0, "style_weight": 0.0, "tv_weight": 0.0, "pooling": "avg"}
    save_figure(fig, ctx.out_dir / "content.jpg", footer(ctx, seconds, "content loss only, avg pooling"))
    write_record(ctx, seconds, weights, results)


def exp_style(ctx: Context):
    """Style reconstructions: Σ_l w_l E_l alone (equal w_l), from white noise, per layer set."""
    canvas = ctx.image("content", ctx.content)  # fixes the pastiche's size only
    style = ctx.image("styles", ctx.style)
    ctx.progress(len(LAYERS) * ctx.iterations)
    t0 = time.perf_counter()
    results, panels = [], []
    for k in range(1, len(LAYERS) + 1):
        layers = list(LAYERS[:k])
        label = "+".join(l.replace("relu", "") for l in layers)
        r = gatys_run(ctx, label, canvas, [style], content_layers=[], style_layers=layers,
                      content_weight=0.0, tv_weight=0.0)
        results.append({"style_layers": layers, "loss": r.loss, "seconds": round(r.seconds, 1)})
        panels.append((r.image, f"relu1_1 … {layers[-1]}" if k > 1 else "relu1_1"))
        ctx.say(f"{layers[-1]}: loss {r.loss:.4g}, {r.seconds:.0f} s")
    seconds = time.perf_counter() - t0
    fig = new_figure(1, len(LAYERS) + 1, aspect=canvas.shape[0] / canvas.shape[1])
    show(fig.add_subplot(1, len(LAYERS) + 1, 1), images.resize(style, size=ctx.size), "style image")
    for k, (img, title) in enumerate(panels):
        show(fig.add_subplot(1, len(LAYERS) + 1, k + 2), img, title)
    weights = {"content_weight": 0.0, "style_weight": "3e6 (default; scale-free here)",
               "style_layer_weights": "equal, summing to 1", "tv_weight": 0.0, "pooling": "avg"}
    save_figure(fig, ctx.out_dir / "style.jpg", footer(ctx, seconds, "style loss only, avg pooling"))
    write_record(ctx, seconds, weights, results)


TRADEOFF_BETAS = (3e4, 3e5, 3e6, 3e7, 3e8)


def exp_tradeoff(ctx: Context):
    """The same content and style with β growing ×10 per column (α = 1)."""
    from .gatys import DEFAULT_TV_WEIGHT

    photo, style = ctx.image("content", ctx.content), ctx.image("styles", ctx.style)
    ctx.progress(len(TRADEOFF_BETAS) * ctx.iterations)
    t0 = time.perf_counter()
    results, panels = [], []
    for beta in TRADEOFF_BETAS:
        r = gatys_run(ctx, f"beta {beta:.0e}", photo, [style], style_weight=beta)
        last = r.history[-1]
        c_raw, s_raw = last["content"], last["style"] / beta
        results.append({"alpha": 1.0, "beta": beta, "alpha_over_beta": 1.0 / beta,
                        "content_loss": c_raw, "style_loss": s_raw, "seconds": round(r.seconds, 1)})
        panels.append((r.image, f"β = {beta:.0e} (α/β = {1 / beta:.1e})\ncontent {c_raw:.3g}  style {s_raw:.3g}"))
        ctx.say(f"beta {beta:.0e}: content {c_raw:.4g}, style {s_raw:.4g}, {r.seconds:.0f} s")
    seconds = time.perf_counter() - t0
    n = len(TRADEOFF_BETAS)
    fig = new_figure(1, n, aspect=photo.shape[0] / photo.shape[1] + 0.1)
    for k, (img, title) in enumerate(panels):
        show(fig.add_subplot(1, n, k + 1), img, title)
    tv = DEFAULT_TV_WEIGHT["gatys"]
    weights = {"content_weight": 1.0, "style_weights": list(TRADEOFF_BETAS), "tv_weight": tv,
               "content_layers": ["relu4_2"], "style_layers": list(LAYERS), "pooling": "avg"}
    save_figure(fig, ctx.out_dir / "tradeoff.jpg",
                footer(ctx, seconds, f"α = 1, β = {TRADEOFF_BETAS[0]:.0e} … {TRADEOFF_BETAS[-1]:.0e}, "
                       f"λ_tv = {tv:g}; losses unweighted"))
    write_record(ctx, seconds, weights, results)


def exp_pooling(ctx: Context):
    """The default Gatys run twice: VGG16 with average pooling, then with max pooling."""
    from .plots import draw_losses

    photo, style = ctx.image("content", ctx.content), ctx.image("styles", ctx.style)
    ctx.progress(2 * ctx.iterations)
    t0 = time.perf_counter()
    runs = {}
    for pooling in ("avg", "max"):
        runs[pooling] = gatys_run(ctx, pooling, photo, [style], pooling=pooling)
        r = runs[pooling]
        ctx.say(f"{pooling}: loss {r.loss:.4g} (from {r.history[0]['loss']:.4g}), {r.seconds:.0f} s")
    seconds = time.perf_counter() - t0
    fig = new_figure(2, 3, panel=3.0)
    both = fig.add_subplot(2, 3, 6)
    for k, (pooling, r) in enumerate(runs.items()):
        h = r.history
        show(fig.add_subplot(2, 3, k + 1), r.image,
             f"{pooling} pooling: loss {h[0]['loss']:.3g} → {r.loss:.3g} (÷{h[0]['loss'] / r.loss:.0f})")
        curves = fig.add_subplot(2, 3, k + 4)
        draw_losses(curves, h, fontsize=8)
        curves.set_title(f"{pooling} pooling: weighted losses", fontsize=8)
        both.plot([e["iteration"] for e in h], [e["loss"] / h[0]["loss"] for e in h], f"C{k}-",
                  lw=1.2, label=pooling)
    show(fig.add_subplot(2, 3, 3), images.resize(photo, size=ctx.size), "photo")
    both.set_yscale("log")
    both.set_xlabel("iteration", fontsize=8)
    both.set_title("total loss / its first value", fontsize=8)
    both.grid(True, which="both", alpha=0.3)
    both.tick_params(labelsize=7)
    both.legend(fontsize=7)
    results = [{"pooling": p, "first_loss": r.history[0]["loss"], "final_loss": r.loss,
                "final_content": r.history[-1]["content"], "final_style": r.history[-1]["style"],
                "seconds": round(r.seconds, 1),
                "loss_curve": [round(h["loss"], 6) for h in r.history]} for p, r in runs.items()]
    weights = {"content_weight": 1.0, "style_weight": 3e6, "tv_weight": 1.0, "pooling": ["avg", "max"]}
    save_figure(fig, ctx.out_dir / "pooling.jpg", footer(ctx, seconds, "α = 1, β = 3e6, λ_tv = 1 (defaults)"))
    write_record(ctx, seconds, weights, results)


CONTENT_LAYER_RUNS = (("relu4_2", 3e6), ("relu2_2", 3e6), ("relu2_2", 3e7), ("relu2_2", 3e8))


def exp_content_layer(ctx: Context):
    """The default Gatys run with relu4_2, then relu2_2, as the content layer; relu2_2
    again with β ×10 and ×100, since its content term is larger at the same weights."""
    photo, style = ctx.image("content", ctx.content), ctx.image("styles", ctx.style)
    ctx.progress(len(CONTENT_LAYER_RUNS) * ctx.iterations)
    t0 = time.perf_counter()
    results, panels = [], []
    for layer, beta in CONTENT_LAYER_RUNS:
        r = gatys_run(ctx, f"{layer} beta {beta:.0e}", photo, [style], content_layers=[layer],
                      style_weight=beta)
        last = r.history[-1]
        results.append({"content_layer": layer, "beta": beta, "content": last["content"],
                        "style": last["style"], "loss": r.loss, "seconds": round(r.seconds, 1)})
        panels.append((r.image, f"content at {layer}, β = {beta:.0e}"))
        ctx.say(f"{layer}, beta {beta:.0e}: content {last['content']:.4g}, style {last['style']:.4g}, "
                f"{r.seconds:.0f} s")
    seconds = time.perf_counter() - t0
    n = len(panels) + 1
    fig = new_figure(1, n, panel=2.8, aspect=photo.shape[0] / photo.shape[1])
    show(fig.add_subplot(1, n, 1), images.resize(photo, size=ctx.size), "photo")
    for k, (img, title) in enumerate(panels):
        show(fig.add_subplot(1, n, k + 2), img, title)
    weights = {"content_weight": 1.0, "style_weights": [b for _, b in CONTENT_LAYER_RUNS], "tv_weight": 1.0,
               "content_layers": [l for l, _ in CONTENT_LAYER_RUNS], "pooling": "avg"}
    save_figure(fig, ctx.out_dir / "content-layer.jpg", footer(ctx, seconds, "α = 1, λ_tv = 1, β as shown"))
    write_record(ctx, seconds, weights, results)


FAST_PHOTOS = ("tubingen.jpg", "taj_mahal.jpg", "cat.jpg")


def lbfgs_pixels(loss, photo, y0, iterations: int, on_iteration):
    """Minimise the training objective ``loss`` (a ``train_fast.TrainingLoss``) over the
    pixels of one image ``y`` (1, 3, H, W) in [0, 255], from ``y0``, with L-BFGS-B (bounds
    [0, 255]). ``on_iteration(k, loss, y)`` runs after each iteration; returns the loss per
    iteration (it may return a reason to stop, ``optim.lbfgs``)."""
    batch = photo[None].astype(np.float32)  # (1, H, W, 3) in [0, 1]: the content targets
    curve = []

    def fun(z):
        total, _, dy = loss(z.reshape(y0.shape).astype(np.float32), batch)
        return float(total), dy.astype(np.float64).ravel()

    def record(intermediate_result):
        curve.append(float(intermediate_result.fun))
        return on_iteration(len(curve), curve[-1], intermediate_result.x)

    # gtol = ftol = 0: run the whole budget. The pixel gradient of this objective is tiny
    # (the loss is ~10 over 255-valued pixels), so scipy's default gtol = 1e-5 would call
    # it converged after 50–100 iterations while the loss still falls.
    lbfgs(fun, y0.astype(np.float64).ravel(), 0.0, 255.0, iterations, 10, on_iteration=record,
          gtol=0.0, ftol=0.0)
    return curve


def match_with_lbfgs(ctx: Context, net, loss, photo, label: str, rng, style=None,
                     stop_at_match: bool = False) -> tuple[dict, tuple]:
    """The network's loss on ``photo`` (size × size) in one pass, then L-BFGS-B from white
    noise over the pixels on the same ``loss`` for ``ctx.iterations`` (or, with
    ``stop_at_match``, until it matches): the iteration at which it first matches the
    network. The record also has the loss of the photo itself (the network that changes
    nothing) and the iteration at which L-BFGS matches that: the baseline the network
    must beat. Returns ``(record, (y_fast, seen, curve))``."""
    x = np.ascontiguousarray(photo.transpose(2, 0, 1)[None] * 255.0, dtype=np.float32)
    t = time.perf_counter()
    y_fast = net.infer(x, style)
    fast_seconds = time.perf_counter() - t
    fast_loss = float(loss(y_fast, photo[None])[0])
    photo_loss = float(loss(x, photo[None])[0])
    y0 = rng.uniform(0.0, 255.0, size=x.shape).astype(np.float32)
    seen = {"cross": None, "cross_img": None, "cross_seconds": None, "final_img": y0, "photo_cross": None}
    start = time.perf_counter()

    def on_iteration(k, value, z):
        ctx.step(label, loss=f"{value:.3g}", fast=f"{fast_loss:.3g}")
        seen["final_img"] = z.reshape(x.shape).copy()
        if seen["photo_cross"] is None and value <= photo_loss:
            seen["photo_cross"] = k
        if seen["cross"] is None and value <= fast_loss:
            seen.update(cross=k, cross_img=z.reshape(x.shape).copy(), cross_seconds=time.perf_counter() - start)
        return "matched the network" if stop_at_match and seen["cross"] is not None else None

    curve = lbfgs_pixels(loss, photo, y0, ctx.iterations, on_iteration)
    lbfgs_seconds = time.perf_counter() - start
    record = {"fast_loss": fast_loss, "fast_seconds": round(fast_seconds, 3),
              "lbfgs_iterations_to_match": seen["cross"],
              "lbfgs_seconds_to_match": None if seen["cross_seconds"] is None else round(seen["cross_seconds"], 1),
              "photo_loss": photo_loss, "lbfgs_iterations_to_match_photo": seen["photo_cross"],
              "lbfgs_final_loss": curve[-1], "lbfgs_iterations": len(curve),
              "lbfgs_seconds": round(lbfgs_seconds, 1), "lbfgs_curve": [round(v, 5) for v in curve]}
    ctx.say(f"{label}: network {fast_loss:.4g} in {fast_seconds:.2f} s; L-BFGS matches it at iteration "
            f"{seen['cross']} and reaches {curve[-1]:.4g} after {len(curve)} ({lbfgs_seconds:.0f} s)")
    return record, (y_fast, seen, curve)


def exp_fast(ctx: Context, model_path=None):
    """The fast network's loss in one pass against L-BFGS on the same objective per
    iteration, from white noise, on held-out photos at size × size (the paper's Fig. 5)."""
    from .stylize import default_model_path, load_network
    from .train_fast import TrainingLoss

    net = load_network(model_path or ctx.model or default_model_path())
    train = net.meta.get("train", {})
    if not train:
        raise UsageError("the model file does not record its training settings")
    if net.config.styles:  # the same measurement for each of its styles
        return exp_fast_styles(ctx, model_path)
    style = ctx.image("styles", Path(train["style"]).name, size=train.get("style_size") or ctx.size)
    weights = {k: train[k] for k in ("content_weight", "style_weight", "tv_weight", "content_layer",
                                     "style_layers", "pooling")}
    loss = TrainingLoss(ctx.vgg(train["pooling"]), style, train["content_layer"], train["style_layers"],
                        train["content_weight"], train["style_weight"], train["tv_weight"],
                        train.get("style_layer_weights") or None)
    ctx.progress(len(FAST_PHOTOS) * ctx.iterations)
    t0 = time.perf_counter()
    rng = np.random.default_rng(ctx.seed)
    results, rows = [], []
    for name in FAST_PHOTOS:
        photo = square(ctx.image("content", name), ctx.size)
        record, (y_fast, seen, curve) = match_with_lbfgs(ctx, net, loss, photo, Path(name).stem, rng)
        results.append({"photo": name, **record})
        rows.append((photo, y_fast, seen, curve))
    seconds = time.perf_counter() - t0
    _fast_curve_figure(ctx, results, seconds, weights, net)
    _fast_gallery_figure(ctx, rows, results, seconds)
    write_record(ctx, seconds, weights, results, model=str(model_path or ctx.model or "shipped default"),
                 model_iterations=net.meta.get("iterations"))


# The training photos 000001–002100 of data/train train the shipped models; from 002101 on
# they are held out, for the quality experiments.
HELD_OUT_FROM = 2100
QUALITY_TARGET = 50  # median L-BFGS iterations to match the network (Johnson et al.: 50–100)


def held_out_photos(ctx: Context, n: int) -> list:
    """File names of the first ``n`` held-out training photos (``HELD_OUT_FROM`` on)."""
    folder = ctx.data / "train"
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return names[HELD_OUT_FROM:HELD_OUT_FROM + n]


def exp_fast_styles(ctx: Context, model_path=None):
    """For every style of a many-style model: its one-pass loss against L-BFGS from noise on
    that style's recorded objective (``style_settings``), on four photos never trained on
    (three content photos and one held-out training photo); the median iterations L-BFGS
    needs to match the network, against the target of 50. Also a grid of every style on
    the four photos and a row of blends."""
    from .stylize import default_model_path, load_network
    from .train_fast import TrainingLoss

    net = load_network(model_path or ctx.model or default_model_path())
    names = net.styles
    if not net.config.styles:
        raise UsageError("fast-styles needs a many-style model (--model); the fast experiment takes one style")
    photos = [("content", n) for n in FAST_PHOTOS] + [("train", n) for n in held_out_photos(ctx, 1)]
    ctx.progress(len(names) * len(photos) * ctx.iterations)
    t0 = time.perf_counter()
    rng = np.random.default_rng(ctx.seed)
    results, outs = [], {}
    imgs = [square(ctx.image(folder, n), ctx.size) for folder, n in photos]
    for style in names:
        settings = net.style_settings(style)
        objective = settings["objective"]
        style_img = ctx.image("styles", settings["image"], size=settings["style_size"])
        loss = TrainingLoss.from_objective(ctx.vgg(objective["pooling"]), style_img, objective)
        per_photo = []
        for (folder, n), photo in zip(photos, imgs):
            record, (y_fast, _, _) = match_with_lbfgs(ctx, net, loss, photo, f"{style}/{Path(n).stem}", rng,
                                                      style=style, stop_at_match=True)
            record.pop("lbfgs_curve")
            per_photo.append({"photo": f"{folder}/{n}", **record})
            outs[style, n] = np.clip(y_fast[0].transpose(1, 2, 0) / 255.0, 0, 1)
        its = [r["lbfgs_iterations_to_match"] or ctx.iterations + 1 for r in per_photo]
        base = [r["lbfgs_iterations_to_match_photo"] or ctx.iterations + 1 for r in per_photo]
        results.append({"style": style, "median_iterations_to_match": float(np.median(its)),
                        "meets_target": bool(np.median(its) >= QUALITY_TARGET),
                        "median_iterations_to_match_photo": float(np.median(base)), "photos": per_photo,
                        "beta": objective["beta"]})
        ctx.say(f"{style}: median {np.median(its):g} L-BFGS iterations to match the network "
                f"({np.median(base):g} to match the photo itself)")
    seconds = time.perf_counter() - t0
    _fast_styles_figure(ctx, net, names, photos, imgs, outs, results, seconds)
    write_record(ctx, seconds, {"objective": "each style's recorded objective"}, results,
                 model=str(model_path or ctx.model or "shipped default"), model_iterations=net.meta.get("iterations"),
                 target=QUALITY_TARGET)


def _fast_styles_figure(ctx, net, names, photos, imgs, outs, results, seconds):
    """Rows: the photos, then each style; columns: the four photos; a last row of blends
    from the first style to the last on the first photo (weights 0.8/0.2 … 0.2/0.8)."""
    rows = 1 + len(names) + 1
    fig = new_figure(rows, len(photos), panel=1.6)
    med = {r["style"]: r["median_iterations_to_match"] for r in results}
    for j, img in enumerate(imgs):
        show(fig.add_subplot(rows, len(photos), j + 1), img, Path(photos[j][1]).stem)
    for i, style in enumerate(names):
        for j, (_, n) in enumerate(photos):
            title = f"{style} (median {med[style]:g})" if j == 0 else ""
            show(fig.add_subplot(rows, len(photos), (i + 1) * len(photos) + j + 1), outs[style, n], title)
    first, last = names[0], names[-1]
    for j in range(len(photos)):  # from mostly the first style to mostly the last
        t = (j + 1) / (len(photos) + 1)
        blend = {first: round(1 - t, 2), last: round(t, 2)} if last != first else {first: 1.0}
        ax = fig.add_subplot(rows, len(photos), (rows - 1) * len(photos) + j + 1)
        show(ax, net.stylize(imgs[0], style=blend), "\n+ ".join(f"{k} {v:g}" for k, v in blend.items()))
    save_figure(fig, ctx.out_dir / f"{ctx.name}.jpg",
                footer(ctx, seconds, f"each style's recorded objective; target: median ≥ {QUALITY_TARGET}"))


def _fast_curve_figure(ctx, results, seconds, weights, net):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for k, r in enumerate(results):
        c = f"C{k}"
        ax.plot(range(1, len(r["lbfgs_curve"]) + 1), r["lbfgs_curve"], color=c, lw=1.2,
                label=f"L-BFGS, {Path(r['photo']).stem}")
        ax.axhline(r["fast_loss"], color=c, ls="--", lw=1.0)
        if r["lbfgs_iterations_to_match"]:
            ax.plot([r["lbfgs_iterations_to_match"]], [r["fast_loss"]], "o", color=c, ms=5)
    ax.plot([], [], "k--", lw=1.0, label="fast network, one pass")
    ax.set_yscale("log")
    ax.set_xlabel("L-BFGS iteration")
    ax.set_ylabel("training objective (λ_c ℓ_c + λ_s Σ ℓ_s + λ_tv TV)")
    ax.set_title(f"Fast network ({net.meta.get('iterations')} training steps) vs L-BFGS from noise, "
                 f"{ctx.size}×{ctx.size}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    w = (f"λ_c = {weights['content_weight']:g}, λ_s = {weights['style_weight']:g}, "
         f"λ_tv = {weights['tv_weight']:g}, {weights['pooling']} pooling")
    save_figure(fig, ctx.out_dir / "fast.jpg", footer(ctx, seconds, w))


def _fast_gallery_figure(ctx, rows, results, seconds):
    fig = new_figure(len(rows), 4, panel=2.4)
    def to_img(y):  # (1, 3, S, S) or flat, in [0, 255] -> (S, S, 3) in [0, 1]
        return np.asarray(y, np.float32).reshape(3, ctx.size, ctx.size).transpose(1, 2, 0) / 255

    for i, ((photo, y_fast, seen, curve), r) in enumerate(zip(rows, results)):
        show(fig.add_subplot(len(rows), 4, 4 * i + 1), photo, "photo (held out)")
        show(fig.add_subplot(len(rows), 4, 4 * i + 2), to_img(y_fast),
             f"fast: loss {r['fast_loss']:.3g}, {r['fast_seconds']:.2f} s")
        ax = fig.add_subplot(len(rows), 4, 4 * i + 3)
        if seen["cross_img"] is not None:
            show(ax, to_img(seen["cross_img"]),
                 f"L-BFGS it. {seen['cross']}: {r['lbfgs_seconds_to_match']:.0f} s")
        else:
            show(ax, np.ones((ctx.size, ctx.size, 3)), "L-BFGS never matched")
        show(fig.add_subplot(len(rows), 4, 4 * i + 4), to_img(seen["final_img"]),
             f"L-BFGS it. {len(curve)}: loss {curve[-1]:.3g}, {r['lbfgs_seconds']:.0f} s")
    save_figure(fig, ctx.out_dir / "fast-gallery.jpg", footer(ctx, seconds, "weights as in fast.jpg"))


GALLERY = (("tubingen.jpg", "starry_night.jpg"), ("golden_gate.jpg", "great_wave.jpg"),
           ("stata_center.jpg", "composition_vii.jpg"), ("cat.jpg", "the_scream.jpg"))


def exp_gallery(ctx: Context):
    """Four content × style pairs by optimisation, and the shipped fast model on the photos."""
    from .stylize import default_model_path, load_network

    net = load_network(default_model_path())
    ctx.progress(len(GALLERY) * ctx.iterations)
    t0 = time.perf_counter()
    cols, results = [], []
    for content, style in GALLERY:
        photo, style_img = ctx.image("content", content), ctx.image("styles", style)
        r = gatys_run(ctx, Path(content).stem, photo, [style_img])
        small = images.resize(photo, size=ctx.size)
        t = time.perf_counter()
        # a many-style model stylises each photo in its painting's style, if it has it
        fast = net.stylize(small, Path(style).stem if Path(style).stem in net.styles else net.default_style)
        fast_seconds = time.perf_counter() - t
        cols.append((small, images.resize(style_img, size=ctx.size), r.image, fast))
        results.append({"content": content, "style": style, "gatys_seconds": round(r.seconds, 1),
                        "gatys_loss": r.loss, "fast_seconds": round(fast_seconds, 3)})
    seconds = time.perf_counter() - t0
    n = len(cols)
    fig = new_figure(4, n, aspect=0.8)
    fast_title = "fast ({:.2f} s)" if net.config.styles else "fast, Starry Night ({:.2f} s)"
    titles = ("photo", "style", "Gatys ({:.0f} s)", fast_title)
    for j, (col, r) in enumerate(zip(cols, results)):
        for i, img in enumerate(col):
            t = titles[i].format(r["gatys_seconds"] if i == 2 else r["fast_seconds"])
            show(fig.add_subplot(4, n, i * n + j + 1), img, t)
    weights = {"content_weight": 1.0, "style_weight": 3e6, "tv_weight": 1.0, "pooling": "avg",
               "fast_model": f"weights/{default_model_path().name} ({net.meta.get('iterations')} steps)"}
    save_figure(fig, ctx.out_dir / "gallery.jpg", footer(ctx, seconds, "α = 1, β = 3e6, λ_tv = 1 (defaults)"))
    write_record(ctx, seconds, weights, results)


EXPERIMENTS = {
    "content": (exp_content, 200),
    "style": (exp_style, 200),
    "tradeoff": (exp_tradeoff, 200),
    "pooling": (exp_pooling, 200),
    "content-layer": (exp_content_layer, 200),
    "fast": (exp_fast, 300),
    "fast-styles": (exp_fast_styles, 300),
    "gallery": (exp_gallery, 200),
}
ALL = [name for name in EXPERIMENTS if name != "fast-styles"]  # fast-styles needs a many-style model


# --------------------------------------------------------------------------- command line

def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m minnst.experiments",
                       description="Re-run one of the notes' experiments and draw its figure "
                                   "(docs/experiments.md shows them all).")
    p.add_argument("name", choices=[*EXPERIMENTS, "all"], help="which experiment")
    p.add_argument("--data", type=Path, default=None,
                   help="folder with content/ and styles/ (default: $MINNST_DATA, else ../shared/data)")
    p.add_argument("--output-dir", type=Path, default=Path("minnst_out/experiments"),
                   help="where NAME.jpg and NAME.json go (default: minnst_out/experiments)")
    p.add_argument("--size", type=whole(), default=256,
                   help=f"image size, pixels, {images.MIN_SIZE} to {images.MAX_SIZE} (default: 256)")
    p.add_argument("--iterations", type=whole(1, 10**7), default=None,
                   help="L-BFGS iterations per run (default: 200; 300 for fast)")
    p.add_argument("--content", default="tubingen.jpg", help="content photo in DATA/content (tubingen.jpg)")
    p.add_argument("--style", default="starry_night.jpg", help="style image in DATA/styles (starry_night.jpg)")
    p.add_argument("--seed", type=whole(0, 2**63 - 1), default=0, help="seed of the white-noise start (0)")
    p.add_argument("--model", default=None, help="model file of fast / fast-styles (default: the shipped one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# which of --content and --style each experiment reads (the others read fixed photos or a model)
_READS = {"content": ("content",), "style": ("content", "style"), "tradeoff": ("content", "style"),
          "pooling": ("content", "style"), "content-layer": ("content", "style")}


def _check_inputs(args, names):
    """Before any experiment runs: the --content and --style images they read decode, the
    --model loads, and every figure and record can be written under --output-dir."""
    from .gatys import GatysConfig

    read = {flag for n in names for flag in _READS.get(n, ())}
    hw = {}
    for flag, folder, name in (("content", "content", args.content), ("style", "styles", args.style)):
        if flag in read:
            path = args.data / folder / name
            if not path.is_file():
                raise UsageError(f"--{flag}: {path} not found (pass --data DIR with content/ and styles/)")
            hw[flag] = images.load_image(path).shape[:2]
    if hw:  # the Gatys runs' images keep VGG16's 16 px on each side at --size
        GatysConfig(size=args.size).check_image_sizes(hw.get("content", hw.get("style")),
                                                      [hw["style"]] if "style" in hw else [])
    if args.model is not None:
        from .stylize import load_network

        load_network(args.model)
    for name in names:
        check_writable(args.output_dir / f"{name}.json")


def _main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    images.check_size(args.size, "--size")
    args.data = args.data or default_data()
    if not args.data.is_dir():
        raise UsageError(f"data folder {args.data} not found (pass --data DIR with content/ and styles/)")
    names = ALL if args.name == "all" else [args.name]
    _check_inputs(args, names)
    nets = {}
    for name in names:
        fn, default_iterations = EXPERIMENTS[name]
        ctx = Context(name=name, data=args.data, out_dir=args.output_dir, size=args.size,
                      iterations=args.iterations or default_iterations, content=args.content,
                      style=args.style, seed=args.seed, quiet=args.quiet, _nets=nets, model=args.model,
                      command="python -m minnst.experiments " + " ".join([name, *argv[1:]]))
        t0 = time.perf_counter()
        try:
            fn(ctx)
        finally:
            if ctx._bar is not None:
                ctx._bar.close()
        print(f"{name}: wrote {args.output_dir / (name + '.jpg')} and {name}.json "
              f"({time.perf_counter() - t0:.0f} s)")


def main(argv=None) -> int:
    return run(_main, argv, prog="minnst.experiments")


if __name__ == "__main__":
    sys.exit(main())
