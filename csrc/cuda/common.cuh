// The CUDA kernels' common parts (torch-free): the launch size, the accumulation and storage
// types, 16-byte packs and their loads, a launch's parameters, the input checks' assert.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cassert>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "../finalize.h"
#include "../kernel_args.h"
#include "../softiou_math.h"
#include "kernels.h"

namespace softiou {
namespace cuda {
namespace detail {

using namespace ::softiou::math;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// The pixel kernel's gradient runs in 128-thread blocks, four to a multiprocessor at its bound of
// 128 registers (16 warps, as two 256-thread blocks): a smaller block is a finer split of a
// sample's pixels at the same occupancy.
constexpr int kPixelThreadsBackward = 128;
template <bool FWD>
constexpr int kPixelThreads = FWD ? kThreads : kPixelThreadsBackward;
// Values per warp of the statistics' partial sums: I, P, Y of every class (the pixel kernel) or
// of one (the row kernel), then the cross-entropy term's numerator and denominator.
__host__ __device__ inline int64_t partial_row(int64_t C, bool pixel) {
  return pixel ? C * 3 + 2 : 5;
}
// The options the basic pixel kernels take as constant (pixel.cuh: BASIC), one list for the
// launch's choice (launch.cuh: basic_case) and the kernel's check of it: a softmax of logits,
// no pixel weights, the product intersection, p and y unsquared.
__host__ __device__ inline bool basic_options(const KernelArgs& a) {
  return a.prob == Prob::kSoftmax && a.options.from_logits && a.w == nullptr &&
         !a.options.squared && a.options.intersection == Intersection::kProduct;
}
// Values per pixel of the wide softmax's prepass: shift, 1/sum, sum_c p_c g_c, and the
// cross-entropy's Q and QL.
constexpr int kPixelValues = 5;

// Classes each lane of the pixel kernel holds in registers: in the basic kernel (pixel.cuh:
// BASIC) 32 input values (8 in float64, two registers each), in the general kernel half as many,
// whose other per-pixel state (weights, a dense target, the options' paths) would spill at 128
// registers beside 32 values. A pass covers 32 lanes x these classes (launch.cuh:
// class_window); more classes take the wide softmax's prepass and one launch per window.
template <int V, bool BASIC>
constexpr int kClassesPerLane = (V == 2 ? 8 : 32) / V / (BASIC ? 1 : 2);

// A failed check stops the kernel like F.cross_entropy's does: "device-side assert triggered".
// Independent of NDEBUG.
#define SOFTIOU_DEVICE_ASSERT(cond)                                         \
  do {                                                                      \
    if (!(cond)) __assert_fail(#cond, __FILE__, __LINE__, __func__);        \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------
template <class S>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <class A>
__device__ __forceinline__ A to_acc(float v) { return A(v); }
template <class A>
__device__ __forceinline__ A to_acc(double v) { return A(v); }
template <class A>
__device__ __forceinline__ A to_acc(__half v) { return A(__half2float(v)); }
template <class A>
__device__ __forceinline__ A to_acc(__nv_bfloat16 v) { return A(__bfloat162float(v)); }
template <class A>
__device__ __forceinline__ A to_acc(bool v) { return v ? A(1) : A(0); }

template <class S>
struct Store;
template <>
struct Store<float> {
  template <class A>
  __device__ static float from(A v) { return float(v); }
};
template <>
struct Store<double> {
  template <class A>
  __device__ static double from(A v) { return double(v); }
};
template <>
struct Store<__half> {
  template <class A>
  __device__ static __half from(A v) { return __float2half_rn(float(v)); }
};
template <>
struct Store<__nv_bfloat16> {
  template <class A>
  __device__ static __nv_bfloat16 from(A v) { return __float2bfloat16_rn(float(v)); }
};

template <class T>
struct IsInt {
  static constexpr bool value = false;
};
template <>
struct IsInt<uint8_t> {
  static constexpr bool value = true;
};
template <>
struct IsInt<int32_t> {
  static constexpr bool value = true;
};
template <>
struct IsInt<int64_t> {
  static constexpr bool value = true;
};

// Zero of a storage type (torch builds with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__: no constructor from an integer literal).
template <class T>
__device__ __forceinline__ T zero() { return T(0); }
template <>
__device__ __forceinline__ __half zero<__half>() { return __float2half_rn(0.0f); }
template <>
__device__ __forceinline__ __nv_bfloat16 zero<__nv_bfloat16>() { return __float2bfloat16_rn(0.0f); }

template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// V consecutive pixels of one row (pixel stride sM). `vec`: the host checked that 16-byte
// (V-element) accesses are aligned for this tensor; only whole groups use them.
template <int V, class T>
__device__ __forceinline__ void load_group(const T* p, int64_t sM, bool vec, int cnt, T (&out)[V]) {
  if (vec && cnt == V) {
    const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = pk.v[v];
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = v < cnt ? p[v * sM] : zero<T>();
  }
}

// A group as loaded, read with get(v) where it is used: a 2-byte type stays two to a 32-bit
// word, so that both paths of the load end in the same words and nothing unpacks them before
// the next load is issued (an unpack reads the loaded register: it waits for the load).
template <class T, int V, bool WORDS = sizeof(T) == 2>
struct Loaded {
  T v[V];
  __device__ __forceinline__ T get(int i) const { return v[i]; }
};
template <class T, int V>
struct Loaded<T, V, true> {
  static_assert(V % 2 == 0, "whole words");
  uint32_t w[V / 2];
  __device__ __forceinline__ T get(int i) const {
    const uint16_t bits = uint16_t(w[i / 2] >> (16 * (i % 2)));
    T t;
    memcpy(&t, &bits, sizeof t);
    return t;
  }
};

template <int V, class T>
__device__ __forceinline__ void load_group(const T* p, int64_t sM, bool vec, int cnt,
                                           Loaded<T, V>& out) {
  if constexpr (sizeof(T) == 2) {
    if (vec && cnt == V) {
      const Pack<uint32_t, V / 2> pk = *reinterpret_cast<const Pack<uint32_t, V / 2>*>(p);
#pragma unroll
      for (int i = 0; i < V / 2; ++i) out.w[i] = pk.v[i];
    } else {  // a zero's bits are 0
#pragma unroll
      for (int i = 0; i < V / 2; ++i) out.w[i] = 0u;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        if (v < cnt) {
          const T t = p[v * sM];
          uint16_t bits;
          memcpy(&bits, &t, sizeof bits);
          out.w[v / 2] |= uint32_t(bits) << (16 * (v % 2));
        }
      }
    }
  } else {
    load_group<V>(p, sM, vec, cnt, out.v);
  }
}

template <int V, class T>
__device__ __forceinline__ void store_group(T* p, int64_t sM, bool vec, int cnt, const T (&in)[V]) {
  if (vec && cnt == V) {
    Pack<T, V> pk;
#pragma unroll
    for (int v = 0; v < V; ++v) pk.v[v] = in[v];
    if constexpr (sizeof(pk) == 16) {
      // one 16-byte store in PTX: in the gradient kernels nvcc splits the aligned struct store
      // into four 4-byte ones (the static report counts them), which a PTX vector store cannot
      // become. No "memory" clobber: no kernel reads what it stores through this in a launch.
      uint32_t b[4];
      memcpy(b, &pk, sizeof b);
#ifdef SOFTIOU_CUDA_EMULATION
      memcpy(p, b, sizeof b);  // (emulation/emulation.h: the same bytes, stored on the host)
#else
      asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(b[0]), "r"(b[1]),
                   "r"(b[2]), "r"(b[3]));
#endif
    } else {
      *reinterpret_cast<Pack<T, V>*>(p) = pk;
    }
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v)
      if (v < cnt) p[v * sM] = in[v];
  }
}

template <class A>
__device__ __forceinline__ A shfl_xor(A v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}

// ---------------------------------------------------------------------------------------------
// Parameters of one launch
// ---------------------------------------------------------------------------------------------
struct Launch {
  KernelArgs a;
  int K;                      // pixel kernel: lanes per pixel group (power of two <= 32)
  int64_t c0, cw;             // pixel kernel: class window [c0, c0 + cw)
  int64_t groups;             // pixel groups (of V pixels) per row
  int64_t chunk;              // pixel groups per block
  int64_t blocks_per_row;     // blocks per sample (pixel kernel) or per (sample, class) row
  const void* pixel;          // wide softmax: per pixel (max, 1/sum, dot) [N][M][3]
  void* partials;             // forward: [rows][blocks_per_row][kWarps][classes per row][3]
  void* counts;               // forward, counts_in_stats: [N][C][4] uint64 (tp, predicted,
                              // target, kept), zeroed; null: none
  bool vx, vt, vw, vg;        // 16-byte access allowed for input, target, weight, gradient
};

// A failed input check. Out of line, reached from one cold branch per loop iteration, so the
// checks cost the hot loop a few predicate operations and no registers.
enum : unsigned {
  kBadClass = 1u,
  kBadBinary = 2u,
  kBadDense = 4u,
  kBadWeight = 8u,
  kBadProbability = 16u,
};
// Whether a target value (a class index, an integer or dense element) is the one the options
// ignore (SPEC sections 3, 10): compared as the value's type, as `v == T(ignored)`.
template <class T>
__device__ __forceinline__ bool is_ignored(const KernelArgs& a, T v) {
  return a.options.ignore_index.has && v == T(a.options.ignore_index.value);
}

static __device__ __noinline__ void report_bad_input(unsigned bad) {
  SOFTIOU_DEVICE_ASSERT(!(bad & kBadClass) &&
                        "softiou: target class index outside [0, C) and not ignore_index");
  SOFTIOU_DEVICE_ASSERT(!(bad & kBadBinary) &&
                        "softiou: binary/multilabel integer target not 0, 1 or ignore_index");
  SOFTIOU_DEVICE_ASSERT(!(bad & kBadDense) && "softiou: dense target outside [0, 1]");
  SOFTIOU_DEVICE_ASSERT(!(bad & kBadWeight) && "softiou: weight < 0");
  SOFTIOU_DEVICE_ASSERT(!(bad & kBadProbability) &&
                        "softiou: input outside [0, 1] with from_logits=False");
}

// The pixel weights of a group (accumulation dtype, 1 when absent).
template <int V, class A>
__device__ __forceinline__ void load_weights(const Launch& L, int64_t n, int64_t m0, int cnt,
                                             A (&w)[V], unsigned& bad) {
  const KernelArgs& a = L.a;
  if (a.w == nullptr) {
#pragma unroll
    for (int v = 0; v < V; ++v) w[v] = A(1);
    return;
  }
  const A* wp = static_cast<const A*>(a.w) + n * a.w_sN + m0 * a.w_sM;
  load_group<V>(wp, a.w_sM, L.vw, cnt, w);
#pragma unroll
  for (int v = 0; v < V; ++v)
    if (w[v] < A(0)) bad |= kBadWeight;
}

}  // namespace detail
}  // namespace cuda
}  // namespace softiou
