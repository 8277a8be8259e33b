// selftest.cu — deliberately broken kernels: the emulator must catch each of them.
// (Test-only; not part of minnst.)
//
// racy_sum:           block reduction with the barriers between the tree levels missing.
// divergent_barrier:  threads 0–4 return before a __syncthreads the others reach.
// out_of_bounds:      writes one element past the end of y.
// write_race:         every thread writes y[0] (the winner depends on the schedule).
// block_sum_kernel:   the correct reduction (block_sum of common.h), for comparison.
#include "common.h"

template <typename T>
__global__ void racy_sum(const T* __restrict__ x, T* __restrict__ out)
{
    __shared__ T buf[MINNST_MAX_BLOCK];
    const int tid = (int)threadIdx.x;
    buf[tid] = x[tid];
    __syncthreads();
    for (int s = (int)blockDim.x / 2; s > 0; s >>= 1) {
        if (tid < s)
            buf[tid] += buf[tid + s];
        // missing __syncthreads()
    }
    if (tid == 0)
        out[0] = buf[0];
}

template <typename T>
__global__ void block_sum_kernel(const T* __restrict__ x, acc_t* __restrict__ out)
{
    __shared__ acc_t buf[MINNST_MAX_BLOCK];
    const acc_t s = block_sum((acc_t)x[block_tid()], buf);
    if (block_tid() == 0)
        out[0] = s;
}

template <typename T>
__global__ void divergent_barrier(T* __restrict__ y)
{
    if (threadIdx.x < 5)
        return;
    __syncthreads();
    y[threadIdx.x] = T(1);
}

template <typename T>
__global__ void out_of_bounds(T* __restrict__ y, int n)
{
    for (long long t = grid_start(); t <= n; t += grid_stride())
        y[t] = T(t);
}

template <typename T>
__global__ void write_race(T* __restrict__ y)
{
    y[0] = T(threadIdx.x);
}
