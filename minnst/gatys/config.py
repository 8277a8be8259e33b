"""``GatysConfig``: every setting of a Gatys run, with its default and its checks.

``python -m minnst.gatys`` fills it from the command line; ``gatys.stylize`` takes it (or
its fields as keyword arguments). ``validate`` raises ``ConfigError`` (a ``ValueError``)
naming the field in plain words; the command line turns the field into its ``--flag``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from .. import images, losses, tiling
from ..errors import ConfigError
from ..perceptual import check_layers, check_weights
from .objective import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("noise", "content", "image")
PRESERVE_COLORS = ("none", "luminance", "histogram")
POOLINGS = ("avg", "max")
DEVICES = ("cpu", "gpu", "auto")
# Default weights per normalisation, for the default 512-pixel output (α = 1), chosen by
# eye on tubingen × starry_night (docs/gatys.md, "Choosing the weights"). Under the Gatys
# normalisation the content term grows with the pixel count M while the style term does
# not, so the same balance at another size needs β ∝ M; the Johnson losses are
# size-independent, and 0.7 is 3e6 converted at 512 px.
DEFAULT_STYLE_WEIGHT = {"gatys": 3e6, "johnson": 0.7}
DEFAULT_TV_WEIGHT = {"gatys": 1.0, "johnson": 1e-6}
TOL_WINDOW = 20  # ``tol`` compares the best loss with the one TOL_WINDOW iterations before


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
    iterations: int | list = 500      # per scale: one number for all, or one per scale (coarse to fine)
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
    tile: int | list | None = None    # evaluate exactly in tiles of this side, pixels (None: whole); per
                                      # scale: one for all, or one per scale (coarse to fine, None: whole)
    quiet: bool = False               # no progress bar or printed losses

    @property
    def sizes(self) -> list:
        return list(self.scales) if self.scales else [self.size]

    @property
    def scale_iterations(self) -> list:
        """Iterations at each scale, coarse to fine."""
        if isinstance(self.iterations, (list, tuple)):
            return list(self.iterations)
        return [self.iterations] * len(self.sizes)

    @property
    def scale_tiles(self) -> list:
        """The tile side at each scale, coarse to fine (None: that scale is evaluated whole)."""
        if isinstance(self.tile, (list, tuple)):
            return list(self.tile)
        return [self.tile] * len(self.sizes)

    @property
    def total_iterations(self) -> int:
        return sum(self.scale_iterations)

    @property
    def beta(self) -> float:
        return DEFAULT_STYLE_WEIGHT[self.normalization] if self.style_weight is None else self.style_weight

    @property
    def tv(self) -> float:
        return DEFAULT_TV_WEIGHT[self.normalization] if self.tv_weight is None else self.tv_weight

    def validate(self) -> "GatysConfig":
        """Raise ``ConfigError`` for any value a run cannot use; returns self."""

        def words(name):
            return name.replace("_", " ")

        def number(name, lo=0.0, strict=False, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or (v <= lo if strict else v < lo):
                cmp = ">" if strict else "≥"
                raise ConfigError(name, f"{words(name)} must be a finite number {cmp} {lo:g}, got {v!r}")

        def integer(name, lo, hi):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise ConfigError(name, f"{words(name)} must be a whole number in [{lo}, {hi}], got {v!r}")

        def checked(name, check, *args):
            try:
                check(*args)
            except ValueError as e:
                raise ConfigError(name, str(e)) from None

        size_field = "scales" if self.scales else "size"
        for s in self.sizes:
            checked(size_field, images.check_size, s, size_field)
        if self.scales and list(self.scales) != sorted(set(self.scales)):
            raise ConfigError("scales", f"scales must increase (coarse to fine), got {list(self.scales)}")
        number("style_scale", strict=True)
        number("content_weight")
        number("style_weight", allow_none=True)
        number("tv_weight", allow_none=True)
        number("learning_rate", strict=True)
        number("time_budget", strict=True, allow_none=True)
        number("tol", allow_none=True)
        if isinstance(self.iterations, (list, tuple)):
            if len(self.iterations) not in (1, len(self.sizes)):
                raise ConfigError("iterations", f"give one iteration count, or one per scale "
                                                f"({len(self.sizes)}), got {len(self.iterations)}")
            for v in self.iterations:
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= 10**7:
                    raise ConfigError("iterations", f"iterations must be whole numbers in [1, 10000000], "
                                                    f"got {v!r}")
            if len(self.iterations) == 1:
                self.iterations = int(self.iterations[0])
        else:
            integer("iterations", 1, 10**7)
        integer("seed", 0, 2**63 - 1)
        integer("lbfgs_memory", 1, 1000)
        integer("print_every", 0, 10**9)
        integer("save_every", 0, 10**9)
        for name, allowed in (("normalization", losses.NORMALIZATIONS), ("pooling", POOLINGS),
                              ("init", INITS), ("optimizer", OPTIMIZERS),
                              ("preserve_colors", PRESERVE_COLORS), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{words(name)} must be one of {', '.join(allowed)}, "
                                        f"got {getattr(self, name)!r}")
        if isinstance(self.tile, (list, tuple)):
            if len(self.tile) not in (1, len(self.sizes)):
                raise ConfigError("tile", f"give one tile, or one per scale ({len(self.sizes)}), "
                                          f"got {len(self.tile)}")
            for t in self.tile:
                checked("tile", tiling.check_tile, t)
            self.tile = self.tile[0] if len(self.tile) == 1 else list(self.tile)
        else:
            checked("tile", tiling.check_tile, self.tile)
        checked("content_layers", check_layers, self.content_layers, "content layers")
        checked("style_layers", check_layers, self.style_layers, "style layers")
        checked("style_blend_weights", check_weights, self.style_blend_weights, max(1, len(self.style)),
                "style blend weights", True, "style images")
        checked("style_layer_weights", check_weights, self.style_layer_weights, len(self.style_layers),
                "style layer weights", False, "style layers")
        if not self.content_layers and not self.style_layers:
            raise ConfigError("content_layers", "give at least one content layer or one style layer")
        if self.init == "image" and not self.init_image:
            raise ConfigError("init_image", "init image is needed with init = 'image'")
        for s in self.sizes:
            st = self.style_size(s)
            if not images.MIN_SIZE <= st <= images.MAX_SIZE:
                raise ConfigError("style_scale", f"style scale {self.style_scale:g} × {s} gives {st}-pixel style images; "
                                                 f"they must be between {images.MIN_SIZE} and {images.MAX_SIZE}")
        return self

    def check_image_sizes(self, content_hw, style_hws=()) -> None:
        """Raise ``ConfigError`` when a scale would shrink the content (h, w) or a style
        image below ``images.MIN_SIZE`` pixels on its shorter side, naming a size that works."""
        field_name = "scales" if self.scales else "size"
        for s in self.sizes:
            for what, hw, side in [("content", content_hw, s)] + [
                    (f"style image {i + 1}", shw, self.style_size(s)) for i, shw in enumerate(style_hws)]:
                h, w = images.fit_longest(*hw, side)
                if min(h, w) < images.MIN_SIZE:
                    need = math.ceil(images.MIN_SIZE * max(hw) / min(hw))
                    if what == "content":
                        raise ConfigError(field_name, f"{field_name} {s} makes the {hw[1]}×{hw[0]} {what} "
                                                      f"{w}×{h} pixels; VGG16 needs at least {images.MIN_SIZE} "
                                                      f"on each side: use a {field_name} of at least {need}")
                    raise ConfigError("style_scale", f"style scale {self.style_scale:g} × {s} makes the "
                                                     f"{hw[1]}×{hw[0]} {what} {w}×{h} pixels; VGG16 needs at "
                                                     f"least {images.MIN_SIZE} on each side: its longest side "
                                                     f"must be at least {need}")

    def style_size(self, size: int) -> int:
        return int(math.ceil(self.style_scale * size))

    def to_json(self) -> dict:
        """The configuration as stored in the output's metadata (without the output path,
        which does not change the image)."""
        d = dataclasses.asdict(self)
        d.pop("output", None)
        d["style_weight"], d["tv_weight"] = self.beta, self.tv
        return d
