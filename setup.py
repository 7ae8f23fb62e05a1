"""Builds softiou_cuda._C: the C++ operators, the CPU kernels, and the CUDA kernels where CUDA is
available (or FORCE_CUDA=1). The Triton kernels in triton_kernels/ install as the subpackage
softiou_cuda.triton_kernels (not as a top-level triton_kernels, which would shadow the unrelated
package of that name on PyPI).

    pip install --no-build-isolation -e .
"""

import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    if os.environ.get("SOFTIOU_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None and torch.cuda.is_available()


def shared_libstdcxx() -> list:
    """Link arguments that make the extension use the C++ runtime torch uses, where the compiler
    would link libstdc++ statically (a toolchain built with static standard libraries, or one
    whose driver adds -static-libstdc++). A private copy of libstdc++ inside the extension mixes
    its functions with the process's data (locale facets) and crashed, on a GPU machine whose g++
    does this, every C++ error message that formats a number. The runtime torch loaded is named
    by path, so that the linker resolves against it before the static archive."""
    cxx = shlex.split(os.environ.get("CXX", "c++"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.cpp")
            open(src, "w").close()
            dry = subprocess.run(cxx + ["-###", "-shared", "-o", os.path.join(tmp, "probe.so"),
                                        src], capture_output=True, text=True, timeout=60).stderr
        shared = subprocess.run(cxx + ["-print-file-name=libstdc++.so"], capture_output=True,
                                text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return []
    static = re.search(r'"?-Bstatic"?\s+"?-lstdc\+\+"?', dry) is not None \
        or not os.path.isabs(shared)
    if not static:
        return []
    with open("/proc/self/maps") as maps:  # torch is imported: its libstdc++ is mapped
        paths = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    return sorted(paths)[:1]


def generate():
    """csrc/generated/: the C++ side of the option declaration (tools/codegen.py)."""
    subprocess.run([sys.executable, os.path.join(HERE, "tools", "codegen.py")], check=True)


def extension():
    generate()
    sources = sorted(glob.glob("csrc/ops/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -fopenmp: at::parallel_for is an inline template whose OpenMP pragma is compiled here; the
    # extension then shares torch's libgomp.so.1 (same soname, loaded once).
    # -fno-trapping-math: lets the kernels' branch-free selects vectorise (results unchanged).
    # -Wl,-z,now: bind every symbol when the module loads, so the C++ exception runtime the
    # extension throws through is the one present at import, whatever libraries load later.
    # SOFTIOU_CXX_OPT (default -O3): the device check builds the CPU kernels with -O1, which it
    # does not time, to cut its build (the instruction-set builds of the CPU kernels are the
    # slowest translation units)
    opt = os.environ.get("SOFTIOU_CXX_OPT") or "-O3"  # (set and empty: the default)
    cxx = [opt, "-fno-trapping-math", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    link = ["-fopenmp", "-Wl,-z,now"] + shared_libstdcxx()
    macros = []
    if want_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        macros.append(("SOFTIOU_WITH_CUDA", None))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-std=c++17"]
        return CUDAExtension("softiou_cuda._C", sources, define_macros=macros,
                             extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                             extra_link_args=link)
    return CppExtension("softiou_cuda._C", sources, define_macros=macros,
                        extra_compile_args={"cxx": cxx}, extra_link_args=link)


setup(
    name="softiou",
    version="0.1.0",
    description="Fused soft IoU (Jaccard), Dice and Tversky losses as PyTorch operators",
    packages=["softiou_cuda", "softiou_cuda.compat", "softiou_cuda.triton_kernels"],
    package_dir={"softiou_cuda": "softiou_cuda", "softiou_cuda.compat": "softiou_cuda/compat",
                 "softiou_cuda.triton_kernels": "triton_kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.9",
    install_requires=["torch"],
    extras_require={
        "triton": ["triton"],
        "test": ["pytest", "hypothesis"],
        "demo": ["tqdm", "matplotlib"],
    },
)
