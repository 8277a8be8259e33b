// losses.cu — the loss pieces that are not matrix products: each writes a gradient and
// per-block partial sums of the loss value (in double); the launcher adds the partials.
//
// content_loss:   d = F[t] − P[t mod nP] (P broadcast over the batch when nP < n);
//                 D[t] = d·scale, masked by the ReLU (D[t]·[F[t] > 0]) when relu_mask;
//                 partial[block] = Σ d² over the block's elements.
//                 NumPy reference: minnst.losses.content_loss_cpu (relu_mask: followed by
//                 minnst.layers.activations.relu_backward with F as the ReLU output).
//                 scale = minnst.losses.content_grad_factor.
// style_residual: r = G[t] / gdiv − A[t mod nA] (A broadcast over the batch);
//                 D[t] = r·scale; partial[block] = Σ r². The Gram matrix G = F Fᵀ before
//                 and the gradient D·F after are cuBLAS matrix products (CuPy's matmul).
//                 gdiv = minnst.losses.gram_divisor, scale = minnst.losses.style_grad_factor.
//                 NumPy reference: minnst.losses.style_loss_cpu.
// tv_loss:        x viewed as (B, H, K1, W, K2), C-contiguous, the two spatial axes H and
//                 W; dv = x[i+1, j] − x[i, j], dh = x[i, j+1] − x[i, j];
//                 grad = 2·(dv[i−1, j] − dv[i, j] + dh[i, j−1] − dh[i, j]) (terms outside
//                 the image are 0), added in the NumPy code's order (bit-identical);
//                 partial[block] = Σ dv² + dh² of the differences that start at the
//                 block's elements. NumPy reference: minnst.losses.tv_loss_cpu.
//
// Index decomposition: one flat index t over the elements (the launcher passes the
// arrays in one common memory order). Launch shape: 1-D grid of 1-D blocks (256
// threads), grid-stride loop over t, then a shared-memory tree reduction of the block's
// sums (block_sum in common.h); partial has gridDim.x entries.
// Launchers: minnst.losses.content_loss_gpu / style_loss_gpu / tv_loss_gpu.
#include "common.h"

template <typename T>
__global__ void content_loss(const T* __restrict__ F, const T* __restrict__ P,
                             T* __restrict__ D, acc_t* __restrict__ partial,
                             long long n, long long nP, T scale, int relu_mask)
{
    __shared__ acc_t buf[MINNST_MAX_BLOCK];
    acc_t s = 0;
    for (long long t = grid_start(); t < n; t += grid_stride()) {
        const T f = F[t];
        const T d = f - P[t % nP];
        s += (acc_t)d * (acc_t)d;
        T g = d * scale;
        if (relu_mask)
            g = g * (f > T(0) ? T(1) : T(0));
        D[t] = g;
    }
    s = block_sum(s, buf);
    if (block_tid() == 0)
        partial[blockIdx.x] = s;
}

template <typename T>
__global__ void style_residual(const T* __restrict__ G, const T* __restrict__ A,
                               T* __restrict__ D, acc_t* __restrict__ partial,
                               long long n, long long nA, T gdiv, T scale)
{
    __shared__ acc_t buf[MINNST_MAX_BLOCK];
    acc_t s = 0;
    for (long long t = grid_start(); t < n; t += grid_stride()) {
        const T r = G[t] / gdiv - A[t % nA];
        s += (acc_t)r * (acc_t)r;
        D[t] = r * scale;
    }
    s = block_sum(s, buf);
    if (block_tid() == 0)
        partial[blockIdx.x] = s;
}

template <typename T>
__global__ void tv_loss(const T* __restrict__ x, T* __restrict__ grad, acc_t* __restrict__ partial,
                        int B, int H, int K1, int W, int K2)
{
    __shared__ acc_t buf[MINNST_MAX_BLOCK];
    const long long sW = K2;
    const long long sH = (long long)K1 * W * K2;
    const long long n = (long long)B * H * sH;
    acc_t s = 0;
    for (long long t = grid_start(); t < n; t += grid_stride()) {
        long long m = t / K2;
        const int j = (int)(m % W); m /= W;
        m /= K1;
        const int i = (int)(m % H);
        const T v = x[t];
        T g = T(0);
        if (i > 0)
            g += T(2) * (v - x[t - sH]);
        if (i < H - 1) {
            const T d = x[t + sH] - v;
            g -= T(2) * d;
            s += (acc_t)d * (acc_t)d;
        }
        if (j > 0)
            g += T(2) * (v - x[t - sW]);
        if (j < W - 1) {
            const T d = x[t + sW] - v;
            g -= T(2) * d;
            s += (acc_t)d * (acc_t)d;
        }
        grad[t] = g;
    }
    s = block_sum(s, buf);
    if (block_tid() == 0)
        partial[blockIdx.x] = s;
}
