"""The static performance report of the Triton kernels: compiled offline for sm_90 (Triton
compiles for a target without a GPU), the same figures as tools/perf_report.py gives the CUDA
kernels: per kernel registers, spill bytes (ptxas -v on the PTX Triton emits), the widths of its
global loads and stores (SASS), and what the CUDA report has no need of: its shared memory and
its barriers (BAR instructions in the SASS: a class axis split across warps reduces through
shared memory, and a tensor whose layout changes goes through it, a barrier pair each), counted
apart where they sit inside a loop and so are paid every iteration.

Each case runs the Triton backend's own launch code (triton_kernels/ops.py) on meta tensors of a
benchmark shape and records the launches instead of running them; each launch is specialised as
Triton's launcher specialises it (integers equal to 1 become constants, 16-divisible integers
and 16-byte aligned pointers are marked so) and compiled for sm_90. So the report reads the
kernels the backend launches for those shapes, not hand-written stand-ins.

    python tools/triton_report.py [build/cuda-compile-check] [--write-budget]

Writes triton-report.txt and triton-report.json there and prints the worst figures per kernel
family; tests/test_perf_report.py holds each family to its budget in tools/perf_budget.json
("triton_families": registers, spill bytes and barriers in loops, ratcheted as the CUDA
kernels' are, see tools/perf_report.py). Compiles are cached by Triton (~/.triton/cache): a
rerun takes seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import perf_report  # noqa: E402  (the ptxas and SASS parsers)

DEFAULT_DIR = perf_report.DEFAULT_DIR
ARCH = 90
# multiprocessors of the target the launch grids are sized for (an H100/H200: 132)
MULTIPROCESSORS = 132

# the loops of a kernel's SASS: tools/perf_report.py (shared with the CUDA kernels' report)
loops = perf_report.loops


def cases():
    """(name, run): run(ops) makes the launches of one benchmark case with the backend's code.
    The shapes are the benchmark's GPU bar cases (bench/: N=8, C=19, 1024x2048; C=150 at
    512x512), each forward (statistics) and backward (gradient)."""
    import torch

    def multiclass(dtype, C, hw, target_dtype=torch.int64, class_weight=False, **extra):
        def run(ops):
            x = torch.empty((8, C) + hw, dtype=dtype, device="meta")
            t = torch.empty((8,) + hw, dtype=target_dtype, device="meta")
            cw = torch.empty((C,), dtype=torch.float32, device="meta") if class_weight else None
            _phases(ops, x, t, dict(_options(ops, mode="multiclass"), **extra), cw)
        return run

    def dense(dtype, C, hw, mode="multilabel", **extra):
        """A dense target (multilabel, or multiclass logits with a soft target)."""
        def run(ops):
            x = torch.empty((8, C) + hw, dtype=dtype, device="meta")
            t = torch.empty((8, C) + hw, dtype=dtype, device="meta")
            _phases(ops, x, t, dict(_options(ops, mode=mode), **extra))
        return run

    def counts(dtype, C, hw, mode="multiclass", dense=False, **extra):
        """The statistics pass with the hard counts (in the pass, or counts_kernel after it)."""
        def run(ops):
            x = torch.empty((8, C) + hw, dtype=dtype, device="meta")
            dense_target = dense or mode != "multiclass"
            t = torch.empty((8, C) + hw if dense_target else (8,) + hw,
                            dtype=dtype if dense_target else torch.int64, device="meta")
            o = _options(ops, mode=mode, **extra)
            out = torch.empty((8, C, 4), dtype=torch.int64, device="meta")
            part, n_chunks, pixel = ops._run(x, t, None, o, counts=out)
            if not ops._counts_in_pass(mode, pixel):
                ops._count(x, t, o, out)
        return run

    def in_thread(run):
        """A case with the multiclass kernel's "in_thread" layout (configs.PIXEL_LAYOUT), the
        candidate that is not the default until a GPU has timed it."""
        def with_layout(ops):
            saved = dict(ops.configs.PIXEL_LAYOUT)
            ops.configs.PIXEL_LAYOUT.update(forward="in_thread", backward="in_thread")
            try:
                run(ops)
            finally:
                ops.configs.PIXEL_LAYOUT.update(saved)
        return with_layout

    bar = (1024, 2048)
    maps = [
        ("f32 C=19 int64 map", multiclass(torch.float32, 19, bar)),
        ("f32 C=19 uint8 map", multiclass(torch.float32, 19, bar, torch.uint8)),
        ("f32 C=19 int32 map", multiclass(torch.float32, 19, bar, torch.int32)),
        ("bf16 C=19 int64 map", multiclass(torch.bfloat16, 19, bar)),
        ("bf16 C=19 uint8 map", multiclass(torch.bfloat16, 19, bar, torch.uint8)),
        ("f32 C=19 + cross-entropy", multiclass(torch.float32, 19, bar, ce_weight=1.0)),
    ]
    candidates = maps + [
        ("bf16 C=19 + cross-entropy", multiclass(torch.bfloat16, 19, bar, ce_weight=1.0)),
        ("f32 C=19 + cross-entropy, class weights, smoothing",
         multiclass(torch.float32, 19, bar, class_weight=True, ce_weight=1.0,
                    label_smoothing=0.1)),
        ("f32 C=19 dense target + cross-entropy",
         dense(torch.float32, 19, bar, "multiclass", ce_weight=1.0)),
        ("f32 C=5 dense target", dense(torch.float32, 5, bar, "multiclass")),
        ("bf16 C=4 uint8 map", multiclass(torch.bfloat16, 4, bar, torch.uint8)),
    ]
    return [(f"in-thread {name}", in_thread(run)) for name, run in candidates] + maps + [
        ("f32 C=150 512x512", multiclass(torch.float32, 150, (512, 512))),
        ("f32 multilabel C=19", dense(torch.float32, 19, bar)),
        ("bf16 multilabel C=19", dense(torch.bfloat16, 19, bar)),
        ("f32 C=19 counts", counts(torch.float32, 19, bar)),
        ("f32 multilabel C=19 counts", counts(torch.float32, 19, bar, mode="multilabel")),
        ("f32 C=19 probabilities, dense, counts",
         counts(torch.float32, 19, bar, dense=True, from_logits=False)),
    ]


def _options(ops, **given):
    """The statistics' options by name at their declared defaults, with `given`."""
    d = ops.declared
    return d.named(d.STATS_FIELDS + d.COUNTS_FIELDS, (), given)


def _phases(ops, x, t, o, class_weight=None):
    """The statistics pass's launches, then the gradient pass's (coefficients of [N, C, 3]);
    class_weight: the cross-entropy's."""
    import torch
    ce = o.get("ce_weight", 0.0) > 0
    ops._run(x, t, None, o, ce=ce, class_weight=class_weight)
    N, C = x.shape[0], x.shape[1]
    acc = ops.accumulation_dtype(x.dtype)
    coef = torch.empty((N, C, 3), dtype=acc, device="meta")
    ce_coef = torch.empty((N,), dtype=acc, device="meta") if ce else None
    ops._run(x, t, None, o, coef=coef, coef_strides=(C * 3, 3, 1),
             grad_out=None, ce_coef=ce_coef, ce_stride=1, class_weight=class_weight)


class _Launch:
    """What `kernel[grid](*args, **kwargs)` was asked to run."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            _LAUNCHES.append((self.kernel, args, kwargs))
        return record


_LAUNCHES: list = []


class _Pointer:
    """A tensor argument as Triton's specialiser sees it: its dtype, 16-byte aligned."""

    def __init__(self, t):
        self.dtype = t.dtype

    @staticmethod
    def data_ptr():
        return 0


@contextlib.contextmanager
def _recording(ops):
    """ops._launcher records its launches (and the device is sized as the target's)."""
    saved = ops._launcher, ops.configs.programs_target
    ops._launcher = _Launch
    ops.configs.programs_target = lambda device, direction: (
        MULTIPROCESSORS * ops.configs.PROGRAMS_PER_SM[direction])
    try:
        yield
    finally:
        ops._launcher, ops.configs.programs_target = saved


def _compile(kernel, args, kwargs):
    """The launch specialised as Triton's launcher does and compiled for sm_90."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", ARCH, 32)
    backend = make_backend(target)
    args = [_Pointer(a) if isinstance(a, torch.Tensor) else a for a in args]
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound,
                                                              specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


def _ptxas():
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _figures(compiled) -> dict:
    """Registers, stack and spills (ptxas -v on its PTX), global load/store widths and barriers
    (its SASS), shared memory (Triton's metadata)."""
    name = compiled.metadata.name
    with tempfile.TemporaryDirectory() as d:
        ptx, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        res = subprocess.run([_ptxas(), "-v", f"--gpu-name=sm_{ARCH}a", ptx, "-o", cubin],
                             capture_output=True, text=True, check=True)
        regs = perf_report.parse_ptxas(res.stderr + res.stdout)
        sass = subprocess.run([perf_report.cuobjdump(), "-sass", cubin], capture_output=True,
                              text=True, check=True).stdout
    (arch, _), r = next((k, v) for k, v in regs.items() if k[1] == name)
    mem = next((v for k, v in perf_report.parse_sass(sass).items() if k[1] == name),
               {"loads": {}, "stores": {}})
    every, looped, body = loops(sass)
    return {**r, "loads": dict(mem["loads"]), "stores": dict(mem["stores"]),
            "barriers": every, "loop_barriers": looped, "loop_instructions": body,
            "shared": compiled.metadata.shared,
            "num_warps": compiled.metadata.num_warps}


def _constants(kwargs) -> str:
    """The launch's compile-time choices that tell its instantiations apart."""
    keep = ("FWD", "CLASS_MAP", "CE", "COUNT", "BLOCK_C", "BLOCK_M", "BLOCK_R", "V", "IN_THREAD",
            "BLOCK")
    return " ".join(f"{k}={kwargs[k]}" for k in keep if k in kwargs)


def _items_per_warp(kwargs) -> int:
    """What one warp's pass through the main loop covers: pixels (all their classes) for the
    multiclass and counts kernels, elements for the row kernel. The loop's instructions over it
    are the warp instructions each costs."""
    warps = kwargs["num_warps"]
    if "BLOCK_R" in kwargs:
        return max(1, kwargs["BLOCK_R"] * kwargs["V"] // warps)
    if "BLOCK_M" in kwargs:
        return max(1, kwargs["BLOCK_M"] // warps)
    return max(1, kwargs["BLOCK"] // warps)


def collect() -> list:
    """One record per (case, launch) of a hot kernel (the second stage and the finalize are one
    small launch each and not reported)."""
    from softiou_cuda.triton_kernels import ops
    hot = {"pixel_kernel", "row_kernel", "counts_kernel"}
    records = []
    for case, run in cases():
        _LAUNCHES.clear()
        with _recording(ops):
            run(ops)
        for kernel, args, kwargs in list(_LAUNCHES):
            if kernel.__name__ not in hot:
                continue
            dtype = next(a.dtype for a in args if hasattr(a, "dtype"))
            figures = _figures(_compile(kernel, args, kwargs))
            figures["per_item"] = round(figures["loop_instructions"] / _items_per_warp(kwargs),
                                        2)
            # a statistics pass that counts too, or sums the cross-entropy, is a family of its
            # own: the loss's pass is held to its figures whether or not those variants meet
            # them
            family = kernel.__name__ + ("+counts" if kwargs.get("COUNT") else "") + \
                ("+ce" if kwargs.get("CE") and kwargs.get("FWD") else "") + \
                ("/in_thread" if kwargs.get("IN_THREAD") else "")
            records.append({"arch": f"sm_{ARCH}", "case": case, "family": family,
                            "kernel": f"{kernel.__name__} {str(dtype).replace('torch.', '')} "
                                      f"{_constants(kwargs)}", **figures})
    return records


def by_family(records: list) -> dict:
    out = perf_report.by_family(records, f"sm_{ARCH}")
    for name, f in out.items():
        mine = [r for r in records if r["family"] == name]
        f["barriers"] = max(r["barriers"] for r in mine)
        f["loop_barriers"] = max(r["loop_barriers"] for r in mine)
        f["shared"] = max(r["shared"] for r in mine)
    return out


def write(records: list, directory: str) -> dict:
    families = by_family(records)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "triton-report.json"), "w") as f:
        json.dump({"arch": f"sm_{ARCH}", "families": families, "kernels": records}, f, indent=1)
    fmt = perf_report._fmt
    with open(os.path.join(directory, "triton-report.txt"), "w") as f:
        f.write("regs  spill st/ld  shared  bars (in loops)  loop instr (per item)  "
                "global loads (bytes:count)  stores      kernel | case\n")
        for r in records:
            f.write(f"{r['registers']:4} {r['spill_stores']:6}/{r['spill_loads']:<5} "
                    f"{r['shared']:6} {r['barriers']:5} ({r['loop_barriers']:3})     "
                    f"{r['loop_instructions']:5} ({r['per_item']:6.2f})        "
                    f"{fmt(r['loads']):27} "
                    f"{fmt(r['stores']):11} {r['kernel']} | {r['case']}\n")
    return families


def main(argv=None):
    # the compiler, not the interpreter (under TRITON_INTERPRET=1 triton.jit makes functions that
    # only run on CPU tensors)
    os.environ["TRITON_INTERPRET"] = "0"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", nargs="?", default=DEFAULT_DIR)
    ap.add_argument("--write-budget", action="store_true")
    args = ap.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        print("triton report: triton is not installed; the Triton kernels were not compiled")
        return 0
    families = write(collect(), args.directory)
    print(f"triton report (sm_{ARCH}; per family: launches, most registers, most spill bytes, "
          f"most shared bytes and barriers, global load / store widths in bytes):")
    for name, f in sorted(families.items()):
        print(f"  {name:16} {f['instantiations']:3}  regs {f['registers']:3}  spill "
              f"{f['spill_bytes']:5}  shared {f['shared']:6}  bars {f['barriers']:3} "
              f"(in loops {f['loop_barriers']:2})  "
              f"loads {f['load_bytes']}  stores {f['store_bytes']}")
    print(f"  per launch: {os.path.join(args.directory, 'triton-report.txt')}")
    if args.write_budget:
        perf_report.write_budget(families, f"sm_{ARCH}", key="triton_families",
                                 extra=("loop_barriers",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
