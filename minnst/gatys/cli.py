"""``python -m minnst.gatys``: the Gatys method's command line — arguments, inputs and
outputs, the memory pre-flight, progress, and exit codes (``minnst.cli``).

With no arguments it runs a demo: matplotlib's photo of Grace Hopper in the style of
``procedural.stained_glass``. The work itself is ``gatys.stylize``.

A single run (one content photo; several style images are blended into one pastiche) is
``_single_main``. A batch (folders, several contents, ``--batch`` or a sweep such as
``--style-weight 1e3,1e4``) is ``_batch_main``: every content × style × swept value is a
run of its own (``gatys.batch``), serially here or as tasks on a Dask cluster
(``--workers`` / ``--scheduler``), and a contact sheet ends it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import distributed, images, losses, procedural
from ..backend import default_device_name, keep_freed_memory, select_device
from ..cli import (EXIT_INTERRUPTED, EXIT_USAGE, ArgumentParser, UsageError, add_cluster_arguments, error, number,
                   one_line, run, vgg_min_side)
from ..contact_sheet import contact_sheet
from ..data import list_images
from ..errors import ConfigError
from ..files import atomic_write, check_writable, make_dir, sha256_file, write_text_atomic
from ..memory import available_memory, estimate_gatys_memory, format_bytes, gpu_free_memory, memory_checks
from ..plots import plot_losses
from ..stylize import header_hw
from ..vgg import VGG16
from . import batch
from .config import (DEFAULT_STYLE_WEIGHT, DEFAULT_TV_WEIGHT, INITS, OPTIMIZERS, PRESERVE_COLORS,
                     TOL_WINDOW, GatysConfig)
from .objective import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from .run import NonFiniteLossError, Progress, StylizeInterrupted, stylize

DEMO_SIZE, DEMO_ITERATIONS = 256, 150  # the no-argument demo: about two minutes on 2 cores
DEMO_STYLE_WEIGHT = 2.5e5  # the stained glass is a loud style: balanced at 256 px with this β
DEMO_STYLE_NAME = "stained_glass"
PROG = "python -m minnst.gatys"
BATCH_OUTPUT = Path("minnst_out")  # a batch's default output folder
BATCH_SUFFIX = ".png"
SHEET_THUMB = 160  # the contact sheet's thumbnails, pixels


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
               "Batches: --content and --style take files and folders; when --content is a folder or "
               "several files, --style a folder, --batch is given or a setting is swept (several values "
               "of --style-weight, --content-weight, --tv-weight, --style-scale or --seed), every "
               "content × style × swept value is a run of its own (styles are never blended), written "
               "to the --output folder as <content>__<style>[__<setting>=<value>…].png, e.g. "
               "tubingen__starry_night__style-weight=1e+06.png (names are file stems; stems that clash "
               "take their folders, then their suffix: a-photo, b-photo), with its loss log and curve, "
               "and a contact_sheet.jpg of all results at the end. "
               "Exit codes: 0 done, 2 bad input (a batch: after the other runs, if any run failed), "
               "130 interrupted (a single run saves the best image so far). "
               "The maths and the choice of weights: docs/gatys.md; batches: its section on batches.")
    g = p.add_argument_group("images")
    g.add_argument("--content", nargs="+", metavar="PATH",
                   help="content photo (default: matplotlib's grace_hopper.jpg); several files or a folder "
                        "make a batch")
    g.add_argument("--style", nargs="+", metavar="PATH", default=[],
                   help="one or more style images, blended into one pastiche (default: minnst's procedural "
                        "stained glass); in a batch each file, and each image of a folder, is a run of its own")
    g.add_argument("--style-blend-weights", nargs="+", metavar="W",
                   help="one weight per style image, normalised to sum 1 (default: equal; not in a batch)")
    g.add_argument("--batch", action="store_true",
                   help="every --style file is its own run (instead of one blend of them all)")
    g.add_argument("--output", "-o", metavar="PATH",
                   help="output .png or .jpg (default: minnst_out/<content>_<style>.png); the loss log "
                        "(.losses.jsonl) and loss curve (.losses.png) go next to it. In a batch: a folder "
                        "(default minnst_out/)")
    g.add_argument("--size", type=_int, default=None, metavar="N",
                   help=f"longest side of the output in pixels (default 512; the demo {DEMO_SIZE})")
    g.add_argument("--style-scale", nargs="+", default=None, metavar="S",
                   help="style images are resized to S × size, longest side (default 1; several values: a sweep)")
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
    g.add_argument("--content-weight", nargs="+", default=None, metavar="ALPHA",
                   help="content weight α (default 1; several values: a sweep)")
    g.add_argument("--style-weight", nargs="+", default=None, metavar="BETA",
                   help=f"style weight β (default {DEFAULT_STYLE_WEIGHT['gatys']:g} with gatys, "
                        f"{DEFAULT_STYLE_WEIGHT['johnson']:g} with johnson; with gatys, scale it with the "
                        f"pixel count for the same look at another size); several values, e.g. 1e5,1e6,1e7, "
                        f"sweep it: one run for each")
    g.add_argument("--tv-weight", nargs="+", default=None, metavar="LAMBDA",
                   help=f"total-variation weight λ, smooths (default {DEFAULT_TV_WEIGHT['gatys']:g} with "
                        f"gatys, {DEFAULT_TV_WEIGHT['johnson']:g} with johnson; 0: off; several values: a sweep)")
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
    g.add_argument("--seed", nargs="+", default=None, metavar="N",
                   help="seed of the noise start (default 0); the same seed gives the same image (several "
                        "values: a sweep)")
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
                        "tile's activations plus image-sized arrays; time: about 1.5-2.5x), at every "
                        "scale larger than one tile; auto (default): only at the scales whose whole "
                        "image does not fit in memory, and then, if need be, a shorter L-BFGS history "
                        "or Adam (said when chosen); off: never")
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
    add_cluster_arguments(p)
    return p


@dataclass
class Parsed:
    """The command line, parsed and checked."""

    args: argparse.Namespace
    cfg: GatysConfig        # validated; a swept setting at its first value
    demo: bool              # no --content and no --style: the demo's size, length and β
    auto_tile: bool         # --tile auto: the memory check may choose a tile
    sweeps: dict            # {GatysConfig field: [values]} of each setting given several values


def config_from_args(argv) -> tuple[GatysConfig, bool]:
    """Parse ``argv`` into a validated ``GatysConfig``; also whether this is the demo."""
    p = parse(argv)
    return p.cfg, p.demo


def _parse_tile(text: str):
    """``--tile``: ``("auto", None)``, ``("off", None)`` or ``("fixed", T)``."""
    text = str(text).strip().lower()
    if text in ("auto", "off"):
        return text, None
    try:
        return "fixed", int(text)
    except ValueError:
        raise UsageError(f"--tile must be a whole number of pixels, auto or off, got {text!r}") from None


# the settings a batch sweeps: GatysConfig field -> (flag, converter, default)
SWEEP_FLAGS = {"style_weight": ("--style-weight", _float, None), "content_weight": ("--content-weight", _float, 1.0),
               "tv_weight": ("--tv-weight", _float, None), "style_scale": ("--style-scale", _float, 1.0),
               "seed": ("--seed", _int, 0)}


def _sweep_values(args) -> dict:
    """``{field: [distinct values, in order]}`` of every sweepable setting (its default
    alone when not given)."""
    out = {}
    for field, (flag, convert, default) in SWEEP_FLAGS.items():
        raw = getattr(args, field)
        if raw is None:
            out[field] = [default]
            continue
        try:
            values = _split(raw, convert, flag)
        except argparse.ArgumentTypeError as e:
            raise UsageError(str(e)) from None
        if not values:
            raise UsageError(f"{flag} needs a value")
        out[field] = list(dict.fromkeys(values))
    return out


def parse(argv) -> Parsed:
    """The command line ``argv`` as a ``Parsed``; ``UsageError`` (or ``ConfigError``) when
    it cannot run. Every value of a swept setting is checked."""
    args = build_parser().parse_args(argv)
    tile_mode, tile = _parse_tile(args.tile)
    values = _sweep_values(args)
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
    demo = args.content is None and not args.style
    size = args.size if args.size is not None else (DEMO_SIZE if demo else 512)
    if iterations is None:
        iterations = DEMO_ITERATIONS if demo else 500
    elif len(iterations) == 1:
        iterations = iterations[0]
    elif len(iterations) != len(scales or [size]):
        raise UsageError(f"--iterations takes one number, or one per scale ({len(scales or [size])}), "
                         f"got {len(iterations)}")
    style_weight = values["style_weight"][0]
    if style_weight is None and demo and args.normalization == "gatys" and not scales:
        style_weight = DEMO_STYLE_WEIGHT * (size / DEMO_SIZE) ** 2  # β ∝ M
    init = args.init or ("image" if args.init_image else "noise")
    if args.init_image and init != "image":
        raise UsageError(f"--init-image goes with --init image, not --init {init}")
    cfg = GatysConfig(
        content=args.content[0] if args.content else None, style=list(args.style), style_blend_weights=blend,
        output=args.output, size=scales[-1] if scales else size, style_scale=values["style_scale"][0],
        content_layers=content_layers, style_layers=style_layers, style_layer_weights=layer_w,
        content_weight=values["content_weight"][0], style_weight=style_weight, tv_weight=values["tv_weight"][0],
        normalization=args.normalization, pooling=args.pooling, init=init, init_image=args.init_image,
        seed=values["seed"][0],
        iterations=iterations, optimizer=args.optimizer, learning_rate=args.learning_rate,
        lbfgs_memory=args.lbfgs_memory, print_every=args.print_every, save_every=args.save_every,
        preserve_colors=args.preserve_colors, scales=scales, time_budget=args.time_budget,
        tol=args.tol, device=args.device or default_device_name(), quiet=args.quiet, tile=tile)
    sweeps = {f: v for f, v in values.items() if len(v) > 1}
    for combination in batch.sweep_combinations(sweeps):
        dataclasses.replace(cfg, **dict(combination)).validate()
    return Parsed(args, cfg.validate(), demo, tile_mode == "auto", sweeps)


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
    paths = dict(batch.companion_paths(out), stem=out.with_suffix(""), suffix=out.suffix)
    if cfg.save_every:
        paths["snapshot"] = Path(f"{paths['stem']}_{cfg.total_iterations:04d}{out.suffix}")
    for key in ("image", "log", "curve", "snapshot"):
        if key in paths:
            check_writable(paths[key])
    return paths


def loss_log_line(record: dict) -> str:
    """One line of a loss log (``<stem>.losses.jsonl``): an iteration's record as JSON."""
    return json.dumps(record) + "\n"


def _draw_curve(records: list, path) -> None:
    try:
        plot_losses(records, path)
    except Exception as e:  # a missing or broken matplotlib must not lose the image
        print(f"note: could not draw the loss curve ({e.__class__.__name__}: {e})", file=sys.stderr)


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
        self.log.write(loss_log_line(p.record))
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
            _draw_curve(self.history, self.paths["curve"])


def _say(cfg, msg):
    if not cfg.quiet:
        print(msg, file=sys.stderr)


# --------------------------------------------------------------------------------------
# Memory pre-flight
# --------------------------------------------------------------------------------------


def _estimate_for(content_hw, cfg: GatysConfig, style_hws, size: int, device: str = "cpu", tile=None,
                  keep_freed: bool = False) -> dict:
    """``memory.estimate_gatys_memory`` of the scale ``size``, evaluated in tiles of ``tile``
    (None: whole), with the content and style images as loaded (``content_hw``,
    ``style_hws``) kept beside it, and that scale's iterations (those of the last scale
    for a size that is not one of the run's); ``keep_freed``: after
    ``backend.keep_freed_memory()``."""
    h, w = images.fit_longest(*content_hw, size)
    style_hw = [images.fit_longest(*hw, cfg.style_size(size)) for hw in style_hws]
    iterations = dict(zip(cfg.sizes, cfg.scale_iterations)).get(size, cfg.scale_iterations[-1])
    return estimate_gatys_memory(h, w, cfg.content_layers, cfg.style_layers, style_hw, cfg.optimizer,
                                 cfg.lbfgs_memory, device, tile=tile, source_hw=[content_hw, *style_hws],
                                 iterations=iterations, keep_freed=keep_freed)


def _run_estimate(content_hw, cfg: GatysConfig, style_hws, device: str = "cpu", keep_freed: bool = False) -> dict:
    """The estimate of a whole run: each part's largest value over the scales (so the
    parts, which may come from different scales, need not add up to the total), each
    scale with its own tile (``GatysConfig.scale_tiles``). One scale runs at a time, and
    what a scale leaves to the next (its best image) is a fraction of the next one's arrays."""
    ests = [_estimate_for(content_hw, cfg, style_hws, s, device, t, keep_freed)
            for s, t in zip(cfg.sizes, cfg.scale_tiles)]
    return {part: max(e[part] for e in ests) for part in ests[0]}


AUTO_TILES = (2048, 1024, 512, 256, 128, 64)  # --tile auto tries these, largest first
MIN_LBFGS_MEMORY = 3  # --tile auto lowers L-BFGS-B's history to this at the least, then takes Adam


def _tiles_where_needed(content_hw, cfg: GatysConfig, style_hws, device: str, fits, tile):
    """``tile`` at the scales whose whole-image evaluation does not ``fit``, None at the
    others: one value when every scale gets the same, else one per scale (``GatysConfig.tile``)."""
    tiles = [None if fits(_estimate_for(content_hw, cfg, style_hws, s, device)) else tile for s in cfg.sizes]
    return tiles[0] if len(set(tiles)) == 1 else tiles


def _fit_memory(content_hw, cfg: GatysConfig, style_hws, device: str, fits):
    """What ``--tile auto`` chooses when the whole run does not fit: the first setting
    whose estimate ``fits`` (``_run_estimate``), trying the optimiser settings best first
    (the given L-BFGS-B history, then shorter ones down to ``MIN_LBFGS_MEMORY``, then Adam,
    whose state is 4 float32 images), and for each the largest tile first, applied only at
    the scales whose whole image does not fit (``_tiles_where_needed``): a scale evaluated
    whole is 1.5 to 2.5 times faster. At print size L-BFGS-B's float64 history (2m
    image-sized vectors) can outgrow the tiled network. Returns ``(cfg, notes)``; ``cfg``
    unchanged when nothing fits."""
    h, w = images.fit_longest(*content_hw, cfg.sizes[-1])
    optimisers = [{}]
    if cfg.optimizer == "lbfgs":
        optimisers += [{"lbfgs_memory": m} for m in range(cfg.lbfgs_memory - 1, MIN_LBFGS_MEMORY - 1, -1)]
        optimisers.append({"optimizer": "adam"})
    tiles = [None] + [t for t in AUTO_TILES if t < max(h, w)]
    for change in optimisers:
        base = dataclasses.replace(cfg, tile=None, **change)
        for tile in tiles:
            trial = dataclasses.replace(base, tile=_tiles_where_needed(content_hw, base, style_hws, device, fits, tile))
            if fits(_run_estimate(content_hw, trial, style_hws, device)):
                return trial, _tile_notes(content_hw, trial) + _optimiser_notes(cfg, change)
    return cfg, []


def _tile_notes(content_hw, cfg: GatysConfig) -> list:
    """What ``--tile auto`` says of the scales it tiles: every scale, or which ones."""
    tiled = [(s, t) for s, t in zip(cfg.sizes, cfg.scale_tiles) if t is not None]
    if not tiled:
        return []
    (first, tile), largest = tiled[0], cfg.sizes[-1]
    h, w = images.fit_longest(*content_hw, largest)
    if len(tiled) == len(cfg.sizes):
        return [f"the whole {w}×{h} image does not fit in memory: evaluating the loss exactly in "
                f"{tile}×{tile} tiles (--tile {tile})"]
    whole = [s for s, t in zip(cfg.sizes, cfg.scale_tiles) if t is None]
    h, w = images.fit_longest(*content_hw, first)
    return [f"the whole image does not fit in memory from {w}×{h} up: evaluating the loss exactly in "
            f"{tile}×{tile} tiles at scale{'s' if len(tiled) > 1 else ''} {', '.join(str(s) for s, _ in tiled)}, "
            f"whole at {', '.join(map(str, whole))} (--tile {tile} would tile every scale)"]


def _optimiser_notes(cfg: GatysConfig, change: dict) -> list:
    """What ``--tile auto`` says of a lighter optimiser it chose."""
    if "lbfgs_memory" in change:
        return [f"L-BFGS-B's history of {cfg.lbfgs_memory} steps does not fit in memory: "
                f"keeping {change['lbfgs_memory']} (--lbfgs-memory {change['lbfgs_memory']})"]
    if "optimizer" in change:
        return [f"L-BFGS-B's history does not fit in memory even at {MIN_LBFGS_MEMORY} "
                f"steps: optimising with Adam (--optimizer adam)"]
    return []


def _largest_fitting_size(content_hw, cfg, style_hws, device: str, where: str, have: int) -> int | None:
    """The largest output size (a multiple of 16) whose estimate fits in ``have`` bytes."""
    part = "device" if (device == "gpu" and where == "GPU") else ("host" if device == "gpu" else "total")
    lo, hi = images.MIN_SIZE // 16, cfg.sizes[-1] // 16
    tile = cfg.scale_tiles[-1]
    if _estimate_for(content_hw, cfg, style_hws, lo * 16, device, tile)[part] > have:
        return None
    while lo < hi:  # the estimate grows with the size
        mid = (lo + hi + 1) // 2
        if _estimate_for(content_hw, cfg, style_hws, mid * 16, device, tile)[part] <= have:
            lo = mid
        else:
            hi = mid - 1
    return lo * 16


def _memory_limits(device: str) -> list:
    """``memory.memory_checks`` with the memory free now on this machine."""
    return memory_checks(device, available_memory(), gpu_free_memory() if device == "gpu" else None)


# ``--tile auto`` chooses as if a tenth less memory were free: the estimate is 3–12 % over
# the measured peak, but what other processes hold changes during a run that may last
# hours, and a machine without swap has nothing to absorb a miss. (A run is refused only
# when its estimate exceeds all of the free memory.)
AUTO_TILE_HEADROOM = 0.9


def _fits(est: dict, limits: list, headroom: float = 1.0) -> bool:
    return all(have is None or est[part] <= headroom * have for _, part, have in limits)


def _fit_or_refuse(content_hw, cfg: GatysConfig, style_hws, device: str, limits: list, auto_tile: bool):
    """The pre-flight of one pastiche over its scales: ``(cfg, estimate, notes)``, ``cfg``
    tiled (at the scales that need it) or with a lighter optimiser where ``--tile auto``
    had to (``_fit_memory``, ``notes`` say so); ``UsageError`` naming a ``--size`` that
    fits when nothing does."""
    est = _run_estimate(content_hw, cfg, style_hws, device)
    notes = []
    if auto_tile and not _fits(est, limits, AUTO_TILE_HEADROOM):
        cfg, notes = _fit_memory(content_hw, cfg, style_hws, device,
                                 lambda e: _fits(e, limits, AUTO_TILE_HEADROOM))
        est = _run_estimate(content_hw, cfg, style_hws, device)
    for where, part, have in limits:
        if have is not None and est[part] > have:
            h, w = images.fit_longest(*content_hw, cfg.sizes[-1])
            fit = _largest_fitting_size(content_hw, cfg, style_hws, device, where, have)
            hint = (f"try --size {fit} (with --scales, the last scale must fit: e.g. --scales "
                    f"{max(images.MIN_SIZE, fit // 2)},{fit})" if fit else "this machine is too small")
            raise UsageError(f"a {w}×{h} pastiche needs about {format_bytes(est[part])} of {where} memory but "
                             f"only {format_bytes(have)} is available: {hint}")
    return cfg, est, notes


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


def _check_sizes(cfg: GatysConfig, content_hw, style_hws) -> None:
    """The image-size checks of a run (``ConfigError`` or ``UsageError``)."""
    cfg.check_image_sizes(content_hw, style_hws)
    _check_deep_layers(cfg, content_hw, style_hws)


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


def _is_batch(args, sweeps: dict) -> bool:
    """Whether the command line asks for a batch rather than one (blended) pastiche."""
    paths = [*(args.content or []), *args.style]
    return bool(args.batch or sweeps or len(args.content or []) > 1 or any(os.path.isdir(p) for p in paths))


@contextlib.contextmanager
def _single_run_cluster(args, cfg: GatysConfig):
    """The cluster of ``--workers`` / ``--scheduler`` for one run's tiled evaluations (None:
    the run stays in this process)."""
    with distributed.cluster(args.workers, args.scheduler, say=lambda m: _say(cfg, m)) as c:
        yield c


def _single_main(p: Parsed) -> int:
    """One pastiche (its styles blended), with per-iteration progress, loss log and snapshots."""
    args, cfg, demo_defaults = p.args, p.cfg, p.demo

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
    style_hws = [s.shape[:2] for s in styles]
    _check_sizes(cfg, content.shape[:2], style_hws)
    init_image = images.load_image(cfg.init_image) if cfg.init == "image" else None
    paths = _output_paths(cfg, content_path.stem, style_names)
    if args.skip_existing and paths["image"].exists():
        print(f"{paths['image']} exists: skipped (--skip-existing)")
        return 0
    if demo_defaults:
        _say(cfg, f"minnst demo: {content_path.name} in the style of minnst's procedural stained glass, "
                  f"{cfg.size} px, {cfg.total_iterations} iterations, style weight {cfg.beta:g} "
                  f"(about two minutes on 2 CPU cores)")

    # Memory: estimate every scale, tile where need be, refuse if the run cannot fit.
    device = select_device(cfg.device)
    h, w = images.fit_longest(*content.shape[:2], cfg.sizes[-1])
    avail = available_memory()
    cfg, est, notes = _fit_or_refuse(content.shape[:2], cfg, style_hws, device.name, _memory_limits(device.name),
                                     p.auto_tile)
    # Keeping freed blocks in the heap makes the per-iteration allocations cheaper (17% less
    # wall time at 1024²) but fragments (the estimate counts it): only where memory is
    # plentiful.
    if avail is not None and est["total"] * 2 < avail and keep_freed_memory():
        est = _run_estimate(content.shape[:2], cfg, style_hws, device.name, keep_freed=True)
    for note in notes:
        _say(cfg, note)
    _say(cfg, f"{w}×{h} pastiche on the {device.name.upper()}: estimated peak memory {format_bytes(est['total'])}"
              + (f" ({format_bytes(avail)} available)" if avail else ""))

    net = VGG16.load(pooling=cfg.pooling, xp=device.xp)
    metadata = batch.output_metadata(cfg, content_path, sha256_file(content_path), style_meta)
    if cfg.save_every and len(cfg.sizes) > 1:
        _say(cfg, f"note: --save-every images saved before the last scale have that scale's size "
                  f"({', '.join(map(str, cfg.sizes[:-1]))} px)")
    make_dir(paths["image"].parent)  # the loss log is appended to there from the first iteration
    reporter = _Reporter(cfg, paths, metadata)
    result, status, failure = None, 0, None
    try:
        with _single_run_cluster(args, cfg) as c:
            where = {} if c is None else {"cluster": c}
            result = stylize(content, styles, cfg, init_image=init_image, net=net, device=device,
                             callback=reporter, **where)
    except StylizeInterrupted as e:
        result, status = e.result, EXIT_INTERRUPTED
    except NonFiniteLossError as e:
        result, status, failure = e.result, EXIT_USAGE, str(e)
    finally:
        reporter.close()  # also on an unexpected error: the log so far stays readable
    if result is None:
        raise UsageError(f"{failure}; no finite loss was ever reached, so there is no image to save")
    images.save_image(paths["image"], result.image, metadata=batch.result_metadata(metadata, result))
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


# --------------------------------------------------------------------------------------
# A batch
# --------------------------------------------------------------------------------------


@dataclass
class _Planned:
    """A run of a batch as the client plans it, before anything starts."""

    run: batch.Run
    cfg: GatysConfig              # its settings, fitted to memory
    paths: dict                   # batch.companion_paths of its output
    error: Exception | None = None  # why it cannot run (an unreadable style, an image too small)
    done: bool = False            # its output exists and --skip-existing keeps it
    est: dict | None = None       # its memory estimate (None: not known before it starts)
    notes: list = dataclasses.field(default_factory=list)  # what the pre-flight changed


@dataclass
class _StyleFile:
    """A style image read and checked once for all its runs."""

    file: batch.InputFile
    hw: tuple
    meta: dict                    # its entry in the outputs' "minnst-inputs"


def _check_batch_args(args) -> None:
    why = "a batch (several contents, a folder, --batch or a sweep) runs each style on its own"
    if args.style_blend_weights:
        raise UsageError(f"--style-blend-weights blends the styles of a single run, but {why}")
    if args.save_every:
        raise UsageError("--save-every saves the steps of a single run; a batch writes each run's result")
    if not args.content or not args.style:
        raise UsageError("a batch needs --content and --style (files or folders)")


def _expand(values, flag: str) -> list[str]:
    """The image files of ``--content`` / ``--style``: files as given, folders as listed
    (``data.list_images``: recursive, sorted)."""
    out = []
    for v in values:
        if os.path.isdir(v):
            found = list_images(v)
            if not found:
                raise UsageError(f"{flag}: no image files (.jpg, .png, …) in {v}")
            out += [str(f) for f in found]
        elif os.path.exists(v):
            out.append(v)
        else:
            raise UsageError(f"{flag}: no such file or folder: {v}")
    return out


def _batch_folder(output, n_runs: int) -> Path:
    out = Path(output) if output else BATCH_OUTPUT
    if out.suffix.lower() in (".png", ".jpg", ".jpeg") or out.is_file():
        raise UsageError(f"this is a batch of {_count(n_runs, 'run')}, so --output must be a folder, not {out}")
    return out


def _read_style(path) -> _StyleFile | Exception:
    """A style file as a ``_StyleFile``, or why it cannot be used (its runs fail with it)."""
    try:
        f = batch.InputFile.read(path)
        return _StyleFile(f, f.decode().shape[:2], {"path": str(path), "sha256": f.sha256})
    except images.ImageError as e:
        return e


def _plan_run(run: batch.Run, p: Parsed, folder: Path, style, content_hw, device: str, limits: list) -> _Planned:
    """One run's settings, output paths and pre-flight (``UsageError`` when it cannot fit)."""
    paths = batch.companion_paths(folder / f"{run.name}{BATCH_SUFFIX}")
    for path in paths.values():
        check_writable(path)
    cfg = batch.with_settings(p.cfg, run, paths["image"])
    if p.args.skip_existing and paths["image"].exists():
        return _Planned(run, cfg, paths, done=True)
    if isinstance(style, Exception):
        return _Planned(run, cfg, paths, error=style)
    if content_hw is None:  # an unreadable header: the decode, when the run starts, names the problem
        return _Planned(run, cfg, paths)
    try:
        _check_sizes(cfg, content_hw, [style.hw])
    except ValueError as e:
        return _Planned(run, cfg, paths, error=e)
    cfg, est, notes = _fit_or_refuse(content_hw, cfg, [style.hw], device, limits, p.auto_tile)
    return _Planned(run, cfg, paths, est=est, notes=notes)


def _plan_batch(p: Parsed, runs: list, folder: Path, styles: dict) -> list[_Planned]:
    """Every run planned and checked before any starts: output names, sizes, memory."""
    device, limits = _preflight_limits(p.args, p.cfg)
    content_hws = {c: header_hw(c) for c in dict.fromkeys(r.content for r in runs)}
    planned = [_plan_run(r, p, folder, styles[r.style], content_hws[r.content], device, limits) for r in runs]
    for note in dict.fromkeys(n for q in planned for n in q.notes):
        _say(p.cfg, note)
    _check_workers_fit(p.args.workers, planned, limits)
    todo = [q for q in planned if not q.done]
    if todo and all(q.error is not None for q in todo):
        raise todo[0].error  # nothing could run: a usage error, not a batch of failures
    return planned


def _check_workers_fit(workers: int | None, planned: list, limits: list) -> None:
    """``--workers N`` runs N pastiches at once on this machine: the largest N times must fit."""
    worst = max((q.est for q in planned if q.est is not None), key=lambda e: e["total"], default=None)
    if not workers or workers == 1 or worst is None:
        return
    for where, part, have in limits:
        if have is not None and workers * worst[part] > have:
            raise UsageError(f"--workers {workers} runs {workers} pastiches at once, about "
                             f"{format_bytes(workers * worst[part])} of {where} memory, but only "
                             f"{format_bytes(have)} is available: try --workers {max(1, have // worst[part])}")


def _preflight_limits(args, cfg: GatysConfig) -> tuple[str, list]:
    """The device and memory limits the runs are checked against: this machine's, or none
    with ``--scheduler`` (the workers' memory cannot be seen from here)."""
    if args.scheduler:
        return ("gpu" if cfg.device == "gpu" else "cpu"), []
    device = select_device(cfg.device).name
    return device, _memory_limits(device)


def _task(q: _Planned, style: _StyleFile, content: batch.InputFile, init) -> batch.RunTask:
    metadata = batch.output_metadata(q.cfg, Path(q.run.content), content.sha256, [style.meta])
    return batch.RunTask(q.cfg, content, style.file, init, metadata, BATCH_SUFFIX)


def _write_run(paths: dict, output: batch.RunOutput) -> None:
    """A run's loss log and curve, then its image, each atomically: an image on disk is a
    complete run (what ``--skip-existing`` relies on)."""
    write_text_atomic(paths["log"], "".join(loss_log_line(r) for r in output.history))
    if output.history:
        _draw_curve(output.history, paths["curve"])
    with atomic_write(paths["image"]) as tmp:
        tmp.write_bytes(output.image)


def _run_batch(planned: list, styles: dict, init, cluster, quiet: bool) -> tuple[int, list]:
    """Every planned run still to do, as tasks on ``cluster`` or here, each output written
    as it comes back. Returns the number written and the ``(planned, exception)`` failures."""
    from tqdm import tqdm

    failures = [(q, q.error) for q in planned if q.error is not None]
    todo = [q for q in planned if not q.done and q.error is None]
    bar = tqdm(total=len(planned), initial=len(planned) - len(todo), unit="run",
               disable=True if quiet else None, dynamic_ncols=True, file=sys.stderr)
    read = functools.lru_cache(maxsize=1)(batch.InputFile.read)  # runs come content by content
    submitted = []

    def tasks():
        for q in todo:
            try:
                task = _task(q, styles[q.run.style], read(q.run.content), init)
            except images.ImageError as e:
                failures.append((q, e))
                bar.update(1)
                continue
            submitted.append(q)
            yield task

    written = 0
    try:
        for i, ok, value in distributed.run_ordered(cluster, batch.run_task, tasks(), progress=bar.update):
            q = submitted[i]
            bar.set_postfix_str(q.run.name, refresh=False)
            if ok:
                _write_run(q.paths, value)
                written += 1
            else:
                failures.append((q, value))
    finally:
        bar.close()
    return written, failures


def _write_contact_sheet(planned: list, folder: Path) -> Path | None:
    """``contact_sheet.jpg`` in ``folder``, from the outputs on disk; None (and a note) when
    there are too many runs for one sheet."""
    outputs = {q.run: q.paths["image"] for q in planned}
    try:
        sheet = contact_sheet(batch.sheet_cells(outputs, SHEET_THUMB), SHEET_THUMB)
    except ValueError as e:
        print(f"note: no contact sheet: {e}", file=sys.stderr)
        return None
    return images.save_image(folder / batch.SHEET_NAME, sheet)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _why(e: BaseException) -> str:
    return e.cli_message() if isinstance(e, ConfigError) else (one_line(e) or type(e).__name__)


def _report(planned: list, written: int, failures: list, folder: Path, sheet) -> int:
    """The last lines of a batch and its exit code: 0, or 2 with one line when runs failed
    (each listed on stdout). A failure that is not bad input is a bug: raised (exit 1)."""
    kept = sum(q.done for q in planned)
    print(f"wrote {written} of {len(planned)} runs to {folder}" + (f" ({kept} already there)" if kept else "")
          + (f"; contact sheet {sheet}" if sheet else ""))
    if not failures:
        return 0
    unexpected = [e for _, e in failures if not isinstance(e, (ValueError, OSError, MemoryError))]
    if unexpected:
        raise unexpected[0]
    failures = sorted(failures, key=lambda f: (f[0].run.row, f[0].run.style_index, f[0].run.combination))
    for q, e in failures:
        print(f"failed: {q.run.name}: {_why(e)}")
    (first, e), more = failures[0], " (all listed above)" if len(failures) > 1 else ""
    return error(f"{len(failures)} of {len(planned)} runs failed: {first.run.name}: {_why(e)}{more}", PROG)


def _batch_main(p: Parsed) -> int:
    """Plan and check every run, run them (here or on the cluster), write the contact sheet."""
    args, cfg = p.args, p.cfg
    _check_batch_args(args)
    runs = batch.plan_runs(_expand(args.content, "--content"), _expand(args.style, "--style"), p.sweeps)
    folder = _batch_folder(args.output, len(runs))
    init = None
    if cfg.init == "image":  # one start image for every run: a bad one stops the batch
        init = batch.InputFile.read(cfg.init_image)
        init.decode()
    styles = {s: _read_style(s) for s in dict.fromkeys(r.style for r in runs)}
    planned = _plan_batch(p, runs, folder, styles)
    todo = sum(not q.done for q in planned)
    shape = [_count(len({r.row for r in runs}), "content"), _count(len(styles), "style"),
             _count(len(batch.sweep_combinations(p.sweeps)), "setting")]
    _say(cfg, f"a batch of {_count(len(runs), 'run')} ({' × '.join(shape)}) into {folder}"
              + (f"; {len(runs) - todo} done already" if todo < len(runs) else ""))
    workers, scheduler = (args.workers, args.scheduler) if todo else (None, None)
    try:
        with distributed.cluster(workers, scheduler, say=lambda m: _say(cfg, m)) as c:
            written, failures = _run_batch(planned, styles, init, c, cfg.quiet)
    except KeyboardInterrupt:
        complete = sum(q.paths["image"].exists() for q in planned)
        print(f"\ninterrupted: {complete} of {len(planned)} outputs in {folder} are complete; run the same "
              f"command with --skip-existing to finish", file=sys.stderr)
        return EXIT_INTERRUPTED
    return _report(planned, written, failures, folder, _write_contact_sheet(planned, folder))


def _main(argv) -> int:
    p = parse(sys.argv[1:] if argv is None else list(argv))
    return _batch_main(p) if _is_batch(p.args, p.sweeps) else _single_main(p)


def main(argv=None) -> int:
    """``python -m minnst.gatys``; returns the exit code (see ``minnst.cli``)."""
    return run(_main, argv, prog=PROG)
