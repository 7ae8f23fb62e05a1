// Host side: how a call is cut into launches (plans) and the launches of one input dtype
// (run_input, instantiated by kernels_<dtype>.cu).
#pragma once

#include "common.cuh"
#include "pixel.cuh"
#include "rows.cuh"
#include "second_stage.cuh"

namespace softiou {
namespace cuda {
namespace detail {

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
// Classes per lane of the basic or the general pixel kernel (common.cuh: kClassesPerLane).
inline int classes_per_lane(const KernelArgs& a, bool basic) {
  switch (vec_width(a)) {
    case 2: return basic ? kClassesPerLane<2, true> : kClassesPerLane<2, false>;
    case 4: return basic ? kClassesPerLane<4, true> : kClassesPerLane<4, false>;
    default: return basic ? kClassesPerLane<8, true> : kClassesPerLane<8, false>;
  }
}

// The pixel kernels' common case, compiled as its own instantiation (pixel.cuh: BASIC): a class
// map with the basic options (common.cuh: basic_options) whose classes fit one pass of it.
inline bool basic_case(const KernelArgs& a) {
  return a.class_map && basic_options(a) && a.C <= 32 * classes_per_lane(a, true);
}
// Classes per lane of the kernel the call takes.
inline int classes_per_lane(const KernelArgs& a) { return classes_per_lane(a, basic_case(a)); }

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

// Whether the statistics pass counts too (kernels.h: counts_in_stats): the pixel kernel a
// multiclass class map in one class window, the row kernel the binary and multilabel rows (a
// multilabel class map of probabilities is the pixel kernel's, and not counted there); and a
// block's 32-bit counters cannot overflow.
inline bool counting_pass(const KernelArgs& a, int device) {
  if (a.N * a.C * a.M == 0) return false;
  const bool multiclass = a.options.mode == Mode::kMulticlass;
  const bool pixels = multiclass && a.class_map && pixel_mode(a) && !needs_prepass(a);
  const bool rows = !multiclass && !pixel_mode(a);
  if (!pixels && !rows) return false;
  const Launch L = plan_launch(a, device, true);
  return L.chunk * vec_width(a) < (int64_t(1) << 32);
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


// One pixel-kernel launch: with or without the cross-entropy term, the basic case (class maps
// only) or the general kernel; COUNT: the statistics pass that counts too (counting_pass).
template <class S, class TT, int V, bool CM, bool FWD, bool CE, bool COUNT>
void launch_pixels(const Launch& L, bool basic, int64_t grid, cudaStream_t stream) {
  if constexpr (COUNT && !(FWD && CM)) {
    return;
  } else if constexpr (COUNT) {
    if (basic) {
      pixel_counting_kernel<S, TT, V, CE, true>
          <<<unsigned(grid), kPixelThreads<true>, 0, stream>>>(L);
    } else {
      pixel_counting_kernel<S, TT, V, CE, false>
          <<<unsigned(grid), kPixelThreads<true>, 0, stream>>>(L);
    }
  } else {
    if constexpr (CM) {
      if (basic) {
        pixel_kernel<S, TT, V, CM, FWD, CE, true>
            <<<unsigned(grid), kPixelThreads<FWD>, 0, stream>>>(L);
        return;
      }
    }
    pixel_kernel<S, TT, V, CM, FWD, CE, false>
        <<<unsigned(grid), kPixelThreads<FWD>, 0, stream>>>(L);
  }
}
template <class S, class TT, int V, bool FWD>
void launch_counting_rows(const Launch& L, bool ce, int64_t grid, cudaStream_t stream) {
  if constexpr (FWD) {
    if (ce) {
      row_counting_kernel<S, TT, V, true><<<unsigned(grid), kThreads, 0, stream>>>(L);
    } else {
      row_counting_kernel<S, TT, V, false><<<unsigned(grid), kThreads, 0, stream>>>(L);
    }
  }
}

// All launches of one call for input dtype S: the statistics (FWD) or the gradient.
template <class S, bool FWD>
cudaError_t run_input(const KernelArgs& a, void* partials, void* pixel, void* out, void* counts,
                      int device, cudaStream_t stream) {
  auto f = [&](auto types) -> cudaError_t {
    using TT = typename decltype(types)::target;
    using A = typename Acc<S>::type;
    constexpr int V = 16 / sizeof(S);
    constexpr bool CM = IsInt<TT>::value;  // integer targets of the pixel kernel are class maps
    Launch L = plan_launch(a, device, FWD);
    L.partials = partials;
    L.counts = counts;
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
      const bool basic = CM && basic_case(a);
      grid = a.N * L.blocks_per_row;
      for (int64_t c0 = 0; c0 < a.C; c0 += win) {
        L.c0 = c0;
        L.cw = a.C - c0 < win ? a.C - c0 : win;
        const bool count = FWD && CM && counts != nullptr;
        if (count && ce) {
          launch_pixels<S, TT, V, CM, FWD, true, true>(L, basic, grid, stream);
        } else if (count) {
          launch_pixels<S, TT, V, CM, FWD, false, true>(L, basic, grid, stream);
        } else if (ce) {
          launch_pixels<S, TT, V, CM, FWD, true, false>(L, basic, grid, stream);
        } else {
          launch_pixels<S, TT, V, CM, FWD, false, false>(L, basic, grid, stream);
        }
      }
    } else {
      grid = a.N * a.C * L.blocks_per_row;
      if (FWD && counts != nullptr) {
        launch_counting_rows<S, TT, V, FWD>(L, ce, grid, stream);
      } else if (ce) {
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
