// upsample.cu — nearest-neighbour upsampling by an integer factor s, and its adjoint.
//
// upsample_nearest2d_forward:  y[n, i, j, c] = x[n, i / s, j / s, c]
//   x (N, H, W, C), y (N, s·H, s·W, C). Index decomposition: one thread per output
//   element, flat t = ((n·sH + i)·sW + j)·C + c.
// upsample_nearest2d_backward: dx[n, i, j, c] = Σ_{a,b<s} dy[n, i·s + a, j·s + b, c]
//   One thread per input element (a gather: no atomics), flat t = ((n·H + i)·W + j)·C + c.
//
// Layout: C-contiguous channels-last; the launcher views an NCHW-contiguous array as
// (N·C, H, W, 1), so both memory orders run without a copy.
// Launch shape: 1-D grid of 1-D blocks (256 threads), grid-stride loops.
// NumPy references: minnst.layers.resampling.upsample_nearest2d_forward_cpu / _backward_cpu.
// Launchers: minnst.layers.resampling.upsample_nearest2d_forward_gpu / _backward_gpu.
#include "common.h"

template <typename T>
__global__ void upsample_nearest2d_forward(const T* __restrict__ x, T* __restrict__ y,
                                           int N, int H, int W, int C, int s)
{
    const int SH = H * s, SW = W * s;
    const long long total = (long long)N * SH * SW * C;
    for (long long t = grid_start(); t < total; t += grid_stride()) {
        long long m = t;
        const int c = (int)(m % C); m /= C;
        const int j = (int)(m % SW); m /= SW;
        const int i = (int)(m % SH);
        const int n = (int)(m / SH);
        y[t] = x[(((long long)n * H + i / s) * W + j / s) * C + c];
    }
}

template <typename T>
__global__ void upsample_nearest2d_backward(const T* __restrict__ dy, T* __restrict__ dx,
                                            int N, int H, int W, int C, int s)
{
    const int SH = H * s, SW = W * s;
    const long long total = (long long)N * H * W * C;
    for (long long t = grid_start(); t < total; t += grid_stride()) {
        long long m = t;
        const int c = (int)(m % C); m /= C;
        const int j = (int)(m % W); m /= W;
        const int i = (int)(m % H);
        const int n = (int)(m / H);
        const T* base = dy + (((long long)n * SH + (long long)i * s) * SW + (long long)j * s) * C + c;
        acc_t sum = 0;
        for (int a = 0; a < s; ++a)
            for (int b = 0; b < s; ++b)
                sum += (acc_t)base[((long long)a * SW + b) * C];
        dx[t] = (T)sum;
    }
}
