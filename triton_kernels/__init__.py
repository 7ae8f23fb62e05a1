"""Triton implementation of the softiou kernels (installed as softiou_cuda.triton_kernels)."""
