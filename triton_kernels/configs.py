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
# pixel kernel: elements of the [BLOCK_C, BLOCK_M] tile and warps, by direction
PIXEL_TILE_ELEMENTS = {"forward": 4096, "backward": 8192}
PIXEL_WARPS = {"forward": 4, "backward": 4}
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


def pixel_config(num_classes: int, direction: str):
    """(BLOCK_C, BLOCK_M, num_warps) of the multiclass kernel."""
    block_c = next_power_of_2(max(num_classes, 2))
    block_m = max(4, min(1024, PIXEL_TILE_ELEMENTS[direction] // block_c))
    return block_c, next_power_of_2(block_m), PIXEL_WARPS[direction]


def row_config(direction: str):
    """(BLOCK, num_warps) of the binary/multilabel kernel."""
    return ROW_BLOCK[direction], ROW_WARPS[direction]


@functools.lru_cache(maxsize=None)
def multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def programs_target(device: torch.device, direction: str) -> int:
    sms = multiprocessors(device.index or 0) if device.type == "cuda" else 4
    return sms * PROGRAMS_PER_SM[direction]
