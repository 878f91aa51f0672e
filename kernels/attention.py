"""Exact causal attention by the FlashAttention-2 method, forward and backward, in Triton.

Shapes: q (B, H, Tq, D), k and v (B, H, Tk, D), 1 <= Tq <= Tk. Query i sees keys
j <= i + (Tk - Tq): the causal mask is aligned bottom-right (flash-attention's
convention; with Tq == Tk the usual lower triangle, with Tq < Tk the queries are
the last Tq positions, as in KV-cache decoding or chunked prefill).

Forward, for a tile of BLOCK_M query rows against streamed BLOCK_N key blocks
(online softmax in base 2, c = scale * log2(e) folded into one multiply):
    s    = (q k^T) * c                     fp32 accumulator of tl.dot
    m'   = max(m, rowmax(s));  p = 2^(s - m');  a = 2^(m - m')
    l    = a l + rowsum(p);  acc = a acc + p v       (p cast to v's dtype for the dot)
    o    = acc / l                                   (stored in q's dtype)
    lse2 = m + log2 l                                (fp32, saved for backward: the row's
                                                      logsumexp in base 2, = lse * log2(e))
No T x T matrix exists anywhere. Key blocks entirely above the diagonal are
never visited; only the blocks that straddle it apply the causal mask.
Backward, with P = 2^(q k^T c - lse2) recomputed blockwise from the saved lse2:
    delta = rowsum(dO * O)                           (fp32)
    dV    = P^T dO
    dS    = P * (dO V^T - delta)
    dQ    = scale * dS K,   dK = scale * dS^T Q
The dQ kernel runs first: it holds one query block, computes that block's delta
(it has dO in hand; one extra read of O) and stores it, then walks the block's
keys. The dK/dV kernel, launched after it, holds one key block and walks the
query blocks that see it, reading delta. Two launches, no separate delta pass;
every output element is written by exactly one program: no atomics, bitwise
deterministic. This is the default (BWD_DQ = "split").
The atomic-dQ backward (BWD_DQ = "atomic", FASTGPT_ATTENTION_DQ=atomic) does the
backward's five products instead of the split's seven: a prologue computes delta
and zeroes an fp32 (B, H, Tq, D) accumulator, the dK/dV kernel also forms each
query block's dS K and adds it there (fp32 atomic adds), and an epilogue writes
dQ = scale * accumulator in q's dtype. Three launches and 4 B Tq D H bytes of
scratch. The adds land in any order, so dQ may differ between runs in its last
fp32 bits (then, rarely, by one bf16/fp16 ulp): flash-attention's and cuDNN's
default trade. dK and dV stay bitwise deterministic, and with
torch.use_deterministic_algorithms(True) the split path runs whatever BWD_DQ says.

Precision: dots take fp16/bf16 operands with fp32 accumulation; P and dS are
rounded to the input dtype before their dots (as in FlashAttention-2). fp32
inputs use TF32 tensor-core dots on the GPU with every operand rounded to
nearest first (the tensor cores would otherwise truncate, ~2.5x the error):
the accuracy of PyTorch's allow_tf32 GEMMs, ~5e-4 relative on o (emulated on
the CPU at T=1024, D=64); exact fp32 dots under the CPU interpreter.

Limits: head dim 1 <= D <= 256 (padded to a power-of-two BLOCK_D >= 16 with
masks, so 80 or 96 work); any Tq, Tk >= 1; fp16, bf16, fp32 (q, k, v of one
dtype, on one device). q, k, v may be strided views (e.g. slices of one fused
qkv projection): every stride is passed to the kernels, only a last-dim stride
other than 1 forces a copy. Within one (batch, head), T * row stride must stay
below 2^31 elements.

Dropout (dropout_p = p > 0) acts on the normalised weights P, as in GPT-1:
o = (P * M / (1 - p)) V with M a keep mask (p quantised, below); the softmax sums l use the undropped
P. The backward needs no new reduction: with dP~ = dO V^T,
    dV = (P * M / (1 - p))^T dO,   dS = P * (dP~ * M / (1 - p) - delta)
and delta = rowsum(dO * O) is unchanged (O already holds the dropout). M is
regenerated in the backward, never stored. Its bits come from Triton's Philox
(tl.philox, 4x32-7) keyed by a (seed, offset) int64 pair that torch's
generator draws on the inputs' device. One Philox call (four 32-bit words,
sixteen bytes) serves a group of 16 elements: query rows {i, i + 8} x keys
{j + 8 t + e : t < 4, e < 2} (i % 16 < 8, j % 32 < 8, j even). That is what one
thread holds of a tensor-core accumulator tile with queries as rows (the forward
and dQ tiles), so each call is computed once. A thread of the dK/dV tile (keys as
rows) holds other elements; there the compiled kernel still runs each call once
and trades bytes through shared memory (its SASS). (Groups of consecutive keys,
the extension's scheme, made every thread of a quad run the same call: ~2x the
instructions, ATTENTION_NOTES.md v5.) Each element compares 8 random bits and
Philox runs 7 rounds, flash-attention 2's choices (Philox4x32-7 passes BigCrush,
Salmon et al. 2011; 10 rounds is the usual margin): a quarter of the Philox work
of 16-bit compares and 10 rounds (ATTENTION_NOTES.md v10). With n = b H + h, rows
padded to a multiple of 16 and keys to one of 32, group
    g = (n ceil(Tq / 16) 8 + i // 16 * 8 + i % 8) * ceil(Tk / 32) 4 + j // 32 * 4 + j % 8 // 2
has counter (lo32 g, hi32 g, lo32 offset, hi32 offset) and key (lo32 seed,
hi32 seed); element (i + 8 di, j + 8 t + e) reads byte 2 (t // 2) + e (lowest
first) of word 2 di + t % 2 and is kept iff it is >= thr = round(256 p) clipped
to [1, 255]: p acts in steps of 1/256 (0.1 drops 26/256 = 10.2 %), and kept
weights are scaled by 256 / (256 - thr), so the output's expectation is exact
(reference.attention_dropout_threshold and attention_dropout_scale).
reference.attention_keep_mask is the same function in PyTorch.
With p = 0 the kernels are compiled without any of it.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgpt import reference
from fastgpt.backend import first_order_only
from fastgpt.kernels import INTERPRET, _common
from fastgpt.kernels._common import (autotune, autotuning_enabled, cdiv, check_float, check_grad, check_same_device,
                                     current_stream, empty, launch_replayable, misaligned, next_pow2, on_its_device,
                                     PlanCache, records_grad)

MAX_HEAD_DIM = 256
# a launch grid's second axis (query or key blocks) holds at most 65535 blocks, of at least 32 rows in
# every launch config (the autotuner tries them all)
MAX_T = 65535 * 32
LOG2E = 1.4426950408889634
# the forward's fast branch needs its fp32 scale c > 0 (-inf * c must stay -inf): below the smallest
# normal fp32 the kernel's c may be a subnormal flushed to zero
_FP32_MIN_NORMAL = 2.0 ** -126
OUT_LAYOUTS = ("bhtd", "bthd")
# The backward's dQ: "split" (default: its own pass, no atomics, bitwise deterministic) or "atomic"
# (the dK/dV pass adds it into an fp32 buffer: one pass over the keys' work; see the header).
BWD_DQ_MODES = ("split", "atomic")
BWD_DQ = os.environ.get("FASTGPT_ATTENTION_DQ", "split").strip().lower() or "split"
if BWD_DQ not in BWD_DQ_MODES:
    raise ValueError(f"FASTGPT_ATTENTION_DQ must be one of {BWD_DQ_MODES}, got {BWD_DQ!r}")


# ----------------------------------------------------------------------------- launch configs
# Under the interpreter one fixed config runs (BLOCK_M != BLOCK_N on purpose, so the
# block-skipping arithmetic is exercised in its general form). On the GPU a small space,
# keyed on the head dim and a power-of-two bucket of the sequence length; configs that cannot
# fit in the device's shared memory are pruned before they are compiled (_pruner), and any other
# that does not fit is compiled, then skipped by the autotuner when its launch is refused.

def _cfg(bm, bn, w, s):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)


# The last config of each GPU space is small enough for D = 256 in fp32, so the space
# always holds one that fits in shared memory. `python -m benchmarks.compile_report --only
# attention` shows each config's registers and spills for sm_90 without a GPU. Spills alone do
# not rule a config out: the fastest dK/dV configs at D = 64 (H100, benchmarks/ATTENTION_NOTES.md,
# v3 and v4) have 4 warps, and with dropout most of them spill (the default (16, 128, 4, 3): 40
# bytes a thread; (32, 128, 4, 3) spills at every head dim, 104 bytes at D = 64 without dropout).
_FWD_SPACE = [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 3), (128, 32, 4, 4),
              (64, 64, 4, 3), (64, 32, 4, 4), (64, 64, 4, 2), (32, 32, 4, 1)]
_DKDV_SPACE = [(16, 128, 4, 3), (32, 128, 4, 3), (32, 64, 4, 3), (64, 64, 4, 3),  # BLOCK_M: query rows
               (16, 128, 4, 5), (32, 128, 8, 2), (64, 128, 8, 3), (16, 64, 4, 2),  # streamed, BLOCK_N held
               (16, 32, 4, 1)]
_DQ_SPACE = [(128, 64, 8, 3), (128, 32, 8, 2), (64, 32, 4, 3), (128, 64, 8, 2),   # BLOCK_M held,
             (128, 32, 4, 5), (64, 64, 4, 3), (64, 64, 4, 2), (32, 32, 4, 2),     # BLOCK_N streamed
             (32, 16, 4, 1)]
_INTERPRET_CFG = {"fwd": (64, 32, 4, 1), "dkdv": (32, 64, 4, 1), "dq": (64, 32, 4, 1)}


def _space(kind):
    if INTERPRET:
        return [_cfg(*_INTERPRET_CFG[kind])]
    return [_cfg(*c) for c in {"fwd": _FWD_SPACE, "dkdv": _DKDV_SPACE, "dq": _DQ_SPACE}[kind]]


# With AUTOTUNE False (FASTGPT_AUTOTUNE=0; the GPU tests and selftest --quick, to skip
# minutes of tuning over many shapes) the launchers use default_config(), a hand-picked
# config per head dim that fits shared memory.
AUTOTUNE = autotuning_enabled()


def default_config(kind: str, head_dim: int, dtype: torch.dtype, dropout: bool = False, smaller: int = 0) -> dict:
    """A fixed launch config for kernel kind "fwd" | "dkdv" | "dq" (no autotuning); with dropout
    the key block (BLOCK_N) is at least 32, the keep mask's group width. ``smaller`` steps down the
    table that many tile sizes (its last is the smallest), for GPUs with less shared memory."""
    if INTERPRET:
        bm, bn, w, s = _INTERPRET_CFG[kind]
    else:
        row_bytes = _block_d(head_dim) * (4 if dtype == torch.float32 else 2)   # one row of a tile
        size = 0 if row_bytes <= 128 else 1 if row_bytes <= 256 else 2 if row_bytes <= 512 else 3
        size = min(size + smaller, 3)
        bm, bn, w, s = {  # the fastest measured at D = 64 (H100); spill-free at D = 128 without dropout
            "fwd": [(128, 64, 8, 3), (128, 64, 8, 3), (64, 32, 4, 2), (32, 32, 4, 1)],
            "dkdv": [(16, 128, 4, 3), (32, 128, 8, 2), (16, 32, 4, 2), (16, 32, 4, 1)],
            "dq": [(128, 64, 8, 3), (128, 32, 8, 2), (32, 32, 4, 2), (32, 16, 4, 1)],
        }[kind][size]
    if dropout:
        bn = max(bn, 32)
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s}


def smem_floor(kind: str, block_m: int, block_n: int, stages: int, block_d: int, elem_size: int) -> int:
    """Bytes of shared memory a launch config of kernel ``kind`` needs at the least: its loop's ``stages``
    buffers of the streamed tile pair (K, V in the forward and dQ passes; Q, dO in dK/dV), and dK/dV's
    held K, V tiles. Triton 3.6 allocates at least this for every config of the three spaces (compiled for
    sm_90 at D = 64 to 256, fp16 / bf16 / fp32, dropout on and off: 313 kernels, 2026-11-27);
    benchmarks/compile_report.py checks it on every kernel it compiles."""
    if kind == "dkdv":
        return elem_size * block_d * 2 * (stages * block_m + block_n)
    return elem_size * block_d * 2 * stages * block_n


def _smem_limit(device: torch.device) -> Optional[int]:
    """The device's shared memory per block (_common.max_shared_mem), or None where the driver cannot say
    (benchmarks/compile_report's compile-only stand-in)."""
    try:
        return _common.max_shared_mem(device.index or 0)
    except (AttributeError, KeyError, RuntimeError):
        return None


def _pruner(kind: str):
    """The autotuner's configs for a launch of kernel ``kind``:
    - with dropout only those whose key block (BLOCK_N) is a multiple of 32, the keep mask's group width;
    - on a GPU, not those whose smem_floor is above the device's shared memory: triton would compile each
      (seconds) only to refuse its launch (at D = 256 or in fp32 at D = 128, most of the forward's and
      dK/dV's space on an H100; more on GPUs with less shared memory).
    Every space ends with a small config (dQ's (32, 32, 4, 2) fits D = 256 fp32 in 160 KiB on sm_90),
    kept when all the others are pruned."""
    def prune(configs, named_args, **kwargs):
        if kwargs.get("DROPOUT"):
            configs = [c for c in configs if c.kwargs["BLOCK_N"] % 32 == 0]
        q = named_args.get("Q")
        limit = _smem_limit(q.device) if getattr(q, "is_cuda", False) else None
        if limit is None:
            return configs
        fits = [c for c in configs if smem_floor(kind, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages,
                                                 kwargs["BLOCK_D"], q.element_size()) <= limit]
        return fits or configs[-1:]
    return prune


# ----------------------------------------------------------------------------- kernels
# Sequence lengths and the head count are not specialised on (value 1, divisibility by 16):
# one compiled kernel serves every T for a given head dim, dtype and stride alignment.
_NO_SPEC = ["H", "TQ", "TK", "T_BUCKET", "DROP_THR"]


@triton.jit
def _tf32(x, ROUND: tl.constexpr):
    """x rounded to TF32 (10-bit mantissa, nearest, ties away) when ROUND, else x.

    The tensor cores read fp32 operands of a TF32 dot by dropping the low 13 bits
    (truncation, ~2.5x the error of rounding); cuBLAS's TF32 rounds. Adding half an
    ulp of TF32 to the bits and masking rounds (inf stays inf). A NaN is kept aside: the
    add would carry CUDA's NaN (0x7FFFFFFF) into the sign bit (-0.0), and a NaN whose
    payload is all in the low 13 bits into inf, and a diverged fp32 run would go on with
    finite numbers. The NaN gets its quiet bit (bit 22) set, so that it is still a NaN
    once the tensor cores drop its low 13 bits: kept as it was, 0x7F800001 reached the
    dot as inf (the H200 run, 2026-11-29: a NaN in k left rows of o finite). (PTX's
    cvt.rna.tf32.f32 keeps NaN in one instruction, but compiled to more spills in the
    dK/dV kernel at sm_90, and the interpreter cannot run it.)"""
    if ROUND:
        xi = x.to(tl.int32, bitcast=True)
        x = tl.where(x != x, xi | 0x400000, (xi + 0x1000) & -8192).to(tl.float32, bitcast=True)
    return x


@triton.jit
def _load_tile(ptrs, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, MASK_ROWS: tl.constexpr,
               EVEN_D: tl.constexpr):
    """Load a (rows, BLOCK_D) tile; rows >= n_rows and columns >= HEAD_DIM read as 0."""
    if MASK_ROWS:
        if EVEN_D:
            t = tl.load(ptrs, mask=(rows < n_rows)[:, None], other=0.0)
        else:
            t = tl.load(ptrs, mask=(rows < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    else:
        if EVEN_D:
            t = tl.load(ptrs)
        else:
            t = tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    return t


@triton.jit
def _store_tile(ptrs, val, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr):
    if EVEN_D:
        tl.store(ptrs, val, mask=(rows < n_rows)[:, None])
    else:
        tl.store(ptrs, val, mask=(rows < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit
def _load_seed(SEED, DROPOUT: tl.constexpr):
    """The dropout (seed, offset) pair, int64 scalars (0, 0 when DROPOUT is off: SEED is None)."""
    seed = 0
    offset = 0
    if DROPOUT:
        seed = tl.load(SEED)
        offset = tl.load(SEED + 1)
    return seed, offset


@triton.jit
def _keep_mask(seed, offset, start_m, start_n, bh, TQ, TK, thr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               TRANS: tl.constexpr):
    """The dropout keep mask of query rows [start_m, start_m + BLOCK_M) x keys [start_n,
    start_n + BLOCK_N): (BLOCK_M, BLOCK_N) bool, or its transpose when TRANS. start_m and
    BLOCK_M are multiples of 16, start_n and BLOCK_N of 32. One Philox4x32-7 call per group
    of 16 elements, rows {i, i + 8} x keys {j + 8 t + e} (t < 4, e < 2; see the header)."""
    gi = start_m // 2 + tl.arange(0, BLOCK_M // 2)                       # i // 16 * 8 + i % 8
    gj = start_n // 8 + tl.arange(0, BLOCK_N // 8)                       # j // 32 * 4 + j % 8 // 2
    groups = (bh.to(tl.int64) * ((TQ + 15) // 16 * 8) + gi)[:, None] * ((TK + 31) // 32 * 4) + gj[None, :]
    c0 = groups.to(tl.uint32)
    zero = c0 * 0
    w0, w1, w2, w3 = tl.philox(seed, c0, (groups >> 32).to(tl.uint32), zero + (offset & 0xFFFFFFFF).to(tl.uint32),
                               zero + (offset >> 32).to(tl.uint32), n_rounds=7)
    # word 2 di + dj serves row i + 8 di; its byte 2 y + x key j + 8 (2 y + dj) + x.
    # join appends the new axis last: join(join(a, b), join(c, d))[..., x, y] = (a, b, c, d)[2 y + x]
    w = tl.join(tl.join(w0, w1), tl.join(w2, w3))                        # (BLOCK_M/2, BLOCK_N/8, dj, di)
    u = tl.join(tl.join(w & 0xFF, (w >> 8) & 0xFF), tl.join((w >> 16) & 0xFF, w >> 24))   # (..., x, y)
    u = tl.reshape(u, (BLOCK_M // 16, 8, BLOCK_N // 32, 4, 2, 2, 2, 2))  # (a, r, b, c, dj, di, x, y)
    u = tl.reshape(tl.permute(u, (0, 5, 1, 2, 7, 4, 3, 6)), (BLOCK_M, BLOCK_N))  # rows (a, di, r), keys (b, y, dj, c, x)
    if TRANS:
        u = tl.trans(u)
    return u >= thr


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, start_m, rows, offs_n, offs_d,
               lo, hi, TK, causal_off, qk_scale, seed, offset, bh, TQ, thr,
               MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr,
               TF32: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, POS_SCALE: tl.constexpr):
    """Stream key blocks [lo, hi) through the online softmax of one query tile."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k = _tf32(_load_tile(K + cols[:, None] * stride_kt + offs_d[None, :], cols, TK, offs_d, HEAD_DIM, MASKED,
                             EVEN_D), TF32)
        s = tl.dot(q, tl.trans(k))
        # scale > 0: the row max commutes with the scaling (m is the same number), so the scaled
        # scores are never formed: p = 2^(qk c - m) is one fused multiply-add per element, as the
        # backward recomputes P (2^(qk c - lse2)). Else scale first (the max of qk would be the
        # min of the scores); the multiply by 1 is exact and compiles away.
        if POS_SCALE:
            c = qk_scale
        else:
            s = s * qk_scale
            c = 1.0
        if MASKED:  # the diagonal block(s): query i sees key j <= i + Tk - Tq (also cuts j >= Tk)
            s = tl.where(cols[None, :] <= rows[:, None] + causal_off, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * c)
        p = tl.exp2(s * c - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:  # l sums the undropped weights; 1 / (1 - p) is applied to o at the end
            p = tl.where(_keep_mask(seed, offset, start_m, start_n, bh, TQ, TK, thr, BLOCK_M, BLOCK_N, False), p, 0.0)
        v = _tf32(_load_tile(V + cols[:, None] * stride_vt + offs_d[None, :], cols, TK, offs_d, HEAD_DIM, MASKED,
                             EVEN_D), TF32)
        acc = tl.dot(_tf32(p.to(v.dtype), TF32), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=_NO_SPEC)
def _attn_fwd_kernel(
    Q,          # (B, H, Tq, D) strides (stride_qb, stride_qh, stride_qt, 1)
    K,          # (B, H, Tk, D) strides (stride_kb, stride_kh, stride_kt, 1)
    V,          # (B, H, Tk, D) strides (stride_vb, stride_vh, stride_vt, 1)
    O,          # (B, H, Tq, D) output, q's dtype, strides (stride_ob, stride_oh, stride_ot, 1)
    LSE,        # (B, H, Tq) fp32 logsumexp in base 2 (lse2 = lse * log2(e)), contiguous
    SEED,       # int64 (seed, offset) of the dropout mask (read only when DROPOUT)
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
    H, TQ, TK, qk_scale,  # qk_scale = scale * log2(e)
    DROP_THR, inv_keep,   # dropout: keep iff the element's byte >= DROP_THR; inv_keep = 256 / (256 - DROP_THR)
    T_BUCKET,             # autotune key only (power-of-two bucket of Tk)
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, TF32: tl.constexpr,
    DROPOUT: tl.constexpr, POS_SCALE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # grid (B*H, query blocks): axis 0 has no 65535 cap. The heaviest (last) query blocks
    # run first, every head's at once: better tail balance under causal skipping.
    start_m = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    O += b * stride_ob + h * stride_oh
    LSE += bh.to(tl.int64) * TQ
    causal_off = TK - TQ
    seed, offset = _load_seed(SEED, DROPOUT)

    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _tf32(_load_tile(Q + rows[:, None] * stride_qt + offs_d[None, :], rows, TQ, offs_d, HEAD_DIM, True, EVEN_D),
              TF32)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    # keys [0, n_full) are visible to every row of the tile; [n_full, n_end) straddle the diagonal
    n_full = ((start_m + causal_off + 1) // BLOCK_N) * BLOCK_N
    n_end = tl.minimum(start_m + BLOCK_M + causal_off, TK)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, start_m, rows, offs_n, offs_d,
                               0, n_full, TK, causal_off, qk_scale, seed, offset, bh, TQ, DROP_THR,
                               False, BLOCK_N, HEAD_DIM, EVEN_D, TF32, DROPOUT, BLOCK_M, POS_SCALE)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, start_m, rows, offs_n, offs_d,
                               n_full, n_end, TK, causal_off, qk_scale, seed, offset, bh, TQ, DROP_THR,
                               True, BLOCK_N, HEAD_DIM, EVEN_D, TF32, DROPOUT, BLOCK_M, POS_SCALE)
    # every real row saw key 0, so l_i >= 1 and m_i is finite
    if DROPOUT:
        o = acc * (inv_keep / l_i)[:, None]
    else:
        o = acc / l_i[:, None]
    _store_tile(O + rows[:, None] * stride_ot + offs_d[None, :], o.to(O.dtype.element_ty), rows, TQ,
                offs_d, HEAD_DIM, EVEN_D)
    tl.store(LSE + rows, m_i + tl.log2(l_i), mask=rows < TQ)


@triton.jit
def _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_dt, start_n, cols, offs_m, offs_d,
                lo, hi, TQ, causal_off, qk_scale, seed, offset, bh, TK, thr, inv_keep, DQACC,
                MASKED: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr,
                TF32: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_N: tl.constexpr, DQ_ATOMIC: tl.constexpr):
    """Accumulate one key block's dK, dV over the query blocks [lo, hi); with DQ_ATOMIC also add
    each query block's share of dQ / scale, dS K, into the fp32 DQACC rows."""
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m
        q = _tf32(_load_tile(Q + rows[:, None] * stride_qt + offs_d[None, :], rows, TQ, offs_d, HEAD_DIM, True,
                             EVEN_D), TF32)
        # rows >= Tq: lse = +inf makes their P exactly 0
        lse2 = tl.load(LSE + rows, mask=rows < TQ, other=float("inf"))
        zT = tl.dot(k, tl.trans(q)) * qk_scale - lse2[None, :]                # (BLOCK_N, BLOCK_M)
        if MASKED:  # masked before exp2, so no overflow in the entries thrown away
            zT = tl.where(cols[:, None] <= rows[None, :] + causal_off, zT, float("-inf"))
        pT = tl.exp2(zT)
        do = _tf32(_load_tile(DO + rows[:, None] * stride_dt + offs_d[None, :], rows, TQ, offs_d, HEAD_DIM, True,
                              EVEN_D), TF32)
        dpT = tl.dot(v, tl.trans(do))
        if DROPOUT:
            keepT = _keep_mask(seed, offset, start_m, start_n, bh, TQ, TK, thr, BLOCK_M, BLOCK_N, True)
            dv = tl.dot(_tf32(tl.where(keepT, pT * inv_keep, 0.0).to(do.dtype), TF32), do, dv)
            dpT = tl.where(keepT, dpT * inv_keep, 0.0)
        else:
            dv = tl.dot(_tf32(pT.to(do.dtype), TF32), do, dv)
        delta = tl.load(DELTA + rows, mask=rows < TQ, other=0.0)
        dsT = _tf32((pT * (dpT - delta[None, :])).to(q.dtype), TF32)
        dk = tl.dot(dsT, q, dk)
        if DQ_ATOMIC:
            dq = tl.dot(tl.trans(dsT), k)                                      # (BLOCK_M, BLOCK_D) fp32
            tl.atomic_add(DQACC + rows[:, None] * HEAD_DIM + offs_d[None, :], dq,
                          mask=(rows < TQ)[:, None] & (offs_d < HEAD_DIM)[None, :], sem="relaxed")
    return dk, dv


@triton.jit(do_not_specialize=_NO_SPEC)
def _attn_bwd_dkdv_kernel(
    Q,          # (B, H, Tq, D) strides (stride_qb, stride_qh, stride_qt, 1)
    K,          # (B, H, Tk, D) strides (stride_kb, stride_kh, stride_kt, 1)
    V,          # (B, H, Tk, D) strides (stride_vb, stride_vh, stride_vt, 1)
    DO,         # (B, H, Tq, D) grad of o, strides (stride_db, stride_dh, stride_dt, 1)
    LSE,        # (B, H, Tq) fp32 forward logsumexp in base 2, contiguous
    DELTA,      # (B, H, Tq) fp32 rowsum(dO * O), contiguous
    DK,         # (B, H, Tk, D) output, k's dtype, strides (stride_dkb, stride_dkh, stride_dkt, 1)
    DV,         # (B, H, Tk, D) output, v's dtype, strides (stride_dvb, stride_dvh, stride_dvt, 1)
    SEED,       # int64 (seed, offset) of the dropout mask (read only when DROPOUT)
    DQACC,      # with DQ_ATOMIC: (B, H, Tq, D) fp32 dQ / scale, contiguous, zeroed (else None)
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_db, stride_dh, stride_dt,
    stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
    H, TQ, TK, scale, qk_scale, DROP_THR, inv_keep,
    T_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, TF32: tl.constexpr,
    DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DQ_ATOMIC: tl.constexpr,
):
    start_n = tl.program_id(1) * BLOCK_N   # key block 0 (seen by the most queries) first
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    DO += b * stride_db + h * stride_dh
    LSE += bh.to(tl.int64) * TQ
    DELTA += bh.to(tl.int64) * TQ
    DK += b * stride_dkb + h * stride_dkh
    DV += b * stride_dvb + h * stride_dvh
    if DQ_ATOMIC:
        DQACC += bh.to(tl.int64) * TQ * HEAD_DIM
    causal_off = TK - TQ
    seed, offset = _load_seed(SEED, DROPOUT)

    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    k = _tf32(_load_tile(K + cols[:, None] * stride_kt + offs_d[None, :], cols, TK, offs_d, HEAD_DIM, True, EVEN_D),
              TF32)
    v = _tf32(_load_tile(V + cols[:, None] * stride_vt + offs_d[None, :], cols, TK, offs_d, HEAD_DIM, True, EVEN_D),
              TF32)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    # query i sees key j iff i >= j - causal_off: rows before m_lo see none of this block,
    # rows from m_full on see all of it; [m_lo, m_full) straddle the diagonal.
    m_lo = (tl.maximum(start_n - causal_off, 0) // BLOCK_M) * BLOCK_M
    m_full = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - causal_off, 0), BLOCK_M) * BLOCK_M
    m_full = tl.minimum(m_full, tl.cdiv(TQ, BLOCK_M) * BLOCK_M)
    dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_dt, start_n, cols, offs_m, offs_d,
                         m_lo, m_full, TQ, causal_off, qk_scale, seed, offset, bh, TK, DROP_THR, inv_keep, DQACC,
                         True, BLOCK_M, HEAD_DIM, EVEN_D, TF32, DROPOUT, BLOCK_N, DQ_ATOMIC)
    dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_dt, start_n, cols, offs_m, offs_d,
                         m_full, TQ, TQ, causal_off, qk_scale, seed, offset, bh, TK, DROP_THR, inv_keep, DQACC,
                         False, BLOCK_M, HEAD_DIM, EVEN_D, TF32, DROPOUT, BLOCK_N, DQ_ATOMIC)
    _store_tile(DK + cols[:, None] * stride_dkt + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), cols, TK,
                offs_d, HEAD_DIM, EVEN_D)
    _store_tile(DV + cols[:, None] * stride_dvt + offs_d[None, :], dv.to(DV.dtype.element_ty), cols, TK, offs_d,
                HEAD_DIM, EVEN_D)


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, K, V, stride_kt, stride_vt, start_m, rows, offs_n, offs_d,
              lo, hi, TK, causal_off, qk_scale, seed, offset, bh, TQ, thr, inv_keep,
              MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr,
              TF32: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr):
    """Accumulate one query block's dQ over the key blocks [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k = _tf32(_load_tile(K + cols[:, None] * stride_kt + offs_d[None, :], cols, TK, offs_d, HEAD_DIM, MASKED,
                             EVEN_D), TF32)
        v = _tf32(_load_tile(V + cols[:, None] * stride_vt + offs_d[None, :], cols, TK, offs_d, HEAD_DIM, MASKED,
                             EVEN_D), TF32)
        z = tl.dot(q, tl.trans(k)) * qk_scale - lse2[:, None]
        if MASKED:
            z = tl.where(cols[None, :] <= rows[:, None] + causal_off, z, float("-inf"))
        p = tl.exp2(z)
        dp = tl.dot(do, tl.trans(v))
        if DROPOUT:
            keep = _keep_mask(seed, offset, start_m, start_n, bh, TQ, TK, thr, BLOCK_M, BLOCK_N, False)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(_tf32(ds.to(k.dtype), TF32), k, dq)
    return dq


@triton.jit(do_not_specialize=_NO_SPEC)
def _attn_bwd_dq_kernel(
    Q,          # (B, H, Tq, D) strides (stride_qb, stride_qh, stride_qt, 1)
    K,          # (B, H, Tk, D) strides (stride_kb, stride_kh, stride_kt, 1)
    V,          # (B, H, Tk, D) strides (stride_vb, stride_vh, stride_vt, 1)
    DO,         # (B, H, Tq, D) grad of o, strides (stride_db, stride_dh, stride_dt, 1)
    LSE,        # (B, H, Tq) fp32 forward logsumexp in base 2, contiguous
    DELTA,      # (B, H, Tq) fp32 output: rowsum(dO * O), contiguous (the dK/dV pass reads it)
    DQ,         # (B, H, Tq, D) output, q's dtype, strides (stride_dqb, stride_dqh, stride_dqt, 1)
    SEED,       # int64 (seed, offset) of the dropout mask (read only when DROPOUT)
    O,          # (B, H, Tq, D) forward output, strides (stride_ob, stride_oh, stride_ot, 1)
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_db, stride_dh, stride_dt,
    stride_ob, stride_oh, stride_ot, stride_dqb, stride_dqh, stride_dqt,
    H, TQ, TK, scale, qk_scale, DROP_THR, inv_keep,
    T_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, TF32: tl.constexpr,
    DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # runs before the dK/dV pass: each program also computes delta for its rows and stores it
    start_m = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    DO += b * stride_db + h * stride_dh
    O += b * stride_ob + h * stride_oh
    LSE += bh.to(tl.int64) * TQ
    DELTA += bh.to(tl.int64) * TQ
    DQ += b * stride_dqb + h * stride_dqh
    causal_off = TK - TQ
    seed, offset = _load_seed(SEED, DROPOUT)

    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _tf32(_load_tile(Q + rows[:, None] * stride_qt + offs_d[None, :], rows, TQ, offs_d, HEAD_DIM, True, EVEN_D),
              TF32)
    do = _load_tile(DO + rows[:, None] * stride_dt + offs_d[None, :], rows, TQ, offs_d, HEAD_DIM, True, EVEN_D)
    o = _load_tile(O + rows[:, None] * stride_ot + offs_d[None, :], rows, TQ, offs_d, HEAD_DIM, True, EVEN_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)                # fp32, from the unrounded tiles
    tl.store(DELTA + rows, delta, mask=rows < TQ)
    do = _tf32(do, TF32)
    lse2 = tl.load(LSE + rows, mask=rows < TQ, other=float("inf"))
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    n_full = ((start_m + causal_off + 1) // BLOCK_N) * BLOCK_N
    n_end = tl.minimum(start_m + BLOCK_M + causal_off, TK)
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, stride_kt, stride_vt, start_m, rows, offs_n, offs_d,
                   0, n_full, TK, causal_off, qk_scale, seed, offset, bh, TQ, DROP_THR, inv_keep,
                   False, BLOCK_N, HEAD_DIM, EVEN_D, TF32, DROPOUT, BLOCK_M)
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, stride_kt, stride_vt, start_m, rows, offs_n, offs_d,
                   n_full, n_end, TK, causal_off, qk_scale, seed, offset, bh, TQ, DROP_THR, inv_keep,
                   True, BLOCK_N, HEAD_DIM, EVEN_D, TF32, DROPOUT, BLOCK_M)
    _store_tile(DQ + rows[:, None] * stride_dqt + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
                rows, TQ, offs_d, HEAD_DIM, EVEN_D)


# The atomic-dQ backward (BWD_DQ = "atomic"): a prologue (delta, and the fp32 dQ accumulator
# zeroed), the dK/dV kernel with DQ_ATOMIC (each key block adds its share of every query block's
# dQ), and an epilogue (dQ = scale * accumulator, in q's dtype, into any strided view).

@triton.jit
def _row_block(H, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (batch * head, row block) program's bh, b and h (int64), rows and head-dim offsets."""
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64), rows, tl.arange(0, BLOCK_D)


@triton.jit(do_not_specialize=["H", "TQ"])
def _attn_bwd_prep_kernel(
    O, DO,      # (B, H, Tq, D) forward output and its gradient, strides (b, h, t, 1)
    DELTA,      # (B, H, Tq) fp32 output: rowsum(dO * O), contiguous
    DQACC,      # (B, H, Tq, D) fp32 output: zeros, contiguous
    stride_ob, stride_oh, stride_ot, stride_db, stride_dh, stride_dt, H, TQ,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    bh, b, h, rows, offs_d = _row_block(H, BLOCK_M, BLOCK_D)
    o = _load_tile(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_ot + offs_d[None, :], rows, TQ,
                   offs_d, HEAD_DIM, True, EVEN_D)
    do = _load_tile(DO + b * stride_db + h * stride_dh + rows[:, None] * stride_dt + offs_d[None, :], rows, TQ,
                    offs_d, HEAD_DIM, True, EVEN_D)
    row0 = bh.to(tl.int64) * TQ
    tl.store(DELTA + row0 + rows, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=rows < TQ)
    _store_tile(DQACC + (row0 + rows)[:, None] * HEAD_DIM + offs_d[None, :],
                tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32), rows, TQ, offs_d, HEAD_DIM, EVEN_D)


@triton.jit(do_not_specialize=["H", "TQ"])
def _attn_bwd_dq_cast_kernel(
    DQACC,      # (B, H, Tq, D) fp32 dQ / scale, contiguous
    DQ,         # (B, H, Tq, D) output, q's dtype, strides (stride_qb, stride_qh, stride_qt, 1)
    stride_qb, stride_qh, stride_qt, H, TQ, scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    bh, b, h, rows, offs_d = _row_block(H, BLOCK_M, BLOCK_D)
    acc = _load_tile(DQACC + (bh.to(tl.int64) * TQ + rows)[:, None] * HEAD_DIM + offs_d[None, :], rows, TQ, offs_d,
                     HEAD_DIM, True, EVEN_D)
    _store_tile(DQ + b * stride_qb + h * stride_qh + rows[:, None] * stride_qt + offs_d[None, :],
                (acc * scale).to(DQ.dtype.element_ty), rows, TQ, offs_d, HEAD_DIM, EVEN_D)


# 40 ms of timing per config picked configs 30 % apart from run to run on the H100
# (ATTENTION_NOTES.md, v4): 150 ms each, once per key, costs ~1 s per kernel.
_KEY = ["HEAD_DIM", "T_BUCKET", "DROPOUT"]
# kind -> (module attribute, kernel, autotune key, arguments the launch adds into); the atomic dK/dV
# variant adds into DQACC, so the autotuner's timing runs zero it before each run and after
TUNED = {"fwd": ("_attn_fwd", _attn_fwd_kernel, _KEY, ()),
         "dkdv": ("_attn_bwd_dkdv", _attn_bwd_dkdv_kernel, _KEY + ["DQ_ATOMIC"], ("DQACC",)),
         "dq": ("_attn_bwd_dq", _attn_bwd_dq_kernel, _KEY, ())}


def make_autotuner(kind: str, full_space: bool = False):
    """Kernel ``kind``'s autotuner; full_space: its whole space even with autotuning off (a GPU test)."""
    _, fn, key, zero = TUNED[kind]
    return autotune(_space(kind), key=key, prune=_pruner(kind), rep_ms=150, reset_to_zero=zero,
                    enabled=True if full_space else None)(fn)


_attn_fwd, _attn_bwd_dkdv, _attn_bwd_dq = (make_autotuner(kind) for kind in ("fwd", "dkdv", "dq"))


# ----------------------------------------------------------------------------- launchers

def _validate(q, k, v, op="causal_attention"):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t, op)
    reference.check_attention_shapes(op, q, k, v)
    check_same_device(op, q=q, k=k, v=v)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    D = q.shape[3]
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"{op}: unsupported head dim {D} (supported: 1 to {MAX_HEAD_DIM})"
                         + ("; use backend='reference'" if D > MAX_HEAD_DIM else ""))
    if k.shape[2] > MAX_T:
        raise ValueError(f"{op}: sequence length {k.shape[2]} is above the kernels' limit of {MAX_T:,} "
                         "(65535 blocks of 32 rows); use backend='reference'")
    check_offsets(op, q=q, k=k, v=v)


def check_offsets(op, **tensors) -> None:
    """The kernels index within one (batch, head) in int32: its (T, D) span must stay below 2^31 elements."""
    for name, t in tensors.items():
        span = (t.shape[2] - 1) * abs(t.stride(2)) + (t.shape[3] - 1) * abs(t.stride(3))
        if t.numel() and span >= 2**31:
            raise ValueError(f"{op}: {name} spans {span + 1} elements within one (batch, head) (T = {t.shape[2]}, "
                             f"row stride {t.stride(2)}); the kernels index that in int32, below 2^31: use shorter "
                             "sequences or backend='reference'")


def _unit_last_stride(t: Tensor) -> Tensor:
    """t itself when its last dim is unit-stride (any other strides are passed to the kernel), else a copy."""
    return t if (t.stride(-1) == 1 or t.shape[-1] == 1) else t.contiguous()


def _strides(t: Tensor):
    return t.stride()[:3]


# fp32 inputs run TF32 dots with operands rounded to nearest on the GPU; under the interpreter
# dots are exact fp32 (tests may set this to True to run the rounding code there).
ROUND_TF32_ON_CPU = False


def _round_tf32(dtype) -> bool:
    return dtype == torch.float32 and (not INTERPRET or ROUND_TF32_ON_CPU)


def _block_d(D: int) -> int:
    return max(16, next_pow2(D))


def _bucket(T: int) -> int:
    """The autotune key's sequence-length bucket: a power of two in [128, 8192]."""
    return max(128, min(next_pow2(T), 8192))


def new_seed(device, generator: Optional[torch.Generator] = None) -> Tensor:
    """A fresh dropout (seed, offset) int64 pair on ``device``, drawn from torch's generator there.

    Drawn on the device itself (one tiny kernel on CUDA, no host sync), so the
    attention kernels read it from memory in eager mode, under torch.compile and
    in CUDA-graph replays alike (each replay draws anew); torch.manual_seed
    reproduces it and torch.utils.checkpoint's RNG-state replay redraws it.
    63 random bits each (inductor's randint lowering needs high - low in int64).
    """
    where = generator.device if generator is not None else torch.device(device)
    return torch.randint(0, 2**63 - 1, (2,), dtype=torch.int64, device=where, generator=generator)


def _check_seed(seed, device) -> Tensor:
    """seed as an int64 (seed, offset) tensor on ``device``: a tensor is checked, a pair of ints converted."""
    if not isinstance(seed, Tensor):
        return reference.seed_pair(seed, device, "causal_attention")
    reference.check_seed_tensor("causal_attention", seed)
    if seed.device != torch.device(device):
        raise ValueError(f"causal_attention: seed is on {seed.device} but q is on {device}")
    return seed.contiguous()


def _seed_arg(seed, dropout_p, device):
    """The kernels' SEED pointer: the (seed, offset) tensor, or None when there is no dropout."""
    if dropout_p > 0.0 and seed is None:
        raise ValueError("causal_attention: dropout_p > 0 needs a seed")
    return _call_seed(dropout_p, seed, None, device)


def _dropout_args(dropout_p):
    """(DROP_THR, inv_keep): keep iff the element's 8 random bits >= DROP_THR, scaled by inv_keep."""
    if dropout_p <= 0.0:
        return 0, 1.0
    return reference.attention_dropout_threshold(dropout_p), reference.attention_dropout_scale(dropout_p)


_DEFAULTS: dict = {}   # (kind, head dim, dtype, dropout, atomic dQ) -> the default config that launched


def _launch(kernel, kind, config, grid, *args, n_lead=None, **meta):
    """Launch the autotuned kernel, or the raw kernel with an explicit (or the default) config.
    With ``n_lead``, return a _common.Replay of the launch with its first n_lead arguments open
    (None when it cannot be replayed: e.g. the first launch of a signature, which compiles or tunes)."""
    if config is None and not AUTOTUNE and not INTERPRET:
        key = (kind, meta["HEAD_DIM"], args[0].dtype, meta["DROPOUT"], bool(meta.get("DQ_ATOMIC")))
        config = _DEFAULTS.get(key)   # (the atomic-dQ dK/dV kernel is another kernel: it steps down on its own)
        if config is None:
            return _launch_first_default(kernel, kind, key, grid, args, n_lead, meta)
    if config is None:
        return kernel.run_replayable(n_lead, *args, grid=grid, **meta)
    if meta["DROPOUT"] and (config["BLOCK_M"] % 16 or config["BLOCK_N"] % 32):
        raise ValueError(f"causal_attention: with dropout, BLOCK_M must be a multiple of 16 and BLOCK_N of 32 "
                         f"(the keep mask's groups), got {config['BLOCK_M']} x {config['BLOCK_N']}")
    return launch_replayable(kernel.fn, grid, n_lead, *args, **meta, **config)


def _launch_first_default(kernel, kind, key, grid, args, n_lead, meta):
    """The first launch of a key's default config. The table was picked on an H100 (227 KiB of shared memory a
    block); where a GPU has less (an A100 163 KiB, consumer cards ~100 KiB: the D = 128 forward's (128, 64, 8, 3)
    needs at least 96 KiB), triton refuses the launch (OutOfResources, before the kernel runs) and the table's
    next smaller tiles are tried. The config that launched is kept for the key."""
    configs = []
    for smaller in range(4):
        if (c := default_config(*key[:4], smaller=smaller)) not in configs:
            configs.append(c)
    for i, config in enumerate(configs):
        try:
            replay = _launch(kernel, kind, config, grid, *args, n_lead=n_lead, **meta)
        except triton.runtime.errors.OutOfResources:
            if i == len(configs) - 1:
                raise
            continue
        _DEFAULTS[key] = config
        return replay


def _out_empty(q_shape, dtype, device, out_layout):
    B, H, T, D = q_shape
    if out_layout == "bhtd":
        return empty((B, H, T, D), dtype, device)
    return empty((B, T, H, D), dtype, device).transpose(1, 2)


def attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None, out_layout: str = "bhtd",
                  out: Optional[Tensor] = None, config: Optional[dict] = None, dropout_p: float = 0.0,
                  seed: Optional[Tensor] = None):
    """Returns (o, lse2): o (B, H, Tq, D) in q's dtype, lse2 (B, H, Tq) fp32, the rows'
    logsumexp in base 2 (natural lse = lse2 * ln 2; base 2 spares the backward a rounding).

    dropout_p > 0 needs ``seed``, an int64 (seed, offset) tensor on q's device
    (see new_seed); the backward must get the same pair.

    out_layout "bthd" makes o a (B, H, Tq, D) view of a contiguous (B, Tq, H, D)
    buffer (what the output projection wants). ``out`` may supply o (a view with
    unit last stride; tests poison it); ``config`` forces {"BLOCK_M", "BLOCK_N",
    "num_warps", ...} instead of autotuning (tests use it to cover block shapes).
    """
    _validate(q, k, v)
    if out_layout not in OUT_LAYOUTS:
        raise ValueError(f"causal_attention: out_layout must be one of {OUT_LAYOUTS}, got {out_layout!r}")
    return _fwd(q, k, v, scale, out_layout, out, config, dropout_p, _seed_arg(seed, dropout_p, q.device))


def _fwd(q, k, v, scale, out_layout, out, config, dropout_p, seed, capture=None):
    """attention_fwd on validated inputs (``seed``: None, or a checked tensor when dropout_p > 0).
    ``capture``: a _Plan whose forward Replay this launch fills (when it can be replayed)."""
    q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    B, H, TQ, D = q.shape
    TK = k.shape[2]
    scale = reference.attention_scale("causal_attention", scale, D)
    o = out if out is not None else _out_empty(q.shape, q.dtype, q.device, out_layout)
    if o.shape != q.shape or o.dtype != q.dtype or (o.stride(-1) != 1 and D > 1):
        raise ValueError("causal_attention: out must match q's shape and dtype with a unit last stride")
    check_offsets("causal_attention", o=o)
    lse = empty((B, H, TQ), torch.float32, q.device)
    if o.numel() == 0:
        return o, lse
    BLOCK_D = _block_d(D)
    grid = lambda meta: (B * H, cdiv(TQ, meta["BLOCK_M"]))  # noqa: E731
    replay = _launch(_attn_fwd, "fwd", config, grid,
                     q, k, v, o, lse, seed, *_strides(q), *_strides(k), *_strides(v),
                     *_strides(o), H, TQ, TK, scale * LOG2E, *_dropout_args(dropout_p), _bucket(TK),
                     n_lead=None if capture is None else 6,
                     HEAD_DIM=D, BLOCK_D=BLOCK_D, EVEN_D=(D == BLOCK_D), TF32=_round_tf32(q.dtype),
                     DROPOUT=dropout_p > 0.0, POS_SCALE=scale * LOG2E >= _FP32_MIN_NORMAL)
    if replay is not None:
        capture.fwd = replay
    return o, lse


def attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                  scale: Optional[float] = None, configs: Optional[tuple] = None, dropout_p: float = 0.0,
                  seed: Optional[Tensor] = None, out: Optional[tuple] = None):
    """Returns (dq, dk, dv), (B, H, T, D) in the inputs' dtype: contiguous, or the views ``out``.

    ``out`` = (dq, dk, dv) (B, H, T, D) views with a unit last stride, written in place (the
    packed qkv path passes slices of one (B, T, 3, H, D) gradient). ``configs`` =
    (dkdv_config, dq_config) forces launch configs (tests); dropout_p and seed are the forward's.
    """
    op = "causal_attention"
    _validate(q, k, v, op)
    check_grad(op, "do", do, q)
    check_grad(op, "o", o, q)
    B, H, TQ, _ = q.shape
    if not isinstance(lse, Tensor) or lse.shape != (B, H, TQ) or lse.dtype != torch.float32 or lse.device != q.device:
        raise ValueError(f"{op}: lse must be the forward's fp32 ({B}, {H}, {TQ}) logsumexp on {q.device}, got "
                         f"{getattr(lse, 'dtype', type(lse).__name__)} {tuple(getattr(lse, 'shape', ()))}")
    return _bwd(do, q, k, v, o, lse, scale, configs, dropout_p, seed, out, None)


def dq_atomic() -> bool:
    """Whether a backward now takes the atomic-dQ path: BWD_DQ == "atomic", unless
    torch.use_deterministic_algorithms(True) is on (the split path is bitwise deterministic)."""
    return BWD_DQ == "atomic" and not torch.are_deterministic_algorithms_enabled()


@contextlib.contextmanager
def dq_mode(mode: str):
    """BWD_DQ set to ``mode`` ("split" | "atomic") for the block, restored after (benchmarks, selftest)."""
    global BWD_DQ
    if mode not in BWD_DQ_MODES:
        raise ValueError(f"causal_attention: the dQ path must be one of {BWD_DQ_MODES}, got {mode!r}")
    was, BWD_DQ = BWD_DQ, mode
    try:
        yield
    finally:
        BWD_DQ = was


def _prep_block_m(D: int) -> int:
    """BLOCK_M, the query rows per program, of the prologue and epilogue kernels: ~8K elements a tile."""
    return max(16, min(128, 8192 // _block_d(D)))


def _bwd(do, q, k, v, o, lse, scale, configs, dropout_p, seed, out, capture, atomic=None):
    """attention_bwd; ``capture``: a _Plan (of the forward's q, k, v) whose backward Replays these
    launches fill (when they can be replayed); ``atomic``: dq_atomic(), when the caller has it."""
    check_offsets("causal_attention", do=do, o=o)   # (replays reuse a checked call's strides)
    atomic = dq_atomic() if atomic is None else atomic
    bwd_key = None   # the plan's key for these launches: only when nothing below is copied
    if capture is not None and all(t.stride(-1) == 1 for t in (do, q, k, v, o)) and lse.is_contiguous() \
            and (seed is None or seed.is_contiguous()):
        bwd_key = _Plan.bwd_key(do, q, k, v, o, lse, seed, out, atomic)
    q, k, v, o, do = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v), _unit_last_stride(o), \
        _unit_last_stride(do)
    B, H, TQ, D = q.shape
    TK = k.shape[2]
    scale = reference.attention_scale("causal_attention", scale, D)
    if out is None:
        dq = empty((B, H, TQ, D), q.dtype, q.device)
        dk = empty((B, H, TK, D), k.dtype, k.device)
        dv = empty((B, H, TK, D), v.dtype, v.device)
    else:
        dq, dk, dv = out
        for g, t in zip(out, (q, k, v)):
            if g.shape != t.shape or g.dtype != t.dtype or (g.stride(-1) != 1 and D > 1):
                raise ValueError("causal_attention: out gradients must match q, k, v in shape and dtype, with a "
                                 "unit last stride")
        # their row strides may exceed q's (the packed gradient of a non-contiguous qkv)
        check_offsets("causal_attention", dq=dq, dk=dk, dv=dv)
    if q.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    lse = lse.contiguous()
    BLOCK_D = _block_d(D)
    consts = dict(HEAD_DIM=D, BLOCK_D=BLOCK_D, EVEN_D=(D == BLOCK_D), TF32=_round_tf32(q.dtype),
                  DROPOUT=dropout_p > 0.0)
    delta = empty((B, H, TQ), torch.float32, q.device)   # written by the dQ pass (or prologue), read by dK/dV
    cfg_kv, cfg_q = configs if configs is not None else (None, None)
    args = (q, k, v, do, lse, delta)
    seed = _seed_arg(seed, dropout_p, q.device)
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    rest = (H, TQ, TK, scale, scale * LOG2E, *_dropout_args(dropout_p), _bucket(TK))
    grid_kv = lambda meta: (B * H, cdiv(TK, meta["BLOCK_N"]))  # noqa: E731
    if atomic:
        # prologue, dK/dV adding dQ / scale into dqacc, epilogue; every launch's tensors lead
        dqacc = empty((B, H, TQ, D), torch.float32, q.device)   # zeroed by the prologue
        bm = _prep_block_m(D)
        grid = (B * H, cdiv(TQ, bm))
        small = dict(HEAD_DIM=D, BLOCK_D=BLOCK_D, EVEN_D=(D == BLOCK_D), BLOCK_M=bm, num_warps=4)
        replays = (launch_replayable(_attn_bwd_prep_kernel, grid, None if bwd_key is None else 4, o, do, delta,
                                     dqacc, *_strides(o), *_strides(do), H, TQ, **small),
                   _launch(_attn_bwd_dkdv, "dkdv", cfg_kv, grid_kv, *args, dk, dv, seed, dqacc, *strides,
                           *_strides(dk), *_strides(dv), *rest, n_lead=None if bwd_key is None else 10,
                           DQ_ATOMIC=True, **consts),
                   launch_replayable(_attn_bwd_dq_cast_kernel, grid, None if bwd_key is None else 2, dqacc, dq,
                                     *_strides(dq), H, TQ, scale, **small))
    else:
        n_lead = None if bwd_key is None else 9
        replays = (_launch(_attn_bwd_dq, "dq", cfg_q, lambda meta: (B * H, cdiv(TQ, meta["BLOCK_M"])),
                           *args, dq, seed, o, *strides, *_strides(o), *_strides(dq), *rest, n_lead=n_lead, **consts),
                   _launch(_attn_bwd_dkdv, "dkdv", cfg_kv, grid_kv, *args, dk, dv, seed, None, *strides,
                           *_strides(dk), *_strides(dv), *rest, n_lead=None if n_lead is None else 10,
                           DQ_ATOMIC=False, **consts))
    if all(r is not None for r in replays):
        capture.bwd[bwd_key] = replays
    return dq, dk, dv


# ----------------------------------------------------------------------------- registration

@torch.library.custom_op("fastgpt::causal_attention", mutates_args=())
def _causal_attention_op(q: Tensor, k: Tensor, v: Tensor, scale: float, out_layout: str, dropout_p: float,
                         seed: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return attention_fwd(q, k, v, scale, out_layout, dropout_p=dropout_p, seed=seed)


@torch.library.custom_op("fastgpt::causal_attention_bwd", mutates_args=())
def _causal_attention_bwd_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                             scale: float, dropout_p: float, seed: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    return attention_bwd(do, q, k, v, o, lse, scale, dropout_p=dropout_p, seed=seed)


@_causal_attention_op.register_fake
def _(q, k, v, scale, out_layout, dropout_p, seed):
    _validate(q, k, v)
    B, H, T, D = q.shape
    if out_layout == "bhtd":
        o = q.new_empty((B, H, T, D))
    else:
        o = q.new_empty((B, T, H, D)).transpose(1, 2)
    return o, q.new_empty((B, H, T), dtype=torch.float32)


@_causal_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, scale, dropout_p, seed):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))


def _setup(ctx, inputs, output):
    q, k, v, scale, _, dropout_p, seed = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, seed)
    ctx.scale, ctx.dropout_p = scale, dropout_p


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, seed = ctx.saved_tensors
    dq, dk, dv = _causal_attention_bwd_op(do, q, k, v, o, lse, ctx.scale, ctx.dropout_p, seed)
    return dq, dk, dv, None, None, None, None


_causal_attention_op.register_autograd(_backward, setup_context=_setup)


# ----------------------------------------------------------------------------- replay plans
# The eager path's host time is most of the op's time at GPT-2 sizes (run 4: 0.546 ms per fwd+bwd
# against 0.395 ms of kernels; ATTENTION_NOTES v13). A call signature (shapes, strides, dtypes,
# devices, scale, p, layout) gets a _Plan once its launches have each taken the lean path (the
# first call compiles and, with autotuning, tunes; a later one is captured): its launches (three,
# four with the atomic dQ) kept as _common.Replays, so the calls after that skip the validation (an
# identical signature passed it), the launchers' argument building and triton's per-argument
# specialisation: what is left is two (fwd) or four (bwd; five with the atomic dQ) allocations and
# one C launch per kernel.

_PLANS = PlanCache(256)   # signature -> _Plan with its forward Replay


def _signature(q, k, v, scale, dropout_p, out_layout):
    """The plan key of a call, or None when it takes the checked path every time: only plain
    tensors with unit last strides (nothing to copy), a scale and p that are Python floats or ints
    (a tensor or array is keyed by value nowhere, and may change in place), on the lean launch path."""
    if not _common.LEAN_LAUNCH or type(q) is not Tensor or type(k) is not Tensor or type(v) is not Tensor \
            or type(dropout_p) not in (float, int) or not (scale is None or type(scale) in (float, int)):
        return None
    qs, ks, vs = q.stride(), k.stride(), v.stride()
    if len(qs) != 4 or len(ks) != 4 or len(vs) != 4 or qs[3] != 1 or ks[3] != 1 or vs[3] != 1:
        return None
    return (q.shape, k.shape, v.shape, qs, ks, vs, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
            scale, dropout_p, out_layout)


class _Plan:
    """A validated call's scale, dropout rate and output layout, and once launched, its Replays.

    ``sig`` None: a call no plan can serve (it carries the arguments only). forward() and
    backward() replay when they can, else run the launchers (which capture the Replays)."""
    __slots__ = ("sig", "scale", "dropout_p", "layout", "fwd", "bwd")

    def __init__(self, sig, scale: float, dropout_p: float, layout: str):
        self.sig, self.scale, self.dropout_p, self.layout = sig, scale, dropout_p, layout
        self.fwd = None   # the forward's Replay
        self.bwd = {}     # bwd_key -> (dQ, dK/dV) Replays, or with atomic dQ (prologue, dK/dV, epilogue)

    @staticmethod
    def bwd_key(do, q, k, v, o, lse, seed, out, atomic):
        """What the backward's launches depend on beyond the forward's signature: dO's layout and
        dtype, the saved tensors' (saved-tensor hooks, e.g. offloading, may hand back others) and
        the dQ path."""
        return (do.stride(), do.dtype, q.stride(), k.stride(), v.stride(), o.stride(), lse.stride(),
                q.dtype, k.dtype, v.dtype, o.dtype, lse.dtype,
                None if seed is None else (seed.stride(), seed.dtype, seed.device), out is None, atomic)

    def forward(self, q, k, v, seed):
        """(o, lse) of _fwd: replayed, or through _fwd (which captures the Replay)."""
        r = self.fwd
        # fresh allocations start on the allocator's boundaries: only the inputs can be misaligned
        if r is not None and r.usable() and not misaligned(q, k, v, seed):
            B, H, T, _ = q.shape
            o = _out_empty(q.shape, q.dtype, q.device, self.layout)
            lse = empty((B, H, T), torch.float32, q.device)
            r(current_stream(r.device), q, k, v, o, lse, seed)
            return o, lse
        capture = self if self.sig is not None else None
        o, lse = _fwd(q, k, v, self.scale, self.layout, None, None, self.dropout_p, seed, capture)
        if capture is not None and self.fwd is not None:
            _PLANS.keep(self.sig, self)
        return o, lse

    def backward(self, do, q, k, v, o, lse, seed, out=None):
        """(dq, dk, dv) of _bwd on the forward's q, k, v, o, lse and seed: replayed, or through _bwd
        (which captures the Replays)."""
        atomic = dq_atomic()
        replays = self.bwd.get(self.bwd_key(do, q, k, v, o, lse, seed, out, atomic)) if self.bwd else None
        if (replays is not None and all(r.usable() for r in replays)
                and not misaligned(do, q, k, v, o, lse, seed, *(out or ()))):
            B, H, TQ, D = q.shape
            dq, dk, dv = out if out is not None else (empty(q.shape, q.dtype, q.device),
                                                      empty(k.shape, k.dtype, k.device),
                                                      empty(v.shape, v.dtype, v.device))
            delta = empty((B, H, TQ), torch.float32, q.device)
            stream = current_stream(replays[0].device)
            if atomic:   # prologue, dK/dV with dQ, epilogue (_bwd)
                dqacc = empty((B, H, TQ, D), torch.float32, q.device)
                replays[0](stream, o, do, delta, dqacc)
                replays[1](stream, q, k, v, do, lse, delta, dk, dv, seed, dqacc)
                replays[2](stream, dqacc, dq)
            else:
                replays[0](stream, q, k, v, do, lse, delta, dq, seed, o)
                replays[1](stream, q, k, v, do, lse, delta, dk, dv, seed, None)
            return dq, dk, dv
        return _bwd(do, q, k, v, o, lse, self.scale, None, self.dropout_p, seed, out,
                    self if self.sig is not None else None, atomic)


class _CausalAttentionFunction(torch.autograd.Function):
    """The eager path: the same launchers without the custom-op dispatch overhead."""

    @staticmethod
    def forward(ctx, q, k, v, plan, seed):
        o, lse = plan.forward(q, k, v, seed)   # validated by causal_attention (or by an identical signature)
        ctx.save_for_backward(q, k, v, o, lse, seed)
        ctx.plan = plan
        return o

    @staticmethod
    @first_order_only("causal_attention")
    def backward(ctx, do):
        return (*ctx.plan.backward(do, *ctx.saved_tensors), None, None)


class _QKVPackedFunction(torch.autograd.Function):
    """causal_attention_qkvpacked's eager path: the backward writes dq, dk and dv straight into
    one (B, T, 3, H, D) gradient, so autograd has no unbind to undo (a stack copy of 3 x B x T x C)."""

    @staticmethod
    def forward(ctx, qkv, views, plan, seed):
        # views: q, k, v of qkv (made once by the caller, outside autograd: not inputs of this node)
        o, lse = plan.forward(*views, seed)
        # qkv itself is saved, not the views: saved-tensor hooks (activation checkpointing, offloading)
        # must see every tensor the backward keeps
        ctx.save_for_backward(qkv, o, lse, seed)
        ctx.plan = plan
        B, T, _, H, D = qkv.shape
        return o.transpose(1, 2).reshape(B, T, H * D)   # a view: o's storage is (B, T, H, D)

    @staticmethod
    @first_order_only("causal_attention")
    def backward(ctx, do):
        qkv, o, lse, seed = ctx.saved_tensors
        B, T, _, H, D = qkv.shape
        dqkv = empty(qkv.shape, qkv.dtype, qkv.device)
        ctx.plan.backward(do.reshape(B, T, H, D).transpose(1, 2), *_unpack(qkv), o, lse, seed, out=_unpack(dqkv))
        return dqkv, None, None, None


def _unpack(qkv: Tensor):
    """q, k, v as (B, H, T, D) views of a (B, T, 3, H, D) tensor (two view ops, not four)."""
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


# ----------------------------------------------------------------------------- public API

_RATES_SEEN: set = set()   # dropout rates already checked by _note_quantised_rate


def _note_quantised_rate(dropout_p: float) -> None:
    """Warn (once per rate) when the kernels' dropout rate, in steps of 1/256, is more than 10 % away
    from the one asked for (p below ~0.02, or under 1/512, which acts as 1/256)."""
    if dropout_p in _RATES_SEEN or torch.compiler.is_compiling():   # (dynamo cannot trace warnings.warn)
        return
    _RATES_SEEN.add(dropout_p)
    applied = reference.attention_dropout_threshold(dropout_p) / 256
    if abs(applied - dropout_p) > 0.1 * dropout_p:
        warnings.warn(f"causal_attention: dropout_p={dropout_p:g} acts as {applied:.4g} in the fused kernels "
                      f"(their rate moves in steps of 1/256; kept weights are scaled by 1 / (1 - {applied:.4g}), "
                      f"so the expectation stays exact)", stacklevel=_common.caller_stacklevel())


def _checked_call(q, k, v, scale, dropout_p, seed, generator):
    """Validate a public call; returns (scale, dropout_p, seed): the float scale, the float p, and
    the (seed, offset) tensor on q's device (drawn now when p > 0 and none was given; None at p = 0)."""
    _validate(q, k, v)
    dropout_p = float(reference.attention_dropout_p("causal_attention", dropout_p))
    scale = reference.attention_scale("causal_attention", scale, q.shape[-1])
    if dropout_p > 0.0:
        _note_quantised_rate(dropout_p)
    return scale, dropout_p, _call_seed(dropout_p, seed, generator, q.device)


def _call_seed(dropout_p: float, seed, generator, device):
    """The call's (seed, offset) tensor on ``device``: None at p = 0, else ``seed`` checked, or drawn now."""
    if dropout_p <= 0.0:
        return None
    if seed is None:
        return new_seed(device, generator).to(device)
    return _check_seed(seed, device)


def _planned(q, k, v, scale, dropout_p, out_layout, seed, generator):
    """(plan, seed) of an eager call: its signature's _Plan if it has run before (nothing to check
    again but the seed), else a new one after the checks."""
    sig = _signature(q, k, v, scale, dropout_p, out_layout)
    plan = _PLANS.get(sig) if sig is not None else None
    if plan is not None:
        return plan, _call_seed(plan.dropout_p, seed, generator, q.device)
    scale, dropout_p, seed = _checked_call(q, k, v, scale, dropout_p, seed, generator)
    return _Plan(sig, scale, dropout_p, out_layout), seed


@on_its_device
def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None, dropout_p: float = 0.0,
                     out_layout: str = "bhtd", *, seed=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """softmax(q k^T * scale + bottom-right causal mask) v over (B, H, T, D) tensors; o in q's dtype.

    scale defaults to 1/sqrt(D). out_layout "bthd" returns o as a (B, H, Tq, D)
    view whose storage is a contiguous (B, Tq, H, D) tensor, so
    ``o.transpose(1, 2).reshape(B, Tq, H * D)`` is free. dropout_p > 0 drops
    attention weights inside the kernels; the mask is a function of ``seed``, an
    int64 tensor or a pair (seed, offset), drawn by default from torch's
    generator on q's device (or from ``generator``); see the module header and
    fastgpt.reference.attention_keep_mask.
    """
    if out_layout not in OUT_LAYOUTS:
        raise ValueError(f"causal_attention: out_layout must be one of {OUT_LAYOUTS}, got {out_layout!r}")
    if torch.compiler.is_compiling():
        scale, dropout_p, seed = _checked_call(q, k, v, scale, dropout_p, seed, generator)
        return _causal_attention_op(q, k, v, scale, out_layout, dropout_p, seed)[0]
    plan, seed = _planned(q, k, v, scale, dropout_p, out_layout, seed, generator)
    if not records_grad(q, k, v):
        return plan.forward(q, k, v, seed)[0]
    return _CausalAttentionFunction.apply(q, k, v, plan, seed)


@on_its_device
def causal_attention_qkvpacked(qkv: Tensor, scale: Optional[float] = None, dropout_p: float = 0.0, *, seed=None,
                               generator: Optional[torch.Generator] = None) -> Tensor:
    """causal_attention over a packed (B, T, 3, H, D) qkv (a fused projection's output viewed so)
    -> o as (B, T, H * D), ready for the output projection; the same values and gradients as
    ``causal_attention(q, k, v, out_layout="bthd")`` on its slices. In eager mode the backward
    writes one (B, T, 3, H, D) gradient instead of three that autograd then stacks."""
    if not isinstance(qkv, Tensor) or qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"causal_attention_qkvpacked: qkv must be a (B, T, 3, H, D) tensor, got "
                         f"{tuple(qkv.shape) if isinstance(qkv, Tensor) else type(qkv).__name__}")
    B, T, _, H, D = qkv.shape
    if torch.compiler.is_compiling() or not records_grad(qkv):
        o = causal_attention(*_unpack(qkv), scale, dropout_p, "bthd", seed=seed, generator=generator)
        return o.transpose(1, 2).reshape(B, T, H * D)
    views = _unpack(qkv.detach())
    plan, seed = _planned(*views, scale, dropout_p, "bthd", seed, generator)
    return _QKVPackedFunction.apply(qkv, views, plan, seed)
