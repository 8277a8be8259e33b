// pad.cu — spatial padding (zero or reflection) and its adjoint, for any memory layout.
//
// pad2d_forward:  y[c0, c1, c2, c3] = x[r0(c0 + f0 − p0), …, r3(c3 + f3 − p3)]
//   over 4 loop dimensions d with output sizes o_d, input sizes n_d, pads p_d (0 for the
//   unpadded dims) and offsets f_d of the output window in padded coordinates (0 for the
//   whole padded array; the first padded row of a band for padded_rows_cl). r_d is the
//   identity inside [0, n_d); outside, 'reflect' mirrors without repeating the edge
//   (… x2 x1 | x0 x1 x2 …) and 'zero' gives 0.
// pad2d_backward: dx[c0, c1, c2, c3] = Σ over the padded positions that r maps onto
//   (c0, …, c3) of dyp at those positions: per dimension the interior position c + p and,
//   for reflection, the mirrored ones p − c (1 <= c <= p) and p + 2(n − 1) − c
//   (n − 1 − p <= c <= n − 2): at most 3 per dimension, a gather without atomics.
//
// Layout: the launcher orders the 4 loop dimensions as the *written* array's memory order
// and passes that array C-contiguous in that order, so the writes are y[t] / dx[t] with t
// the flat index (coalesced); the array that is read is addressed through element strides
// s0..s3 (any dense layout: the convolution reads NCHW-ordered x and writes a
// channels-last padded buffer).
// Index decomposition: t = ((c0·o1 + c1)·o2 + c2)·o3 + c3 over the written array.
// Launch shape: 1-D grid of 1-D blocks (256 threads), grid-stride loop over t.
// NumPy references: minnst.layers.padding.pad2d_cpu / pad2d_backward_cpu / padded_rows_cl_cpu.
// Launchers: minnst.layers.padding.pad2d_gpu / pad2d_backward_gpu / padded_rows_cl_gpu.
#include "common.h"

// Source coordinate of padded position c in a dimension of input size n and pad p, or −1
// for a zero.
__device__ __forceinline__ int pad_source(int c, int n, int p, int reflect)
{
    int m = c - p;
    if (m >= 0 && m < n)
        return m;
    if (!reflect)
        return -1;
    return m < 0 ? -m : 2 * (n - 1) - m;
}

// Padded positions whose value was copied from input position c (forward's r⁻¹(c)).
__device__ __forceinline__ int pad_targets(int c, int n, int p, int reflect, int* out)
{
    int count = 0;
    out[count++] = c + p;
    if (reflect && p > 0) {
        if (c >= 1 && c <= p)
            out[count++] = p - c;
        if (c >= n - 1 - p && c <= n - 2)
            out[count++] = p + 2 * (n - 1) - c;
    }
    return count;
}

template <typename T>
__global__ void pad2d_forward(const T* __restrict__ x, T* __restrict__ y, int reflect,
                              int o0, int o1, int o2, int o3,
                              int n0, int n1, int n2, int n3,
                              int p0, int p1, int p2, int p3,
                              int f0, int f1, int f2, int f3,
                              long long s0, long long s1, long long s2, long long s3)
{
    const long long total = (long long)o0 * o1 * o2 * o3;
    for (long long t = grid_start(); t < total; t += grid_stride()) {
        long long m = t;
        const int c3 = (int)(m % o3); m /= o3;
        const int c2 = (int)(m % o2); m /= o2;
        const int c1 = (int)(m % o1);
        const int c0 = (int)(m / o1);
        const int a0 = pad_source(c0 + f0, n0, p0, reflect);
        const int a1 = pad_source(c1 + f1, n1, p1, reflect);
        const int a2 = pad_source(c2 + f2, n2, p2, reflect);
        const int a3 = pad_source(c3 + f3, n3, p3, reflect);
        if (a0 < 0 || a1 < 0 || a2 < 0 || a3 < 0)
            y[t] = T(0);
        else
            y[t] = x[a0 * s0 + a1 * s1 + a2 * s2 + a3 * s3];
    }
}

template <typename T>
__global__ void pad2d_backward(const T* __restrict__ dyp, T* __restrict__ dx, int reflect,
                               int n0, int n1, int n2, int n3,
                               int p0, int p1, int p2, int p3,
                               long long s0, long long s1, long long s2, long long s3)
{
    const long long total = (long long)n0 * n1 * n2 * n3;
    for (long long t = grid_start(); t < total; t += grid_stride()) {
        long long m = t;
        const int c3 = (int)(m % n3); m /= n3;
        const int c2 = (int)(m % n2); m /= n2;
        const int c1 = (int)(m % n1);
        const int c0 = (int)(m / n1);
        int q0[3], q1[3], q2[3], q3[3];
        const int k0 = pad_targets(c0, n0, p0, reflect, q0);
        const int k1 = pad_targets(c1, n1, p1, reflect, q1);
        const int k2 = pad_targets(c2, n2, p2, reflect, q2);
        const int k3 = pad_targets(c3, n3, p3, reflect, q3);
        T acc = T(0);
        for (int a = 0; a < k0; ++a)
            for (int b = 0; b < k1; ++b)
                for (int c = 0; c < k2; ++c)
                    for (int d = 0; d < k3; ++d)
                        acc += dyp[q0[a] * s0 + q1[b] * s1 + q2[c] * s2 + q3[d] * s3];
        dx[t] = acc;
    }
}
