"""The CUDA kernels emulated on the CPU, for the tests: builds csrc/cuda (kernels and torch glue)
with the host compiler against csrc/cuda/emulation/ (the CUDA runtime and device language as
plain C++: a block's threads are fibers switched at barriers) and loads it, so that
``backend="cuda"`` on CPU tensors runs the CUDA kernels' code. What it checks and what it cannot
is said in csrc/cuda/emulation/emulation.h.

    python tools/cuda_emulation.py            # build (or find built) and print the module's path

The sources are copied to build/cuda-emulation/src with each launch ``kernel<<<grid, block,
shared, stream>>>(args)`` rewritten as ``::softiou_emu::launch(&kernel, grid, block,
shared)(args)``, ``extern __shared__ T name[];`` as a pointer to the launch's dynamic shared
memory (the two CUDA forms C++ cannot parse), ``__shared__ T name[n];`` as a static filled
afresh for each block, and ``__noinline__`` as GCC's attribute. A build is reused while its
inputs' digest (the sources, the flags, torch's version) is unchanged.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "cuda-emulation")
MODULE = "softiou_cuda_emulation"

# the translation units, relative to csrc/
UNITS = ["cuda/kernels.cu", "cuda/kernels_f32.cu", "cuda/kernels_f64.cu", "cuda/kernels_f16.cu",
         "cuda/kernels_bf16.cu", "cuda/kernels_counts.cu", "cuda/phases.cpp",
         "cuda/emulation/emulation.cpp", "cuda/emulation/selftest.cu", "cuda/emulation/module.cpp"]
# -O1: the tests' inputs are small and the build is in every CI run; the defines are the ones the
# extension's nvcc build has (torch's), so the same code paths compile
FLAGS = ["-std=c++20", "-O1", "-fPIC", "-fno-strict-aliasing", "-fvisibility=hidden",
         "-Wall", "-Wno-unknown-pragmas", "-DSOFTIOU_CUDA_EMULATION",
         "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
         "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]

_LAUNCH = re.compile(r"<<<(.*?)>>>", re.S)
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:alignas\(\d+\)\s+)?([A-Za-z_][\w: ]*?)\s+"
                            r"(\w+)\s*\[\s*\]\s*;")


_SHARED = re.compile(r"__shared__\s+([A-Za-z_][\w:]*)\s+([^;]+);")


def _fresh_shared(m) -> str:
    """A block's shared array as a function-local static, filled with 0xFF bytes (NaN, or an
    integer's every bit) by the block's first thread to reach it: what a thread reads before
    the block writes it is visibly wrong, not what the previous block left."""
    names = [re.match(r"\s*(\w+)", d).group(1) for d in _split_top_level(m.group(2))]
    fresh = " ".join(f"::softiou_emu::fresh_shared({n}, sizeof {n});" for n in names)
    return f"static {m.group(1)} {m.group(2)}; {fresh}"


def _split_top_level(text: str) -> list:
    """``text`` split at the commas outside parentheses (a launch's arguments: `<` may be a
    comparison there, so angle brackets do not nest)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _kernel_start(text: str, end: int) -> int:
    """Where the kernel expression that ends at ``end`` (before ``<<<``) starts: a qualified name
    with its template arguments."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    depth = 0
    while i > 0:
        ch = text[i - 1]
        if ch == ">":
            depth += 1
        elif ch == "<":
            depth -= 1
        elif depth == 0 and not (ch.isalnum() or ch in "_:"):
            break
        i -= 1
    return i


def rewrite(text: str, name: str = "<source>") -> str:
    """The CUDA source ``text`` with its launches and dynamic shared memory in plain C++."""
    out, pos = [], 0
    for m in _LAUNCH.finditer(text):
        start = _kernel_start(text, m.start())
        kernel = " ".join(text[start:m.start()].split())
        args = _split_top_level(m.group(1))
        if not kernel or not 2 <= len(args) <= 4:
            raise ValueError(f"{name}: a launch the emulation cannot read: "
                             f"{text[start:m.end()]!r}")
        shared = args[2] if len(args) > 2 else "0"
        out.append(text[pos:start])
        out.append(f"::softiou_emu::launch(&{kernel}, {args[0]}, {args[1]}, {shared})")
        pos = m.end()
    out.append(text[pos:])
    text = "".join(out)
    text = _EXTERN_SHARED.sub(
        lambda m: f"{m.group(1)}* {m.group(2)} = static_cast<{m.group(1)}*>("
                  "::softiou_emu::dynamic_shared());", text)
    if re.search(r"extern\s+__shared__", text):
        raise ValueError(f"{name}: dynamic shared memory the emulation cannot read")
    text = _SHARED.sub(_fresh_shared, text)
    # (not a macro of emulation.h: the standard library's own attributes spell __noinline__)
    text = re.sub(r"\b__noinline__\b", "__attribute__((noinline))", text)
    for left in ("<<<", "__shared__"):
        if left in text:
            raise ValueError(f"{name}: `{left}` left after the rewrite")
    return text


def _sources() -> list:
    """Every file under csrc/, relative to it (csrc/generated included: run codegen first)."""
    files = []
    for base, _, names in os.walk(os.path.join(ROOT, "csrc")):
        for n in names:
            if n.endswith((".h", ".cuh", ".cu", ".cpp")):
                files.append(os.path.relpath(os.path.join(base, n), os.path.join(ROOT, "csrc")))
    return sorted(files)


def _torch_flags() -> tuple:
    import torch
    from torch.utils import cpp_extension
    includes = ["-I" + p for p in cpp_extension.include_paths()]
    includes.append("-I" + sysconfig.get_paths()["include"])
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"
    libs = cpp_extension.library_paths()
    link = [f"-L{p}" for p in libs] + [f"-Wl,-rpath,{p}" for p in libs]
    link += ["-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]
    return includes + [abi], link, torch.__version__


def module_path() -> str:
    return os.path.join(OUT, MODULE + importlib.machinery.EXTENSION_SUFFIXES[0])


def build(jobs: int | None = None, verbose: bool = False) -> str:
    """Builds the emulation (or finds it built from the same inputs); returns the module's path.
    One process builds at a time (pytest-xdist's workers wait for the first)."""
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(jobs, verbose)


def _build(jobs, verbose):
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "codegen.py")], check=True,
                   capture_output=not verbose)
    compile_flags, link_flags, torch_version = _torch_flags()
    cxx = os.environ.get("CXX", "g++")
    digest = hashlib.sha256()
    for part in [cxx, torch_version, *FLAGS, *compile_flags, *link_flags]:
        digest.update(part.encode() + b"\0")
    files = _sources()
    for rel in files:
        digest.update(rel.encode() + b"\0")
        with open(os.path.join(ROOT, "csrc", rel), "rb") as f:
            digest.update(f.read())
    stamp = os.path.join(OUT, "digest")
    path = module_path()
    if os.path.exists(path) and os.path.exists(stamp) and open(stamp).read() == digest.hexdigest():
        return path

    src = os.path.join(OUT, "src", "csrc")
    shutil.rmtree(os.path.join(OUT, "src"), ignore_errors=True)
    for rel in files:
        with open(os.path.join(ROOT, "csrc", rel)) as f:
            text = f.read()
        if rel.startswith("cuda/") and rel.endswith((".cu", ".cuh")):
            text = rewrite(text, rel)
        dst = os.path.join(src, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "w") as f:
            f.write(text)
    include = ["-I" + os.path.join(src, "cuda", "emulation", "include")]

    def compile_unit(rel):
        obj = os.path.join(OUT, "obj", rel.replace("/", "_") + ".o")
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        lang = ["-x", "c++"] if rel.endswith(".cu") else []
        cmd = [cxx, *FLAGS, *include, *compile_flags, *lang, "-c", os.path.join(src, rel),
               "-o", obj]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"cuda emulation: compiling {rel} failed:\n{done.stderr[-20000:]}")
        return obj

    jobs = jobs or os.cpu_count() or 2
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        # the slowest (the kernels of one input dtype) first
        order = sorted(UNITS, key=lambda u: not u.startswith("cuda/kernels_"))
        objs = list(pool.map(compile_unit, order))
    tmp = path + ".tmp"
    done = subprocess.run([cxx, "-shared", "-o", tmp, *objs, *link_flags],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cuda emulation: linking failed:\n{done.stderr[-20000:]}")
    os.replace(tmp, path)
    with open(stamp, "w") as f:
        f.write(digest.hexdigest())
    return path


def load(path: str | None = None):
    """The built module (importing it twice returns the same module)."""
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    path = path or build()
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[MODULE] = module
    return module


if __name__ == "__main__":
    print(build(verbose=True))
