// Which build of the CPU kernels runs (isa.h): the best this processor and its OS run, or the one
// SOFTIOU_CPU_ISA names.
#include "isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace softiou {
namespace {

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

}  // namespace

const cpu::KernelTable& cpu::kernels() {
  return *current_kernels().load(std::memory_order_acquire);
}

const char* cpu_isa_name() { return cpu::kernels().isa; }

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

}  // namespace softiou
