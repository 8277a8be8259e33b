// cuda_emu.h — the CUDA built-ins, for compiling minnst's kernel sources with g++ and
// running them on the CPU over their whole launch grid (see emu.py beside this file).
//
// How a launch runs: blocks one after another; inside a block every thread is a fiber
// (ucontext) with its own stack, and all fibers run on one OS thread. A fiber runs until
// it reaches __syncthreads() or returns; when every fiber of the block waits at the
// barrier, all are released into the next phase. The schedule is a launch argument:
// 0 runs blocks and, in every phase, threads in increasing order; 1 in decreasing order.
// emu.py runs every launch under both and requires bit-identical results, so a read of
// another thread's data without a barrier in between (it sees the data stale under one
// of the two orders) or two threads or blocks writing one element is reported. A block in
// which some threads returned while others wait at a barrier (a divergent
// __syncthreads) is reported as an error.
// __shared__ becomes `static`: one copy per kernel instantiation, shared by the fibers of
// the (single) running block, exactly the visibility CUDA gives it.
//
// Kernels are called through emu::launch, which checks each argument's type code against
// the kernel's parameter types (the traps of raw kernels: a Python int where the kernel
// takes int, a float64 array where it takes float*).
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <sys/mman.h>
#include <type_traits>
#include <ucontext.h>
#include <unistd.h>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
};

// the built-in index variables (set by the scheduler before a fiber runs)
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

using std::sqrt;
using std::exp;
using std::log;
using std::tanh;
using std::fabs;

// Fibers run one at a time, so a plain read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* address, T value)
{
    T old = *address;
    *address = old + value;
    return old;
}

namespace emu {

enum State { RUNNABLE, AT_BARRIER, DONE };

struct Fiber {
    ucontext_t ctx;
    State state;
    uint3 tid;
};

constexpr size_t kStack = 256 * 1024;   // bytes of stack per fiber
constexpr unsigned kMaxThreads = 1024;  // CUDA's limit per block

inline ucontext_t scheduler;
inline Fiber* current = nullptr;
inline const std::function<void()>* body = nullptr;

// Fiber stacks, reused across launches; a PROT_NONE guard page below each one turns a
// stack overflow into a fault instead of silent corruption.
struct StackPool {
    char* base = nullptr;
    size_t count = 0;
    size_t page = 0;
    char* stack(size_t i) { return base + i * (kStack + page) + page; }
    bool reserve(size_t n)
    {
        if (n <= count)
            return true;
        if (base)
            munmap(base, count * (kStack + page));
        page = (size_t)sysconf(_SC_PAGESIZE);
        size_t bytes = n * (kStack + page);
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            base = nullptr;
            count = 0;
            return false;
        }
        base = static_cast<char*>(p);
        count = n;
        for (size_t i = 0; i < n; ++i)
            mprotect(base + i * (kStack + page), page, PROT_NONE);
        return true;
    }
};

inline StackPool stacks;
inline std::vector<Fiber> fibers;

inline void fiber_entry()
{
    (*body)();
    current->state = DONE;  // returning resumes uc_link, the scheduler
}

inline void syncthreads()
{
    current->state = AT_BARRIER;
    swapcontext(&current->ctx, &scheduler);
}

inline void fail(char* err, int errlen, const char* fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, (size_t)errlen, fmt, ap);
    va_end(ap);
}

// Runs one block to completion; returns 0, or non-zero with a message in err.
inline int run_block(unsigned n, bool reverse, char* err, int errlen)
{
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = fibers[i];
        f.state = RUNNABLE;
        f.tid.x = i % blockDim.x;
        f.tid.y = (i / blockDim.x) % blockDim.y;
        f.tid.z = i / (blockDim.x * blockDim.y);
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks.stack(i);
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = &scheduler;
        makecontext(&f.ctx, fiber_entry, 0);
    }
    for (unsigned phase = 0;; ++phase) {
        for (unsigned k = 0; k < n; ++k) {
            Fiber& f = fibers[reverse ? n - 1 - k : k];
            if (f.state != RUNNABLE)
                continue;
            current = &f;
            threadIdx = f.tid;
            swapcontext(&scheduler, &f.ctx);
        }
        unsigned done = 0, waiting = 0;
        for (unsigned i = 0; i < n; ++i) {
            done += fibers[i].state == DONE;
            waiting += fibers[i].state == AT_BARRIER;
        }
        if (done == n)
            return 0;
        if (done > 0) {
            fail(err, errlen,
                 "divergent __syncthreads in block (%u, %u, %u): %u threads returned while %u "
                 "wait at a barrier (phase %u)",
                 blockIdx.x, blockIdx.y, blockIdx.z, done, waiting, phase);
            return 3;
        }
        for (unsigned i = 0; i < n; ++i)
            fibers[i].state = RUNNABLE;
    }
}

// geom: grid x, y, z, block x, y, z, dynamic shared memory bytes, schedule (0 or 1).
inline int run_grid(const unsigned* geom, const std::function<void()>& kernel, char* err, int errlen)
{
    gridDim = dim3{geom[0], geom[1], geom[2]};
    blockDim = dim3{geom[3], geom[4], geom[5]};
    const unsigned long long n = (unsigned long long)blockDim.x * blockDim.y * blockDim.z;
    if (gridDim.x < 1 || gridDim.y < 1 || gridDim.z < 1 || gridDim.y > 65535 || gridDim.z > 65535) {
        fail(err, errlen, "invalid grid (%u, %u, %u)", gridDim.x, gridDim.y, gridDim.z);
        return 4;
    }
    if (n < 1 || n > kMaxThreads || blockDim.z > 64) {
        fail(err, errlen, "invalid block (%u, %u, %u)", blockDim.x, blockDim.y, blockDim.z);
        return 4;
    }
    if (geom[6] != 0) {
        fail(err, errlen, "dynamic shared memory is not emulated (the kernels size it statically)");
        return 4;
    }
    if (!stacks.reserve(n)) {
        fail(err, errlen, "cannot allocate %llu fiber stacks", n);
        return 5;
    }
    if (fibers.size() < n)
        fibers.resize(n);
    body = &kernel;
    const bool reverse = geom[7] != 0;
    const unsigned long long blocks = (unsigned long long)gridDim.x * gridDim.y * gridDim.z;
    for (unsigned long long b = 0; b < blocks; ++b) {
        const unsigned long long k = reverse ? blocks - 1 - b : b;
        blockIdx = uint3{(unsigned)(k % gridDim.x), (unsigned)(k / gridDim.x % gridDim.y),
                         (unsigned)(k / gridDim.x / gridDim.y)};
        int rc = run_block((unsigned)n, reverse, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

// Type codes shared with emu.py: "f4" float, "f8" double, "i4" int, "i8" (long) long,
// "u1" unsigned char, "u4" unsigned int; a leading '*' for a pointer to that type.
template <typename T>
std::string type_code()
{
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>)
        return "*" + type_code<std::remove_pointer_t<U>>();
    else if constexpr (std::is_same_v<U, float>)
        return "f4";
    else if constexpr (std::is_same_v<U, double>)
        return "f8";
    else if constexpr (std::is_same_v<U, int>)
        return "i4";
    else if constexpr (std::is_same_v<U, long long> || std::is_same_v<U, long>)
        return "i8";
    else if constexpr (std::is_same_v<U, unsigned char>)
        return "u1";
    else if constexpr (std::is_same_v<U, unsigned int>)
        return "u4";
    else
        static_assert(sizeof(U) == 0, "kernel parameter type without an emulation type code");
}

template <typename... A, std::size_t... I>
int launch_impl(void (*kernel)(A...), const unsigned* geom, void** vals, const char** codes,
                int nargs, char* err, int errlen, std::index_sequence<I...>)
{
    if (nargs != (int)sizeof...(A)) {
        fail(err, errlen, "the kernel takes %d arguments, got %d", (int)sizeof...(A), nargs);
        return 1;
    }
    const std::vector<std::string> expected{type_code<A>()...};
    for (int i = 0; i < nargs; ++i)
        if (expected[(size_t)i] != codes[i]) {
            fail(err, errlen, "argument %d: the kernel takes '%s', got '%s'", i,
                 expected[(size_t)i].c_str(), codes[i]);
            return 2;
        }
    const std::function<void()> call = [&]() {
        kernel(*static_cast<std::remove_cv_t<A>*>(vals[I])...);
    };
    return run_grid(geom, call, err, errlen);
}

template <typename... A>
int launch(void (*kernel)(A...), const unsigned* geom, void** vals, const char** codes,
           int nargs, char* err, int errlen)
{
    return launch_impl(kernel, geom, vals, codes, nargs, err, errlen,
                       std::index_sequence_for<A...>{});
}

}  // namespace emu

#define __syncthreads() emu::syncthreads()
