"""Bisects the crash seen on the lent H100 (torch 2.11, GCC 13.3): inside pytest-xdist workers that
had run CUDA and Triton work, a C++ exception raised by softiou's CPU op segfaulted the worker,
while the same raise in a fresh process was caught normally. Each step runs in its own process:

    python tools/exception_probe.py

and prints which combination of earlier work (CPU op with OpenMP, CUDA op, Triton kernel) makes
a raise from softiou's extension (or from torch's own C++) crash.
"""

import subprocess
import sys
import textwrap

PRELUDES = {
    "nothing": "",
    "cpu-op": "softiou_cuda.soft_iou_loss(torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)))",
    "cuda-op": "softiou_cuda.soft_iou_loss(torch.randn(2, 3, 64, 64, device='cuda'), "
               "torch.randint(0, 3, (2, 64, 64), device='cuda'), backend='cuda')",
    "triton": "softiou_cuda.soft_iou_loss(torch.randn(2, 3, 64, 64, device='cuda'), "
              "torch.randint(0, 3, (2, 64, 64), device='cuda'), backend='triton')",
}
RAISES = {
    "softiou": "torch.ops.softiou.stats(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "
               "None, 'softmax', True, 1.0, 'product', None)",
    "torch": "torch.mm(torch.ones(2, 3), torch.ones(2, 3))",
}

for pname, prelude in PRELUDES.items():
    for rname, raise_ in RAISES.items():
        code = textwrap.dedent(f"""
            import torch, softiou_cuda
            {prelude}
            try:
                {raise_}
            except Exception as e:
                print('caught', type(e).__name__)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        print(f"after {pname:8s} raise from {rname:8s}: rc={out.returncode} "
              f"{(out.stdout.strip() or out.stderr.strip()[-120:])}")
