// The multiclass kernels: one pass over a sample's pixels with all the classes of a pixel in the
// registers of a group of lanes (pixel_kernel), and the wide softmax's prepass for more classes
// than those registers hold (pixel_prepass). A class map or a dense target; statistics
// (FWD) or gradient.
#pragma once

#include "common.cuh"

namespace softiou {
namespace cuda {
namespace detail {

// ---------------------------------------------------------------------------------------------
// Multiclass: one pass over a sample's pixels, all classes of a pixel in the registers of K lanes
// ---------------------------------------------------------------------------------------------
// The pass of pixel_kernel and pixel_counting_kernel (COUNT: the statistics with the counts).
// BASIC: the common case (launch.cuh: basic_case) known at compile time, a class map's softmax of
// logits in one class window without pixel weights, with the product intersection and unsquared
// terms: the other paths' code is not in the kernel, nor its registers (the general kernel
// serves the rest).
template <class S, class TT, int V, bool CLASS_MAP, bool FWD, bool CE, bool COUNT, bool BASIC>
__device__ __forceinline__ void pixel_pass(const Launch& L) {
  static_assert(!COUNT || (FWD && CLASS_MAP), "the counts: a statistics pass of a class map");
  static_assert(!BASIC || CLASS_MAP, "the basic case: a class map");
  using A = typename Acc<S>::type;
  constexpr int CPT = kClassesPerLane<V, BASIC>;
  const KernelArgs& a = L.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int K = L.K, G = 32 / K;
  const int j = lane / G, g = lane % G;  // class slot, pixel group within the warp
  const int64_t n = blockIdx.x / L.blocks_per_row, b = blockIdx.x % L.blocks_per_row;
  const int64_t begin = b * L.chunk;
  const int64_t end = begin + L.chunk < L.groups ? begin + L.chunk : L.groups;
  const A sharp = A(a.options.sharpness);
  const bool from_logits = BASIC || a.options.from_logits;
  const bool squared = !BASIC && a.options.squared;
  const bool use_min = !BASIC && a.options.intersection == Intersection::kMin;
  const bool softmax = BASIC || a.prob == Prob::kSoftmax;
  const bool wide = !BASIC && L.pixel != nullptr;
  const int cw = int(L.cw);
  // class of slot k: c0 + j + K*k, present when j + K*k < cw. LIVE(k): slot k holds a class in
  // some lane of the warp; a warp-uniform test, so empty slots cost a branch, not their work
#define SLOT(k) (j + K * (k))
#define LIVE(k) (K * (k) < cw)

  A accI[CPT], accP[CPT], accY[CPT];
#pragma unroll
  for (int k = 0; k < CPT; ++k) accI[k] = accP[k] = accY[k] = A(0);
  // the cross-entropy term (SPEC section 9; softiou_math.h), a template parameter: without it
  // the kernel keeps no register for it. Forward sums, backward gradient.
  constexpr bool ce = CE;
  const A gce = FWD || !CE ? A(0) : ce_gradient<A>(a, n);
  const A ls_keep = A(1) - A(a.options.label_smoothing);
  const A ls_spread = A(a.options.label_smoothing) / A(a.C);
  A ce_num = A(0), ce_den = A(0);
  // the window's per-class constants in shared memory rather than registers per slot (the
  // compiler hoists them out of the pixel loop): the gradient's two coefficients (backward) and
  // the cross-entropy's class weight. With them the live values fit 128 registers. Read through
  // a volatile pointer once per slot where they are used, so that they are not kept in
  // registers between uses.
  __shared__ A block_g[FWD ? 1 : 2 * 32 * CPT];
  __shared__ A block_cw[CE ? 32 * CPT : 1];
  if constexpr (!FWD || CE) {
    for (int c = threadIdx.x; c < cw; c += blockDim.x) {
      if constexpr (!FWD) pair_gradient(a, n, L.c0 + c, block_g[2 * c], block_g[2 * c + 1]);
      if constexpr (CE) block_cw[c] = ce_class_weight<A>(a, L.c0 + c);
    }
    __syncthreads();
  }
  const volatile A* gIP = block_g;
  const volatile A* cwv = block_cw;
  // the forward's Q = sum_k q_k of a kept pixel with a class map in one window: c_t (1 - eps) +
  // eps / C sum_k c_k from its class t (ce_forward), which spares the per-pixel sums over lanes
  // and their registers (the gradient, which reads Q once per slot, keeps the sums)
  constexpr bool q_of_class = CLASS_MAP && FWD;
  // the window's sum of class weights for that Q (each thread the same order: the same value);
  // 0 without label smoothing, where it is unused
  A cw_sum = A(0);
  if constexpr (CE && q_of_class) {
    if (a.options.label_smoothing != 0.0)
      for (int c = 0; c < cw; ++c) cw_sum += cwv[c];
  }
  // the term's weight of a class of weight ck for pixel v: c_k ((1 - eps) y + eps / C); ck read
  // from shared memory once per slot where it is used (cwv[SLOT(k)])
#define CE_Q(ck, yy) ((ck) * (ls_keep * (yy) + ls_spread))
  const S* xs = static_cast<const S*>(a.x) + n * a.x_sN + L.c0 * a.x_sC;
  // slot k's class row: this lane's first row plus k steps of K rows (the same in every lane),
  // not a 64-bit address per slot and lane that the compiler keeps through the loop.
  const S* xj = xs + j * a.x_sC;
  const int64_t x_step = int64_t(K) * a.x_sC;
#define XROW(k) (xj + (k) * x_step)
  const TT* ts = static_cast<const TT*>(a.t) + n * a.t_sN + (CLASS_MAP ? 0 : L.c0 * a.t_sC);
  // the hard counts of a multiclass class map (COUNT, SPEC section 11; one class window:
  // launch.cuh: counting_pass): per class the block's tp, predicted and target pixels in
  // shared memory (fewer than 2^32 pixels a block), added to L.counts at the end; its kept
  // pixels per lane
  __shared__ unsigned block_counts[COUNT ? 3 * 32 * CPT : 1];
  unsigned kept = 0;
  if constexpr (COUNT) {
    for (int i = threadIdx.x; i < 3 * cw; i += blockDim.x) block_counts[i] = 0u;
    __syncthreads();
  }

  constexpr int WARPS = kPixelThreads<FWD> / 32;
  for (int64_t base = begin; base < end; base += WARPS * G) {
    const int64_t gi = base + warp * G + g;
    const int64_t m0 = gi * V;
    const int cnt = gi < end ? int(a.M - m0 < V ? a.M - m0 : V) : 0;
    unsigned bad = 0;

    A w[V];
    if constexpr (BASIC) {  // no pixel weights: 1, exact in every product
#pragma unroll
      for (int v = 0; v < V; ++v) w[v] = A(1);
    } else {
      load_weights<V>(L, n, m0, cnt, w, bad);
    }

    // the class map's and the input's loads all issued before the first use of either: the
    // class map's compares would otherwise wait for its load before the first logits load
    TT traw[CLASS_MAP ? V : 1];
    if constexpr (CLASS_MAP) load_group<V>(ts + m0 * a.t_sM, a.t_sM, L.vt, cnt, traw);
    A p[CPT][V];  // input -> probabilities, in place
    if constexpr (sizeof(S) == 2) {
      // a 2-byte input: every slot's load before any unpacking (an unpack reads the loaded
      // register: between two slots' loads it would make each wait for the one before)
      Loaded<S, V> xraw[CPT];
      const S* xrow = xj + m0 * a.x_sM;
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
        // an empty slot (SLOT(k) >= cw) reads nothing: a group of no pixels, zeros. Its row
        // address (past the window) is formed but never read. One address stepped from slot to
        // slot: a valid address selected per slot, or each slot's own, is a 64-bit value per
        // slot that the compiler hoists out of the loop and keeps in registers (spills at 128).
        load_group<V>(xrow, a.x_sM, L.vx, SLOT(k) < cw ? cnt : 0, xraw[k]);
        xrow += x_step;
      }
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
#pragma unroll
        for (int v = 0; v < V; ++v) p[k][v] = to_acc<A>(xraw[k].get(v));
      }
    } else {  // float, double: to_acc is no instruction, and nothing waits between the loads
      // the basic kernel steps one address from slot to slot as above, the general kernel forms
      // each slot's: the form with which ptxas fits each kernel in 128 registers with the
      // fewest spills (docs/history.md)
      const S* xrow = xj + m0 * a.x_sM;
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
        S raw[V];
        if (SLOT(k) < cw) {
          if constexpr (BASIC) {
            load_group<V>(xrow, a.x_sM, L.vx, cnt, raw);
          } else {
            load_group<V>(XROW(k) + m0 * a.x_sM, a.x_sM, L.vx, cnt, raw);
          }
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) raw[v] = zero<S>();
        }
        if constexpr (BASIC) xrow += x_step;
#pragma unroll
        for (int v = 0; v < V; ++v) p[k][v] = to_acc<A>(raw[v]);
      }
    }
    // dense target of slot k, pixel v (the class map's is tcls[v] == SLOT(k)), loaded beside
    // the input, Y(k, v): a 2-byte target kept as loaded, two to a 32-bit word (half the
    // registers) and converted where it is used; the others converted at the load
    constexpr bool PACK_Y = sizeof(TT) == 2;
    Loaded<TT, V> ypack[CLASS_MAP || !PACK_Y ? 1 : CPT];
    A y[CLASS_MAP || PACK_Y ? 1 : CPT][V];
    if constexpr (!CLASS_MAP) {
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
        Loaded<TT, V> raw;
        if (SLOT(k) < cw) {
          load_group<V>(ts + j * a.t_sC + k * (int64_t(K) * a.t_sC) + m0 * a.t_sM, a.t_sM, L.vt,
                        cnt, raw);
        } else {
          raw = Loaded<TT, V>{};  // zeros
        }
        if constexpr (PACK_Y) {
          ypack[k] = raw;
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) y[k][v] = to_acc<A>(raw.get(v));
        }
#pragma unroll
        for (int v = 0; v < V; ++v)
          if (outside_unit_interval(to_acc<A>(raw.get(v)))) bad |= kBadDense;
      }
    }
    auto Y = [&](int k, int v) -> A {
      if constexpr (CLASS_MAP) {
        return A(0);  // not called: a class map's y is tcls[v] == SLOT(k)
      } else if constexpr (PACK_Y) {
        return to_acc<A>(ypack[k].get(v));
      } else {
        return y[k][v];
      }
    };
    // class map: the pixel is kept (pv) and its class relative to the window (tcls)
    int tcls[V];
    bool pv[V];
    if constexpr (CLASS_MAP) {
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const int64_t c = int64_t(traw[v]);
        const bool ignored = v >= cnt || is_ignored(a, c);
        if (!ignored && (c < 0 || c >= a.C)) bad |= kBadClass;
        pv[v] = !ignored;
        tcls[v] = int(c - L.c0);
      }
    }
    if constexpr (COUNT) {
      // the first maximal class of each raw pixel (torch.argmax's): this lane's slots in class
      // order, then a butterfly over the pixel's lanes, the lower class on ties. Pixel v is
      // counted by lane j = v mod K.
#pragma unroll
      for (int v = 0; v < V; ++v) {
        A best = neg_inf<A>();
        int cls = INT_MAX;
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
          if (!LIVE(k)) break;
          if (SLOT(k) < cw && (cls == INT_MAX || p[k][v] > best)) {
            best = p[k][v];
            cls = SLOT(k);
          }
        }
        for (int off = G; off < 32; off <<= 1) {
          const A other = shfl_xor(best, off);
          const int other_cls = shfl_xor(cls, off);
          if (other > best || (other == best && other_cls < cls)) {
            best = other;
            cls = other_cls;
          }
        }
        const int y = tcls[v];
        if (j == v % K && pv[v] && y >= 0 && y < cw) {
          ++kept;
          atomicAdd(&block_counts[cls * 3 + 1], 1u);
          atomicAdd(&block_counts[y * 3 + 2], 1u);
          if (cls == y) atomicAdd(&block_counts[y * 3 + 0], 1u);
        }
      }
    }
    if (!from_logits) {
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
#pragma unroll
        for (int v = 0; v < V; ++v)
          if (SLOT(k) < cw && outside_unit_interval(p[k][v])) bad |= kBadProbability;
      }
    }
    A dot_pix[V], ce_Q[V], ce_QL[V];
#pragma unroll
    for (int v = 0; v < V; ++v) dot_pix[v] = ce_Q[v] = ce_QL[v] = A(0);
    // the forward's cross-entropy sums of pixel v, given its lse = shift + log S: once per
    // pixel (slot 0; the first class window of the wide path), added where lse is formed so
    // that no per-pixel lse, Q or QL is kept after it
    auto ce_forward = [&](int v, A lse) {
      if constexpr (FWD && CE) {
        if (j != 0 || L.c0 != 0) return;
        if constexpr (CLASS_MAP) {
          if (!pv[v]) return;
          // the class's weight from shared memory in one window (the wide path's pixels have
          // classes outside this window's)
          const A ct = wide ? ce_class_weight<A>(a, int64_t(tcls[v]) + L.c0) : A(cwv[tcls[v]]);
          const A Q = wide ? ce_Q[v] : ct * ls_keep + ls_spread * cw_sum;
          ce_num += w[v] * (Q * lse - ce_QL[v]);
          ce_den += w[v] * ct;
        } else {
          if (v >= cnt) return;
          ce_num += w[v] * (ce_Q[v] * lse - ce_QL[v]);
          ce_den += w[v];
        }
      }
    };
    // the cross-entropy's Q = sum_k q_k and (forward) QL = sum_k q_k l_k of each pixel: this
    // lane's classes, then a butterfly over the lanes of the pixel (the wide path has them from
    // the prepass). Before the softmax, while p holds the logits (the term takes logits only).
    if (CE && softmax && !wide) {
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
        if (SLOT(k) >= cw) continue;
        const A ck = cwv[SLOT(k)];
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const A yy = CLASS_MAP ? (tcls[v] == SLOT(k) ? A(1) : A(0)) : Y(k, v);
          const A q = CE_Q(ck, yy);
          if (!q_of_class) ce_Q[v] += q;
          if (FWD) ce_QL[v] += q * softmax_arg(p[k][v], sharp, true);
        }
      }
#pragma unroll
      for (int v = 0; v < V; ++v) {
        for (int off = G; off < 32; off <<= 1) {
          if (!q_of_class) ce_Q[v] += shfl_xor(ce_Q[v], off);
          if (FWD) ce_QL[v] += shfl_xor(ce_QL[v], off);
        }
      }
    }
    if (softmax) {
      A mx[V], inv[V];
      if (wide) {
        const A* px = static_cast<const A*>(L.pixel) + (n * a.M + m0) * kPixelValues;
#pragma unroll
        for (int v = 0; v < V; ++v) {
          mx[v] = v < cnt ? px[v * kPixelValues + 0] : A(0);
          inv[v] = v < cnt ? px[v * kPixelValues + 1] : A(0);
          if (!FWD) dot_pix[v] = v < cnt ? px[v * kPixelValues + 2] : A(0);
          if constexpr (ce) {  // the prepass's Q and QL, and lse = shift + log S
            ce_Q[v] = v < cnt ? px[v * kPixelValues + 3] : A(0);
            ce_QL[v] = v < cnt ? px[v * kPixelValues + 4] : A(0);
            ce_forward(v, mx[v] - log_pos(inv[v] > A(0) ? inv[v] : A(1)));
          }
        }
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
          if (!LIVE(k)) break;
#pragma unroll
          for (int v = 0; v < V; ++v)
            p[k][v] = SLOT(k) < cw
                          ? softmax_exp(softmax_arg(p[k][v], sharp, from_logits), mx[v]) * inv[v]
                          : A(0);
        }
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) mx[v] = neg_inf<A>();
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
          if (!LIVE(k)) break;
#pragma unroll
          for (int v = 0; v < V; ++v) {
            p[k][v] = SLOT(k) < cw ? softmax_arg(p[k][v], sharp, from_logits) : neg_inf<A>();
            mx[v] = max_(mx[v], p[k][v]);
          }
        }
#pragma unroll
        for (int v = 0; v < V; ++v) {
          for (int off = G; off < 32; off <<= 1) mx[v] = max_(mx[v], shfl_xor(mx[v], off));
          mx[v] = softmax_shift(mx[v]);
          inv[v] = A(0);
        }
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
          if (!LIVE(k)) break;
#pragma unroll
          for (int v = 0; v < V; ++v) {
            p[k][v] = softmax_exp(p[k][v], mx[v]);
            inv[v] += p[k][v];
          }
        }
#pragma unroll
        for (int v = 0; v < V; ++v) {
          for (int off = G; off < 32; off <<= 1) inv[v] += shfl_xor(inv[v], off);
          if constexpr (ce) ce_forward(v, mx[v] + log_pos(inv[v] > A(0) ? inv[v] : A(1)));
          inv[v] = softmax_inv_sum(inv[v]);
        }
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
          if (!LIVE(k)) break;
#pragma unroll
          for (int v = 0; v < V; ++v) p[k][v] *= inv[v];
        }
      }
    }

    if (bad) report_bad_input(bad);

    if constexpr (FWD) {
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
#pragma unroll
        for (int v = 0; v < V; ++v) {
          if constexpr (CLASS_MAP) {
            // y is one-hot: min(p, y) = p*y, y^2 = y, and only the target class takes I and Y
            const A wp = w[v] * p[k][v];
            if (SLOT(k) < cw && pv[v]) accP[k] += squared ? wp * p[k][v] : wp;
            if (pv[v] && tcls[v] == SLOT(k)) {
              accI[k] += wp;
              accY[k] += w[v];
            }
          } else {
            if (SLOT(k) < cw && v < cnt) {
              const A yy = Y(k, v);
              accI[k] += w[v] * intersection(p[k][v], yy, use_min);
              accP[k] += w[v] * power_term(p[k][v], squared);
              accY[k] += w[v] * power_term(yy, squared);
            }
          }
        }
      }
    } else {
      // g = dL/dp is cheap: computed once for sum_c p_c g_c and again for the output, so that
      // it needs no registers of its own. gi, gp: slot k's coefficients, read from shared
      // memory once per slot at each of the two uses
#define GRAD(k, v, gi, gp)                                                                  \
  ((SLOT(k) < cw && (CLASS_MAP ? pv[v] : v < cnt))                                         \
       ? w[v] * grad_p(p[k][v], CLASS_MAP ? (tcls[v] == SLOT(k) ? A(1) : A(0)) : Y(k, v),  \
                       gi, gp, use_min, squared)                                            \
       : A(0))
      A dot[V];
#pragma unroll
      for (int v = 0; v < V; ++v) dot[v] = A(0);
      if (softmax) {
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
          if (!LIVE(k)) break;
          const A gi = gIP[2 * SLOT(k)], gp = gIP[2 * SLOT(k) + 1];
#pragma unroll
          for (int v = 0; v < V; ++v) dot[v] += p[k][v] * GRAD(k, v, gi, gp);
        }
#pragma unroll
        for (int v = 0; v < V; ++v) {
          if (wide) {
            dot[v] = dot_pix[v];
          } else {
            for (int off = G; off < 32; off <<= 1) dot[v] += shfl_xor(dot[v], off);
          }
        }
      }
      S* gx = static_cast<S*>(a.grad_x) + n * a.g_sN + (L.c0 + j) * a.g_sC + m0 * a.g_sM;
      const int64_t g_step = int64_t(K) * a.g_sC;
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (!LIVE(k)) break;
        if (SLOT(k) >= cw) continue;
        A fac[V];
#pragma unroll
        for (int v = 0; v < V; ++v) fac[v] = sharp;
        if (softmax && !from_logits) {  // dl/dx = a/x: read x again (L1/L2), probability form only
          S raw[V];
          load_group<V>(XROW(k) + m0 * a.x_sM, a.x_sM, L.vx, cnt, raw);
#pragma unroll
          for (int v = 0; v < V; ++v) fac[v] = softmax_arg_dx(to_acc<A>(raw[v]), sharp, false);
        }
        S out[V];
        const A gi = gIP[2 * SLOT(k)], gp = gIP[2 * SLOT(k) + 1], ck = CE ? cwv[SLOT(k)] : A(0);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const A gv = GRAD(k, v, gi, gp);
          A d = softmax ? fac[v] * p[k][v] * (gv - dot[v]) : gv;
          if (CE && softmax && (CLASS_MAP ? pv[v] : v < cnt)) {  // + a gce w (Q p - q)
            const A yy = CLASS_MAP ? (tcls[v] == SLOT(k) ? A(1) : A(0)) : Y(k, v);
            d += sharp * gce * w[v] * (ce_Q[v] * p[k][v] - CE_Q(ck, yy));
          }
          out[v] = Store<S>::from(d);
        }
        store_group<V>(gx + k * g_step, a.g_sM, L.vg, cnt, out);
      }
#undef GRAD
    }
  }

  if constexpr (FWD) {
    // lanes of one class slot -> lane g == 0, then one partial per warp
#pragma unroll
    for (int k = 0; k < CPT; ++k) {
      for (int off = 1; off < G; off <<= 1) {
        accI[k] += shfl_xor(accI[k], off);
        accP[k] += shfl_xor(accP[k], off);
        accY[k] += shfl_xor(accY[k], off);
      }
    }
    // the cross-entropy's sums: lanes of slot 0 hold them; one value per warp
    if constexpr (CE) {
      for (int off = 1; off < 32; off <<= 1) {
        ce_num += shfl_xor(ce_num, off);
        ce_den += shfl_xor(ce_den, off);
      }
    }
    A* row = static_cast<A*>(L.partials) +
             ((n * L.blocks_per_row + b) * kWarps + warp) * partial_row(a.C, true);
    if (g == 0) {
      A* out = row + L.c0 * 3;
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        if (SLOT(k) < cw) {
          out[SLOT(k) * 3 + 0] = accI[k];
          out[SLOT(k) * 3 + 1] = accP[k];
          out[SLOT(k) * 3 + 2] = accY[k];
        }
      }
    }
    if (lane == 0 && L.c0 == 0) {
      row[a.C * 3 + 0] = ce_num;
      row[a.C * 3 + 1] = ce_den;
    }
  }
  if constexpr (COUNT) {  // integer additions: exact in any order
    for (int off = 16; off > 0; off >>= 1) kept += shfl_xor(kept, off);
    __syncthreads();
    unsigned long long* out = static_cast<unsigned long long*>(L.counts) + n * a.C * 4;
    for (int i = threadIdx.x; i < 3 * cw; i += blockDim.x) {
      if (block_counts[i] != 0u) {
        atomicAdd(out + (i / 3) * 4 + i % 3, static_cast<unsigned long long>(block_counts[i]));
      }
    }
    if (lane == 0 && kept != 0u) {  // the warp's kept pixels count in every class
      for (int64_t c = 0; c < a.C; ++c) {
        atomicAdd(out + c * 4 + 3, static_cast<unsigned long long>(kept));
      }
    }
  }
  if constexpr (BASIC) {  // what the basic kernel took as constant is so (launch.cuh:
    // basic_case); checked after the loop, where it holds no register through it
    if (blockIdx.x == 0 && threadIdx.x == 0)
      SOFTIOU_DEVICE_ASSERT(basic_options(a) && L.pixel == nullptr);
  }
#undef CE_Q
#undef XROW
#undef LIVE
#undef SLOT
}

template <class S, class TT, int V, bool CLASS_MAP, bool FWD, bool CE, bool BASIC>
__global__ void __launch_bounds__(kPixelThreads<FWD>, FWD ? 2 : 4) pixel_kernel(const Launch L) {
  pixel_pass<S, TT, V, CLASS_MAP, FWD, CE, false, BASIC>(L);
}

// The statistics of a multiclass class map with its hard counts (launch.cuh: counting_pass).
template <class S, class TT, int V, bool CE, bool BASIC>
__global__ void __launch_bounds__(kPixelThreads<true>, 2) pixel_counting_kernel(const Launch L) {
  pixel_pass<S, TT, V, true, true, CE, true, BASIC>(L);
}

// Softmax over many classes: per pixel, the maximum and 1/sum of the exponentials (online, one
// read), and for the gradient also sum_c p_c g_c, and with the cross-entropy term its Q and
// (forward) QL (a second read). One thread per pixel; kPixelValues values per pixel. Four blocks
// per multiprocessor (at most 64 registers), stated so that ptxas's register target is ours:
// without a bound it chose fewer registers for the float64 cross-entropy forward and spilled.
template <class S, class TT, bool CLASS_MAP, bool FWD, bool CE>
__global__ void __launch_bounds__(kThreads, 4) pixel_prepass(const Launch L) {
  using A = typename Acc<S>::type;
  const KernelArgs& a = L.a;
  const int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= a.N * a.M) return;
  const int64_t n = idx / a.M, m = idx % a.M;
  const A sharp = A(a.options.sharpness);
  const S* xp = static_cast<const S*>(a.x) + n * a.x_sN + m * a.x_sM;
  A mx = neg_inf<A>(), sum = A(0);
  for (int64_t c = 0; c < a.C; ++c) {
    const A l = softmax_arg(to_acc<A>(xp[c * a.x_sC]), sharp, a.options.from_logits);
    const A nm = max_(mx, l);
    // rescale the running sum to the new shift (nothing to rescale while it is 0)
    const A rescale = softmax_exp(softmax_shift(mx), softmax_shift(nm));
    sum = (sum == A(0) ? A(0) : sum * rescale) + softmax_exp(l, softmax_shift(nm));
    mx = nm;
  }
  mx = softmax_shift(mx);
  const A inv = softmax_inv_sum(sum);
  constexpr bool ce = CE;
  A dot = A(0), Q = A(0), QL = A(0);
  if (!FWD || ce) {
    A w = A(1);
    if (a.w != nullptr) w = static_cast<const A*>(a.w)[n * a.w_sN + m * a.w_sM];
    const TT* tp = static_cast<const TT*>(a.t) + n * a.t_sN + m * a.t_sM;
    int64_t tc = -1;
    bool ok = true;
    if constexpr (CLASS_MAP) {
      tc = int64_t(tp[0]);
      ok = !is_ignored(a, tc);
    }
    const A keep = A(1) - A(a.options.label_smoothing);
    const A spread = A(a.options.label_smoothing) / A(a.C);
    for (int64_t c = 0; c < a.C && ok; ++c) {
      const A l = softmax_arg(to_acc<A>(xp[c * a.x_sC]), sharp, a.options.from_logits);
      A yc;
      if constexpr (CLASS_MAP) {
        yc = tc == c ? A(1) : A(0);
      } else {
        yc = to_acc<A>(tp[c * a.t_sC]);
      }
      if (!FWD) {
        A gI, gP;
        pair_gradient(a, n, c, gI, gP);
        const A pc = softmax_exp(l, mx) * inv;
        dot += pc * w * grad_p(pc, yc, gI, gP, a.options.intersection == Intersection::kMin,
                                 a.options.squared);
      }
      if constexpr (ce) {
        const A q = ce_class_weight<A>(a, c) * (keep * yc + spread);
        Q += q;
        QL += q * l;
      }
    }
  }
  A* out = static_cast<A*>(const_cast<void*>(L.pixel)) + idx * kPixelValues;
  out[0] = mx;
  out[1] = inv;
  out[2] = dot;
  out[3] = Q;
  out[4] = QL;
}

}  // namespace detail
}  // namespace cuda
}  // namespace softiou
