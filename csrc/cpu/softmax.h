// The softmax over the classes of a tile: each pixel's maximum, the exponentials and their sum,
// read from the input in place where a tile is contiguous; and the cross-entropy's per-pixel sums
// of a softmax (SPEC section 9).
// Part of the CPU kernels (tile.h); included once per instruction set by kernels_impl.h.
#ifndef SOFTIOU_CPU_NS
#error "define SOFTIOU_CPU_NS before including softmax.h"
#endif

namespace softiou {
namespace cpu {
namespace SOFTIOU_CPU_NS {
namespace {

using namespace ::softiou::SOFTIOU_MATH_NS;

// Softmax of logits, first step: tl.aux = each pixel's maximum of l = a*x over the classes. A
// full tile of an input whose pixels are contiguous is read where it is (returns true: the
// next step reads it again); any other tile is copied into X (returns false).
template <class A, class S, class TT, bool CLASS_MAP>
inline bool Kernel<A, S, TT, CLASS_MAP>::logits_max(Tile<A>& tl, const S* xp, int cnt) const {
  A* mx = tl.aux;
  tl.has_pred = false;
  const bool in_place = a.x_sM == 1 && cnt == kTile;
  if (in_place) {
    // the statistics pass asked for the hard counts: the prediction on the same read
    const bool unit = sharp == A(1);
    if (a.counts == nullptr) {
      unit ? logits_max_in_place<false, true>(tl, xp) : logits_max_in_place<false, false>(tl, xp);
    } else if (unit) {
      if constexpr (std::is_same<S, float>::value && std::is_same<A, float>::value) {
        logits_argmax_f32(tl, xp);
      } else {
        logits_max_in_place<true, true>(tl, xp);
      }
    } else {
      logits_max_in_place<true, false>(tl, xp);
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

// The maxima of a whole tile of contiguous pixels, kLanes pixels at a time over all the classes:
// the maxima stay in registers (a loop over the classes outside the pixels' would store and
// reload them for every class). ARGMAX: also each pixel's first maximal class of the raw input
// (strict >: the first stays, torch.argmax's choice), compared before the sharpness scales it
// so that no rounding of the product moves the prediction. UNIT (sharpness 1): l = 1 * x = x
// exactly, without the product.
template <class A, class S, class TT, bool CLASS_MAP>
template <bool ARGMAX, bool UNIT>
inline void Kernel<A, S, TT, CLASS_MAP>::logits_max_in_place(Tile<A>& tl, const S* xp) const {
  A* mx = tl.aux;
  constexpr int kLanes = 32;
  const A sh = sharp;
  const int64_t sC = a.x_sC;
  for (int t0 = 0; t0 < kTile; t0 += kLanes) {
    A m[kLanes], best[kLanes];
    int32_t p[kLanes];
    for (int j = 0; j < kLanes; ++j) {
      m[j] = neg_inf<A>();
      if constexpr (ARGMAX) {
        best[j] = neg_inf<A>();
        p[j] = 0;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const S* row = xp + c * sC + t0;
      for (int j = 0; j < kLanes; ++j) {
        const A v = to_acc<A>(row[j]);
        m[j] = max_(m[j], UNIT ? v : softmax_arg(v, sh, true));
        if constexpr (ARGMAX) {
          const bool above = c == 0 || v > best[j];  // (as stat_scores.h's own search)
          best[j] = above ? v : best[j];
          p[j] = above ? int32_t(c) : p[j];
        }
      }
    }
    for (int j = 0; j < kLanes; ++j) {
      mx[t0 + j] = m[j];
      if constexpr (ARGMAX) tl.pred[t0 + j] = p[j];
    }
  }
  tl.has_pred = ARGMAX;
}

// ARGMAX and UNIT for float logits, in GCC vector types (their registers are named: the
// autovectorised loop above keeps its arrays in memory when it searches without the separate
// maximum, a store and a reload per class). At sharpness 1 the first maximal logit is the
// softmax's maximum: one compare and two masked moves per vector and class, the maximum's own
// instruction gone. The search starts from class 0's values (as the loop's c == 0 case), so a
// pixel's maximum is that of the loop for every finite or infinite logit; a NaN, outside the
// input's domain, makes that pixel's probabilities NaN either way.
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::logits_argmax_f32(Tile<A>& tl, const float* xp) const {
  typedef float F16 __attribute__((vector_size(64)));
  typedef int32_t I16 __attribute__((vector_size(64)));
  static_assert(kTile % 32 == 0, "two vectors of 16 pixels at a time");
  const int64_t sC = a.x_sC;
  for (int t0 = 0; t0 < kTile; t0 += 32) {
    F16 b0, b1;
    I16 p0 = I16{}, p1 = I16{};
    std::memcpy(&b0, xp + t0, sizeof b0);
    std::memcpy(&b1, xp + t0 + 16, sizeof b1);
    for (int64_t c = 1; c < C; ++c) {
      const float* row = xp + c * sC + t0;
      F16 v0, v1;
      std::memcpy(&v0, row, sizeof v0);
      std::memcpy(&v1, row + 16, sizeof v1);
      const I16 cc = I16{} + int32_t(c);
      const I16 above0 = v0 > b0, above1 = v1 > b1;  // strict: the first maximal class stays
      b0 = above0 ? v0 : b0;
      b1 = above1 ? v1 : b1;
      p0 = above0 ? cc : p0;
      p1 = above1 ? cc : p1;
    }
    std::memcpy(tl.aux + t0, &b0, sizeof b0);
    std::memcpy(tl.aux + t0 + 16, &b1, sizeof b1);
    std::memcpy(tl.pred + t0, &p0, sizeof p0);
    std::memcpy(tl.pred + t0 + 16, &p1, sizeof p1);
  }
  tl.has_pred = true;
}

// Softmax, second step: X = e = e^(l - shift), the shift from the maximum in tl.aux, and
// tl.sum = 1 / sum_c e. l is read from the input (xp: logits_max read it in place) or from X.
// DSUM: also tl.dsum = sum_c e_c gP[c] (the class-map backward).
// log_s (not null): also log sum_c e, before the division.
template <class A, class S, class TT, bool CLASS_MAP>
template <bool DSUM>
inline void Kernel<A, S, TT, CLASS_MAP>::exp_and_sum(Tile<A>& tl, const S* xp, const A* gP,
                                                     A* log_s) const {
  if (xp != nullptr) {
    exp_rows<true, DSUM>(tl, xp, gP, log_s);
  } else {
    exp_rows<false, DSUM>(tl, xp, gP, log_s);
  }
}

template <class A, class S, class TT, bool CLASS_MAP>
template <bool FROM_INPUT, bool DSUM>
inline void Kernel<A, S, TT, CLASS_MAP>::exp_rows(Tile<A>& tl, const S* xp, const A* gP,
                                                  A* log_s) const {
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
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::ce_logit_sums(Tile<A>& tl, const S* xp) const {
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
template <class A, class S, class TT, bool CLASS_MAP>
template <bool FROM_INPUT, bool DSUM, class In>
inline void Kernel<A, S, TT, CLASS_MAP>::exp4(const In* i0, const In* i1, const In* i2,
                                              const In* i3, A* o0, A* o1, A* o2, A* o3,
                                              const A* __restrict__ mx, A* __restrict__ s,
                                              A* __restrict__ ds, const A* g, A sharp) {
  if constexpr (FROM_INPUT) {
    exp4_loop<true, DSUM>(i0, i1, i2, i3, o0, o1, o2, o3, mx, s, ds, g[0], g[1], g[2], g[3],
                          sharp);
  } else {
    exp4_inplace<DSUM>(o0, o1, o2, o3, mx, s, ds, g[0], g[1], g[2], g[3]);
  }
}

template <class A, class S, class TT, bool CLASS_MAP>
template <bool FROM_INPUT, bool DSUM, class In>
inline void Kernel<A, S, TT, CLASS_MAP>::exp4_loop(
    const In* __restrict__ i0, const In* __restrict__ i1, const In* __restrict__ i2,
    const In* __restrict__ i3, A* __restrict__ o0, A* __restrict__ o1, A* __restrict__ o2,
    A* __restrict__ o3, const A* __restrict__ mx, A* __restrict__ s, A* __restrict__ ds, A g0, A g1,
    A g2, A g3, A sharp) {
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

template <class A, class S, class TT, bool CLASS_MAP>
template <bool DSUM>
inline void Kernel<A, S, TT, CLASS_MAP>::exp4_inplace(A* __restrict__ o0, A* __restrict__ o1,
                                                      A* __restrict__ o2, A* __restrict__ o3,
                                                      const A* __restrict__ mx, A* __restrict__ s,
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

}  // namespace
}  // namespace SOFTIOU_CPU_NS
}  // namespace cpu
}  // namespace softiou
