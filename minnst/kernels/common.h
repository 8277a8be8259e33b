// common.h — helpers shared by minnst's kernels.
//
// No CUDA or C++ standard headers: the same text is compiled by NVRTC at run time (CuPy
// inlines this file into each source), by nvcc in the compile check, and by g++ in the
// CPU emulation (tests/kernel_emu/cuda_emu.h supplies the CUDA built-ins there).
#pragma once

// Every launcher uses at most this many threads per block, so block-wide scratch arrays
// in shared memory can be sized statically (no dynamic shared memory, no templates on
// extern __shared__ arrays).
#define MINNST_MAX_BLOCK 256

// Reductions (loss values, normalisation statistics) accumulate in double for both
// float32 and float64 data: the sums run over up to ~10^7 terms.
typedef double acc_t;

// Grid-stride loops: the first flat index of this thread and the step between its items.
__device__ __forceinline__ long long grid_start()
{
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long grid_stride()
{
    return (long long)gridDim.x * blockDim.x;
}

// Flat index of this thread inside its block, and the block's thread count.
__device__ __forceinline__ int block_tid()
{
    return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

__device__ __forceinline__ int block_size()
{
    return (int)(blockDim.x * blockDim.y * blockDim.z);
}

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

template <typename T>
__device__ __forceinline__ bool is_nan(T v) { return v != v; }

// Sum of v over all threads of the block, returned to every thread. buf is a
// __shared__ acc_t[MINNST_MAX_BLOCK] of the caller; every thread of the block must call
// this (it contains barriers). Tree reduction over MINNST_MAX_BLOCK slots in which the
// slots past the block's size count as zero, so any block size up to the maximum works.
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* buf)
{
    const int tid = block_tid();
    const int n = block_size();
    buf[tid] = v;
    __syncthreads();
    for (int s = MINNST_MAX_BLOCK / 2; s > 0; s >>= 1) {
        if (tid < s && tid + s < n)
            buf[tid] += buf[tid + s];
        __syncthreads();
    }
    const acc_t total = buf[0];
    __syncthreads();  // buf may be reused by the caller right after
    return total;
}

__device__ __forceinline__ float minnst_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double minnst_sqrt(double v) { return sqrt(v); }
