// The CPU kernels' tile: storage types and their conversions, the tile buffers, and the kernel of
// one (input dtype, target type, class map or not): its state and its members, defined in the
// headers of the paths they serve (kernels_impl.h lists them). Included once per instruction set
// (see kernels_impl.h).
//
// Layout of the work: a tile is kTile consecutive pixels of one sample and all its C classes,
// staged in small buffers [C][kTile] that stay in L1. Every loop runs over the kTile lanes with
// branch-free arithmetic, so the compiler turns it into SIMD code; the softmax over the classes is
// a loop over the buffer rows. The integer class map is read per pixel and compared with the class
// index: it is never expanded. Per-element targets under a sigmoid of logits (binary, multilabel)
// skip the staging (sigmoid_rows.h).
//
// Only this project's own inline functions are used here (no std:: templates), so that nothing
// compiled for AVX2 or AVX-512 can be merged by the linker into another build. The members defined
// outside the struct are declared `inline`, as those defined inside it are.
#ifndef SOFTIOU_CPU_NS
#error "define SOFTIOU_CPU_NS before including tile.h"
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
// conversion v ? 1 : 0 compiles to a branch per element, which random masks mispredict half the
// time.)
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
  A pv[kTile];       // pixel validity 0/1 (class map: the ignored value and the tail)
  int32_t cls[kTile];  // class map value, -1 where not valid
  // the hard counts (SPEC section 11): each pixel's first maximal class of the raw input, where
  // has_pred (the softmax's maximum pass found it on its way; else stat_scores.h finds it)
  int32_t pred[kTile];
  bool has_pred;
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
  // the target value whose pixels (class map) or elements count nowhere, where there is one
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

  // validity and target of element (c, t)
  inline A valid(const Tile<A>& tl, int64_t c, int t) const {
    return CLASS_MAP ? tl.pv[t] : tl.Vb[c * kTile + t];
  }
  inline A target(const Tile<A>& tl, int64_t c, int t) const {
    return CLASS_MAP ? (tl.cls[t] == int32_t(c) ? A(1) : A(0)) : tl.Yb[c * kTile + t];
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

  // f.template operator()<USE_MIN, SQUARED>() with intersection and squared as template
  // arguments: the loops that read them per element take them so (a flag read at run time
  // would have every variant computed and blended per element).
  template <class F>
  auto with_options(F&& f) const {
    if (use_min) {
      return squared ? f.template operator()<true, true>() : f.template operator()<true, false>();
    }
    return squared ? f.template operator()<false, true>() : f.template operator()<false, false>();
  }

  // The class-map loops for the softmax of logits (the common case) are specialised.
  bool softmax_of_logits() const {
    return CLASS_MAP && a.prob == Prob::kSoftmax && from_logits && !squared;
  }

  // tile_inputs.h: a tile's probabilities, weights and target
  void prepare(Tile<A>& tl, int64_t n, int64_t m, int cnt, bool backward, ItemError& err,
               bool normalize = true, bool ce = false) const;
  void load_weight_target(Tile<A>& tl, int64_t n, int64_t m, int cnt, ItemError& err) const;
  template <bool DENSE>
  bool class_map_row(const TT* __restrict__ tp, int cnt, int32_t* __restrict__ cls,
                     A* __restrict__ pv) const;
  template <bool DENSE>
  bool binary_target_row(const TT* __restrict__ row, int cnt, A* __restrict__ y,
                         A* __restrict__ v) const;
  static int32_t binary_element(bool is0, bool is1, bool ignored, A& y, A& v);
  bool dense_target_row(const TT* row, int cnt, A* __restrict__ y, A* __restrict__ v) const;
  bool target_block(const TT* row, int cnt, A* __restrict__ y, A* __restrict__ v) const;

  // softmax.h: the softmax over the classes
  bool logits_max(Tile<A>& tl, const S* xp, int cnt) const;
  template <bool ARGMAX, bool UNIT>
  void logits_max_in_place(Tile<A>& tl, const S* xp) const;
  void logits_argmax_f32(Tile<A>& tl, const float* xp) const;
  template <bool DSUM>
  void exp_and_sum(Tile<A>& tl, const S* xp, const A* gP, A* log_s = nullptr) const;
  template <bool FROM_INPUT, bool DSUM>
  void exp_rows(Tile<A>& tl, const S* xp, const A* gP, A* log_s) const;
  void ce_logit_sums(Tile<A>& tl, const S* xp) const;
  template <bool FROM_INPUT, bool DSUM, class In>
  static void exp4(const In* i0, const In* i1, const In* i2, const In* i3, A* o0, A* o1, A* o2,
                   A* o3, const A* __restrict__ mx, A* __restrict__ s, A* __restrict__ ds,
                   const A* g, A sharp);
  template <bool FROM_INPUT, bool DSUM, class In>
  static void exp4_loop(const In* __restrict__ i0, const In* __restrict__ i1,
                        const In* __restrict__ i2, const In* __restrict__ i3, A* __restrict__ o0,
                        A* __restrict__ o1, A* __restrict__ o2, A* __restrict__ o3,
                        const A* __restrict__ mx, A* __restrict__ s, A* __restrict__ ds, A g0,
                        A g1, A g2, A g3, A sharp);
  template <bool DSUM>
  static void exp4_inplace(A* __restrict__ o0, A* __restrict__ o1, A* __restrict__ o2,
                           A* __restrict__ o3, const A* __restrict__ mx, A* __restrict__ s,
                           A* __restrict__ ds, A g0, A g1, A g2, A g3);

  // class_map.h: the softmax with a class map
  template <bool SQUARED>
  void class_map_sums(const Tile<A>& tl, const A* __restrict__ pw, A* __restrict__ accI,
                      A* __restrict__ accP, A* __restrict__ accY) const;
  void backward_softmax_map(Tile<A>& tl, int64_t n, int64_t m, int cnt, const A* gI,
                            const A* gP, A gce, ItemError& err) const;
  template <bool SMOOTHING, class O>
  void softmax_map_row(const Tile<A>& tl, int64_t c, A g, O* __restrict__ out) const;

  // dense.h: per-element targets through the tile buffers
  template <bool USE_MIN, bool SQUARED>
  void dense_sums(const Tile<A>& tl, A* __restrict__ accI, A* __restrict__ accP,
                  A* __restrict__ accY) const;
  template <bool USE_MIN, bool SQUARED>
  void grad_rows(const Tile<A>& tl, int64_t n, A* G) const;
  void store_rows(const A* dx, int64_t n, int64_t m, int cnt) const;

  // sigmoid_rows.h: per-element targets under a sigmoid, without the tile buffers
  template <bool USE_MIN, bool SQUARED>
  SOFTIOU_HD static void sum_element(A xv, A y, A v, A wt, A sh, A& ai, A& ap, A& ay);
  template <bool USE_MIN, bool SQUARED, bool WITH_CE>
  SOFTIOU_HD static A grad_element(A xv, A y, A v, A wt, A sh, A pos_w, A gI, A gP, A gce,
                                   A ck);
  template <class F>
  bool sigmoid_blocks(int64_t n, int64_t m_begin, int64_t m_end, F&& f) const;
  template <bool USE_MIN, bool SQUARED, bool WEIGHTED>
  bool sigmoid_sums(int64_t n, int64_t m_begin, int64_t m_end, A* accI, A* accP,
                    A* accY) const;
  bool fused_sums(int64_t n, int64_t m_begin, int64_t m_end, A* accI, A* accP, A* accY) const;
  template <bool USE_MIN, bool SQUARED, bool WITH_CE>
  bool sigmoid_backward(int64_t n, int64_t m_begin, int64_t m_end, A gce) const;
  bool fused_backward(int64_t n, int64_t m_begin, int64_t m_end, A gce) const;

  // stat_scores.h: the hard counts (SPEC section 11)
  void count_classes(const Tile<A>& tl, const S* xp, int cnt, int64_t* __restrict__ counts,
                     int32_t* __restrict__ confusion) const;
  void count_elements(const Tile<A>& tl, const S* xp, int cnt, int64_t* __restrict__ counts) const;
  void count_tile(const Tile<A>& tl, int64_t n, int64_t m, int cnt, int64_t* counts,
                  int32_t* confusion) const;
  void fold_confusion(int32_t* confusion, int64_t* counts) const;
  void finish_counts(int64_t* counts) const;

  // items.h: the work items
  void stats(int64_t chunk, int64_t ib, int64_t ie, A* partials, A* scratch,
             ItemError* errors) const;
  void backward(int64_t chunk, int64_t ib, int64_t ie, A* scratch, ItemError* errors) const;
};

}  // namespace
}  // namespace SOFTIOU_CPU_NS
}  // namespace cpu
}  // namespace softiou
