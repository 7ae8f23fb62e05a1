// The hard counts of a tile (SPEC section 11), added to its work item's row of counts when the
// statistics pass is asked for them: per class [tp, predicted, target, kept].
//
// The prediction is made from the raw input, never from the probabilities (sharpness and the
// rounding of exp must not move it): multiclass, the first maximal class (torch.argmax's choice on
// ties); binary/multilabel, x > count_threshold. The tile's rows were read by prepare() just
// before: the second read is from L1, so the pass still reads the input from memory once. The
// target comes from the tile's buffers (cls and pv for a class map, Yb and Vb per element).
// Counts are integers: exact, and in any order the same.
// Part of the CPU kernels (tile.h); included once per instruction set by kernels_impl.h.
#ifndef SOFTIOU_CPU_NS
#error "define SOFTIOU_CPU_NS before including stat_scores.h"
#endif

namespace softiou {
namespace cpu {
namespace SOFTIOU_CPU_NS {
namespace {

// Multiclass: each pixel's predicted class (the first maximal x over the classes) and its target
// class (the class map's, or the first maximal y of a dense target), then one increment per kept
// pixel and counter. Per element the cost is the argmax's compare and two selects.
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::count_classes(const Tile<A>& tl, const S* xp, int cnt,
                                                       int64_t* __restrict__ counts) const {
  int32_t pred[kTile], tgt[kTile];
  A best[kTile];
  const int64_t sC = a.x_sC, sM = a.x_sM;
  const bool dense_row = sM == 1 && cnt == kTile;
  for (int64_t c = 0; c < C; ++c) {
    const S* row = xp + c * sC;
    const int32_t cc = int32_t(c);
    A* __restrict__ b = best;
    int32_t* __restrict__ p = pred;
    if (c == 0) {
      for (int t = 0; t < kTile; ++t) {
        b[t] = t < cnt ? to_acc<A>(row[dense_row ? t : t * sM]) : A(0);
        p[t] = 0;
      }
    } else if (dense_row) {
      for (int t = 0; t < kTile; ++t) {
        const A v = to_acc<A>(row[t]);
        const bool above = v > b[t];  // strict: the first maximal class stays
        b[t] = above ? v : b[t];
        p[t] = above ? cc : p[t];
      }
    } else {
      for (int t = 0; t < cnt; ++t) {
        const A v = to_acc<A>(row[t * sM]);
        const bool above = v > b[t];
        b[t] = above ? v : b[t];
        p[t] = above ? cc : p[t];
      }
    }
  }
  if constexpr (CLASS_MAP) {
    for (int t = 0; t < kTile; ++t) tgt[t] = tl.cls[t];  // -1 where the pixel is not kept
  } else {  // a dense target's first maximal class, where the pixel is kept
    const A* y0 = tl.Yb;
    for (int t = 0; t < kTile; ++t) {
      best[t] = y0[t];
      tgt[t] = 0;
    }
    for (int64_t c = 1; c < C; ++c) {
      const A* y = tl.Yb + c * kTile;
      for (int t = 0; t < kTile; ++t) {
        const bool above = y[t] > best[t];
        best[t] = above ? y[t] : best[t];
        tgt[t] = above ? int32_t(c) : tgt[t];
      }
    }
    for (int t = 0; t < kTile; ++t) tgt[t] = tl.Vb[t] != A(0) ? tgt[t] : int32_t(-1);
  }
  int64_t kept = 0;
  for (int t = 0; t < kTile; ++t) {
    const int32_t y = tgt[t];
    if (y < 0) continue;
    const int32_t x = pred[t];
    counts[int64_t(x) * 4 + 1] += 1;
    counts[int64_t(y) * 4 + 2] += 1;
    counts[int64_t(y) * 4 + 0] += x == y ? 1 : 0;
    ++kept;
  }
  for (int64_t c = 0; c < C; ++c) counts[c * 4 + 3] += kept;
}

// Binary/multilabel: per element, predicted where x > count_threshold, target where y > 0.5
// (an integer target's y is 0 or 1), counted where the element is kept.
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::count_elements(const Tile<A>& tl, const S* xp, int cnt,
                                                        int64_t* __restrict__ counts) const {
  const A thr = A(a.count_threshold);
  const int64_t sC = a.x_sC, sM = a.x_sM;
  for (int64_t c = 0; c < C; ++c) {
    const S* row = xp + c * sC;
    int32_t tp = 0, predicted = 0, target_n = 0, kept = 0;
    for (int t = 0; t < cnt; ++t) {
      const bool v = valid(tl, c, t) != A(0);
      const bool x = to_acc<A>(row[t * sM]) > thr;
      const bool y = target(tl, c, t) > A(0.5);
      tp += int32_t(v & x & y);
      predicted += int32_t(v & x);
      target_n += int32_t(v & y);
      kept += int32_t(v);
    }
    counts[c * 4 + 0] += tp;
    counts[c * 4 + 1] += predicted;
    counts[c * 4 + 2] += target_n;
    counts[c * 4 + 3] += kept;
  }
}

// The counts of one tile (sample n, pixels [m, m + cnt)), after prepare() or
// load_weight_target() filled its target.
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::count_tile(const Tile<A>& tl, int64_t n, int64_t m,
                                                    int cnt, int64_t* counts) const {
  const S* xp = static_cast<const S*>(a.x) + n * a.x_sN + m * a.x_sM;
  if (a.options.mode == Mode::kMulticlass) {
    count_classes(tl, xp, cnt, counts);
  } else {
    count_elements(tl, xp, cnt, counts);
  }
}

}  // namespace
}  // namespace SOFTIOU_CPU_NS
}  // namespace cpu
}  // namespace softiou
