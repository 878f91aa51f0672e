"""Fused LM head + cross-entropy: loss = CE(h @ W^T, targets) without the (N, V) logits.

For N tokens, hidden size C and vocabulary V (h: (N, C), W: (V, C), targets: (N,)),
the forward walks the tokens in chunks of R rows and, per chunk:
    z   = h_c @ W^T                      (R, V) logits, cuBLAS, in the compute dtype
    one Triton program per row, fp32 math, online over V in blocks:
        m = max_j z_j,  r = sum_{j != t} exp(z_j - m),  s = exp(z_t - m) + r
                                                       (exp as exp2((z_j - m) log2 e))
        loss_i = lse - (1 - eps) z_t - (eps / V) sum_j z_j     (label smoothing eps, as torch)
               with lse - z_t = (m - z_t) + log s  (log1p(r) when z_t = m: confident rows)
        z_j   <- softmax_j - (1 - eps) [j == t] - eps / V      (in place: d loss_i / d z_j)
               with p_t - 1 = -r / s                (no cancellation when p_t is near 1)
        ignored rows (t == ignore_index): loss_i = 0, z <- 0
    dh_c  = z @ W                        (R, C) cuBLAS, into the dh buffer
    dW   += z^T @ h_c                    (V, C) cuBLAS into an fp32 accumulator
Then loss = scale * sum_i loss_i, scale = 1 / max(#non-ignored, 1) for "mean"
(an all-ignored batch gives 0, not NaN) and 1 for "sum". The gradients are formed
in the forward, so the backward only multiplies the saved dh and dW by
grad_output * scale (a scalar) and casts them to h's and W's dtypes.

Precision: the compute dtype is h's dtype (under torch.autocast the autocast
dtype, exactly as nn.Linear would run the head); W is cast to it once. The three
GEMMs accumulate in fp32 (cuBLAS); softmax, logsumexp and the loss are fp32; the
per-row logit gradient is stored in the compute dtype WITHOUT the 1/n scale (its
entries are in [-1, 1], so fp16 does not underflow at large N); dW is accumulated
across chunks in fp32 (on CUDA cuBLAS adds each chunk's product to the fp32
buffer directly, addmm out_dtype=float32) and rounded once, after scaling, to W's
dtype; dh is rounded twice (the GEMM output, then after scaling).

Memory beyond the inputs: one logits chunk (R * V in the compute dtype: by default
the largest power of two R with R * V * bytes <= 256 MiB, i.e. R = 2048 for
V = 50304 in bf16), dW in fp32 (V * C * 4 bytes, held from forward to backward),
dh (N * C), a copy of W in the compute dtype when W's dtype differs, and N fp32
per-row losses. Versus the logits and their gradient (N * V each) this is
~0.35 GiB instead of ~9.5 GiB at N = 16384, V = 50304, C = 768.

Limits: h: (..., C) fp16/bf16/fp32, W: (V, C) fp16/bf16/fp32, targets int64
with h's leading shape (or N elements); targets outside [0, V) other than
ignore_index are an error (ValueError on the CPU, a device-side assert on CUDA,
as torch's cross_entropy). Any V and C (V need not be a multiple of the block).
"""
from __future__ import annotations

import contextlib
import functools
import operator
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgpt import reference
from fastgpt.backend import first_order_only
from fastgpt.kernels import INTERPRET
from fastgpt.kernels._common import (FLOAT_DTYPES, cdiv, check_float, check_same_device, empty, launch, next_pow2,
                                      on_its_device)

OP = "fused_linear_cross_entropy"
CHUNK_BYTES = 256 * 2**20       # default budget for one chunk of logits


# ----------------------------------------------------------------------------- kernel

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)

@triton.jit
def _ce_fwd_grad_kernel(
    Z,          # (M, VP) logits of one chunk (columns >= V are padding, read and written freely),
                # row stride stride_z, unit column stride; overwritten with d loss_i / d z
                # (unscaled) when WRITE_GRAD
    T,          # (M,) int64 targets of the chunk
    Loss,       # (M,) fp32 per-row loss (0 for ignored rows)
    V, VP, stride_z, ignore_index, eps,
    WRITE_GRAD: tl.constexpr, SMOOTH: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # Memory accesses are masked by VP (a multiple of 16, so they vectorise), the math by V.
    row = tl.program_id(0).to(tl.int64)
    zrow = Z + row * stride_z
    t = tl.load(T + row)
    cols = tl.arange(0, BLOCK_V)
    if t != ignore_index:
        # pass 1: running max m and the sum r of exp(z_j - m) over j != t, the target's term left
        # out (exp2 of (z - m) log2 e: z - m is taken first, so the dominant entries, z near m,
        # keep full fp32 accuracy), and sum(z) for smoothing
        tc = t.to(tl.int32)                          # the target's column (V < 2^31), for 32-bit compares
        z = tl.load(zrow + cols, mask=cols < VP, other=0.0).to(tl.float32)
        z = tl.where(cols < V, z, float("-inf"))
        m = tl.max(z, axis=0)
        r = tl.sum(tl.where(cols != tc, tl.exp2((z - m) * LOG2E), 0.0), axis=0)
        zsum = tl.sum(tl.where(cols < V, z, 0.0), axis=0)
        for start in range(BLOCK_V, VP, BLOCK_V):
            c = start + cols
            z = tl.load(zrow + c, mask=c < VP, other=0.0).to(tl.float32)
            z = tl.where(c < V, z, float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=0))
            r = r * tl.exp2((m - m_new) * LOG2E) + tl.sum(tl.where(c != tc, tl.exp2((z - m_new) * LOG2E), 0.0),
                                                          axis=0)
            if SMOOTH:
                zsum += tl.sum(tl.where(c < V, z, 0.0), axis=0)
            m = m_new
        t_ok = (t >= 0) & (t < V)                   # out-of-range targets are caught by the launcher
        zt = tl.load(zrow + t, mask=t_ok, other=0.0).to(tl.float32)
        s = tl.exp2((zt - m) * LOG2E) + r           # sum_j exp(z_j - m)
        # lse - z_t = (m - z_t) + log s, both terms >= 0, except in the confident rows: there z_t is
        # the max, s = 1 + r with r small, and log s is log1p(r), computed so (log(u) r / (u - 1),
        # u = 1 + r, a few ulps) instead of from the rounded s: p_t - 1 = -r / s likewise below,
        # rather than p_t - 1 with its cancellation
        u = 1.0 + r
        log1p_r = tl.where(u == 1.0, r, tl.log2(u) * LN2 * r / (u - 1.0))
        loss = (m - zt) + tl.where(zt == m, log1p_r, tl.log2(s) * LN2)
        if SMOOTH:
            loss += eps * (zt - zsum / V)
        tl.store(Loss + row, loss)
        if WRITE_GRAD:
            # pass 2: the row again, last block first (those are the ones still in L1/L2),
            # overwritten with softmax - the target distribution
            nblk = tl.cdiv(VP, BLOCK_V)
            for i in range(0, nblk):
                c = (nblk - 1 - i) * BLOCK_V + cols
                z = tl.load(zrow + c, mask=c < VP, other=0.0).to(tl.float32)
                g = tl.where(c == tc, eps - r / s, tl.exp2((z - m) * LOG2E) / s)   # p_j - (1 - eps) [j == t]
                if SMOOTH:
                    g -= eps / V
                g = tl.where(c < V, g, 0.0)
                tl.store(zrow + c, g.to(Z.dtype.element_ty), mask=c < VP)
    else:
        tl.store(Loss + row, 0.0)
        if WRITE_GRAD:
            zero = tl.zeros((BLOCK_V,), dtype=Z.dtype.element_ty)
            for start in range(0, VP, BLOCK_V):
                c = start + cols
                tl.store(zrow + c, zero, mask=c < VP)


def _ce_rows(zbuf: Tensor, V: int, t: Tensor, loss: Tensor, ignore_index: int, eps: float,
             write_grad: bool) -> None:
    """Launch the per-row kernel on one chunk zbuf (R, VP), logits in its first V columns.

    Fills loss (R,); overwrites zbuf with the logit gradient if write_grad. VP must be a
    multiple of 16 and zbuf's column stride 1.
    """
    R, VP = zbuf.shape
    if R == 0:
        return
    assert VP % 16 == 0 and VP >= V and zbuf.stride(1) == 1
    if INTERPRET:
        block_v, warps = min(next_pow2(VP), 256), 4
    else:
        block_v, warps = min(next_pow2(VP), 4096), 8
    launch(_ce_fwd_grad_kernel, (R,),
           zbuf, t, loss, V, VP, zbuf.stride(0), ignore_index, eps,
           WRITE_GRAD=write_grad, SMOOTH=eps > 0.0, BLOCK_V=block_v, num_warps=warps)


# ----------------------------------------------------------------------------- dW accumulation

@functools.lru_cache(maxsize=None)
def _cuda_addmm_out_dtype(device_index: int) -> bool:
    """Whether this torch's CUDA addmm can add a bf16/fp16 product into an fp32 tensor (out_dtype)."""
    try:
        a = torch.zeros(2, 2, dtype=torch.bfloat16, device=f"cuda:{device_index}")
        acc = torch.zeros(2, 2, dtype=torch.float32, device=a.device)
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
        return True
    except (RuntimeError, TypeError):
        return False


def _accumulate_dw(dw: Tensor, g: Tensor, hc: Tensor, first: bool, scratch: list) -> None:
    """dw (V, C) fp32 (+)= g^T @ hc, with g (R, V) and hc (R, C) in the compute dtype."""
    gt = g.t()
    if g.dtype == torch.float32:
        if first:
            torch.mm(gt, hc, out=dw)
        else:
            dw.addmm_(gt, hc)
    elif dw.is_cuda and _cuda_addmm_out_dtype(dw.device.index or 0):
        # fp32 C += bf16/fp16 A @ B inside cuBLAS (fp32 accumulate, no rounding of the partial sums)
        torch.addmm(dw, gt, hc, beta=0.0 if first else 1.0, out_dtype=torch.float32, out=dw)
    elif dw.is_cuda:
        # older torch: the chunk's product in the compute dtype, then added in fp32
        if not scratch:
            scratch.append(torch.empty(dw.shape, dtype=g.dtype, device=dw.device))
        torch.mm(gt, hc, out=scratch[0])
        if first:
            dw.copy_(scratch[0])
        else:
            dw.add_(scratch[0])
    else:
        # CPU (interpreter tests): fp32 products of the low-precision values, as cuBLAS computes them
        if first:
            torch.mm(gt.float(), hc.float(), out=dw)
        else:
            dw.addmm_(gt.float(), hc.float())


# ----------------------------------------------------------------------------- launcher

def _validate(h: Tensor, W: Tensor, targets: Tensor, ignore_index: int, reduction: str, label_smoothing: float,
              chunk_size: Optional[int]) -> None:
    reference.check_cross_entropy(OP, h, W, targets, ignore_index, reduction, label_smoothing)
    check_float("h", h, OP)   # (fp16 / bf16 / fp32)
    check_float("W", W, OP)
    check_same_device(OP, h=h, W=W, targets=targets)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"{OP}: chunk_size must be a positive int (rows per chunk), got {chunk_size!r}")


def default_chunk_size(n_rows: int, vocab: int, dtype: torch.dtype) -> int:
    """Rows per chunk: the largest power of two whose logits fit CHUNK_BYTES (at least 1, at most n_rows)."""
    elt = torch.finfo(dtype).bits // 8
    rows = max(1, CHUNK_BYTES // (vocab * elt))
    rows = 1 << (rows.bit_length() - 1)
    return max(1, min(rows, n_rows))


def flce_fwd(h2: Tensor, W: Tensor, t: Tensor, ignore_index: int, reduction: str, label_smoothing: float,
             chunk_size: Optional[int], need_dh: bool, need_dw: bool):
    """Returns (loss, dh, dw, scale).

    loss: () fp32, already reduced. dh: (N, C) in h2's dtype, d sum_i loss_i / dh (unscaled), or
    an empty tensor when not need_dh. dw: (V, C) fp32, d sum_i loss_i / dW (unscaled), or empty.
    scale: () fp32, 1/max(n_valid, 1) for "mean", 1 for "sum"; the true gradients are scale * dh/dw.
    """
    _validate(h2, W, t, ignore_index, reduction, label_smoothing, chunk_size)
    N, C = h2.shape
    V = W.shape[0]
    dev, cd = h2.device, h2.dtype
    t = t.contiguous()
    reference.check_targets(OP, t, V, ignore_index)
    Wc = W if W.dtype == cd else W.to(cd)
    R = default_chunk_size(N, V, cd) if chunk_size is None else min(chunk_size, max(N, 1))
    grad = need_dh or need_dw
    loss_rows = empty(N, torch.float32, dev)
    dh = empty((N, C), cd, dev) if need_dh else h2.new_empty(0)
    dw = empty((V, C), torch.float32, dev) if need_dw else h2.new_empty(0, dtype=torch.float32)
    if N > 0:
        # rows padded to a multiple of 16 elements: aligned rows for cuBLAS and vector loads
        VP = cdiv(V, 16) * 16
        zbuf = empty((R, VP), cd, dev)
        scratch: list = []
        for s in range(0, N, R):
            e = min(s + R, N)
            hc = h2[s:e]
            zfull = zbuf[: e - s]
            z = zfull[:, :V]
            torch.mm(hc, Wc.t(), out=z)
            _ce_rows(zfull, V, t[s:e], loss_rows[s:e], ignore_index, float(label_smoothing), grad)
            if need_dh:
                torch.mm(z, Wc, out=dh[s:e])
            if need_dw:
                _accumulate_dw(dw, z, hc, s == 0, scratch)
        del zbuf, scratch
    elif need_dw:
        dw.zero_()
    if reduction == "mean":
        scale = 1.0 / (t != ignore_index).sum().clamp_min(1).to(torch.float32)
    else:
        scale = torch.ones((), dtype=torch.float32, device=dev)
    loss = loss_rows.sum() * scale
    return loss, dh, dw, scale


# ----------------------------------------------------------------------------- registration

@torch.library.custom_op("fastgpt::fused_linear_cross_entropy", mutates_args=())
def _flce_op(h: Tensor, W: Tensor, targets: Tensor, ignore_index: int, reduction: str, label_smoothing: float,
             chunk_size: Optional[int], need_dh: bool, need_dw: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return flce_fwd(h, W, targets, ignore_index, reduction, label_smoothing, chunk_size, need_dh, need_dw)


@_flce_op.register_fake
def _(h, W, targets, ignore_index, reduction, label_smoothing, chunk_size, need_dh, need_dw):
    _validate(h, W, targets, ignore_index, reduction, label_smoothing, chunk_size)
    loss = h.new_empty((), dtype=torch.float32)
    dh = h.new_empty(h.shape) if need_dh else h.new_empty(0)
    dw = h.new_empty(W.shape, dtype=torch.float32) if need_dw else h.new_empty(0, dtype=torch.float32)
    return loss, dh, dw, h.new_empty((), dtype=torch.float32)


def _flce_setup(ctx, inputs, output):
    h, W, targets, ignore_index, reduction, label_smoothing, chunk_size, need_dh, need_dw = inputs
    _, dh, dw, scale = output
    ctx.save_for_backward(dh, dw, scale)
    ctx.need = (need_dh, need_dw)
    ctx.w_dtype = W.dtype
    ctx.mark_non_differentiable(dh, dw, scale)


@first_order_only("fused_linear_cross_entropy")  # dh and dW were formed in the forward
def _flce_backward(ctx, dloss, _ddh, _ddw, _dscale):
    dh, dw, scale = ctx.saved_tensors
    need_dh, need_dw = ctx.need
    # s as a (1,) tensor, not 0-d: a 0-d CUDA tensor does not take part in type promotion, so
    # dh * s (dh bf16/fp16) would read s rounded to dh's dtype on the GPU (the CPU reads a 0-d
    # operand whole), scaling dh by up to 2^-9 off; dimensioned, the math is fp32
    s = (dloss.to(torch.float32) * scale).reshape(1)
    gh = gw = None
    if need_dh:
        gh = torch.empty_like(dh)
        torch.mul(dh, s, out=gh)              # fp32 math, rounded once to h's dtype
    if need_dw:
        gw = torch.empty(dw.shape, dtype=ctx.w_dtype, device=dw.device)
        torch.mul(dw, s, out=gw)              # fp32 math, rounded once to W's dtype
    return gh, gw, None, None, None, None, None, None, None


_flce_op.register_autograd(_flce_backward, setup_context=_flce_setup)


# ----------------------------------------------------------------------------- public API

@on_its_device
def fused_linear_cross_entropy(h: Tensor, W: Tensor, targets: Tensor, ignore_index: int = -100,
                               reduction: str = "mean", label_smoothing: float = 0.0, *,
                               chunk_size: Optional[int] = None) -> Tensor:
    """cross_entropy(h @ W.T, targets) and its gradients, chunk by chunk of tokens (see the module docstring).

    h: (N, C) or (..., C); W: (V, C); targets: int64 with h's leading shape. reduction "mean"
    divides by the number of non-ignored targets (0 if there are none), "sum" sums them.
    Returns the fp32 loss (a 0-d tensor). chunk_size: rows of logits per chunk (default: a
    256 MiB budget). Under torch.autocast the GEMMs run in the autocast dtype, as nn.Linear's.
    """
    _validate(h, W, targets, ignore_index, reduction, label_smoothing, chunk_size)
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        ad = torch.get_autocast_dtype(dev)
        if ad in FLOAT_DTYPES and h.dtype != ad:
            h = h.to(ad)
    h2 = h.reshape(-1, h.shape[-1])
    t = targets.reshape(-1)
    grad_on = torch.is_grad_enabled()
    need_dh = grad_on and h2.requires_grad
    need_dw = grad_on and W.requires_grad
    with torch.autocast(dev, enabled=False) if torch.is_autocast_enabled(dev) else contextlib.nullcontext():
        loss, _, _, _ = _flce_op(h2, W, t, operator.index(ignore_index), reduction, float(label_smoothing), chunk_size,
                                 need_dh, need_dw)
    return loss
