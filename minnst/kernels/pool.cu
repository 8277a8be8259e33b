// pool.cu — max and average pooling over k×k windows with stride s, forward and backward.
//
// Layout: every array is C-contiguous channels-last (N, H, W, C). The launcher views an
// NCHW-contiguous array as (N·C, H, W, 1), so the same kernels serve both memory orders
// without a copy. OH = (H − k) / s + 1, OW likewise (floor: pixels past the last whole
// window get no output and a zero gradient).
//
// maxpool2d_forward:  y[n, i, j, c] = max_{a,b<k} x[n, i·s + a, j·s + b, c];
//                     idx[n, i, j, c] = a·k + b of the first maximum in row-major window
//                     order (strict '>'), a NaN counting as the maximum (the first NaN wins).
// avgpool2d_forward:  y[n, i, j, c] = Σ_{a,b<k} x[n, i·s + a, j·s + b, c] / k²
//   Index decomposition: one thread per output element, flat t = ((n·OH + i)·OW + j)·C + c.
//
// maxpool2d_backward: dx[n, p, q, c] = Σ over the windows (i, j) that contain (p, q) and
//                     whose idx is (p − i·s)·k + (q − j·s) of dy[n, i, j, c]
// avgpool2d_backward: dx[n, p, q, c] = Σ over the windows (i, j) that contain (p, q) of
//                     dy[n, i, j, c] / k²
//   Index decomposition: a gather, one thread per input element, flat
//   t = ((n·H + p)·W + q)·C + c; the windows containing row p are
//   i ∈ [ceil((p − k + 1)/s), floor(p/s)] ∩ [0, OH), likewise for q. No atomics; windows are
//   visited in row-major offset order (a, b), as the NumPy code adds them, so the
//   backward sums are bit-identical to it.
//
// Launch shape: 1-D grid of 1-D blocks (256 threads), grid-stride loops.
// Template parameter I: the index type, unsigned char when k² <= 256, else int (as the
// NumPy cache).
// NumPy references: minnst.layers.pooling.maxpool2d_forward_cpu / maxpool2d_backward_cpu /
// avgpool2d_forward_cpu / avgpool2d_backward_cpu.
// Launchers: the same names with _gpu in minnst.layers.pooling.
#include "common.h"

// The range [lo, hi] of window indices whose window [i·s, i·s + k) contains pixel p.
__device__ __forceinline__ void windows_of(int p, int k, int s, int count, int& lo, int& hi)
{
    lo = p >= k ? (p - k) / s + 1 : 0;
    hi = imin(p / s, count - 1);
}

template <typename T, typename I>
__global__ void maxpool2d_forward(const T* __restrict__ x, T* __restrict__ y, I* __restrict__ idx,
                                  int N, int H, int W, int C, int OH, int OW, int k, int s)
{
    const long long total = (long long)N * OH * OW * C;
    for (long long t = grid_start(); t < total; t += grid_stride()) {
        long long m = t;
        const int c = (int)(m % C); m /= C;
        const int j = (int)(m % OW); m /= OW;
        const int i = (int)(m % OH);
        const int n = (int)(m / OH);
        const T* base = x + (((long long)n * H + (long long)i * s) * W + (long long)j * s) * C + c;
        T best = base[0];
        int arg = 0;
        for (int a = 0; a < k; ++a) {
            for (int b = 0; b < k; ++b) {
                const T v = base[((long long)a * W + b) * C];
                if (v > best || (is_nan(v) && !is_nan(best))) {
                    best = v;
                    arg = a * k + b;
                }
            }
        }
        y[t] = best;
        idx[t] = (I)arg;
    }
}

template <typename T, typename I>
__global__ void maxpool2d_backward(const T* __restrict__ dy, const I* __restrict__ idx,
                                   T* __restrict__ dx,
                                   int N, int H, int W, int C, int OH, int OW, int k, int s)
{
    const long long total = (long long)N * H * W * C;
    for (long long t = grid_start(); t < total; t += grid_stride()) {
        long long m = t;
        const int c = (int)(m % C); m /= C;
        const int q = (int)(m % W); m /= W;
        const int p = (int)(m % H);
        const int n = (int)(m / H);
        int ilo, ihi, jlo, jhi;
        windows_of(p, k, s, OH, ilo, ihi);
        windows_of(q, k, s, OW, jlo, jhi);
        T acc = T(0);
        // offsets a = p − i·s descend as i ascends: walk i downwards for row-major order
        for (int i = ihi; i >= ilo; --i) {
            for (int j = jhi; j >= jlo; --j) {
                const long long o = (((long long)n * OH + i) * OW + j) * C + c;
                if ((int)idx[o] == (p - i * s) * k + (q - j * s))
                    acc += dy[o];
            }
        }
        dx[t] = acc;
    }
}

template <typename T>
__global__ void avgpool2d_forward(const T* __restrict__ x, T* __restrict__ y,
                                  int N, int H, int W, int C, int OH, int OW, int k, int s)
{
    const long long total = (long long)N * OH * OW * C;
    const T kk = T(k * k);
    for (long long t = grid_start(); t < total; t += grid_stride()) {
        long long m = t;
        const int c = (int)(m % C); m /= C;
        const int j = (int)(m % OW); m /= OW;
        const int i = (int)(m % OH);
        const int n = (int)(m / OH);
        const T* base = x + (((long long)n * H + (long long)i * s) * W + (long long)j * s) * C + c;
        acc_t sum = 0;
        for (int a = 0; a < k; ++a)
            for (int b = 0; b < k; ++b)
                sum += (acc_t)base[((long long)a * W + b) * C];
        y[t] = (T)sum / kk;
    }
}

template <typename T>
__global__ void avgpool2d_backward(const T* __restrict__ dy, T* __restrict__ dx,
                                   int N, int H, int W, int C, int OH, int OW, int k, int s)
{
    const long long total = (long long)N * H * W * C;
    const T kk = T(k * k);
    for (long long t = grid_start(); t < total; t += grid_stride()) {
        long long m = t;
        const int c = (int)(m % C); m /= C;
        const int q = (int)(m % W); m /= W;
        const int p = (int)(m % H);
        const int n = (int)(m / H);
        int ilo, ihi, jlo, jhi;
        windows_of(p, k, s, OH, ilo, ihi);
        windows_of(q, k, s, OW, jlo, jhi);
        T acc = T(0);
        for (int i = ihi; i >= ilo; --i)
            for (int j = jhi; j >= jlo; --j)
                acc += dy[(((long long)n * OH + i) * OW + j) * C + c] / kk;
        dx[t] = acc;
    }
}
