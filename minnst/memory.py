"""How much memory a run needs, and how much this machine has: the pre-flight checks.

``estimate_gatys_memory`` models one Gatys stylisation from the VGG16 layer table
(``vgg.layer_shapes``); ``estimate_stylize_memory`` one forward pass of the transformer
and ``estimate_training_memory`` one training step (transformer + VGG16 loss), both from
the transformer's own layers (``transformer_layer_shapes``); ``largest_fitting`` searches
the largest size (or batch) whose estimate fits. ``available_memory`` and
``gpu_free_memory`` say what there is.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .layers.base import Residual, Sequential
from .layers.conv import (IM2COL_MAX_BYTES, SCATTER_BAND_BYTES, THIN_BAND_BYTES, WINOGRAD_TILES,
                          Conv2d, ConvTranspose2d, auto_method)
from .layers.normalization import BatchNorm2d, ConditionalInstanceNorm2d, InstanceNorm2d
from .layers.resampling import Upsample
from .layers.upconv import folds_into_conv
from .parallel import MIN_TASKS, num_workers
from .transformer import TransformerConfig, TransformerNet
from .tiling import spans
from .perceptual import TRAINING_CONV_METHOD
from .vgg import LAYER_NAMES, expected_shapes, layer_shapes, parameter_count

_OVERHEAD = 16 * 2**20  # small arrays, Python objects

# The Gatys model is of the peak resident memory (RSS) of ``python -m minnst.gatys``,
# measured from outside the process (/usr/bin/time -v) on runs at 1024×768 to 4096×3072,
# whole and tiled (docs/gatys.md, "Memory and time": the table, estimate against peak
# RSS). Its parts, beyond the network's weights:
#
# The interpreter, NumPy, SciPy, OpenBLAS's buffers and the worker pool, before a run:
# 115 MB measured (RSS with VGG16 loaded and warm, less the weights and their transforms).
_RUNTIME = 128 * 2**20
# The pastiche's forward + backward: _KEPT_FACTOR times the ReLU outputs the forward keeps
# for the backward (1064 B/px up to relu5_1 in float32), whole or of the largest tile's
# crop. It covers the features handed to the losses, their gradients and the backward's
# layer-sized transients (a tile adds the whole-crop ∂L/∂F it scatters its own positions
# into). On the CPU, arrays under glibc's largest mmap threshold (32 MB: above it each
# array is its own mapping, returned when freed) come from the heaps, one arena per worker
# thread, and leave them fragmented: _HEAP_FACTOR more per byte of the kept outputs under
# _HEAP_ARRAY_BYTES (the deep layers; most of a small tile's crop). Measured, RSS less the
# other parts over the kept outputs: 1.81 to 2.00 where the small arrays are 1% of them
# (whole 2048×1536, tiles of 1024), 2.16 at 10% (whole 1024×768), 2.18 to 2.48 at 28%
# (tiles of 512); the peak grows over the first evaluations (3rd to 11th: +4% in tiles of
# 512, +1.5% whole at 2048), which the factors leave room for.
_KEPT_FACTOR = 2.2
_HEAP_FACTOR = 0.8
_HEAP_FACTOR_TILED = 2.0
_HEAP_ARRAY_BYTES = 32 * 2**20
# With ``backend.keep_freed_memory()`` in force (the CLI's choice when memory is plentiful)
# glibc's mmap threshold is 1 GiB, so the outputs from _HEAP_ARRAY_BYTES up to that come
# from the heaps too, and fragment them when evaluated whole: _KEEP_FREED_FACTOR more per
# byte of those (measured over the peak without it: 0.69 at 1024×768, 0.64 at 2048×1536;
# the other parts' margin covers the rest). Tiled, nothing more: in tiles of 512 at
# 2048×1536 and 4096×3072 the estimate without it was 12% and 10% above the peak with it.
_KEEP_FREED_FACTOR = 0.5
_KEEP_FREED_ARRAY_BYTES = 2**30  # backend.keep_freed_memory's mmap threshold
_STYLE_FACTOR = 1.6  # a style image's forward only (its Gram targets), times its kept outputs
# Image-sized float arrays a scale keeps through an evaluation: the start image, the best
# one, the one evaluated, the photo at the scale's size, the gradient.
_IMAGE_ARRAYS = 5
# scipy's L-BFGS-B (``optim.lbfgs``, scipy 1.17, n = 3·H·W values), in float64 vectors of
# n besides the workspace's 2m + 5 (its m correction pairs; 5 more vectors): the bounds as
# our list of n references to one pair (1), scipy's (2, n) array of them and its lower
# and upper arrays (4); iwa and nbd, 4n ints (2); the start vector as we pass it, clipped
# by scipy and as its iterate x (3); scipy's copies of x (its ScalarFunction's two, the
# memoised one, the one each call receives: 4); the gradient as we return it, the previous
# one it keeps, and its float64 copy (3). 17 in all, measured with tracemalloc. (The
# workspace is allocated zeroed, so its pages become resident as the iterations first
# write them: measured, i iterations write i − 1 pairs (the last one's is never stored);
# the model counts min(m, i).)
_LBFGS_EXTRA_VECTORS = 17
_ADAM_IMAGES = 4  # projected Adam beside the image arrays: m, v and its update's two temporaries


def _kept_bytes(h: int, w: int, upto: str, itemsize: int, below: float = math.inf, above: float = 0) -> int:
    """The ReLU outputs a forward up to ``upto`` keeps for its backward, on an h × w image:
    their bytes, counting only the outputs of at least ``above`` and fewer than ``below`` bytes."""
    sizes = [c * a * b * itemsize for name, c, a, b in layer_shapes(h, w, upto) if name.startswith("relu")]
    return sum(x for x in sizes if above <= x < below)


def _network_bytes(h: int, w: int, upto: str, itemsize: int, device: str, tiled: bool,
                   keep_freed: bool = False) -> float:
    """A forward + backward on an h × w image (or a tile's crop): ``_KEPT_FACTOR`` × the
    kept outputs, plus on the CPU ``_HEAP_FACTOR`` (tiled: ``_HEAP_FACTOR_TILED``) × those
    under ``_HEAP_ARRAY_BYTES`` and, whole with ``keep_freed``, ``_KEEP_FREED_FACTOR`` ×
    those from there up to ``_KEEP_FREED_ARRAY_BYTES``."""
    out = _KEPT_FACTOR * _kept_bytes(h, w, upto, itemsize)
    if device == "cpu":
        heap = _HEAP_FACTOR_TILED if tiled else _HEAP_FACTOR
        out += heap * _kept_bytes(h, w, upto, itemsize, below=_HEAP_ARRAY_BYTES)
        if keep_freed and not tiled:
            out += _KEEP_FREED_FACTOR * _kept_bytes(h, w, upto, itemsize, below=_KEEP_FREED_ARRAY_BYTES,
                                                    above=_HEAP_ARRAY_BYTES)
    return out


def largest_crop(h: int, w: int, tile: int | None, layers) -> tuple[int, int]:
    """The largest piece of an h × w image one forward sees: the whole image, or with
    ``tile`` the longest crop of each axis (``tiling.spans`` for ``layers``)."""
    if tile is None:
        return h, w
    return tuple(max(s.crop_stop - s.crop_start for s in spans(n, tile, layers)) for n in (h, w))


def lbfgs_host_bytes(n: int, memory: int, iterations: int | None = None) -> int:
    """Resident host bytes of scipy's L-BFGS-B on n float64 values with ``memory``
    correction pairs, as ``optim.lbfgs`` drives it: (2p + 5 + 17) vectors of 8n bytes,
    p = min(memory, iterations) pairs (an iteration writes at most one new pair; the
    workspace's unwritten pages are never resident)."""
    pairs = memory if iterations is None else min(memory, iterations)
    return (2 * pairs + 5 + _LBFGS_EXTRA_VECTORS) * n * 8


def estimate_gatys_memory(h: int, w: int, content_layers, style_layers, style_hw=(),
                          optimizer: str = "lbfgs", lbfgs_memory: int = 10, device: str = "cpu",
                          itemsize: int = 4, tile: int | None = None, source_hw=(),
                          iterations: int | None = None, keep_freed: bool = False) -> dict:
    """Peak resident bytes of one Gatys stylisation at (h, w), in parts.

    Returns ``{"fixed", "network", "targets", "images", "optimizer", "runtime", "device",
    "host", "total"}``:

    * fixed: the VGG16 weights (and, on the CPU, the Winograd transforms of the layers to
      ``upto``, ``vgg_winograd_numel``: 135.5 MB to relu5_1, as measured), once per network;
    * network: the larger of the pastiche's forward + backward (``_network_bytes``; with
      ``tile``, of its largest crop, ``largest_crop``) and the forward of the largest style
      image (``style_hw`` sizes at this scale; with ``tile``, its largest crop); with
      ``keep_freed``, as in a process that called ``backend.keep_freed_memory()``;
    * targets: the content targets (at their full size, also tiled) and the Gram targets;
    * images: ``_IMAGE_ARRAYS`` float arrays of the pastiche's size, the style images at
      this scale's size, and the images as loaded (``source_hw`` sizes), all 3-channel;
    * optimizer: L-BFGS-B's float64 vectors (``lbfgs_host_bytes``; its history counted
      for at most ``iterations`` steps when given) or Adam's state;
    * runtime: the interpreter and libraries (``_RUNTIME``).

    device = fixed + network + targets + images + small objects (``_OVERHEAD``), plus
    Adam's state: what the GPU must hold when ``device="gpu"``; host = runtime, plus
    L-BFGS-B's vectors; total = both.
    """
    layers = list(content_layers) + list(style_layers)
    upto = max(layers, key=LAYER_NAMES.index)
    shapes = layer_shapes(h, w, upto)
    targets = sum(c * a * b for name, c, a, b in shapes if name in content_layers)
    targets = (targets + sum(c * c for name, c, _, _ in shapes if name in style_layers)) * itemsize
    pastiche = _network_bytes(*largest_crop(h, w, tile, layers), upto, itemsize, device, tile is not None,
                              keep_freed)
    styles = [_STYLE_FACTOR * _kept_bytes(*largest_crop(a, b, tile, style_layers or layers), upto, itemsize)
              for a, b in style_hw]
    network = max([pastiche, *styles])
    n = 3 * h * w
    images = (_IMAGE_ARRAYS * n + sum(3 * a * b for a, b in [*style_hw, *source_hw])) * itemsize
    fixed = (parameter_count() + (vgg_winograd_numel(upto) if device == "cpu" else 0)) * itemsize
    on_host = optimizer == "lbfgs"  # scipy's L-BFGS-B runs on the host; Adam where the image is
    opt = lbfgs_host_bytes(n, lbfgs_memory, iterations) if on_host else _ADAM_IMAGES * n * itemsize
    dev = fixed + network + targets + images + _OVERHEAD + (0 if on_host else opt)
    host = _RUNTIME + (opt if on_host else 0)
    parts = {"fixed": fixed, "network": network, "targets": targets, "images": images, "optimizer": opt,
             "runtime": _RUNTIME, "device": dev, "host": host, "total": dev + host}
    return {k: int(v) for k, v in parts.items()}


# --------------------------------------------------------------------------- the transformer

class LayerShape(NamedTuple):
    """One leaf layer of a network on an (N=1) input, sizes in elements: its input and
    output ``(C, H, W)``; ``held``, the arrays its enclosing containers keep alive while it
    runs (a block's input, the residual's skip, the network's input); ``work``, its own
    transient arrays made whole (a transposed convolution's columns); ``task_work``, those
    made by its ``parallel.pmap`` tasks, one part per task (a convolution's padded input
    rows, a normalisation's centred and scaled copies): at most ``min(workers,
    MIN_TASKS)`` of the ``MIN_TASKS`` parts are alive at once."""

    name: str
    kind: str
    x: tuple
    y: tuple
    held: int
    work: int
    task_work: int


def _numel(shape) -> int:
    c, h, w = shape
    return c * h * w


def _leaf_shape(layer, x) -> tuple[tuple, int, int]:
    """The output ``(C, H, W)`` of a leaf layer on ``x``, its ``work`` and ``task_work``
    (elements; see ``LayerShape``)."""
    c, h, w = x
    if isinstance(layer, Conv2d):
        f, _, k, _ = layer.params["weight"].shape
        p, s = layer.padding, layer.stride
        y = (f, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        return y, 0, c * (h + 2 * p) * (w + 2 * p) if p else 0
    if isinstance(layer, ConvTranspose2d):
        _, f, k, _ = layer.params["weight"].shape
        s, p, op = layer.stride, layer.padding, layer.output_padding
        y = (f, (h - 1) * s - 2 * p + k + op, (w - 1) * s - 2 * p + k + op)
        return y, h * w * f * k * k, 0  # the GEMM's columns before they are folded (col2im)
    if isinstance(layer, Upsample):
        return (c, h * layer.scale, w * layer.scale), 0, 0
    if isinstance(layer, (InstanceNorm2d, ConditionalInstanceNorm2d)):
        return x, 0, 0  # normalization.instance_norm_infer: y, its band the only temporary
    if isinstance(layer, BatchNorm2d):
        return x, 0, 2 * c * h * w  # x − mean and its normalised copy
    return x, 0, 0  # ReLU, tanh: elementwise


def transformer_layer_shapes(net, h: int, w: int) -> list[LayerShape]:
    """Every leaf layer of ``net`` (a ``TransformerNet``; any ``Sequential`` / ``Residual``
    tree of layers) in forward order on one h × w image, as ``LayerShape``; a residual
    block's sum is a leaf of kind ``"add"``. Read from the network's own layers, so the
    model follows the architecture (width, upsampling, residual blocks)."""
    out = []

    def walk(layer, name, x, held):
        if isinstance(layer, Residual):
            y = walk(layer.layers["body"], f"{name}.body", x, held)
            out.append(LayerShape(f"{name}.add", "add", x, y, held + _numel(x), 0, 0))
            return y
        if isinstance(layer, Sequential):
            y = x
            children = list(layer.layers.items())
            for i, (child_name, child) in enumerate(children):
                # the container's input stays referenced by its caller while it runs; its
                # first child's input is that very array
                full, held_i = f"{name}.{child_name}" if name else child_name, held + (_numel(x) if i else 0)
                after = children[i + 1][1] if i + 1 < len(children) else None
                if folds_into_conv(child, after):  # one op with the convolution (layers/upconv.py)
                    c, h, w = y
                    f = after.params["weight"].shape[0]
                    out.append(LayerShape(full, type(child).__name__, y, y, held_i, 0, 0))  # makes nothing
                    y2 = (f, 2 * h, 2 * w)
                    # each task: its edge-padded input rows and its band of Z (4·F columns)
                    task_work = c * (h + 2) * (w + 2) + 4 * f * h * (w + 2)
                    out.append(LayerShape(f"{name}.{children[i + 1][0]}" if name else children[i + 1][0],
                                          type(after).__name__, y, y2, held_i, 0, task_work))
                    y = y2
                elif i and folds_into_conv(children[i - 1][1], child):
                    continue  # counted with the resize
                else:
                    y = walk(child, full, y, held_i)
            return y
        y, work, task_work = _leaf_shape(layer, x)
        out.append(LayerShape(name, type(layer).__name__, x, y, held, work, task_work))
        return y

    walk(net, "", (3, h, w), 0)
    return out


def _as_net(net) -> TransformerNet:
    return TransformerNet(net) if isinstance(net, TransformerConfig) else net


def stylize_padded_hw(h: int, w: int) -> tuple[int, int]:
    """The size ``TransformerNet.stylize`` runs the network at: each side a multiple of 4,
    at least 16."""
    return max(16, -(-h // 4) * 4), max(16, -(-w // 4) * 4)


# Checked with tracemalloc on TransformerNet.stylize (float32, CPU),
# tests/test_memory.py::test_stylize_estimate_is_calibrated: the layer model with
# min(workers, MIN_TASKS) task parts alive, plus each task's band buffers (up to 4 MB,
# which matter at small sizes; none at a transposed convolution, which multiplies whole),
# with an instance norm and its ReLU making nothing (``_LAZY_NORMS``). Session 16, at
# 256², 288 × 384 and 768², one and two workers: 1.12–1.53 times the measured peak for the
# nearest networks (width 1, 768²: 125 and 131 MiB), 1.06–1.18 for the transposed ones
# (width 1, 768²: 277 MiB, 314 before the map's source was released first). Around the
# network: the image as loaded, its padded copy and the result, three 3-channel floats.
_STYLIZE_IMAGE_ARRAYS = 3
# Decoding a photo (``images.load_image``) before it is resized: Pillow's RGBX buffer
# (4 B/px), the uint8 RGB array, its float32 copy and the float result of the division.
_DECODE_BYTES_PER_PIXEL = 4 + 3 + 12 + 12


# In inference on the CPU an instance norm (and the ReLU after it) is a map that its
# consumer applies band by band (``layers.affine.ChannelAffine``); a consumer that cannot,
# a transposed convolution or a residual sum, makes it as its own input.
_LAZY_NORMS = ("InstanceNorm2d", "ConditionalInstanceNorm2d")


def estimate_stylize_memory(net, h: int, w: int, device: str = "cpu", source_hw=None,
                            itemsize: int = 4, workers: int | None = None) -> dict:
    """Peak bytes of stylising one h × w image with ``net`` (a ``TransformerNet`` or its
    ``TransformerConfig``): ``{"fixed", "device", "host", "total"}``.

    fixed: the parameters, and on the CPU the Winograd kernels kept with them
    (``kept_kernel_numel``). device: fixed plus the peak of the forward pass without caches
    (``transformer_layer_shapes``: held + input + output + work of the worst layer, with
    ``min(workers, MIN_TASKS)`` task parts alive, each with its band buffers of up to
    ``THIN_BAND_BYTES`` or ``SCATTER_BAND_BYTES``; ``workers`` default: the CPU pool's, on
    the GPU every part), plus, on the GPU, one band of im2col columns. host: the image
    arrays around the network, and decoding the source file at ``source_hw`` (its size
    before resizing) when given.
    """
    net = _as_net(net)
    ph, pw = stylize_padded_hw(h, w)
    layers = transformer_layer_shapes(net, ph, pw)
    if device == "gpu":
        workers = MIN_TASKS
    alive = min(workers or num_workers(), MIN_TASKS)  # task parts alive at once
    bands = alive * max(THIN_BAND_BYTES, SCATTER_BAND_BYTES)  # each task's band buffers
    made = [_numel(l.y) for l in layers]
    if device == "cpu":  # an instance norm and its ReLU make no output (transformer._infer)
        for i, l in enumerate(layers):
            if l.kind in _LAZY_NORMS or (l.kind == "ReLU" and i and layers[i - 1].kind in _LAZY_NORMS):
                made[i] = 0
    # a transposed convolution multiplies whole (its columns are ``work``), no band buffers
    peak = max((l.held + _numel(l.x) + m + l.work + alive / MIN_TASKS * l.task_work) * itemsize
               + (0 if l.kind == "ConvTranspose2d" else bands) for l, m in zip(layers, made))
    fixed = (sum(int(v.size) for v in net.params.values())
             + (kept_kernel_numel(net) if device == "cpu" else 0)) * itemsize
    dev = fixed + peak + (IM2COL_MAX_BYTES if device == "gpu" else 0) + _OVERHEAD
    host = _STYLIZE_IMAGE_ARRAYS * 3 * ph * pw * 4
    if source_hw is not None:
        host = max(host, source_hw[0] * source_hw[1] * _DECODE_BYTES_PER_PIXEL)
    return {"fixed": int(fixed), "device": int(dev), "host": int(host), "total": int(dev + host)}


# Calibrated with tracemalloc on train_fast.train_step (float32, CPU, default loss layers,
# max pooling), tests/test_memory.py::test_training_estimate_is_calibrated. Per image and
# pixel, a step keeps _TRAIN_KEPT_FACTOR × the transformer's layer outputs (its caches)
# and _TRAIN_VGG_FACTOR × VGG16's ReLU outputs up to the deepest loss layer (the caches of
# the loss network, the features and their gradients, the backward's transients); per
# step, the parameter gradients and Adam's update take _TRAIN_PARAM_COPIES copies of the
# parameters. Fitted with one worker on width 1 and 0.5 at 64² to 256², batches 1 to 4
# (measured: 4110 B/px at width 1, 3301 at width 0.5, 256², batch 2: 0.97 to 1.13 times
# the measurements with 0.67 and 2.35); with 4 workers or more (MIN_TASKS task parts
# alive at once) a step takes 6 to 11% more, so the factors are set for that: 1.0 to 1.1
# times the peak with 4 workers, 1.1 to 1.2 with one.
_TRAIN_KEPT_FACTOR = 0.75
_TRAIN_VGG_FACTOR = 2.65
_TRAIN_PARAM_COPIES = 3
_ADAM_COPIES = 3  # weights, m and v, kept over the run


# The _TRAIN_* factors were fitted when every 3×3, padding-1 layer with this many channels
# on both sides took F(2×2, 3×3); ``winograd_kernel_numel`` counts the difference from that.
_FIT_WINOGRAD_MIN_CHANNELS = 64


def _conv_paths(net):
    """``(m, C, F, fitted)`` of every 3×3, padding-1 Conv2d of ``net``: m the tile of its
    Winograd path F(m×m, 3×3), 0 on another path (``conv.auto_method`` for its ``method``,
    on a CPU input of its weights' dtype); ``fitted``: the factors' fit had it on F(2×2)."""
    for _, layer in net.named_layers():
        if not isinstance(layer, Conv2d):
            continue
        w = layer.params["weight"]
        F, C, KH, KW = w.shape
        if (KH, KW) != (3, 3) or layer.padding != 1:
            continue
        fitted = layer.stride == 1 and min(C, F) >= _FIT_WINOGRAD_MIN_CHANNELS
        yield _winograd_tile(layer.method, w.shape, w.dtype, layer.stride, layer.padding), C, F, fitted


def _winograd_tile(method, wshape, dtype=np.float32, stride=1, pad=1) -> int:
    """m of the Winograd path F(m×m, 3×3) a convolution with weights of ``wshape`` takes
    on a CPU input of ``dtype`` with ``method`` ("auto"/"fast": ``conv.auto_method``), 0
    on another path."""
    if method in ("auto", "fast"):
        zero = np.zeros((), dtype)
        method = auto_method(np.broadcast_to(zero, (1, wshape[1], 1, 1)), np.broadcast_to(zero, wshape),
                             stride, pad, fast=method == "fast")
    return WINOGRAD_TILES.get(method, 0)


def _winograd_layers(net):
    """``(m, C, F)`` of every 3×3 Conv2d of ``net`` on a Winograd path F(m×m, 3×3)."""
    return [(m, C, F) for m, C, F, _ in _conv_paths(net) if m]


def winograd_kernel_numel(net) -> int:
    """Values of Winograd-transformed kernels one training step of ``net`` holds beyond
    what the ``_TRAIN_*`` factors count (negative: fewer). Each 3×3 layer on a Winograd
    path keeps its forward's (m+2)²·C·F transform in its cache (``WinogradWeights``), and
    its backward adds the input gradient's there: two per layer until the step ends. The
    factors were fitted with F(2×2, 3×3), 16·C·F each, on every layer of 64 channels and
    more; this counts the difference: the "fast" path's F(4×4, 3×3) takes 36·C·F (measured
    at width 1, batch 1 at 64²: +26 MB, the count's 26 MB), a 64 → 64 layer now on the
    shifted GEMM none (width 0.5, batch 1 at 64²: the peak 7.5 MB lower, the count −5 MB
    against F(2×2), −11 against F(4×4))."""
    return sum(2 * ((m + 2) ** 2 if m else 0) * C * F - (2 * 16 * C * F if fitted else 0)
               for m, C, F, fitted in _conv_paths(net))


def kept_kernel_numel(net) -> int:
    """Values an eval-mode ``net`` keeps between calls beyond its parameters: per Winograd
    layer its forward transform, (m+2)²·C·F, and the copy of the weights it was made of,
    9·C·F (``Conv2d._kept_transform``)."""
    return sum(((m + 2) ** 2 + 9) * C * F for m, C, F in _winograd_layers(net))


def vgg_winograd_numel(upto: str, method: str = "auto") -> int:
    """Values of the Winograd-transformed kernels a CPU VGG16 keeps once a forward and a
    backward to ``upto`` have run on ``method``'s paths (``VGG16.forward``): each 3×3
    layer before ``upto`` on F(m×m, 3×3) holds (m+2)²·C·F for its forward and as many for
    its input gradient (``WinogradWeights``)."""
    last = LAYER_NAMES.index(upto)
    total = 0
    for name, (wshape, _) in expected_shapes().items():
        if LAYER_NAMES.index(name) > last:
            break
        m = _winograd_tile(method, wshape)
        total += 2 * (m + 2) ** 2 * wshape[0] * wshape[1] if m else 0
    return total


def estimate_training_memory(net, batch: int, size: int, content_layer: str = "relu2_2",
                             style_layers=("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
                             device: str = "cpu", itemsize: int = 4) -> dict:
    """Peak bytes of one training step on ``batch`` size × size crops with ``net`` (a
    ``TransformerNet`` or its ``TransformerConfig``): ``{"fixed", "device", "host", "total"}``.

    fixed: the transformer's weights and Adam's moments, VGG16's weights (and, on the CPU,
    the Winograd transforms of the layers the loss runs, on ``TRAINING_CONV_METHOD``'s
    paths: ``vgg_winograd_numel``). device: fixed plus the step — the transformer's kept
    activations and VGG16's (``_TRAIN_*`` factors), the gradients and Adam's transients.
    host: the uint8 batch and its float copy.
    """
    net = _as_net(net)
    n_params = sum(int(v.size) for v in net.params.values())
    kept = sum(_numel(l.y) for l in transformer_layer_shapes(net, size, size))
    upto = max([content_layer, *style_layers], key=LAYER_NAMES.index)
    vgg_kept = sum(c * a * b for name, c, a, b in layer_shapes(size, size, upto) if name.startswith("relu"))
    fixed = (n_params * _ADAM_COPIES + parameter_count()
             + (vgg_winograd_numel(upto, TRAINING_CONV_METHOD) if device == "cpu" else 0)) * itemsize
    step = (batch * (_TRAIN_KEPT_FACTOR * kept + _TRAIN_VGG_FACTOR * vgg_kept)
            + _TRAIN_PARAM_COPIES * n_params + (winograd_kernel_numel(net) if device == "cpu" else 0)) * itemsize
    dev = fixed + step + (IM2COL_MAX_BYTES if device == "gpu" else 0) + _OVERHEAD
    host = batch * size * size * 3 * (1 + 4)
    return {"fixed": int(fixed), "device": int(dev), "host": int(host), "total": int(dev + host)}


def largest_fitting(estimate, lo: int, hi: int, have: int, step: int = 1) -> int | None:
    """The largest ``n`` in [lo, hi] (a multiple of ``step``) with ``estimate(n) <= have``,
    for an estimate that grows with ``n``; None if not even ``lo`` fits."""
    lo, hi = -(-lo // step), hi // step
    if lo > hi or estimate(lo * step) > have:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(mid * step) <= have:
            lo = mid
        else:
            hi = mid - 1
    return lo * step


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


def memory_checks(device: str, available, gpu_free=None) -> list:
    """``[(where, part, bytes free)]`` to hold an estimate against: on the GPU its
    ``"device"`` part against ``gpu_free`` and its ``"host"`` part against ``available``
    (MemAvailable); on the CPU its ``"total"`` against ``available``. None: unknown."""
    if device == "gpu":
        return [("GPU", "device", gpu_free), ("host", "host", available)]
    return [("host", "total", available)]


def format_bytes(n) -> str:
    """``"1.25 GB"`` from 1 GiB up, else ``"312 MB"`` (binary units)."""
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"
