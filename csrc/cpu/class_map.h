// The softmax with a class map (multiclass, integer target): the statistics of a tile and its
// gradient, where only the target class of a pixel has y = 1 (the class map is never expanded).
// Part of the CPU kernels (tile.h); included once per instruction set by kernels_impl.h.
#ifndef SOFTIOU_CPU_NS
#error "define SOFTIOU_CPU_NS before including class_map.h"
#endif

namespace softiou {
namespace cpu {
namespace SOFTIOU_CPU_NS {
namespace {

using namespace ::softiou::SOFTIOU_MATH_NS;

// The class map's statistics of one tile, with pw the per-pixel factor of p (the pixel weight,
// or weight / S when X holds a softmax's exponentials): P takes every class (p^2 with
// SQUARED), I and Y the target class of each pixel, all per lane (one compare per element
// selects the target class for both).
template <class A, class S, class TT, bool CLASS_MAP>
template <bool SQUARED>
inline void Kernel<A, S, TT, CLASS_MAP>::class_map_sums(const Tile<A>& tl, const A* __restrict__ pw,
                                                        A* __restrict__ accI, A* __restrict__ accP,
                                                        A* __restrict__ accY) const {
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

// Class map, softmax of logits: with e_c the exponentials, S their sum, t the target class,
// g_c = w (gP_c + [c == t] gI_c) and D = (sum_c e_c gP_c + e_t gI_t) / S,
//   dL/dx_c = a p_c (g_c - sum_j p_j g_j) = (a w / S) e_c (gP_c - D) + [c == t] (a w / S) e_t gI_t,
// with sum_c e_c gP_c taken in the exponentials' pass and the output written in one more pass.
// gI, gP: the pair gradients of sample n, [C] each. The cross-entropy term (gce: its gradient
// for sample n, see ce_gradient) adds a gce w (Q p_c - q_c): D becomes D - gce Q, the target
// class's term gains -a gce w (1 - eps) c_t and every class -a gce w (eps / C) c_c.
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::backward_softmax_map(Tile<A>& tl, int64_t n, int64_t m,
                                                              int cnt, const A* gI, const A* gP,
                                                              A gce, ItemError& err) const {
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
template <class A, class S, class TT, bool CLASS_MAP>
template <bool SMOOTHING, class O>
inline void Kernel<A, S, TT, CLASS_MAP>::softmax_map_row(const Tile<A>& tl, int64_t c, A g,
                                                         O* __restrict__ out) const {
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

}  // namespace
}  // namespace SOFTIOU_CPU_NS
}  // namespace cpu
}  // namespace softiou
