// softiou per-element math: the one source of truth shared by the CPU and CUDA kernels
// (and mirrored line by line in triton_kernels/kernels.py). SPEC sections 2 and 3.
//
// Every function is a host/device inline template over the accumulation type T (float, or
// double for float64 input). They are branch-free selects, so the CPU tile loops that call them
// auto-vectorise.
//
// The functions live in an anonymous namespace inside SOFTIOU_MATH_NS: the CPU kernels are
// compiled once per instruction set (baseline, AVX2, AVX-512) and each copy must keep its own
// inline functions instead of letting the linker merge them across instruction sets.
#pragma once

#if defined(__CUDACC__)
#define SOFTIOU_HD __host__ __device__ __forceinline__
#else
#define SOFTIOU_HD inline __attribute__((always_inline))
#endif

#ifndef SOFTIOU_MATH_NS
#define SOFTIOU_MATH_NS math
#endif

#include <cstdint>
#include <cstring>

#include "kernel_args.h"

namespace softiou {
namespace SOFTIOU_MATH_NS {
namespace {

// ---------------------------------------------------------------------------------------------
// Elementary functions. The kernels only need e^z for z <= 0 (softmax subtracts the maximum,
// sigmoid uses e^-|z|), so no overflow handling is needed. NaN propagates.
// ---------------------------------------------------------------------------------------------
#if defined(__CUDA_ARCH__)
// ex2.approx: 2 instructions, within 2 + 1.2|z| ulp (float accumulation absorbs it)
SOFTIOU_HD float exp_nonpos(float z) { return __expf(z); }
SOFTIOU_HD double exp_nonpos(double z) { return exp(z); }
SOFTIOU_HD float log_(float x) { return logf(x); }
SOFTIOU_HD double log_(double x) { return log(x); }
SOFTIOU_HD float log1p_(float x) { return log1pf(x); }
SOFTIOU_HD double log1p_(double x) { return log1p(x); }
SOFTIOU_HD float pow_(float x, float y) { return powf(x, y); }
SOFTIOU_HD double pow_(double x, double y) { return pow(x, y); }
SOFTIOU_HD float log_pos(float x) { return __logf(x); }
SOFTIOU_HD double log_pos(double x) { return log(x); }
SOFTIOU_HD float log1p_pos(float x) { return log1pf(x); }
SOFTIOU_HD double log1p_pos(double x) { return log1p(x); }
#else
// Cody-Waite reduction and a degree-6 polynomial: within 0.9 ulp of e^z over [-87, 0] with fused
// multiply-adds, 1.2 ulp without (tests/test_math.py checks both against double precision),
// written with plain float arithmetic and integer bit moves so that loops calling it vectorise.
SOFTIOU_HD float exp_nonpos(float z) {
  const float lo = -87.0f;  // e^-87 is the smallest normal float range we keep; below is 0
  float zc = z < lo ? lo : z;  // NaN passes (the comparison is false)
  // 1.5 * 2^23 + 127: adding it rounds to the nearest integer n, and leaves n + 127 (the
  // exponent field of 2^n) in the low mantissa bits of t
  const float magic = 12583039.0f;
  float t = zc * 1.44269504088896341f + magic;
  float n = t - magic;
  float r = zc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  // e^r = 1 + r + r^2 (c2 + c3 r + ... + c6 r^4) on |r| <= ln(2)/2, by Horner's scheme: one
  // multiply-add per term (the loops calling it run several rows at once, so they are bound by
  // the number of instructions, not by the chain's depth). The coefficients fit e^r in relative
  // error (3e-9, well below float's rounding), so the rounding of the steps above sets the error.
  float y = 1.38146e-3f * r + 8.36871e-3f;
  y = y * r + 4.166839e-2f;
  y = y * r + 1.6666521e-1f;
  y = y * r + 4.9999993e-1f;
  y = y * r + 1.0f;
  y = y * r + 1.0f;
  uint32_t e;
  std::memcpy(&e, &t, sizeof(e));
  e <<= 23;  // 2^n: the mantissa bits above n + 127 shift out
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  float res = y * scale;
  return z < lo ? 0.0f : res;
}
SOFTIOU_HD double exp_nonpos(double z) { return __builtin_exp(z); }
// log of a positive normal float (the kernels take it of a softmax's sum, which is >= 1, and of
// 1 + e^-|z| in [1, 2]): exponent and mantissa in [sqrt(1/2), sqrt(2)) by bit moves, then the
// Cephes polynomial; within 0.8 ulp of log x for x >= 1 (tests/test_math.py), and vectorisable
// like exp_nonpos. 0, Inf and NaN are not handled (NaN passes).
SOFTIOU_HD float log_pos(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  int32_t e = int32_t(u >> 23) - 127;
  uint32_t mb = (u & 0x007fffffu) | 0x3f800000u;  // mantissa in [1, 2)
  float m;
  std::memcpy(&m, &mb, sizeof(m));
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float f = m - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float fe = float(e);
  float y = p * f * z + fe * -2.12194440e-4f - 0.5f * z;
  y = f + y + fe * 0.693359375f;
  return x != x ? x : y;
}
SOFTIOU_HD double log_pos(double x) { return __builtin_log(x); }
// log(1 + x) for x >= 0 (x = e^-|z| in the binary cross-entropy): log(u) * x / (u - 1) with
// u = 1 + x (exact where u rounds to 1), vectorisable.
SOFTIOU_HD float log1p_pos(float x) {
  const float u = 1.0f + x;
  return u == 1.0f ? x : log_pos(u) * (x / (u - 1.0f));
}
SOFTIOU_HD double log1p_pos(double x) { return __builtin_log1p(x); }
SOFTIOU_HD float log_(float x) { return __builtin_logf(x); }
SOFTIOU_HD double log_(double x) { return __builtin_log(x); }
SOFTIOU_HD float log1p_(float x) { return __builtin_log1pf(x); }
SOFTIOU_HD double log1p_(double x) { return __builtin_log1p(x); }
SOFTIOU_HD float pow_(float x, float y) { return __builtin_powf(x, y); }
SOFTIOU_HD double pow_(double x, double y) { return __builtin_pow(x, y); }
#endif

// The smallest normal number of T (torch.finfo(T).tiny).
template <class T>
SOFTIOU_HD T tiny_();
template <>
SOFTIOU_HD float tiny_<float>() { return 1.17549435e-38f; }
template <>
SOFTIOU_HD double tiny_<double>() { return 2.2250738585072014e-308; }

template <class T>
SOFTIOU_HD T neg_inf() {
  return T(-__builtin_huge_valf());
}

template <class T>
SOFTIOU_HD T max_(T a, T b) {
  return b > a ? b : a;  // keeps a when b is NaN, takes NaN from a
}

// ---------------------------------------------------------------------------------------------
// SPEC section 3: the intersection term t(p, y) and its derivative in p.
// product: t = p*y.  min: t = min(p, y), with d/dp = 1/2 at p == y so that p == y everywhere
// gives an exactly zero gradient.
// ---------------------------------------------------------------------------------------------
template <class T>
SOFTIOU_HD T intersection(T p, T y, bool use_min) {
  return use_min ? (p > y ? y : p) : p * y;  // a NaN p propagates
}

template <class T>
SOFTIOU_HD T intersection_dp(T p, T y, bool use_min) {
  return use_min ? (p < y ? T(1) : (p > y ? T(0) : T(0.5))) : y;
}

// The gradient of the loss with respect to I and P of pair (n, c), as the gradient kernels read it
// (KernelArgs: coef and grad_out). Y does not depend on the input.
template <class A>
SOFTIOU_HD void pair_gradient(const KernelArgs& a, int64_t n, int64_t c, A& gI, A& gP) {
  const A* k = static_cast<const A*>(a.coef) + n * a.co_sN + c * a.co_sC;
  const A go = a.grad_out == nullptr ? A(1) : static_cast<const A*>(a.grad_out)[n * a.go_sN + c * a.go_sC];
  gI = go * k[0];
  gP = go * k[a.co_sK];
}

// SPEC section 9. The cross-entropy of a pixel under the softmax is l = Q lse - QL, with q_k the
// term's weight of class k (class map: (1 - eps) c_t [k == t] + (eps / C) c_k; dense target:
// c_k ((1 - eps) y_k + eps / C)), Q = sum_k q_k, QL = sum_k q_k l_k (l_k = a x_k) and
// lse = log sum_k e^(l_k); its derivative in l_k is Q p_k - q_k. Binary / multilabel:
// c_k BCEWithLogits(z, y) = c_k (max(z, 0) - z y + log(1 + e^-|z|)), with derivative
// c_k (p - y) in z. The gradient kernels scale these by the pixel's v w and by ce_gradient.
// With pos_weight pw (SPEC section 10): lw softplus(z) - pw y z, lw = 1 + (pw - 1) y, and the
// derivative lw p - pw y in z (pw = 1: the above).
template <class A>
SOFTIOU_HD A bce_log_weight(A pw, A y) {
  return A(1) + (pw - A(1)) * y;
}

template <class A>
SOFTIOU_HD A bce_with_logits(A z, A y, A e_neg_abs_z, A pw) {
  return bce_log_weight(pw, y) * ((z > A(0) ? z : A(0)) + log1p_pos(e_neg_abs_z)) - pw * y * z;
}

template <class A>
SOFTIOU_HD A bce_with_logits_dz(A p, A y, A pw) {
  return bce_log_weight(pw, y) * p - pw * y;
}

// d loss / d (the cross-entropy's numerator) for sample n: 0 when the term is off.
template <class A>
SOFTIOU_HD A ce_gradient(const KernelArgs& a, int64_t n) {
  if (a.ce_coef == nullptr) return A(0);
  const A go = a.grad_out == nullptr ? A(1) : static_cast<const A*>(a.grad_out)[n * a.go_sN];
  return go * static_cast<const A*>(a.ce_coef)[n * a.ce_sN];
}

// The term's weight of class c (1 without class weights).
template <class A>
SOFTIOU_HD A ce_class_weight(const KernelArgs& a, int64_t c) {
  return a.class_weight == nullptr ? A(1) : static_cast<const A*>(a.class_weight)[c];
}

// The terms of P and Y: p and y, or p^2 and y^2 with `squared` (SPEC section 10).
template <class T>
SOFTIOU_HD T power_term(T v, bool squared) {
  return squared ? v * v : v;
}

// dL/dp for one element, from the gradients of the loss with respect to I and P of its
// (sample, class) pair. Y does not depend on p. The caller multiplies by the pixel weight.
template <class T>
SOFTIOU_HD T grad_p(T p, T y, T gI, T gP, bool use_min, bool squared) {
  return gI * intersection_dp(p, y, use_min) + (squared ? T(2) * p * gP : gP);
}

// ---------------------------------------------------------------------------------------------
// SPEC section 2, binary / multilabel: p = sigmoid(z) with z = a*x for logits, or
// z = a*(log x - log(1-x)) for probabilities (which is x^a / (x^a + (1-x)^a)).
// ---------------------------------------------------------------------------------------------
template <class T>
SOFTIOU_HD T sigmoid_arg(T x, T a, bool from_logits) {
  return from_logits ? a * x : a * (log_(x) - log1p_(-x));
}

// p = sigmoid(z) and dp/dz = e/(1+e)^2 with e = e^-|z| (exact on both tails).
template <class T>
SOFTIOU_HD void sigmoid_and_slope(T z, T& p, T& dp_dz) {
  T az = z < T(0) ? -z : z;
  T e = exp_nonpos(-az);
  T inv = T(1) / (T(1) + e);
  p = z < T(0) ? e * inv : inv;
  dp_dz = e * inv * inv;
}

// dz/dx: a for logits; a / (x (1 - x)) for probabilities, taken as 0 at x = 0 or 1 where the
// probability is saturated (the exact derivative there is 0 for a > 1 and infinite for a < 1).
template <class T>
SOFTIOU_HD T sigmoid_arg_dx(T x, T a, bool from_logits) {
  T d = x * (T(1) - x);
  return from_logits ? a : (d > T(0) ? a / d : T(0));
}

// ---------------------------------------------------------------------------------------------
// SPEC section 2, multiclass: p = softmax(l) over the classes with l = a*x for logits, or
// l = a*log(x) for probabilities (p_c = x_c^a / sum_k x_k^a). The kernels compute
//   m = softmax_shift(max_c l_c),  e_c = e^(l_c - m),  S = sum_c e_c,  p_c = e_c / S
// and the backward  dL/dx_c = dl_c/dx_c * p_c * (g_c - sum_k p_k g_k).
// ---------------------------------------------------------------------------------------------
template <class T>
SOFTIOU_HD T softmax_arg(T x, T a, bool from_logits) {
  return from_logits ? a * x : a * log_(x);
}

// The shift of a pixel's exponentials: its maximum, or 0 when every class is -inf (probability
// 0 everywhere), so that l - m is never -inf - -inf. A class with l = -inf then contributes
// e^-inf = 0, and an all -inf pixel has S = 0 and p = 0 (softmax_inv_sum).
template <class T>
SOFTIOU_HD T softmax_shift(T max_l) {
  return max_l == neg_inf<T>() ? T(0) : max_l;
}

template <class T>
SOFTIOU_HD T softmax_exp(T l, T shift) {
  return exp_nonpos(l - shift);
}

// 1/S, and 0 for an all-zero probability row (so p = 0 there instead of 0/0).
template <class T>
SOFTIOU_HD T softmax_inv_sum(T s) {
  return s == T(0) ? T(0) : T(1) / s;
}

template <class T>
SOFTIOU_HD T softmax_arg_dx(T x, T a, bool from_logits) {
  return from_logits ? a : (x > T(0) ? a / x : T(0));
}

// ---------------------------------------------------------------------------------------------
// Input checks (SPEC section 7), as predicates on one value.
// ---------------------------------------------------------------------------------------------
template <class T>
SOFTIOU_HD bool outside_unit_interval(T v) {
  return v < T(0) || v > T(1);
}

}  // namespace
}  // namespace SOFTIOU_MATH_NS
}  // namespace softiou
