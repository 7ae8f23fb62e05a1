// Torch-free interface of the CPU kernels.
//
// The work is cut into items: item = n * chunks_per_sample + k covers the pixels
// [k * chunk, min(M, (k + 1) * chunk)) of sample n. The cut depends only on the shape, never on
// the number of threads, and every item writes its own partial sums, which the glue adds in item
// order: the statistics are bitwise identical for any thread count.
#pragma once

#include <cstdint>

#include "../kernel_args.h"

namespace softiou {
namespace cpu {

// Pixels a tile holds: the tile loops run over this many lanes, so they vectorise.
constexpr int kTile = 64;

struct ItemError {
  InputError code = InputError::kNone;
  double value = 0.0;  // the offending value
};

// stats: partials is [items][C * 3 + 2] in the accumulation dtype (I, P, Y per class, then the
// cross-entropy's numerator and denominator, 0 when KernelArgs::ce is off); scratch holds
// scratch_elems(C) accumulation-dtype values; errors[item] receives the first bad value of each
// item.
using StatsFn = void (*)(const KernelArgs& a, int64_t chunk, int64_t item_begin, int64_t item_end,
                         void* partials, void* scratch, ItemError* errors);
// backward: writes a.grad_x for the items' pixels.
using BackwardFn = void (*)(const KernelArgs& a, int64_t chunk, int64_t item_begin,
                            int64_t item_end, void* scratch, ItemError* errors);

struct KernelTable {
  StatsFn stats;
  BackwardFn backward;
  const char* isa;
};

// The hard counts of an item (KernelArgs::counts): kCountCopies copies of [C + 1][tp, predicted,
// target, kept] (int64). A multiclass pixel at tile position t adds to copy t % kCountCopies, so
// that neighbouring pixels, which often share a class, never update the same counter in a row
// (each increment would wait for the one before it); row C takes the pixels not kept, so the
// loop has no branch. The glue adds the copies' rows c < C. Binary/multilabel counts go to copy 0.
constexpr int kCountCopies = 4;
inline int64_t counts_row(int64_t C) { return kCountCopies * (C + 1) * 4; }

// The multiclass counts of C <= kConfusionClasses classes go through confusion matrices first
// (kCountCopies int32 copies of [C + 1][C + 1], predicted class by target class, C for a pixel
// not kept; in the scratch after the tile's buffers): one increment per pixel, where the rows
// take three; they are folded into copy 0's rows at the end of an item.
constexpr int64_t kConfusionClasses = 32;
inline int64_t confusion_elems(int64_t C) {
  return C <= kConfusionClasses ? kCountCopies * (C + 1) * (C + 1) : 0;
}

// Accumulation-dtype values of a thread's scratch: the tile's buffers, then the confusion
// matrices (their int32 take no more bytes than as many values of A).
inline int64_t scratch_elems(int64_t C) { return 7 * C * kTile + confusion_elems(C); }

// Values per item of the statistics' partial sums.
inline int64_t partial_row(int64_t C) { return C * 3 + 2; }

// One table per instruction set, each compiled from kernels_impl.h.
namespace baseline {
const KernelTable& table();
}
namespace avx2 {
const KernelTable& table();
}
namespace avx512 {
const KernelTable& table();
}

}  // namespace cpu
}  // namespace softiou
