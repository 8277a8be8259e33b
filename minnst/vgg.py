"""VGG16 feature stack (the 13 convolutions of Simonyan & Zisserman), frozen.

Layers are named, never indexed: conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, …,
relu5_3, pool5. Input: ImageNet-normalised RGB, (N, 3, H, W) (``images.preprocess``).
Pooling is average (Gatys et al.: better gradient flow) or max (the trained network).

    feats, cache = net.forward(x, layers=["relu2_2", "relu4_2"])
    dx = net.backward({"relu2_2": g1, "relu4_2": g2}, cache)   # = ∂(Σ_l <g_l, feats_l>)/∂x

The forward stops at the deepest requested layer; the backward starts there and adds each
layer's incoming gradient as it passes it. Only the input gradient is computed: the
convolutions keep no input in their caches, the ReLUs keep their output (the mask y > 0).

On the CPU each ReLU runs inside the convolution before it (``conv2d_forward(...,
relu=True)``: max(·, 0) of each band of output while it is in cache), and its backward
inside that convolution's backward (``conv2d_backward(..., relu_y=y)``: dy · (y > 0) as
each band of dy is read), instead of a pass of its own over memory. The bits are the
same; ``fuse_relu=False`` runs them separately, as the GPU always does. A convolution
whose own (pre-ReLU) output is asked for keeps its ReLU separate; one that receives a
gradient takes its ReLU's backward separately.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .backend import get_xp
from .layers.activations import relu_backward, relu_forward
from .layers.conv import conv2d_backward, conv2d_forward
from .layers.pooling import (avgpool2d_backward, avgpool2d_forward, maxpool2d_backward,
                             maxpool2d_forward)
from .layers.winograd import winograd_transform
from .parallel import add_into

BLOCKS = (2, 2, 3, 3, 3)  # convolutions per block
CHANNELS = (64, 128, 256, 512, 512)
CONV_NAMES = tuple(f"conv{b + 1}_{i + 1}" for b, n in enumerate(BLOCKS) for i in range(n))


def _layer_names():
    names = []
    for b, n in enumerate(BLOCKS):
        for i in range(n):
            names += [f"conv{b + 1}_{i + 1}", f"relu{b + 1}_{i + 1}"]
        names.append(f"pool{b + 1}")
    return tuple(names)


LAYER_NAMES = _layer_names()
POOLINGS = ("avg", "max")


def expected_shapes():
    """conv name -> (weight shape (F, C, 3, 3), bias shape (F,))."""
    shapes, c_in = OrderedDict(), 3
    for b, n in enumerate(BLOCKS):
        for i in range(n):
            f = CHANNELS[b]
            shapes[f"conv{b + 1}_{i + 1}"] = ((f, c_in, 3, 3), (f,))
            c_in = f
    return shapes


def layer_channels(name: str) -> int:
    """Channels of a layer's output (``conv3_2`` and ``relu3_2`` and ``pool3``: 256)."""
    check_layer_names([name])
    return CHANNELS[_block(name) - 1]


def _block(name: str) -> int:
    """The block (1 … 5) a layer belongs to: the digit after its kind."""
    return int(name[4])


def layer_shapes(H: int, W: int, upto: str) -> list:
    """``[(name, C, h, w), …]``: each layer's output shape for an H × W input, up to
    ``upto`` (2×2 pooling floors each side)."""
    check_layer_names([upto])
    out, h, w = [], H, W
    for name in LAYER_NAMES[:LAYER_NAMES.index(upto) + 1]:
        if name.startswith("pool"):
            h, w = h // 2, w // 2
        out.append((name, layer_channels(name), h, w))
    return out


def parameter_count() -> int:
    """Weights and biases of the 13 convolutions (14 714 688)."""
    return sum(int(np.prod(ws)) + int(np.prod(bs)) for ws, bs in expected_shapes().values())


def check_layer_names(layers) -> None:
    """Raise ValueError naming the first unknown layer (the CLIs turn it into exit 2)."""
    for name in layers:
        if name not in LAYER_NAMES:
            raise ValueError(f"unknown VGG16 layer {name!r}; valid names are conv1_1 … relu5_3, "
                             f"pool1 … pool5 (e.g. relu4_2)")


class VGG16:
    """Frozen VGG16 features. ``weights``: conv name -> (w (F, C, 3, 3), b (F,))."""

    def __init__(self, weights: dict, pooling: str = "avg"):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        shapes = expected_shapes()
        for name, (ws, bs) in shapes.items():
            if name not in weights:
                raise ValueError(f"VGG16 weights lack {name}")
            w, b = weights[name]
            if tuple(w.shape) != ws or tuple(b.shape) != bs:
                raise ValueError(f"{name}: weight {tuple(w.shape)} / bias {tuple(b.shape)}, "
                                 f"expected {ws} / {bs}")
        self.weights = OrderedDict((n, weights[n]) for n in CONV_NAMES)
        self.pooling = pooling
        self._wino = {}  # conv name -> WinogradWeights, made on first CPU use (frozen weights)

    @classmethod
    def load(cls, path=None, pooling: str = "avg", dtype=np.float32, xp=np):
        """Load the converted weights (fetching them on first use) onto ``xp``."""
        from . import weights as wmod

        raw = wmod.load_vgg16_weights(path, expected_shapes(), dtype=dtype)
        return cls(raw, pooling=pooling).to(xp, dtype)

    def to(self, xp, dtype=None):
        self.weights = OrderedDict(
            (n, (xp.asarray(w, dtype=dtype or w.dtype), xp.asarray(b, dtype=dtype or b.dtype)))
            for n, (w, b) in self.weights.items())
        self._wino = {}
        return self

    def _winograd(self, name, w, dtype):
        """The layer's Winograd kernels in ``dtype`` (CPU only), transformed once."""
        if get_xp(w) is not np:
            return None
        key = (name, np.dtype(dtype).str)
        if key not in self._wino:
            self._wino[key] = winograd_transform(w.astype(dtype, copy=False))
        return self._wino[key]

    # ------------------------------------------------------------------ forward / backward

    def forward(self, x, layers, fuse_relu: bool = True, backward: bool = True, method: str = "auto"):
        """Run up to the deepest of ``layers``; returns ``({name: features}, cache)``.
        ``fuse_relu``: on the CPU, each ReLU inside its convolution (the module
        docstring); False runs it as a pass of its own. The cache is the same either way.
        ``backward``, a hint: False when no backward will follow (targets, features). Max
        pooling then skips its indices (``lazy``: 5× faster on the CPU); a backward still
        works, finding them from the kept input, at a little more than their cost here.
        ``method``: the convolutions' path (``conv2d_forward``): "auto", or "fast" where
        F(4×4) Winograd's larger float32 error is affordable (a training loss)."""
        layers = list(layers)
        check_layer_names(layers)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG16 expects (N, 3, H, W) input, got shape {tuple(x.shape)}")
        wanted = set(layers)
        last = max(LAYER_NAMES.index(n) for n in layers) if layers else -1
        fuse_relu = fuse_relu and get_xp(x) is np
        feats, cache = {}, []
        h = x
        fused = False  # whether the last convolution took its ReLU
        for name in LAYER_NAMES[:last + 1]:
            kind = name[:4]
            if kind == "conv":
                w, b = self.weights[name]
                # every conv is followed by its ReLU; the deepest layer asked for is in `wanted`
                fused = fuse_relu and name not in wanted
                h, c = conv2d_forward(h, w.astype(h.dtype, copy=False), b.astype(h.dtype, copy=False),
                                      stride=1, pad=1, keep_input=False, method=method,
                                      wino=self._winograd(name, w, h.dtype), relu=fused)
            elif kind == "relu":
                h, c = (h, h) if fused else relu_forward(h)  # relu_forward's cache: its output
            elif self.pooling == "max":
                h, c = maxpool2d_forward(h, 2, 2, lazy=not backward)  # h is kept: the ReLU cache
            else:
                h, c = avgpool2d_forward(h, 2, 2)
            cache.append((name, c))
            if name in wanted:
                feats[name] = h  # in the layers' memory order (channels-last on the CPU)
        return feats, cache

    def backward(self, grads: dict, cache, fuse_relu: bool = True):
        """Gradient w.r.t. the input of ``Σ_l <grads[l], feats[l]>``. ``fuse_relu``: on the
        CPU, each ReLU's backward inside its convolution's, unless a gradient is given at
        the convolution's own output (the module docstring); the same bits either way."""
        ran = [name for name, _ in cache]
        for name in grads:
            if name not in ran:
                raise ValueError(f"no forward cache for layer {name!r}: include it in forward(layers=…)")
        dy = None
        owned = False  # whether dy is an array this backward made (and may add into in place)
        relu_y = None  # the output of the ReLU whose backward the next convolution takes
        for name, c in reversed(cache):
            g = grads.get(name)
            if g is not None:
                if dy is None:
                    dy, owned = g, False
                elif owned and dy.shape == g.shape and dy.dtype == np.result_type(dy, g):
                    dy = add_into(dy, g)
                else:
                    dy, owned = dy + g, True
            if dy is None:
                continue  # nothing flows back from above this layer yet
            kind = name[:4]
            if kind == "conv":
                dy, _, _ = conv2d_backward(dy, c, relu_y=relu_y)
                relu_y = None
            elif kind == "relu":
                if fuse_relu and get_xp(dy) is np and "conv" + name[4:] not in grads:
                    relu_y = c
                    continue  # dy itself is unchanged
                dy = relu_backward(dy, c)
            elif self.pooling == "max":
                dy = maxpool2d_backward(dy, c)
            else:
                dy = avgpool2d_backward(dy, c)
            owned = True
        if dy is None:
            raise ValueError("backward needs a gradient for at least one layer")
        return dy

    def __repr__(self):
        return f"VGG16(pooling={self.pooling!r}, layers={CONV_NAMES[0]}…{CONV_NAMES[-1]})"


def forward_flops(H: int, W: int, upto: str = "relu5_1", batch: int = 1) -> int:
    """Multiply-add FLOPs (2 per MAC) of the convolutions up to layer ``upto``.

    The backward to the input costs the same again (one transposed product per conv);
    ReLU and pooling are not counted.
    """
    check_layer_names([upto])
    last = LAYER_NAMES.index(upto)
    flops, h, w = 0, H, W
    for name, ((F, C, KH, KW), _) in expected_shapes().items():
        block = int(name[4]) - 1
        h, w = H >> block, W >> block  # 2×2 pooling halves (floor) per block
        if LAYER_NAMES.index(name) > last:
            break
        flops += 2 * h * w * C * F * KH * KW
    return flops * batch
