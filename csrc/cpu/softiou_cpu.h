#pragma once

namespace softiou {
// "avx2" or "baseline": the CPU kernel build chosen for this processor.
const char* cpu_isa_name();
}  // namespace softiou
