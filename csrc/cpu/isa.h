// The CPU kernels are compiled once per instruction set: "avx512" (F, BW, VL, DQ, with FMA and
// F16C), "avx2" (with FMA and F16C) and "baseline" (x86-64, or any other processor). The first
// call chooses the best this processor runs, or the one the environment variable SOFTIOU_CPU_ISA
// names (an error if it cannot run it).
#pragma once

#include <string>
#include <vector>

#include "kernels.h"

namespace softiou {
const char* cpu_isa_name();           // the build in use
std::vector<std::string> cpu_isas();  // the builds this processor runs, best first
void set_cpu_isa(const std::string& name);  // switch builds (tests); an error names a bad name

namespace cpu {
const KernelTable& kernels();  // the build in use
}  // namespace cpu
}  // namespace softiou
