"""How much memory a run needs, and how much this machine has: the pre-flight checks.

``estimate_gatys_memory`` models one Gatys stylisation from the VGG16 layer table
(``vgg.layer_shapes``); ``estimate_stylize_memory`` one forward pass of the transformer
and ``estimate_training_memory`` one training step (transformer + VGG16 loss), both from
the transformer's own layers (``transformer_layer_shapes``); ``largest_fitting`` searches
the largest size (or batch) whose estimate fits. ``available_memory`` and
``gpu_free_memory`` say what there is.
"""
from __future__ import annotations

from typing import NamedTuple

from .layers.base import Residual, Sequential
from .layers.conv import IM2COL_MAX_BYTES, THIN_BAND_BYTES, Conv2d, ConvTranspose2d
from .layers.normalization import BatchNorm2d, ConditionalInstanceNorm2d, InstanceNorm2d
from .layers.resampling import Upsample
from .parallel import MIN_TASKS, num_workers
from .transformer import TransformerConfig, TransformerNet
from .tiling import max_crop_side
from .vgg import LAYER_NAMES, layer_shapes, parameter_count

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
_TILED_IMAGE_ARRAYS = 4  # image-sized float arrays a tiled evaluation holds besides its crop's


def estimate_gatys_memory(h: int, w: int, content_layers, style_layers, style_hw=(),
                          optimizer: str = "lbfgs", lbfgs_memory: int = 10, device: str = "cpu",
                          itemsize: int = 4, tile: int | None = None) -> dict:
    """Peak bytes of one Gatys stylisation at (h, w): ``{"fixed", "device", "host", "total"}``.

    With ``tile`` (the exact tiled evaluation, ``gatys.Objective(tile=…)``) the
    activations are those of the largest crop (``tiling.max_crop_side``) and the image-sized
    arrays are added: the content targets at their full size, the image, its gradient and
    the per-evaluation sums.

    fixed: the VGG16 weights (and, on the CPU, their Winograd transforms), allocated once
    per network. device: fixed, plus the larger of the pastiche's forward + backward (the
    kept ReLU outputs times a calibrated factor, the targets) and the forward of the
    largest style image (``style_hw`` sizes). host: the optimiser's state — L-BFGS-B's
    float64 vectors, or Adam's moments.
    """
    layers = list(content_layers) + list(style_layers)
    upto = max(layers, key=LAYER_NAMES.index)

    def kept(hh, ww):
        return sum(c * a * b for name, c, a, b in layer_shapes(hh, ww, upto) if name.startswith("relu"))

    shapes = layer_shapes(h, w, upto)
    targets = sum(c * a * b for name, c, a, b in shapes if name in content_layers)
    targets += sum(c * c for name, c, _, _ in shapes if name in style_layers)
    if tile is None:
        pastiche = (_KEPT_FACTOR * kept(h, w) + targets) * itemsize
        styles = max([1.6 * kept(a, b) * itemsize for a, b in style_hw] or [0])  # forward only
    else:
        side = max_crop_side(tile, layers)
        ch, cw = min(h, side), min(w, side)
        image_arrays = _TILED_IMAGE_ARRAYS * 3 * h * w  # the image, its gradient, a copy, the sum
        pastiche = (_KEPT_FACTOR * kept(ch, cw) + targets + image_arrays) * itemsize
        styles = max([1.6 * kept(min(a, side), min(b, side)) * itemsize for a, b in style_hw] or [0])
    fixed = parameter_count() * itemsize * (1 + (_WINOGRAD_FACTOR if device == "cpu" else 0))
    n = 3 * h * w
    if optimizer == "lbfgs":
        host = (2 * lbfgs_memory + 5 + _LBFGS_EXTRA_VECTORS) * n * 8
    else:
        host = 4 * n * itemsize  # Adam's m and v, the best image, the gradient
    dev = fixed + max(pastiche, styles) + _OVERHEAD
    return {"fixed": int(fixed), "device": int(dev), "host": int(host), "total": int(dev + host)}


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
    if isinstance(layer, (InstanceNorm2d, ConditionalInstanceNorm2d, BatchNorm2d)):
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
            for i, (child_name, child) in enumerate(layer.layers.items()):
                # the container's input stays referenced by its caller while it runs; its
                # first child's input is that very array
                y = walk(child, f"{name}.{child_name}" if name else child_name, y,
                         held + (_numel(x) if i else 0))
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


# Checked with tracemalloc on TransformerNet.stylize (float32, CPU, 768²),
# tests/test_memory.py::test_stylize_estimate_is_calibrated: the layer model with
# min(workers, MIN_TASKS) task parts alive, plus each task's band buffers (up to 4 MB,
# which matter at small sizes), gives 1.03 to 1.17 times the measured peak for width 1 and
# 0.5, nearest and transposed upsampling, 1, 2 and 4 to 16 workers (measured at width 1,
# nearest: 525, 590 and 720 B/px; the layer model: 560, 625 and 753). Around the
# network: the image as loaded, its padded copy and the result, three 3-channel floats.
_STYLIZE_IMAGE_ARRAYS = 3
# Decoding a photo (``images.load_image``) before it is resized: Pillow's RGBX buffer
# (4 B/px), the uint8 RGB array, its float32 copy and the float result of the division.
_DECODE_BYTES_PER_PIXEL = 4 + 3 + 12 + 12


def estimate_stylize_memory(net, h: int, w: int, device: str = "cpu", source_hw=None,
                            itemsize: int = 4, workers: int | None = None) -> dict:
    """Peak bytes of stylising one h × w image with ``net`` (a ``TransformerNet`` or its
    ``TransformerConfig``): ``{"fixed", "device", "host", "total"}``.

    fixed: the parameters. device: fixed plus the peak of the forward pass without caches
    (``transformer_layer_shapes``: held + input + output + work of the worst layer, with
    ``min(workers, MIN_TASKS)`` task parts alive, each with its band buffers of up to
    ``THIN_BAND_BYTES``; ``workers`` default: the CPU pool's, on the GPU every part), plus,
    on the GPU, one band of im2col columns. host: the image
    arrays around the network, and decoding the source file at ``source_hw`` (its size
    before resizing) when given.
    """
    net = _as_net(net)
    ph, pw = stylize_padded_hw(h, w)
    layers = transformer_layer_shapes(net, ph, pw)
    if device == "gpu":
        workers = MIN_TASKS
    alive = min(workers or num_workers(), MIN_TASKS)  # task parts alive at once
    peak = max(l.held + _numel(l.x) + _numel(l.y) + l.work + alive / MIN_TASKS * l.task_work
               for l in layers) * itemsize + alive * THIN_BAND_BYTES  # + each task's band buffers
    fixed = sum(int(v.size) for v in net.params.values()) * itemsize
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


def estimate_training_memory(net, batch: int, size: int, content_layer: str = "relu2_2",
                             style_layers=("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
                             device: str = "cpu", itemsize: int = 4) -> dict:
    """Peak bytes of one training step on ``batch`` size × size crops with ``net`` (a
    ``TransformerNet`` or its ``TransformerConfig``): ``{"fixed", "device", "host", "total"}``.

    fixed: the transformer's weights and Adam's moments, VGG16's weights (and, on the CPU,
    their Winograd transforms). device: fixed plus the step — the transformer's kept
    activations and VGG16's (``_TRAIN_*`` factors), the gradients and Adam's transients.
    host: the uint8 batch and its float copy.
    """
    net = _as_net(net)
    n_params = sum(int(v.size) for v in net.params.values())
    kept = sum(_numel(l.y) for l in transformer_layer_shapes(net, size, size))
    upto = max([content_layer, *style_layers], key=LAYER_NAMES.index)
    vgg_kept = sum(c * a * b for name, c, a, b in layer_shapes(size, size, upto) if name.startswith("relu"))
    fixed = (n_params * _ADAM_COPIES
             + parameter_count() * (1 + (_WINOGRAD_FACTOR if device == "cpu" else 0))) * itemsize
    step = (batch * (_TRAIN_KEPT_FACTOR * kept + _TRAIN_VGG_FACTOR * vgg_kept)
            + _TRAIN_PARAM_COPIES * n_params) * itemsize
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
