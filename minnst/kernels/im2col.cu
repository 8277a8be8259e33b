// im2col.cu — the convolution's receptive fields in channels-last layout, and the adjoint.
//
// im2col:      cols[n, r, j, u, v, c] = xpad[n, (i0 + r)·s + u, j·s + v, c]
//              xpad (N, Hp, Wp, C) and cols (N, rows, OW, KH, KW, C), both C-contiguous;
//              rows = i1 − i0 output rows of the band starting at output row i0.
//   Index decomposition: one thread per element of cols, flat t =
//   ((((n·rows + r)·OW + j)·KH + u)·KW + v)·C + c; consecutive threads differ in c, so
//   both the reads of xpad and the writes of cols are coalesced.
//   Launch shape: 1-D grid of 1-D blocks (256 threads), grid-stride loop over t.
//   NumPy reference: minnst.layers.im2col.im2col_cpu.
//   Launcher: minnst.layers.im2col.im2col_gpu.
//
// col2im_add:  dxpad[n, p, q, c] += Σ_{r,u: (i0+r)·s+u = p} Σ_{j,v: j·s+v = q} cols[n, r, j, u, v, c]
//              (the adjoint of im2col, accumulated into dxpad in place).
//   Written as a gather over the elements of dxpad, so no two threads write the same
//   element and no atomics are needed: one thread per element of the band of rows the
//   cols touch, p ∈ [i0·s, min(Hp, (i0 + rows − 1)·s + KH)), all q and c, flat t =
//   ((n·bandH + (p − p0))·Wp + q)·C + c. Each thread visits the taps in the same order as
//   the NumPy code (u outer, v inner), so the sums are bit-identical to it.
//   Launch shape: 1-D grid of 1-D blocks (256 threads), grid-stride loop over t.
//   NumPy reference: minnst.layers.im2col.col2im_add_cpu.
//   Launcher: minnst.layers.im2col.col2im_add_gpu.
#include "common.h"

template <typename T>
__global__ void im2col(const T* __restrict__ xpad, T* __restrict__ cols,
                       int N, int Hp, int Wp, int C, int KH, int KW, int stride,
                       int i0, int rows, int OW)
{
    const long long total = (long long)N * rows * OW * KH * KW * C;
    for (long long t = grid_start(); t < total; t += grid_stride()) {
        long long k = t;
        const int c = (int)(k % C); k /= C;
        const int v = (int)(k % KW); k /= KW;
        const int u = (int)(k % KH); k /= KH;
        const int j = (int)(k % OW); k /= OW;
        const int r = (int)(k % rows);
        const int n = (int)(k / rows);
        const int p = (i0 + r) * stride + u;
        const int q = j * stride + v;
        cols[t] = xpad[(((long long)n * Hp + p) * Wp + q) * C + c];
    }
}

template <typename T>
__global__ void col2im_add(T* __restrict__ dxpad, const T* __restrict__ cols,
                           int N, int Hp, int Wp, int C, int KH, int KW, int stride,
                           int i0, int rows, int OW)
{
    const int p0 = i0 * stride;
    const int p1 = imin(Hp, (i0 + rows - 1) * stride + KH);
    const int bandH = p1 - p0;
    const long long total = (long long)N * bandH * Wp * C;
    for (long long t = grid_start(); t < total; t += grid_stride()) {
        long long k = t;
        const int c = (int)(k % C); k /= C;
        const int q = (int)(k % Wp); k /= Wp;
        const int pr = (int)(k % bandH);  // p − p0
        const int n = (int)(k / bandH);
        const long long at = (((long long)n * Hp + p0 + pr) * Wp + q) * C + c;
        T acc = dxpad[at];
        for (int u = 0; u < KH; ++u) {
            const int ru = pr - u;  // = r·s for the output row r that reads p with tap u
            if (ru < 0 || ru % stride != 0 || ru / stride >= rows)
                continue;
            const int r = ru / stride;
            for (int v = 0; v < KW; ++v) {
                const int jv = q - v;
                if (jv < 0 || jv % stride != 0 || jv / stride >= OW)
                    continue;
                const int j = jv / stride;
                acc += cols[((((long long)n * rows + r) * OW + j) * KH + u) * KW * C
                            + (long long)v * C + c];
            }
        }
        dxpad[at] = acc;
    }
}
