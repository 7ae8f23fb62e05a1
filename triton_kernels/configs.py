"""Launch configurations of the Triton kernels, per shape class.

These are fixed tables, not run-time autotuning: a timing-based pick can differ between two
processes, and the tile shape and warp count decide the order of the additions inside a program,
so run-time autotuning would break bitwise run-to-run determinism. The tables were chosen by
sweeping the candidates with ``python -m bench --tune-triton`` on an H100 (see
bench/results/); rerun it on other GPUs and edit the entries.
"""

import functools

import torch

# The sweep on an H100 (bench/results/triton-tuning-h100.json, 2026-11-22): for C = 19 and 150 the
# pixel kernel is fastest with 4 warps, 4096-element tiles forward and 8192 backward; the row
# kernel with 4096 elements and 8 warps forward, 2048 and 4 warps backward.
# pixel kernel: its tile's layout by direction (kernels.pixel_kernel). "split": a tile of about
# PIXEL_TILE_ELEMENTS, laid out by Triton over lanes and warps, the classes too. "in_thread": a
# thread holds every class of V pixels, up to PIXEL_THREAD_INPUTS inputs, where the classes are
# at most IN_THREAD_CLASSES and the pass is not left to "split" (pixel_config); elsewhere
# "split". "in_thread" has no barrier in its loop, at most 128 registers and 2.5-3x fewer
# instructions per pixel, and spills in a few launches (the cross-entropy's most;
# tools/triton_report.py, tools/perf_budget.json), and has not run on a GPU: it becomes the
# default once a GPU has timed it against "split" (the device check's bar cases time both;
# python -m bench --tune-triton sweeps it).
PIXEL_LAYOUT = {"forward": "split", "backward": "split"}
PIXEL_TILE_ELEMENTS = {"forward": 4096, "backward": 8192}
PIXEL_WARPS = {"forward": 4, "backward": 4}
PIXEL_THREAD_INPUTS = {"forward": 40, "backward": 40}
# the most classes a thread holds at V = 2: their inputs and (forward) three accumulators each
# within 128 registers; half as many in float64 (two registers a value)
IN_THREAD_CLASSES = {"forward": 20, "backward": 24}
# row kernel: elements per iteration and warps
ROW_BLOCK = {"forward": 4096, "backward": 2048}
ROW_WARPS = {"forward": 8, "backward": 4}
# programs per multiprocessor the forward aims at (its partial sums grow with the count)
PROGRAMS_PER_SM = {"forward": 4, "backward": 16}
# tiles a statistics kernel counts into its int32 codes before it folds them into int64 totals
# (kernels._count_code: below 128); tests lower it to fold at small sizes
COUNT_FOLD = 127


def next_power_of_2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def split_config(num_classes: int, direction: str):
    """(BLOCK_C, BLOCK_M, num_warps) of a [BLOCK_C, BLOCK_M] tile of about
    PIXEL_TILE_ELEMENTS[direction] elements (the pixel kernel's "split" layout, counts_kernel)."""
    block_c = next_power_of_2(max(num_classes, 2))
    block_m = max(4, min(1024, PIXEL_TILE_ELEMENTS[direction] // block_c))
    return block_c, next_power_of_2(block_m), PIXEL_WARPS[direction]


def pixel_config(num_classes: int, direction: str, element_size: int,
                 split_only: bool = False) -> dict:
    """The multiclass kernel's tile (kernels.pixel_kernel: BLOCK_C, BLOCK_R, V, IN_THREAD) and
    its launch options, for an input of element_size bytes; split_only: a pass the in-thread
    tile does not take (a statistics pass that counts too: its histograms of the pixels'
    classes; the cross-entropy's forward on a dense target: its sums over the classes hold
    the tile's d_k beside p_k, 768 bytes of spills at C = 19)."""
    block_c, block_m, warps = split_config(num_classes, direction)
    most = IN_THREAD_CLASSES[direction] // (2 if element_size == 8 else 1)
    if PIXEL_LAYOUT[direction] == "in_thread" and num_classes <= most and not split_only:
        # V >= 2, at most 16 bytes: at V = 1 the pixel axis would be contiguous across the
        # threads, and the layout pass would give a thread 16 bytes of it and the classes to
        # the other warps. maxnreg: ptxas keeps to the 128 registers the budgets ask for.
        v = 2
        while 2 * v <= 16 // element_size and 2 * v * num_classes <= PIXEL_THREAD_INPUTS[direction]:
            v *= 2
        return dict(BLOCK_C=block_c, BLOCK_R=32 * warps, V=v, IN_THREAD=True, num_warps=warps,
                    maxnreg=128)
    return dict(BLOCK_C=block_c, BLOCK_R=block_m, V=1, IN_THREAD=False, num_warps=warps)


def pixel_block(config: dict) -> int:
    """The pixels of one tile of the multiclass kernel."""
    return config["BLOCK_R"] * config["V"]


def row_config(direction: str):
    """(BLOCK, num_warps) of the binary/multilabel kernel."""
    return ROW_BLOCK[direction], ROW_WARPS[direction]


@functools.lru_cache(maxsize=None)
def multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def programs_target(device: torch.device, direction: str) -> int:
    sms = multiprocessors(device.index or 0) if device.type == "cuda" else 4
    return sms * PROGRAMS_PER_SM[direction]
