"""The CPU kernels' elementary functions (csrc/softiou_math.h: e^z for z <= 0 and log x for
x >= 1, written to vectorise) against double precision, in units in the last place: compiled
from the header itself by tests/math_probe.cpp, as the kernels compile it, with and without
fused multiply-adds."""

import os
import shlex
import shutil
import subprocess

import pytest

import softiou_cuda

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")
CXX = shlex.split(os.environ.get("CXX", "c++"))

# (build, its extra flags, the largest error allowed for e^z and for log x, in ulps): without
# fused multiply-adds (baseline x86-64), and with them (the AVX2 and AVX-512 builds)
BUILDS = [("baseline", [], 1.25, 1.0), ("avx2", ["-mavx2", "-mfma"], 1.0, 1.0)]


@pytest.mark.skipif(shutil.which(CXX[0]) is None, reason="needs a C++ compiler")
@pytest.mark.parametrize("name,flags,exp_ulps,log_ulps", BUILDS, ids=[b[0] for b in BUILDS])
def test_exp_and_log_are_within_an_ulp(tmp_path, name, flags, exp_ulps, log_ulps):
    if name not in softiou_cuda.operators.cpu_isas() and name != "baseline":
        pytest.skip(f"this processor does not run {name} code")
    exe = tmp_path / "math_probe"
    subprocess.run(CXX + ["-std=c++17", "-O3", "-fno-trapping-math", *flags, "-I", CSRC,
                          os.path.join(HERE, "math_probe.cpp"), "-o", str(exe)],
                   check=True, capture_output=True)
    out = subprocess.run([str(exe), "11"], check=True, capture_output=True, text=True).stdout
    exp_err, log_err = map(float, out.split())
    assert 0 < exp_err <= exp_ulps
    assert 0 < log_err <= log_ulps
