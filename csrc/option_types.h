// The value types of the options that C++ has no plain type for (torch-free, host and device):
// an optional number (`int?`, `float?`) and a set of class indices (`int[]?`). The option structs
// that use them are generated from softiou_cuda/options.py (csrc/generated/options.h).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SOFTIOU_OPTION_HD __host__ __device__
#else
#define SOFTIOU_OPTION_HD
#endif

namespace softiou {

template <class T>
struct Maybe {
  bool has = false;
  T value = T();
  SOFTIOU_OPTION_HD T value_or(T other) const { return has ? value : other; }
};

// A set of class indices below kMaxListedClass, as a bitmask (the finalize step asks, per class,
// whether the loss takes it). `has`: a set was given (the option is not None).
constexpr int kClassWords = 64;
constexpr int64_t kMaxListedClass = int64_t(kClassWords) * 64;

struct ClassSet {
  bool has = false;
  uint64_t bits[kClassWords] = {};

  SOFTIOU_OPTION_HD bool contains(int64_t c) const {
    return c >= 0 && c < kMaxListedClass && ((bits[c >> 6] >> (c & 63)) & 1u);
  }
  // the largest index in the set (-1 if empty)
  SOFTIOU_OPTION_HD int64_t max() const {
    for (int64_t w = kClassWords - 1; w >= 0; --w) {
      for (int64_t b = 63; bits[w] != 0 && b >= 0; --b) {
        if ((bits[w] >> b) & 1u) return w * 64 + b;
      }
    }
    return -1;
  }
};

}  // namespace softiou
