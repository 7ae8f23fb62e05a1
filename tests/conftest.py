"""Test configuration: the devices and backends to run on, and hypothesis profiles.

Every backend-level test is parametrised over ``(device, backend)`` for the fused backends that
can run here: ``cpu`` (C++), ``triton`` on the CPU through Triton's interpreter where no GPU is
present, and ``cuda`` and ``triton`` on a GPU.
"""

import atexit
import contextlib
import os
import shutil
import sys
import tempfile

# torch.compile's on-disk caches (Inductor, AOTAutograd) are keyed without the custom operators'
# fake kernels: a session must not reuse graphs compiled against another build of softiou.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="softiou-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import torch  # noqa: E402

# Triton reads TRITON_INTERPRET when it is imported: decide before anything imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import softiou_cuda  # noqa: E402

settings.register_profile(
    "default", max_examples=int(os.environ.get("SOFTIOU_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.load_profile("default")

# Where no GPU is present, the CUDA kernels' code runs emulated on the CPU (tools/cuda_emulation.py
# builds it, csrc/cuda/emulation/emulation.h says what it checks): backend="cuda" on CPU tensors,
# the case "cpu-cuda". SOFTIOU_CUDA_EMULATION=0 leaves it out.
CUDA_EMULATED = (not torch.cuda.is_available() and softiou_cuda.operators.HAS_EXTENSION
                 and os.environ.get("SOFTIOU_CUDA_EMULATION", "1") != "0")
if CUDA_EMULATED:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
    import cuda_emulation  # noqa: E402

    softiou_cuda.route.use_cuda_emulation(cuda_emulation.load())


def is_emulated(device, backend):
    """The CUDA kernels' code on CPU tensors: their device-side asserts raise, with the kernels'
    own messages (on a GPU one ends the process's CUDA context: test_cuda.py)."""
    return device == "cpu" and backend == "cuda"


@contextlib.contextmanager
def without_cuda_emulation():
    """backend="cuda" on CPU tensors as a user's installation has it: refused."""
    softiou_cuda.route.use_cuda_emulation(None)
    try:
        yield
    finally:
        if CUDA_EMULATED:
            softiou_cuda.route.use_cuda_emulation(cuda_emulation.load())

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def fused_backends(device):
    return [b for b in softiou_cuda.available_backends(device) if b != "reference"]


CASES = [(d, b) for d in DEVICES for b in fused_backends(d)]
CASE_IDS = [f"{d}-{b}" for d, b in CASES]


def is_interpreted(device, backend):
    return backend == "triton" and device == "cpu"


def is_triton(device, backend):
    """Triton runs the big option grids on a subset: interpreted it is slow, and on a GPU every
    new combination of constants and argument properties compiles a kernel anew."""
    return backend == "triton"


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request):
    """(device, backend) of every fused backend available here."""
    return request.param


def pytest_report_header(config):
    ops = softiou_cuda.operators
    lines = [f"softiou: torch {torch.__version__}, extension={ops.HAS_EXTENSION}, "
             f"cpu isa={ops.cpu_isa()}, cuda kernels={ops.has_cuda_kernels()}"]
    if torch.cuda.is_available():
        lines.append(f"softiou: GPU {torch.cuda.get_device_name()}")
    lines.append(f"softiou: cases {CASE_IDS}")
    return lines
