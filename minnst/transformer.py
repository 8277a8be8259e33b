"""The image transformation network of Johnson, Alahi & Fei-Fei (2016).

    9×9 conv 32 → 3×3/2 conv 64 → 3×3/2 conv 128 → 5 residual blocks (128)
    → ×2 up 64 → ×2 up 32 → 9×9 conv 3 → scaled tanh to [0, 255]

Every convolution but the last is followed by a normalisation (instance by default, as
Ulyanov et al. found it better than the paper's batch norm) and a ReLU; a residual block
is ``x + norm(conv(relu(norm(conv(x)))))``. All padding is reflection, which keeps the
borders free of the dark frames that zero padding teaches the network. ``width``
multiplies every channel count (32, 64, 128), for small CPU-friendly models.

Upsampling: ``"nearest"`` (default) resizes ×2 and then applies a stride-1 3×3 conv;
``"transpose"`` is the paper's fractionally strided 3×3 conv. The default is the resize:
a stride-2 transposed 3×3 kernel overlaps unevenly (each output pixel receives 1, 2 or 4
taps depending on its parity), which paints checkerboards the loss must fight all
training long (Odena et al. 2016, "Deconvolution and checkerboard artifacts"). Resize and
convolution run as one op on the small image (``ResizeConvBlock``, ``layers/upconv.py``):
16/9 the FLOPs of the transposed convolution, small next to the VGG16 of the loss.

Convolutions that a normalisation follows have no bias: the normalisation subtracts the
per-channel mean, so a bias there would be a parameter with an exactly zero gradient.

The network maps ``(N, 3, H, W)`` pixels in [0, 255] to ``(N, 3, H', W')`` in [0, 255],
with ``H' = 4·⌈H/4⌉`` (two stride-2 steps round up, two ×2 steps double); ``stylize``
reflect-pads any image to a multiple of 4 and crops the result back.

Many styles in one network (Dumoulin, Shlens & Kudlur 2017): with ``styles`` named in the
config, every instance norm is a conditional one — the convolutions are shared and each
style has its own γ, β per norm (``layers.ConditionalInstanceNorm2d``). ``forward`` then
takes the batch's style weights, an (N, S) array (one-hot rows for one style, convex rows
for a blend); ``style_mix`` makes them from a name or a ``{name: weight}`` blend.

    net = TransformerNet(TransformerConfig(width=0.5), seed=0)
    y, cache = net.forward(x)              # x, y: (N, 3, H, W) in [0, 255]
    dx, grads = net.backward(dy, cache)    # grads keyed like net.params; dx is None
                                           # unless built with input_grad=True
    img = net.stylize(photo)               # (H, W, 3) in [0, 1] -> (H, W, 3) in [0, 1]
    net.save("model.h5", meta={...});  TransformerNet.load("model.h5")

    multi = TransformerNet(TransformerConfig(width=0.5, styles=("udnie", "the_scream")))
    y, cache = multi.forward(x, multi.style_mix("udnie", len(x)))
    img = multi.stylize(photo, style={"udnie": 0.7, "the_scream": 0.3})
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .backend import get_xp, to_host
from .layers.activations import ReLU, ScaledTanh
from .layers.base import Layer, Residual, Sequential
from .layers.conv import Conv2d, ConvTranspose2d
from .layers.base import forward_child
from .layers.affine import ChannelAffine, materialize
from .layers.moments import BandMoments
from .layers.normalization import (BatchNorm2d, ConditionalInstanceNorm2d, InstanceNorm2d,
                                   check_conditional_norm, instance_norm_affine, instance_norm_infer)
from .layers.resampling import Upsample
from .layers.upconv import folds_into_conv, upconv2d_backward, upconv2d_forward
from .modelfile import ModelFileError, load_model, save_model, source_name
from .perceptual import training_objective

NORMS = ("instance", "batch")
UPSAMPLINGS = ("nearest", "transpose")
MODEL_KIND = "minnst-transformer"
BASE_CHANNELS = (32, 64, 128)


@dataclass(frozen=True)
class TransformerConfig:
    width: float = 1.0          # channel multiplier on (32, 64, 128)
    norm: str = "instance"      # "instance" | "batch"
    upsample: str = "nearest"   # "nearest" (resize + conv) | "transpose" (strided conv)
    residual_blocks: int = 5
    styles: tuple = ()          # style names: one conditional instance norm per style (many styles)

    def __post_init__(self):
        object.__setattr__(self, "styles", tuple(self.styles))
        if not all(isinstance(n, str) and n for n in self.styles) or len(set(self.styles)) != len(self.styles):
            raise ValueError(f"styles must be distinct non-empty names, got {list(self.styles)}")
        if self.styles and self.norm != "instance":
            raise ValueError(f"many styles need norm='instance' (conditional instance norm), got {self.norm!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.upsample not in UPSAMPLINGS:
            raise ValueError(f"upsample must be one of {UPSAMPLINGS}, got {self.upsample!r}")
        if not (isinstance(self.width, (int, float)) and 0 < self.width <= 8):
            raise ValueError(f"width must be a number in (0, 8], got {self.width!r}")
        if not (isinstance(self.residual_blocks, int) and 0 <= self.residual_blocks <= 64):
            raise ValueError(f"residual_blocks must be an int in [0, 64], got {self.residual_blocks!r}")

    @property
    def channels(self) -> tuple[int, int, int]:
        return tuple(max(1, int(round(c * self.width))) for c in BASE_CHANNELS)

    def to_dict(self) -> dict:
        """The config as stored in a model file (``styles`` only for a many-style network)."""
        d = asdict(self)
        if self.styles:
            d["styles"] = list(self.styles)
        else:
            del d["styles"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown transformer config keys {unknown}")
        return cls(**d)


def _norm(cfg, C, dtype):
    if cfg.styles:
        return ConditionalInstanceNorm2d(C, len(cfg.styles), dtype=dtype)
    return InstanceNorm2d(C, affine=True, dtype=dtype) if cfg.norm == "instance" else BatchNorm2d(C, dtype=dtype)


# The network's 3×3 layers of 64+ channels run Winograd F(4×4, 3×3) on the CPU ("fast":
# on one thread a residual conv takes 6.4 ms instead of F(2×2)'s 7.5 at 64², and a
# stylisation 0.91–0.96 of the time; on two threads they are on a par, docs/performance.md).
# Its float32 error, ~1e-6 relative, is far below the 1/255 to which the output is
# rounded; VGG16, whose features are compared to 1e-6, keeps "auto" (layers/conv.py).
CONV_METHOD = "fast"


def _conv_block(cin, cout, k, stride, cfg, rng, dtype, input_grad=True):
    """conv (reflection pad k//2, no bias) → norm → ReLU."""
    return Sequential({
        "conv": Conv2d(cin, cout, k, stride=stride, padding=k // 2, pad_mode="reflect",
                       bias=False, rng=rng, dtype=dtype, input_grad=input_grad, method=CONV_METHOD),
        "norm": _norm(cfg, cout, dtype),
        "relu": ReLU(),
    })


def _residual_block(C, cfg, rng, dtype):
    return Residual(Sequential({
        "conv1": Conv2d(C, C, 3, padding=1, pad_mode="reflect", bias=False, rng=rng, dtype=dtype,
                        method=CONV_METHOD),
        "norm1": _norm(cfg, C, dtype),
        "relu": ReLU(),
        "conv2": Conv2d(C, C, 3, padding=1, pad_mode="reflect", bias=False, rng=rng, dtype=dtype,
                        method=CONV_METHOD),
        "norm2": _norm(cfg, C, dtype),
    }))


def _up_block(cin, cout, cfg, rng, dtype):
    if cfg.upsample == "nearest":
        layers = {"resize": Upsample(2),
                  "conv": Conv2d(cin, cout, 3, padding=1, pad_mode="reflect", bias=False,
                                 rng=rng, dtype=dtype, method=CONV_METHOD)}
    else:
        layers = {"conv": ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1,
                                          bias=False, rng=rng, dtype=dtype)}
    layers["norm"] = _norm(cfg, cout, dtype)
    layers["relu"] = ReLU()
    return ResizeConvBlock(layers) if cfg.upsample == "nearest" else Sequential(layers)


class ResizeConvBlock(Sequential):
    """The "nearest" up block, ``resize → conv → norm → ReLU``: the children and parameter
    names of a ``Sequential`` of those layers, whose resize and convolution run as one op,
    ``upconv.upconv2d_forward`` / ``upconv2d_backward`` (the convolution on the small
    image: 2.25× fewer products forward and backward, and no resized image kept). The
    cache: the op's, then the later children's list."""

    def __init__(self, layers: dict):
        super().__init__(layers)
        names = list(self.layers)
        if names[:2] != ["resize", "conv"] or not folds_into_conv(*list(self.layers.values())[:2]):
            raise ValueError(f"ResizeConvBlock needs a x2 resize then a 3x3 reflect conv, got {names}")
        # the children after the convolution (the very layer objects), run as one Sequential
        self._after = Sequential(dict(list(self.layers.items())[2:]))

    def forward(self, x, style=None):
        conv = self.layers["conv"]
        y, cache = upconv2d_forward(x, conv.params["weight"], conv.params.get("bias"))
        y, rest = self._after.forward(y, style)
        return y, (cache, rest)

    def backward(self, dy, cache, add=None):
        if add and {"resize", "conv"} & set(add):
            raise ValueError("ResizeConvBlock: the resized image is never made; add a gradient "
                             "after the convolution or at the block's input")
        fused, rest = cache
        dy, grads = self._after.backward(dy, rest, add)
        conv = self.layers["conv"]
        dx, dw, db = upconv2d_backward(dy, fused, need_dx=conv.input_grad)
        grads["conv.weight"] = dw
        if "bias" in conv.params:
            grads["conv.bias"] = db
        return dx, grads


def _infer_norm(norm, x, style, relu: bool, moments=None):
    """An instance norm (plain or conditional on ``style``) without a cache, with the
    ReLU that follows it when ``relu``: on NumPy its ``affine.ChannelAffine``, left for
    the next layer to apply (``normalization.instance_norm_affine``; ``moments``: the
    statistics of x, gathered by the layer that wrote it), else its output."""
    if isinstance(norm, ConditionalInstanceNorm2d):
        gamma, beta, mix = check_conditional_norm(x, norm.params["weight"], norm.params["bias"], style)
        gamma, beta = mix @ gamma, mix @ beta
    else:
        gamma, beta = norm.params.get("weight"), norm.params.get("bias")
    if get_xp(x) is np:
        return instance_norm_affine(x, gamma, beta, norm.eps, relu, moments)
    return instance_norm_infer(x, gamma, beta, norm.eps, relu)


def _infer(layer: Layer, x, style=None, fold: bool = True):
    """Forward without keeping caches (inference at any resolution in little memory).
    An instance norm reads no input of its own: the convolution before it gathers its
    statistics from each band of output as it writes it (``moments.BandMoments``), and
    the norm and the ReLU after it, one per-channel map, are applied by the convolution
    after them as it reads its input rows (``affine.ChannelAffine``: the normalised image
    is never made), or by a residual sum in its pass. With ``fold`` an up block's resize
    and convolution run as one op too (``upconv.upconv2d_forward``: the convolution on the
    small image, 2.25× fewer products, no resized image). The same as ``forward`` up to
    rounding."""
    return materialize(_infer_lazy(layer, x, style, fold))


def _is_norm(layer) -> bool:
    return isinstance(layer, (InstanceNorm2d, ConditionalInstanceNorm2d))


def _infer_lazy(layer: Layer, x, style, fold: bool):
    """``_infer``'s output, or the ``ChannelAffine`` that gives it (x: either)."""
    if isinstance(layer, Residual):
        x = materialize(x)
        body = _infer_lazy(layer.layers["body"], x, style, fold)
        return body.apply(add=x) if isinstance(body, ChannelAffine) else x + body
    if isinstance(layer, Sequential):
        children = list(layer.layers.values())
        moments = None  # of x, when the convolution that made it gathered them
        i = 0
        while i < len(children):
            child = children[i]
            after = children[i + 1:i + 3]
            if _is_norm(child):
                relu = bool(after) and isinstance(after[0], ReLU)
                x = _infer_norm(child, materialize(x), style, relu, moments)
                i += 2 if relu else 1
                moments = None
                continue
            gather = None
            if fold and after and folds_into_conv(child, after[0]):
                conv = after[0]
                if len(after) > 1 and _is_norm(after[1]):
                    gather = BandMoments()
                affine = x if isinstance(x, ChannelAffine) else None
                x = upconv2d_forward(affine.x if affine else x, conv.params["weight"], conv.params.get("bias"),
                                     keep_input=False, affine=affine, moments=gather)[0]
                i += 2
            elif isinstance(child, Conv2d):
                if after and _is_norm(after[0]):
                    gather = BandMoments()
                x = child.infer(x, gather)
                i += 1
            else:
                if not _takes_affine(child, fold):
                    # made here, not in the child: this frame's reference to the map (and
                    # with it to the convolution output it maps) goes before the child runs
                    x = materialize(x)
                x = _infer_lazy(child, x, style, fold)
                i += 1
            moments = gather
        return x
    return forward_child(layer, materialize(x), style)[0]


def _takes_affine(layer: Layer, fold: bool) -> bool:
    """Whether ``_infer_lazy(layer, …)`` maps a ``ChannelAffine`` input band by band: a
    convolution, a resize it folds into the convolution after it, or a block that starts
    with one of those (anything else makes the map's output first)."""
    if isinstance(layer, Conv2d):
        return True
    if isinstance(layer, Sequential) and layer.layers:  # not a Residual: its sum needs x whole
        first, *rest = layer.layers.values()
        return (fold and bool(rest) and folds_into_conv(first, rest[0])) or _takes_affine(first, fold)
    return False


class TransformerNet(Sequential):
    """The feed-forward stylisation network; a ``Sequential`` of named blocks
    (``down1``…``down3``, ``res1``…``res5``, ``up1``, ``up2``, ``out``, ``tanh``).

    ``input_grad``: whether ``backward`` returns the gradient with respect to the input
    images. Training never needs it (the input is the data), and skipping it saves the
    first 9×9 layer's input-gradient product (~1/4 of that layer's backward), so it is off
    by default and ``backward`` returns ``dx = None``."""

    def __init__(self, config: TransformerConfig | None = None, seed: int = 0, dtype=np.float32,
                 input_grad: bool = False):
        self.config = config = config or TransformerConfig()
        self.meta: dict = {}  # what ``load`` read from the file (style, training settings)
        rng = np.random.default_rng(seed)
        c1, c2, c3 = config.channels
        blocks = {
            "down1": _conv_block(3, c1, 9, 1, config, rng, dtype, input_grad=input_grad),
            "down2": _conv_block(c1, c2, 3, 2, config, rng, dtype),
            "down3": _conv_block(c2, c3, 3, 2, config, rng, dtype),
        }
        for i in range(config.residual_blocks):
            blocks[f"res{i + 1}"] = _residual_block(c3, config, rng, dtype)
        blocks["up1"] = _up_block(c3, c2, config, rng, dtype)
        blocks["up2"] = _up_block(c2, c1, config, rng, dtype)
        blocks["out"] = Conv2d(c1, 3, 9, padding=4, pad_mode="reflect", rng=rng, dtype=dtype,
                               method=CONV_METHOD)
        blocks["tanh"] = ScaledTanh(127.5, 127.5)
        super().__init__(blocks)

    # ------------------------------------------------------------------ styles

    @property
    def styles(self) -> list:
        """The style names: the config's for a many-style network, else the one style the
        model file records (``[]`` for a network that records none)."""
        if self.config.styles:
            return list(self.config.styles)
        name = self.meta.get("style")
        return [Path(name).stem] if name else []

    @property
    def default_style(self):
        """The style a tool uses when none is asked for: the first of a many-style network,
        None for a one-style network (whose ``stylize`` takes no style)."""
        return self.config.styles[0] if self.config.styles else None

    def style_mix(self, style=None, n: int = 1):
        """The (n, S) host float64 style weights of a batch of n, or None for a one-style
        network. ``style``: a name, a ``{name: weight}`` blend (weights ≥ 0, normalised to
        sum 1), an (S,) or (n, S) array of weights, or None (one-style networks only)."""
        names = list(self.config.styles)
        if not names:
            if style is None or (isinstance(style, str) and style in self.styles):
                return None
            raise ValueError(f"this network has one style ({', '.join(self.styles) or 'unnamed'}); "
                             f"got style={style!r}")
        if style is None:
            raise ValueError(f"choose a style: one of {', '.join(names)} (or a blend of them)")
        if isinstance(style, str):
            style = {style: 1.0}
        if isinstance(style, dict):
            unknown = [k for k in style if k not in names]
            if unknown:
                raise ValueError(f"unknown style {unknown[0]!r}; this network has {', '.join(names)}")
            w = np.zeros(len(names))
            for k, v in style.items():
                w[names.index(k)] = float(v)
        else:
            w = np.asarray(to_host(style), dtype=np.float64)
        if w.shape[-1:] != (len(names),) or w.ndim > 2:
            raise ValueError(f"style weights must have {len(names)} values per image, got shape {w.shape}")
        if not (np.all(np.isfinite(w)) and np.all(w >= 0) and np.all(w.sum(axis=-1) > 0)):
            raise ValueError(f"style weights must be finite, ≥ 0 and not all zero, got {w.tolist()}")
        w = w / w.sum(axis=-1, keepdims=True)
        return np.broadcast_to(w, (n, len(names))).copy() if w.ndim == 1 else w

    def _mix_for(self, style, x):
        """``style`` as (N, S) weights in x's dtype and array module, or None."""
        mix = self.style_mix(style, x.shape[0])
        if mix is None:
            return None
        if mix.shape[0] != x.shape[0]:
            raise ValueError(f"style weights for {mix.shape[0]} images, batch of {x.shape[0]}")
        return get_xp(x).asarray(mix, dtype=x.dtype)

    def style_settings(self, name: str | None = None) -> dict:
        """How style ``name`` was trained: ``{"image", "image_sha256", "style_size",
        "objective"}``, where ``objective`` holds the keyword arguments of
        ``gatys.Objective`` that reproduce that style's training loss for one photo."""
        styles = self.meta.get("styles")
        if isinstance(styles, dict):
            if name not in styles:
                raise ValueError(f"unknown style {name!r}; this network has {', '.join(styles)}")
            return dict(styles[name])
        train = self.meta.get("train")
        if not train or (name is not None and name not in self.styles):
            raise ValueError(f"the model does not record how style {name!r} was trained")
        return {"image": Path(train["style"]).name, "image_sha256": self.meta.get("style_sha256"),
                "style_size": train.get("style_size") or train["image_size"],
                "objective": training_objective(train["content_layer"], train["style_layers"],
                                                train.get("style_layer_weights") or None,
                                                train["content_weight"], train["style_weight"],
                                                train["tv_weight"], train["pooling"])}

    # ------------------------------------------------------------------ forward

    def forward(self, x, style=None):
        """``(y, cache)``; ``style`` as ``style_mix`` takes it (many-style networks)."""
        return super().forward(x, self._mix_for(style, x))

    @staticmethod
    def output_preactivation(cache):
        """The input z of the output ``y = 127.5 + 127.5·tanh(z)``, from a ``forward`` cache
        (what ``losses.saturation_penalty`` acts on; its gradient goes to ``backward``'s
        ``add={"tanh": …}``)."""
        return cache[-1][2]

    # ------------------------------------------------------------------ inference

    def infer(self, x, style=None):
        """``forward`` without caches: (N, 3, H, W) in [0, 255] -> same, less memory."""
        return _infer(self, x, self._mix_for(style, x))

    def stylize(self, img, style=None, xp=None):
        """Stylise one image ``(H, W, 3)`` in [0, 1] (any size ≥ 1 px) -> ``(H, W, 3)`` in
        [0, 1], a host float32 array, in ``style`` (a name or a ``{name: weight}`` blend;
        many-style networks). Runs in eval mode on the parameters' array module (``xp`` to
        override). The image is reflect-padded to a multiple of 4 (and to at least 16 px)
        so the two stride-2 steps and the two ×2 steps line up, then cropped."""
        a = np.asarray(to_host(img), dtype=np.float32)
        if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"stylize needs an (H, W, 3) image, got shape {a.shape}")
        H, W = a.shape[:2]
        Hp, Wp = max(16, -(-H // 4) * 4), max(16, -(-W // 4) * 4)
        if (Hp, Wp) != (H, W):
            a = np.pad(a, ((0, Hp - H), (0, Wp - W), (0, 0)), mode="symmetric")
        xp = xp or get_xp(next(iter(self.params.values())))
        dtype = next(iter(self.params.values())).dtype
        x = xp.asarray(a.transpose(2, 0, 1)[None] * 255.0, dtype=dtype)  # (1, 3, Hp, Wp)
        was_training = self.training
        self.eval()
        try:
            y = self.infer(x, style)
        finally:
            self.train(was_training)
        out = to_host(y)[0, :, :H, :W].transpose(1, 2, 0) / 255.0  # (H, W, 3)
        return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)

    # ------------------------------------------------------------------ files

    def save(self, path, meta: dict | None = None, dtype=None):
        """Write the weights, the config and ``meta`` (style, training settings) as HDF5
        (atomically). ``dtype=np.float16`` halves the file for shipping."""
        config = {"kind": MODEL_KIND, **self.config.to_dict()}
        return save_model(path, self.state_dict(), config, meta=meta, dtype=dtype)

    @classmethod
    def from_state(cls, state: dict, config: dict, source: str = "model", dtype=np.float32):
        """Build a network from a ``(state, config)`` pair, validating everything;
        raises ``ModelFileError`` naming ``source`` and the first problem."""
        config = dict(config)
        kind = config.pop("kind", None)
        if kind != MODEL_KIND:
            raise ModelFileError(f"{source} is not a transformer model (kind={kind!r})")
        try:
            cfg = TransformerConfig.from_dict(config)
        except (TypeError, ValueError) as e:
            raise ModelFileError(f"{source}: bad transformer config ({e})") from None
        net = cls(cfg, dtype=dtype)
        mine = net.state_dict()
        missing = [k for k in mine if k not in state]
        extra = [k for k in state if k not in mine]
        if missing or extra:
            raise ModelFileError(
                f"{source} does not match its config (width={cfg.width}, norm={cfg.norm}, "
                f"upsample={cfg.upsample}): missing {missing[:3]}, unexpected {extra[:3]}")
        for k, dst in mine.items():
            src = np.asarray(state[k])
            if tuple(src.shape) != tuple(dst.shape):
                raise ModelFileError(f"{source}: {k} has shape {tuple(src.shape)}, "
                                     f"expected {tuple(dst.shape)} for its config")
            if not np.issubdtype(src.dtype, np.floating):
                raise ModelFileError(f"{source}: {k} has dtype {src.dtype}, expected floating point")
            if not np.all(np.isfinite(src)):
                raise ModelFileError(f"{source}: {k} holds NaN or infinite values")
            dst[...] = src
        return net

    @classmethod
    def load(cls, path, dtype=np.float32):
        """Read a model written by ``save`` (a path, or the file's bytes); ``net.meta``
        holds the stored metadata."""
        state, config, meta = load_model(path)
        net = cls.from_state(state, config, source=source_name(path), dtype=dtype)
        net.meta = meta
        net.eval()
        return net

    def __repr__(self):
        c = self.config
        return (f"TransformerNet(width={c.width}, channels={c.channels}, norm={c.norm!r}, "
                f"upsample={c.upsample!r}, residual_blocks={c.residual_blocks})")
