// The CPU kernels for the baseline x86-64 (or other) instruction set.
#define SOFTIOU_CPU_NS baseline
#define SOFTIOU_MATH_NS math_baseline
#define SOFTIOU_CPU_ISA_NAME "baseline"
#include "kernels_impl.h"
