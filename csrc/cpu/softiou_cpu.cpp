// CPU implementation of the softiou operators (schemas in ops.cpp): the torch side of
// cpu/kernels_impl.h. Splits the pixels into items (kernels.h), runs them with at::parallel_for,
// adds the per-item partial sums in item order, and runs the finalize step (finalize.h) on one
// thread. Scratch memory comes from the C++ heap: a call allocates through the dispatcher only the
// tensors it returns.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "../op_common.h"
#include "../ops.h"
#include "kernels.h"
#include "softiou_cpu.h"

namespace softiou {
namespace {

using math::finalize_serial;

// The builds of the CPU kernels, best first, and whether this processor (and its OS, for the
// AVX-512 registers' state) runs each.
struct Isa {
  const char* name;
  const cpu::KernelTable& (*table)();
  bool (*runs)();
};

bool runs_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool runs_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  return runs_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

bool runs_baseline() { return true; }

constexpr Isa kIsas[] = {{"avx512", &cpu::avx512::table, &runs_avx512},
                         {"avx2", &cpu::avx2::table, &runs_avx2},
                         {"baseline", &cpu::baseline::table, &runs_baseline}};

// The build named `name` (nullptr: the best this processor runs); a clear error for a name that
// is not one of them or that this processor cannot run. `what` names where the name came from.
const cpu::KernelTable* find_isa(const char* name, const char* what) {
  std::string runnable;
  for (const Isa& isa : kIsas) {
    if (!isa.runs()) continue;
    if (name == nullptr || std::strcmp(name, isa.name) == 0) return &isa.table();
    runnable += runnable.empty() ? "" : ", ";
    runnable += isa.name;
  }
  TORCH_CHECK_VALUE(false, "softiou: ", what, " is '", name, "', not an instruction set this ",
                    "processor runs the CPU kernels with; choose one of: ", runnable);
}

// The kernels in use: chosen at the first call, the best this processor runs or the one the
// environment variable SOFTIOU_CPU_ISA names; set_cpu_isa switches them (tests).
std::atomic<const cpu::KernelTable*>& current_kernels() {
  static std::atomic<const cpu::KernelTable*> table{
      find_isa(std::getenv("SOFTIOU_CPU_ISA"), "SOFTIOU_CPU_ISA")};
  return table;
}

const cpu::KernelTable& kernels() { return *current_kernels().load(std::memory_order_acquire); }

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
    // not zeroed: the kernels write every value of their tiles before they read it
    std::unique_ptr<double[]> scratch(new double[(scratch_bytes + 7) / 8]);
    body(begin, end, static_cast<void*>(scratch.get()));
  });
}

// The statistics [N][C][3] (accumulation dtype A) into `out` and, with the cross-entropy term
// (p.args.ce), its per-sample sums [N][2] into `ce`: the kernel's per-item partial sums, added
// per sample in item order.
template <class A>
void compute_stats(const Prepared& p, std::optional<int64_t> ignore_index, A* out, A* ce) {
  const int64_t per = p.C * 3;
  std::fill(out, out + p.N * per, A(0));
  if (ce != nullptr) std::fill(ce, ce + p.N * 2, A(0));
  if (p.empty) return;
  const KernelArgs& a = p.args;
  const Items it = plan(a);
  const int64_t row = cpu::partial_row(a.C);
  std::vector<A> partials(it.count * row);
  std::vector<cpu::ItemError> errors(it.count);
  const auto& k = kernels();
  run_items(it, p, [&](int64_t b, int64_t e, void* scratch) {
    k.stats(a, it.chunk, b, e, partials.data(), scratch, errors.data());
  });
  raise_first(errors, a, ignore_index);
  at::parallel_for(0, a.N, 1, [&](int64_t nb, int64_t ne) {
    for (int64_t n = nb; n < ne; ++n) {
      A* o = out + n * per;
      for (int64_t k2 = 0; k2 < it.per_sample; ++k2) {
        const A* s = partials.data() + (n * it.per_sample + k2) * row;
        for (int64_t i = 0; i < per; ++i) o[i] += s[i];
        if (ce != nullptr) {
          ce[n * 2 + 0] += s[per + 0];
          ce[n * 2 + 1] += s[per + 1];
        }
      }
    }
  });
}

// The gradient pass: writes the gradient of the input (prepared by the caller).
void gradient_pass(Prepared& p, const at::Tensor& gx, std::optional<int64_t> ignore_index) {
  advise_huge_pages(gx);
  const KernelArgs& a = p.args;
  const Items it = plan(a);
  std::vector<cpu::ItemError> errors(it.count);
  const auto& k = kernels();
  run_items(it, p, [&](int64_t b, int64_t e, void* scratch) {
    k.backward(a, it.chunk, b, e, scratch, errors.data());
  });
  raise_first(errors, a, ignore_index);
}

at::Tensor stats_cpu(const at::Tensor& input, const at::Tensor& target,
                     const std::optional<at::Tensor>& weight, c10::string_view mode,
                     bool from_logits, double sharpness, c10::string_view intersection,
                     std::optional<int64_t> ignore_index, bool squared) {
  Prepared p = prepare(input, target, weight, mode, from_logits, sharpness, intersection,
                       ignore_index, squared, Shapes::kNormalized);
  at::Tensor out = at::empty({p.N, p.C, 3}, input.options().dtype(p.acc));
  AT_DISPATCH_FLOATING_TYPES(p.acc, "softiou_stats", [&] {
    compute_stats<scalar_t>(p, ignore_index, out.data_ptr<scalar_t>(), nullptr);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> stats_ce_cpu(const at::Tensor& input, const at::Tensor& target,
                                                const std::optional<at::Tensor>& weight,
                                                const std::optional<at::Tensor>& class_weight,
                                                const CrossEntropyOptions& o) {
  Prepared p = prepare(input, target, weight, o.mode, o.from_logits, o.sharpness, o.intersection,
                       o.ignore_index, o.squared, Shapes::kNormalized);
  const at::Tensor cw = prepare_cross_entropy(p, o, class_weight, input.device(), true);
  at::Tensor out = at::empty({p.N, p.C, 3}, input.options().dtype(p.acc));
  at::Tensor ce = at::empty({p.N, 2}, input.options().dtype(p.acc));
  AT_DISPATCH_FLOATING_TYPES(p.acc, "softiou_stats_ce", [&] {
    compute_stats<scalar_t>(p, o.ignore_index, out.data_ptr<scalar_t>(), ce.data_ptr<scalar_t>());
  });
  return {out, ce};
}

at::Tensor stats_backward_cpu(const at::Tensor& grad_stats, const at::Tensor& input,
                              const at::Tensor& target, const std::optional<at::Tensor>& weight,
                              c10::string_view mode, bool from_logits, double sharpness,
                              c10::string_view intersection, std::optional<int64_t> ignore_index,
                              bool squared) {
  Prepared p = prepare(input, target, weight, mode, from_logits, sharpness, intersection,
                       ignore_index, squared, Shapes::kNormalized);
  const at::Tensor g = use_grad_stats(p, grad_stats, input);
  if (p.empty) return at::zeros_like(input);
  at::Tensor gx = allocate_grad(p, input);
  gradient_pass(p, gx, ignore_index);
  return gx;
}

at::Tensor stats_ce_backward_cpu(const at::Tensor& grad_stats,
                                 const std::optional<at::Tensor>& grad_ce,
                                 const at::Tensor& input, const at::Tensor& target,
                                 const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& class_weight,
                                 const CrossEntropyOptions& o) {
  Prepared p = prepare(input, target, weight, o.mode, o.from_logits, o.sharpness, o.intersection,
                       o.ignore_index, o.squared, Shapes::kNormalized);
  const at::Tensor cw = prepare_cross_entropy(p, o, class_weight, input.device(), false);
  const at::Tensor g = use_grad_stats(p, grad_stats, input);
  const at::Tensor gce = use_grad_ce(p, grad_ce, input);
  if (p.empty) return at::zeros_like(input);
  at::Tensor gx = allocate_grad(p, input);
  gradient_pass(p, gx, o.ignore_index);
  return gx;
}

std::tuple<at::Tensor, at::Tensor> loss_forward_cpu(const at::Tensor& input,
                                                    const at::Tensor& target,
                                                    const std::optional<at::Tensor>& weight,
                                                    const std::optional<at::Tensor>& class_weight,
                                                    const LossOptions& o) {
  Prepared p = prepare(input, target, weight, o.mode, o.from_logits, o.sharpness, o.intersection,
                       o.ignore_index, o.squared, Shapes::kUser);
  Finalize fin = prepare_loss(p, o, class_weight, input.device(), true);
  const FinalizeArgs& f = fin.args;
  at::Tensor loss = at::empty(loss_shape(f), input.options().dtype(p.acc));
  at::Tensor coef = at::empty({coef_elems(f)}, input.options().dtype(p.acc));
  AT_DISPATCH_FLOATING_TYPES(p.acc, "softiou_loss", [&] {
    std::vector<scalar_t> stats(p.N * p.C * 3), ce(p.N * 2);
    compute_stats<scalar_t>(p, o.ignore_index, stats.data(), ce.data());
    if (f.ce_weight > 0) {
      fin.args.ce = ce.data();
      fin.args.ce_sN = 2;
      fin.args.ce_count = p.N;
    }
    finalize_serial(stats.data(), p.C * 3, int64_t(3), fin.args, loss.data_ptr<scalar_t>(),
                    coef.data_ptr<scalar_t>());
  });
  return {loss, coef};
}

at::Tensor loss_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                             const at::Tensor& target, const std::optional<at::Tensor>& weight,
                             const at::Tensor& coef,
                             const std::optional<at::Tensor>& class_weight,
                             const LossOptions& o) {
  Prepared p = prepare(input, target, weight, o.mode, o.from_logits, o.sharpness, o.intersection,
                       o.ignore_index, o.squared, Shapes::kUser);
  if (p.empty) return at::zeros_like(input);
  const Finalize fin = prepare_loss(p, o, class_weight, input.device(), false);
  const at::Tensor g = use_loss_grad(p, coef, grad, fin.args);
  at::Tensor gx = allocate_grad(p, input);
  gradient_pass(p, gx, o.ignore_index);
  return gx;
}

std::tuple<at::Tensor, at::Tensor> finalize_cpu(const at::Tensor& stats,
                                                const std::optional<at::Tensor>& class_weight,
                                                const FinalizeOptions& o) {
  check_stats(stats);
  const at::ScalarType acc = stats.scalar_type();
  Finalize fin = parse_finalize(stats.size(0), stats.size(1), stats.device(), acc, o,
                                class_weight);
  const FinalizeArgs& f = fin.args;
  at::Tensor loss = at::empty(loss_shape(f), stats.options());
  at::Tensor coef = at::empty({f.rows(), f.C, 3}, stats.options());
  const at::Tensor s = stats.contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "softiou_finalize", [&] {
    finalize_serial(s.const_data_ptr<scalar_t>(), f.C * 3, int64_t(3), f,
                    loss.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>());
  });
  return {loss, coef};
}

}  // namespace

const char* cpu_isa_name() { return kernels().isa; }

std::vector<std::string> cpu_isas() {
  std::vector<std::string> names;
  for (const Isa& isa : kIsas) {
    if (isa.runs()) names.emplace_back(isa.name);
  }
  return names;
}

void set_cpu_isa(const std::string& name) {
  current_kernels().store(find_isa(name.c_str(), "isa"), std::memory_order_release);
}

TORCH_LIBRARY_IMPL(softiou, CPU, m) {
  m.impl("loss", &loss_kernel<&loss_forward_cpu>);
  m.impl("finalize", &finalize_loss_kernel<&finalize_cpu>);
  m.impl("stats", &stats_cpu);
  m.impl("stats_backward", &stats_backward_cpu);
  m.impl("stats_ce", &stats_ce_kernel<&stats_ce_cpu>);
  m.impl("stats_ce_backward", &stats_ce_backward_kernel<&stats_ce_backward_cpu>);
  m.impl("_loss_forward", &loss_forward_kernel<&loss_forward_cpu>);
  m.impl("_loss_backward", &loss_backward_kernel<&loss_backward_cpu>);
  m.impl("_finalize", &finalize_kernel<&finalize_cpu>);
}

}  // namespace softiou
