// softiou CUDA kernels: the templates. Torch-free (nvcc alone compiles them; the CI does, for
// sm_80 and sm_90). kernels_<dtype>.cu instantiate them for one input dtype each, so the build
// compiles the four in parallel; kernels.cu holds the plans and the dtype dispatch.
//
// Statistics (one read of input, target and weight):
//   pixel_kernel<FWD=true>   multiclass. A group of K lanes of a warp owns V consecutive pixels
//                            (one 16-byte load per class row) and splits the classes between its
//                            lanes, 32/V classes per lane in registers. The softmax max and sum are
//                            butterflies over the K lanes: the logits are read from HBM once.
//   row_kernel<FWD=true>     binary / multilabel: elementwise over (sample, class) rows.
//   pixel_counting_kernel, row_counting_kernel: the same passes with the hard counts (SPEC
//                            section 11) where asked, integers added with integer atomics.
//   Each warp writes its partial sums to a workspace; reduce_kernel adds them in a fixed order.
//   No float atomics anywhere: the result is bitwise the same run to run.
// Gradient (one read, one write): the same kernels with FWD=false.
// Softmax over more classes than the registers hold (C > 32 * 32/V): pixel_prepass computes
// each pixel's max and 1/sum (and for the gradient sum_c p_c g_c) first, and pixel_kernel runs over
// windows of classes with them.
//
// The per-element math is softiou_math.h, shared with the CPU kernels.
//
//   common.cuh        types, 16-byte packs and loads, a launch's parameters
//   pixel.cuh         multiclass: pixel_kernel, pixel_prepass
//   rows.cuh          binary / multilabel: row_kernel
//   second_stage.cuh  reduce_kernel, finalize_kernel, ce_reduce_kernel
//   launch.cuh        host side: plans and launches of one input dtype
//
// The per-element math is softiou_math.h, shared with the CPU kernels.
#pragma once

#include "launch.cuh"
