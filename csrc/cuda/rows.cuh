// The binary / multilabel kernel: elementwise over the (sample, class) rows; statistics (FWD)
// or gradient.
#pragma once

#include "common.cuh"

namespace softiou {
namespace cuda {
namespace detail {

// ---------------------------------------------------------------------------------------------
// Binary / multilabel: elementwise over the (sample, class) rows
// ---------------------------------------------------------------------------------------------
// The pass of row_kernel and row_counting_kernel (COUNT: the statistics with the counts).
template <class S, class TT, int V, bool FWD, bool CE, bool COUNT>
__device__ __forceinline__ void row_pass(const Launch& L) {
  static_assert(!COUNT || FWD, "the counts: a statistics pass");
  using A = typename Acc<S>::type;
  const KernelArgs& a = L.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r = blockIdx.x / L.blocks_per_row, b = blockIdx.x % L.blocks_per_row;
  const int64_t n = r / a.C, c = r % a.C;
  const int64_t begin = b * L.chunk;
  const int64_t end = begin + L.chunk < L.groups ? begin + L.chunk : L.groups;
  const A sharp = A(a.options.sharpness);
  const bool from_logits = a.options.from_logits, squared = a.options.squared;
  const bool use_min = a.options.intersection == Intersection::kMin;
  const bool sigmoid = a.prob == Prob::kSigmoid;
  // an integer multilabel target without the channel dim: a class map (SPEC section 10)
  const bool class_map = a.class_map;
  A accI = A(0), accP = A(0), accY = A(0), gI = A(0), gP = A(0);
  if (!FWD) pair_gradient(a, n, c, gI, gP);
  // the binary cross-entropy term (SPEC section 9): forward sums, backward gradient
  constexpr bool ce = CE;
  const A gce = FWD || !CE ? A(0) : ce_gradient<A>(a, n);
  const A cwc = CE ? ce_class_weight<A>(a, c) : A(0);
  const A pw = A(a.options.ce_pos_weight);
  A ce_num = A(0), ce_den = A(0);
  // the hard counts (COUNT, SPEC section 11; launch.cuh: counting_pass): this lane's tp,
  // predicted, target and kept elements (fewer than 2^32 elements a block)
  const A thr = A(a.count_threshold);
  unsigned n_tp = 0, n_pred = 0, n_true = 0, n_kept = 0;
  const S* xs = static_cast<const S*>(a.x) + n * a.x_sN + c * a.x_sC;
  const TT* ts = static_cast<const TT*>(a.t) + n * a.t_sN + (class_map ? 0 : c * a.t_sC);

  for (int64_t base = begin; base < end; base += kThreads) {
    const int64_t gi = base + threadIdx.x;
    if (gi >= end) break;  // no shuffles inside the loop
    const int64_t m0 = gi * V;
    const int cnt = int(a.M - m0 < V ? a.M - m0 : V);
    unsigned bad = 0;
    A w[V];
    load_weights<V>(L, n, m0, cnt, w, bad);
    TT traw[V];
    load_group<V>(ts + m0 * a.t_sM, a.t_sM, L.vt, cnt, traw);
    S xraw[V];
    load_group<V>(xs + m0 * a.x_sM, a.x_sM, L.vx, cnt, xraw);
    S out[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      bool ok = v < cnt;
      A y;
      if constexpr (IsInt<TT>::value) {
        const int64_t iv = int64_t(traw[v]);
        const bool ignored = is_ignored(a, iv);
        if (class_map) {  // y = [t == c]
          if (ok && !ignored && (iv < 0 || iv >= a.C)) bad |= kBadClass;
          ok = ok && !ignored;
          y = ok && iv == c ? A(1) : A(0);
        } else {
          if (ok && !ignored && iv != 0 && iv != 1) bad |= kBadBinary;
          ok = ok && !ignored;
          y = ok ? A(iv) : A(0);
        }
      } else {
        y = to_acc<A>(traw[v]);
        if (is_ignored(a, y)) {  // per element (SPEC section 10)
          ok = false;
          y = A(0);
        }
        if (outside_unit_interval(y)) bad |= kBadDense;
      }
      const A x = to_acc<A>(xraw[v]);
      if (!from_logits && outside_unit_interval(x)) bad |= kBadProbability;
      A p = x, dp_dx = A(1);
      if (sigmoid) {
        A slope;
        sigmoid_and_slope(sigmoid_arg(x, sharp, from_logits), p, slope);
        dp_dx = slope * sigmoid_arg_dx(x, sharp, from_logits);
      }
      if constexpr (COUNT) {  // the prediction x > thr in input space; y is 0 or 1 or dense
        if (ok) {
          const bool pred = x > thr, truth = y > A(0.5);
          ++n_kept;
          n_pred += pred;
          n_true += truth;
          n_tp += pred && truth;
        }
      }
      if constexpr (FWD) {
        if (ok) {
          accI += w[v] * intersection(p, y, use_min);
          accP += w[v] * power_term(p, squared);
          accY += w[v] * power_term(y, squared);
          if constexpr (ce) {
            const A z = sigmoid_arg(x, sharp, true);
            ce_num += w[v] * cwc * bce_with_logits(z, y, exp_nonpos(z < A(0) ? z : -z), pw);
            ce_den += A(1);
          }
        }
      } else {
        const A gr = ok ? w[v] * grad_p(p, y, gI, gP, use_min, squared) : A(0);
        A d = gr * dp_dx;
        // + a gce w c (lw p - pw y)
        if (CE && ok) d += sharp * gce * w[v] * cwc * bce_with_logits_dz(p, y, pw);
        out[v] = Store<S>::from(d);
      }
    }
    if (bad) report_bad_input(bad);
    if constexpr (!FWD) {
      S* gx = static_cast<S*>(a.grad_x) + n * a.g_sN + c * a.g_sC + m0 * a.g_sM;
      store_group<V>(gx, a.g_sM, L.vg, cnt, out);
    }
  }
  if constexpr (FWD) {
    for (int off = 1; off < 32; off <<= 1) {
      accI += shfl_xor(accI, off);
      accP += shfl_xor(accP, off);
      accY += shfl_xor(accY, off);
      if constexpr (CE) {
        ce_num += shfl_xor(ce_num, off);
        ce_den += shfl_xor(ce_den, off);
      }
    }
    if constexpr (COUNT) {  // integer additions: exact in any order
      for (int off = 1; off < 32; off <<= 1) {
        n_tp += shfl_xor(n_tp, off);
        n_pred += shfl_xor(n_pred, off);
        n_true += shfl_xor(n_true, off);
        n_kept += shfl_xor(n_kept, off);
      }
      if (lane == 0) {
        unsigned long long* q = static_cast<unsigned long long*>(L.counts) + (n * a.C + c) * 4;
        atomicAdd(q + 0, static_cast<unsigned long long>(n_tp));
        atomicAdd(q + 1, static_cast<unsigned long long>(n_pred));
        atomicAdd(q + 2, static_cast<unsigned long long>(n_true));
        atomicAdd(q + 3, static_cast<unsigned long long>(n_kept));
      }
    }
    if (lane == 0) {
      A* out = static_cast<A*>(L.partials) +
               ((r * L.blocks_per_row + b) * kWarps + warp) * partial_row(a.C, false);
      out[0] = accI;
      out[1] = accP;
      out[2] = accY;
      out[3] = ce_num;
      out[4] = ce_den;
    }
  }
}

// Three 256-thread blocks per multiprocessor (at most 80 registers), stated so that ptxas's
// register target is ours: without a bound it chose fewer registers for some instantiations and
// spilled.
constexpr int kRowBlocksPerSM = 3;

template <class S, class TT, int V, bool FWD, bool CE>
__global__ void __launch_bounds__(kThreads, kRowBlocksPerSM) row_kernel(const Launch L) {
  row_pass<S, TT, V, FWD, CE, false>(L);
}

// The binary and multilabel statistics with their hard counts (launch.cuh: counting_pass).
template <class S, class TT, int V, bool CE>
__global__ void __launch_bounds__(kThreads, kRowBlocksPerSM) row_counting_kernel(const Launch L) {
  row_pass<S, TT, V, true, CE, true>(L);
}

}  // namespace detail
}  // namespace cuda
}  // namespace softiou
