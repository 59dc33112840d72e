// CUDA on the host: enough of the CUDA C++ dialect for scratchllm's kernels (and a kernel author's new ones) to
// compile with g++ and run with CUDA's semantics, one block at a time, each CUDA thread an OS thread.
//
//   threadIdx, blockIdx, blockDim, gridDim   thread_local, set for each thread before it runs the kernel
//   __shared__                               static storage: one block runs at a time, so it is the block's
//                                            (an index past a __shared__ array's end corrupts what follows it:
//                                            silently, or far enough past, a crash; the emulator's own state is
//                                            not there)
//   __syncthreads()                          a barrier over the block's threads (a thread that has returned
//                                            is dropped from it, as on the GPU)
//   __shfl_sync, __shfl_xor_sync,            every lane of the warp writes its value, waits for the whole
//   __shfl_down_sync, __shfl_up_sync         warp, reads its source lane's, waits again: warp-synchronous. A
//                                            full mask while some lanes of the warp have returned (or in a
//                                            block whose size is not a multiple of 32) is undefined on a GPU:
//                                            reported, every time
//   atomicAdd                                under one lock (blocks run one after the other anyway)
//   a deadlock                               a barrier that waits longer than the launch's timeout (a
//                                            __syncthreads in divergent code, a shuffle some lanes skip) fails
//                                            the launch, saying where the threads wait
//   math, bit casts, __ldg, min, max         <cmath>'s float and double overloads (the host's libm: the
//                                            device's may differ in the last bits), rsqrtf, fmaxf, ...
//
// Not emulated: dynamic (extern) shared memory, timing, the device's libm, races between blocks (they run one
// after the other), out-of-bounds reads that land in valid host memory.
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

using std::erf;
using std::exp;
using std::fabs;
using std::fmax;
using std::fmin;
using std::log;
using std::sqrt;
using std::tanh;
inline float expf(float x) { return std::exp(x); }
inline float logf(float x) { return std::log(x); }
inline float sqrtf(float x) { return std::sqrt(x); }
inline float tanhf(float x) { return std::tanh(x); }
inline float erff(float x) { return std::erf(x); }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
inline float fminf(float a, float b) { return std::fmin(a, b); }
inline float fabsf(float x) { return std::fabs(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline int min(int a, int b) { return a < b ? a : b; }  // CUDA's integer min and max
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline float __logf(float x) { return std::log(x); }
template <typename T> inline T __ldg(const T* p) { return *p; }

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3() = default;
    dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

namespace emu {

struct Abort {};  // thrown in every thread of a block whose launch failed (a deadlock): they unwind and leave

struct Launch {  // one launch's state, on the launcher's stack (never next to a kernel's __shared__ arrays)
    std::mutex lock, atomic_lock;
    std::string error;
    double timeout_s = 20;
};
inline thread_local Launch* tl_launch = nullptr;

inline void report(const std::string& what) {
    std::lock_guard<std::mutex> g(tl_launch->lock);
    if (tl_launch->error.empty()) tl_launch->error = what;
}

struct Block;

struct Barrier {  // std::barrier with a timeout, and breakable
    Block* block = nullptr;
    std::mutex m;
    std::condition_variable cv;
    int expected = 0, arrived = 0;
    long phase = 0;
    bool broken = false;

    void wait();
    void drop() {
        std::lock_guard<std::mutex> g(m);
        --expected;
        if (!broken && arrived > 0 && arrived == expected) {
            arrived = 0;
            ++phase;
            cv.notify_all();
        }
    }
    void brk() {
        std::lock_guard<std::mutex> g(m);
        broken = true;
        cv.notify_all();
    }
    int waiting() {
        std::lock_guard<std::mutex> g(m);
        return arrived;
    }
};

struct Warp {
    int lanes = 32;               // threads in this warp (the last warp of a block may have fewer)
    std::atomic<int> active{32};  // lanes that have not returned
    Barrier sync;
    uint64_t slots[32] = {};      // the shuffles' exchange, as raw bits
};

struct Block {
    Barrier sync;
    std::vector<std::unique_ptr<Warp>> warps;
    std::atomic<bool> failed{false};

    void deadlock() {
        if (failed.exchange(true)) return;
        int at_sync = sync.waiting(), at_shfl = 0;
        for (auto& w : warps) at_shfl += w->sync.waiting();
        report("deadlock in block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
               std::to_string(blockIdx.z) + "): after " + std::to_string((int)tl_launch->timeout_s) + " s, " +
               std::to_string(at_sync) + " threads wait at __syncthreads and " + std::to_string(at_shfl) +
               " at warp shuffles (a __syncthreads in divergent code, or a shuffle that some lanes of a warp skip)");
        sync.brk();
        for (auto& w : warps) w->sync.brk();
    }
};

inline void Barrier::wait() {
    std::unique_lock<std::mutex> g(m);
    if (broken) throw Abort{};
    const long mine = phase;
    if (++arrived == expected) {
        arrived = 0;
        ++phase;
        cv.notify_all();
        return;
    }
    const auto limit = std::chrono::duration<double>(tl_launch->timeout_s);
    if (!cv.wait_for(g, limit, [&] { return phase != mine || broken; })) {
        g.unlock();
        block->deadlock();
        throw Abort{};
    }
    if (phase == mine) throw Abort{};  // broken while waiting
}

inline thread_local Block* tl_block = nullptr;
inline thread_local Warp* tl_warp = nullptr;
inline thread_local int tl_lane = 0;

// The shuffles: every lane writes, the warp waits, each lane reads its source (its own value when the source is
// outside its segment of `width` lanes, CUDA's rule), the warp waits again.
template <typename T>
inline T shuffle(unsigned mask, T v, int src, bool inside, const char* name) {
    static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
    Warp& w = *tl_warp;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.slots[tl_lane] = bits;
    w.sync.wait();  // every lane that will take part has arrived, every lane that returned has left
    if (mask == 0xffffffffu && (w.lanes < 32 || w.active.load() < 32)) {
        const int t = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
        report(std::string(name) + " with a full mask in warp " + std::to_string(t / 32) + " of block (" +
               std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) +
               "): " + (w.lanes < 32 ? "a block of " + std::to_string(blockDim.x * blockDim.y * blockDim.z) +
                                           " threads (not a multiple of 32) leaves its last warp " +
                                           std::to_string(w.lanes) + " lanes"
                                     : std::to_string(32 - w.active.load()) + " of its 32 lanes have returned") +
               ": undefined on a GPU");
    }
    T out = v;
    if (inside && src >= 0 && src < w.lanes) std::memcpy(&out, &w.slots[src], sizeof(T));
    w.sync.wait();
    return out;
}

}  // namespace emu

inline void __syncthreads() { emu::tl_block->sync.wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = emu::tl_lane, src = lane ^ lane_mask;
    return emu::shuffle(mask, v, src, src / width == lane / width, "__shfl_xor_sync");
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = emu::tl_lane;
    return emu::shuffle(mask, v, lane + (int)delta, lane % width + (int)delta < width, "__shfl_down_sync");
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = emu::tl_lane;
    return emu::shuffle(mask, v, lane - (int)delta, lane % width - (int)delta >= 0, "__shfl_up_sync");
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    const int lane = emu::tl_lane;
    return emu::shuffle(mask, v, lane / width * width + ((src_lane % width) + width) % width, true, "__shfl_sync");
}

template <typename T>
inline T atomicAdd(T* address, T v) {
    std::lock_guard<std::mutex> g(emu::tl_launch->atomic_lock);
    const T old = *address;
    *address = old + v;
    return old;
}

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }

namespace emu {

// Run fn as the kernel on every thread of every block of the grid: blocks one after the other, a block's threads
// at once. Returns 0, or 1 with the first error written to err (at most errlen bytes, NUL-terminated).
inline int launch(dim3 grid, dim3 block, double timeout_s, char* err, int errlen, const std::function<void()>& fn) {
    Launch state;
    state.timeout_s = timeout_s;
    tl_launch = &state;
    const int threads = (int)(block.x * block.y * block.z);
    if (threads < 1 || threads > 1024)
        report("a block of " + std::to_string(threads) + " threads (1 to 1024 on a GPU)");
    for (unsigned bz = 0; bz < grid.z && state.error.empty(); ++bz)
        for (unsigned by = 0; by < grid.y && state.error.empty(); ++by)
            for (unsigned bx = 0; bx < grid.x && state.error.empty(); ++bx) {
                Block b;
                b.sync.block = &b;
                b.sync.expected = threads;
                for (int w0 = 0; w0 < threads; w0 += 32) {
                    auto w = std::make_unique<Warp>();
                    w->lanes = threads - w0 < 32 ? threads - w0 : 32;
                    w->active = w->lanes;
                    w->sync.block = &b;
                    w->sync.expected = w->lanes;
                    b.warps.push_back(std::move(w));
                }
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (int t = 0; t < threads; ++t) {
                    pool.emplace_back([&, t, bx, by, bz] {
                        tl_launch = &state;
                        gridDim = grid;
                        blockDim = block;
                        threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                        blockIdx = dim3(bx, by, bz);
                        tl_block = &b;
                        tl_warp = b.warps[t / 32].get();
                        tl_lane = t % 32;
                        try {
                            fn();
                        } catch (const Abort&) {
                        } catch (const std::exception& e) {
                            report(e.what());
                        }
                        tl_warp->active.fetch_sub(1);
                        tl_warp->sync.drop();  // a returned thread no longer holds back its warp
                        b.sync.drop();         // nor its block
                    });
                }
                for (auto& th : pool) th.join();
            }
    tl_launch = nullptr;
    std::snprintf(err, (size_t)errlen, "%s", state.error.c_str());
    return state.error.empty() ? 0 : 1;
}

}  // namespace emu
