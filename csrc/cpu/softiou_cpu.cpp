// CPU implementation of softiou::stats and softiou::stats_backward: the torch side of
// cpu/kernels_impl.h. Splits the pixels into items (kernels.h), runs them with at::parallel_for
// and adds the per-item partial sums in item order.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "../op_common.h"
#include "kernels.h"
#include "softiou_cpu.h"

namespace softiou {
namespace {

const cpu::KernelTable& kernels() {
  static const cpu::KernelTable* table = [] {
    const char* force = std::getenv("SOFTIOU_CPU_ISA");
    if (force != nullptr && std::strcmp(force, "baseline") == 0) return &cpu::baseline::table();
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
      return &cpu::avx2::table();
#endif
    return &cpu::baseline::table();
  }();
  return *table;
}

// Pixels an item covers: about 64K elements, a whole number of tiles. A function of the shape
// only, so the reduction order does not depend on the thread count.
int64_t chunk_pixels(int64_t C, int64_t M) {
  const int64_t T = cpu::kTile;
  int64_t px = (65536 + C - 1) / C;
  px = (px + T - 1) / T * T;
  const int64_t whole = (M + T - 1) / T * T;
  return std::max<int64_t>(T, std::min<int64_t>(px, whole));
}

struct Items {
  int64_t chunk, per_sample, count;
};

Items plan(const KernelArgs& a) {
  Items it;
  it.chunk = chunk_pixels(a.C, a.M);
  it.per_sample = (a.M + it.chunk - 1) / it.chunk;
  it.count = a.N * it.per_sample;
  return it;
}

void raise_first(const std::vector<cpu::ItemError>& errors, const KernelArgs& a,
                 std::optional<int64_t> ignore_index) {
  for (const auto& e : errors) {
    if (e.code != InputError::kNone) raise_input_error(e.code, e.value, a.C, ignore_index);
  }
}

// The gradient is the one large buffer this op writes. A fresh allocation is faulted in page by
// page as the kernel first writes it (40K faults for 160 MB); where the system allows transparent
// huge pages on request (/sys/kernel/mm/transparent_hugepage/enabled = madvise or always), asking
// for them turns that into about 80 faults. Only a hint: nothing changes where it is refused.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = t.nbytes();
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data_ptr()) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data_ptr()) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

template <class F>
void run_items(const Items& it, const Prepared& p, F&& body) {
  const int64_t scratch_bytes = cpu::scratch_elems(p.args.C) * at::elementSize(p.acc);
  at::parallel_for(0, it.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> scratch((scratch_bytes + 7) / 8);
    body(begin, end, static_cast<void*>(scratch.data()));
  });
}

at::Tensor stats_cpu(const at::Tensor& input, const at::Tensor& target,
                     const std::optional<at::Tensor>& weight, c10::string_view mode,
                     bool from_logits, double sharpness, c10::string_view intersection,
                     std::optional<int64_t> ignore_index) {
  Prepared p = prepare(input, target, weight, mode, from_logits, sharpness, intersection,
                       ignore_index);
  at::Tensor out = stats_output(input, p).zero_();
  if (p.empty) return out;
  const KernelArgs& a = p.args;
  const Items it = plan(a);
  at::Tensor partials = at::empty({it.count, a.C, 3}, input.options().dtype(p.acc));
  std::vector<cpu::ItemError> errors(it.count);
  const auto& k = kernels();
  run_items(it, p, [&](int64_t b, int64_t e, void* scratch) {
    k.stats(a, it.chunk, b, e, partials.data_ptr(), scratch, errors.data());
  });
  raise_first(errors, a, ignore_index);
  // second stage: add the items of each sample in item order
  AT_DISPATCH_FLOATING_TYPES(p.acc, "softiou_stats_reduce", [&] {
    const scalar_t* src = partials.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t row = a.C * 3;
    at::parallel_for(0, a.N, 1, [&](int64_t nb, int64_t ne) {
      for (int64_t n = nb; n < ne; ++n) {
        scalar_t* o = dst + n * row;
        for (int64_t k2 = 0; k2 < it.per_sample; ++k2) {
          const scalar_t* s = src + (n * it.per_sample + k2) * row;
          for (int64_t i = 0; i < row; ++i) o[i] += s[i];
        }
      }
    });
  });
  return out;
}

at::Tensor stats_backward_cpu(const at::Tensor& grad_stats, const at::Tensor& input,
                              const at::Tensor& target, const std::optional<at::Tensor>& weight,
                              c10::string_view mode, bool from_logits, double sharpness,
                              c10::string_view intersection, std::optional<int64_t> ignore_index) {
  Prepared p = prepare(input, target, weight, mode, from_logits, sharpness, intersection,
                       ignore_index);
  check_grad_stats(grad_stats, input);
  if (p.empty) return at::zeros_like(input);
  at::Tensor gx = prepare_backward(p, grad_stats);
  advise_huge_pages(gx);
  const KernelArgs& a = p.args;
  const Items it = plan(a);
  std::vector<cpu::ItemError> errors(it.count);
  const auto& k = kernels();
  run_items(it, p, [&](int64_t b, int64_t e, void* scratch) {
    k.backward(a, it.chunk, b, e, scratch, errors.data());
  });
  raise_first(errors, a, ignore_index);
  return gx.view(input.sizes());
}

}  // namespace

const char* cpu_isa_name() { return kernels().isa; }

TORCH_LIBRARY_IMPL(softiou, CPU, m) {
  m.impl("stats", &stats_cpu);
  m.impl("stats_backward", &stats_backward_cpu);
}

}  // namespace softiou
