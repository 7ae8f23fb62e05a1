// softiou finalize step (SPEC sections 4 and 5): from the per-(sample, class) statistics I, P, Y to
// the scores, the loss of each pair, the reduction, and the coefficients of the gradient
// (d output / d I, d P, d Y of every pair) that the gradient pass reads. Torch-free and
// host/device: the CPU op runs finalize_serial, the CUDA finalize kernel runs pair_terms and
// pair_weight per thread; triton_kernels/kernels.py mirrors them.
#pragma once

#include <cstdint>

#include "softiou_math.h"

namespace softiou {

// The finalize step's options (softiou_cuda/options.py: metric, reduction, classes, ...) and the
// statistics they apply to.
struct FinalizeArgs {
  FinalizeOptions options;
  int64_t N = 0;  // rows of the statistics (samples; 1 after a pooled all-reduce)
  int64_t C = 0;
  const void* class_weight = nullptr;  // [C], accumulation dtype, contiguous; null: weight 1
  // SPEC section 9, the cross-entropy term (ce not null): the loss gains
  // ce_weight * sum_i num_i / sum_i den_i ("mean"; 0 for a zero denominator) or
  // ce_weight * sum_i num_i ("sum"), over the ce_count entries (num_i, den_i) at
  // ce[i * ce_sN + {0, 1}], one per sample; its derivatives in num_i and den_i (the same for
  // every i) go to ce_coef[0] and ce_coef[1].
  const void* ce = nullptr;
  int64_t ce_sN = 0, ce_count = 0;

  // rows of the loss and the coefficients
  SOFTIOU_HD int64_t rows() const { return options.per_image ? N : 1; }
  // the generalized Dice score: one loss per row, over its kept classes
  SOFTIOU_HD bool generalized() const { return options.metric == Metric::kGeneralizedDice; }
  // columns of the loss with reduction="none": one per class, or one per row
  SOFTIOU_HD int64_t loss_cols() const { return generalized() ? 1 : C; }
  // the loss's shape: [] for mean and sum; [rows, cols] per image or [cols] pooled for none.
  // Writes the sizes to `shape` (room for 2), returns the number of dims.
  SOFTIOU_HD int loss_shape(int64_t* shape) const {
    if (options.reduction != Reduction::kNone) return 0;
    if (!options.per_image) {
      shape[0] = loss_cols();
      return 1;
    }
    shape[0] = N;
    shape[1] = loss_cols();
    return 2;
  }
  // the loss has the cross-entropy term (SPEC section 9)
  SOFTIOU_HD bool reads_cross_entropy() const { return options.ce_weight > 0; }
  // the denominators' smoothing: smooth_dr, or smooth where it is not given
  SOFTIOU_HD double denominator_smoothing() const {
    return options.smooth_dr.has ? options.smooth_dr.value : options.smooth;
  }
};

namespace SOFTIOU_MATH_NS {
namespace {

// A score num / den turned into the loss (SPEC sections 4-5: the zero-zero rule, the eps clamp,
// log_loss, gamma) and the loss's derivatives in num and den (for an upstream gradient of 1).
template <class A>
struct ScoreTerms {
  A loss, g_num, g_den;
};

template <class A>
SOFTIOU_HD ScoreTerms<A> score_terms(A num, A den, const FinalizeArgs& f) {
  const A eps = A(f.options.eps);
  // an empty target with an empty prediction scores 1; denominators are clamped at eps
  const bool both_zero = num == A(0) && den == A(0);
  const A den_c = den < eps ? eps : den;  // a NaN passes
  const A score = both_zero ? A(1) : num / den_c;
  A loss, d_score;  // the loss before the focal exponent, and its derivative in the score
  if (f.options.log_loss) {
    const A sc = score < eps ? eps : score;
    loss = -log_(sc);
    d_score = score < eps ? A(0) : A(-1) / sc;
  } else {
    loss = A(1) - score;
    d_score = A(-1);
  }
  if (f.options.gamma !=
      1.0) {  // loss^gamma with a zero (not infinite) derivative where the loss is 0
    const A g = A(f.options.gamma), tiny = tiny_<A>();
    const A lc = loss < tiny ? tiny : loss;
    const A d = loss > A(0) && !(loss < tiny) ? g * pow_(lc, g - A(1)) : A(0);
    loss = loss > A(0) ? pow_(lc, g) : A(0);
    d_score *= d;
  }
  // score = num / den_c: d/dnum = 1/den_c and d/dden = -(score/den_c), written so that at a
  // perfect score (score == 1) the two cancel bitwise in the gradient (SPEC section 8)
  ScoreTerms<A> t;
  t.loss = loss;
  t.g_num = both_zero ? A(0) : d_score / den_c;
  t.g_den = both_zero || den < eps ? A(0) : -(d_score * score) / den_c;
  return t;
}

// The loss of one pair and its derivatives in I, P and Y (for an upstream gradient of 1).
template <class A>
struct PairTerms {
  A loss, dI, dP, dY;
};

template <class A>
SOFTIOU_HD PairTerms<A> pair_terms(A I, A P, A Y, const FinalizeArgs& f) {
  const A s = A(f.options.smooth), sd = A(f.denominator_smoothing());
  A num, den, num_I, den_I, den_P, den_Y;  // numerator, denominator and their derivatives
  switch (f.options.metric) {
    case Metric::kDice:
      num = A(2) * I + s;
      den = P + Y + sd;
      num_I = A(2), den_I = A(0), den_P = A(1), den_Y = A(1);
      break;
    case Metric::kTversky: {
      const A a = A(f.options.alpha), b = A(f.options.beta);
      num = I + s;
      den = I + a * (P - I) + b * (Y - I) + sd;
      num_I = A(1), den_I = A(1) - a - b, den_P = a, den_Y = b;
      break;
    }
    default:  // jaccard: I / (P + Y - I)
      num = I + s;
      den = P + Y - I + sd;
      num_I = A(1), den_I = A(-1), den_P = A(1), den_Y = A(1);
      break;
  }
  const ScoreTerms<A> st = score_terms(num, den, f);
  PairTerms<A> t;
  t.loss = st.loss;
  t.dI = st.g_num * num_I + st.g_den * den_I;
  t.dP = st.g_den * den_P;
  t.dY = st.g_den * den_Y;
  if (f.options.absent == Absent::kZero && !(Y > A(0))) t.loss = t.dI = t.dP = t.dY = A(0);
  return t;
}

// Whether pair (., c) enters the reduction: not a class left out, and with absent="exclude" not
// an absent class.
template <class A>
SOFTIOU_HD bool pair_kept(const FinalizeArgs& f, int64_t c, A Y) {
  bool kept = f.options.include_background || c != 0;
  if (f.options.classes.has) kept = kept && f.options.classes.contains(c);
  if (f.options.absent == Absent::kExclude) kept = kept && Y > A(0);
  return kept;
}

// The weight of pair (., c) in the reduction: 0 for a pair not kept, else class_weight[c] (1
// without).
template <class A>
SOFTIOU_HD A pair_weight(const FinalizeArgs& f, int64_t c, A Y) {
  if (!pair_kept(f, c, Y)) return A(0);
  return f.class_weight == nullptr ? A(1) : static_cast<const A*>(f.class_weight)[c];
}

// The divisor of the mean: the kept pairs' weight, or their number (weighted_mean=False).
template <class A>
SOFTIOU_HD A pair_divisor(const FinalizeArgs& f, int64_t c, A Y) {
  return f.options.weighted_mean ? pair_weight(f, c, Y) : (pair_kept(f, c, Y) ? A(1) : A(0));
}

// I, P, Y of output row r, class c: one row of the statistics, or all of them summed in row order.
template <class A>
SOFTIOU_HD void pair_stats(const A* stats, int64_t s_n, int64_t s_c, const FinalizeArgs& f,
                           int64_t r, int64_t c, A& I, A& P, A& Y) {
  const int64_t n0 = f.options.per_image ? r : 0, n1 = f.options.per_image ? r + 1 : f.N;
  I = P = Y = A(0);
  for (int64_t n = n0; n < n1; ++n) {
    const A* s = stats + n * s_n + c * s_c;
    I += s[0];
    P += s[1];
    Y += s[2];
  }
}

// The cross-entropy term from its sums: adds it to the loss (out[0]) and writes d loss / d num.
template <class A>
SOFTIOU_HD void add_cross_entropy(A num, A den, const FinalizeArgs& f, A* out, A* coef_ce) {
  const A lam = A(f.options.ce_weight);
  if (f.options.reduction == Reduction::kSum) {
    out[0] += lam * num;
    coef_ce[0] = lam;
    coef_ce[1] = A(0);
    return;
  }
  const A d = den > A(0) ? den : A(1);
  out[0] += lam * (num / d);
  coef_ce[0] = lam / d;
  coef_ce[1] = den > A(0) ? -(lam * (num / d)) / d : A(0);
}

// The generalized Dice score's weight of a class from its Y, in float32 as MONAI computes it.
SOFTIOU_HD float generalized_weight(float y, WType w_type) {
  switch (w_type) {
    case WType::kSimple: return 1.0f / y;
    case WType::kUniform: return 1.0f;
    default: return 1.0f / (y * y);
  }
}

// The generalized Dice loss of row r over its kept classes (SPEC section 10), and its
// derivatives in (I, P, Y) of the row's pairs in coef_row[c * 3 + k] (0 for a class left out;
// the weights are constants). The reduction's scaling is the caller's.
template <class A>
SOFTIOU_HD A generalized_row(const A* stats, int64_t s_n, int64_t s_c, const FinalizeArgs& f,
                             int64_t r, A* coef_row) {
  const float inf = __builtin_huge_valf();
  float largest = 0.0f;  // the largest finite weight (0 if none)
  for (int64_t c = 0; c < f.C; ++c) {
    A I, P, Y;
    pair_stats(stats, s_n, s_c, f, r, c, I, P, Y);
    const float w = generalized_weight(float(Y), f.options.w_type);
    if (pair_kept(f, c, Y) && w != inf && w > largest) largest = w;
  }
  A num = A(0), den = A(0);
  for (int64_t c = 0; c < f.C; ++c) {
    A I, P, Y;
    pair_stats(stats, s_n, s_c, f, r, c, I, P, Y);
    if (!pair_kept(f, c, Y)) continue;
    const float w = generalized_weight(float(Y), f.options.w_type);
    const A wa = A(w == inf ? largest : w);
    num += wa * I;
    den += wa * (P + Y);
  }
  const ScoreTerms<A> st =
      score_terms(A(2) * num + A(f.options.smooth), den + A(f.denominator_smoothing()), f);
  for (int64_t c = 0; c < f.C; ++c) {
    A I, P, Y;
    pair_stats(stats, s_n, s_c, f, r, c, I, P, Y);
    A* k = coef_row + c * 3;
    if (!pair_kept(f, c, Y)) {
      k[0] = k[1] = k[2] = A(0);
      continue;
    }
    const float w = generalized_weight(float(Y), f.options.w_type);
    const A wa = A(w == inf ? largest : w);
    k[0] = st.g_num * (A(2) * wa);
    k[1] = st.g_den * wa;
    k[2] = st.g_den * wa;
  }
  return st.loss;
}

// The whole finalize step on one thread, pairs in row-major order. out: the loss ([] for mean and
// sum, [rows][C] for none; the generalized Dice score: [rows][1]); coef: [rows][C][3],
// d out / d (I, P, Y) of every pair (mean: already divided by the mean's divisor); coef_ce: [2],
// d out / d (the cross-entropy's numerator, denominator) of every sample (0 without the term).
template <class A>
inline void finalize_serial(const A* stats, int64_t s_n, int64_t s_c, const FinalizeArgs& f,
                            A* out, A* coef, A* coef_ce) {
  const int64_t R = f.rows(), C = f.C;
  const Reduction reduction = f.options.reduction;
  A total = A(0), wsum = A(0);
  for (int64_t r = 0; r < R; ++r) {
    if (f.generalized()) {  // one loss per row, each of weight 1
      const A l = generalized_row(stats, s_n, s_c, f, r, coef + r * C * 3);
      if (reduction == Reduction::kNone) out[r] = l;
      total += l;
      wsum += A(1);
      continue;
    }
    for (int64_t c = 0; c < C; ++c) {
      A I, P, Y;
      pair_stats(stats, s_n, s_c, f, r, c, I, P, Y);
      const PairTerms<A> t = pair_terms(I, P, Y, f);
      const A w = pair_weight(f, c, Y);
      const A wl = w * t.loss;
      if (reduction == Reduction::kNone) out[r * C + c] = wl;
      total += wl;
      wsum += pair_divisor(f, c, Y);
      A* k = coef + (r * C + c) * 3;
      k[0] = w * t.dI;
      k[1] = w * t.dP;
      k[2] = w * t.dY;
    }
  }
  coef_ce[0] = coef_ce[1] = A(0);
  if (reduction == Reduction::kNone) return;
  if (reduction == Reduction::kSum) {
    out[0] = total;
  } else {  // mean over the kept pairs; no kept pair: 0 (and a zero gradient)
    const A denom = wsum > A(0) ? wsum : A(1);
    out[0] = total / denom;
    const A inv = A(1) / denom;
    for (int64_t i = 0; i < R * C * 3; ++i) coef[i] *= inv;
  }
  if (f.ce != nullptr) {
    A num = A(0), den = A(0);
    for (int64_t i = 0; i < f.ce_count; ++i) {
      num += static_cast<const A*>(f.ce)[i * f.ce_sN];
      den += static_cast<const A*>(f.ce)[i * f.ce_sN + 1];
    }
    add_cross_entropy(num, den, f, out, coef_ce);
  }
}

}  // namespace
}  // namespace SOFTIOU_MATH_NS
}  // namespace softiou
