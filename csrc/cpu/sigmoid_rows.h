// Per-element targets under a sigmoid of logits (binary, multilabel): one loop per block of kTile
// pixels reads input, target and weight and adds the sums (or writes the gradient), without the
// tile buffers; a block with a bad value goes through the tiles, which report it.
// Part of the CPU kernels (tile.h); included once per instruction set by kernels_impl.h.
#ifndef SOFTIOU_CPU_NS
#error "define SOFTIOU_CPU_NS before including sigmoid_rows.h"
#endif

namespace softiou {
namespace cpu {
namespace SOFTIOU_CPU_NS {
namespace {

using namespace ::softiou::SOFTIOU_MATH_NS;

// One element's terms of I, P and Y, added to its lanes (the tile path's prepare and
// dense_sums in one). The options are template arguments, as in dense_sums.
template <class A, class S, class TT, bool CLASS_MAP>
template <bool USE_MIN, bool SQUARED>
inline void Kernel<A, S, TT, CLASS_MAP>::sum_element(A xv, A y, A v, A wt, A sh, A& ai, A& ap,
                                                     A& ay) {
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
// template arguments, as in sum_element (read at run time, every variant would be computed and
// blended per element).
template <class A, class S, class TT, bool CLASS_MAP>
template <bool USE_MIN, bool SQUARED, bool WITH_CE>
inline A Kernel<A, S, TT, CLASS_MAP>::grad_element(A xv, A y, A v, A wt, A sh, A pos_w, A gI, A gP,
                                                   A gce, A ck) {
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
template <class A, class S, class TT, bool CLASS_MAP>
template <class F>
inline bool Kernel<A, S, TT, CLASS_MAP>::sigmoid_blocks(int64_t n, int64_t m_begin, int64_t m_end,
                                                        F&& f) const {
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
template <class A, class S, class TT, bool CLASS_MAP>
template <bool USE_MIN, bool SQUARED, bool WEIGHTED>
inline bool Kernel<A, S, TT, CLASS_MAP>::sigmoid_sums(int64_t n, int64_t m_begin, int64_t m_end,
                                                      A* accI, A* accP, A* accY) const {
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

// sigmoid_sums with the options as template arguments.
template <class A, class S, class TT, bool CLASS_MAP>
inline bool Kernel<A, S, TT, CLASS_MAP>::fused_sums(int64_t n, int64_t m_begin, int64_t m_end,
                                                    A* accI, A* accP, A* accY) const {
  return with_options([&]<bool USE_MIN, bool SQUARED>() {
    return a.w != nullptr
               ? sigmoid_sums<USE_MIN, SQUARED, true>(n, m_begin, m_end, accI, accP, accY)
               : sigmoid_sums<USE_MIN, SQUARED, false>(n, m_begin, m_end, accI, accP, accY);
  });
}

// The gradient of pixels [m_begin, m_end) of sample n, written to grad_x; false where a value
// is not allowed.
template <class A, class S, class TT, bool CLASS_MAP>
template <bool USE_MIN, bool SQUARED, bool WITH_CE>
inline bool Kernel<A, S, TT, CLASS_MAP>::sigmoid_backward(int64_t n, int64_t m_begin, int64_t m_end,
                                                          A gce) const {
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
template <class A, class S, class TT, bool CLASS_MAP>
inline bool Kernel<A, S, TT, CLASS_MAP>::fused_backward(int64_t n, int64_t m_begin, int64_t m_end,
                                                        A gce) const {
  return with_options([&]<bool USE_MIN, bool SQUARED>() {
    return gce != A(0) ? sigmoid_backward<USE_MIN, SQUARED, true>(n, m_begin, m_end, gce)
                       : sigmoid_backward<USE_MIN, SQUARED, false>(n, m_begin, m_end, gce);
  });
}

}  // namespace
}  // namespace SOFTIOU_CPU_NS
}  // namespace cpu
}  // namespace softiou
