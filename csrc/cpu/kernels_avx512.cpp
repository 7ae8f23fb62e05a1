// The CPU kernels compiled for AVX-512 (F, BW, VL, DQ) + FMA + F16C, chosen at run time where the
// processor and the OS have them (softiou_cpu.cpp). Elsewhere this file defines a table that
// points at the baseline code.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512")
#define SOFTIOU_CPU_NS avx512
#define SOFTIOU_MATH_NS math_avx512
#define SOFTIOU_CPU_ISA_NAME "avx512"
#include "kernels_impl.h"
#else
#include "kernels.h"
namespace softiou {
namespace cpu {
namespace avx512 {
const KernelTable& table() { return baseline::table(); }
}  // namespace avx512
}  // namespace cpu
}  // namespace softiou
#endif
