"""Elementwise activations: ReLU and the transformer's output nonlinearity, a scaled tanh.

Functional pairs ``y, cache = op_forward(x)`` / ``dx = op_backward(dy, cache)`` and thin
layer classes over them. Any shape, float32 or float64, NumPy or CuPy; the output keeps
the input dtype. ReLU has a CUDA kernel (kernels/relu.cu): ``relu_forward`` dispatches to
``relu_forward_cpu`` (the reference) or ``relu_forward_gpu`` (its launcher), and likewise
the backward.
"""
from __future__ import annotations

import numpy as np

from minnst.backend import get_xp, is_gpu_array
from minnst.kernels import launch
from minnst.layers.base import Layer
from minnst.parallel import batch_slices, pmap


def relu_forward(x):
    """``y = max(x, 0)``, any shape. The cache is ``y`` itself: the next layer usually keeps
    it alive anyway, and ``y > 0`` is exactly where ``x > 0``."""
    if is_gpu_array(x):
        return relu_forward_gpu(x)
    return relu_forward_cpu(x)


def relu_backward(dy, cache):
    """``dx = dy · [x > 0]`` (the subgradient 0 is taken at ``x = 0``)."""
    if is_gpu_array(dy):
        return relu_backward_gpu(dy, cache)
    return relu_backward_cpu(dy, cache)


def relu_forward_cpu(x):
    """``relu_forward`` in array code: ``(y, y)``, on NumPy the batch split over both
    cores."""
    xp = get_xp(x)
    if xp is not np:
        y = xp.maximum(x, 0)
        return y, y
    y = np.empty_like(x)  # x's memory order (channels-last from a convolution)
    pmap(lambda s: np.maximum(x[s], 0, out=y[s]), batch_slices(x.shape))  # both cores
    return y, y


def relu_backward_cpu(dy, cache):
    """``relu_backward`` in array code. A multiply by the boolean mask, not ``where``:
    3.5× faster on NumPy (measured at 512²×64), and it keeps the memory order of its
    inputs."""
    y = cache
    if get_xp(dy) is not np or dy.shape != y.shape:
        return dy * (y > 0)
    dx = np.empty_like(dy)
    pmap(lambda s: np.multiply(dy[s], y[s] > 0, out=dx[s]), batch_slices(dy.shape))
    return dx


def relu_forward_gpu(x):
    """``relu_forward`` by the kernel ``relu_forward`` (kernels/relu.cu): ``(y, y)``, y in
    x's memory order."""
    xp = get_xp(x)
    dt = launch.float_dtype("relu_forward_gpu", x)
    xc, perm = launch.dense(x)
    yc = launch.empty(xp, xc.shape, dt)
    if xc.size:
        launch.run_1d(launch.kernel("relu.cu", "relu_forward", xp, dt), xc.size,
                      (xc, yc, launch.i64(xc.size)))
    y = yc.transpose(launch.inverse_permutation(perm))
    return y, y


def relu_backward_gpu(dy, cache):
    """``relu_backward`` by the kernel ``relu_backward`` (kernels/relu.cu):
    ``dy · [y > 0]`` in the memory order of the cached ``y``."""
    xp = get_xp(dy)
    y = cache
    dt = launch.float_dtype("relu_backward_gpu", dy, y)
    yc, perm = launch.dense(y)
    dyc, _ = launch.dense(dy, perm)
    dxc = launch.empty(xp, yc.shape, dt)
    if yc.size:
        launch.run_1d(launch.kernel("relu.cu", "relu_backward", xp, dt), yc.size,
                      (dyc, yc, dxc, launch.i64(yc.size)))
    return dxc.transpose(launch.inverse_permutation(perm))


def scaled_tanh_forward(x, scale=127.5, offset=127.5):
    """``y = offset + scale · tanh(x)``, any shape; the defaults map onto pixels in [0, 255].

    The cache is ``(tanh(x), scale, x)``: recovering tanh from ``y`` would lose digits in
    float32 once the offset is added, and x itself is lost where tanh rounds to ±1 (a
    training penalty on saturation reads it: ``losses.saturation_penalty``).
    """
    xp = get_xp(x)
    scale, offset = float(scale), float(offset)  # Python floats never change x's dtype
    t = xp.tanh(x)
    return offset + scale * t, (t, scale, x)


def scaled_tanh_backward(dy, cache):
    """``dx = dy · scale · (1 − tanh²(x))``."""
    t, scale = cache[:2]
    return dy * (scale * (1 - t * t))


class ReLU(Layer):
    """``y = max(x, 0)``; no parameters."""

    def forward(self, x):
        return relu_forward(x)

    def backward(self, dy, cache):
        return relu_backward(dy, cache), {}


class ScaledTanh(Layer):
    """``y = offset + scale · tanh(x)``; no parameters."""

    def __init__(self, scale=127.5, offset=127.5):
        super().__init__()
        self.scale = scale
        self.offset = offset

    def forward(self, x):
        return scaled_tanh_forward(x, self.scale, self.offset)

    def backward(self, dy, cache):
        return scaled_tanh_backward(dy, cache), {}

    def __repr__(self):
        return f"ScaledTanh(scale={self.scale}, offset={self.offset})"
