// relu.cu — ReLU forward and backward, elementwise over raw memory.
//
// relu_forward:  y[t] = x[t] > 0 ? x[t] : 0, NaN propagated (as numpy.maximum(x, 0)).
// relu_backward: dx[t] = dy[t] · [y[t] > 0] (multiply by the mask, as the NumPy code: a NaN
//                or inf in dy where y <= 0 gives NaN, not 0).
// Index decomposition: one flat index t over n elements; the launcher passes the arrays in
// one common memory order (any dense layout: NCHW, channels-last, ...), so t is simply the
// memory offset.
// Launch shape: 1-D grid of 1-D blocks (256 threads), grid-stride loop over t.
// NumPy reference: minnst.layers.activations.relu_forward_cpu / relu_backward_cpu.
// Launchers: minnst.layers.activations.relu_forward_gpu / relu_backward_gpu.
#include "common.h"

template <typename T>
__global__ void relu_forward(const T* __restrict__ x, T* __restrict__ y, long long n)
{
    for (long long t = grid_start(); t < n; t += grid_stride()) {
        const T v = x[t];
        y[t] = (v > T(0) || is_nan(v)) ? v : T(0);
    }
}

template <typename T>
__global__ void relu_backward(const T* __restrict__ dy, const T* __restrict__ y,
                              T* __restrict__ dx, long long n)
{
    for (long long t = grid_start(); t < n; t += grid_stride())
        dx[t] = dy[t] * (y[t] > T(0) ? T(1) : T(0));
}
