// What the generated parsers of the options (csrc/generated/operators.h) need besides torch: a
// finiteness test, numbers printed as Python prints them (the messages read the same on both
// sides of the boundary), and a class list made into a ClassSet with its checks.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <charconv>
#include <ostream>
#include <string>

#include "generated/options.h"

namespace softiou {

inline bool finite(double v) {
  return v == v && v <= 1.7976931348623157e308 && v >= -1.7976931348623157e308;
}

// A double as Python's repr writes it: the shortest digits that read back the same, and ".0" for
// a whole number.
inline std::string show(double v) {
  if (v != v) return "nan";
  if (v > 1.7976931348623157e308) return "inf";
  if (v < -1.7976931348623157e308) return "-inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

inline std::ostream& operator<<(std::ostream& out, const ClassSet& set) {
  out << "[";
  bool first = true;
  for (int64_t c = 0; c < kMaxListedClass; ++c) {
    if (!set.contains(c)) continue;
    out << (first ? "" : ", ") << c;
    first = false;
  }
  return out << "]";
}

// The messages of the declaration's rules of a class list (generated/operators.h).
struct ClassListMessages {
  const char* empty_or_negative;
  const char* repeated;
};

// `name`'s list of class indices as a set: non-empty, indices >= 0 (and below the set's
// capacity), none repeated.
inline ClassSet class_set(const char* name, at::IntArrayRef list,
                          const ClassListMessages& messages) {
  ClassSet out;
  out.has = true;
  bool ok = !list.empty();
  for (int64_t c : list) ok = ok && c >= 0;
  TORCH_CHECK_VALUE(ok, "softiou: ", name, " ", messages.empty_or_negative, "; got ", list);
  for (int64_t c : list) {
    TORCH_CHECK_VALUE(c < kMaxListedClass, "softiou: ", name, " lists indices below ",
                      kMaxListedClass, "; got ", c);
    TORCH_CHECK_VALUE(!out.contains(c), "softiou: ", name, " ", messages.repeated, "; got ", list);
    out.bits[c >> 6] |= uint64_t(1) << (c & 63);
  }
  return out;
}

}  // namespace softiou
