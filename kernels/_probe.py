"""A one-line kernel: does the installed Triton compile for an architecture (kernels.aot)?"""
import triton
import triton.language as tl


@triton.jit
def _store_one(X):
    tl.store(X, 1.0)
