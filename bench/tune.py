"""``python -m bench --tune-triton``: sweep the Triton kernels' launch configurations per shape
class and print the fastest, to be written into triton_kernels/configs.py (a fixed table keeps
the Triton backend bitwise deterministic; see that module)."""

from __future__ import annotations

import itertools
import json
import os

import torch

import softiou_cuda
from softiou_cuda.triton_kernels import configs

from .cases import Case
from .timing import Timer

SHAPE_CLASSES = [
    Case("C19-1024x2048", "bar", 8, 19, (1024, 2048)),
    Case("C150-512x512", "classes", 8, 150, (512, 512)),
    Case("binary-1024x2048", "classes", 8, 1, (1024, 2048), mode="binary"),
]


def _time(case, direction):
    x, t = case.make("cuda")
    timer = Timer("cuda", warmup=2, reps=10)
    fn = lambda x, t: softiou_cuda.soft_iou_loss(x, t, mode=case.mode, backend="triton")  # noqa: E731
    if direction == "forward":
        return timer.measure(lambda i: (x, t), fn)["median_ms"]
    return timer.measure(lambda i: (fn(x, t),), lambda loss: loss.backward())["median_ms"]


def tune(args):
    rows = []
    for case in SHAPE_CLASSES:
        for direction in ("forward", "backward"):
            if case.mode == "multiclass":
                grid = itertools.product([2048, 4096, 8192], [4, 8])
                tables = (configs.PIXEL_TILE_ELEMENTS, configs.PIXEL_WARPS)
            else:
                grid = itertools.product([1024, 2048, 4096], [4, 8])
                tables = (configs.ROW_BLOCK, configs.ROW_WARPS)
            saved = (tables[0][direction], tables[1][direction])
            for size, warps in grid:
                tables[0][direction], tables[1][direction] = size, warps
                ms = _time(case, direction)
                rows.append(dict(case=case.name, direction=direction, size=size, warps=warps, ms=ms))
                print(f"{case.name:20s} {direction:9s} size={size:5d} warps={warps} {ms:8.3f} ms",
                      flush=True)
            tables[0][direction], tables[1][direction] = saved
    best = {}
    for r in rows:
        k = (r["case"], r["direction"])
        if k not in best or r["ms"] < best[k]["ms"]:
            best[k] = r
    print("\nfastest per shape class:")
    for (c, d), r in best.items():
        print(f"  {c:20s} {d:9s} size={r['size']} warps={r['warps']} {r['ms']:.3f} ms")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "triton-tuning.json"), "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(0), "rows": rows}, f, indent=1)
