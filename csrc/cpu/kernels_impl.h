// The CPU kernels: one pass over input, target and weight for the statistics, one pass for the
// gradient. Included once per instruction set by kernels_baseline.cpp, kernels_avx2.cpp and
// kernels_avx512.cpp, which define SOFTIOU_CPU_NS (and SOFTIOU_MATH_NS) so that each copy has its
// own symbols.
//
// Layout of the work: a tile is kTile consecutive pixels of one sample and all its C classes,
// staged in small buffers [C][kTile] that stay in L1. Every loop below runs over the kTile lanes
// with branch-free arithmetic, so the compiler turns it into SIMD code; the softmax over the
// classes is a loop over the buffer rows. The integer class map is read per pixel and compared
// with the class index: it is never expanded. Per-element targets under a sigmoid of logits
// (binary, multilabel) skip the staging: one loop per block of kTile pixels reads the input and
// writes the sums or the gradient (sigmoid_sums, sigmoid_backward).
//
// Only this project's own inline functions are used here (no std:: templates), so that nothing
// compiled for AVX2 or AVX-512 can be merged by the linker into another build.
#ifndef SOFTIOU_CPU_NS
#error "define SOFTIOU_CPU_NS before including kernels_impl.h"
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../kernel_args.h"
#include "../softiou_math.h"
#include "kernels.h"

namespace softiou {
namespace cpu {
namespace SOFTIOU_CPU_NS {
namespace {

using namespace ::softiou::SOFTIOU_MATH_NS;

// ------------------------------------------------------------------------------------------
// Storage types and conversions to and from the accumulation type A.
// ------------------------------------------------------------------------------------------
struct f16 {
  uint16_t bits;
};
struct bf16 {
  uint16_t bits;
};
// A bool tensor's element, read as its byte: true where nonzero. (Read as a C++ bool, the
// conversion v ? 1 : 0 compiled to a branch per element, which random masks mispredict half the
// time: a bool target cost 3.6x an int64 one.)
struct bool_byte {
  uint8_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// IEEE half -> float, exact, branch-free (F. Giesen's method).
inline float half_to_float(uint16_t h) {
  uint32_t o = uint32_t(h & 0x7fffu) << 13;
  uint32_t e = o & 0x0f800000u;
  o += 0x38000000u;
  o = e == 0x0f800000u ? o + 0x38000000u : o;  // Inf / NaN
  float normal = bits_to_float(o);
  float subnormal = bits_to_float(o + 0x00800000u) - bits_to_float(0x38800000u);
  float f = e == 0u ? subnormal : normal;
  return bits_to_float(float_to_bits(f) | (uint32_t(h & 0x8000u) << 16));
}

// float -> IEEE half, round to nearest even.
inline uint16_t float_to_half(float f) {
  uint32_t x = float_to_bits(f);
  uint32_t sign = x & 0x80000000u;
  x ^= sign;
  uint32_t inf_nan = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
  uint32_t sub = float_to_bits(bits_to_float(x) + 0.5f) - 0x3f000000u;
  uint32_t norm = (x + 0xc8000fffu + ((x >> 13) & 1u)) >> 13;
  uint32_t o = x >= 0x47800000u ? inf_nan : (x < 0x38800000u ? sub : norm);
  return uint16_t(o | (sign >> 16));
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t x = float_to_bits(f);
  uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  return uint16_t(f != f ? 0x7fc0u : rounded);
}

template <class A>
inline A to_acc(float v) { return A(v); }
template <class A>
inline A to_acc(double v) { return A(v); }
template <class A>
inline A to_acc(f16 v) { return A(half_to_float(v.bits)); }
template <class A>
inline A to_acc(bf16 v) { return A(bf16_to_float(v.bits)); }
template <class A>
inline A to_acc(bool_byte v) { return v.bits != 0 ? A(1) : A(0); }

template <class S>
struct Store;
template <>
struct Store<float> {
  template <class A>
  static float from(A v) { return float(v); }
};
template <>
struct Store<double> {
  template <class A>
  static double from(A v) { return double(v); }
};
template <>
struct Store<f16> {
  template <class A>
  static f16 from(A v) { return f16{float_to_half(float(v))}; }
};
template <>
struct Store<bf16> {
  template <class A>
  static bf16 from(A v) { return bf16{float_to_bf16(float(v))}; }
};

// An int64 read as its two 32-bit halves (low first): little-endian GCC/Clang builds only.
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
constexpr bool kInt64Halves = true;
typedef int32_t __attribute__((may_alias)) int64_half;
#else
constexpr bool kInt64Halves = false;
typedef int32_t int64_half;
#endif

template <class TT>
constexpr bool is_integer_target() { return false; }
template <>
constexpr bool is_integer_target<uint8_t>() { return true; }
template <>
constexpr bool is_integer_target<int32_t>() { return true; }
template <>
constexpr bool is_integer_target<int64_t>() { return true; }

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

inline void note(ItemError& err, InputError code, double value) {
  if (err.code == InputError::kNone) {
    err.code = code;
    err.value = value;
  }
}

// Reads C rows of cnt pixels (row stride sC, pixel stride sM) into buf[C][kTile] as A; lanes past
// cnt are set to zero.
template <class A, class S>
inline void load_rows(const S* base, int64_t C, int64_t sC, int64_t sM, int cnt, A* buf) {
  for (int64_t c = 0; c < C; ++c) {
    const S* row = base + c * sC;
    A* out = buf + c * kTile;
    if (sM == 1 && cnt == kTile) {
      for (int t = 0; t < kTile; ++t) out[t] = to_acc<A>(row[t]);
    } else {
      for (int t = 0; t < kTile; ++t) out[t] = t < cnt ? to_acc<A>(row[t * sM]) : A(0);
    }
  }
}

// Whether any of n values lies outside [0, 1] (a NaN does not): branch-free, so that it
// vectorises (outside_unit_interval's || is a branch per value).
template <class A>
inline bool any_outside_unit_interval(const A* __restrict__ v, int64_t n) {
  int32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= int32_t(v[i] < A(0)) | int32_t(v[i] > A(1));
  return bad != 0;
}

// Everything the statistics and the gradient of one tile need.
template <class A>
struct Tile {
  A* X;    // [C][kTile] input, then the probabilities
  A* R;    // [C][kTile] the raw input (backward only)
  A* Yb;   // [C][kTile] per-element target (dense or integer per element)
  A* Vb;   // [C][kTile] per-element validity 0/1
  A* D;    // [C][kTile] dp/dx for sigmoid (backward only)
  A w[kTile];        // pixel weight
  A pv[kTile];       // pixel validity 0/1 (class map: ignore_index and the tail)
  int32_t cls[kTile];  // class map value, -1 where not valid
  A aux[kTile];      // softmax maximum, then the dot product in the backward
  A sum[kTile];      // softmax: 1 / sum_c e_c
  A dsum[kTile];     // class-map softmax backward: sum_c e_c gP_c
  // the cross-entropy term (softmax): Q = sum_k q_k, QL = sum_k q_k l_k, lse = log sum_k e^l_k
  A ceQ[kTile];
  A ceQL[kTile];
  A lse[kTile];
};

template <class A, class S, class TT, bool CLASS_MAP>
struct Kernel {
  using acc_type = A;
  const KernelArgs& a;
  const int64_t C;
  const A sharp;
  const bool from_logits;
  const bool use_min;
  const bool squared;  // P and Y of p^2 and y^2
  const A ls;    // label smoothing of the cross-entropy term
  const A pw;    // pos_weight of the binary cross-entropy term
  // ignore_index: a target value (class map: pixel; per element: element) that counts nowhere
  const bool has_ignore;
  const int64_t ignore;
  A csum = A(0);  // sum_k c_k of its class weights

  explicit Kernel(const KernelArgs& args)
      : a(args), C(args.C), sharp(A(args.options.sharpness)), from_logits(args.options.from_logits),
        use_min(args.options.intersection == Intersection::kMin), squared(args.options.squared),
        ls(A(args.options.label_smoothing)), pw(A(args.options.ce_pos_weight)),
        has_ignore(args.options.ignore_index.has), ignore(args.options.ignore_index.value) {
    for (int64_t c = 0; c < C; ++c) csum += ce_class_weight<A>(a, c);
  }

  // Loads one tile (sample n, pixels [m, m + cnt)) and turns the input into probabilities.
  // With backward = true it also keeps the raw input in R and the sigmoid slope in D. With
  // normalize = false a softmax stops before the division: X holds the exponentials e and
  // tl.sum holds 1/sum_c e (the class-map loops fold that factor into their per-pixel weights).
  // With ce (the cross-entropy term of the statistics pass; it needs logits): tl.ceQ, ceQL and
  // lse for a softmax, and c_k BCEWithLogits per element in D for a sigmoid.
  void prepare(Tile<A>& tl, int64_t n, int64_t m, int cnt, bool backward, ItemError& err,
               bool normalize = true, bool ce = false) const {
    load_weight_target(tl, n, m, cnt, err);
    const S* xp = static_cast<const S*>(a.x) + n * a.x_sN + m * a.x_sM;
    const bool fused_softmax = a.prob == Prob::kSoftmax && from_logits;
    const S* in_place = nullptr;  // the logits, when the softmax reads them where they are
    if (fused_softmax) {
      if (logits_max(tl, xp, cnt)) in_place = xp;
      if (ce) ce_logit_sums(tl, in_place);
    } else {
      load_rows<A>(xp, C, a.x_sC, a.x_sM, cnt, tl.X);
      if (!from_logits) {
        if (any_outside_unit_interval(tl.X, C * kTile)) {
          for (int64_t i = 0; i < C * kTile; ++i)
            if (outside_unit_interval(tl.X[i]))
              note(err, InputError::kProbability, double(tl.X[i]));
        }
      }
      // the softmax backward of the probability form needs x (dl/dx = a/x)
      if (backward && a.prob == Prob::kSoftmax) std::memcpy(tl.R, tl.X, sizeof(A) * C * kTile);
    }

    switch (a.prob) {
      case Prob::kSoftmax: {
        if (!fused_softmax) {  // probabilities with a != 1: l = a*log(x), log() stays scalar
          A* mx = tl.aux;
          for (int t = 0; t < kTile; ++t) mx[t] = neg_inf<A>();
          for (int64_t c = 0; c < C; ++c) {
            A* x = tl.X + c * kTile;
            for (int t = 0; t < kTile; ++t) {
              x[t] = softmax_arg(x[t], sharp, false);
              mx[t] = max_(mx[t], x[t]);
            }
          }
        }
        exp_and_sum<false>(tl, in_place, nullptr, ce ? tl.lse : nullptr);
        if (!normalize) break;
        const A* inv = tl.sum;
        for (int64_t c = 0; c < C; ++c) {
          A* x = tl.X + c * kTile;
          for (int t = 0; t < kTile; ++t) x[t] *= inv[t];
        }
        break;
      }
      case Prob::kSigmoid: {
        for (int64_t c = 0; c < C; ++c) {
          A* x = tl.X + c * kTile;
          A* d = backward ? tl.D + c * kTile : nullptr;
          if (from_logits && ce) {  // forward with the cross-entropy: c_k BCE in D
            A* bce = tl.D + c * kTile;
            const A ck = ce_class_weight<A>(a, c);
            for (int t = 0; t < kTile; ++t) {
              const A z = sigmoid_arg(x[t], sharp, true);
              const A e = exp_nonpos(z < A(0) ? z : -z);
              const A inv = A(1) / (A(1) + e);
              bce[t] = ck * bce_with_logits(z, target(tl, c, t), e, pw);
              x[t] = z < A(0) ? e * inv : inv;
            }
          } else if (from_logits) {  // restrict locals: the loops vectorise
            A* __restrict__ xr = x;
            const A sh = sharp;
            if (backward) {
              A* __restrict__ dr = d;
              for (int t = 0; t < kTile; ++t) {
                A p, slope;
                sigmoid_and_slope(sigmoid_arg(xr[t], sh, true), p, slope);
                dr[t] = slope * sigmoid_arg_dx(xr[t], sh, true);
                xr[t] = p;
              }
            } else {
              for (int t = 0; t < kTile; ++t) {
                A p, slope;
                sigmoid_and_slope(sigmoid_arg(xr[t], sh, true), p, slope);
                xr[t] = p;
              }
            }
          } else {
            for (int t = 0; t < kTile; ++t) {
              A p, slope;
              sigmoid_and_slope(sigmoid_arg(x[t], sharp, false), p, slope);
              if (backward) d[t] = slope * sigmoid_arg_dx(x[t], sharp, false);
              x[t] = p;
            }
          }
        }
        break;
      }
      case Prob::kIdentity:
        break;
    }
  }

  // Softmax of logits, first step: tl.aux = each pixel's maximum of l = a*x over the classes. A
  // full tile of an input whose pixels are contiguous is read where it is (returns true: the
  // next step reads it again); any other tile is copied into X (returns false).
  bool logits_max(Tile<A>& tl, const S* xp, int cnt) const {
    A* mx = tl.aux;
    const bool in_place = a.x_sM == 1 && cnt == kTile;
    if (in_place) {
      // kLanes pixels at a time over all the classes: the maxima stay in registers (a loop
      // over the classes outside the pixels' would store and reload them for every class)
      constexpr int kLanes = 32;
      const A sh = sharp;
      const int64_t sC = a.x_sC;
      for (int t0 = 0; t0 < kTile; t0 += kLanes) {
        A m[kLanes];
        for (int j = 0; j < kLanes; ++j) m[j] = neg_inf<A>();
        for (int64_t c = 0; c < C; ++c) {
          const S* row = xp + c * sC + t0;
          for (int j = 0; j < kLanes; ++j) m[j] = max_(m[j], softmax_arg(to_acc<A>(row[j]), sh, true));
        }
        for (int j = 0; j < kLanes; ++j) mx[t0 + j] = m[j];
      }
      return true;
    }
    for (int t = 0; t < kTile; ++t) mx[t] = neg_inf<A>();
    for (int64_t c = 0; c < C; ++c) {
      const S* row = xp + c * a.x_sC;
      A* x = tl.X + c * kTile;
      for (int t = 0; t < kTile; ++t) {
        x[t] = t < cnt ? softmax_arg(to_acc<A>(row[t * a.x_sM]), sharp, true) : A(0);
        mx[t] = max_(mx[t], x[t]);
      }
    }
    return false;
  }

  // Softmax, second step: X = e = e^(l - shift), the shift from the maximum in tl.aux, and
  // tl.sum = 1 / sum_c e. l is read from the input (xp: logits_max read it in place) or from X.
  // DSUM: also tl.dsum = sum_c e_c gP[c] (the class-map backward).
  // log_s (not null): also log sum_c e, before the division.
  template <bool DSUM>
  void exp_and_sum(Tile<A>& tl, const S* xp, const A* gP, A* log_s = nullptr) const {
    if (xp != nullptr) {
      exp_rows<true, DSUM>(tl, xp, gP, log_s);
    } else {
      exp_rows<false, DSUM>(tl, xp, gP, log_s);
    }
  }

  template <bool FROM_INPUT, bool DSUM>
  void exp_rows(Tile<A>& tl, const S* xp, const A* gP, A* log_s) const {
    A* mx = tl.aux;
    A* s = tl.sum;
    A* ds = tl.dsum;
    for (int t = 0; t < kTile; ++t) mx[t] = softmax_shift(mx[t]);
    using In = typename std::conditional<FROM_INPUT, S, A>::type;
    const In* in = FROM_INPUT ? reinterpret_cast<const In*>(xp) : reinterpret_cast<const In*>(tl.X);
    const int64_t step = FROM_INPUT ? a.x_sC : kTile;
    static const A zeros[4] = {A(0), A(0), A(0), A(0)};
    // the first row starts the sums (C >= 1; no zero fill, which compilers turn into a string
    // instruction with a long start-up)
    {
      A* x = tl.X;
      const A g = DSUM ? gP[0] : A(0);
      for (int t = 0; t < kTile; ++t) {
        const A v = to_acc<A>(in[t]);
        const A e = softmax_exp(FROM_INPUT ? softmax_arg(v, sharp, true) : v, mx[t]);
        x[t] = e;
        s[t] = e;
        if (DSUM) ds[t] = e * g;
      }
    }
    // then four rows at a time: the exponential is a long dependency chain, and one row of a
    // tile holds only kTile / (SIMD width) independent ones
    int64_t c = 1;
    for (; c + 3 < C; c += 4) {
      const In* i0 = in + c * step;
      A* x0 = tl.X + c * kTile;
      exp4<FROM_INPUT, DSUM>(i0, i0 + step, i0 + 2 * step, i0 + 3 * step, x0, x0 + kTile,
                             x0 + 2 * kTile, x0 + 3 * kTile, mx, s, ds,
                             DSUM ? gP + c : zeros, sharp);
    }
    for (; c < C; ++c) {
      const In* i0 = in + c * step;
      A* x = tl.X + c * kTile;
      const A g = DSUM ? gP[c] : A(0);
      for (int t = 0; t < kTile; ++t) {
        const A v = to_acc<A>(i0[t]);
        x[t] = softmax_exp(FROM_INPUT ? softmax_arg(v, sharp, true) : v, mx[t]);
        s[t] += x[t];
        if (DSUM) ds[t] += x[t] * g;
      }
    }
    if (log_s != nullptr) {  // lse = shift + log S (S >= 1: the maximum's term is 1)
      for (int t = 0; t < kTile; ++t) log_s[t] = mx[t] + log_pos(s[t] > A(0) ? s[t] : A(1));
    }
    for (int t = 0; t < kTile; ++t) s[t] = softmax_inv_sum(s[t]);
  }

  // The cross-entropy term's per-pixel sums of a softmax: tl.ceQ = Q and tl.ceQL = QL (see
  // softiou_math.h), from the logits l = a*x read in place (xp) or from X, before the
  // exponentials replace them.
  void ce_logit_sums(Tile<A>& tl, const S* xp) const {
    auto logit = [&](int64_t c, int t) {
      return xp != nullptr ? softmax_arg(to_acc<A>(xp[c * a.x_sC + t]), sharp, true)
                           : tl.X[c * kTile + t];
    };
    const A keep = A(1) - ls, spread = ls / A(C);
    if constexpr (CLASS_MAP) {  // q_k = (1 - eps) c_t [k == t] + (eps / C) c_k
      for (int t = 0; t < kTile; ++t) {
        const int32_t c = tl.cls[t];
        const int32_t cc = c < 0 ? 0 : c;
        const A qt = keep * ce_class_weight<A>(a, cc);
        tl.ceQ[t] = qt + spread * csum;
        tl.ceQL[t] = qt * logit(cc, t);
      }
      if (ls != A(0)) {
        for (int64_t c = 0; c < C; ++c) {
          const A q = spread * ce_class_weight<A>(a, c);
          for (int t = 0; t < kTile; ++t) tl.ceQL[t] += q * logit(c, t);
        }
      }
    } else {  // q_k = c_k ((1 - eps) y_k + eps / C)
      for (int t = 0; t < kTile; ++t) tl.ceQ[t] = tl.ceQL[t] = A(0);
      for (int64_t c = 0; c < C; ++c) {
        const A ck = ce_class_weight<A>(a, c);
        const A* y = tl.Yb + c * kTile;
        for (int t = 0; t < kTile; ++t) {
          const A q = ck * (keep * y[t] + spread);
          tl.ceQ[t] += q;
          tl.ceQL[t] += q * logit(c, t);
        }
      }
    }
  }

  // Four rows: o_r = e^(l_r - mx), s += sum_r o_r, ds += sum_r o_r g[r], with l_r = a*x of input
  // row i_r (FROM_INPUT) or l_r = i_r (then i_r and o_r are the same row). The restrict
  // parameters say that the rows do not overlap: the loop vectorises without run-time checks.
  template <bool FROM_INPUT, bool DSUM, class In>
  static void exp4(const In* i0, const In* i1, const In* i2, const In* i3, A* o0, A* o1, A* o2,
                   A* o3, const A* __restrict__ mx, A* __restrict__ s, A* __restrict__ ds,
                   const A* g, A sharp) {
    if constexpr (FROM_INPUT) {
      exp4_loop<true, DSUM>(i0, i1, i2, i3, o0, o1, o2, o3, mx, s, ds, g[0], g[1], g[2], g[3],
                            sharp);
    } else {
      exp4_inplace<DSUM>(o0, o1, o2, o3, mx, s, ds, g[0], g[1], g[2], g[3]);
    }
  }

  template <bool FROM_INPUT, bool DSUM, class In>
  static void exp4_loop(const In* __restrict__ i0, const In* __restrict__ i1,
                        const In* __restrict__ i2, const In* __restrict__ i3, A* __restrict__ o0,
                        A* __restrict__ o1, A* __restrict__ o2, A* __restrict__ o3,
                        const A* __restrict__ mx, A* __restrict__ s, A* __restrict__ ds, A g0,
                        A g1, A g2, A g3, A sharp) {
    for (int t = 0; t < kTile; ++t) {
      const A e0 = softmax_exp(softmax_arg(to_acc<A>(i0[t]), sharp, true), mx[t]);
      const A e1 = softmax_exp(softmax_arg(to_acc<A>(i1[t]), sharp, true), mx[t]);
      const A e2 = softmax_exp(softmax_arg(to_acc<A>(i2[t]), sharp, true), mx[t]);
      const A e3 = softmax_exp(softmax_arg(to_acc<A>(i3[t]), sharp, true), mx[t]);
      o0[t] = e0;
      o1[t] = e1;
      o2[t] = e2;
      o3[t] = e3;
      s[t] += (e0 + e1) + (e2 + e3);
      if (DSUM) ds[t] += (e0 * g0 + e1 * g1) + (e2 * g2 + e3 * g3);
    }
  }

  template <bool DSUM>
  static void exp4_inplace(A* __restrict__ o0, A* __restrict__ o1, A* __restrict__ o2,
                           A* __restrict__ o3, const A* __restrict__ mx, A* __restrict__ s,
                           A* __restrict__ ds, A g0, A g1, A g2, A g3) {
    for (int t = 0; t < kTile; ++t) {
      const A e0 = softmax_exp(o0[t], mx[t]), e1 = softmax_exp(o1[t], mx[t]);
      const A e2 = softmax_exp(o2[t], mx[t]), e3 = softmax_exp(o3[t], mx[t]);
      o0[t] = e0;
      o1[t] = e1;
      o2[t] = e2;
      o3[t] = e3;
      s[t] += (e0 + e1) + (e2 + e3);
      if (DSUM) ds[t] += (e0 * g0 + e1 * g1) + (e2 * g2 + e3 * g3);
    }
  }

  // The pixel weights and the target of one tile (sample n, pixels [m, m + cnt)), with the
  // input checks of SPEC section 7 on them. The checks are OR-reduced flags in the vectorised
  // loops; only a tile that fails one is scanned again, in scalar code, to report the first
  // offending value.
  void load_weight_target(Tile<A>& tl, int64_t n, int64_t m, int cnt, ItemError& err) const {
    // pixel weight
    const A* wp = static_cast<const A*>(a.w);
    if (wp == nullptr) {
      for (int t = 0; t < kTile; ++t) tl.w[t] = A(1);
    } else {
      const A* row = wp + n * a.w_sN + m * a.w_sM;
      if (a.w_sM == 1 && cnt == kTile) {
        for (int t = 0; t < kTile; ++t) tl.w[t] = row[t];
      } else {
        for (int t = 0; t < kTile; ++t) tl.w[t] = t < cnt ? row[t * a.w_sM] : A(1);
      }
      bool bad = false;
      for (int t = 0; t < kTile; ++t) bad |= tl.w[t] < A(0);
      if (bad) {
        for (int t = 0; t < kTile; ++t)
          if (tl.w[t] < A(0)) note(err, InputError::kNegativeWeight, double(tl.w[t]));
      }
    }

    // target
    const TT* tp = static_cast<const TT*>(a.t) + n * a.t_sN + m * a.t_sM;
    if constexpr (CLASS_MAP) {
      const bool bad = a.t_sM == 1 && cnt == kTile ? class_map_row<true>(tp, cnt, tl.cls, tl.pv)
                                                   : class_map_row<false>(tp, cnt, tl.cls, tl.pv);
      if (bad) {
        for (int t = 0; t < cnt; ++t) {
          const int64_t v = int64_t(tp[t * a.t_sM]);
          if (!(has_ignore && v == ignore) && (v < 0 || v >= C))
            note(err, InputError::kClassIndex, double(v));
        }
      }
    } else {
      for (int t = 0; t < kTile; ++t) tl.pv[t] = t < cnt ? A(1) : A(0);
      const int64_t ign = has_ignore ? ignore : int64_t(-1);
      for (int64_t c = 0; c < C; ++c) {
        const TT* row = tp + c * a.t_sC;
        A* __restrict__ y = tl.Yb + c * kTile;
        A* __restrict__ v = tl.Vb + c * kTile;
        if constexpr (is_integer_target<TT>()) {
          const bool bad = a.t_sM == 1 && cnt == kTile ? binary_target_row<true>(row, cnt, y, v)
                                                       : binary_target_row<false>(row, cnt, y, v);
          if (bad) {
            for (int t = 0; t < cnt; ++t) {
              const int64_t iv = int64_t(row[t * a.t_sM]);
              if (!(has_ignore && iv == ign) && iv != 0 && iv != 1)
                note(err, InputError::kBinaryTarget, double(iv));
            }
          }
        } else if (dense_target_row(row, cnt, y, v)) {
          for (int t = 0; t < cnt; ++t)
            if (outside_unit_interval(y[t])) note(err, InputError::kDenseTarget, double(y[t]));
        }
      }
    }
  }

  // The class map of one tile (DENSE: a full contiguous tile): each pixel's class, -1 where it
  // is not kept, and its validity pv; a pixel is kept where 0 <= v < C and v is not
  // ignore_index (the tail's lanes are not kept). Branch-free, with local restrict pointers, so
  // that it vectorises (with 64-bit compares). Returns whether a value was out of range and not
  // ignored.
  template <bool DENSE>
  bool class_map_row(const TT* __restrict__ tp, int cnt, int32_t* __restrict__ cls,
                     A* __restrict__ pv) const {
    const int64_t ign = ignore, sM = a.t_sM;
    const bool has_ign = has_ignore;
    const uint64_t classes = uint64_t(C);
    int32_t bad = 0;
    for (int t = 0; t < kTile; ++t) {
      const bool tail = !DENSE && t >= cnt;
      const int64_t v = tail ? int64_t(-1) : int64_t(tp[DENSE ? t : t * sM]);
      const bool in_range = uint64_t(v) < classes;
      const bool ignored = (has_ign & (v == ign)) | tail;
      bad |= int32_t(!(in_range | ignored));
      const bool keep = in_range & !ignored;
      cls[t] = keep ? int32_t(v) : int32_t(-1);
      pv[t] = keep ? A(1) : A(0);
    }
    return bad != 0;
  }

  // One row of an integer target per element (DENSE: a full contiguous tile): y and its
  // validity v, kept where the value is 0 or 1 and not ignore_index (the tail's lanes are not
  // kept). Branch-free, with local restrict pointers, so that it vectorises. Returns whether a
  // value was neither binary nor ignored. The compares are 32 bits wide, as many lanes as the
  // float data's (64-bit ones took half the pass's time at C = 1): in the target's own width
  // where it is 32 bits or less, and on the two halves of an int64 in a contiguous tile.
  template <bool DENSE>
  bool binary_target_row(const TT* __restrict__ row, int cnt, A* __restrict__ y,
                         A* __restrict__ v) const {
    const int64_t ign = ignore, sM = a.t_sM;
    int32_t bad = 0;
    if constexpr (sizeof(TT) == 8 && DENSE && kInt64Halves) {
      const bool has_ign = has_ignore;
      const int32_t ign_lo = int32_t(uint32_t(uint64_t(ign)));
      const int32_t ign_hi = int32_t(uint32_t(uint64_t(ign) >> 32));
      const int64_half* __restrict__ half = reinterpret_cast<const int64_half*>(row);
      for (int t = 0; t < kTile; ++t) {
        const int32_t lo = half[2 * t], hi = half[2 * t + 1];
        bad |= binary_element((hi == 0) & (lo == 0), (hi == 0) & (lo == 1),
                              has_ign & (lo == ign_lo) & (hi == ign_hi), y[t], v[t]);
      }
    } else {
      // in the target's own width where it is 32 bits or less; an ignore_index outside that
      // width's range equals no value of the target
      using I = typename std::conditional<sizeof(TT) <= 4, int32_t, int64_t>::type;
      const bool has_ign = has_ignore && int64_t(I(ign)) == ign;
      const I ign_i = has_ign ? I(ign) : I(0);
      for (int t = 0; t < kTile; ++t) {
        const bool tail = !DENSE && t >= cnt;
        const I iv = tail ? I(0) : I(row[DENSE ? t : t * sM]);
        bad |= binary_element(iv == 0, iv == 1, (has_ign & (iv == ign_i)) | tail, y[t], v[t]);
      }
    }
    return bad != 0;
  }

  // One element of an integer target per element: y = [value is 1] and v = [value is 0 or 1],
  // both 0 where ignored; returns 1 where the value is neither binary nor ignored.
  static int32_t binary_element(bool is0, bool is1, bool ignored, A& y, A& v) {
    v = (is0 | is1) & !ignored ? A(1) : A(0);
    y = is1 & !ignored ? A(1) : A(0);
    return int32_t(!(is0 | is1 | ignored));
  }

  // One row of a dense target per element: y (ignore_index elements set to 0, SPEC section 10)
  // and its validity v (0 where ignored and past cnt). Returns whether a kept value lies outside
  // [0, 1].
  bool dense_target_row(const TT* row, int cnt, A* __restrict__ y, A* __restrict__ v) const {
    load_rows<A>(row, 1, 0, a.t_sM, cnt, y);
    if (has_ignore) {
      const A ignv = A(ignore);
      for (int t = 0; t < kTile; ++t) {
        const bool ignored = y[t] == ignv;
        v[t] = ignored | (t >= cnt) ? A(0) : A(1);
        y[t] = ignored ? A(0) : y[t];
      }
    } else {
      for (int t = 0; t < kTile; ++t) v[t] = t < cnt ? A(1) : A(0);
    }
    return any_outside_unit_interval(y, kTile);
  }

  // validity and target of element (c, t)
  inline A valid(const Tile<A>& tl, int64_t c, int t) const {
    return CLASS_MAP ? tl.pv[t] : tl.Vb[c * kTile + t];
  }
  inline A target(const Tile<A>& tl, int64_t c, int t) const {
    return CLASS_MAP ? (tl.cls[t] == int32_t(c) ? A(1) : A(0)) : tl.Yb[c * kTile + t];
  }

  // The class map's statistics of one tile, with pw the per-pixel factor of p (the pixel weight,
  // or weight / S when X holds a softmax's exponentials): P takes every class (p^2 with
  // SQUARED), I and Y the target class of each pixel, all per lane (one compare per element
  // selects the target class for both).
  template <bool SQUARED>
  void class_map_sums(const Tile<A>& tl, const A* __restrict__ pw, A* __restrict__ accI,
                      A* __restrict__ accP, A* __restrict__ accY) const {
    const A* __restrict__ pv = tl.pv;
    const A* __restrict__ w = tl.w;
    const int32_t* __restrict__ cls = tl.cls;
    for (int64_t c = 0; c < C; ++c) {
      const A* __restrict__ p = tl.X + c * kTile;
      A* __restrict__ ai = accI + c * kTile;
      A* __restrict__ ap = accP + c * kTile;
      A* __restrict__ ay = accY + c * kTile;
      const int32_t cc = int32_t(c);
      for (int t = 0; t < kTile; ++t) {
        const A wp = pw[t] * p[t];
        const bool target = cls[t] == cc;  // never where the pixel is not kept (cls = -1)
        ap[t] += pv[t] != A(0) ? (SQUARED ? pw[t] * (p[t] * p[t]) : wp) : A(0);
        ai[t] += target ? wp : A(0);
        ay[t] += target ? w[t] : A(0);
      }
    }
  }

  // The statistics of one tile with a target per element: I, P and Y per lane. The options are
  // template arguments and the rows restrict locals, so that the loop vectorises (with the
  // options read at run time it stayed scalar).
  template <bool USE_MIN, bool SQUARED>
  void dense_sums(const Tile<A>& tl, A* __restrict__ accI, A* __restrict__ accP,
                  A* __restrict__ accY) const {
    const A* __restrict__ w = tl.w;
    for (int64_t c = 0; c < C; ++c) {
      const A* __restrict__ p = tl.X + c * kTile;
      const A* __restrict__ y = tl.Yb + c * kTile;
      const A* __restrict__ v = tl.Vb + c * kTile;
      A* __restrict__ ai = accI + c * kTile;
      A* __restrict__ ap = accP + c * kTile;
      A* __restrict__ ay = accY + c * kTile;
      for (int t = 0; t < kTile; ++t) {
        const bool ok = v[t] != A(0);
        const A ti = w[t] * intersection(p[t], y[t], USE_MIN);
        const A tp = w[t] * power_term(p[t], SQUARED);
        const A ty = w[t] * power_term(y[t], SQUARED);
        ai[t] += ok ? ti : A(0);
        ap[t] += ok ? tp : A(0);
        ay[t] += ok ? ty : A(0);
      }
    }
  }

  // Per-element targets (binary, multilabel) under a sigmoid of logits, every row contiguous:
  // each element is independent of the others, so a row goes from the input to its sums (or to
  // its gradient) in one loop per block of kTile pixels, after one loop that reads the block's
  // target (at small C the tile's dozen short loops per tile cost more than the work). The same
  // per-element functions as the tile path, and the same lanes summed in the same order.
  bool fused_sigmoid(bool backward) const {
    return !CLASS_MAP && a.prob == Prob::kSigmoid && from_logits && a.x_sM == 1 &&
           a.t_sM == 1 && (a.w == nullptr || a.w_sM == 1) && (!backward || a.g_sM == 1);
  }

  // cnt values of a contiguous per-element target row as y and their validity v ([kTile]
  // each; v = 0 past cnt), as load_weight_target reads them. Returns whether a value is not
  // allowed. (The target has its own loop: with the compute in the same loop, the selects on
  // an int64 target's masks and on float data do not vectorise.)
  bool target_block(const TT* row, int cnt, A* __restrict__ y, A* __restrict__ v) const {
    if constexpr (is_integer_target<TT>()) {
      return cnt == kTile ? binary_target_row<true>(row, cnt, y, v)
                          : binary_target_row<false>(row, cnt, y, v);
    } else {
      return dense_target_row(row, cnt, y, v);
    }
  }

  // One element's terms of I, P and Y, added to its lanes (the tile path's prepare and
  // dense_sums in one). The options are template arguments, as in dense_sums.
  template <bool USE_MIN, bool SQUARED>
  SOFTIOU_HD static void sum_element(A xv, A y, A v, A wt, A sh, A& ai, A& ap, A& ay) {
    A p, slope;
    sigmoid_and_slope(sigmoid_arg(xv, sh, true), p, slope);
    const bool ok = v != A(0);
    const A ti = wt * intersection(p, y, USE_MIN);
    const A tp = wt * power_term(p, SQUARED);
    const A ty = wt * power_term(y, SQUARED);
    ai += ok ? ti : A(0);
    ap += ok ? tp : A(0);
    ay += ok ? ty : A(0);
  }

  // One element's dL/dx (the tile path's prepare and backward loops in one). The options are
  // template arguments, as in sum_element (read at run time, every variant was computed and
  // blended per element).
  template <bool USE_MIN, bool SQUARED, bool WITH_CE>
  SOFTIOU_HD static A grad_element(A xv, A y, A v, A wt, A sh, A pos_w, A gI, A gP, A gce,
                                   A ck) {
    A p, slope;
    sigmoid_and_slope(sigmoid_arg(xv, sh, true), p, slope);
    const A d = slope * sigmoid_arg_dx(xv, sh, true);
    const bool ok = v != A(0);
    const A g = ok ? wt * grad_p(p, y, gI, gP, USE_MIN, SQUARED) : A(0);
    if constexpr (!WITH_CE) return g * d;
    const A cev = ok ? gce * wt * ck * bce_with_logits_dz(p, y, pos_w) : A(0);
    return g * d + sh * cev;
  }

  // Walks pixels [m_begin, m_end) of sample n row by row, a block of kTile pixels at a time:
  // reads the block's target into y and v, then calls f(c, m, cnt, x, w, y, v) with the block's
  // input and weights (ones without weights), which returns nonzero where a weight is negative.
  // Returns false where a value is not allowed (the caller then runs the item through the
  // tiles, which report it).
  template <class F>
  bool sigmoid_blocks(int64_t n, int64_t m_begin, int64_t m_end, F&& f) const {
    const S* xb = static_cast<const S*>(a.x) + n * a.x_sN;
    const TT* tb = static_cast<const TT*>(a.t) + n * a.t_sN;
    const A* wb = a.w != nullptr ? static_cast<const A*>(a.w) + n * a.w_sN : nullptr;
    A y[kTile], v[kTile], ones[kTile];
    for (int j = 0; j < kTile; ++j) ones[j] = A(1);
    bool bad = false;
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t m = m_begin; m < m_end; m += kTile) {
        const int cnt = int(min64(kTile, m_end - m));
        bad |= target_block(tb + c * a.t_sC + m, cnt, y, v);
        bad |= f(c, m, cnt, xb + c * a.x_sC + m, wb != nullptr ? wb + m : ones, y, v) != 0;
      }
    }
    return !bad;
  }

  // The statistics of pixels [m_begin, m_end) of sample n, added to the lanes of accI/accP/accY
  // ([C][kTile]) as the tile path adds them; false where a value is not allowed.
  template <bool USE_MIN, bool SQUARED, bool WEIGHTED>
  bool sigmoid_sums(int64_t n, int64_t m_begin, int64_t m_end, A* accI, A* accP,
                    A* accY) const {
    const A sh = sharp;
    return sigmoid_blocks(n, m_begin, m_end, [&](int64_t c, int64_t, int cnt,
                                                 const S* __restrict__ x, const A* __restrict__ w,
                                                 const A* __restrict__ y,
                                                 const A* __restrict__ v) {
      A* __restrict__ ai = accI + c * kTile;
      A* __restrict__ ap = accP + c * kTile;
      A* __restrict__ ay = accY + c * kTile;
      int32_t negative = 0;
      // without weights (w is a row of ones) the weight is the constant 1: no load, no check
      if (cnt == kTile) {
        for (int j = 0; j < kTile; ++j) {
          if constexpr (WEIGHTED) negative |= int32_t(w[j] < A(0));
          sum_element<USE_MIN, SQUARED>(to_acc<A>(x[j]), y[j], v[j], WEIGHTED ? w[j] : A(1), sh,
                                        ai[j], ap[j], ay[j]);
        }
      } else {
        for (int j = 0; j < cnt; ++j) {
          if constexpr (WEIGHTED) negative |= int32_t(w[j] < A(0));
          sum_element<USE_MIN, SQUARED>(to_acc<A>(x[j]), y[j], v[j], WEIGHTED ? w[j] : A(1), sh,
                                        ai[j], ap[j], ay[j]);
        }
      }
      return negative;
    });
  }

  // f.template operator()<USE_MIN, SQUARED>() with intersection and squared as template
  // arguments: the loops that read them per element take them so (read at run time, every
  // variant was computed and blended per element).
  template <class F>
  auto with_options(F&& f) const {
    if (use_min) {
      return squared ? f.template operator()<true, true>() : f.template operator()<true, false>();
    }
    return squared ? f.template operator()<false, true>() : f.template operator()<false, false>();
  }

  // sigmoid_sums with the options as template arguments.
  bool fused_sums(int64_t n, int64_t m_begin, int64_t m_end, A* accI, A* accP, A* accY) const {
    return with_options([&]<bool USE_MIN, bool SQUARED>() {
      return a.w != nullptr
                 ? sigmoid_sums<USE_MIN, SQUARED, true>(n, m_begin, m_end, accI, accP, accY)
                 : sigmoid_sums<USE_MIN, SQUARED, false>(n, m_begin, m_end, accI, accP, accY);
    });
  }

  // The gradient of pixels [m_begin, m_end) of sample n, written to grad_x; false where a value
  // is not allowed.
  template <bool USE_MIN, bool SQUARED, bool WITH_CE>
  bool sigmoid_backward(int64_t n, int64_t m_begin, int64_t m_end, A gce) const {
    S* gb = static_cast<S*>(a.grad_x) + n * a.g_sN;
    const A sh = sharp, pos_w = pw;
    return sigmoid_blocks(n, m_begin, m_end, [&](int64_t c, int64_t m, int cnt,
                                                 const S* __restrict__ x, const A* __restrict__ w,
                                                 const A* __restrict__ y,
                                                 const A* __restrict__ v) {
      A gI, gP;
      pair_gradient(a, n, c, gI, gP);
      const A ck = ce_class_weight<A>(a, c);
      S* __restrict__ out = gb + c * a.g_sC + m;
      int32_t negative = 0;
      if (cnt == kTile) {
        for (int j = 0; j < kTile; ++j) {
          negative |= int32_t(w[j] < A(0));
          out[j] = Store<S>::from(grad_element<USE_MIN, SQUARED, WITH_CE>(
              to_acc<A>(x[j]), y[j], v[j], w[j], sh, pos_w, gI, gP, gce, ck));
        }
      } else {
        for (int j = 0; j < cnt; ++j) {
          negative |= int32_t(w[j] < A(0));
          out[j] = Store<S>::from(grad_element<USE_MIN, SQUARED, WITH_CE>(
              to_acc<A>(x[j]), y[j], v[j], w[j], sh, pos_w, gI, gP, gce, ck));
        }
      }
      return negative;
    });
  }

  // sigmoid_backward with the options as template arguments.
  bool fused_backward(int64_t n, int64_t m_begin, int64_t m_end, A gce) const {
    return with_options([&]<bool USE_MIN, bool SQUARED>() {
      return gce != A(0) ? sigmoid_backward<USE_MIN, SQUARED, true>(n, m_begin, m_end, gce)
                         : sigmoid_backward<USE_MIN, SQUARED, false>(n, m_begin, m_end, gce);
    });
  }

  void stats(int64_t chunk, int64_t ib, int64_t ie, A* partials, A* scratch,
             ItemError* errors) const {
    const int64_t K = (a.M + chunk - 1) / chunk;
    Tile<A> tl;
    tl.X = scratch;
    tl.Yb = tl.X + C * kTile;
    tl.Vb = tl.Yb + C * kTile;
    tl.R = nullptr;
    A* accI = tl.Vb + C * kTile;
    A* accP = accI + C * kTile;
    A* accY = accP + C * kTile;
    tl.D = accY + C * kTile;  // the cross-entropy of each element (sigmoid)
    const bool ce = a.ce;
    for (int64_t item = ib; item < ie; ++item) {
      const int64_t n = item / K, k = item % K;
      const int64_t m_begin = k * chunk, m_end = min64(a.M, m_begin + chunk);
      int64_t m_tiles = m_begin;  // where the tile loop starts (m_end: nothing left for it)
      for (int64_t i = 0; i < C * kTile; ++i) accI[i] = accP[i] = accY[i] = A(0);
      A ce_num = A(0), ce_den = A(0);  // the cross-entropy term, added tile by tile
      ItemError err;
      if (fused_sigmoid(false) && !ce) {
        const bool done = fused_sums(n, m_begin, m_end, accI, accP, accY);
        // a value not allowed: the tiles below find and report it
        if (!done) {
          for (int64_t i = 0; i < C * kTile; ++i) accI[i] = accP[i] = accY[i] = A(0);
        }
        m_tiles = done ? m_end : m_begin;
      }
      for (int64_t m = m_tiles; m < m_end; m += kTile) {
        const int cnt = int(min64(kTile, m_end - m));
        if (softmax_of_logits()) {
          // class map, softmax of logits: X holds e, p = e / S. P takes every class, I and Y
          // the target class of each pixel; 1/S is folded into the pixel's weight
          prepare(tl, n, m, cnt, false, err, false, ce);
          A* ws = tl.aux;
          if (ce) {  // l = Q lse - QL, denominator v w c_t (section 9)
            A sn = A(0), sd = A(0);
            for (int t = 0; t < kTile; ++t) {
              const int32_t c = tl.cls[t];
              const A vw = c >= 0 ? tl.w[t] : A(0);
              sn += vw != A(0) ? vw * (tl.ceQ[t] * tl.lse[t] - tl.ceQL[t]) : A(0);
              sd += vw * ce_class_weight<A>(a, c < 0 ? 0 : c);
            }
            ce_num += sn;
            ce_den += sd;
          }
          for (int t = 0; t < kTile; ++t) ws[t] = tl.w[t] * tl.sum[t];
          class_map_sums<false>(tl, ws, accI, accP, accY);
          continue;
        }
        prepare(tl, n, m, cnt, false, err, true, ce);
        if (ce && a.prob == Prob::kSoftmax) {  // denominator sum v w c_t (class map) or sum w
          A sn = A(0), sd = A(0);
          for (int t = 0; t < kTile; ++t) {
            const A vw = tl.pv[t] != A(0) ? tl.w[t] : A(0);
            sn += vw != A(0) ? vw * (tl.ceQ[t] * tl.lse[t] - tl.ceQL[t]) : A(0);
            sd += CLASS_MAP ? vw * ce_class_weight<A>(a, tl.cls[t] < 0 ? 0 : tl.cls[t]) : vw;
          }
          ce_num += sn;
          ce_den += sd;
        } else if (ce) {  // sigmoid: per element, denominator the number of kept elements
          A sn = A(0), sd = A(0);
          for (int64_t c = 0; c < C; ++c) {
            const A* bce = tl.D + c * kTile;
            for (int t = 0; t < kTile; ++t) {
              const A v = valid(tl, c, t);
              sn += v != A(0) ? tl.w[t] * bce[t] : A(0);
              sd += v;
            }
          }
          ce_num += sn;
          ce_den += sd;
        }
        if constexpr (CLASS_MAP) {
          // y is one-hot (min(p, y) = p*y and y^2 = y when y is 0 or 1)
          if (squared) {
            class_map_sums<true>(tl, tl.w, accI, accP, accY);
          } else {
            class_map_sums<false>(tl, tl.w, accI, accP, accY);
          }
        } else {
          with_options([&]<bool USE_MIN, bool SQUARED>() {
            dense_sums<USE_MIN, SQUARED>(tl, accI, accP, accY);
          });
        }
      }
      // fixed-order reduction of the lanes
      A* out = partials + item * partial_row(C);
      out[C * 3 + 0] = ce_num;
      out[C * 3 + 1] = ce_den;
      for (int64_t c = 0; c < C; ++c) {
        A sI = A(0), sP = A(0), sY = A(0);
        for (int t = 0; t < kTile; ++t) {
          sI += accI[c * kTile + t];
          sP += accP[c * kTile + t];
          sY += accY[c * kTile + t];
        }
        out[c * 3 + 0] = sI;
        out[c * 3 + 1] = sP;
        out[c * 3 + 2] = sY;
      }
      errors[item] = err;
    }
  }

  // Writes rows [C][kTile] of dx (accumulation dtype) to the gradient at (n, m).
  void store_rows(const A* dx, int64_t n, int64_t m, int cnt) const {
    S* gx = static_cast<S*>(a.grad_x);
    for (int64_t c = 0; c < C; ++c) {
      const A* row = dx + c * kTile;
      S* out = gx + n * a.g_sN + c * a.g_sC + m * a.g_sM;
      if (a.g_sM == 1 && cnt == kTile) {
        for (int t = 0; t < kTile; ++t) out[t] = Store<S>::from(row[t]);
      } else {
        for (int t = 0; t < cnt; ++t) out[t * a.g_sM] = Store<S>::from(row[t]);
      }
    }
  }

  // The class-map loops for the softmax of logits (the common case) are specialised.
  bool softmax_of_logits() const {
    return CLASS_MAP && a.prob == Prob::kSoftmax && from_logits && !squared;
  }

  // Class map, softmax of logits: with e_c the exponentials, S their sum, t the target class,
  // g_c = w (gP_c + [c == t] gI_c) and D = (sum_c e_c gP_c + e_t gI_t) / S,
  //   dL/dx_c = a p_c (g_c - sum_j p_j g_j) = (a w / S) e_c (gP_c - D) + [c == t] (a w / S) e_t gI_t,
  // with sum_c e_c gP_c taken in the exponentials' pass and the output written in one more pass.
  // gI, gP: the pair gradients of sample n, [C] each. The cross-entropy term (gce: its gradient
  // for sample n, see ce_gradient) adds a gce w (Q p_c - q_c): D becomes D - gce Q, the target
  // class's term gains -a gce w (1 - eps) c_t and every class -a gce w (eps / C) c_c.
  void backward_softmax_map(Tile<A>& tl, int64_t n, int64_t m, int cnt, const A* gI,
                            const A* gP, A gce, ItemError& err) const {
    load_weight_target(tl, n, m, cnt, err);
    const S* xp = static_cast<const S*>(a.x) + n * a.x_sN + m * a.x_sM;
    exp_and_sum<true>(tl, logits_max(tl, xp, cnt) ? xp : nullptr, gP);
    // per pixel: D, k = a w / S (0 where the pixel is not kept), the target class's term and
    // the cross-entropy's label-smoothing term per unit class weight. Branch-free with local
    // restrict pointers: the compiler vectorises it with gathers (with the member fields read
    // in the loop, it could not: the stores might change them).
    const A* __restrict__ X = tl.X;
    const A* __restrict__ inv = tl.sum;
    const A* __restrict__ w = tl.w;
    const int32_t* __restrict__ cls = tl.cls;
    A* __restrict__ D = tl.dsum;
    A* __restrict__ k = tl.aux;
    A* __restrict__ extra = tl.R;
    A* __restrict__ kc = tl.R + kTile;
    const A sh = sharp;
    if (gce == A(0)) {  // no cross-entropy term (or a zero gradient for it)
      for (int t = 0; t < kTile; ++t) {
        const int32_t c = cls[t];
        const int32_t cc = c < 0 ? 0 : c;
        // read for every lane (cc is a valid class): gathers and selects in SIMD code
        const A et = X[cc * kTile + t], g_t = gI[cc];
        const A et_gI = c >= 0 ? et * g_t : A(0);
        const A vw = c >= 0 ? w[t] : A(0);
        D[t] = inv[t] * (D[t] + et_gI);
        k[t] = sh * vw * inv[t];
        extra[t] = k[t] * et_gI;
        kc[t] = A(0);
      }
    } else {
      const A keep = A(1) - ls, spread = ls / A(C), sum_c = csum;
      const A* __restrict__ cw = static_cast<const A*>(a.class_weight);
      for (int t = 0; t < kTile; ++t) {
        const int32_t c = cls[t];
        const int32_t cc = c < 0 ? 0 : c;
        const A et = X[cc * kTile + t], g_t = gI[cc];
        const A et_gI = c >= 0 ? et * g_t : A(0);
        const A vw = c >= 0 ? w[t] : A(0);
        const A ct = cw == nullptr ? A(1) : cw[cc];
        D[t] = inv[t] * (D[t] + et_gI) - gce * (keep * ct + spread * sum_c);
        k[t] = sh * vw * inv[t];
        extra[t] = k[t] * et_gI - sh * gce * vw * keep * ct;
        kc[t] = sh * gce * vw * spread;
      }
    }
    S* gx = static_cast<S*>(a.grad_x) + n * a.g_sN + m * a.g_sM;
    const bool smoothing = gce != A(0) && ls != A(0);  // kc is zero without it
    if (a.g_sM == 1 && cnt == kTile) {  // a full contiguous tile: written where it goes
      for (int64_t c = 0; c < C; ++c) {
        if (smoothing) {
          softmax_map_row<true>(tl, c, gP[c], gx + c * a.g_sC);
        } else {
          softmax_map_row<false>(tl, c, gP[c], gx + c * a.g_sC);
        }
      }
    } else {
      A* dx = tl.Yb;  // one row of the result, then copied out
      for (int64_t c = 0; c < C; ++c) {
        softmax_map_row<true>(tl, c, gP[c], dx);
        S* out = gx + c * a.g_sC;
        for (int t = 0; t < cnt; ++t) out[t * a.g_sM] = Store<S>::from(dx[t]);
      }
    }
  }

  // Row c of backward_softmax_map's result (kTile lanes) into out (S or A). SMOOTHING = false
  // leaves out the label-smoothing term (kc), for a caller that knows it is zero.
  template <bool SMOOTHING, class O>
  void softmax_map_row(const Tile<A>& tl, int64_t c, A g, O* __restrict__ out) const {
    const A* __restrict__ e = tl.X + c * kTile;
    const A* __restrict__ D = tl.dsum;
    const A* __restrict__ k = tl.aux;
    const A* __restrict__ extra = tl.R;
    const A* __restrict__ kc = tl.R + kTile;
    const A* __restrict__ pv = tl.pv;
    const int32_t* __restrict__ cls = tl.cls;
    const A cw = ce_class_weight<A>(a, c);
    const int32_t cc = int32_t(c);
    for (int t = 0; t < kTile; ++t) {
      const A grad = SMOOTHING ? k[t] * e[t] * (g - D[t]) - kc[t] * cw : k[t] * e[t] * (g - D[t]);
      const A v = pv[t] != A(0) ? grad : A(0);
      const A ex = extra[t];  // read for every lane: a select, not a masked load, in SIMD code
      out[t] = Store<O>::from(cls[t] == cc ? v + ex : v);
    }
  }

  // The tile path's g = dL/dp of every row of the tile (G, [C][kTile]), 0 where an element is
  // not kept. The options are template arguments, as in dense_sums (read at run time, both
  // variants were computed and blended per element); the rows restrict locals, so that the loops
  // vectorise.
  template <bool USE_MIN, bool SQUARED>
  void grad_rows(const Tile<A>& tl, int64_t n, A* G) const {
    const A* __restrict__ w = tl.w;
    for (int64_t c = 0; c < C; ++c) {
      A gI, gP;
      pair_gradient(a, n, c, gI, gP);
      const A* __restrict__ p = tl.X + c * kTile;
      A* __restrict__ g = G + c * kTile;
      if constexpr (CLASS_MAP) {
        const A* __restrict__ pv = tl.pv;
        const int32_t* __restrict__ cls = tl.cls;
        const int32_t cc = int32_t(c);
        for (int t = 0; t < kTile; ++t) {
          const A y = cls[t] == cc ? A(1) : A(0);
          g[t] = pv[t] != A(0) ? w[t] * grad_p(p[t], y, gI, gP, USE_MIN, SQUARED) : A(0);
        }
      } else {
        const A* __restrict__ y = tl.Yb + c * kTile;
        const A* __restrict__ v = tl.Vb + c * kTile;
        for (int t = 0; t < kTile; ++t)
          g[t] = v[t] != A(0) ? w[t] * grad_p(p[t], y[t], gI, gP, USE_MIN, SQUARED) : A(0);
      }
    }
  }

  void backward(int64_t chunk, int64_t ib, int64_t ie, A* scratch, ItemError* errors) const {
    const int64_t K = (a.M + chunk - 1) / chunk;
    Tile<A> tl;
    tl.X = scratch;
    tl.R = tl.X + C * kTile;
    tl.Yb = tl.R + C * kTile;
    tl.Vb = tl.Yb + C * kTile;
    tl.D = tl.Vb + C * kTile;
    A* G = tl.D + C * kTile;
    A* gIs = G;  // the class-map softmax path keeps the pair gradients of the sample here
    A* gPs = G + C;
    for (int64_t item = ib; item < ie; ++item) {
      const int64_t n = item / K, k = item % K;
      const int64_t m_begin = k * chunk, m_end = min64(a.M, m_begin + chunk);
      ItemError err;
      const A gce = ce_gradient<A>(a, n);
      if (softmax_of_logits()) {
        for (int64_t c = 0; c < C; ++c) pair_gradient(a, n, c, gIs[c], gPs[c]);
        for (int64_t m = m_begin; m < m_end; m += kTile)
          backward_softmax_map(tl, n, m, int(min64(kTile, m_end - m)), gIs, gPs, gce, err);
        errors[item] = err;
        continue;
      }
      if (fused_sigmoid(true) && fused_backward(n, m_begin, m_end, gce)) {
        errors[item] = err;
        continue;
      }
      for (int64_t m = m_begin; m < m_end; m += kTile) {
        const int cnt = int(min64(kTile, m_end - m));
        prepare(tl, n, m, cnt, true, err);
        A* dot = tl.aux;
        A* Q = tl.ceQ;  // the cross-entropy's sum_k q_k (dense softmax)
        const A keep = A(1) - ls, spread = ls / A(C);
        const bool with_ce = gce != A(0);
        // g = dL/dp
        with_options([&]<bool USE_MIN, bool SQUARED>() {
          grad_rows<USE_MIN, SQUARED>(tl, n, G);
        });
        // (the rows and options in restrict locals below: read through tl and the members,
        // they would be reloaded after every store, and the loops would stay scalar)
        const int32_t* __restrict__ cls = tl.cls;  // the class map (read only with CLASS_MAP)
        A* __restrict__ dt = dot;
        A* __restrict__ q_sum = Q;
        if (a.prob == Prob::kSoftmax) {  // sum_c p_c g_c, and Q (with the cross-entropy)
          // two loops: with Q in the same one, GCC jammed two classes into one scalar loop
          for (int t = 0; t < kTile; ++t) dt[t] = q_sum[t] = A(0);
          for (int64_t c = 0; c < C; ++c) {
            const A* __restrict__ p = tl.X + c * kTile;
            const A* __restrict__ g = G + c * kTile;
            for (int t = 0; t < kTile; ++t) dt[t] += p[t] * g[t];
          }
          for (int64_t c = 0; with_ce && c < C; ++c) {
            const A* __restrict__ y = tl.Yb + c * kTile;
            const int32_t cc = int32_t(c);
            const A ck = ce_class_weight<A>(a, c);
            for (int t = 0; t < kTile; ++t) {
              const A yt = CLASS_MAP ? (cls[t] == cc ? A(1) : A(0)) : y[t];
              q_sum[t] += ck * (keep * yt + spread);
            }
          }
        }
        // dL/dx through the activation
        const A sh = sharp, pos_w = pw;
        const bool fl = from_logits;
        const A* __restrict__ w = tl.w;
        const A* __restrict__ pv = tl.pv;
        for (int64_t c = 0; c < C; ++c) {
          const A* __restrict__ p = tl.X + c * kTile;
          const A* __restrict__ g = G + c * kTile;
          const A* __restrict__ r = tl.R + c * kTile;
          const A* __restrict__ d = tl.D + c * kTile;
          const A* __restrict__ v = tl.Vb + c * kTile;
          // the target row is no longer needed once read: dx is staged there (each element is
          // read, then written, through this one pointer)
          A* __restrict__ dx = tl.Yb + c * kTile;
          const int32_t cc = int32_t(c);
          const A ck = ce_class_weight<A>(a, c);
          switch (a.prob) {
            case Prob::kSoftmax:  // with the cross-entropy (logits only): + a gce w (Q p - q_c)
              if (!with_ce) {  // (one loop per input kind: a select would compute both)
                if (fl) {
                  for (int t = 0; t < kTile; ++t) dx[t] = sh * p[t] * (g[t] - dt[t]);
                } else {
                  for (int t = 0; t < kTile; ++t)
                    dx[t] = softmax_arg_dx(r[t], sh, false) * p[t] * (g[t] - dt[t]);
                }
                break;
              }
              for (int t = 0; t < kTile; ++t) {
                const A yt = CLASS_MAP ? (cls[t] == cc ? A(1) : A(0)) : dx[t];
                const A q = ck * (keep * yt + spread);
                const A cev = with_ce && pv[t] != A(0) ? gce * w[t] * (q_sum[t] * p[t] - q) : A(0);
                dx[t] = softmax_arg_dx(r[t], sh, fl) * p[t] * (g[t] - dt[t]) + sh * cev;
              }
              break;
            case Prob::kSigmoid:  // with the cross-entropy (logits only):
              // + a gce v w c_k (lw p - pw y)
              if (!with_ce) {
                for (int t = 0; t < kTile; ++t) dx[t] = g[t] * d[t];
                break;
              }
              for (int t = 0; t < kTile; ++t) {
                const A yt = CLASS_MAP ? (cls[t] == cc ? A(1) : A(0)) : dx[t];
                const A vt = CLASS_MAP ? pv[t] : v[t];
                const A cev = vt != A(0) ? gce * w[t] * ck * bce_with_logits_dz(p[t], yt, pos_w)
                                         : A(0);
                dx[t] = g[t] * d[t] + sh * cev;
              }
              break;
            case Prob::kIdentity:
              for (int t = 0; t < kTile; ++t) dx[t] = g[t];
              break;
          }
        }
        store_rows(tl.Yb, n, m, cnt);
      }
      errors[item] = err;
    }
  }
};

// ------------------------------------------------------------------------------------------
// Type dispatch. Dense targets arrive as the input dtype, the accumulation dtype or bool (the
// glue converts the rest); integer targets as uint8, int32 or int64.
// ------------------------------------------------------------------------------------------
template <class S, class A, class F>
void with_target(const KernelArgs& a, F&& f) {
  switch (a.t_dtype) {
    case DType::kUInt8:
      if (a.class_map) f(Kernel<A, S, uint8_t, true>(a)); else f(Kernel<A, S, uint8_t, false>(a));
      return;
    case DType::kInt32:
      if (a.class_map) f(Kernel<A, S, int32_t, true>(a)); else f(Kernel<A, S, int32_t, false>(a));
      return;
    case DType::kInt64:
      if (a.class_map) f(Kernel<A, S, int64_t, true>(a)); else f(Kernel<A, S, int64_t, false>(a));
      return;
    case DType::kBool:
      f(Kernel<A, S, bool_byte, false>(a));
      return;
    case DType::kFloat32:
      f(Kernel<A, S, float, false>(a));
      return;
    case DType::kFloat64:
      f(Kernel<A, S, double, false>(a));
      return;
    case DType::kFloat16:
      f(Kernel<A, S, f16, false>(a));
      return;
    case DType::kBFloat16:
      f(Kernel<A, S, bf16, false>(a));
      return;
  }
}

template <class F>
void with_kernel(const KernelArgs& a, F&& f) {
  switch (a.x_dtype) {
    case DType::kFloat32:
      with_target<float, float>(a, f);
      return;
    case DType::kFloat64:
      with_target<double, double>(a, f);
      return;
    case DType::kFloat16:
      with_target<f16, float>(a, f);
      return;
    case DType::kBFloat16:
      with_target<bf16, float>(a, f);
      return;
    default:
      return;
  }
}

void stats_entry(const KernelArgs& a, int64_t chunk, int64_t ib, int64_t ie, void* partials,
                 void* scratch, ItemError* errors) {
  with_kernel(a, [&](const auto& k) {
    using A = typename std::decay<decltype(k)>::type::acc_type;
    k.stats(chunk, ib, ie, static_cast<A*>(partials), static_cast<A*>(scratch), errors);
  });
}

void backward_entry(const KernelArgs& a, int64_t chunk, int64_t ib, int64_t ie, void* scratch,
                    ItemError* errors) {
  with_kernel(a, [&](const auto& k) {
    using A = typename std::decay<decltype(k)>::type::acc_type;
    k.backward(chunk, ib, ie, static_cast<A*>(scratch), errors);
  });
}

}  // namespace

const KernelTable& table() {
  static const KernelTable t{&stats_entry, &backward_entry, SOFTIOU_CPU_ISA_NAME};
  return t;
}

}  // namespace SOFTIOU_CPU_NS
}  // namespace cpu
}  // namespace softiou
