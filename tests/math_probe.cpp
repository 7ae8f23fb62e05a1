// Accuracy of the CPU kernels' elementary functions (csrc/softiou_math.h) against double
// precision: prints the largest error of exp_nonpos on [-87, 0] and of log_pos on [1, 2^64), in
// units in the last place of the float result, over every stride-th float (argument 1).
// Compiled and run by tests/test_math.py.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "softiou_math.h"

using namespace softiou::math;

static float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

static double ulps(float got, double want) {
  const double ulp = std::ldexp(1.0, std::ilogb(want) - 23);
  return std::fabs(double(got) - want) / ulp;
}

int main(int argc, char** argv) {
  const uint32_t stride = argc > 1 ? uint32_t(std::atoi(argv[1])) : 1;
  double exp_err = 0, log_err = 0;
  // e^z on [-87, 0]: every stride-th float (bit patterns of -0 ... -87)
  for (uint32_t u = 0x80000000u; u <= 0xc2ae0000u; u += stride) {
    const float z = from_bits(u);
    const double e = ulps(exp_nonpos(z), std::exp(double(z)));
    exp_err = e > exp_err ? e : exp_err;
  }
  // log x on [1, 2^64) (a softmax's sum, 1 + e^-|z|): every stride-th float
  for (uint32_t u = 0x3f800001u; u < 0x5f800000u; u += stride) {
    const float x = from_bits(u);
    const double e = ulps(log_pos(x), std::log(double(x)));
    log_err = e > log_err ? e : log_err;
  }
  std::printf("%.4f %.4f\n", exp_err, log_err);
  return 0;
}
