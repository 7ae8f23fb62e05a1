"""How the extension is built: it uses the process's C++ runtime (setup.py: shared_libstdcxx)."""

import shutil
import subprocess

import pytest

import softiou_cuda


@pytest.mark.skipif(not softiou_cuda.operators.HAS_EXTENSION,
                    reason="the C++ extension is not built")
@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
def test_no_private_copy_of_libstdcxx():
    """A compiler that links libstdc++ statically put a private copy of it inside the extension
    on a GPU machine; its functions then ran on the process's locale data, and every C++ error
    message formatting a number crashed the process. The extension must import libstdc++."""
    from softiou_cuda import _C
    out = subprocess.run(["nm", "-D", "--defined-only", _C.__file__], capture_output=True,
                         text=True, check=True).stdout
    defined = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert "_ZNSt6locale7classicEv" not in defined  # std::locale::classic()
    assert "_ZNSo9_M_insertIlEERSoT_" not in defined  # std::ostream::_M_insert<long>
