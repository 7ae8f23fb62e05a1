// The CUDA kernels on the CPU, for the tests (tools/cuda_emulation.py builds them): the subset of
// the CUDA runtime and device language that csrc/cuda uses, in plain C++.
//
// A launch runs its blocks one after another; a block's threads are fibers (ucontext) on the
// calling thread, switched only where a thread waits: __syncthreads(), a warp shuffle (a barrier
// of the warp's 32 lanes). Between two such points a thread runs alone, so integer atomics are
// plain read-modify-writes and `__shared__` is a function-local static (one block at a time),
// filled with 0xFF bytes (NaN) when a block starts using it.
// What it checks beyond the values: a shuffle whose warp has exited lanes, threads that wait at
// barriers no one else reaches (a deadlock), a __syncthreads that the threads of a block reach at
// different places in the source (divergent barriers), a device-side assert (the launch stops
// and cudaGetLastError() says cudaErrorAssert, with the failed condition in
// softiou_emu::last_error_message()). What it cannot show: timing, memory-ordering races,
// the GPU's exp/log approximations (the kernels' host math is used: softiou_math.h without
// __CUDA_ARCH__). A missing __syncthreads shows where a thread reads what a thread that runs
// after it writes: the poisoned value, not a stale one. The threads of a block run in index
// order, those of the next block run in the reverse order (set_thread_order), so that a read of
// either neighbour's write is caught; a correct kernel's results do not depend on the order.
#pragma once

#include <assert.h>  // before the __assert_fail redirection below

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------------------------
// Runtime types and calls
// ---------------------------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorLaunchFailure = 719,
  cudaErrorAssert = 710,
};
typedef cudaError_t cudaError;
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

namespace softiou_emu {
// the multiprocessor count the plans see: SOFTIOU_EMULATED_SMS, default 2 (small grids, so that
// a block's loops run several iterations on the tests' small inputs)
int multiprocessors();
cudaError_t take_error();      // cudaGetLastError: the last launch's error, cleared
const char* last_error_message();
const uint3& thread_index();
const uint3& block_index();
const dim3& block_dim();
const dim3& grid_dim();
// __syncthreads at file:line: every thread of a block must wait at the same one
void sync_block(const char* file, unsigned line);
void sync_warp();              // a barrier of the current warp's 32 lanes
uint64_t* warp_slots();        // the current warp's 32 exchange slots
void* dynamic_shared();        // the launch's dynamic shared memory
// A block's static shared array (a function-local static: tools/cuda_emulation.py rewrites
// `__shared__`): the first thread of a block to reach it fills it with 0xFF bytes.
void fresh_shared(void* p, size_t bytes);
[[noreturn]] void device_assert(const char* cond, const char* file, unsigned line,
                                const char* func);
// The order a block's threads run in up to each barrier: 0 alternating from one block to the
// next, over all launches (the default), 1 index order, 2 reverse.
void set_thread_order(int order);
// Runs body() for every thread of every block of the grid.
void run_grid(dim3 grid, dim3 block, size_t shared, const std::function<void()>& body);

template <class... P>
struct Launcher {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t shared;
  template <class... Args>
  void operator()(Args&&... args) const {
    // each thread gets its own copies of the parameters, as on the device
    const std::tuple<std::decay_t<P>...> params(std::forward<Args>(args)...);
    auto k = kernel;
    run_grid(grid, block, shared, [&params, k] { std::apply(k, params); });
  }
};
// kernel<<<grid, block, shared, stream>>>(args) is rewritten to launch(&kernel, grid, block,
// shared)(args) by tools/cuda_emulation.py (the stream is the host order: launches run at once)
template <class... P>
Launcher<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared = 0) {
  return Launcher<P...>{kernel, grid, block, shared};
}
}  // namespace softiou_emu

inline cudaError_t cudaGetLastError() { return softiou_emu::take_error(); }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorAssert: return "device-side assert triggered";
    default: return "unspecified launch failure";
  }
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *v = softiou_emu::multiprocessors();
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  std::memset(p, v, n);
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------
// The device language
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define threadIdx (::softiou_emu::thread_index())
#define blockIdx (::softiou_emu::block_index())
#define blockDim (::softiou_emu::block_dim())
#define gridDim (::softiou_emu::grid_dim())
#define __assert_fail ::softiou_emu::device_assert

#define __syncthreads() ::softiou_emu::sync_block(__FILE__, __LINE__)

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffle moves at most 8 bytes");
  if (mask != 0xffffffffu) {
    softiou_emu::device_assert("full-warp shuffle mask", __FILE__, __LINE__, __func__);
  }
  const unsigned lane = softiou_emu::thread_index().x % 32u;
  uint64_t* slot = softiou_emu::warp_slots();
  std::memcpy(&slot[lane], &v, sizeof v);
  softiou_emu::sync_warp();  // every lane's value is written
  unsigned src = lane ^ unsigned(lane_mask);
  if (src / unsigned(width) != lane / unsigned(width)) src = lane;  // outside the segment: own
  T out;
  std::memcpy(&out, &slot[src], sizeof out);
  softiou_emu::sync_warp();  // every lane has read before the next shuffle writes
  return out;
}

// Integer atomics only (the kernels use no float atomics: a float one does not compile). The
// value converts to the pointee's type, as with CUDA's overloads.
template <class T, class = std::enable_if_t<std::is_integral_v<T>>>
T atomicAdd(T* p, std::type_identity_t<T> v) {
  const T old = *p;
  *p = old + v;
  return old;
}

// ---------------------------------------------------------------------------------------------
// float16 and bfloat16: the storage types and the conversions the kernels use (the build's
// __CUDA_NO_HALF_CONVERSIONS__ and __CUDA_NO_BFLOAT16_CONVERSIONS__: no implicit ones)
// ---------------------------------------------------------------------------------------------
struct __half {
  uint16_t __x;
};
struct __nv_bfloat16 {
  uint16_t __x;
};
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.__x, 2);
  return float(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = _Float16(v);  // round to nearest even
  __half h;
  std::memcpy(&h.__x, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = uint32_t(b.__x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  __nv_bfloat16 b;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    b.__x = 0x7fffu;  // NaN, as CUDA's
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    b.__x = uint16_t(u >> 16);
  }
  return b;
}
