"""Fused bias + GELU, forward and backward, in Triton (fp32 math).

Forward, u = x + b (b broadcast over the last dim, optional):
    tanh form  y = 0.5 u (1 + tanh(k0 (u + k1 u^3))),  k0 = sqrt(2/pi), k1 = 0.044715
    erf form   y = 0.5 u (1 + erf(u / sqrt(2)))
Backward:
    tanh form  dy/du = s + 2 u s (1 - s) k0 (1 + 3 k1 u^2),  s = sigmoid(2 k0 (u + k1 u^3))
    erf form   dy/du = 0.5 (1 + erf(u / sqrt(2))) + u exp(-u^2 / 2) / sqrt(2 pi)
    dx = dy * dy/du,  db = sum_rows(dx)  (fp32, two-stage: a persistent grid of G
    programs writes a (G, N) partial buffer, _common.sum_partials adds its rows in a fixed order)
The forward saves x (not u): the backward recomputes u = x + b.

Limits: any shape with a last dim (the bias dim) up to MAX_N = 8,388,480 and at most _common.MAX_ROWS
rows (~2**30: the row loop's int32 start); fp16, bf16, fp32; y has x's dtype.
The tanh form is evaluated as u * sigmoid(2z) (the same function): 0.5 u (1 + tanh z)
loses all accuracy to cancellation for u << 0, and the sigmoid saturates correctly at +-inf.
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
    current_stream, empty, misaligned, on_its_device, plan_key, records_grad, reduction_programs, row_stride, rows_2d,
    same_data, sum_partials, unit_stride,
)

_APPROX = {"tanh": 1, "none": 0}


def _known(approximate) -> bool:
    return isinstance(approximate, str) and approximate in _APPROX   # (a list is unhashable: a TypeError)


MAX_N = 65535 * 128   # the grid's second axis: column blocks of at least 128 in every config


def _configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w) for bm, bn, w in
            [(8, 256, 4), (4, 512, 4), (16, 256, 8), (8, 512, 8), (2, 1024, 4), (32, 128, 4)]]


def _bwd_configs():
    # STAGES > 1: triton prefetches the next trips' tiles of the grid-stride row loop (cp.async),
    # as in LayerNorm's backward; the first config stays the default when not autotuning
    return [triton.Config({**c.kwargs, "STAGES": 1}, num_warps=c.num_warps) for c in _configs()] + \
        [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "STAGES": st}, num_warps=w) for bm, bn, w, st in
         [(8, 256, 4, 3), (4, 512, 4, 3), (16, 256, 8, 2), (8, 512, 8, 2)]]


@triton.jit
def _gelu_and_grad(u, TANH: tl.constexpr, NEED_GRAD: tl.constexpr):
    """gelu(u) and, if NEED_GRAD, d gelu / du (fp32 in, fp32 out)."""
    if TANH:
        # 0.5 u (1 + tanh(z)) == u * sigmoid(2 z): no cancellation in 1 + tanh(z) for u << 0
        k0 = 0.7978845608028654  # sqrt(2 / pi)
        k1 = 0.044715
        z = k0 * (u + k1 * u * u * u)
        e = tl.exp(-2.0 * tl.abs(z))                    # in (0, 1]: no overflow for u << 0
        r = 1.0 / (1.0 + e)
        s = tl.where(z >= 0, r, e * r)                  # sigmoid(2 z)
        y = u * s
        if NEED_GRAD:
            one_minus_s = tl.where(z >= 0, e * r, r)    # 1 - sigmoid(2 z), without cancellation
            dydu = s + 2.0 * u * s * one_minus_s * k0 * (1.0 + 3.0 * k1 * u * u)
        else:
            dydu = y
    else:
        e = tl.erf(u * 0.7071067811865476)
        y = 0.5 * u * (1.0 + e)
        if NEED_GRAD:
            dydu = 0.5 * (1.0 + e) + u * tl.exp(-0.5 * u * u) * 0.3989422804014327
        else:
            dydu = y
    return y, dydu


@autotune(_configs(), key=["N", "HAS_BIAS", "TANH"], bucket="M")
@triton.jit
def _bias_gelu_fwd_kernel(
    X,          # (M, N) input, row stride stride_x
    B,          # (N,) bias (read only if HAS_BIAS)
    Y,          # (M, N) output, contiguous
    M, N, stride_x,
    HAS_BIAS: tl.constexpr, TANH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    mask = (rows < M)[:, None] & cmask[None, :]
    rows = rows.to(tl.int64)
    u = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        u += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    y, _ = _gelu_and_grad(u, TANH, False)
    tl.store(Y + rows[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@autotune(_bwd_configs(), key=["N", "HAS_BIAS", "TANH"], bucket="M")
@triton.jit
def _bias_gelu_bwd_kernel(
    DY,         # (M, N) grad of y, row stride stride_dy
    X,          # (M, N) the forward's input x, row stride stride_x
    B,          # (N,) bias (read only if HAS_BIAS)
    DX,         # (M, N) grad of x, contiguous
    DBp,        # (G, N) fp32 partial column sums of dx, one row per program along axis 0
    M, N, stride_dy, stride_x,
    HAS_BIAS: tl.constexpr, TANH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    if HAS_BIAS:
        b = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
    # per-element accumulator, summed over its rows once after the loop (not a cross-warp
    # reduction through shared memory on every trip)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in tl.range(pid * BLOCK_M, M, G * BLOCK_M, num_stages=STAGES):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < M)[:, None] & cmask[None, :]
        rows = rows.to(tl.int64)
        u = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            u += b[None, :]
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        _, dydu = _gelu_and_grad(u, TANH, True)
        dx = tl.where(mask, dy * dydu, 0.0)
        tl.store(DX + rows[:, None] * N + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_BIAS:
            db_acc += dx
    if HAS_BIAS:
        tl.store(DBp + pid.to(tl.int64) * N + cols, tl.sum(db_acc, axis=0), mask=cmask)


# ----------------------------------------------------------------------------- launchers

def _validate(x, bias, approximate):
    op = "bias_gelu"
    check_float("x", x, op)
    reference.check_x(op, x)
    if x.shape[-1] > MAX_N:
        raise ValueError(f"{op}: last dim {x.shape[-1]} is above the kernels' limit of {MAX_N:,} (65535 blocks of "
                         "128 columns); without a bias, reshape x (GELU is element-wise), or use backend='reference'")
    check_rows(op, x)
    if not _known(approximate):
        raise ValueError(f"{op}: approximate must be 'tanh' or 'none', got {approximate!r}")
    check_vector(op, "bias", bias, x.shape[-1])
    check_same_device(op, x=x, bias=bias)


def bias_gelu_fwd(x: Tensor, bias: Optional[Tensor], approximate: str = "tanh",
                  out: Optional[Tensor] = None, capture=None) -> Tensor:
    """y = gelu(x + bias). ``out`` may supply y (tests poison it). ``capture``: a _Plan whose
    forward Replay this launch fills (when it can be replayed)."""
    _validate(x, bias, approximate)
    check_out("bias_gelu", out, x)
    y = out if out is not None else empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    x2 = rows_2d(x)
    M, N = x2.shape
    if capture is not None and (out is not None or not same_data(x2, x)):
        capture = None   # a replay passes x as_2d: only when rows_2d made no copy of it
    grid = lambda meta: (cdiv(M, meta["BLOCK_M"]), cdiv(N, meta["BLOCK_N"]))  # noqa: E731
    replay = _bias_gelu_fwd_kernel.run_replayable(3 if capture is not None else None,
                                                  x2, bias if bias is not None else x2, y, M, N, row_stride(x2),
                                                  grid=grid, HAS_BIAS=bias is not None, TANH=_APPROX[approximate])
    if capture is not None and replay is not None:
        capture.fwd = replay
    return y


def bias_gelu_bwd(dy: Tensor, x: Tensor, bias: Optional[Tensor], approximate: str = "tanh", capture=None):
    """Returns (dx, dbias); dbias is None without a bias (and then in bias's dtype). ``capture``:
    (a _Plan, its backward key) whose Replays these launches fill (when they can be replayed)."""
    check_grad("bias_gelu", "dy", dy, x)
    dx = empty(x.shape, dtype=x.dtype, device=x.device)
    N = x.shape[-1]
    if x.numel() == 0:
        return dx, (torch.zeros_like(bias) if bias is not None else None)
    x2 = rows_2d(x)
    dy2 = rows_2d(dy)
    M = x2.shape[0]
    if capture is not None and not (same_data(x2, x) and same_data(dy2, dy)):
        capture = None   # a replay passes dy, x as_2d: only when rows_2d made no copy of them
    if bias is not None:   # a bounded number of programs, each one row of partial column sums
        G = reduction_programs(x.device, cdiv(M, 8))
        dbp = empty((G, N), dtype=torch.float32, device=x.device)
        grid = lambda meta: (G, cdiv(N, meta["BLOCK_N"]))  # noqa: E731
    else:                  # one row block per program, whatever BLOCK_M the tuner picked
        G, dbp = None, dx
        grid = lambda meta: (cdiv(M, meta["BLOCK_M"]), cdiv(N, meta["BLOCK_N"]))  # noqa: E731
    replays = [] if capture is not None else None
    r = _bias_gelu_bwd_kernel.run_replayable(5 if capture is not None else None,
                                             dy2, x2, bias if bias is not None else x2, dx, dbp, M, N,
                                             row_stride(dy2), row_stride(x2), grid=grid,
                                             HAS_BIAS=bias is not None, TANH=_APPROX[approximate])
    if replays is not None:
        replays.append(r)
    db = sum_partials(dbp, None, bias.dtype, replays)[0] if bias is not None else None
    if replays is not None and None not in replays:
        plan, key = capture
        plan.bwd[key] = (replays[0], replays[1] if bias is not None else None, G)
    return dx, db


# ----------------------------------------------------------------------------- replay plans
# As LayerNorm's (_common's replay plans): an eager call signature (x's and bias's shape, strides,
# dtype, device; the form) keeps its forward launch, and per backward signature its launches, as
# Replays that skip the validation, rows_2d, the grids, the autotuner's key and triton's
# per-argument specialisation.

_PLANS = PlanCache(256)


class _Plan:
    """A validated call signature's Replays: ``fwd``, and ``bwd``: backward key -> (kernel Replay,
    sum_partials Replay or None without a bias, G or None without a bias). ``key`` None: a call no plan serves."""
    __slots__ = ("key", "fwd", "bwd")

    def __init__(self, key):
        self.key, self.fwd, self.bwd = key, None, {}

    def forward(self, x, bias, approximate):
        r = self.fwd
        if r is not None and r.usable() and not misaligned(x, bias):
            y = empty(x.shape, x.dtype, x.device)
            x2 = as_2d(x)
            r(current_stream(r.device), x2, bias if bias is not None else x2, y)
            return y
        y = bias_gelu_fwd(x, bias, approximate, capture=self if self.key is not None else None)
        if self.fwd is not None:
            _PLANS.keep(self.key, self)
        return y

    def backward(self, dy, x, bias, approximate):
        key = plan_key(dy, x, bias) if self.key is not None else None
        hit = self.bwd.get(key) if key is not None else None
        if hit is not None and hit[0].usable() and (hit[1] is None or hit[1].usable()) \
                and not misaligned(dy, x, bias):
            rb, rs, G = hit
            dev, N = x.device, x.shape[-1]
            dx = empty(x.shape, x.dtype, dev)
            dbp = empty((G, N), torch.float32, dev) if bias is not None else dx
            stream = current_stream(rb.device)
            x2 = as_2d(x)
            rb(stream, as_2d(dy), x2, bias if bias is not None else x2, dx, dbp)
            if bias is None:
                return dx, None
            db = empty((N,), bias.dtype, dev)
            rs(stream, dbp, dbp, db, db)
            return dx, db
        return bias_gelu_bwd(dy, x, bias, approximate, capture=(self, key) if key is not None else None)


def _planned(x, bias, approximate) -> _Plan:
    """The call signature's _Plan if it has run before (nothing to check again), else a new one."""
    key = plan_key(x, bias)
    return _PLANS.find(None if key is None or not _known(approximate) else (key, approximate), _Plan)


@on_its_device
def bias_gelu_recompute(u: Tensor, bias: Optional[Tensor], approximate: str = "tanh"):
    """(g, grad_fn) of ops.bias_gelu_recompute on the fused path: g = bias_gelu(u, bias) and
    grad_fn(dg) -> (du, dbias or None), the launchers themselves (through the call's plan)."""
    bias = unit_stride(bias)
    plan = _planned(u, bias, approximate)
    return plan.forward(u, bias, approximate), lambda dg: plan.backward(dg, u, bias, approximate)


# ----------------------------------------------------------------------------- registration

@torch.library.custom_op("fastgpt::bias_gelu", mutates_args=())
def _bias_gelu_op(x: Tensor, bias: Optional[Tensor], approximate: str) -> Tensor:
    return bias_gelu_fwd(x, bias, approximate)


@torch.library.custom_op("fastgpt::bias_gelu_bwd", mutates_args=())
def _bias_gelu_bwd_op(dy: Tensor, x: Tensor, bias: Optional[Tensor], approximate: str) -> tuple[Tensor, Tensor]:
    dx, db = bias_gelu_bwd(dy, x, bias, approximate)
    return dx, db if db is not None else dx.new_empty(0)


@_bias_gelu_op.register_fake
def _(x, bias, approximate):
    _validate(x, bias, approximate)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_bias_gelu_bwd_op.register_fake
def _(dy, x, bias, approximate):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    return dx, torch.empty_like(bias) if bias is not None else x.new_empty(0)


def _setup(ctx, inputs, output):
    x, bias, approximate = inputs
    ctx.save_for_backward(x, bias)
    ctx.approximate = approximate


def _grads(ctx, dy, bwd):
    x, bias = ctx.saved_tensors
    dx, db = bwd(dy, x, bias, ctx.approximate)
    return dx, (db if bias is not None else None), None


def _backward(ctx, dy):
    return _grads(ctx, dy, _bias_gelu_bwd_op)


_bias_gelu_op.register_autograd(_backward, setup_context=_setup)


class _BiasGeluFunction(torch.autograd.Function):
    """The eager path: the same launchers without the custom-op dispatch overhead."""

    @staticmethod
    def forward(ctx, x, bias, approximate, plan):
        y = plan.forward(x, bias, approximate)
        _setup(ctx, (x, bias, approximate), y)
        ctx.plan = plan
        return y

    @staticmethod
    @first_order_only("bias_gelu")
    def backward(ctx, dy):
        return (*_grads(ctx, dy, ctx.plan.backward), None)


@on_its_device
def bias_gelu(x: Tensor, bias: Optional[Tensor] = None, approximate: str = "tanh") -> Tensor:
    """gelu(x + bias) (see the module docstring); y has x's dtype."""
    bias = unit_stride(bias)
    if torch.compiler.is_compiling():
        return _bias_gelu_op(x, bias, approximate)
    plan = _planned(x, bias, approximate)
    if not records_grad(x, bias):
        return plan.forward(x, bias, approximate)
    return _BiasGeluFunction.apply(x, bias, approximate, plan)
