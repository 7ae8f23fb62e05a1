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
                # "split" tiles of `size` elements; "in_thread" (few enough classes)
                # with `size` inputs per thread
                grid = [("split", size, warps) for size in (2048, 4096, 8192) for warps in (4, 8)]
                if case.C <= configs.IN_THREAD_CLASSES[direction]:
                    grid += [("in_thread", size, warps) for size in (40, 80) for warps in (4, 8)]
                tables = (configs.PIXEL_LAYOUT, configs.PIXEL_TILE_ELEMENTS, configs.PIXEL_WARPS,
                          configs.PIXEL_THREAD_INPUTS)
            else:
                grid = [(None, size, warps) for size in (1024, 2048, 4096) for warps in (4, 8)]
                tables = (None, configs.ROW_BLOCK, configs.ROW_WARPS)
            saved = [t[direction] if t is not None else None for t in tables]
            for layout, size, warps in grid:
                if layout is not None:
                    tables[0][direction] = layout
                    tables[3 if layout == "in_thread" else 1][direction] = size
                else:
                    tables[1][direction] = size
                tables[2][direction] = warps
                ms = _time(case, direction)
                rows.append(dict(case=case.name, direction=direction, layout=layout, size=size,
                                 warps=warps, ms=ms))
                print(f"{case.name:20s} {direction:9s} {layout or '':9s} size={size:5d} "
                      f"warps={warps} {ms:8.3f} ms", flush=True)
            for table, value in zip(tables, saved):
                if table is not None:
                    table[direction] = value
    best = {}
    for r in rows:
        k = (r["case"], r["direction"])
        if k not in best or r["ms"] < best[k]["ms"]:
            best[k] = r
    print("\nfastest per shape class:")
    for (c, d), r in best.items():
        print(f"  {c:20s} {d:9s} {r['layout'] or '':9s} size={r['size']} warps={r['warps']} "
              f"{r['ms']:.3f} ms")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "triton-tuning.json"), "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(0), "rows": rows}, f, indent=1)
