// softiou CUDA kernels: the templates. Torch-free (nvcc alone compiles them; the CI does, for
// sm_80 and sm_90). kernels_<dtype>.cu instantiate them for one input dtype each, so the build
// compiles the four in parallel; kernels.cu holds the plans and the dtype dispatch.
//
// Statistics (one read of input, target and weight):
//   pixel_kernel<FWD=true>   multiclass. A group of K lanes of a warp owns V consecutive pixels
//                            (one 16-byte load per class row) and splits the classes between its
//                            lanes, 32/V classes per lane in registers. The softmax max and sum are
//                            butterflies over the K lanes: the logits are read from HBM once.
//   row_kernel<FWD=true>     binary / multilabel: elementwise over (sample, class) rows.
//   Each warp writes its partial sums to a workspace; reduce_kernel adds them in a fixed order.
//   No float atomics anywhere: the result is bitwise the same run to run.
// Gradient (one read, one write): the same kernels with FWD=false.
// Softmax over more classes than the registers hold (C > 32 * 32/V): pixel_prepass computes
// each pixel's max and 1/sum (and for the gradient sum_c p_c g_c) first, and pixel_kernel runs over
// windows of classes with them.
//
// The per-element math is softiou_math.h, shared with the CPU kernels.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cassert>
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
// The pixel kernel's gradient keeps more values live per thread (about 170 registers): 128-thread
// blocks fit three to a multiprocessor, 12 warps, where 256-thread blocks fit one, 8 warps.
constexpr int kPixelThreadsBackward = 128;
template <bool FWD>
constexpr int kPixelThreads = FWD ? kThreads : kPixelThreadsBackward;
// Values per warp of the statistics' partial sums: I, P, Y of every class (the pixel kernel) or
// of one (the row kernel), then the cross-entropy term's numerator and denominator.
__host__ __device__ inline int64_t partial_row(int64_t C, bool pixel) {
  return pixel ? C * 3 + 2 : 5;
}
// Values per pixel of the wide softmax's prepass: shift, 1/sum, sum_c p_c g_c, and the
// cross-entropy's Q and QL.
constexpr int kPixelValues = 5;

// Classes each lane of the pixel kernel holds in registers: 32 input values (8 for float64).
template <int V>
constexpr int kClassesPerLane = 32 / V > 8 ? 8 : 32 / V;

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

template <int V, class T>
__device__ __forceinline__ void store_group(T* p, int64_t sM, bool vec, int cnt, const T (&in)[V]) {
  if (vec && cnt == V) {
    Pack<T, V> pk;
#pragma unroll
    for (int v = 0; v < V; ++v) pk.v[v] = in[v];
    *reinterpret_cast<Pack<T, V>*>(p) = pk;
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

// ---------------------------------------------------------------------------------------------
// Multiclass: one pass over a sample's pixels, all classes of a pixel in the registers of K lanes
// ---------------------------------------------------------------------------------------------
template <class S, class TT, int V, bool CLASS_MAP, bool FWD, bool CE>
__global__ void __launch_bounds__(kPixelThreads<FWD>, FWD ? 2 : 3) pixel_kernel(const Launch L) {
  using A = typename Acc<S>::type;
  constexpr int CPT = kClassesPerLane<V>;
  const KernelArgs& a = L.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int K = L.K, G = 32 / K;
  const int j = lane / G, g = lane % G;  // class slot, pixel group within the warp
  const int64_t n = blockIdx.x / L.blocks_per_row, b = blockIdx.x % L.blocks_per_row;
  const int64_t begin = b * L.chunk;
  const int64_t end = begin + L.chunk < L.groups ? begin + L.chunk : L.groups;
  const A sharp = A(a.options.sharpness);
  const bool from_logits = a.options.from_logits, squared = a.options.squared;
  const bool use_min = a.options.intersection == Intersection::kMin;
  const bool softmax = a.prob == Prob::kSoftmax;
  const bool wide = L.pixel != nullptr;
  const int cw = int(L.cw);
  // class of slot k: c0 + j + K*k, present when j + K*k < cw. LIVE(k): slot k holds a class in
  // some lane of the warp; a warp-uniform test, so empty slots cost a branch, not their work
#define SLOT(k) (j + K * (k))
#define LIVE(k) (K * (k) < cw)

  A accI[CPT], accP[CPT], accY[CPT], gI[CPT], gP[CPT];
#pragma unroll
  for (int k = 0; k < CPT; ++k) {
    accI[k] = accP[k] = accY[k] = A(0);
    gI[k] = gP[k] = A(0);
    if (!FWD && SLOT(k) < cw) pair_gradient(a, n, L.c0 + SLOT(k), gI[k], gP[k]);
  }
  // the cross-entropy term (SPEC section 9; softiou_math.h), a template parameter: without it
  // the kernel keeps no register for it. Forward sums, backward gradient.
  constexpr bool ce = CE;
  const A gce = FWD || !CE ? A(0) : ce_gradient<A>(a, n);
  const A ls_keep = A(1) - A(a.options.label_smoothing);
  const A ls_spread = A(a.options.label_smoothing) / A(a.C);
  A ce_num = A(0), ce_den = A(0);
  // the term's weight of slot k's class for pixel v: c_k ((1 - eps) y + eps / C)
#define CE_Q(k, v, yy) (ce_class_weight<A>(a, L.c0 + SLOT(k)) * (ls_keep * (yy) + ls_spread))
  const S* xs = static_cast<const S*>(a.x) + n * a.x_sN + L.c0 * a.x_sC;
  const TT* ts = static_cast<const TT*>(a.t) + n * a.t_sN + (CLASS_MAP ? 0 : L.c0 * a.t_sC);

  constexpr int WARPS = kPixelThreads<FWD> / 32;
  for (int64_t base = begin; base < end; base += WARPS * G) {
    const int64_t gi = base + warp * G + g;
    const int64_t m0 = gi * V;
    const int cnt = gi < end ? int(a.M - m0 < V ? a.M - m0 : V) : 0;
    unsigned bad = 0;

    A w[V];
    load_weights<V>(L, n, m0, cnt, w, bad);

    // class map: the pixel is kept (pv) and its class relative to the window (tcls)
    int tcls[V];
    bool pv[V];
    if constexpr (CLASS_MAP) {
      TT raw[V];
      load_group<V>(ts + m0 * a.t_sM, a.t_sM, L.vt, cnt, raw);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const int64_t c = int64_t(raw[v]);
        const bool ignored = v >= cnt || (a.options.ignore_index.has && c == a.options.ignore_index.value);
        if (!ignored && (c < 0 || c >= a.C)) bad |= kBadClass;
        pv[v] = !ignored;
        tcls[v] = int(c - L.c0);
      }
    }

    // input -> probabilities, in place
    A p[CPT][V];
#pragma unroll
    for (int k = 0; k < CPT; ++k) {
      if (!LIVE(k)) break;
      S raw[V];
      if (SLOT(k) < cw) {
        load_group<V>(xs + SLOT(k) * a.x_sC + m0 * a.x_sM, a.x_sM, L.vx, cnt, raw);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) raw[v] = zero<S>();
      }
#pragma unroll
      for (int v = 0; v < V; ++v) p[k][v] = to_acc<A>(raw[v]);
    }
    if (!from_logits) {
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
#pragma unroll
        for (int v = 0; v < V; ++v)
          if (SLOT(k) < cw && outside_unit_interval(p[k][v])) bad |= kBadProbability;
      }
    }
    A dot_pix[V], lse[V], ce_Q[V], ce_QL[V];
#pragma unroll
    for (int v = 0; v < V; ++v) dot_pix[v] = lse[v] = ce_Q[v] = ce_QL[v] = A(0);
    if (softmax) {
      A mx[V], inv[V];
      if (wide) {
        const A* px = static_cast<const A*>(L.pixel) + (n * a.M + m0) * kPixelValues;
#pragma unroll
        for (int v = 0; v < V; ++v) {
          mx[v] = v < cnt ? px[v * kPixelValues + 0] : A(0);
          inv[v] = v < cnt ? px[v * kPixelValues + 1] : A(0);
          if (!FWD) dot_pix[v] = v < cnt ? px[v * kPixelValues + 2] : A(0);
          if constexpr (ce) {  // the prepass's Q and QL, and lse = shift + log S
            ce_Q[v] = v < cnt ? px[v * kPixelValues + 3] : A(0);
            ce_QL[v] = v < cnt ? px[v * kPixelValues + 4] : A(0);
            lse[v] = mx[v] - log_pos(inv[v] > A(0) ? inv[v] : A(1));
          }
        }
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
          if (!LIVE(k)) break;
#pragma unroll
          for (int v = 0; v < V; ++v)
            p[k][v] = SLOT(k) < cw
                          ? softmax_exp(softmax_arg(p[k][v], sharp, from_logits), mx[v]) * inv[v]
                          : A(0);
        }
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) mx[v] = neg_inf<A>();
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
          if (!LIVE(k)) break;
#pragma unroll
          for (int v = 0; v < V; ++v) {
            p[k][v] = SLOT(k) < cw ? softmax_arg(p[k][v], sharp, from_logits) : neg_inf<A>();
            mx[v] = max_(mx[v], p[k][v]);
          }
        }
#pragma unroll
        for (int v = 0; v < V; ++v) {
          for (int off = G; off < 32; off <<= 1) mx[v] = max_(mx[v], shfl_xor(mx[v], off));
          mx[v] = softmax_shift(mx[v]);
          inv[v] = A(0);
        }
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
          if (!LIVE(k)) break;
#pragma unroll
          for (int v = 0; v < V; ++v) {
            p[k][v] = softmax_exp(p[k][v], mx[v]);
            inv[v] += p[k][v];
          }
        }
#pragma unroll
        for (int v = 0; v < V; ++v) {
          for (int off = G; off < 32; off <<= 1) inv[v] += shfl_xor(inv[v], off);
          if constexpr (ce) lse[v] = mx[v] + log_pos(inv[v] > A(0) ? inv[v] : A(1));
          inv[v] = softmax_inv_sum(inv[v]);
        }
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
          if (!LIVE(k)) break;
#pragma unroll
          for (int v = 0; v < V; ++v) p[k][v] *= inv[v];
        }
      }
    }

    // dense target of slot k, pixel v (the class map's is tcls[v] == SLOT(k))
    A y[CLASS_MAP ? 1 : CPT][V];
    if constexpr (!CLASS_MAP) {
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
        TT raw[V];
        if (SLOT(k) < cw) {
          load_group<V>(ts + SLOT(k) * a.t_sC + m0 * a.t_sM, a.t_sM, L.vt, cnt, raw);
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) raw[v] = zero<TT>();
        }
#pragma unroll
        for (int v = 0; v < V; ++v) {
          y[k][v] = to_acc<A>(raw[v]);
          if (outside_unit_interval(y[k][v])) bad |= kBadDense;
        }
      }
    }
    if (bad) report_bad_input(bad);

    // the cross-entropy's Q = sum_k q_k and (forward) QL = sum_k q_k l_k of each pixel: this
    // lane's classes, then a butterfly over the lanes of the pixel (the wide path has them from
    // the prepass). The forward reads the logits again: the exponentials have replaced them.
    if (CE && softmax && !wide) {
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
        if (SLOT(k) >= cw) continue;
        S raw[V];
        if (FWD) load_group<V>(xs + SLOT(k) * a.x_sC + m0 * a.x_sM, a.x_sM, L.vx, cnt, raw);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const A yy = CLASS_MAP ? (tcls[v] == SLOT(k) ? A(1) : A(0)) : y[CLASS_MAP ? 0 : k][v];
          const A q = CE_Q(k, v, yy);
          ce_Q[v] += q;
          if (FWD) ce_QL[v] += q * softmax_arg(to_acc<A>(raw[v]), sharp, true);
        }
      }
#pragma unroll
      for (int v = 0; v < V; ++v) {
        for (int off = G; off < 32; off <<= 1) {
          ce_Q[v] += shfl_xor(ce_Q[v], off);
          if (FWD) ce_QL[v] += shfl_xor(ce_QL[v], off);
        }
      }
    }
    // the forward's sums, once per pixel (slot 0; the first class window of the wide path)
    if (FWD && CE && softmax && j == 0 && L.c0 == 0) {
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const bool kept = CLASS_MAP ? pv[v] : v < cnt;
        if (!kept) continue;
        ce_num += w[v] * (ce_Q[v] * lse[v] - ce_QL[v]);
        ce_den += CLASS_MAP ? w[v] * ce_class_weight<A>(a, int64_t(tcls[v]) + L.c0) : w[v];
      }
    }

    if constexpr (FWD) {
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
#pragma unroll
        for (int v = 0; v < V; ++v) {
          if constexpr (CLASS_MAP) {
            // y is one-hot: min(p, y) = p*y, y^2 = y, and only the target class takes I and Y
            const A wp = w[v] * p[k][v];
            if (SLOT(k) < cw && pv[v]) accP[k] += squared ? wp * p[k][v] : wp;
            if (pv[v] && tcls[v] == SLOT(k)) {
              accI[k] += wp;
              accY[k] += w[v];
            }
          } else {
            if (SLOT(k) < cw && v < cnt) {
              const A yy = y[CLASS_MAP ? 0 : k][v];
              accI[k] += w[v] * intersection(p[k][v], yy, use_min);
              accP[k] += w[v] * power_term(p[k][v], squared);
              accY[k] += w[v] * power_term(yy, squared);
            }
          }
        }
      }
    } else {
      // g = dL/dp is cheap: computed once for sum_c p_c g_c and again for the output, so that
      // it needs no registers of its own
#define GRAD(k, v)                                                                          \
  ((SLOT(k) < cw && (CLASS_MAP ? pv[v] : v < cnt))                                         \
       ? w[v] * grad_p(p[k][v],                                                             \
                       CLASS_MAP ? (tcls[v] == SLOT(k) ? A(1) : A(0)) : y[CLASS_MAP ? 0 : k][v], \
                       gI[k], gP[k], use_min, squared)                                      \
       : A(0))
      A dot[V];
#pragma unroll
      for (int v = 0; v < V; ++v) dot[v] = A(0);
      if (softmax) {
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
          if (!LIVE(k)) break;
#pragma unroll
          for (int v = 0; v < V; ++v) dot[v] += p[k][v] * GRAD(k, v);
        }
#pragma unroll
        for (int v = 0; v < V; ++v) {
          if (wide) {
            dot[v] = dot_pix[v];
          } else {
            for (int off = G; off < 32; off <<= 1) dot[v] += shfl_xor(dot[v], off);
          }
        }
      }
      S* gx = static_cast<S*>(a.grad_x) + n * a.g_sN + L.c0 * a.g_sC + m0 * a.g_sM;
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
        if (SLOT(k) >= cw) continue;
        A fac[V];
#pragma unroll
        for (int v = 0; v < V; ++v) fac[v] = sharp;
        if (softmax && !from_logits) {  // dl/dx = a/x: read x again (L1/L2), probability form only
          S raw[V];
          load_group<V>(xs + SLOT(k) * a.x_sC + m0 * a.x_sM, a.x_sM, L.vx, cnt, raw);
#pragma unroll
          for (int v = 0; v < V; ++v) fac[v] = softmax_arg_dx(to_acc<A>(raw[v]), sharp, false);
        }
        S out[V];
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const A gv = GRAD(k, v);
          A d = softmax ? fac[v] * p[k][v] * (gv - dot[v]) : gv;
          if (CE && softmax && (CLASS_MAP ? pv[v] : v < cnt)) {  // + a gce w (Q p - q)
            const A yy = CLASS_MAP ? (tcls[v] == SLOT(k) ? A(1) : A(0)) : y[CLASS_MAP ? 0 : k][v];
            d += sharp * gce * w[v] * (ce_Q[v] * p[k][v] - CE_Q(k, v, yy));
          }
          out[v] = Store<S>::from(d);
        }
        store_group<V>(gx + SLOT(k) * a.g_sC, a.g_sM, L.vg, cnt, out);
      }
#undef GRAD
    }
  }

  if constexpr (FWD) {
    // lanes of one class slot -> lane g == 0, then one partial per warp
#pragma unroll
    for (int k = 0; k < CPT; ++k) {
      for (int off = 1; off < G; off <<= 1) {
        accI[k] += shfl_xor(accI[k], off);
        accP[k] += shfl_xor(accP[k], off);
        accY[k] += shfl_xor(accY[k], off);
      }
    }
    // the cross-entropy's sums: lanes of slot 0 hold them; one value per warp
    if constexpr (CE) {
      for (int off = 1; off < 32; off <<= 1) {
        ce_num += shfl_xor(ce_num, off);
        ce_den += shfl_xor(ce_den, off);
      }
    }
    A* row = static_cast<A*>(L.partials) +
             ((n * L.blocks_per_row + b) * kWarps + warp) * partial_row(a.C, true);
    if (g == 0) {
      A* out = row + L.c0 * 3;
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (SLOT(k) < cw) {
          out[SLOT(k) * 3 + 0] = accI[k];
          out[SLOT(k) * 3 + 1] = accP[k];
          out[SLOT(k) * 3 + 2] = accY[k];
        }
      }
    }
    if (lane == 0 && L.c0 == 0) {
      row[a.C * 3 + 0] = ce_num;
      row[a.C * 3 + 1] = ce_den;
    }
  }
#undef CE_Q
#undef LIVE
#undef SLOT
}

// Softmax over many classes: per pixel, the maximum and 1/sum of the exponentials (online, one
// read), and for the gradient also sum_c p_c g_c, and with the cross-entropy term its Q and
// (forward) QL (a second read). One thread per pixel; kPixelValues values per pixel.
template <class S, class TT, bool CLASS_MAP, bool FWD, bool CE>
__global__ void __launch_bounds__(kThreads) pixel_prepass(const Launch L) {
  using A = typename Acc<S>::type;
  const KernelArgs& a = L.a;
  const int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= a.N * a.M) return;
  const int64_t n = idx / a.M, m = idx % a.M;
  const A sharp = A(a.options.sharpness);
  const S* xp = static_cast<const S*>(a.x) + n * a.x_sN + m * a.x_sM;
  A mx = neg_inf<A>(), sum = A(0);
  for (int64_t c = 0; c < a.C; ++c) {
    const A l = softmax_arg(to_acc<A>(xp[c * a.x_sC]), sharp, a.options.from_logits);
    const A nm = max_(mx, l);
    // rescale the running sum to the new shift (nothing to rescale while it is 0)
    const A rescale = softmax_exp(softmax_shift(mx), softmax_shift(nm));
    sum = (sum == A(0) ? A(0) : sum * rescale) + softmax_exp(l, softmax_shift(nm));
    mx = nm;
  }
  mx = softmax_shift(mx);
  const A inv = softmax_inv_sum(sum);
  constexpr bool ce = CE;
  A dot = A(0), Q = A(0), QL = A(0);
  if (!FWD || ce) {
    A w = A(1);
    if (a.w != nullptr) w = static_cast<const A*>(a.w)[n * a.w_sN + m * a.w_sM];
    const TT* tp = static_cast<const TT*>(a.t) + n * a.t_sN + m * a.t_sM;
    int64_t tc = -1;
    bool ok = true;
    if constexpr (CLASS_MAP) {
      tc = int64_t(tp[0]);
      ok = !(a.options.ignore_index.has && tc == a.options.ignore_index.value);
    }
    const A keep = A(1) - A(a.options.label_smoothing);
    const A spread = A(a.options.label_smoothing) / A(a.C);
    for (int64_t c = 0; c < a.C && ok; ++c) {
      const A l = softmax_arg(to_acc<A>(xp[c * a.x_sC]), sharp, a.options.from_logits);
      A yc;
      if constexpr (CLASS_MAP) {
        yc = tc == c ? A(1) : A(0);
      } else {
        yc = to_acc<A>(tp[c * a.t_sC]);
      }
      if (!FWD) {
        A gI, gP;
        pair_gradient(a, n, c, gI, gP);
        const A pc = softmax_exp(l, mx) * inv;
        dot += pc * w * grad_p(pc, yc, gI, gP, a.options.intersection == Intersection::kMin,
                                 a.options.squared);
      }
      if constexpr (ce) {
        const A q = ce_class_weight<A>(a, c) * (keep * yc + spread);
        Q += q;
        QL += q * l;
      }
    }
  }
  A* out = static_cast<A*>(const_cast<void*>(L.pixel)) + idx * kPixelValues;
  out[0] = mx;
  out[1] = inv;
  out[2] = dot;
  out[3] = Q;
  out[4] = QL;
}

// ---------------------------------------------------------------------------------------------
// Binary / multilabel: elementwise over the (sample, class) rows
// ---------------------------------------------------------------------------------------------
template <class S, class TT, int V, bool FWD, bool CE>
__global__ void __launch_bounds__(kThreads) row_kernel(const Launch L) {
  using A = typename Acc<S>::type;
  const KernelArgs& a = L.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r = blockIdx.x / L.blocks_per_row, b = blockIdx.x % L.blocks_per_row;
  const int64_t n = r / a.C, c = r % a.C;
  const int64_t begin = b * L.chunk;
  const int64_t end = begin + L.chunk < L.groups ? begin + L.chunk : L.groups;
  const A sharp = A(a.options.sharpness);
  const bool from_logits = a.options.from_logits, squared = a.options.squared;
  const bool use_min = a.options.intersection == Intersection::kMin;
  const bool sigmoid = a.prob == Prob::kSigmoid;
  // an integer multilabel target without the channel dim: a class map (SPEC section 10)
  const bool class_map = a.class_map;
  A accI = A(0), accP = A(0), accY = A(0), gI = A(0), gP = A(0);
  if (!FWD) pair_gradient(a, n, c, gI, gP);
  // the binary cross-entropy term (SPEC section 9): forward sums, backward gradient
  constexpr bool ce = CE;
  const A gce = FWD || !CE ? A(0) : ce_gradient<A>(a, n);
  const A cwc = CE ? ce_class_weight<A>(a, c) : A(0);
  const A pw = A(a.options.ce_pos_weight);
  A ce_num = A(0), ce_den = A(0);
  const S* xs = static_cast<const S*>(a.x) + n * a.x_sN + c * a.x_sC;
  const TT* ts = static_cast<const TT*>(a.t) + n * a.t_sN + (class_map ? 0 : c * a.t_sC);

  for (int64_t base = begin; base < end; base += kThreads) {
    const int64_t gi = base + threadIdx.x;
    if (gi >= end) break;  // no shuffles inside the loop
    const int64_t m0 = gi * V;
    const int cnt = int(a.M - m0 < V ? a.M - m0 : V);
    unsigned bad = 0;
    A w[V];
    load_weights<V>(L, n, m0, cnt, w, bad);
    TT traw[V];
    load_group<V>(ts + m0 * a.t_sM, a.t_sM, L.vt, cnt, traw);
    S xraw[V];
    load_group<V>(xs + m0 * a.x_sM, a.x_sM, L.vx, cnt, xraw);
    S out[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      bool ok = v < cnt;
      A y;
      if constexpr (IsInt<TT>::value) {
        const int64_t iv = int64_t(traw[v]);
        const bool ignored = a.options.ignore_index.has && iv == a.options.ignore_index.value;
        if (class_map) {  // y = [t == c]
          if (ok && !ignored && (iv < 0 || iv >= a.C)) bad |= kBadClass;
          ok = ok && !ignored;
          y = ok && iv == c ? A(1) : A(0);
        } else {
          if (ok && !ignored && iv != 0 && iv != 1) bad |= kBadBinary;
          ok = ok && !ignored;
          y = ok ? A(iv) : A(0);
        }
      } else {
        y = to_acc<A>(traw[v]);
        if (a.options.ignore_index.has && y == A(a.options.ignore_index.value)) {  // per element (SPEC section 10)
          ok = false;
          y = A(0);
        }
        if (outside_unit_interval(y)) bad |= kBadDense;
      }
      const A x = to_acc<A>(xraw[v]);
      if (!from_logits && outside_unit_interval(x)) bad |= kBadProbability;
      A p = x, dp_dx = A(1);
      if (sigmoid) {
        A slope;
        sigmoid_and_slope(sigmoid_arg(x, sharp, from_logits), p, slope);
        dp_dx = slope * sigmoid_arg_dx(x, sharp, from_logits);
      }
      if constexpr (FWD) {
        if (ok) {
          accI += w[v] * intersection(p, y, use_min);
          accP += w[v] * power_term(p, squared);
          accY += w[v] * power_term(y, squared);
          if constexpr (ce) {
            const A z = sigmoid_arg(x, sharp, true);
            ce_num += w[v] * cwc * bce_with_logits(z, y, exp_nonpos(z < A(0) ? z : -z), pw);
            ce_den += A(1);
          }
        }
      } else {
        const A gr = ok ? w[v] * grad_p(p, y, gI, gP, use_min, squared) : A(0);
        A d = gr * dp_dx;
        // + a gce w c (lw p - pw y)
        if (CE && ok) d += sharp * gce * w[v] * cwc * bce_with_logits_dz(p, y, pw);
        out[v] = Store<S>::from(d);
      }
    }
    if (bad) report_bad_input(bad);
    if constexpr (!FWD) {
      S* gx = static_cast<S*>(a.grad_x) + n * a.g_sN + c * a.g_sC + m0 * a.g_sM;
      store_group<V>(gx, a.g_sM, L.vg, cnt, out);
    }
  }
  if constexpr (FWD) {
    for (int off = 1; off < 32; off <<= 1) {
      accI += shfl_xor(accI, off);
      accP += shfl_xor(accP, off);
      accY += shfl_xor(accY, off);
      if constexpr (CE) {
        ce_num += shfl_xor(ce_num, off);
        ce_den += shfl_xor(ce_den, off);
      }
    }
    if (lane == 0) {
      A* out = static_cast<A*>(L.partials) +
               ((r * L.blocks_per_row + b) * kWarps + warp) * partial_row(a.C, false);
      out[0] = accI;
      out[1] = accP;
      out[2] = accY;
      out[3] = ce_num;
      out[4] = ce_den;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Second stage: out[r][q] = sum_e partials[base(r) + e * sE + q], in a fixed order: each thread
// adds a fixed strided subset, then a fixed tree in shared memory.
// ---------------------------------------------------------------------------------------------
template <class A>
__global__ void __launch_bounds__(kThreads) reduce_kernel(const A* partials, A* out, int64_t C,
                                                          int64_t sN, int64_t sC, int64_t sE,
                                                          int64_t E) {
  __shared__ A sm[3][kThreads];
  const int64_t r = blockIdx.x;
  const A* base = partials + (r / C) * sN + (r % C) * sC;
  A s0 = A(0), s1 = A(0), s2 = A(0);
  for (int64_t e = threadIdx.x; e < E; e += kThreads) {
    s0 += base[e * sE + 0];
    s1 += base[e * sE + 1];
    s2 += base[e * sE + 2];
  }
  sm[0][threadIdx.x] = s0;
  sm[1][threadIdx.x] = s1;
  sm[2][threadIdx.x] = s2;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      sm[0][threadIdx.x] += sm[0][threadIdx.x + half];
      sm[1][threadIdx.x] += sm[1][threadIdx.x + half];
      sm[2][threadIdx.x] += sm[2][threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x < 3) out[r * 3 + threadIdx.x] = sm[threadIdx.x][0];
}

// ---------------------------------------------------------------------------------------------
// The finalize step (finalize.h) in one block: each thread takes pairs i = tid, tid + kThreads,
// ...; the loss and the weights are added in a fixed tree; for the mean every thread then divides
// the coefficients of its own pairs. Deterministic, no atomics.
// ---------------------------------------------------------------------------------------------
template <class A>
__global__ void __launch_bounds__(kThreads) finalize_kernel(const A* stats, int64_t s_n,
                                                            int64_t s_c, const FinalizeArgs f,
                                                            A* loss, A* coef, A* coef_ce) {
  __shared__ A sh_total[kThreads], sh_wsum[kThreads], sh_num[kThreads], sh_den[kThreads];
  const int64_t C = f.C, pairs = f.rows() * C;
  A total = A(0), wsum = A(0), num = A(0), den = A(0);
  if (f.ce != nullptr) {  // the cross-entropy term's sums: strided per thread, then the tree
    for (int64_t i = threadIdx.x; i < f.ce_count; i += kThreads) {
      num += static_cast<const A*>(f.ce)[i * f.ce_sN];
      den += static_cast<const A*>(f.ce)[i * f.ce_sN + 1];
    }
  }
  if (f.generalized()) {  // one loss per row, each of weight 1 (SPEC section 10)
    for (int64_t r = threadIdx.x; r < f.rows(); r += kThreads) {
      const A l = generalized_row(stats, s_n, s_c, f, r, coef + r * C * 3);
      if (f.options.reduction == Reduction::kNone) loss[r] = l;
      total += l;
      wsum += A(1);
    }
  } else {
    for (int64_t i = threadIdx.x; i < pairs; i += kThreads) {
      const int64_t r = i / C, c = i % C;
      A I, P, Y;
      pair_stats(stats, s_n, s_c, f, r, c, I, P, Y);
      const PairTerms<A> t = pair_terms(I, P, Y, f);
      const A w = pair_weight(f, c, Y);
      const A wl = w * t.loss;
      if (f.options.reduction == Reduction::kNone) loss[i] = wl;
      total += wl;
      wsum += pair_divisor(f, c, Y);
      A* k = coef + i * 3;
      k[0] = w * t.dI;
      k[1] = w * t.dP;
      k[2] = w * t.dY;
    }
  }
  if (threadIdx.x == 0) coef_ce[0] = coef_ce[1] = A(0);
  sh_total[threadIdx.x] = total;
  sh_wsum[threadIdx.x] = wsum;
  sh_num[threadIdx.x] = num;
  sh_den[threadIdx.x] = den;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      sh_total[threadIdx.x] += sh_total[threadIdx.x + half];
      sh_wsum[threadIdx.x] += sh_wsum[threadIdx.x + half];
      sh_num[threadIdx.x] += sh_num[threadIdx.x + half];
      sh_den[threadIdx.x] += sh_den[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (f.options.reduction == Reduction::kNone) return;
  if (f.options.reduction == Reduction::kMean) {  // mean over the kept pairs (or rows); none kept: 0
    const A denom = sh_wsum[0] > A(0) ? sh_wsum[0] : A(1);
    if (threadIdx.x == 0) loss[0] = sh_total[0] / denom;
    const A inv = A(1) / denom;
    for (int64_t i = threadIdx.x; i < pairs; i += kThreads) {
      coef[i * 3 + 0] *= inv;
      coef[i * 3 + 1] *= inv;
      coef[i * 3 + 2] *= inv;
    }
  } else if (threadIdx.x == 0) {
    loss[0] = sh_total[0];
  }
  if (f.ce != nullptr && threadIdx.x == 0) {
    add_cross_entropy(sh_num[0], sh_den[0], f, loss, coef_ce);
  }
}

// The cross-entropy term's sums per sample: out[n] = the sum of sample n's per_sample entries
// (num, den) at part[(n * per_sample + e) * stride], strided per thread then a fixed tree.
template <class A>
__global__ void __launch_bounds__(kThreads) ce_reduce_kernel(const A* part, int64_t per_sample,
                                                             int64_t stride, A* out) {
  __shared__ A sh_num[kThreads], sh_den[kThreads];
  const int64_t n = blockIdx.x;
  A num = A(0), den = A(0);
  for (int64_t e = threadIdx.x; e < per_sample; e += kThreads) {
    num += part[(n * per_sample + e) * stride];
    den += part[(n * per_sample + e) * stride + 1];
  }
  sh_num[threadIdx.x] = num;
  sh_den[threadIdx.x] = den;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      sh_num[threadIdx.x] += sh_num[threadIdx.x + half];
      sh_den[threadIdx.x] += sh_den[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[n * 2 + 0] = sh_num[0];
    out[n * 2 + 1] = sh_den[0];
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: plans and launches
// ---------------------------------------------------------------------------------------------
inline int sm_count(int device) {
  static int cache[64] = {0};  // one copy program-wide (inline function)
  if (device < 0 || device >= 64) device = 0;
  if (cache[device] == 0) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || v <= 0)
      v = 108;
    cache[device] = v;
  }
  return cache[device];
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int elem_size(DType d) {
  switch (d) {
    case DType::kFloat64:
    case DType::kInt64: return 8;
    case DType::kFloat32:
    case DType::kInt32: return 4;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    default: return 1;
  }
}

// Whether V-element accesses of a [.., .., M] tensor are aligned for every group.
inline bool vec_ok(const void* p, int esize, int V, int64_t sN, int64_t sC, int64_t sM, int64_t M) {
  if (p == nullptr || V == 1) return false;
  const int64_t bytes = int64_t(esize) * V;
  return sM == 1 && M % V == 0 && sN % V == 0 && sC % V == 0 &&
         reinterpret_cast<uintptr_t>(p) % uintptr_t(bytes) == 0;
}

inline int vec_width(const KernelArgs& a) { return 16 / elem_size(a.x_dtype); }
inline int classes_per_lane(const KernelArgs& a) {
  switch (vec_width(a)) {
    case 2: return kClassesPerLane<2>;
    case 4: return kClassesPerLane<4>;
    default: return kClassesPerLane<8>;
  }
}

// The pixel kernel when the classes of a pixel interact (softmax) or the target is a class map;
// otherwise every element is independent and the row kernel runs.
// A multilabel class map with the sigmoid runs in the row kernel (y = [t == c] per row).
inline bool pixel_mode(const KernelArgs& a) {
  return a.prob == Prob::kSoftmax || (a.class_map && a.prob != Prob::kSigmoid);
}
inline bool needs_prepass(const KernelArgs& a) {
  return a.prob == Prob::kSoftmax && a.C > 32 * classes_per_lane(a);
}
// Classes one pixel-kernel launch covers: all of them, or windows of 32 lanes x CPT classes.
inline int64_t class_window(const KernelArgs& a) {
  return needs_prepass(a) ? int64_t(32) * classes_per_lane(a) : a.C;
}

inline int lanes_per_group(int64_t classes, int cpt) {
  int K = 1;
  while (K < 32 && int64_t(K) * cpt < classes) K <<= 1;
  return K;
}

inline Launch base_launch(const KernelArgs& a) {
  Launch L{};
  L.a = a;
  const int V = vec_width(a);
  L.vx = vec_ok(a.x, elem_size(a.x_dtype), V, a.x_sN, a.x_sC, a.x_sM, a.M);
  L.vt = vec_ok(a.t, elem_size(a.t_dtype), V, a.t_sN, a.class_map ? 0 : a.t_sC, a.t_sM, a.M);
  L.vw = vec_ok(a.w, accumulates_in_double(a) ? 8 : 4, V, a.w_sN, 0, a.w_sM, a.M);
  L.vg = vec_ok(a.grad_x, elem_size(a.x_dtype), V, a.g_sN, a.g_sC, a.g_sM, a.M);
  L.groups = cdiv(a.M, V);
  return L;
}

// Cuts each row's pixel groups into blocks: a whole number of block iterations (per_iter groups)
// per block, and enough blocks to fill the device `waves` times over.
inline void cut(Launch& L, int64_t rows, int64_t per_iter, int device, int waves) {
  const int64_t iters = cdiv(L.groups, per_iter);
  const int64_t target = int64_t(sm_count(device)) * waves;
  int64_t bpr = cdiv(target, rows < 1 ? 1 : rows);
  if (bpr > iters) bpr = iters;
  if (bpr < 1) bpr = 1;
  L.chunk = cdiv(iters, bpr) * per_iter;
  L.blocks_per_row = cdiv(L.groups, L.chunk);
}

constexpr int kWavesForward = 4;    // the forward's partial sums grow with the block count
constexpr int kWavesBackward = 16;

inline Launch plan_launch(const KernelArgs& a, int device, bool fwd) {
  Launch L = base_launch(a);
  const int waves = fwd ? kWavesForward : kWavesBackward;
  if (pixel_mode(a)) {
    const int64_t win = class_window(a);
    L.K = lanes_per_group(win < a.C ? win : a.C, classes_per_lane(a));
    cut(L, a.N, int64_t(fwd ? kPixelThreads<true> : kPixelThreads<false>) / 32 * (32 / L.K),
        device, waves);
  } else {
    cut(L, a.N * a.C, kThreads, device, waves);
  }
  return L;
}

// Dense targets reach the kernels as the input dtype, the accumulation dtype or bool (the glue
// converts the others), integer targets as uint8/int32/int64.
template <class S, class TT>
struct Pair {
  using input = S;
  using target = TT;
};

template <class S, class F>
cudaError_t with_target(const KernelArgs& a, F& f) {
  constexpr bool half = sizeof(S) == 2;
  switch (a.t_dtype) {
    case DType::kUInt8: return f(Pair<S, uint8_t>{});
    case DType::kInt32: return f(Pair<S, int32_t>{});
    case DType::kInt64: return f(Pair<S, int64_t>{});
    case DType::kBool: return f(Pair<S, bool>{});
    case DType::kFloat32:
      if constexpr (sizeof(S) != 8) return f(Pair<S, float>{});
      break;
    case DType::kFloat64:
      if constexpr (sizeof(S) == 8) return f(Pair<S, double>{});
      break;
    case DType::kFloat16:
      if constexpr (half && std::is_same<S, __half>::value) return f(Pair<S, __half>{});
      break;
    case DType::kBFloat16:
      if constexpr (half && std::is_same<S, __nv_bfloat16>::value)
        return f(Pair<S, __nv_bfloat16>{});
      break;
  }
  return cudaErrorInvalidValue;
}


// All launches of one call for input dtype S: the statistics (FWD) or the gradient.
template <class S, bool FWD>
cudaError_t run_input(const KernelArgs& a, void* partials, void* pixel, void* out, int device,
                      cudaStream_t stream) {
  auto f = [&](auto types) -> cudaError_t {
    using TT = typename decltype(types)::target;
    using A = typename Acc<S>::type;
    constexpr int V = 16 / sizeof(S);
    constexpr bool CM = IsInt<TT>::value;  // integer targets of the pixel kernel are class maps
    Launch L = plan_launch(a, device, FWD);
    L.partials = partials;
    // the cross-entropy term: accumulated forward, or its gradient backward
    const bool ce = FWD ? a.ce : a.ce_coef != nullptr;
    int64_t grid = 0;
    if (pixel_mode(a)) {
      if (needs_prepass(a)) {
        L.pixel = pixel;
        const unsigned pgrid = unsigned(cdiv(a.N * a.M, kThreads));
        if (ce) {
          pixel_prepass<S, TT, CM, FWD, true><<<pgrid, kThreads, 0, stream>>>(L);
        } else {
          pixel_prepass<S, TT, CM, FWD, false><<<pgrid, kThreads, 0, stream>>>(L);
        }
      }
      const int64_t win = class_window(a);
      grid = a.N * L.blocks_per_row;
      for (int64_t c0 = 0; c0 < a.C; c0 += win) {
        L.c0 = c0;
        L.cw = a.C - c0 < win ? a.C - c0 : win;
        if (ce) {
          pixel_kernel<S, TT, V, CM, FWD, true>
              <<<unsigned(grid), kPixelThreads<FWD>, 0, stream>>>(L);
        } else {
          pixel_kernel<S, TT, V, CM, FWD, false>
              <<<unsigned(grid), kPixelThreads<FWD>, 0, stream>>>(L);
        }
      }
    } else {
      grid = a.N * a.C * L.blocks_per_row;
      if (ce) {
        row_kernel<S, TT, V, FWD, true><<<unsigned(grid), kThreads, 0, stream>>>(L);
      } else {
        row_kernel<S, TT, V, FWD, false><<<unsigned(grid), kThreads, 0, stream>>>(L);
      }
    }
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess || !FWD) return err;
    // second stage
    const int64_t E = L.blocks_per_row * kWarps;
    const A* part = static_cast<const A*>(partials);
    const int64_t row = partial_row(a.C, pixel_mode(a));
    if (pixel_mode(a)) {
      reduce_kernel<A><<<unsigned(a.N * a.C), kThreads, 0, stream>>>(
          part, static_cast<A*>(out), a.C, E * row, 3, row, E);
    } else {
      reduce_kernel<A><<<unsigned(a.N * a.C), kThreads, 0, stream>>>(
          part, static_cast<A*>(out), a.C, a.C * E * row, E * row, row, E);
    }
    return cudaGetLastError();
  };
  return with_target<S>(a, f);
}

}  // namespace detail
}  // namespace cuda
}  // namespace softiou
