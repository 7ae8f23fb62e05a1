// A tile's inputs: the input made into probabilities (prepare), the pixel weights and the
// target read and checked (SPEC section 7: a bad value is reported, not used), for every target
// kind: a class map, an integer target per element, a dense target.
// Part of the CPU kernels (tile.h); included once per instruction set by kernels_impl.h.
#ifndef SOFTIOU_CPU_NS
#error "define SOFTIOU_CPU_NS before including tile_inputs.h"
#endif

namespace softiou {
namespace cpu {
namespace SOFTIOU_CPU_NS {
namespace {

using namespace ::softiou::SOFTIOU_MATH_NS;

// Loads one tile (sample n, pixels [m, m + cnt)) and turns the input into probabilities.
// With backward = true it also keeps the raw input in R and the sigmoid slope in D. With
// normalize = false a softmax stops before the division: X holds the exponentials e and
// tl.sum holds 1/sum_c e (the class-map loops fold that factor into their per-pixel weights).
// With ce (the cross-entropy term of the statistics pass; it needs logits): tl.ceQ, ceQL and
// lse for a softmax, and c_k BCEWithLogits per element in D for a sigmoid.
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::prepare(Tile<A>& tl, int64_t n, int64_t m, int cnt,
                                                 bool backward, ItemError& err, bool normalize,
                                                 bool ce) const {
  load_weight_target(tl, n, m, cnt, err);
  tl.has_pred = false;
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

// The pixel weights and the target of one tile (sample n, pixels [m, m + cnt)), with the
// input checks of SPEC section 7 on them. The checks are OR-reduced flags in the vectorised
// loops; only a tile that fails one is scanned again, in scalar code, to report the first
// offending value.
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::load_weight_target(Tile<A>& tl, int64_t n, int64_t m,
                                                            int cnt, ItemError& err) const {
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
// the ignored value (the tail's lanes are not kept). Branch-free, with local restrict pointers, so
// that it vectorises (with 64-bit compares). Returns whether a value was out of range and not
// ignored.
template <class A, class S, class TT, bool CLASS_MAP>
template <bool DENSE>
inline bool Kernel<A, S, TT, CLASS_MAP>::class_map_row(const TT* __restrict__ tp, int cnt,
                                                       int32_t* __restrict__ cls,
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
// validity v, kept where the value is 0 or 1 and not the ignored value (the tail's lanes are not
// kept). Branch-free, with local restrict pointers, so that it vectorises. Returns whether a
// value was neither binary nor ignored. The compares are 32 bits wide, as many lanes as the
// float data's (64-bit ones took half the pass's time at C = 1): in the target's own width
// where it is 32 bits or less, and on the two halves of an int64 in a contiguous tile.
template <class A, class S, class TT, bool CLASS_MAP>
template <bool DENSE>
inline bool Kernel<A, S, TT, CLASS_MAP>::binary_target_row(const TT* __restrict__ row, int cnt,
                                                           A* __restrict__ y,
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
    // in the target's own width where it is 32 bits or less; an ignored value outside that
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
template <class A, class S, class TT, bool CLASS_MAP>
inline int32_t Kernel<A, S, TT, CLASS_MAP>::binary_element(bool is0, bool is1, bool ignored, A& y,
                                                           A& v) {
  v = (is0 | is1) & !ignored ? A(1) : A(0);
  y = is1 & !ignored ? A(1) : A(0);
  return int32_t(!(is0 | is1 | ignored));
}

// One row of a dense target per element: y (the ignored value's elements set to 0, SPEC
// section 10)
// and its validity v (0 where ignored and past cnt). Returns whether a kept value lies outside
// [0, 1].
template <class A, class S, class TT, bool CLASS_MAP>
inline bool Kernel<A, S, TT, CLASS_MAP>::dense_target_row(const TT* row, int cnt, A* __restrict__ y,
                                                          A* __restrict__ v) const {
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

// cnt values of a contiguous per-element target row as y and their validity v ([kTile]
// each; v = 0 past cnt), as load_weight_target reads them. Returns whether a value is not
// allowed. (The target has its own loop: with the compute in the same loop, the selects on
// an int64 target's masks and on float data do not vectorise.)
template <class A, class S, class TT, bool CLASS_MAP>
inline bool Kernel<A, S, TT, CLASS_MAP>::target_block(const TT* row, int cnt, A* __restrict__ y,
                                                      A* __restrict__ v) const {
  if constexpr (is_integer_target<TT>()) {
    return cnt == kTile ? binary_target_row<true>(row, cnt, y, v)
                        : binary_target_row<false>(row, cnt, y, v);
  } else {
    return dense_target_row(row, cnt, y, v);
  }
}

}  // namespace
}  // namespace SOFTIOU_CPU_NS
}  // namespace cpu
}  // namespace softiou
