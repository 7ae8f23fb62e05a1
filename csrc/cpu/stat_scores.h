// The hard counts of a tile (SPEC section 11), added to its work item's row of counts when the
// statistics pass is asked for them: per class [tp, predicted, target, kept].
//
// The prediction is made from the raw input, never from the probabilities (sharpness and the
// rounding of exp must not move it): multiclass, the first maximal class (torch.argmax's choice on
// ties); binary/multilabel, x > count_threshold. The multiclass prediction of a tile of
// contiguous logits comes with the softmax's maximum pass (softmax.h), on the same read; elsewhere
// the tile's rows are read again right after prepare() read them. The target comes from the
// tile's buffers (cls and pv for a class map, Yb and Vb per element).
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
// class (the class map's, or the first maximal y of a dense target), then one increment per
// pixel in its confusion cell (confusion not null: C <= kConfusionClasses), or else one per kept
// pixel and counter of the rows. The prediction comes with the softmax's maximum pass where that
// read the tile in place (softmax.h: no second read of the input); otherwise it is found here, a
// compare and two selects per element.
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::count_classes(const Tile<A>& tl, const S* xp, int cnt,
                                                       int64_t* __restrict__ counts,
                                                       int32_t* __restrict__ confusion) const {
  int32_t own_pred[kTile], tgt[kTile];
  A best[kTile];
  const int64_t sC = a.x_sC, sM = a.x_sM;
  const bool dense_row = sM == 1 && cnt == kTile;
  // the softmax's maximum pass found the prediction on its read (softmax.h), or it is found here
  const int32_t* pred = tl.has_pred ? tl.pred : own_pred;
  for (int64_t c = 0; !tl.has_pred && c < C; ++c) {
    const S* row = xp + c * sC;
    const int32_t cc = int32_t(c);
    A* __restrict__ b = best;
    int32_t* __restrict__ p = own_pred;
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
  // pixel t to copy t % kCountCopies; a pixel not kept (or past the tile's end) to the last cell
  // of the confusion matrix, or to row C of the rows
  static_assert(kTile % kCountCopies == 0, "whole rounds of copies per tile");
  if (confusion != nullptr) {  // one increment per pixel, in its (predicted, target) cell
    // the cells' offsets first, in vectors, then the increments: no branch and no index
    // arithmetic between two read-modify-writes
    const int32_t side = int32_t(C + 1), area = side * side;
    int32_t cell[kTile];
    for (int t = 0; t < kTile; ++t) {
      const bool keep = tgt[t] >= 0 && t < cnt;
      cell[t] = (keep ? pred[t] * side + tgt[t] : area - 1) + (t % kCountCopies) * area;
    }
    for (int t = 0; t < kTile; ++t) confusion[cell[t]] += 1;
    return;
  }
  const int64_t copy = (C + 1) * 4;
  int64_t kept = 0;
  for (int t = 0; t < kTile; t += kCountCopies) {
    for (int u = 0; u < kCountCopies; ++u) {
      const bool keep = tgt[t + u] >= 0 && t + u < cnt;
      const int64_t y = keep ? tgt[t + u] : C, x = keep ? pred[t + u] : C;
      int64_t* q = counts + u * copy;
      q[x * 4 + 1] += 1;
      q[y * 4 + 2] += 1;
      q[y * 4 + 0] += x == y;
      kept += keep;
    }
  }
  counts[C * 4 + 3] += kept;  // copy 0's row C: the item's kept pixels, finish_counts spreads them
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

// The confusion matrices' cells into copy 0's rows (the diagonal to tp, a row to predicted, a
// column to target, every cell of a kept pixel to kept), and zeroed: at the end of an item, and
// before an int32 cell could overflow.
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::fold_confusion(int32_t* confusion,
                                                        int64_t* counts) const {
  const int64_t side = C + 1, area = side * side;
  int64_t kept = 0;
  for (int64_t x = 0; x < C; ++x) {
    for (int64_t y = 0; y < C; ++y) {
      int64_t v = 0;
      for (int u = 0; u < kCountCopies; ++u) v += confusion[u * area + x * side + y];
      counts[x * 4 + 0] += x == y ? v : 0;
      counts[x * 4 + 1] += v;
      counts[y * 4 + 2] += v;
      kept += v;
    }
  }
  counts[C * 4 + 3] += kept;
  for (int64_t i = 0; i < kCountCopies * area; ++i) confusion[i] = 0;
}

// At the end of an item: a multiclass pixel kept counts in every class (copy 0's row C holds how
// many there were).
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::finish_counts(int64_t* counts) const {
  if (a.options.mode != Mode::kMulticlass) return;
  for (int64_t c = 0; c < C; ++c) counts[c * 4 + 3] = counts[C * 4 + 3];
}

// The counts of one tile (sample n, pixels [m, m + cnt)), after prepare() or
// load_weight_target() filled its target; confusion: the thread's confusion matrices, or null
// (the rows then).
template <class A, class S, class TT, bool CLASS_MAP>
inline void Kernel<A, S, TT, CLASS_MAP>::count_tile(const Tile<A>& tl, int64_t n, int64_t m,
                                                    int cnt, int64_t* counts,
                                                    int32_t* confusion) const {
  const S* xp = static_cast<const S*>(a.x) + n * a.x_sN + m * a.x_sM;
  if (a.options.mode == Mode::kMulticlass) {
    count_classes(tl, xp, cnt, counts, confusion);
  } else {
    count_elements(tl, xp, cnt, counts);
  }
}

}  // namespace
}  // namespace SOFTIOU_CPU_NS
}  // namespace cpu
}  // namespace softiou
