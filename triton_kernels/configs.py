"""Launch configurations of the Triton kernels, per shape class.

These are fixed tables, not run-time autotuning: a timing-based pick can differ between two
processes, and the tile shape and warp count decide the order of the additions inside a program,
so run-time autotuning would break bitwise run-to-run determinism. The tables come from sweeping
the candidates with ``python -m bench --tune-triton`` on a GPU (bench/results/; each entry's
comment says which); rerun it on other GPUs and edit the entries.
"""

import functools

import torch

# The row kernel's entries come from the sweep on an H100 (bench/results/triton-tuning-h100.json,
# 2026-11-22): 4096 elements and 8 warps forward, 2048 and 4 warps backward. The pixel kernel's
# (its lane-split tile, kernels._pixel_tile) are the largest whose static report
# (tools/triton_report.py) stays within 128 registers at C = 19; no GPU has swept them yet.
# pixel kernel: input elements per thread and tile, and warps, by direction
PIXEL_THREAD_ELEMENTS = {"forward": 16, "backward": 16}
PIXEL_WARPS = {"forward": 4, "backward": 4}
# row kernel: elements per iteration and warps
ROW_BLOCK = {"forward": 4096, "backward": 2048}
ROW_WARPS = {"forward": 8, "backward": 4}
# programs per multiprocessor the forward aims at (its partial sums grow with the count)
PROGRAMS_PER_SM = {"forward": 4, "backward": 16}


def next_power_of_2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def pixel_config(num_classes: int, direction: str, element_size: int,
                 target_size: int = 0) -> dict:
    """The multiclass kernel's tile (kernels._pixel_tile: CIN, CL, WD, P, V) and num_warps, for
    an input of element_size bytes and a class map of target_size bytes (0: a dense target).

    V: the pixels one thread loads per class in 16 bytes, of the input and of the class map
    alike (a class map load of other extents than the input's would change layouts through
    shared memory inside the loop: an int64 map takes V = 2); CIN: the classes each thread
    holds, so that it holds E = PIXEL_THREAD_ELEMENTS inputs, and at most E / 4 (three
    accumulators each); CL = 32 / P: the lanes that share a pixel's classes (CIN * CL covers the
    classes, a power of two); WD: one per warp. E trades registers for instructions per pixel:
    tools/triton_report.py gives both."""
    block_c = next_power_of_2(max(num_classes, 2))
    v = max(1, 16 // max(element_size, target_size))
    e = PIXEL_THREAD_ELEMENTS[direction]
    cin = max(1, min(block_c, e // v, e // 4))
    cl = block_c // cin
    if cl > 32:  # more classes than 32 lanes of cin: each thread holds more
        cl, cin = 32, block_c // 32
    warps = PIXEL_WARPS[direction]
    return dict(CIN=cin, CL=cl, WD=warps, P=32 // cl, V=v, num_warps=warps)


def pixel_block(config: dict) -> int:
    """The pixels of one tile of the multiclass kernel."""
    return config["WD"] * config["P"] * config["V"]


def counts_config(num_classes: int):
    """(BLOCK_C, BLOCK_M, num_warps) of the counts kernel: a [BLOCK_C, BLOCK_M] tile of about
    4096 elements."""
    block_c = next_power_of_2(max(num_classes, 2))
    block_m = max(4, min(1024, 4096 // block_c))
    return block_c, next_power_of_2(block_m), 4


def row_config(direction: str):
    """(BLOCK, num_warps) of the binary/multilabel kernel."""
    return ROW_BLOCK[direction], ROW_WARPS[direction]


@functools.lru_cache(maxsize=None)
def multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def programs_target(device: torch.device, direction: str) -> int:
    sms = multiprocessors(device.index or 0) if device.type == "cuda" else 4
    return sms * PROGRAMS_PER_SM[direction]
