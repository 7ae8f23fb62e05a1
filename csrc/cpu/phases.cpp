// The phases on the CPU (ops/phases.h): the torch side of the kernels in kernels_impl.h. Splits the
// pixels into items (kernels.h), runs them with at::parallel_for, adds the per-item partial sums
// in item order, and runs the finalize step (finalize.h) on one thread. Scratch memory comes from
// the C++ heap, and the outputs are allocated without a dispatcher call: a call costs the
// dispatcher nothing besides its own operator.
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "../ops/inputs.h"
#include "../ops/phases.h"
#include "isa.h"
#include "kernels.h"

namespace softiou {
namespace {

using math::finalize_serial;

at::Tensor new_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::detail::empty_cpu(sizes, dtype, /*pin_memory=*/false, std::nullopt);
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

void raise_first(const std::vector<cpu::ItemError>& errors, const KernelArgs& a) {
  for (const auto& e : errors) {
    if (e.code != InputError::kNone) raise_input_error(e.code, e.value, a);
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
    // not zeroed: the kernels write every value of their tiles before they read it
    std::unique_ptr<double[]> scratch(new double[(scratch_bytes + 7) / 8]);
    body(begin, end, static_cast<void*>(scratch.get()));
  });
}

// The statistics [N][C][3] (accumulation dtype A) into `out` and the cross-entropy term's
// per-sample sums [N][2] into `ce` (zeros without the term): the kernel's per-item partial sums,
// added per sample in item order. With `scores` (not null), also the hard counts [N][C][4]
// (tp, fp, tn, fn) from the items' counting rows (cpu::counts_row).
template <class A>
void compute_stats(Prepared& p, A* out, A* ce, int64_t* scores) {
  const int64_t per = p.C * 3;
  std::fill(out, out + p.N * per, A(0));
  std::fill(ce, ce + p.N * 2, A(0));
  if (scores != nullptr) std::fill(scores, scores + p.N * p.C * 4, int64_t(0));
  if (p.empty) return;
  const Items it = plan(p.args);
  const int64_t counts_row = cpu::counts_row(p.C);
  std::vector<int64_t> counts(scores != nullptr ? it.count * counts_row : 0);
  if (scores != nullptr) p.args.counts = counts.data();
  const KernelArgs& a = p.args;
  const int64_t row = cpu::partial_row(a.C);
  std::vector<A> partials(it.count * row);
  std::vector<cpu::ItemError> errors(it.count);
  const auto& k = cpu::kernels();
  run_items(it, p, [&](int64_t b, int64_t e, void* scratch) {
    k.stats(a, it.chunk, b, e, partials.data(), scratch, errors.data());
  });
  raise_first(errors, a);
  at::parallel_for(0, a.N, 1, [&](int64_t nb, int64_t ne) {
    for (int64_t n = nb; n < ne; ++n) {
      A* o = out + n * per;
      for (int64_t k2 = 0; k2 < it.per_sample; ++k2) {
        const A* s = partials.data() + (n * it.per_sample + k2) * row;
        for (int64_t i = 0; i < per; ++i) o[i] += s[i];
        if (a.ce) {
          ce[n * 2 + 0] += s[per + 0];
          ce[n * 2 + 1] += s[per + 1];
        }
      }
      if (scores == nullptr) continue;
      for (int64_t c = 0; c < a.C; ++c) {
        int64_t tp = 0, predicted = 0, target = 0, kept = 0;
        for (int64_t k2 = 0; k2 < it.per_sample; ++k2) {
          for (int u = 0; u < cpu::kCountCopies; ++u) {
            const int64_t* q =
                counts.data() + (n * it.per_sample + k2) * counts_row + (u * (a.C + 1) + c) * 4;
            tp += q[0];
            predicted += q[1];
            target += q[2];
            kept += q[3];
          }
        }
        int64_t* s = scores + (n * a.C + c) * 4;
        s[0] = tp;
        s[1] = predicted - tp;
        s[2] = kept - predicted - target + tp;
        s[3] = target - tp;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stats(const at::Tensor& input,
                                                     const at::Tensor& target,
                                                     const std::optional<at::Tensor>& weight,
                                                     const std::optional<at::Tensor>& class_weight,
                                                     const StatsOptions& o,
                                                     const CountsOptions& counts) {
  Prepared p = prepare(input, target, weight, o);
  const at::Tensor cw = use_cross_entropy(p, class_weight, input.device(), true);
  const bool counting = use_counts(p, counts, input);
  at::Tensor out = new_empty({p.N, p.C, 3}, p.acc);
  at::Tensor ce = new_empty({p.N, 2}, p.acc);
  at::Tensor scores = counting ? new_empty({p.N, p.C, 4}, at::kLong) : new_empty({0}, at::kLong);
  AT_DISPATCH_FLOATING_TYPES(p.acc, "softiou_stats", [&] {
    compute_stats<scalar_t>(p, out.data_ptr<scalar_t>(), ce.data_ptr<scalar_t>(),
                            counting ? scores.data_ptr<int64_t>() : nullptr);
  });
  return {out, ce, scores};
}

at::Tensor stats_backward(const at::Tensor& grad_stats, const std::optional<at::Tensor>& grad_ce,
                          const std::optional<at::Tensor>& grad_out, const at::Tensor& input,
                          const at::Tensor& target, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& class_weight, const StatsOptions& o) {
  Prepared p = prepare(input, target, weight, o);
  const auto owned = use_gradients(p, grad_stats, grad_ce, grad_out, input);
  const at::Tensor cw = use_cross_entropy(p, class_weight, input.device(), false);
  if (p.empty) return at::zeros_like(input);
  at::Tensor gx = allocate_grad(p, input);
  advise_huge_pages(gx);
  const KernelArgs& a = p.args;
  const Items it = plan(a);
  std::vector<cpu::ItemError> errors(it.count);
  const auto& k = cpu::kernels();
  run_items(it, p, [&](int64_t b, int64_t e, void* scratch) {
    k.backward(a, it.chunk, b, e, scratch, errors.data());
  });
  raise_first(errors, a);
  return gx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> finalize(
    const at::Tensor& stats, const std::optional<at::Tensor>& ce,
    const std::optional<at::Tensor>& class_weight, const FinalizeOptions& o) {
  const Finalize fin = prepare_finalize(stats, ce, class_weight, o);
  const FinalizeArgs& f = fin.args;
  const at::ScalarType acc = stats.scalar_type();
  at::Tensor loss = new_empty(loss_shape(f), acc);
  at::Tensor coef = new_empty({f.rows(), f.C, 3}, acc);
  at::Tensor ce_coef = new_empty({1, 2}, acc);
  const at::Tensor s = stats.contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "softiou_finalize", [&] {
    finalize_serial(s.const_data_ptr<scalar_t>(), f.C * 3, int64_t(3), f,
                    loss.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(),
                    ce_coef.data_ptr<scalar_t>());
  });
  return {loss, coef, ce_coef};
}

}  // namespace

const Phases& cpu_phases() {
  static const Phases phases{&stats, &stats_backward, &finalize};
  return phases;
}

}  // namespace softiou
