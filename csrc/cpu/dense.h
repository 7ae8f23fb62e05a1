// Per-element targets through the tile buffers (dense targets; probabilities; a class map under
// a sigmoid): the statistics of a tile, the gradient of its rows, and the rows written back.
// Part of the CPU kernels (tile.h); included once per instruction set by kernels_impl.h.
#ifndef SOFTIOU_CPU_NS
#error "define SOFTIOU_CPU_NS before including dense.h"
#endif

namespace softiou {
namespace cpu {
namespace SOFTIOU_CPU_NS {
namespace {

using namespace ::softiou::SOFTIOU_MATH_NS;

// The statistics of one tile with a target per element: I, P and Y per lane. The options are
// template arguments and the rows restrict locals, so that the loop vectorises (with the
// options read at run time it stayed scalar).
template <class A, class S, class TT, bool CLASS_MAP>
template <bool USE_MIN, bool SQUARED>
inline void Kernel<A, S, TT, CLASS_MAP>::dense_sums(const Tile<A>& tl, A* __restrict__ accI,
                                                    A* __restrict__ accP,
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

// The tile path's g = dL/dp of every row of the tile (G, [C][kTile]), 0 where an element is
// not kept. The options are template arguments, as in dense_sums (read at run time, both
// variants would be computed and blended per element); the rows restrict locals, so that the loops
// vectorise.
template <class A, class S, class TT, bool CLASS_MAP>
template <bool USE_MIN, bool SQUARED>
inline void Kernel<A, S, TT, CLASS_MAP>::grad_rows(const Tile<A>& tl, int64_t n, A* G) const {
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

// Writes rows [C][kTile] of dx (accumulation dtype) to the gradient at (n, m).
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::store_rows(const A* dx, int64_t n, int64_t m,
                                                    int cnt) const {
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

}  // namespace
}  // namespace SOFTIOU_CPU_NS
}  // namespace cpu
}  // namespace softiou
