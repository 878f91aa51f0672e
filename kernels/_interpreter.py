"""Two bf16 bugs of Triton 3.6's CPU interpreter (``TRITON_INTERPRET=1``), fixed where fastgpt runs
its kernels under it (the CPU test suite, ``python -m fastgpt.selftest`` on a CPU).

The interpreter keeps bf16 values as their 16-bit patterns in numpy uint16 arrays, and
  1. casts fp32 -> bf16 by truncation (``_convert_float`` with no rounding mode), where the GPU
     rounds to nearest even: twice the rounding error, biased towards zero. Measured on 1024 N(0, 1)
     values: 518 differ from torch's ``.bfloat16()``, all equal to the truncated bits;
  2. multiplies bf16 ``tl.dot`` operands as those raw integers (a 1 x 2 x 8 x 16 attention forward
     was off by 8e8).
Both made bf16 kernels under the interpreter less exact than on the GPU (a bf16 autocast block
failed the tolerance rule on the CPU for that reason), or wrong. ``patch()`` replaces the
interpreter builder's bf16 casts with round-to-nearest-even ones (NaN stays NaN) and widens bf16 dot
operands to fp32 (exact: a product of two bf16 values fits an fp32 mantissa) before its fp32
matmul, as the tensor cores compute. fp16 and fp32 are untouched. Applied once, under the
interpreter only; a Triton whose interpreter is laid out otherwise is left as it is (patch() then
returns False, and the suite's bf16 checks under the interpreter say so by failing).
"""
from __future__ import annotations

import numpy as np

_PATCHED = False


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """fp32 values -> bf16 bit patterns (uint16), rounded to nearest even; a NaN stays a (quiet) NaN."""
    x = np.asarray(x, dtype=np.float32)
    b = x.view(np.uint32).astype(np.uint64)
    out = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((b[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def bf16_bits_to_f32(u: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> fp32 values (exact)."""
    return (np.asarray(u, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def patch() -> bool:
    """Fix the interpreter's bf16 casts and dots (see the module docstring); True when patched."""
    global _PATCHED
    if _PATCHED:
        return True
    try:
        import triton.language as tl
        from triton.runtime import interpreter as I
        B, TensorHandle = I.InterpreterBuilder, I.TensorHandle
        cast, fp_to_fp, dot = B.cast_impl, B.create_fp_to_fp, B.create_dot
    except (ImportError, AttributeError):
        return False

    def to_f32(h):
        """A bf16 handle as an fp32 one; any other handle as it is."""
        return TensorHandle(bf16_bits_to_f32(h.data), tl.float32) if h.dtype.scalar == tl.bfloat16 else h

    def convert(self, src, dst_type, fallback):
        s, d = src.dtype.scalar, dst_type.scalar
        if s == tl.bfloat16 and d != tl.bfloat16:      # widen exactly, then the interpreter's own cast
            f = to_f32(src)
            return f if d == tl.float32 else cast(self, f, dst_type)
        if d == tl.bfloat16 and s != tl.bfloat16:      # to fp32 (exact or the interpreter's), then round
            f = src if s == tl.float32 else cast(self, src, tl.float32)
            return TensorHandle(f32_to_bf16_bits(f.data), tl.bfloat16)
        return fallback()

    def cast_impl(self, src, dst_type):
        return convert(self, src, dst_type, lambda: cast(self, src, dst_type))

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        return convert(self, src, dst_type, lambda: fp_to_fp(self, src, dst_type, rounding_mode))

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return dot(self, to_f32(a), to_f32(b), d, input_precision, max_num_imprecise_acc)

    # (the builder's other casts, create_fp_trunc, create_fp_ext, ..., call self.cast_impl)
    B.cast_impl, B.create_fp_to_fp, B.create_dot = cast_impl, create_fp_to_fp, create_dot
    _PATCHED = True
    return True
