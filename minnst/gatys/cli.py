"""``python -m minnst.gatys``: the Gatys method's command line — arguments, inputs and
outputs, the memory pre-flight, progress, and exit codes (``minnst.cli``).

With no arguments it runs a demo: matplotlib's photo of Grace Hopper in the style of
``procedural.stained_glass``. The work itself is ``gatys.stylize``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from .. import images, losses, procedural
from ..backend import default_device_name, keep_freed_memory, select_device
from ..cli import EXIT_INTERRUPTED, EXIT_USAGE, ArgumentParser, UsageError, number, run, vgg_min_side
from ..files import check_writable, make_dir, sha256_file
from ..memory import available_memory, estimate_gatys_memory, format_bytes, gpu_free_memory, memory_checks
from ..plots import plot_losses
from ..vgg import VGG16
from .config import (DEFAULT_STYLE_WEIGHT, DEFAULT_TV_WEIGHT, INITS, OPTIMIZERS, PRESERVE_COLORS,
                     TOL_WINDOW, GatysConfig)
from .objective import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from .run import NonFiniteLossError, Progress, StylizeInterrupted, stylize

DEMO_SIZE, DEMO_ITERATIONS = 256, 150  # the no-argument demo: about two minutes on 2 cores
DEMO_STYLE_WEIGHT = 2.5e5  # the stained glass is a loud style: balanced at 256 px with this β
DEMO_STYLE_NAME = "stained_glass"
PROG = "python -m minnst.gatys"


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


_float = number()  # a finite number, any sign: the config's checks say which are allowed


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def build_parser() -> ArgumentParser:
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
    g.add_argument("--iterations", nargs="+", default=None, metavar="N",
                   help=f"iterations per scale (default 500; the demo {DEMO_ITERATIONS}); with --scales, "
                        f"one number per scale is allowed too, e.g. --scales 512,1024,2048 --iterations "
                        f"300,100,30")
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
    g.add_argument("--tile", default="auto", metavar="T|auto|off",
                   help="evaluate the loss exactly, tile by tile, in tiles of T pixels (memory: one "
                        "tile's activations plus image-sized arrays; time: about 1.5-2.5x); auto "
                        "(default): only when the whole image does not fit in memory, and then, if "
                        "need be, a shorter L-BFGS history or Adam (said when chosen); off: never")
    g.add_argument("--device", choices=("cpu", "gpu", "auto"), default=None,
                   help="where VGG16 runs (default: $MINNST_DEVICE, else auto: the GPU if CuPy can use one)")

    g = p.add_argument_group("output")
    g.add_argument("--print-every", type=_int, default=50, metavar="N",
                   help="print the losses every N iterations (default 50; 0: never)")
    g.add_argument("--save-every", type=_int, default=0, metavar="N",
                   help="also save the best image so far every N iterations, next to the output as "
                        "<output stem>_<iteration, 4 digits><output suffix> (out.png: out_0050.png, …; "
                        "default 0: no). With --scales the iterations count on over the scales, and an "
                        "image saved during a coarse scale has that scale's size")
    g.add_argument("--preserve-colors", choices=PRESERVE_COLORS, default="none",
                   help="luminance: keep the photo's colours, take the result's luminance (YIQ); "
                        "histogram: recolour the style images to the photo's colour mean and covariance "
                        "first (default none)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar or loss lines")
    return p


def config_from_args(argv) -> tuple[GatysConfig, bool]:
    """Parse ``argv`` into a validated ``GatysConfig``; also whether this is the demo."""
    cfg, demo, _ = _config_and_tile(argv)
    return cfg, demo


def _parse_tile(text: str):
    """``--tile``: ``("auto", None)``, ``("off", None)`` or ``("fixed", T)``."""
    text = str(text).strip().lower()
    if text in ("auto", "off"):
        return text, None
    try:
        return "fixed", int(text)
    except ValueError:
        raise UsageError(f"--tile must be a whole number of pixels, auto or off, got {text!r}") from None


def _config_and_tile(argv) -> tuple[GatysConfig, bool, bool]:
    """``config_from_args`` and whether ``--tile auto`` leaves the tiling to the memory check."""
    args = build_parser().parse_args(argv)
    tile_mode, tile = _parse_tile(args.tile)
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
        iterations = _split(args.iterations, _int, "--iterations") if args.iterations else None
    except argparse.ArgumentTypeError as e:
        raise UsageError(str(e)) from None
    if args.scales is not None and not scales:
        raise UsageError("--scales needs at least one size")
    if scales and args.size is not None and args.size != scales[-1]:
        raise UsageError(f"--size {args.size} and --scales {','.join(map(str, scales))} disagree: "
                         f"the last scale is the output size")
    demo = args.content is None and not args.style  # the demo's own size, length and β
    size = args.size if args.size is not None else (DEMO_SIZE if demo else 512)
    if iterations is None:
        iterations = DEMO_ITERATIONS if demo else 500
    elif len(iterations) == 1:
        iterations = iterations[0]
    elif len(iterations) != len(scales or [size]):
        raise UsageError(f"--iterations takes one number, or one per scale ({len(scales or [size])}), "
                         f"got {len(iterations)}")
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
        tol=args.tol, device=args.device or default_device_name(), quiet=args.quiet, tile=tile)
    return cfg.validate(), demo, tile_mode == "auto"


def demo_content_path() -> Path:
    """matplotlib's bundled photo of Grace Hopper."""
    try:
        return images.demo_photo()
    except images.ImageError as e:
        raise UsageError(f"{e}; pass --content PATH") from None


def _output_paths(cfg: GatysConfig, content_name: str, style_names: list) -> dict:
    """The output image, loss log and loss curve, each checked (``files.check_writable``);
    nothing is created yet."""
    out = Path(cfg.output) if cfg.output else (
        Path("minnst_out") / f"{content_name}_{'+'.join(style_names)}.png")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UsageError(f"--output must end in .png or .jpg, got {out}")
    stem = out.with_suffix("")
    paths = {"image": out, "log": Path(f"{stem}.losses.jsonl"), "curve": Path(f"{stem}.losses.png"),
             "stem": stem, "suffix": out.suffix}
    if cfg.save_every:
        paths["snapshot"] = Path(f"{stem}_{cfg.total_iterations:04d}{out.suffix}")
    for key in ("image", "log", "curve", "snapshot"):
        if key in paths:
            check_writable(paths[key])
    return paths


class _Reporter:
    """The CLI's per-iteration work: progress bar, printed losses, loss log, saved images."""

    def __init__(self, cfg: GatysConfig, paths: dict, metadata: dict):
        from tqdm import tqdm

        self.cfg, self.paths, self.metadata = cfg, paths, metadata
        self.bar = tqdm(total=cfg.total_iterations, unit="it",
                        disable=True if cfg.quiet else None,  # None: on a terminal only
                        dynamic_ncols=True, file=sys.stderr, leave=True)
        self.log = None  # opened at the first iteration: a run that fails before leaves no log
        self.history = []

    def __call__(self, p: Progress):
        t = p.terms
        self.history.append(p.record)
        self.bar.set_description(f"{p.size[1]}×{p.size[0]}", refresh=False)
        self.bar.set_postfix_str(f"content {t.content:.3g} style {t.style:.3g} tv {t.tv:.3g}", refresh=False)
        self.bar.update(1)
        if self.log is None:
            self.log = open(self.paths["log"], "w", encoding="utf-8")
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
        if self.log is not None:
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
    h, w = images.fit_longest(*content_hw, size)
    style_hw = [images.fit_longest(*s.shape[:2], cfg.style_size(size)) for s in styles]
    return estimate_gatys_memory(h, w, cfg.content_layers, cfg.style_layers, style_hw, cfg.optimizer,
                                 cfg.lbfgs_memory, device, tile=cfg.tile)


AUTO_TILES = (2048, 1024, 512, 256, 128, 64)  # --tile auto tries these, largest first
MIN_LBFGS_MEMORY = 3  # --tile auto lowers L-BFGS-B's history to this at the least, then takes Adam


def _fit_memory(content_hw, cfg: GatysConfig, styles, device: str, fits):
    """What ``--tile auto`` chooses when the whole image does not fit: the first setting
    whose estimate ``fits``, trying the optimiser settings best first (the given L-BFGS-B
    history, then shorter ones down to ``MIN_LBFGS_MEMORY``, then Adam, whose state is 4
    float32 images), and for each the largest tile first. At print size L-BFGS-B's float64
    history (2m image-sized vectors) can outgrow the tiled network. Returns ``(cfg, notes)``;
    ``cfg`` unchanged when nothing fits."""
    h, w = images.fit_longest(*content_hw, cfg.sizes[-1])
    optimisers = [{}]
    if cfg.optimizer == "lbfgs":
        optimisers += [{"lbfgs_memory": m} for m in range(cfg.lbfgs_memory - 1, MIN_LBFGS_MEMORY - 1, -1)]
        optimisers.append({"optimizer": "adam"})
    tiles = [None] + [t for t in AUTO_TILES if t < max(h, w)]
    for change in optimisers:
        for tile in tiles:
            trial = dataclasses.replace(cfg, tile=tile, **change)
            if fits(_estimate_for(content_hw, trial, styles, cfg.sizes[-1], device)):
                notes = []
                if tile is not None:
                    notes.append(f"the whole {w}×{h} image does not fit in memory: evaluating the loss "
                                 f"exactly in {tile}×{tile} tiles (--tile {tile})")
                if "lbfgs_memory" in change:
                    notes.append(f"L-BFGS-B's history of {cfg.lbfgs_memory} steps does not fit in memory: "
                                 f"keeping {change['lbfgs_memory']} (--lbfgs-memory {change['lbfgs_memory']})")
                if "optimizer" in change:
                    notes.append(f"L-BFGS-B's history does not fit in memory even at {MIN_LBFGS_MEMORY} "
                                 f"steps: optimising with Adam (--optimizer adam)")
                return trial, notes
    return cfg, []


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


def _check_deep_layers(cfg: GatysConfig, content_hw, style_hws) -> None:
    """Every image at every scale keeps the side its deepest loss layer needs
    (``cli.vgg_min_side``: 32 px for pool5, else 16, which ``check_image_sizes`` checks too)."""
    need = vgg_min_side(cfg.content_layers + cfg.style_layers)
    flag = "--scales" if cfg.scales else "--size"
    for s in cfg.sizes:
        for i, hw in enumerate([content_hw, *style_hws]):
            h, w = images.fit_longest(*hw, cfg.style_size(s) if i else s)
            if min(h, w) >= need:
                continue
            if i == 0:
                hint = f"use a {flag} of at least {math.ceil(need * max(hw) / min(hw))}"
                what = f"{flag} {s} makes the content"
            else:
                hint = "raise --style-scale"
                what = f"--style-scale {cfg.style_scale:g} × {s} makes style image {i}"
            layers = "pool5 needs" if need > images.MIN_SIZE else "VGG16 needs"
            raise UsageError(f"{what} {w}×{h} pixels, but {layers} at least {need} on each side: {hint}"
                             + (", or use layers before pool5" if need > images.MIN_SIZE else ""))


def _main(argv) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg, demo_defaults, auto_tile = _config_and_tile(argv)

    # Inputs first, so that a bad file fails before anything slow.
    content_path = Path(cfg.content) if cfg.content else demo_content_path()
    content = images.load_image(content_path)
    if cfg.style:
        styles = [images.load_image(s) for s in cfg.style]
        style_names = [Path(s).stem for s in cfg.style]
        style_meta = [{"path": str(s), "sha256": sha256_file(s)} for s in cfg.style]
    else:
        styles = [procedural.stained_glass(cfg.style_size(cfg.sizes[-1]), seed=0)]
        style_names = [DEMO_STYLE_NAME]
        style_meta = [{"procedural": "minnst.procedural.stained_glass", "seed": 0}]
    cfg.check_image_sizes(content.shape[:2], [s.shape[:2] for s in styles])
    _check_deep_layers(cfg, content.shape[:2], [s.shape[:2] for s in styles])
    init_image = images.load_image(cfg.init_image) if cfg.init == "image" else None
    paths = _output_paths(cfg, content_path.stem, style_names)
    if demo_defaults:
        _say(cfg, f"minnst demo: {content_path.name} in the style of minnst's procedural stained glass, "
                  f"{cfg.size} px, {cfg.total_iterations} iterations, style weight {cfg.beta:g} "
                  f"(about two minutes on 2 CPU cores)")

    # Memory: estimate the largest scale, refuse if it cannot fit.
    device = select_device(cfg.device)
    h, w = images.fit_longest(*content.shape[:2], cfg.sizes[-1])
    est = _estimate_for(content.shape[:2], cfg, styles, cfg.sizes[-1], device.name)
    avail = available_memory()
    free = gpu_free_memory() if device.name == "gpu" else None

    limits = memory_checks(device.name, avail, free)

    def fits(e):
        return all(have is None or e[part] <= have for _, part, have in limits)

    if auto_tile and not fits(est):
        cfg, notes = _fit_memory(content.shape[:2], cfg, styles, device.name, fits)
        est = _estimate_for(content.shape[:2], cfg, styles, cfg.sizes[-1], device.name)
        for note in notes:
            _say(cfg, note)
    for where, part, have in limits:
        need = est[part]
        if have is not None and need > have:
            fit = _largest_fitting_size(content.shape[:2], cfg, styles, device.name, where, have)
            hint = (f"try --size {fit} (with --scales, the last scale must fit: e.g. --scales "
                    f"{max(images.MIN_SIZE, fit // 2)},{fit})" if fit else "this machine is too small")
            raise UsageError(f"a {w}×{h} pastiche needs about {format_bytes(need)} of {where} memory but only "
                             f"{format_bytes(have)} is available: {hint}")
    _say(cfg, f"{w}×{h} pastiche on the {device.name.upper()}: estimated peak memory {format_bytes(est['total'])}"
              + (f" ({format_bytes(avail)} available)" if avail else ""))
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
                                                         "sha256": sha256_file(content_path)},
                                             "styles": style_meta}, sort_keys=True)}
    if cfg.save_every and len(cfg.sizes) > 1:
        _say(cfg, f"note: --save-every images saved before the last scale have that scale's size "
                  f"({', '.join(map(str, cfg.sizes[:-1]))} px)")
    make_dir(paths["image"].parent)  # the loss log is appended to there from the first iteration
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
    return run(_main, argv, prog=PROG)


