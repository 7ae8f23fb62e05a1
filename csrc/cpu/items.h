// The work items: the statistics (stats) and the gradient (backward) of the pixels an item
// covers, tile by tile, through the path that fits the call (class_map.h, dense.h,
// sigmoid_rows.h).
// Part of the CPU kernels (tile.h); included once per instruction set by kernels_impl.h.
#ifndef SOFTIOU_CPU_NS
#error "define SOFTIOU_CPU_NS before including items.h"
#endif

namespace softiou {
namespace cpu {
namespace SOFTIOU_CPU_NS {
namespace {

using namespace ::softiou::SOFTIOU_MATH_NS;

template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::stats(int64_t chunk, int64_t ib, int64_t ie, A* partials,
                                               A* scratch, ItemError* errors) const {
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
  // the confusion matrices (kernels.h: confusion_elems), zeroed once: each fold zeroes them
  int32_t* confusion = nullptr;
  if (a.counts != nullptr && a.options.mode == Mode::kMulticlass && confusion_elems(C) > 0) {
    confusion = reinterpret_cast<int32_t*>(tl.D + C * kTile);
    for (int64_t i = 0; i < confusion_elems(C); ++i) confusion[i] = 0;
  }
  for (int64_t item = ib; item < ie; ++item) {
    const int64_t n = item / K, k = item % K;
    const int64_t m_begin = k * chunk, m_end = min64(a.M, m_begin + chunk);
    int64_t m_tiles = m_begin;  // where the tile loop starts (m_end: nothing left for it)
    for (int64_t i = 0; i < C * kTile; ++i) accI[i] = accP[i] = accY[i] = A(0);
    A ce_num = A(0), ce_den = A(0);  // the cross-entropy term, added tile by tile
    ItemError err;
    // the hard counts of the item (SPEC section 11), where asked: its rows (counts_row), and
    // for a multiclass call of few classes the thread's confusion matrices (kernels.h), zero
    // between items
    int64_t* counts = a.counts == nullptr ? nullptr : a.counts + item * counts_row(C);
    if (counts != nullptr) {
      for (int64_t i = 0; i < counts_row(C); ++i) counts[i] = 0;
    }
    int64_t since_fold = 0;  // pixels in the confusion matrices
    const auto count = [&](const Tile<A>& t, int64_t n2, int64_t m2, int cnt) {
      count_tile(t, n2, m2, cnt, counts, confusion);
      // (each int32 cell holds fewer than 2^30 pixels)
      if (confusion != nullptr && (since_fold += cnt) >= (int64_t(1) << 30)) {
        fold_confusion(confusion, counts);
        since_fold = 0;
      }
    };
    // (the counts read the tile's target buffers, which the fused sigmoid rows do not fill: the
    // tiles below compute the same sums in the same order)
    if (fused_sigmoid(false) && !ce && counts == nullptr) {
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
        if (counts != nullptr) count(tl, n, m, cnt);
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
      if (counts != nullptr) count(tl, n, m, cnt);
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
    if (confusion != nullptr) fold_confusion(confusion, counts);
    if (counts != nullptr) finish_counts(counts);
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

template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::backward(int64_t chunk, int64_t ib, int64_t ie, A* scratch,
                                                  ItemError* errors) const {
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

}  // namespace
}  // namespace SOFTIOU_CPU_NS
}  // namespace cpu
}  // namespace softiou
