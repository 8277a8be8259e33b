"""Train a feed-forward style network (Johnson et al. 2016): ``python -m minnst.train_fast``.

    python -m minnst.train_fast --style starry_night.jpg --dataset train/ \\
        --output starry_night.h5 --iterations 40000 [--width 0.5] [--resume]

Each step stylises a batch of photos ``x`` with the network, ``ŷ = f(x)`` in [0, 255], and
takes an Adam step on

    L = λ_c · ℓ_content(relu2_2) + λ_s · Σ_l w_l · ℓ_style(l) / C_l² + λ_tv · TV(ŷ/255) / N

with Johnson's normalisation (``losses.content_loss`` / ``style_loss`` with
``normalization="johnson"``) on the frozen VGG16, fed ``images.preprocess(ŷ/255)``. The
``/ C_l²`` makes each style term the *mean* squared Gram difference, as in Johnson's and
PyTorch's code, so their weights carry over: λ_c = 1, λ_s = 1e5 is PyTorch's
``fast_neural_style`` ratio (1e5 : 1e10) exactly (same ImageNet-normalised input, same Gram
normalisation). The
gradient comes back through ``vgg.backward``, ``images.preprocess_backward`` and the
network's own backward. The loss network uses **max pooling**, the pooling VGG16 was
trained with and the one of Johnson's code: here the gradient only has to be good enough
to train a network over thousands of steps, not to optimise pixels directly, so the
average-pooling trick of the Gatys method buys nothing.

A run directory (``--run-dir``, default ``runs/<output stem>``) collects ``log.jsonl``
(one JSON line per step), ``loss.png``, ``samples/step_NNNNNN.png`` and ``checkpoint.h5``.
The checkpoint (every ``--checkpoint-every`` steps or ``--checkpoint-minutes``, written
atomically, and on Ctrl-C / SIGTERM) holds the model, Adam's moments and step count, the
sampler state ``(epoch, index)`` (with the seed, the only randomness after initialisation)
and the configuration; ``--resume`` continues exactly: k steps, a kill and a resume to N
give bit for bit the weights of N steps straight (on the CPU; tests/test_train_fast.py).

``--export CHECKPOINT --output MODEL.h5 [--float16]`` writes a model file from a checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import images, losses
from .backend import get_xp, keep_freed_memory, select_device, to_host
from .cli import ArgumentParser, UsageError, number, run, vgg_min_side, whole
from .errors import ConfigError
from .files import check_writable, make_dir, sha256_file, write_text_atomic
from .data import BatchSampler, list_images, open_dataset, random_crops
from .optim import Adam
from .layers import Conv2d, ConvTranspose2d
from .layers.normalization import ConditionalInstanceNorm2d
from .transformer import MODEL_KIND, TransformerConfig, TransformerNet
from .vgg import LAYER_NAMES, VGG16, check_layer_names
from .modelfile import ModelFileError, load_model, save_model
from .memory import (available_memory, estimate_training_memory, format_bytes, gpu_free_memory, largest_fitting,
                     memory_checks)
from .perceptual import (JOHNSON_STYLE_LAYERS, TRAINING_CONV_METHOD, PerceptualLoss, check_layers,
                         training_objective)
from .plots import plot_losses

CHECKPOINT_KIND = "minnst-train-checkpoint"
STYLE_LAYERS = JOHNSON_STYLE_LAYERS
PLOT_SECONDS = 600  # loss.png is redrawn at a checkpoint at most this often, and at the end
PLOT_WINDOW = 50  # loss.png draws trailing means over this many steps
# The output is 127.5 + 127.5·tanh(z). Where training drives z far out (bright photo
# regions pushed towards white), tanh' ≈ e^-2|z| kills the gradient and the pixels stay
# stuck white: the "white blob". μ·losses.saturation_penalty(z, bound) with the bound
# at tanh(3) = 0.995 (pixels 0.6–254.4) keeps z where the gradient lives.
SATURATION_BOUND = 3.0


@dataclass
class TrainConfig:
    style: str | tuple = ""                  # style image file, or several (one network, many styles)
    dataset: str = ""                        # folder of photos or .h5 from make_dataset
    output: str = "model.h5"                 # final model file
    run_dir: str = ""                        # logs, samples, checkpoint ("" = runs/<output stem>)
    image_size: int = 256                    # photos are resized and centre-cropped to image_size²
    crop_size: int = 0                       # then a random crop_size² window (0 = whole photo)
    batch_size: int = 4
    iterations: int = 40000
    lr: float = 1e-3                         # Adam learning rate
    content_weight: float = 1.0              # λ_c
    style_weight: float | tuple = 1e5        # λ_s, on the mean squared Gram difference (or one per style)
    tv_weight: float = 1e-5                  # λ_tv, on the output in [0, 1]
    saturation_weight: float = 1.0           # μ, on the output tanh's input beyond ±SATURATION_BOUND
    content_layer: str = "relu2_2"
    style_layers: tuple = STYLE_LAYERS
    style_layer_weights: tuple = ()          # w_l; () = 1 for every layer
    style_size: int = 0                      # longest side of the style image (0 = image_size)
    pooling: str = "max"                     # VGG16 pooling of the loss network
    width: float = 1.0                       # channel multiplier of the transformer
    norm: str = "instance"                   # instance | batch
    upsample: str = "nearest"                # nearest (resize + conv) | transpose
    seed: int = 0                            # initialisation and batch order
    device: str = "auto"                     # cpu | gpu | auto
    checkpoint_every: int = 500              # iterations between checkpoints
    checkpoint_minutes: float = 5.0          # ... or minutes, whichever comes first
    sample_every: int = 500                  # iterations between sample stylisations (0 = off)
    samples: tuple = ()                      # photos for the samples (() = first 2 of the dataset)
    quiet: bool = False                      # no progress bar
    base_model: str = ""                     # add the styles to this many-style model: train only their γ, β

    def check(self):
        """Raise ``ConfigError`` (naming the field) for a value training cannot use."""
        for name in ("image_size", "batch_size", "iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{name.replace('_', ' ')} must be >= 1")
        if self.image_size < 16:
            raise ConfigError("image_size", "image size must be at least 16")
        if self.checkpoint_every < 1:
            raise ConfigError("checkpoint_every", "checkpoint every must be >= 1 (iterations)")
        if self.sample_every < 0:
            raise ConfigError("sample_every", "sample every must be >= 0 (0: no samples)")
        if not (self.checkpoint_minutes > 0 and math.isfinite(self.checkpoint_minutes)):
            raise ConfigError("checkpoint_minutes", "checkpoint minutes must be a finite number > 0")
        if self.crop_size and not 16 <= self.crop_size <= self.image_size:
            raise ConfigError("crop_size", "crop size must be between 16 and the image size (or 0: no crop)")
        if not self.lr > 0:
            raise ConfigError("lr", "lr must be > 0")
        for name in ("content_weight", "tv_weight", "saturation_weight"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(name, f"{name.replace('_', ' ')} must be a finite number >= 0")
        paths = self.style_paths()
        if not paths:
            raise ConfigError("style", "style: give at least one style image")
        names = [Path(p).stem for p in paths]
        if len(set(names)) != len(names):
            raise ConfigError("style", f"style images must have distinct file names, got {names}")
        weights = [self.style_weight] if not isinstance(self.style_weight, tuple) else list(self.style_weight)
        if len(weights) not in (1, len(paths)):
            raise ConfigError("style_weight", f"style weight has {len(weights)} values for {len(paths)} styles")
        if not all(isinstance(w, (int, float)) and w >= 0 and math.isfinite(w) for w in weights):
            raise ConfigError("style_weight", "style weight must be finite numbers >= 0")
        if self.multi_style and self.norm != "instance":
            raise ConfigError("norm", "norm must be instance for many styles (conditional instance norm)")
        try:
            check_layer_names([self.content_layer, *self.style_layers])
        except ValueError as e:
            raise ConfigError("style_layers" if self.content_layer in LAYER_NAMES else "content_layer",
                              str(e)) from None
        if self.style_layer_weights and len(self.style_layer_weights) != len(self.style_layers):
            raise ConfigError("style_layer_weights", f"style layer weights has {len(self.style_layer_weights)} "
                                                     f"values for {len(self.style_layers)} style layers")
        if self.pooling not in ("avg", "max"):
            raise ConfigError("pooling", "pooling must be avg or max")
        try:
            self.model_config()
        except ValueError as e:
            raise ConfigError("width", str(e)) from None

    def style_paths(self) -> list:
        """The style images: one file, several, or the images of a folder (sorted)."""
        given = [self.style] if isinstance(self.style, str) else list(self.style)
        paths = []
        for p in given:
            if p and Path(p).is_dir():
                paths += [str(q) for q in list_images(p)]
            elif p:
                paths.append(str(p))
        return paths

    @property
    def multi_style(self) -> bool:
        """A network with conditional instance norms: several styles, or styles added to one."""
        return len(self.style_paths()) > 1 or bool(self.base_model) or not isinstance(self.style, str)

    def style_weight_of(self, k: int) -> float:
        """λ_s of the k-th style image."""
        return float(self.style_weight[k] if isinstance(self.style_weight, tuple) else self.style_weight)

    def model_config(self) -> TransformerConfig:
        styles = tuple(Path(p).stem for p in self.style_paths()) if self.multi_style else ()
        return TransformerConfig(width=self.width, norm=self.norm, upsample=self.upsample, styles=styles)

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / Path(self.output).stem

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("style_layers", "style_layer_weights", "samples", "style", "style_weight"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        if not self.base_model:
            del d["base_model"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d.setdefault("saturation_weight", 0.0)  # runs from before the penalty had none
        for k in ("style_layers", "style_layer_weights", "samples", "style", "style_weight"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)


# Settings that may differ on --resume: they do not change the computation — except the
# SCHEDULED ones, which a resume may change on purpose: a crop-size schedule (cheap small
# crops first, larger ones later), a learning-rate schedule, or new style weights
# (fine-tuning a trained model towards another balance of content and style). The
# checkpoint records each change as "<name>_schedule": [[from step, value], …].
#
# "width" too: a resume may raise it to a whole multiple, and the network grows by
# ``widen`` (the same function; Adam starts afresh, its moments being per weight).
SCHEDULED = ("crop_size", "lr", "style_weight", "saturation_weight", "width")
SCHEDULE_KEYS = {"crop_size": "crop_schedule", "lr": "lr_schedule", "style_weight": "style_weight_schedule",
                 "saturation_weight": "saturation_schedule", "width": "width_schedule"}
# the symmetry-breaking noise of a widening resume (``widen``): on the twelve-style model
# (step 34 749) its one-pass loss on 144 held-out cases moved by +0.048 % at 1e-2
# (+0.003 % at 1e-3)
WIDEN_NOISE = 1e-2
RESUMABLE_OVERRIDES = ("dataset", "output", "iterations", "device", "checkpoint_every",
                       "checkpoint_minutes", "sample_every", "samples", "quiet", *SCHEDULED)


def _schedule_value(value):
    """A setting as a schedule records it (JSON: a tuple of style weights as a list)."""
    return list(value) if isinstance(value, tuple) else value


# --------------------------------------------------------------------------- the loss

class TrainingLoss:
    """Johnson's training objective of a batch: ``perceptual.PerceptualLoss`` with the
    Johnson normalisation and ``mean_gram_layer_weights``, on the network's output.

    ``loss(y, img) -> (total, parts, dy)``: ``y`` (N, 3, H, W) the network output in
    [0, 255], ``img`` (N, H, W, 3) the input photos in [0, 1] (the content targets),
    ``parts`` = {"content", "style", "tv"} (weighted), ``dy`` = ∂total/∂y like ``y``.
    ``objective`` holds the keyword arguments of ``gatys.Objective`` that give the same
    loss for one image.
    """

    def __init__(self, vgg: VGG16, style_img, content_layer="relu2_2", style_layers=STYLE_LAYERS,
                 content_weight=1.0, style_weight=1e5, tv_weight=1e-5, style_layer_weights=None,
                 xp=np, dtype=np.float32):
        self._build(vgg, style_img, training_objective(content_layer, style_layers, style_layer_weights,
                                                       content_weight, style_weight, tv_weight, vgg.pooling),
                    xp, dtype)

    def _build(self, vgg, style_img, objective: dict, xp, dtype):
        """The perceptual loss of ``objective`` on VGG16's training paths
        (``TRAINING_CONV_METHOD``) and the style image's targets."""
        self.objective = dict(objective)
        kwargs = {k: v for k, v in self.objective.items() if k != "pooling"}
        self.loss = PerceptualLoss(vgg, conv_method=TRAINING_CONV_METHOD, **kwargs)
        self.targets = self.loss.style_targets([xp.asarray(np.asarray(style_img, dtype=dtype))])

    @classmethod
    def from_objective(cls, vgg: VGG16, style_img, objective: dict, xp=np, dtype=np.float32):
        """The loss a model records for one style (``TransformerNet.style_settings(name)
        ["objective"]``, whose style layer weights already hold the ``1/C_l²``)."""
        if objective.get("normalization") != losses.JOHNSON or len(objective["content_layers"]) != 1:
            raise ValueError("not a training objective: Johnson's normalisation and one content layer")
        if objective.get("pooling", vgg.pooling) != vgg.pooling:
            raise ValueError(f"the objective pools with {objective['pooling']!r}, the net with {vgg.pooling!r}")
        loss = cls.__new__(cls)
        loss._build(vgg, style_img, objective, xp, dtype)
        return loss

    def __call__(self, y, img):
        yimg = y.transpose(0, 2, 3, 1) / 255.0  # (N, H, W, 3) in [0, 1]
        terms, dimg = self.loss.loss_and_grad(yimg, self.loss.content_targets(img), self.targets)
        dy = dimg.transpose(0, 3, 1, 2) / 255.0  # (N, 3, H, W)
        parts = {"content": terms.content, "style": terms.style, "tv": terms.tv}
        return terms.total, parts, get_xp(dy).ascontiguousarray(dy).astype(y.dtype, copy=False)


def train_step(net: TransformerNet, opt: Adam, loss: TrainingLoss, batch, xp, dtype=np.float32,
               style=None, saturation_weight: float = 0.0):
    """One Adam step on a uint8 batch (B, S, S, 3); returns ``(total, parts)``. ``style``:
    the batch's style (``TransformerNet.style_mix``) for a many-style network. Only the
    parameters the optimiser holds are updated.

    ``saturation_weight`` μ > 0 adds μ·``losses.saturation_penalty`` of the output tanh's
    input to what is minimised (``parts["saturation"]``); ``total`` stays the perceptual
    loss, the model's recorded objective."""
    x = xp.asarray(batch, dtype=dtype)                 # (B, S, S, 3) in [0, 255]
    y, cache = net.forward(xp.ascontiguousarray(x.transpose(0, 3, 1, 2)), style)
    total, parts, dy = loss(y, x / 255.0)
    add = None
    if saturation_weight:
        value, dz = losses.saturation_penalty(net.output_preactivation(cache), SATURATION_BOUND)
        parts = {**parts, "saturation": saturation_weight * value}
        add = {"tanh": dz * dz.dtype.type(saturation_weight)}
    _, grads = net.backward(dy, cache, add=add)
    opt.step({k: g for k, g in grads.items() if k in opt.params})
    return total, parts


def style_schedule(seed: int, step: int, n: int) -> int:
    """Which of ``n`` trained styles the batch of ``step`` (from 0) learns: each round of
    n steps visits every style once, in an order drawn from ``(seed, round)`` (so a
    resumed run continues the same sequence)."""
    if n == 1:
        return 0
    return int(np.random.default_rng([seed, 1, step // n]).permutation(n)[step % n])


def _conditional_norm_keys(net: TransformerNet) -> list:
    """The parameters of the conditional instance norms (each style's γ, β)."""
    return [f"{name}.{k}" for name, layer in net.named_layers()
            if isinstance(layer, ConditionalInstanceNorm2d) for k in layer.params]


def add_styles(base: TransformerNet, names: list, seed: int = 0) -> TransformerNet:
    """A copy of the many-style network ``base`` with ``names`` appended to its styles: the
    convolutions and the existing styles' γ, β copied, each new style's γ, β started at the
    mean of the existing ones."""
    if not base.config.styles:
        raise ValueError("styles can be added only to a many-style model (conditional instance norm)")
    clash = [n for n in names if n in base.config.styles]
    if clash:
        raise ValueError(f"the model already has style {clash[0]!r}")
    cfg = dataclasses.replace(base.config, styles=tuple(base.config.styles) + tuple(names))
    net = TransformerNet(cfg, seed=seed)
    old = base.state_dict()
    S = len(base.config.styles)
    for k, dst in net.state_dict().items():
        src = to_host(old[k])
        if src.shape == dst.shape:
            dst[...] = src
        else:  # a conditional norm's (S + new, C) γ or β
            dst[:S] = src
            dst[S:] = src.mean(axis=0)
    net.meta = dict(base.meta)
    return net


def widening_factor(width: float, base_width: float) -> int:
    """k = width / base_width when it is a whole number ≥ 1 (what ``widen`` can grow a
    network by), else ValueError."""
    k = width / base_width
    if k < 1 or abs(k - round(k)) > 1e-9:
        raise ValueError(f"width {width:g} is not a whole multiple of the network's {base_width:g} "
                         f"(a network can only grow: {base_width:g}, {2 * base_width:g}, {3 * base_width:g} …)")
    return int(round(k))


def widen(base: TransformerNet, width: float, seed: int = 0, noise: float = 0.0) -> TransformerNet:
    """A copy of ``base`` at ``width`` (a whole multiple k of its width) that computes the
    same function (Net2WiderNet: Chen, Goodfellow & Shlens, ICLR 2016): every channel of
    the hidden layers becomes k copies, j ↦ j mod C. A convolution's weight is repeated
    over its output copies, and repeated and divided by k over its input copies (the k
    copies of an input channel carry the same image, so Σ over them of w/k is w); the
    norms' γ, β (and running statistics) are repeated: the copies of a channel have the
    same statistics, so they normalise alike.

    Copies with equal incoming weights would get equal updates for ever (Adam divides out
    the split of the outgoing ones), so ``noise`` > 0 adds N(0, (noise · std w)²) to each
    widened convolution's weight, drawn from ``seed``: the function then changes by about
    that fraction."""
    k = widening_factor(width, base.config.width)
    dtype = next(iter(base.params.values())).dtype
    net = TransformerNet(dataclasses.replace(base.config, width=width), seed=seed, dtype=dtype)
    in_axis = {f"{name}.weight": 0 if isinstance(layer, ConvTranspose2d) else 1
               for name, layer in base.named_layers() if isinstance(layer, (Conv2d, ConvTranspose2d))}
    old = base.state_dict()
    rng = np.random.default_rng(seed)
    for key, dst in net.state_dict().items():
        src = np.asarray(to_host(old[key]), dtype=np.float64)
        for axis, (n_new, n_old) in enumerate(zip(dst.shape, src.shape)):
            if n_new == n_old:
                continue
            if n_new != k * n_old:
                raise ValueError(f"widen: {key} has {n_old} channels on axis {axis}, the wider network "
                                 f"{n_new}, not {k}×")
            src = np.concatenate([src] * k, axis=axis)
            if in_axis.get(key) == axis:
                src = src / k
        if noise and key in in_axis and src.shape != old[key].shape:
            src = src + rng.standard_normal(src.shape) * (noise * src.std())
        dst[...] = src
    net.meta = dict(base.meta)
    return net


# --------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, net: TransformerNet, opt: Adam, sampler: BatchSampler, step: int,
                    cfg: TrainConfig, extra: dict | None = None):
    """Model + Adam + sampler state + step + config, atomically (HDF5 via save_model)."""
    st = opt.state_dict()
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    state.update({f"adam.{k}": v for k, v in st.items() if k[:2] in ("m.", "v.")})
    config = {"kind": CHECKPOINT_KIND, "train": cfg.to_json(),
              "model": {"kind": MODEL_KIND, **net.config.to_dict()}}
    meta = {"step": int(step), "sampler": sampler.state(), "seed": cfg.seed,
            "adam": {k: st[k] for k in ("t", "lr", "beta1", "beta2", "eps")}, **(extra or {})}
    return save_model(path, state, config, meta=meta)


def read_checkpoint(path):
    """``(cfg, net, adam_state, meta)`` from a checkpoint; ``ModelFileError`` if it is not one."""
    state, config, meta = load_model(path)
    if config.get("kind") != CHECKPOINT_KIND:
        raise ModelFileError(f"{path} is not a training checkpoint (kind={config.get('kind')!r})")
    try:
        cfg = TrainConfig.from_json(config["train"])
        model_state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
        net = TransformerNet.from_state(model_state, config["model"], source=str(path))
        adam = {k[5:]: v for k, v in state.items() if k.startswith("adam.")}
        adam.update(meta["adam"])
        int(meta["step"]), meta["sampler"]["epoch"], meta["sampler"]["index"]
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"{path} is a malformed training checkpoint ({e.__class__.__name__}: {e})") from None
    return cfg, net, adam, meta


def style_settings(cfg: TrainConfig, k: int) -> dict:
    """How the k-th style image of ``cfg`` is trained (``TransformerNet.style_settings``)."""
    path = cfg.style_paths()[k]
    return {"image": Path(path).name, "image_sha256": sha256_file(path),
            "style_size": cfg.style_size or cfg.image_size,
            "objective": training_objective(cfg.content_layer, cfg.style_layers,
                                            cfg.style_layer_weights or None, cfg.content_weight,
                                            cfg.style_weight_of(k), cfg.tv_weight, cfg.pooling)}


INPUT_RECORDS = ("style_sha256", "dataset_fingerprint", "input_changes", *SCHEDULE_KEYS.values())


def model_meta(cfg: TrainConfig, step: int, base_meta: dict | None = None, checkpoint_meta=None) -> dict:
    """What a model file records about its training; a many-style model records each
    style's ``style_settings`` (those of ``base_meta``'s styles kept). ``checkpoint_meta``:
    the inputs it was trained on and any change of them (``INPUT_RECORDS``), under "inputs"."""
    inputs = {k: checkpoint_meta[k] for k in INPUT_RECORDS if k in (checkpoint_meta or {})}
    extra = {"inputs": inputs} if inputs else {}
    if not cfg.multi_style:
        return {"style": Path(cfg.style).name, "trained_with": "minnst.train_fast",
                "iterations": int(step), "train": cfg.to_json(), **extra}
    styles = dict((base_meta or {}).get("styles", {}))
    for k, path in enumerate(cfg.style_paths()):
        styles[Path(path).stem] = style_settings(cfg, k)
    return {"styles": styles, "trained_with": "minnst.train_fast", "iterations": int(step),
            "train": cfg.to_json(), **extra}


def export(checkpoint, output, float16: bool = False) -> Path:
    """Write the model of a training checkpoint as a model file (optionally float16)."""
    cfg, net, _, meta = read_checkpoint(checkpoint)
    return net.save(output, meta=model_meta(cfg, meta["step"], meta.get("base_meta"), meta),
                    dtype=np.float16 if float16 else None)


# --------------------------------------------------------------------------- outputs

def read_log(path) -> list[dict]:
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a torn last line from a killed run
    except FileNotFoundError:
        pass
    return out


def truncate_log(path, step: int):
    """Keep the log lines of steps ≤ ``step`` (what a resumed run continues from)."""
    kept = [r for r in read_log(path) if r.get("step", 0) <= step]
    path = Path(path)
    if path.exists():
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def write_samples(net: TransformerNet, photos: list, path, styles=(None,)):
    """Stylise each photo in each of ``styles`` (eval mode) and save the results side by
    side as one PNG."""
    outs = [net.stylize(p, style) for style in styles for p in photos]
    h = max(o.shape[0] for o in outs)
    row = np.concatenate([np.pad(o, ((0, h - o.shape[0]), (0, 0), (0, 0)), constant_values=1.0)
                          for o in outs], axis=1)
    images.save_image(path, row)


# --------------------------------------------------------------------------- training

class _LazyAppend:
    """A text file opened for appending at its first write: a run that fails before its
    first step leaves no empty log."""

    def __init__(self, path):
        self.path, self.f = path, None

    def write(self, text: str):
        if self.f is None:
            self.f = open(self.path, "a", encoding="utf-8")
        self.f.write(text)

    def flush(self):
        if self.f is not None:
            self.f.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()


class _StopFlag:
    """SIGINT/SIGTERM set a flag that the loop checks between steps, so a checkpoint never
    catches a half-applied Adam update; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _sample_photos(cfg: TrainConfig, dataset) -> list:
    if cfg.samples:
        return [images.load_image(p, size=cfg.image_size) for p in cfg.samples]
    n = min(2, len(dataset))
    return [a.astype(np.float32) / 255.0 for a in dataset.get_batch(list(range(n)))]


def dataset_fingerprint(dataset, samples: int = 16) -> str:
    """sha256 of the dataset's size and of ``samples`` images at evenly spaced indices (as
    training sees them): a changed folder or file is caught without reading all of it."""
    n = len(dataset)
    idx = sorted({int(i) for i in np.linspace(0, n - 1, min(samples, n))})
    h = hashlib.sha256(f"{n}".encode())
    for i in idx:
        h.update(np.ascontiguousarray(dataset.get_batch([i])).tobytes())
    return h.hexdigest()


class InputsChangedError(ValueError):
    """A resumed run's style images or dataset are not the checkpoint's."""


def check_inputs_unchanged(meta: dict, style_sha256: list, fingerprint: str, allow: bool) -> dict:
    """On resume: the style images and the dataset must be those the checkpoint was trained
    on (sha256 / ``dataset_fingerprint``), else ValueError — unless ``allow``, and then the
    change is recorded (``input_changes``). Checkpoints from before these records pass."""
    changes = list(meta.get("input_changes", []))
    for what, old, new in (("style images", meta.get("style_sha256"), style_sha256),
                           ("dataset", meta.get("dataset_fingerprint"), fingerprint)):
        if old is not None and old != new:
            if not allow:
                raise InputsChangedError(f"the {what} differ from those the checkpoint was trained on "
                                 f"(sha256 {str(old)[:12]}… → {str(new)[:12]}…); resuming would mix them")
            changes.append({"step": int(meta["step"]), "what": what, "before": old, "after": new})
    return {"input_changes": changes} if changes else {}


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, vgg: VGG16 | None = None,
          stop_after: int | None = None, log=print, allow_changed_inputs: bool = False):
    """Run (or resume) training to ``cfg.iterations``; returns the trained network.

    ``vgg``: a loaded loss network (default: ``VGG16.load(pooling=cfg.pooling)``).
    ``stop_after``: stop (checkpointing) after this many steps of this call, as if killed
    (tests use it to prove exact resume). Raises ``KeyboardInterrupt`` after saving a
    checkpoint when interrupted. ``allow_changed_inputs``: resume even if the style images
    or the dataset changed since the checkpoint (the checkpoint then records the change).
    """
    cfg = dataclasses.replace(cfg)  # the resumed settings go into a copy, not the caller's
    run_dir = cfg.resolved_run_dir()
    ckpt_path = run_dir / "checkpoint.h5"
    log_path = run_dir / "log.jsonl"
    if resume:
        if not ckpt_path.exists():
            raise ValueError(f"cannot resume: no checkpoint at {ckpt_path}")
        saved_cfg, net, adam_state, meta = read_checkpoint(ckpt_path)
        for f in fields(TrainConfig):
            if f.name not in RESUMABLE_OVERRIDES and f.name != "run_dir":
                setattr(cfg, f.name, getattr(saved_cfg, f.name))
    cfg.check()
    widened = resume and cfg.width != saved_cfg.width
    if widened:
        if cfg.base_model:
            raise ConfigError("width", "an --add-style run trains only γ, β: its width is the base model's")
        net = widen(net, cfg.width, seed=cfg.seed, noise=WIDEN_NOISE)
    if resume:
        step = int(meta["step"])
        truncate_log(log_path, step)
        log(f"resuming {ckpt_path} at step {step} of {cfg.iterations}")
    else:
        if ckpt_path.exists() and not overwrite:
            raise ValueError(f"{ckpt_path} exists: resume it or overwrite it (a new run)")
        if cfg.base_model:  # the base model fixes the architecture; its convolutions stay frozen
            base = TransformerNet.load(cfg.base_model)
            cfg.width, cfg.norm, cfg.upsample = base.config.width, base.config.norm, base.config.upsample
            net = add_styles(base, [Path(p).stem for p in cfg.style_paths()], seed=cfg.seed)
        else:
            net = TransformerNet(cfg.model_config(), seed=cfg.seed)
        adam_state, meta, step = None, None, 0
        if log_path.exists():
            log_path.unlink()
    base_meta = (meta or {}).get("base_meta") if resume else (
        TransformerNet.load(cfg.base_model).meta if cfg.base_model else None)

    device = select_device(cfg.device)
    xp, dtype = device.xp, np.float32
    dataset = open_dataset(cfg.dataset, cfg.image_size)
    if cfg.batch_size > len(dataset):
        raise ConfigError("batch_size", f"batch size {cfg.batch_size} is larger than the dataset "
                                        f"({len(dataset)} images): use at most {len(dataset)}")
    if vgg is None:
        vgg = VGG16.load(pooling=cfg.pooling, xp=xp)
    paths = cfg.style_paths()
    trained = [net.styles.index(Path(p).stem) for p in paths] if cfg.multi_style else [None]
    loss_of = []  # one training loss per trained style
    for k, path in enumerate(paths):
        style_img = images.load_image(path, size=cfg.style_size or cfg.image_size)
        loss_of.append(TrainingLoss(vgg, style_img, cfg.content_layer, cfg.style_layers, cfg.content_weight,
                                    cfg.style_weight_of(k), cfg.tv_weight, cfg.style_layer_weights or None,
                                    xp, dtype))
    net.to(xp, dtype)
    net.train()
    params = net.params
    if cfg.base_model:
        params = {k: net.params[k] for k in _conditional_norm_keys(net)}
    opt = Adam(params, lr=cfg.lr)
    sampler = BatchSampler(len(dataset), cfg.batch_size, seed=cfg.seed)
    style_sha256 = [sha256_file(p) for p in paths]
    fingerprint = dataset_fingerprint(dataset)
    recorded = {"style_sha256": style_sha256, "dataset_fingerprint": fingerprint}
    if resume:
        recorded.update(check_inputs_unchanged(meta, style_sha256, fingerprint, allow_changed_inputs))
        for name in SCHEDULED:
            key = SCHEDULE_KEYS[name]
            schedule = meta.get(key, [[0, _schedule_value(getattr(saved_cfg, name))]])
            if _schedule_value(getattr(cfg, name)) != schedule[-1][1]:
                schedule = schedule + [[step, _schedule_value(getattr(cfg, name))]]
                log(f"{name.replace('_', ' ')} {schedule[-2][1]} → {schedule[-1][1]} from step {step}")
            if len(schedule) > 1:
                recorded[key] = schedule
        if widened:
            log(f"the network widened ×{cfg.width / saved_cfg.width:g} computing the same function "
                f"(noise {WIDEN_NOISE:g}); Adam starts afresh")
        else:
            opt.load_state_dict(adam_state)
            opt.lr = cfg.lr  # the state records the rate it ran at; a resume may change it
        sampler.load_state(meta["sampler"])
    photos = _sample_photos(cfg, dataset) if cfg.sample_every else []
    sample_styles = [net.styles[i] for i in trained] if cfg.multi_style else [None]
    if cfg.multi_style:
        photos = photos[:1]  # one photo in every style
    make_dir(run_dir)
    write_text_atomic(run_dir / "config.json", json.dumps(cfg.to_json(), indent=1) + "\n")

    last_plot = [-math.inf]

    def checkpoint(final=False):
        extra = {"skipped_images": getattr(dataset, "skipped", 0), **recorded}
        if base_meta is not None:
            extra["base_meta"] = base_meta
        save_checkpoint(ckpt_path, net, opt, sampler, step, cfg, extra=extra)
        if final or time.monotonic() - last_plot[0] > PLOT_SECONDS:  # a plot costs ~1 s
            plot_losses(read_log(log_path), run_dir / "loss.png", x="step", window=PLOT_WINDOW)
            last_plot[0] = time.monotonic()

    from tqdm import tqdm

    bar = tqdm(total=cfg.iterations, initial=step, unit="it", disable=cfg.quiet, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    last_ckpt, t0, done = time.monotonic(), time.monotonic(), 0
    try:
        with _StopFlag() as stop, _LazyAppend(log_path) as logf:
            while step < cfg.iterations:
                if stop.requested or (stop_after is not None and done >= stop_after):
                    break
                ts = time.monotonic()
                batch = dataset.get_batch(sampler.next())
                if cfg.crop_size:  # offsets from the sampler state: reproducible, resumable
                    batch = random_crops(batch, cfg.crop_size,
                                         np.random.default_rng([cfg.seed, sampler.epoch, sampler.index]))
                k = style_schedule(cfg.seed, step, len(trained))
                mix = None if trained[k] is None else net.style_mix(net.styles[trained[k]], len(batch))
                total, parts = train_step(net, opt, loss_of[k], batch, xp, dtype, style=mix,
                                          saturation_weight=cfg.saturation_weight)
                if mix is not None:
                    parts = {**parts, "style_name": net.styles[trained[k]]}
                step, done = step + 1, done + 1
                dt = time.monotonic() - ts
                if not math.isfinite(total):
                    raise FloatingPointError(f"the loss became {total} at step {step}; try a lower --lr")
                logf.write(json.dumps({"step": step, "loss": total, **parts, "step_s": round(dt, 4),
                                       "time": round(time.time(), 1)}) + "\n")
                logf.flush()
                bar.update(1)
                bar.set_postfix_str(f"loss {total:.4g} (c {parts['content']:.3g} s {parts['style']:.3g} "
                                    f"tv {parts['tv']:.2g}) {cfg.batch_size / dt:.2f} img/s", refresh=False)
                if cfg.sample_every and step % cfg.sample_every == 0:
                    write_samples(net, photos, run_dir / "samples" / f"step_{step:06d}.png", sample_styles)
                if step % cfg.checkpoint_every == 0 or \
                        time.monotonic() - last_ckpt > 60 * cfg.checkpoint_minutes:
                    checkpoint()
                    last_ckpt = time.monotonic()
            interrupted = stop.requested
        checkpoint(final=True)
    finally:
        bar.close()
    if interrupted:
        log(f"interrupted at step {step}; checkpoint saved to {ckpt_path} (continue with --resume)")
        raise KeyboardInterrupt
    if step >= cfg.iterations:
        net.save(cfg.output, meta=model_meta(cfg, step, base_meta, recorded))
        log(f"trained {step} iterations in {time.monotonic() - t0:.0f} s; model saved to {cfg.output}")
    return net


# --------------------------------------------------------------------------- command line

MAX_WEIGHT = 1e15  # a loss weight beyond this overflows the float32 loss: refused up front


def _parser() -> ArgumentParser:
    d = TrainConfig()
    # argparse.SUPPRESS as the default: only the options given on the command line appear
    p = ArgumentParser(prog="python -m minnst.train_fast", argument_default=argparse.SUPPRESS,
                       description="Train a feed-forward style transfer network (Johnson et al. 2016) "
                                   "on a folder of photos, with checkpoints and exact --resume.")
    p.add_argument("--style", nargs="+", metavar="IMAGE",
                   help="style image; several images (or a folder of them) train one network for many "
                        "styles (conditional instance norm)")
    p.add_argument("--add-style", nargs="+", metavar="IMAGE",
                   help="with --model: add these styles to a many-style model, training only their γ, β")
    p.add_argument("--model", metavar="MODEL.h5", help="the many-style model that --add-style extends")
    p.add_argument("--dataset", metavar="DIR_OR_H5", help="folder of training photos, or an .h5 from minnst.make_dataset")
    p.add_argument("--output", metavar="MODEL.h5", help="model file (.h5) written at the end (and by --export)")
    p.add_argument("--run-dir", metavar="DIR", help="logs, samples and the checkpoint (default runs/<output stem>)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in the run directory")
    p.add_argument("--overwrite", action="store_true", help="start again even if a checkpoint exists")
    p.add_argument("--allow-changed-inputs", action="store_true",
                   help="with --resume: continue even though the style images or the dataset changed "
                        "since the checkpoint (recorded in it); refused otherwise")
    p.add_argument("--export", metavar="CHECKPOINT", help="write --output from this checkpoint and exit")
    p.add_argument("--float16", action="store_true", help="with --export: store the weights as float16")
    g = p.add_argument_group("training (fixed once a run has started, except where said)")
    g.add_argument("--image-size", type=whole(images.MIN_SIZE, images.MAX_SIZE), metavar="N",
                   help=f"photos are resized and centre-cropped to this ({d.image_size})")
    g.add_argument("--crop-size", type=whole(0, images.MAX_SIZE), metavar="N",
                   help="then train on a random window of this size (0: whole photo); a --resume may "
                        "change it (a crop-size schedule, recorded in the checkpoint)")
    g.add_argument("--batch-size", type=whole(1, 4096), metavar="N", help=f"({d.batch_size})")
    g.add_argument("--lr", type=number(0, 1, lo_open=True), metavar="X",
                   help=f"Adam learning rate, in (0, 1] ({d.lr}); a --resume may change it (recorded)")
    g.add_argument("--content-weight", type=number(0, MAX_WEIGHT), metavar="X", help=f"({d.content_weight})")
    g.add_argument("--style-weight", type=number(0, MAX_WEIGHT), nargs="+", metavar="X",
                   help=f"({d.style_weight}; or one per style image); a --resume may change them, "
                        f"fine-tuning the model (recorded in the checkpoint)")
    g.add_argument("--tv-weight", type=number(0, MAX_WEIGHT), metavar="X", help=f"({d.tv_weight})")
    g.add_argument("--saturation-weight", type=number(0, MAX_WEIGHT), metavar="X",
                   help=f"penalty on the output tanh's input beyond ±{SATURATION_BOUND:g}, where its gradient "
                        f"vanishes and pixels stick at white or black ({d.saturation_weight}; 0 = off); "
                        f"a --resume may change it (recorded)")
    g.add_argument("--content-layer", metavar="LAYER", help=f"({d.content_layer})")
    g.add_argument("--style-layers", nargs="+", metavar="LAYER", help=f"({' '.join(d.style_layers)})")
    g.add_argument("--style-layer-weights", nargs="+", type=number(0), metavar="X",
                   help="one per style layer (all 1)")
    g.add_argument("--style-size", type=whole(images.MIN_SIZE, images.MAX_SIZE), metavar="N",
                   help="longest side of the style image (the image size)")
    g.add_argument("--pooling", choices=("avg", "max"), help=f"loss network pooling ({d.pooling})")
    g.add_argument("--width", type=number(0, 8, lo_open=True), metavar="X",
                   help=f"channel multiplier of the network, in (0, 8] ({d.width}); a --resume may raise "
                        f"it to a whole multiple: the network grows, computing the same function, and Adam "
                        f"starts afresh (recorded)")
    g.add_argument("--norm", choices=("instance", "batch"), help=f"({d.norm})")
    g.add_argument("--upsample", choices=("nearest", "transpose"), help=f"({d.upsample})")
    g.add_argument("--seed", type=whole(0, 2**63 - 1), metavar="N", help=f"({d.seed})")
    g = p.add_argument_group("run (may change on --resume)")
    g.add_argument("--iterations", type=whole(1, 10**9), metavar="N", help=f"({d.iterations})")
    g.add_argument("--device", choices=("cpu", "gpu", "auto"), help=f"({d.device})")
    g.add_argument("--checkpoint-every", type=whole(1), metavar="N", help=f"iterations ({d.checkpoint_every})")
    g.add_argument("--checkpoint-minutes", type=number(0, lo_open=True), metavar="X",
                   help=f"({d.checkpoint_minutes})")
    g.add_argument("--sample-every", type=whole(0), metavar="N", help=f"iterations, 0 = off ({d.sample_every})")
    g.add_argument("--samples", nargs="+", metavar="PHOTO", help="photos for the samples (first 2 of the dataset)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


MODEL_SUFFIXES = (".h5", ".hdf5")


def _check_model_output(path, flag: str = "--output") -> None:
    if Path(path).suffix.lower() not in MODEL_SUFFIXES:
        raise UsageError(f"{flag} is the model file to write: give it a .h5 name, not {path}")
    check_writable(path)


def _check_image(path, flag: str, size: int | None = None, min_side: int = images.MIN_SIZE) -> None:
    """``path`` decodes, and resized to ``size`` (longest side) keeps ``min_side`` pixels
    (what VGG16 needs) on its shorter side."""
    try:
        h, w = images.load_image(path).shape[:2]
    except images.ImageError as e:
        raise UsageError(f"{flag}: {e}") from None
    if size is None:
        return
    if min(images.fit_longest(h, w, size)) < min_side:
        need = math.ceil(min_side * max(h, w) / min(h, w))
        raise UsageError(f"{flag}: {path} is {w}×{h}; at {size} px its shorter side falls under {min_side} px "
                         f"(what VGG16 needs for these layers): use a --style-size of at least "
                         f"{need}")


def _check_training_memory(cfg: TrainConfig, net_config: TransformerConfig, device: str) -> int:
    """Refuse (``UsageError``) a step whose estimate does not fit, naming a --batch-size
    (or, at batch 1, a --crop-size) that fits; else return the estimate in bytes."""
    size = cfg.crop_size or cfg.image_size

    def estimate(batch=cfg.batch_size, crop=size):
        return estimate_training_memory(net_config, batch, crop, cfg.content_layer, cfg.style_layers, device)

    est = estimate()
    free = gpu_free_memory() if device == "gpu" else None
    for where, part, have in memory_checks(device, available_memory(), free):
        if have is None or est[part] <= have:
            continue
        batch = largest_fitting(lambda b: estimate(batch=b)[part], 1, cfg.batch_size - 1, have)
        crop = largest_fitting(lambda s: estimate(batch=1, crop=s)[part],
                               vgg_min_side([cfg.content_layer, *cfg.style_layers]), size - 1, have, step=4)
        hint = (f"try --batch-size {batch}" if batch else
                f"try --batch-size 1 --crop-size {crop}" if crop else "this machine is too small")
        raise UsageError(f"a training step on {cfg.batch_size} crops of {size}×{size} needs about "
                         f"{format_bytes(est[part])} of {where} memory but only {format_bytes(have)} "
                         f"is available: {hint}")
    return est["total"]


def _check_run(cfg: TrainConfig, base_model: TransformerNet | None, resumed: dict | None = None,
               allow_changed: bool = False) -> int:
    """Everything a run reads and writes, before any training: the settings, the style
    images and sample photos, the dataset against the batch size, the layers, the outputs,
    the base model of --add-style, on resume the inputs against the checkpoint's
    (``resumed``: its metadata), and the memory of one step (returned, in bytes)."""
    cfg.check()
    try:
        check_layers(cfg.style_layers, "style layers")
    except ValueError as e:
        raise ConfigError("style_layers", str(e)) from None
    _check_model_output(cfg.output)
    run_dir = cfg.resolved_run_dir()
    for name in ("checkpoint.h5", "log.jsonl", "config.json", "loss.png"):
        check_writable(run_dir / name)
    field = "crop_size" if cfg.crop_size else "image_size"
    size = cfg.crop_size or cfg.image_size
    if size % 4:  # two stride-2 steps and two ×2 steps: the output is 4·⌈size/4⌉ pixels
        raise ConfigError(field, f"{field.replace('_', ' ')} must be a multiple of 4 (the network's "
                                 f"output is then the input's size), got {size}: try {size - size % 4}")
    need = vgg_min_side([cfg.content_layer, *cfg.style_layers])
    if size < need:
        layers = ", ".join([cfg.content_layer, *cfg.style_layers])
        raise ConfigError(field, f"{field.replace('_', ' ')} must be at least {need} for the layers {layers} "
                                 f"(or use layers before pool5)")
    for path in cfg.style_paths():
        _check_image(path, "--style", cfg.style_size or cfg.image_size, need)
    for path in cfg.samples:
        _check_image(path, "--samples")
    dataset = open_dataset(cfg.dataset, cfg.image_size)
    try:
        n = len(dataset)
        if resumed is not None:
            try:
                check_inputs_unchanged(resumed, [sha256_file(p) for p in cfg.style_paths()],
                                       dataset_fingerprint(dataset), allow_changed)
            except InputsChangedError as e:
                raise UsageError(f"{e} (pass --allow-changed-inputs to resume anyway)") from None
    finally:
        if hasattr(dataset, "close"):
            dataset.close()
    if cfg.batch_size > n:
        raise ConfigError("batch_size", f"batch size {cfg.batch_size} is larger than the dataset "
                                        f"({n} images): use at most {n}")
    if base_model is not None:
        if not base_model.config.styles:
            raise UsageError(f"--model {cfg.base_model} has one style; --add-style needs a many-style model "
                             f"(trained with several --style images)")
        clash = [Path(p).stem for p in cfg.style_paths() if Path(p).stem in base_model.config.styles]
        if clash:
            raise UsageError(f"--add-style: the model already has the style {clash[0]!r}")
    device = select_device(cfg.device)
    net_config = cfg.model_config() if base_model is None else dataclasses.replace(
        base_model.config, styles=tuple(base_model.config.styles) + tuple(Path(p).stem for p in cfg.style_paths()))
    return _check_training_memory(cfg, net_config, device.name)


def _main(argv=None):
    p = _parser()
    args = vars(p.parse_args(argv))
    if "export" in args:
        if "output" not in args:
            raise UsageError("--export needs --output MODEL.h5")
        _check_model_output(args["output"])
        path = export(args["export"], args["output"], float16=args.get("float16", False))
        print(f"wrote {path}")
        return 0
    resume, overwrite = args.pop("resume", False), args.pop("overwrite", False)
    allow_changed = args.pop("allow_changed_inputs", False)
    args.pop("float16", None)
    if "add_style" in args:
        if "model" not in args or "style" in args:
            raise UsageError("--add-style needs --model MODEL.h5 (and no --style)")
        args["style"], args["base_model"] = args.pop("add_style"), args.pop("model")
    elif "model" in args:
        raise UsageError("--model goes with --add-style")
    for k in ("style", "style_weight"):  # one value: as before; several: a tuple
        if k in args:
            args[k] = args[k][0] if len(args[k]) == 1 else tuple(args[k])
    for k in ("style_layers", "style_layer_weights", "samples"):
        if k in args:
            args[k] = tuple(args[k])
    if resume:
        cfg = TrainConfig(**{k: v for k, v in args.items() if k in RESUMABLE_OVERRIDES or k == "run_dir"})
        ckpt = cfg.resolved_run_dir() / "checkpoint.h5"
        if not ckpt.exists():
            raise UsageError(f"--resume: no checkpoint at {ckpt}")
        saved, _, _, resumed = read_checkpoint(ckpt)
        fixed = [k for k in args if k not in RESUMABLE_OVERRIDES and k != "run_dir"
                 and args[k] != getattr(saved, k)]
        if fixed:
            raise UsageError(f"--resume cannot change {', '.join('--' + k.replace('_', '-') for k in fixed)} "
                             f"(the checkpoint fixes them); start a new run instead")
        if "width" in args:  # a network can grow (``widen``), not shrink
            try:
                widening_factor(args["width"], saved.width)
            except ValueError as e:
                raise UsageError(f"--resume --width: {e}") from None
        for k in RESUMABLE_OVERRIDES:  # keep the checkpoint's unless given now
            if k not in args:
                setattr(cfg, k, getattr(saved, k))
        # what train() will run: the checkpoint's settings with this command's run settings
        effective = dataclasses.replace(saved, **{k: getattr(cfg, k) for k in (*RESUMABLE_OVERRIDES, "run_dir")})
    else:
        for k in ("style", "dataset"):
            if k not in args:
                raise UsageError(f"--{k} is required (or --resume, or --export)")
        cfg = effective = TrainConfig(**args)
        resumed = None
        ckpt = cfg.resolved_run_dir() / "checkpoint.h5"
        if ckpt.exists() and not overwrite:
            raise UsageError(f"{ckpt} exists: pass --resume to continue it or --overwrite to start again")
    base_model = TransformerNet.load(effective.base_model) if effective.base_model and not resume else None
    need = _check_run(effective, base_model, resumed, allow_changed)
    avail = available_memory()
    if avail is not None and 2 * need < avail:
        keep_freed_memory()  # faster allocations, but a fragmented heap: only with room to spare
    try:
        train(cfg, resume=resume, overwrite=overwrite, allow_changed_inputs=allow_changed)
    except FloatingPointError as e:
        raise UsageError(str(e)) from None
    except InputsChangedError as e:
        raise UsageError(f"{e} (pass --allow-changed-inputs to resume anyway)") from None
    return 0


def main(argv=None) -> int:
    return run(_main, argv, prog="train_fast")


if __name__ == "__main__":
    sys.exit(main())
