"""The static performance report of the compiled CUDA kernels (`make cuda-compile-check`).

Reads what tools/check_cuda_compile.sh leaves in build/cuda-compile-check/: each kernel source's
ptxas log (`-Xptxas -v`: registers, stack frame, spill bytes per entry function and target) and
its object file, whose SASS (the `cuobjdump` that ships with triton, or the toolkit's) gives the
width of every global load and store, and the size of the longest loop in instructions (the
code of every runtime path through it: a measure of a kernel's genericity, far above what one
iteration executes). Writes perf-report.txt (a table per instantiation) and
perf-report.json beside them, and prints the worst figures per kernel family for one target.

The budgets the GPU kernels are being rebuilt to (docs/status.md): no spills, at most 128
registers (two 256-thread blocks per multiprocessor), 16-byte loads and stores in the main loops.
`tools/perf_budget.json` holds, per kernel family, the limits the kernels of the tree meet today;
tests/test_perf_report.py asserts them, so that a change cannot make a kernel worse unseen, and
tightens to the targets family by family as the redesigned kernels land.

    python tools/perf_report.py [build/cuda-compile-check] [--arch sm_90] [--write-budget]

--write-budget sets each family's budget in tools/perf_budget.json to its figures of the tree
(a new family, or one a change made better): the ratchet moves down with the kernels, never up
unseen (a family over its budget fails the test until its budget is raised here by hand).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGET = os.path.join(HERE, "perf_budget.json")
# the redesign's budgets (issue: GPU kernels rebuilt for memory bandwidth)
TARGETS = {"registers": 128, "spill_bytes": 0, "store_bytes": 16}
DEFAULT_DIR = os.path.join(os.path.dirname(HERE), "build", "cuda-compile-check")

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_CODE_FOR = re.compile(r"code for (sm_\d+a?)")
_FUNCTION = re.compile(r"Function : (\S+)")
# a global (or generic) memory instruction and its modifiers, e.g. LDG.E.128.CONSTANT, STG.E.U16
_MEMORY = re.compile(r"\b(LDG|STG|LD|ST)((?:\.[A-Z0-9_]+)*)\s")
_WIDTHS = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}


def width(modifiers: str) -> int:
    """Bytes one thread moves with the instruction: 4 unless a modifier says otherwise."""
    for m in modifiers.split("."):
        if m in _WIDTHS:
            return _WIDTHS[m]
    return 4


def parse_ptxas(text: str) -> dict:
    """{(arch, mangled name): {registers, stack, spill_stores, spill_loads}} of entry functions."""
    out, entry, props = {}, None, None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            entry = (m.group(2), m.group(1))
            out[entry] = {"registers": 0, "stack": 0, "spill_stores": 0, "spill_loads": 0}
            props = None
            continue
        m = _PROPS.search(line)
        if m:
            props = m.group(1)
            continue
        m = _SPILL.search(line)
        if m and entry is not None and props == entry[1]:
            out[entry].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                              spill_loads=int(m.group(3)))
            continue
        m = _REGS.search(line)
        if m and entry is not None:
            out[entry]["registers"] = int(m.group(1))
    return out


def parse_sass(text: str) -> dict:
    """{(arch, mangled name): {"loads": {bytes: count}, "stores": {bytes: count},
    "loop_instructions": the longest loop's instructions (loops())}}."""
    out, arch, name, lines = {}, None, None, collections.defaultdict(list)
    for line in text.splitlines():
        m = _CODE_FOR.search(line)
        if m:
            arch = m.group(1)
            continue
        m = _FUNCTION.search(line)
        if m:
            name = m.group(1)
            out[(arch, name)] = {"loads": collections.Counter(), "stores": collections.Counter()}
            continue
        if name is None or "/*" not in line:
            continue
        lines[(arch, name)].append(line)
        m = _MEMORY.search(line.split(";")[0])
        if m:
            kind = "loads" if m.group(1).startswith("LD") else "stores"
            generic = "" if m.group(1).endswith("G") else "generic "
            out[(arch, name)][kind][f"{generic}{width(m.group(2))}"] += 1
    for key, r in out.items():
        r["loop_instructions"] = loops("\n".join(lines[key]))[2]
    return out


_BARRIER = re.compile(r"\bBAR\.(SYNC|RED|ARV)\b")
_ADDRESS = re.compile(r"/\*([0-9a-f]{4,})\*/")
_BRANCH = re.compile(r"\bBRA\s+(?:`\()?(?:\.L_x_\d+\))?\s*0x([0-9a-f]+)")


def loops(sass: str) -> tuple:
    """(barriers, barriers in loops, instructions of the longest loop) of one kernel's SASS: the
    BAR instructions, those inside a loop (at or after the target of a backward branch and
    before the branch), and the longest such range in instructions (16 bytes each). A loop's
    barrier is paid every iteration; the others once per program (its final reductions)."""
    bars, ranges = [], []
    for line in sass.splitlines():
        a = _ADDRESS.search(line)
        if not a:
            continue
        at = int(a.group(1), 16)
        code = line[a.end():].split(";")[0]
        if _BARRIER.search(code):
            bars.append(at)
        b = _BRANCH.search(code)
        if b and int(b.group(1), 16) < at:
            ranges.append((int(b.group(1), 16), at))
    longest = max(((hi - lo) // 16 + 1 for lo, hi in ranges), default=0)
    return len(bars), sum(any(lo <= at < hi for lo, hi in ranges) for at in bars), longest


def demangle(names):
    names = list(names)
    tool = shutil.which("c++filt")
    if not tool or not names:
        return dict(zip(names, names))
    res = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    lines = res.stdout.splitlines()
    return dict(zip(names, lines)) if len(lines) == len(names) else dict(zip(names, names))


# the kernels that write the gradient, a value per input element: the 16-byte store target is
# theirs (the others write a few partial sums, counts or per-pixel values)
GRADIENT_KERNELS = ("pixel_kernel", "row_kernel")


def stores_within_target(name: str, store_bytes: list) -> bool:
    """A gradient kernel's widest global store is 16 bytes; other kernels have no store target."""
    return (name.split("/")[0] not in GRADIENT_KERNELS or not store_bytes
            or max(store_bytes) >= TARGETS["store_bytes"])


# the input (or accumulation) types as a family's suffix
_DTYPES = {"float": "f32", "double": "f64", "__half": "f16", "__nv_bfloat16": "bf16"}


# the kernels whose last template argument is BASIC (csrc/cuda/pixel.cuh): the common case's
# instantiations, a family of their own
_BASIC_LAST = ("pixel_kernel", "pixel_counting_kernel")


def family(demangled: str) -> str:
    """The kernel template's name and its first template argument, the input's type (the
    accumulation type's for the second stage): softiou::cuda::detail::pixel_kernel<float, long,
    ...>(...) -> pixel_kernel/f32, and pixel_kernel/f32+basic for the common case's kernels. Each
    dtype's build is held to its own budget: the targets are met one dtype at a time (float32
    and bfloat16 first), the common case first."""
    head = demangled.split("(")[0]
    name = head.split("<")[0].split("::")[-1].replace("void ", "").strip()
    if "<" not in head:
        return name
    args = [x.strip() for x in head.split("<", 1)[1].rsplit(">", 1)[0].split(",")]
    basic = "+basic" if name in _BASIC_LAST and args[-1] == "true" else ""
    return f"{name}/{_DTYPES.get(args[0], args[0])}{basic}"


def cuobjdump() -> str | None:
    try:
        import triton
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                            "cuobjdump")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    return shutil.which("cuobjdump")


def collect(directory: str) -> list:
    """One record per (target, kernel instantiation)."""
    ptxas, sass = {}, {}
    for log in sorted(glob.glob(os.path.join(directory, "kernels*.log"))):
        with open(log) as f:
            ptxas.update(parse_ptxas(f.read()))
    tool = cuobjdump()
    if tool:
        for obj in sorted(glob.glob(os.path.join(directory, "kernels*.o"))):
            res = subprocess.run([tool, "-sass", obj], capture_output=True, text=True)
            sass.update(parse_sass(res.stdout))
    names = demangle({name for _, name in ptxas})
    records = []
    for (arch, name), r in sorted(ptxas.items()):
        mem = sass.get((arch, name), {"loads": {}, "stores": {}, "loop_instructions": 0})
        records.append({"arch": arch, "kernel": names[name], "family": family(names[name]),
                        **r, "loads": dict(mem["loads"]), "stores": dict(mem["stores"]),
                        "loop_instructions": mem["loop_instructions"],
                        "sass": (arch, name) in sass})
    return records


def by_family(records: list, arch: str) -> dict:
    """The worst figures of each kernel family for one target."""
    out = {}
    for r in records:
        if r["arch"] != arch:
            continue
        f = out.setdefault(r["family"], {"instantiations": 0, "registers": 0, "spill_bytes": 0,
                                         "spilling": 0, "load_bytes": set(), "store_bytes": set()})
        f["instantiations"] += 1
        f["registers"] = max(f["registers"], r["registers"])
        spill = r["spill_stores"] + r["spill_loads"]
        f["spill_bytes"] = max(f["spill_bytes"], spill)
        f["spilling"] += spill > 0
        f["load_bytes"] |= {int(k.split()[-1]) for k in r["loads"]}
        f["store_bytes"] |= {int(k.split()[-1]) for k in r["stores"]}
    for f in out.values():
        f["load_bytes"], f["store_bytes"] = sorted(f["load_bytes"]), sorted(f["store_bytes"])
    return out


def _fmt(counter: dict) -> str:
    return " ".join(f"{k}B:{v}" for k, v in sorted(counter.items(), key=lambda kv: kv[0])) or "-"


def write(records: list, directory: str, arch: str) -> dict:
    families = by_family(records, arch)
    with open(os.path.join(directory, "perf-report.json"), "w") as f:
        json.dump({"arch": arch, "families": families, "kernels": records}, f, indent=1)
    with open(os.path.join(directory, "perf-report.txt"), "w") as f:
        f.write("target  regs  stack  spill st/ld  loop  global loads (bytes:count)  stores  "
                "kernel\n")
        for r in records:
            f.write(f"{r['arch']:7} {r['registers']:4} {r['stack']:6} "
                    f"{r['spill_stores']:5}/{r['spill_loads']:<5} {r['loop_instructions']:5} "
                    f"{_fmt(r['loads']):27} {_fmt(r['stores']):10} {r['kernel']}\n")
    return families


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", nargs="?", default=DEFAULT_DIR)
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--write-budget", action="store_true")
    args = ap.parse_args(argv)
    records = collect(args.directory)
    if not records:
        print(f"perf report: no ptxas logs in {args.directory}", file=sys.stderr)
        return 1
    families = write(records, args.directory, args.arch)
    print(f"perf report ({args.arch}; per family: instantiations, most registers, most spill "
          f"bytes and how many spill, global load / store widths in bytes):")
    for name, f in sorted(families.items()):
        print(f"  {name:28} {f['instantiations']:4}  regs {f['registers']:3}  spill "
              f"{f['spill_bytes']:5} ({f['spilling']:3})  loads {f['load_bytes']}  "
              f"stores {f['store_bytes']}")
    print(f"  per instantiation: {os.path.join(args.directory, 'perf-report.txt')}")
    if args.write_budget:
        failed = [os.path.basename(log)
                  for log in sorted(glob.glob(os.path.join(args.directory, "kernels*.log")))
                  if not parse_ptxas(open(log).read())]
        if failed:  # a failed compile leaves a log of errors: its kernels would drop out
            print(f"  budgets not written: no kernels in {', '.join(failed)}", file=sys.stderr)
            return 1
        write_budget(families, args.arch)
    return 0


def write_budget(families: dict, arch: str, key: str = "families", extra=(), path=BUDGET):
    """Each family's budget under `key` of tools/perf_budget.json: a family within the targets
    is marked so and held to them from then on, its figures now recorded as they are; another
    takes the lower of its old budget and its figures now (new families take their figures), for
    registers, spill bytes and the `extra` figures. The file's other keys stay as they are."""
    budget = {"arch": arch, "targets": TARGETS}
    if os.path.exists(path):
        with open(path) as f:
            budget = json.load(f)
    old = budget.get(key, {})
    out = {}
    for name, fam in sorted(families.items()):
        figures = ("registers", "spill_bytes") + tuple(extra)
        meets = (fam["registers"] <= TARGETS["registers"]
                 and fam["spill_bytes"] <= TARGETS["spill_bytes"]
                 and stores_within_target(name, fam["store_bytes"]))
        prev = {} if meets else old.get(name, {})
        entry = {k: min(fam[k], prev.get(k, fam[k])) for k in figures}
        entry["meets_targets"] = meets
        out[name] = entry
    budget[key] = out
    with open(path, "w") as f:
        json.dump(budget, f, indent=1)
        f.write("\n")
    print(f"  budgets written: {path} ({key})")


if __name__ == "__main__":
    sys.exit(main())
