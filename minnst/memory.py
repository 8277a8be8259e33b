"""How much memory a run needs, and how much this machine has: the pre-flight checks.

``estimate_gatys_memory`` models one Gatys stylisation from the VGG16 layer table
(``vgg.layer_shapes``); ``available_memory`` and ``gpu_free_memory`` say what there is.
"""
from __future__ import annotations

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


def estimate_gatys_memory(h: int, w: int, content_layers, style_layers, style_hw=(),
                          optimizer: str = "lbfgs", lbfgs_memory: int = 10, device: str = "cpu",
                          itemsize: int = 4) -> dict:
    """Peak bytes of one Gatys stylisation at (h, w): ``{"fixed", "device", "host", "total"}``.

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
    pastiche = (_KEPT_FACTOR * kept(h, w) + targets) * itemsize
    styles = max([1.6 * kept(a, b) * itemsize for a, b in style_hw] or [0])  # forward only
    fixed = parameter_count() * itemsize * (1 + (_WINOGRAD_FACTOR if device == "cpu" else 0))
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


def format_bytes(n) -> str:
    """``"1.25 GB"`` from 1 GiB up, else ``"312 MB"`` (binary units)."""
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"
