// After the statistics pass: the fixed-order sum of the warps' partial sums, the finalize step
// in one block, and the cross-entropy's per-sample sums. Deterministic, no atomics.
#pragma once

#include "common.cuh"

namespace softiou {
namespace cuda {
namespace detail {

// ---------------------------------------------------------------------------------------------
// Second stage: out[r][q] = sum_e partials[base(r) + e * sE + q], in a fixed order: each thread
// adds a fixed strided subset, then a fixed tree in shared memory.
// ---------------------------------------------------------------------------------------------
template <class A>
__global__ void __launch_bounds__(kThreads) reduce_kernel(const A* partials, A* out, int64_t C,
                                                          int64_t sN, int64_t sC, int64_t sE,
                                                          int64_t E) {
  __shared__ A sm[3][kThreads];
  const int64_t r = blockIdx.x;
  const A* base = partials + (r / C) * sN + (r % C) * sC;
  A s0 = A(0), s1 = A(0), s2 = A(0);
  for (int64_t e = threadIdx.x; e < E; e += kThreads) {
    s0 += base[e * sE + 0];
    s1 += base[e * sE + 1];
    s2 += base[e * sE + 2];
  }
  sm[0][threadIdx.x] = s0;
  sm[1][threadIdx.x] = s1;
  sm[2][threadIdx.x] = s2;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      sm[0][threadIdx.x] += sm[0][threadIdx.x + half];
      sm[1][threadIdx.x] += sm[1][threadIdx.x + half];
      sm[2][threadIdx.x] += sm[2][threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x < 3) out[r * 3 + threadIdx.x] = sm[threadIdx.x][0];
}

// ---------------------------------------------------------------------------------------------
// The finalize step (finalize.h) in one block: each thread takes pairs i = tid, tid + kThreads,
// ...; the loss and the weights are added in a fixed tree; for the mean every thread then divides
// the coefficients of its own pairs. Deterministic, no atomics.
// ---------------------------------------------------------------------------------------------
template <class A>
__global__ void __launch_bounds__(kThreads) finalize_kernel(const A* stats, int64_t s_n,
                                                            int64_t s_c, const FinalizeArgs f,
                                                            A* loss, A* coef, A* coef_ce) {
  __shared__ A sh_total[kThreads], sh_wsum[kThreads], sh_num[kThreads], sh_den[kThreads];
  const int64_t C = f.C, pairs = f.rows() * C;
  A total = A(0), wsum = A(0), num = A(0), den = A(0);
  if (f.ce != nullptr) {  // the cross-entropy term's sums: strided per thread, then the tree
    for (int64_t i = threadIdx.x; i < f.ce_count; i += kThreads) {
      num += static_cast<const A*>(f.ce)[i * f.ce_sN];
      den += static_cast<const A*>(f.ce)[i * f.ce_sN + 1];
    }
  }
  if (f.generalized()) {  // one loss per row, each of weight 1 (SPEC section 10)
    for (int64_t r = threadIdx.x; r < f.rows(); r += kThreads) {
      const A l = generalized_row(stats, s_n, s_c, f, r, coef + r * C * 3);
      if (f.options.reduction == Reduction::kNone) loss[r] = l;
      total += l;
      wsum += A(1);
    }
  } else {
    for (int64_t i = threadIdx.x; i < pairs; i += kThreads) {
      const int64_t r = i / C, c = i % C;
      A I, P, Y;
      pair_stats(stats, s_n, s_c, f, r, c, I, P, Y);
      const PairTerms<A> t = pair_terms(I, P, Y, f);
      const A w = pair_weight(f, c, Y);
      const A wl = w * t.loss;
      if (f.options.reduction == Reduction::kNone) loss[i] = wl;
      total += wl;
      wsum += pair_divisor(f, c, Y);
      A* k = coef + i * 3;
      k[0] = w * t.dI;
      k[1] = w * t.dP;
      k[2] = w * t.dY;
    }
  }
  if (threadIdx.x == 0) coef_ce[0] = coef_ce[1] = A(0);
  sh_total[threadIdx.x] = total;
  sh_wsum[threadIdx.x] = wsum;
  sh_num[threadIdx.x] = num;
  sh_den[threadIdx.x] = den;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      sh_total[threadIdx.x] += sh_total[threadIdx.x + half];
      sh_wsum[threadIdx.x] += sh_wsum[threadIdx.x + half];
      sh_num[threadIdx.x] += sh_num[threadIdx.x + half];
      sh_den[threadIdx.x] += sh_den[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (f.options.reduction == Reduction::kNone) return;
  if (f.options.reduction ==
      Reduction::kMean) {  // mean over the kept pairs (or rows); none kept: 0
    const A denom = sh_wsum[0] > A(0) ? sh_wsum[0] : A(1);
    if (threadIdx.x == 0) loss[0] = sh_total[0] / denom;
    const A inv = A(1) / denom;
    for (int64_t i = threadIdx.x; i < pairs; i += kThreads) {
      coef[i * 3 + 0] *= inv;
      coef[i * 3 + 1] *= inv;
      coef[i * 3 + 2] *= inv;
    }
  } else if (threadIdx.x == 0) {
    loss[0] = sh_total[0];
  }
  if (f.ce != nullptr && threadIdx.x == 0) {
    add_cross_entropy(sh_num[0], sh_den[0], f, loss, coef_ce);
  }
}

// The cross-entropy term's sums per sample: out[n] = the sum of sample n's per_sample entries
// (num, den) at part[(n * per_sample + e) * stride], strided per thread then a fixed tree.
template <class A>
__global__ void __launch_bounds__(kThreads) ce_reduce_kernel(const A* part, int64_t per_sample,
                                                             int64_t stride, A* out) {
  __shared__ A sh_num[kThreads], sh_den[kThreads];
  const int64_t n = blockIdx.x;
  A num = A(0), den = A(0);
  for (int64_t e = threadIdx.x; e < per_sample; e += kThreads) {
    num += part[(n * per_sample + e) * stride];
    den += part[(n * per_sample + e) * stride + 1];
  }
  sh_num[threadIdx.x] = num;
  sh_den[threadIdx.x] = den;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      sh_num[threadIdx.x] += sh_num[threadIdx.x + half];
      sh_den[threadIdx.x] += sh_den[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[n * 2 + 0] = sh_num[0];
    out[n * 2 + 1] = sh_den[0];
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace softiou
