// norm.cu — instance and batch normalisation, forward and backward, one pair of kernels.
//
// Statistics are taken per (g, c), g < G, c < C, over K = R·P elements at offsets
//     off(g, c, r, p) = g·sG + c·sC + r·sR + p·sP        (element strides, any dense layout)
// instance norm: G = N, R = 1, P = H·W;  batch norm: G = 1, R = N, P = H·W.
// The affine parameters of group g are γ[g·sA + c], β[g·sA + c]: sA = 0 for one (C,)
// vector shared by every group (batch norm, instance norm), sA = C for per-sample (G, C)
// arrays (instance norm with per-sample γ, β: conditional instance norm).
//
// norm_forward:  mean = Σ x / K;  var = Σ (x − mean)² / K (biased, two passes);
//                inv_std = 1 / sqrt(var + eps);  xhat = (x − mean)·inv_std;
//                y = γ[g·sA + c]·xhat + β[g·sA + c] (each factor only when has_gamma /
//                has_beta). Writes y, xhat (x's layout) and mean, var, inv_std (G, C).
// norm_backward: with γ = γ[g·sA + c], dxhat = γ·dy, S1 = Σ dy, S2 = Σ dy·xhat over the
//                K elements: dx = inv_std·(dxhat − γ·S1/K − xhat·γ·S2/K);
//                writes dx (dy's layout) and S1, S2 (G, C), from which the launcher sums
//                dγ = Σ_g S2 and dβ = Σ_g S1 (sA = 0) or which are dγ, dβ themselves
//                (sA = C: per-sample sums).
//
// Index decomposition and launch shape: a 2-D block (bx, by), bx·by <= 256; threadIdx.x
// picks the channel c = c0 + threadIdx.x of a tile of bx channels, threadIdx.y a lane of
// the elements (p = threadIdx.y, threadIdx.y + by, …, for every r). Each thread sums its
// lane, then the block reduces over threadIdx.y in shared memory (tree, __syncthreads
// between the levels). The launcher picks bx = 32 where channels are contiguous (sC = 1:
// channels-last, coalesced across x) and bx = 1, by = 256 where pixels are (sP = 1:
// NCHW). Grid (gx, gy): grid-stride loops over channel tiles (x) and groups g (y), both
// uniform across the block, so every thread reaches every barrier. Sums accumulate in
// double.
// NumPy references: minnst.layers.normalization.instance_norm_forward_cpu / _backward_cpu
// and batch_norm_forward_cpu / batch_norm_backward_cpu.
// Launchers: the same names with _gpu in minnst.layers.normalization.
#include "common.h"

// Σ over threadIdx.y of v (per threadIdx.x), returned to every thread; all threads of
// the block must call it. buf: __shared__ acc_t[MINNST_MAX_BLOCK].
__device__ __forceinline__ acc_t column_sum(acc_t v, acc_t* buf)
{
    const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
    const int bx = (int)blockDim.x, by = (int)blockDim.y;
    buf[ty * bx + tx] = v;
    __syncthreads();
    for (int s = MINNST_MAX_BLOCK / 2; s > 0; s >>= 1) {
        if (ty < s && ty + s < by)
            buf[ty * bx + tx] += buf[(ty + s) * bx + tx];
        __syncthreads();
    }
    const acc_t total = buf[tx];
    __syncthreads();
    return total;
}

template <typename T>
__global__ void norm_forward(const T* __restrict__ x, const T* __restrict__ gamma,
                             const T* __restrict__ beta, T* __restrict__ y,
                             T* __restrict__ xhat, T* __restrict__ mean, T* __restrict__ var,
                             T* __restrict__ inv_std,
                             int G, int C, int R, int P,
                             long long sG, long long sC, long long sR, long long sP,
                             long long sA, T eps, int has_gamma, int has_beta)
{
    __shared__ acc_t buf[MINNST_MAX_BLOCK];
    const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
    const int bx = (int)blockDim.x, by = (int)blockDim.y;
    const acc_t K = (acc_t)R * P;
    for (int g = (int)blockIdx.y; g < G; g += (int)gridDim.y) {
        for (int c0 = (int)blockIdx.x * bx; c0 < C; c0 += (int)gridDim.x * bx) {
            const int c = c0 + tx;
            const bool active = c < C;
            const long long base = (long long)g * sG + (long long)c * sC;
            acc_t s = 0;
            if (active)
                for (int r = 0; r < R; ++r)
                    for (int p = ty; p < P; p += by)
                        s += (acc_t)x[base + r * sR + p * sP];
            const T mu = (T)(column_sum(s, buf) / K);
            s = 0;
            if (active)
                for (int r = 0; r < R; ++r)
                    for (int p = ty; p < P; p += by) {
                        const acc_t d = (acc_t)(x[base + r * sR + p * sP] - mu);
                        s += d * d;
                    }
            const T v = (T)(column_sum(s, buf) / K);
            const T inv = T(1) / minnst_sqrt(v + eps);
            if (!active)
                continue;
            const T gam = has_gamma ? gamma[(long long)g * sA + c] : T(1);
            const T bet = has_beta ? beta[(long long)g * sA + c] : T(0);
            for (int r = 0; r < R; ++r)
                for (int p = ty; p < P; p += by) {
                    const long long o = base + r * sR + p * sP;
                    const T xh = (x[o] - mu) * inv;
                    xhat[o] = xh;
                    T out = xh;
                    if (has_gamma)
                        out = out * gam;
                    if (has_beta)
                        out = out + bet;
                    y[o] = out;
                }
            if (ty == 0) {
                mean[(long long)g * C + c] = mu;
                var[(long long)g * C + c] = v;
                inv_std[(long long)g * C + c] = inv;
            }
        }
    }
}

template <typename T>
__global__ void norm_backward(const T* __restrict__ dy, const T* __restrict__ xhat,
                              const T* __restrict__ gamma, const T* __restrict__ inv_std,
                              T* __restrict__ dx, T* __restrict__ sum_dy,
                              T* __restrict__ sum_dy_xhat,
                              int G, int C, int R, int P,
                              long long sG, long long sC, long long sR, long long sP,
                              long long sA, int has_gamma)
{
    __shared__ acc_t buf[MINNST_MAX_BLOCK];
    const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
    const int bx = (int)blockDim.x, by = (int)blockDim.y;
    const acc_t K = (acc_t)R * P;
    for (int g = (int)blockIdx.y; g < G; g += (int)gridDim.y) {
        for (int c0 = (int)blockIdx.x * bx; c0 < C; c0 += (int)gridDim.x * bx) {
            const int c = c0 + tx;
            const bool active = c < C;
            const long long base = (long long)g * sG + (long long)c * sC;
            acc_t s1 = 0, s2 = 0;
            if (active)
                for (int r = 0; r < R; ++r)
                    for (int p = ty; p < P; p += by) {
                        const long long o = base + r * sR + p * sP;
                        s1 += (acc_t)dy[o];
                        s2 += (acc_t)dy[o] * (acc_t)xhat[o];
                    }
            s1 = column_sum(s1, buf);
            s2 = column_sum(s2, buf);
            if (!active)
                continue;
            const T gam = has_gamma ? gamma[(long long)g * sA + c] : T(1);
            const T m1 = (T)((acc_t)gam * s1 / K);
            const T m2 = (T)((acc_t)gam * s2 / K);
            const T inv = inv_std[(long long)g * C + c];
            for (int r = 0; r < R; ++r)
                for (int p = ty; p < P; p += by) {
                    const long long o = base + r * sR + p * sP;
                    dx[o] = inv * (gam * dy[o] - m1 - xhat[o] * m2);
                }
            if (ty == 0) {
                sum_dy[(long long)g * C + c] = (T)s1;
                sum_dy_xhat[(long long)g * C + c] = (T)s2;
            }
        }
    }
}
