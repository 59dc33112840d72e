// CUDA on the host: just enough of the CUDA C++ dialect for scratchllm's kernels to compile with g++ and run
// with CUDA's semantics, one block at a time, each CUDA thread an OS thread.
//
//   threadIdx, blockIdx, blockDim, gridDim   thread_local, set for each thread before it runs the kernel
//   __shared__                               static storage: one block runs at a time, so it is the block's
//   __syncthreads()                          a barrier over the block's threads (a thread that has returned
//                                            is dropped from it, as on the GPU)
//   __shfl_xor_sync(mask, v, lane_mask)      every lane of the warp writes v, waits for the whole warp, reads
//                                            its partner's, waits again: warp-synchronous, as on the GPU. A
//                                            full mask while some lanes of the warp have returned is a
//                                            divergence bug on a GPU: it is reported, not emulated
//   __int_as_float, __longlong_as_double     bit casts
//   math                                     the float and double overloads of <cmath> (the host's libm: the
//                                            device's may differ in the last bits)
//
// What it cannot show: timing, the device's libm, the memory model between blocks (blocks run one after the
// other here), out-of-bounds reads that happen to land in valid host memory.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
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
using std::log;
using std::sqrt;
using std::tanh;
inline float expf(float x) { return std::exp(x); }
inline float logf(float x) { return std::log(x); }
inline float sqrtf(float x) { return std::sqrt(x); }

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3() = default;
    dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

struct Warp {
    explicit Warp(int lanes_) : lanes(lanes_), active(lanes_), sync(lanes_) {}
    int lanes;                 // threads in this warp (the last warp of a block may have fewer than 32)
    std::atomic<int> active;   // lanes that have not returned
    std::barrier<> sync;
    uint64_t slots[32] = {};   // the shuffles' exchange, as raw bits
};

struct Block {
    explicit Block(int threads) : sync(threads) {}
    std::barrier<> sync;
    std::vector<std::unique_ptr<Warp>> warps;
};

inline thread_local Block* tl_block = nullptr;
inline thread_local Warp* tl_warp = nullptr;
inline thread_local int tl_lane = 0;

inline std::mutex error_mutex;
inline std::string first_error;

inline void report(const std::string& what) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (first_error.empty()) first_error = what;
}

}  // namespace emu

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline void __syncthreads() { emu::tl_block->sync.arrive_and_wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
    emu::Warp& w = *emu::tl_warp;
    if (mask == 0xffffffffu && (w.lanes < 32 || w.active.load() < 32))
        emu::report("__shfl_xor_sync with a full mask in a warp whose lanes are not all active (" +
                    std::to_string(w.active.load()) + " of 32): undefined on a GPU");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.slots[emu::tl_lane] = bits;
    w.sync.arrive_and_wait();
    const int src = emu::tl_lane ^ lane_mask;
    T out = v;  // a partner outside the warp: the lane keeps its own value (CUDA's rule)
    if (src < w.lanes) std::memcpy(&out, &w.slots[src], sizeof(T));
    w.sync.arrive_and_wait();
    return out;
}

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }

namespace emu {

// Run fn as the kernel body on every thread of every block of the grid; blocks one after the other, a block's
// threads at once. Returns 0, or 1 with first_error set.
inline int launch(dim3 grid, dim3 block, const std::function<void()>& fn) {
    first_error.clear();
    const int threads = (int)(block.x * block.y * block.z);
    if (threads < 1 || threads > 1024) {
        report("block of " + std::to_string(threads) + " threads (1 to 1024 on a GPU)");
        return 1;
    }
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                Block b(threads);
                for (int w0 = 0; w0 < threads; w0 += 32)
                    b.warps.push_back(std::make_unique<Warp>(threads - w0 < 32 ? threads - w0 : 32));
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (int t = 0; t < threads; ++t) {
                    pool.emplace_back([&, t, bx, by, bz] {
                        threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                        blockIdx = dim3(bx, by, bz);
                        tl_block = &b;
                        tl_warp = b.warps[t / 32].get();
                        tl_lane = t % 32;
                        try {
                            fn();
                        } catch (const std::exception& e) {
                            report(e.what());
                        }
                        tl_warp->active.fetch_sub(1);
                        tl_warp->sync.arrive_and_drop();  // a returned thread no longer holds back its warp
                        b.sync.arrive_and_drop();          // nor its block
                    });
                }
                for (auto& th : pool) th.join();
                if (!first_error.empty()) return 1;
            }
    return 0;
}

}  // namespace emu
