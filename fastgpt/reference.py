"""Pure-PyTorch specification of every fastgpt op.

This file is three things at once:
  * the oracle the fused kernels are tested against (run in float64 it is
    ``ref_hi`` of DESIGN.md's tolerance rule, run in the op's dtype ``ref_lp``);
  * the CPU / fallback path of ``fastgpt.ops``;
  * the documentation of what each op computes, dtypes included.

Dtype contract (the same for the fused kernels):
  * math runs in at least float32 ("opmath"), float64 stays float64;
  * ``y``-like outputs take the activation dtype (``x.dtype``; under autocast
    that is the autocast dtype because the preceding matmul produced it);
  * ``h`` of ``add_layer_norm`` and the output of ``bias_dropout_add`` keep
    the residual's dtype;
  * parameter gradients take the parameter's dtype (fp32 weights -> fp32 grads).

Nothing here reads autocast state: every op disables autocast internally and
casts explicitly, so the result does not depend on the caller's context.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

__all__ = [
    "layer_norm",
    "add_layer_norm",
    "bias_gelu",
    "causal_attention",
    "bias_dropout_add",
    "fused_linear_cross_entropy",
    "opmath_dtype",
]


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float64 stays float64, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _no_autocast(t: torch.Tensor):
    if torch.is_autocast_enabled(t.device.type):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()


def _opt(t, dtype):
    return None if t is None else t.to(dtype)


def layer_norm(x, weight, bias=None, eps: float = 1e-5):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dim.

    mean/var are the biased statistics of the row in opmath. y has x's dtype.
    """
    cd = opmath_dtype(x.dtype)
    with _no_autocast(x):
        y = F.layer_norm(x.to(cd), (x.shape[-1],), weight.to(cd), _opt(bias, cd), eps)
    return y.to(x.dtype)


def add_layer_norm(x, residual, weight, bias=None, eps: float = 1e-5):
    """h = x + residual (stored in residual's dtype); y = layer_norm(h).

    Returns (y, h). y has x's dtype. The normalisation reads h as stored (after
    rounding to residual's dtype), so forward and backward see the same value.
    """
    if x.shape != residual.shape:
        raise ValueError(f"add_layer_norm: x {tuple(x.shape)} and residual {tuple(residual.shape)} differ")
    cd = opmath_dtype(torch.promote_types(x.dtype, residual.dtype))
    with _no_autocast(x):
        h = (x.to(cd) + residual.to(cd)).to(residual.dtype)
        y = F.layer_norm(h.to(cd), (x.shape[-1],), weight.to(cd), _opt(bias, cd), eps)
    return y.to(x.dtype), h


def bias_gelu(x, bias=None, approximate: str = "tanh"):
    """y = gelu(x + bias); approximate "tanh" (GPT-1/GPT-2/HF) or "none" (exact erf)."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"bias_gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
    cd = opmath_dtype(x.dtype)
    with _no_autocast(x):
        u = x.to(cd) if bias is None else x.to(cd) + bias.to(cd)
        y = F.gelu(u, approximate=approximate)
    return y.to(x.dtype)


def causal_attention(q, k, v, scale=None, dropout_p: float = 0.0, generator=None):
    """o = softmax(q k^T * scale + causal_mask) v, per (batch, head).

    q: (B, H, Tq, D); k, v: (B, H, Tk, D) with Tq <= Tk. The causal mask is
    aligned bottom-right (flash-attention's convention): query i sees keys
    j <= i + Tk - Tq, so with Tq == Tk it is the usual lower triangle and with
    Tq < Tk the queries are the last Tq positions (KV-cache decoding).
    scale defaults to 1/sqrt(D). Dropout (on the attention weights) is applied
    with torch's RNG here; o has q's dtype.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("causal_attention: q, k, v must be 4-D (B, H, T, D)")
    Tq, Tk = q.shape[-2], k.shape[-2]
    if Tq > Tk:
        raise ValueError(f"causal_attention: query length {Tq} exceeds key length {Tk}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    cd = opmath_dtype(q.dtype)
    with _no_autocast(q):
        s = torch.matmul(q.to(cd), k.to(cd).transpose(-1, -2)) * scale
        i = torch.arange(Tq, device=q.device).unsqueeze(1)
        j = torch.arange(Tk, device=q.device).unsqueeze(0)
        s = s.masked_fill(j > i + (Tk - Tq), float("-inf"))
        p = torch.softmax(s, dim=-1)
        if dropout_p > 0.0:
            keep = torch.rand(p.shape, device=p.device, generator=generator, dtype=torch.float32) >= dropout_p
            p = p * keep / (1.0 - dropout_p)
        o = torch.matmul(p, v.to(cd))
    return o.to(q.dtype)


def bias_dropout_add(x, bias, residual, dropout_p: float = 0.0, generator=None):
    """out = residual + dropout(x + bias, dropout_p); bias may be None.

    Kept elements are scaled by 1/(1 - p). out has residual's dtype. (The
    extension draws its mask from its own Philox stream; this reference uses
    torch's RNG, so with p > 0 compare statistics or pass the same mask.)
    """
    if x.shape != residual.shape:
        raise ValueError(f"bias_dropout_add: x {tuple(x.shape)} and residual {tuple(residual.shape)} differ")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"bias_dropout_add: dropout_p must be in [0, 1), got {dropout_p}")
    cd = opmath_dtype(torch.promote_types(x.dtype, residual.dtype))
    with _no_autocast(x):
        u = x.to(cd) if bias is None else x.to(cd) + bias.to(cd)
        if dropout_p > 0.0:
            keep = torch.rand(u.shape, device=u.device, generator=generator) >= dropout_p
            u = u * keep / (1.0 - dropout_p)
        out = residual.to(cd) + u
    return out.to(residual.dtype)


def fused_linear_cross_entropy(h, W, targets, ignore_index: int = -100, reduction: str = "mean",
                               label_smoothing: float = 0.0):
    """loss = cross_entropy(h @ W^T, targets), logits in opmath.

    h: (N, C) (or (..., C), flattened), W: (V, C), targets: (N,) int64.
    reduction "mean" divides by the number of non-ignored targets; with none,
    the mean is defined as 0 (not NaN), so an all-padding micro-batch is
    harmless. "sum" sums over non-ignored targets. Label smoothing follows
    torch.nn.functional.cross_entropy. The loss is float32 (float64 for
    float64 inputs).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"fused_linear_cross_entropy: reduction must be 'mean' or 'sum', got {reduction!r}")
    C = h.shape[-1]
    h2 = h.reshape(-1, C)
    t = targets.reshape(-1)
    if t.numel() != h2.shape[0]:
        raise ValueError(f"fused_linear_cross_entropy: {h2.shape[0]} rows of h but {t.numel()} targets")
    cd = opmath_dtype(torch.promote_types(h.dtype, W.dtype))
    with _no_autocast(h):
        logits = h2.to(cd) @ W.to(cd).t()
        loss = F.cross_entropy(logits, t, ignore_index=ignore_index, reduction="sum",
                               label_smoothing=label_smoothing)
        if reduction == "mean":
            n = (t != ignore_index).sum().clamp_min(1)
            loss = loss / n
    return loss
