"""LayerNorm and fused residual-add + LayerNorm, forward and backward, in Triton.

Forward, per row of N features (all statistics in fp32):
    h    = x + residual             add variant only; stored in residual's dtype,
                                    and the stored (rounded) h is what is normalised
    mean = sum(h) / N
    rstd = 1 / sqrt(sum((h - mean)^2) / N + eps)
    y    = (h - mean) * rstd * w + b                       (y in x's dtype)
Backward, with xhat = (h - mean) * rstd and g = dy * w:
    (h - mean is taken as (h - h0) - (mean - h0), h0 = the row's first element, as the forward
    computes it: the saved statistic is mean - h0, and a row whose |mean| >> its spread keeps
    the digits that h - round(mean) lost: dw was ~1e-2 off at x = 1000 + 1e-3 randn)
    dh   = rstd * (g - mean(g) - xhat * mean(g * xhat))    (+ dh_out, the grad of h)
    dw   = sum_rows(dy * xhat),  db = sum_rows(dy)
dx = dh (x's dtype) and dresidual = dh (residual's dtype). dw/db are reduced
deterministically in two stages: a persistent grid of G programs walks the rows
and each accumulates its rows into one fp32 row of a (G, N) partial buffer (its
row loop's loads prefetched, STAGES); one _common.sum_partials launch adds the G
rows in a fixed order (no atomics).
The forward's programs walk tiles of BLOCK_M rows: one tile each (as many programs
as tiles), or a persistent grid of 4 programs per SM whose row loop prefetches
the next tiles (STAGES > 1; the autotuner picks).

Limits: 1 <= N <= 8192 (a row lives in registers), at most _common.MAX_ROWS rows (~2**30: the row
loop's int32 start); x, residual, weight and bias may each be fp16, bf16 or fp32; the last dim must be
the feature dim.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgpt import reference
from fastgpt.backend import first_order_only
from fastgpt.kernels._common import (
    PlanCache, as_2d, autotune, cdiv, check_float, check_grad, check_out, check_rows, check_same_device, check_vector,
    current_stream, empty, misaligned, next_pow2, on_its_device, plan_key, reduction_programs, row_stride, records_grad,
    rows_2d, same_data, sum_partials, unit_stride,
)

MAX_N = 8192


def _configs():
    # (rows per loop trip, warps, pipeline stages); the first is the default when not autotuning.
    # STAGES = 1: one tile per program, as many programs as tiles. STAGES > 1: a persistent grid
    # (4 programs per SM) whose row loop prefetches the next trips' rows (see _bwd_configs).
    return [triton.Config({"BLOCK_M": bm, "STAGES": st}, num_warps=w) for bm, w, st in
            [(1, 8, 1), (1, 4, 1), (2, 4, 1), (2, 8, 1), (4, 4, 1), (4, 8, 1), (8, 8, 1), (16, 8, 1),
             (1, 8, 3), (2, 8, 3), (4, 8, 3)]]


def _bwd_configs():
    # (rows per loop trip, warps, pipeline stages of the row loop's loads); the first is the
    # default when not autotuning. STAGES > 1 has triton prefetch the next trips' rows into
    # shared memory (cp.async) while this one computes: without it each program waits out a
    # full memory latency per trip, and 4 programs per SM keep too few bytes in flight.
    return [triton.Config({"BLOCK_M": bm, "STAGES": st}, num_warps=w) for bm, w, st in
            [(1, 8, 3), (1, 8, 1), (1, 4, 3), (2, 4, 3), (2, 8, 3), (2, 8, 1), (4, 8, 3), (4, 8, 1)]]


def _prune_to(max_elems):
    def prune(configs, named_args, **kwargs):
        """Drop tiles of several rows that would not fit in registers (> max_elems elements),
        and tiles that leave lanes idle."""
        bn = next_pow2(named_args["N"])
        keep = [c for c in configs if 128 <= c.kwargs["BLOCK_M"] * bn
                and (c.kwargs["BLOCK_M"] == 1 or c.kwargs["BLOCK_M"] * bn <= max_elems)]
        return keep or configs[:1]
    return prune


# ----------------------------------------------------------------------------- kernels

@autotune(_configs(), key=["N", "HAS_RES", "HAS_BIAS"], prune=_prune_to(16384), bucket="M")
@triton.jit
def _layer_norm_fwd_kernel(
    X,          # (M, N) input, row stride stride_x
    R,          # (M, N) residual, row stride stride_r (read only if HAS_RES)
    Y,          # (M, N) output y, contiguous
    H,          # (M, N) output h = x + residual, contiguous (written only if HAS_RES)
    W,          # (N,) weight
    B,          # (N,) bias (read only if HAS_BIAS)
    Mean,       # (M,) fp32 row mean less the row's first element (mean - h[:, 0]: the shifted mean)
    Rstd,       # (M,) fp32 row 1/std
    M, N, inv_n, stride_x, stride_r, eps,
    HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
    for start in tl.range(pid * BLOCK_M, M, G * BLOCK_M, num_stages=STAGES):
        rows = start + tl.arange(0, BLOCK_M)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        rows = rows.to(tl.int64)
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            h = (x + r).to(H.dtype.element_ty)
            tl.store(H + rows[:, None] * N + cols[None, :], h, mask=mask)
            x = h.to(tl.float32)
        # the mean of the row shifted by its first element x0 (loaded again: an L1 hit, no cross-
        # thread broadcast): a constant row then centres to exactly 0. Unshifted, the mean is off
        # by a few ulps of |x|, which 1 / sqrt(var + eps) blew up into noise up to ~0.1 in y.
        x0 = tl.load(X + rows * stride_x, mask=rmask, other=0.0).to(tl.float32)
        if HAS_RES:
            x0 = (x0 + tl.load(R + rows * stride_r, mask=rmask, other=0.0).to(tl.float32))
            x0 = x0.to(H.dtype.element_ty).to(tl.float32)   # = h[:, 0], rounded as h is
        xs = tl.where(mask, x - x0[:, None], 0.0)
        mean_s = tl.sum(xs, axis=1) * inv_n
        xc = tl.where(mask, xs - mean_s[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) * inv_n
        # a variance past fp32 (|x| ~ 1e20: a diverged run) gave rstd = 0 and y = the bias, finite and silent;
        # NaN instead (torch's LayerNorm gives NaN or 0 there), so the run's non-finite check sees it
        rstd = tl.where(var < float("inf"), 1.0 / tl.sqrt(var + eps), float("nan"))
        y = xc * rstd[:, None] * w[None, :]
        if HAS_BIAS:
            y += b[None, :]
        tl.store(Y + rows[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
        tl.store(Mean + rows, mean_s, mask=rmask)   # (the backward shifts h by h0 again)
        tl.store(Rstd + rows, rstd, mask=rmask)


# the backward holds two more (BLOCK_M, BLOCK_N) fp32 tiles (the dw/db accumulators): smaller
# tiles (sm_90, N = 768: BLOCK_M = 8 took ~250 registers, one program per SM)
@autotune(_bwd_configs(), key=["N", "HAS_DHO", "HAS_DR", "HAS_BIAS"], prune=_prune_to(4096), bucket="M")
@triton.jit
def _layer_norm_bwd_kernel(
    DY,         # (M, N) grad of y, row stride stride_dy
    DHO,        # (M, N) grad of h (add variant), row stride stride_dho (read only if HAS_DHO)
    Hin,        # (M, N) the normalised input (x, or h), row stride stride_h
    W,          # (N,) weight
    Mean,       # (M,) fp32 shifted mean (mean - Hin[:, 0]; the forward's)
    Rstd,       # (M,) fp32
    DX,         # (M, N) grad of x, contiguous
    DR,         # (M, N) grad of residual, contiguous (written only if HAS_DR)
    DWp,        # (G, N) fp32 partial sums of dy * xhat, one row per program
    DBp,        # (G, N) fp32 partial sums of dy (written only if HAS_BIAS)
    M, N, inv_n, stride_dy, stride_dho, stride_h,
    HAS_DHO: tl.constexpr, HAS_DR: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    w0 = tl.load(W).to(tl.float32)
    # per-element accumulators, summed over their rows once after the loop (a sum over axis 0
    # on every trip would be a cross-warp reduction through shared memory, with a barrier)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in tl.range(pid * BLOCK_M, M, G * BLOCK_M, num_stages=STAGES):
        rows = start + tl.arange(0, BLOCK_M)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        rows = rows.to(tl.int64)
        h = tl.load(Hin + rows[:, None] * stride_h + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean_s = tl.load(Mean + rows, mask=rmask, other=0.0)
        rstd = tl.load(Rstd + rows, mask=rmask, other=0.0)
        # h - mean as the forward took it, (h - h0) - mean_s (h0 loaded again: an L1 hit): the same xhat,
        # bit for bit, where h - (h0 + mean_s) rounded to fp32 lost ~ulp(mean) / std of it
        h0 = tl.load(Hin + rows * stride_h, mask=rmask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, ((h - h0[:, None]) - mean_s[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c1 = tl.sum(g * xhat, axis=1) * inv_n
        # c2 = mean(g) as g0 + mean(g - g0), g0 = g[:, 0] (dy loaded again: an L1 hit). Where dy is the
        # same in every row (y.sum(), the post-LN block's residual stream), c2's rounding is too, and
        # the gradients after this add it up over the rows: with the ln weights ~1 +- 0.1, g's sum
        # carried ~ulp(N) of it, the deviations from g0 ~10x less. And g - c2 first: in that case
        # it is exact (Sterbenz) and dx = (g - c2 - xhat c1) rstd is all cancellation. In the fp32
        # block test (y.sum(), post-LN) PyTorch's CPU LayerNorm, which accumulates in double, had set
        # a bound the kernel missed for ~1 seed in 200 (err/bound 1.20 at the worst seed found, 0.25 now).
        g0 = tl.load(DY + rows * stride_dy, mask=rmask, other=0.0).to(tl.float32) * w0
        c2 = g0 + tl.sum(tl.where(mask, g - g0[:, None], 0.0), axis=1) * inv_n
        dh = ((g - c2[:, None]) - xhat * c1[:, None]) * rstd[:, None]
        if HAS_DHO:
            dh += tl.load(DHO + rows[:, None] * stride_dho + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * N + cols[None, :], dh.to(DX.dtype.element_ty), mask=mask)
        if HAS_DR:
            tl.store(DR + rows[:, None] * N + cols[None, :], dh.to(DR.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        if HAS_BIAS:
            db_acc += dy
    tl.store(DWp + pid * N + cols, tl.sum(dw_acc, axis=0), mask=cmask)
    if HAS_BIAS:
        tl.store(DBp + pid * N + cols, tl.sum(db_acc, axis=0), mask=cmask)


# ----------------------------------------------------------------------------- launchers

def _validate(op, x, residual, weight, bias):
    check_float("x", x, op)
    reference.check_x(op, x, features=True)
    n = x.shape[-1]
    if n > MAX_N:
        raise ValueError(f"{op}: hidden size {n} exceeds the kernel's limit of {MAX_N}; use backend='reference'")
    check_rows(op, x)
    if residual is not None:
        check_float("residual", residual, op)
        if residual.shape != x.shape:
            raise ValueError(f"{op}: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    reference.require_weight(op, weight)
    check_vector(op, "weight", weight, n)
    check_vector(op, "bias", bias, n)
    check_same_device(op, x=x, residual=residual, weight=weight, bias=bias)


def _fwd_programs(M: int, meta: dict, device: torch.device) -> int:
    """The forward's grid: a program per tile (STAGES = 1 on the GPU), else a persistent grid of
    4 programs per SM; at most 4 programs on the CPU, so the interpreter always walks the row loop.
    (sm_90: the 8-warp pipelined configs take 31-128 registers a thread, so 4 programs are resident
    at once only up to 64 registers; above that the rest run as a second wave of equal shares.)"""
    tiles = cdiv(M, meta["BLOCK_M"])
    if meta["STAGES"] == 1 and device.type == "cuda":
        return tiles
    return reduction_programs(device, tiles, per_sm=4)


def layer_norm_fwd(x: Tensor, residual: Optional[Tensor], weight: Tensor, bias: Optional[Tensor],
                   eps: float, out: Optional[Tensor] = None, capture=None):
    """Returns (y, h, mean, rstd); h is None without a residual; mean is the shifted mean (each row's mean
    less its first element), which layer_norm_bwd takes. ``out`` may supply y (tests poison it).
    ``capture``: a _Plan whose forward Replay this launch fills (when it can be replayed)."""
    op = "add_layer_norm" if residual is not None else "layer_norm"
    _validate(op, x, residual, weight, bias)
    check_out(op, out, x)
    N = x.shape[-1]
    x2 = rows_2d(x)
    M = x2.shape[0]
    y = out if out is not None else empty(x.shape, dtype=x.dtype, device=x.device)
    h = empty(x.shape, dtype=residual.dtype, device=x.device) if residual is not None else None
    mean = empty(M, dtype=torch.float32, device=x.device)
    rstd = empty(M, dtype=torch.float32, device=x.device)
    if M == 0:
        return y, h, mean, rstd
    r2 = rows_2d(residual) if residual is not None else x2
    grid = lambda meta: (_fwd_programs(M, meta, x.device),)  # noqa: E731
    # a replay passes x, residual as_2d: only when rows_2d made no copy of them
    if capture is not None and (out is not None or not same_data(x2, x) or not same_data(r2, residual)):
        capture = None
    replay = _layer_norm_fwd_kernel.run_replayable(
        8 if capture is not None else None,
        x2, r2, y, h if h is not None else y, weight, bias if bias is not None else weight, mean, rstd,
        M, N, 1.0 / N, row_stride(x2), row_stride(r2), eps, grid=grid,
        HAS_RES=residual is not None, HAS_BIAS=bias is not None, BLOCK_N=next_pow2(N),
    )
    if capture is not None and replay is not None:
        capture.fwd, capture.M = replay, M
    return y, h, mean, rstd


def layer_norm_bwd(dy: Tensor, dh_out: Optional[Tensor], hin: Tensor, weight: Tensor, has_bias: bool,
                   mean: Tensor, rstd: Tensor, x_dtype: torch.dtype, res_dtype: Optional[torch.dtype],
                   capture=None):
    """Returns (dx, dresidual, dweight, dbias).

    dresidual is None unless a residual exists with a dtype other than x's
    (then dx serves both); dbias is None without a bias. ``capture``: (a _Plan, its backward key)
    whose Replays these launches fill (when they can be replayed).
    """
    op = "layer_norm" if res_dtype is None else "add_layer_norm"
    check_grad(op, "dy", dy, hin)
    if dh_out is not None:
        check_grad(op, "dh", dh_out, hin)
    N = hin.shape[-1]
    dy2 = rows_2d(dy)
    h2 = rows_2d(hin)
    M = h2.shape[0]
    dho2 = rows_2d(dh_out) if dh_out is not None else dy2
    need_dr = res_dtype is not None and res_dtype != x_dtype
    dx = empty(hin.shape, dtype=x_dtype, device=hin.device)
    dr = empty(hin.shape, dtype=res_dtype, device=hin.device) if need_dr else None
    G = reduction_programs(hin.device, cdiv(max(M, 1), 1))
    dwp = empty((G, N), dtype=torch.float32, device=hin.device)
    dbp = empty((G, N), dtype=torch.float32, device=hin.device) if has_bias else dwp
    # a replay passes dy, dh_out, hin as_2d: only when rows_2d made no copy of them
    if capture is not None and (M == 0 or not (same_data(dy2, dy) and same_data(dho2, dh_out)
                                               and same_data(h2, hin))):
        capture = None
    replays = [] if capture is not None else None
    if M > 0:
        replay = _layer_norm_bwd_kernel.run_replayable(
            10 if capture is not None else None,
            dy2, dho2, h2, weight, mean, rstd, dx, dr if dr is not None else dx, dwp, dbp,
            M, N, 1.0 / N, row_stride(dy2), row_stride(dho2), row_stride(h2), grid=(G,),
            HAS_DHO=dh_out is not None, HAS_DR=need_dr, HAS_BIAS=has_bias,
            BLOCK_N=next_pow2(N),
            # no FMA contraction: g - (xhat * c1 + c2) must cancel exactly where it should
            # (N = 1 on the H100 left dy * w unrounded inside an FMA against the rounded c2)
            enable_fp_fusion=False,
        )
        if replays is not None:
            replays.append(replay)
    else:
        dwp.zero_()
        dbp.zero_()
    dw, db = sum_partials(dwp, dbp if has_bias else None, weight.dtype, replays)
    if replays is not None and len(replays) == 2 and None not in replays:
        plan, key = capture
        plan.bwd[key] = (*replays, G)
    return dx, dr, dw, db


# ----------------------------------------------------------------------------- registration

def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


@torch.library.custom_op("fastgpt::layer_norm", mutates_args=())
def _layer_norm_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    y, _, mean, rstd = layer_norm_fwd(x, None, weight, bias, eps)
    return y, mean, rstd


@torch.library.custom_op("fastgpt::add_layer_norm", mutates_args=())
def _add_layer_norm_op(x: Tensor, residual: Tensor, weight: Tensor, bias: Optional[Tensor],
                       eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return layer_norm_fwd(x, residual, weight, bias, eps)


@torch.library.custom_op("fastgpt::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd_op(dy: Tensor, dh_out: Optional[Tensor], hin: Tensor, weight: Tensor, has_bias: bool,
                       mean: Tensor, rstd: Tensor, x_dtype: torch.dtype,
                       res_dtype: Optional[torch.dtype]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dr, dw, db = layer_norm_bwd(dy, dh_out, hin, weight, has_bias, mean, rstd, x_dtype, res_dtype)
    return dx, dr if dr is not None else _empty(dx), dw, db if db is not None else _empty(dw)


def _stats(x):
    m = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return x.new_empty(m, dtype=torch.float32), x.new_empty(m, dtype=torch.float32)


@_layer_norm_op.register_fake
def _(x, weight, bias, eps):
    _validate("layer_norm", x, None, weight, bias)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), *_stats(x))


@_add_layer_norm_op.register_fake
def _(x, residual, weight, bias, eps):
    _validate("add_layer_norm", x, residual, weight, bias)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(residual, memory_format=torch.contiguous_format), *_stats(x))


@_layer_norm_bwd_op.register_fake
def _(dy, dh_out, hin, weight, has_bias, mean, rstd, x_dtype, res_dtype):
    dx = torch.empty(hin.shape, dtype=x_dtype, device=hin.device)
    need_dr = res_dtype is not None and res_dtype != x_dtype
    dr = torch.empty(hin.shape, dtype=res_dtype, device=hin.device) if need_dr else dx.new_empty(0)
    dw = torch.empty_like(weight)
    db = torch.empty_like(weight) if has_bias else weight.new_empty(0)
    return dx, dr, dw, db


def _save(ctx, x, residual, weight, bias, h, mean, rstd):
    ctx.save_for_backward(x if residual is None else h, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.x_dtype = x.dtype
    ctx.res_dtype = residual.dtype if residual is not None else None


def _grads(ctx, dy, dh, bwd):
    """(dx, dweight, dbias) or (dx, dresidual, dweight, dbias), computed by ``bwd``
    (the launcher in eager mode, the registered backward op under torch.compile)."""
    hin, weight, mean, rstd = ctx.saved_tensors
    if dy is None and dh is None:   # no gradient reaches the outputs (a caller's Function returned None)
        return (None,) * (3 if ctx.res_dtype is None else 4)
    if dy is None:  # add_layer_norm, only h = x + residual in the loss: no LayerNorm gradient (as the reference)
        return dh.to(ctx.x_dtype), dh.to(ctx.res_dtype), None, None
    dx, dr, dw, db = bwd(dy, dh, hin, weight, ctx.has_bias, mean, rstd, ctx.x_dtype, ctx.res_dtype)
    db = db if ctx.has_bias else None
    if ctx.res_dtype is None:
        return dx, dw, db
    return dx, (dr if ctx.res_dtype != ctx.x_dtype else dx), dw, db


def _ln_setup(ctx, inputs, output):
    x, weight, bias, _ = inputs
    _, mean, rstd = output
    _save(ctx, x, None, weight, bias, None, mean, rstd)


def _ln_backward(ctx, dy, _dmean, _drstd):
    return (*_grads(ctx, dy, None, _layer_norm_bwd_op), None)


def _add_ln_setup(ctx, inputs, output):
    x, residual, weight, bias, _ = inputs
    _, h, mean, rstd = output
    _save(ctx, x, residual, weight, bias, h, mean, rstd)
    ctx.set_materialize_grads(False)   # y unused: no LayerNorm gradient (None), as on the eager path


def _add_ln_backward(ctx, dy, dh, _dmean, _drstd):
    return (*_grads(ctx, dy, dh, _layer_norm_bwd_op), None)


_layer_norm_op.register_autograd(_ln_backward, setup_context=_ln_setup)
_add_layer_norm_op.register_autograd(_add_ln_backward, setup_context=_add_ln_setup)


# ----------------------------------------------------------------------------- replay plans
# _common's replay plans (as attention's): an eager call signature (every tensor's shape, strides,
# dtype and device; eps) keeps its forward launch, and per backward signature its two launches, as
# Replays: a repeated call skips the validation, rows_2d, the grids, the autotuner's key and
# triton's per-argument specialisation; what is left is the allocations and one C launch per kernel.

_PLANS = PlanCache(256)


class _Plan:
    """A validated call signature's Replays: ``fwd`` (with ``M``, its rows), and ``bwd``: backward
    key -> (kernel Replay, sum_partials Replay, G). ``key`` None: a call no plan serves."""
    __slots__ = ("key", "fwd", "M", "bwd")

    def __init__(self, key):
        self.key, self.fwd, self.M, self.bwd = key, None, 0, {}

    def forward(self, x, residual, weight, bias, eps):
        r = self.fwd
        if r is not None and r.usable() and not misaligned(x, residual, weight, bias):
            dev = x.device
            y = empty(x.shape, x.dtype, dev)
            h = empty(x.shape, residual.dtype, dev) if residual is not None else None
            mean = empty(self.M, torch.float32, dev)
            rstd = empty(self.M, torch.float32, dev)
            x2 = as_2d(x)
            r(current_stream(r.device), x2, as_2d(residual) if residual is not None else x2, y,
              h if h is not None else y, weight, bias if bias is not None else weight, mean, rstd)
            return y, h, mean, rstd
        out = layer_norm_fwd(x, residual, weight, bias, eps, capture=self if self.key is not None else None)
        if self.fwd is not None:
            _PLANS.keep(self.key, self)
        return out

    def backward(self, dy, dh, hin, weight, has_bias, mean, rstd, x_dtype, res_dtype):
        key = plan_key(dy, dh, hin, weight, mean, rstd) if self.key is not None else None
        hit = self.bwd.get(key) if key is not None else None
        if hit is not None and hit[0].usable() and hit[1].usable() and not misaligned(dy, dh, hin, weight, mean,
                                                                                        rstd):
            rb, rs, G = hit
            dev, N = hin.device, hin.shape[-1]
            dx = empty(hin.shape, x_dtype, dev)
            dr = empty(hin.shape, res_dtype, dev) if res_dtype is not None and res_dtype != x_dtype else None
            dwp = empty((G, N), torch.float32, dev)
            dbp = empty((G, N), torch.float32, dev) if has_bias else dwp
            dw = empty((N,), weight.dtype, dev)
            db = empty((N,), weight.dtype, dev) if has_bias else None
            stream = current_stream(rb.device)
            dy2 = as_2d(dy)
            rb(stream, dy2, as_2d(dh) if dh is not None else dy2, as_2d(hin), weight, mean, rstd, dx,
               dr if dr is not None else dx, dwp, dbp)
            rs(stream, dwp, dbp, dw, db if db is not None else dw)
            return dx, dr, dw, db
        return layer_norm_bwd(dy, dh, hin, weight, has_bias, mean, rstd, x_dtype, res_dtype,
                              capture=(self, key) if key is not None else None)


def _planned(x, residual, weight, bias, eps: float) -> _Plan:
    """The call signature's _Plan if it has run before (nothing to check again), else a new one."""
    key = plan_key(x, residual, weight, bias)
    return _PLANS.find(None if key is None else (key, eps), _Plan)


class _LayerNormFunction(torch.autograd.Function):
    """The eager path: the same launchers without the custom-op dispatch, whose
    host overhead (~5x an autograd.Function's) would dominate at training sizes."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, plan):
        y, h, mean, rstd = plan.forward(x, residual, weight, bias, eps)
        _save(ctx, x, residual, weight, bias, h, mean, rstd)
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        return y if residual is None else (y, h)

    @staticmethod
    @first_order_only("layer_norm / add_layer_norm")
    def backward(ctx, dy, dh=None):
        g = _grads(ctx, dy, dh, ctx.plan.backward)
        if ctx.res_dtype is None:
            return g[0], None, g[1], g[2], None, None
        return (*g, None, None)


# ----------------------------------------------------------------------------- public API

@on_its_device
def layer_norm(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dim (see the module docstring); y has x's dtype."""
    weight, bias = unit_stride(weight), unit_stride(bias)
    eps = reference.check_eps("layer_norm", eps)
    if torch.compiler.is_compiling():
        return _layer_norm_op(x, weight, bias, eps)[0]
    plan = _planned(x, None, weight, bias, eps)
    if not records_grad(x, weight, bias):
        return plan.forward(x, None, weight, bias, eps)[0]
    return _LayerNormFunction.apply(x, None, weight, bias, eps, plan)


@on_its_device
def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                   eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(y, h): h = x + residual in residual's dtype, y = layer_norm(h) in x's dtype, one pass."""
    check_float("residual", residual, "add_layer_norm")   # _validate takes None: layer_norm's
    weight, bias = unit_stride(weight), unit_stride(bias)
    eps = reference.check_eps("add_layer_norm", eps)
    if torch.compiler.is_compiling():
        y, h, _, _ = _add_layer_norm_op(x, residual, weight, bias, eps)
        return y, h
    plan = _planned(x, residual, weight, bias, eps)
    if not records_grad(x, residual, weight, bias):
        y, h, _, _ = plan.forward(x, residual, weight, bias, eps)
        return y, h
    return _LayerNormFunction.apply(x, residual, weight, bias, eps, plan)
