"""A kernel with a bug that only the real compiler sees: with t = 1 the JIT specialises t to the
constexpr 1, and ``(t - 1).to(...)`` is then a method call on a Python int. Triton's
interpreter passes t as a tensor and runs it. (cmacc's seeding kernel had exactly this bug
until ``do_not_specialize=["t"]``.)"""
import triton
import triton.language as tl


@triton.jit
def round_index_kernel(out_ptr, t, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.full((BLOCK,), 0, tl.int32) + (t - 1).to(tl.int32))
