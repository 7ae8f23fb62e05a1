// The CPU kernels compiled for AVX2 + FMA + F16C, chosen at run time where the processor has
// them (softiou_cpu.cpp). Elsewhere this file defines a table that points at the baseline code.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#define SOFTIOU_CPU_NS avx2
#define SOFTIOU_MATH_NS math_avx2
#define SOFTIOU_CPU_ISA_NAME "avx2"
#include "kernels_impl.h"
#else
#include "kernels.h"
namespace softiou {
namespace cpu {
namespace avx2 {
const KernelTable& table() { return baseline::table(); }
}  // namespace avx2
}  // namespace cpu
}  // namespace softiou
#endif
