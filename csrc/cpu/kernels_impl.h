// The CPU kernels of one instruction set: kernels_baseline.cpp, kernels_avx2.cpp and
// kernels_avx512.cpp include this file once each, with SOFTIOU_CPU_NS (and SOFTIOU_MATH_NS)
// defined, so that each copy has its own symbols. The kernel and its tile are in tile.h, its
// members in the headers of the paths they serve:
//
//   tile_inputs.h    a tile's probabilities, weights and target (every target kind)
//   softmax.h        the softmax over the classes, and its cross-entropy sums
//   class_map.h      the softmax with a class map: statistics and gradient
//   dense.h          per-element targets through the tile buffers
//   sigmoid_rows.h   per-element targets under a sigmoid of logits, without the tile buffers
//   stat_scores.h    the hard counts of a tile (tp, fp, tn, fn; SPEC section 11)
//   items.h          the work items, tile by tile through the path that fits
//
// and below, the dispatch on the dtypes and the table the glue calls (kernels.h).
#ifndef SOFTIOU_CPU_NS
#error "define SOFTIOU_CPU_NS before including kernels_impl.h"
#endif

#include "tile.h"

#include "tile_inputs.h"
#include "softmax.h"
#include "class_map.h"
#include "dense.h"
#include "sigmoid_rows.h"
#include "stat_scores.h"
#include "items.h"

namespace softiou {
namespace cpu {
namespace SOFTIOU_CPU_NS {
namespace {

// ------------------------------------------------------------------------------------------
// Type dispatch. Dense targets arrive as the input dtype, the accumulation dtype or bool (the
// glue converts the rest); integer targets as uint8, int32 or int64.
// ------------------------------------------------------------------------------------------
template <class S, class A, class F>
void with_target(const KernelArgs& a, F&& f) {
  switch (a.t_dtype) {
    case DType::kUInt8:
      if (a.class_map) f(Kernel<A, S, uint8_t, true>(a)); else f(Kernel<A, S, uint8_t, false>(a));
      return;
    case DType::kInt32:
      if (a.class_map) f(Kernel<A, S, int32_t, true>(a)); else f(Kernel<A, S, int32_t, false>(a));
      return;
    case DType::kInt64:
      if (a.class_map) f(Kernel<A, S, int64_t, true>(a)); else f(Kernel<A, S, int64_t, false>(a));
      return;
    case DType::kBool:
      f(Kernel<A, S, bool_byte, false>(a));
      return;
    case DType::kFloat32:
      f(Kernel<A, S, float, false>(a));
      return;
    case DType::kFloat64:
      f(Kernel<A, S, double, false>(a));
      return;
    case DType::kFloat16:
      f(Kernel<A, S, f16, false>(a));
      return;
    case DType::kBFloat16:
      f(Kernel<A, S, bf16, false>(a));
      return;
  }
}

template <class F>
void with_kernel(const KernelArgs& a, F&& f) {
  switch (a.x_dtype) {
    case DType::kFloat32:
      with_target<float, float>(a, f);
      return;
    case DType::kFloat64:
      with_target<double, double>(a, f);
      return;
    case DType::kFloat16:
      with_target<f16, float>(a, f);
      return;
    case DType::kBFloat16:
      with_target<bf16, float>(a, f);
      return;
    default:
      return;
  }
}

void stats_entry(const KernelArgs& a, int64_t chunk, int64_t ib, int64_t ie, void* partials,
                 void* scratch, ItemError* errors) {
  with_kernel(a, [&](const auto& k) {
    using A = typename std::decay<decltype(k)>::type::acc_type;
    k.stats(chunk, ib, ie, static_cast<A*>(partials), static_cast<A*>(scratch), errors);
  });
}

void backward_entry(const KernelArgs& a, int64_t chunk, int64_t ib, int64_t ie, void* scratch,
                    ItemError* errors) {
  with_kernel(a, [&](const auto& k) {
    using A = typename std::decay<decltype(k)>::type::acc_type;
    k.backward(chunk, ib, ie, static_cast<A*>(scratch), errors);
  });
}

}  // namespace

const KernelTable& table() {
  static const KernelTable t{&stats_entry, &backward_entry, SOFTIOU_CPU_ISA_NAME};
  return t;
}

}  // namespace SOFTIOU_CPU_NS
}  // namespace cpu
}  // namespace softiou
