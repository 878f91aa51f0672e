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
import numbers
import operator

import torch
import torch.nn.functional as F

from fastgpt.config import MAX_DROPOUT_P   # bias_dropout_add's largest p (see there)

__all__ = [
    "layer_norm",
    "add_layer_norm",
    "bias_gelu",
    "causal_attention",
    "bias_dropout_add",
    "dropout_keep_mask",
    "attention_keep_mask",
    "attention_dropout_threshold",
    "attention_dropout_scale",
    "seed_pair",
    "check_targets",
    "check_attention_shapes",
    "check_vector_shape",
    "fused_linear_cross_entropy",
    "opmath_dtype",
    "GPTBlock",
]


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float64 stays float64, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_on(device_type: str) -> bool:
    """torch.is_autocast_enabled for a device type that may have no autocast (meta: an error there).

    cpu and cuda always have autocast, so only other device types ask torch.amp.is_autocast_available:
    torch 2.11's dynamo cannot trace that call, and every fullgraph compile of the reference path failed
    on it (the GPU machine's image, 2026-11-29; torch 2.13 constant-folds it)."""
    if device_type not in ("cpu", "cuda") and not torch.amp.is_autocast_available(device_type):
        return False
    return torch.is_autocast_enabled(device_type)


def _no_autocast(t: torch.Tensor):
    if autocast_on(t.device.type):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()


def _opt(t, dtype):
    return None if t is None else t.to(dtype)


# The checks the fused launchers also make (the same error kinds, so code that catches them behaves
# alike on every backend). Dtypes: the kernels take fp16 / bf16 / fp32; the reference also takes
# float64 (it is the oracle), and refuses what is not floating point, as they do (integer inputs came
# back as truncated integers). Device rules are the kernels' own and are not repeated here.

def _uniform(t: torch.Tensor, generator=None) -> torch.Tensor:
    """U[0, 1) in fp32 of t's shape and device, from ``generator`` (torch's default one when None;
    generator=None is then not passed: torch.compile with dynamic shapes cannot trace it)."""
    extra = {} if generator is None else {"generator": generator}
    return torch.rand(t.shape, device=t.device, dtype=torch.float32, **extra)


def check_floats(op: str, **tensors) -> None:
    """Each given tensor is a floating-point torch.Tensor (``bias`` may be None); a TypeError naming it
    otherwise."""
    for name, t in tensors.items():
        if t is None and name == "bias":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported: float16, bfloat16, float32 "
                            "(and float64 on the reference backend)")


def check_eps(op: str, eps) -> float:
    """LayerNorm's eps as a float: a real number (TypeError otherwise), finite and >= 0 (ValueError). Under
    torch.compile it passes as it is (a symbolic float there, which math cannot test; eager calls check it)."""
    if type(eps) is float and 0.0 <= eps < math.inf:   # every LayerNorm call's case: ~40 ns, not ~360
        return eps
    if torch.compiler.is_compiling():
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{op}: eps must be a number, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{op}: eps must be finite and >= 0, got {eps}")
    return float(eps)


def check_vector_shape(op: str, name: str, t, n: int) -> None:
    """t (a weight or bias) has shape (n,)."""
    if tuple(t.shape) != (n,):
        raise ValueError(f"{op}: {name} must have shape ({n},), got {tuple(t.shape)}")


def require_weight(op: str, weight) -> None:
    if weight is None:
        raise TypeError(f"{op}: weight is required (a tensor of the hidden size); got None")


def check_x(op: str, x, features: bool = False) -> None:
    """x has a last dim (the feature dim of a bias or weight), and with ``features`` a non-empty one
    (LayerNorm over no features has no mean)."""
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least one dim")
    if features and x.shape[-1] == 0:
        raise ValueError(f"{op}: x must have a non-empty last (feature) dim, got shape {tuple(x.shape)}")


def _check_vector(op: str, name: str, t, x) -> None:
    """t (if given) is a vector of x's last dim."""
    if t is not None:
        check_vector_shape(op, name, t, x.shape[-1])


def check_targets(op: str, t: torch.Tensor, V: int, ignore_index: int) -> None:
    """Every target is in [0, V) or ignore_index: a ValueError naming the first one that is not (CPU,
    eager); on CUDA and under torch.compile an asynchronous device assert (no host sync, no graph break);
    none on the meta device (no values)."""
    if t.device.type == "meta":
        return
    bad = ((t < 0) | (t >= V)) & (t != ignore_index)
    if t.is_cuda or torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), f"{op}: a target is outside [0, {V}) and is not ignore_index")
    elif bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0, 0])
        raise ValueError(f"{op}: target {int(t.reshape(-1)[i])} at position {i} is outside [0, {V}) "
                         f"and is not ignore_index ({ignore_index})")


def check_cross_entropy(op: str, h, W, targets, ignore_index, reduction: str, label_smoothing: float) -> None:
    """fused_linear_cross_entropy's arguments: h (..., C) and W (V, C) floating point and non-empty in C
    and V, targets an int64 tensor with one element per row of h, ignore_index a whole number."""
    check_floats(op, h=h, W=W)
    if h.dim() < 1:
        raise ValueError(f"{op}: h must be (N, C) or (..., C), got a 0-d tensor")
    if W.dim() != 2 or W.shape[1] != h.shape[-1]:
        raise ValueError(f"{op}: W must be (V, {h.shape[-1]}) for h of shape {tuple(h.shape)}, got {tuple(W.shape)}")
    if W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError(f"{op}: W must be non-empty, got shape {tuple(W.shape)}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{op}: targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise TypeError(f"{op}: targets must be int64 (class indices), got {targets.dtype}")
    n = h.numel() // h.shape[-1]
    if targets.numel() != n:
        raise ValueError(f"{op}: h has {n} rows (shape {tuple(h.shape)}) but targets has "
                         f"{targets.numel()} elements (shape {tuple(targets.shape)})")
    try:
        if isinstance(ignore_index, bool):
            raise TypeError
        operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"{op}: ignore_index must be a whole number, got {ignore_index!r}") from None
    if not -2 ** 63 <= operator.index(ignore_index) < 2 ** 63:   # (compared with int64 targets)
        raise ValueError(f"{op}: ignore_index must fit int64, got {ignore_index}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{op}: reduction must be 'mean' or 'sum', got {reduction!r}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):   # (a raw TypeError)
        raise TypeError(f"{op}: label_smoothing must be a number, got {label_smoothing!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")


def layer_norm(x, weight, bias=None, eps: float = 1e-5):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dim.

    mean/var are the biased statistics of the row in opmath. y has x's dtype.
    """
    require_weight("layer_norm", weight)
    check_floats("layer_norm", x=x, weight=weight, bias=bias)
    eps = check_eps("layer_norm", eps)
    check_x("layer_norm", x, features=True)
    _check_vector("layer_norm", "weight", weight, x)
    _check_vector("layer_norm", "bias", bias, x)
    cd = opmath_dtype(x.dtype)
    with _no_autocast(x):
        y = F.layer_norm(x.to(cd), (x.shape[-1],), weight.to(cd), _opt(bias, cd), eps)
    return y.to(x.dtype)


def add_layer_norm(x, residual, weight, bias=None, eps: float = 1e-5):
    """h = x + residual (stored in residual's dtype); y = layer_norm(h).

    Returns (y, h). y has x's dtype. The normalisation reads h as stored (after
    rounding to residual's dtype), so forward and backward see the same value.
    """
    require_weight("add_layer_norm", weight)
    check_floats("add_layer_norm", x=x, residual=residual, weight=weight, bias=bias)
    eps = check_eps("add_layer_norm", eps)
    check_x("add_layer_norm", x, features=True)
    if x.shape != residual.shape:
        raise ValueError(f"add_layer_norm: x {tuple(x.shape)} and residual {tuple(residual.shape)} differ")
    _check_vector("add_layer_norm", "weight", weight, x)
    _check_vector("add_layer_norm", "bias", bias, x)
    cd = opmath_dtype(torch.promote_types(x.dtype, residual.dtype))
    with _no_autocast(x):
        h = (x.to(cd) + residual.to(cd)).to(residual.dtype)
        y = F.layer_norm(h.to(cd), (x.shape[-1],), weight.to(cd), _opt(bias, cd), eps)
    return y.to(x.dtype), h


def bias_gelu(x, bias=None, approximate: str = "tanh"):
    """y = gelu(x + bias); approximate "tanh" (GPT-1/GPT-2/HF) or "none" (exact erf)."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"bias_gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
    check_floats("bias_gelu", x=x, bias=bias)
    check_x("bias_gelu", x)
    _check_vector("bias_gelu", "bias", bias, x)
    cd = opmath_dtype(x.dtype)
    with _no_autocast(x):
        u = x.to(cd) if bias is None else x.to(cd) + bias.to(cd)
        if approximate == "tanh":
            # F.gelu's 0.5 u (1 + tanh(z)) is exactly 0 once tanh(z) rounds to -1 (u < -6.7 even in
            # float64), while u * sigmoid(2 z), the same function, keeps its tiny value
            z = 0.7978845608028654 * (u + 0.044715 * u * u * u)
            y = u * torch.sigmoid(2.0 * z)
        else:
            y = F.gelu(u, approximate="none")
    return y.to(x.dtype)


def check_attention_shapes(op: str, q, k, v) -> None:
    """q (B, H, Tq, D), k and v (B, H, Tk, D) with Tq <= Tk, else a ValueError naming the problem
    (the fused launchers make the same checks, so both backends refuse alike)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D (B, H, T, D), got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"{op}: k shape {tuple(k.shape)} != v shape {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(f"{op}: q (B, H) = {tuple(q.shape[:2])} but k, v have {tuple(k.shape[:2])}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"{op}: head dims differ: q has {q.shape[3]}, k and v have {k.shape[3]}")
    if q.shape[3] == 0:
        raise ValueError(f"{op}: unsupported head dim 0")
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"{op}: query length {q.shape[2]} exceeds key length {k.shape[2]}")


def causal_attention(q, k, v, scale=None, dropout_p: float = 0.0, generator=None, mask=None, seed=None):
    """o = softmax(q k^T * scale + causal_mask) v, per (batch, head).

    q: (B, H, Tq, D); k, v: (B, H, Tk, D) with Tq <= Tk. The causal mask is
    aligned bottom-right (flash-attention's convention): query i sees keys
    j <= i + Tk - Tq, so with Tq == Tk it is the usual lower triangle and with
    Tq < Tk the queries are the last Tq positions (KV-cache decoding).
    scale defaults to 1/sqrt(D); o has q's dtype. Dropout acts on the attention
    weights, p * keep / (1 - dropout_p): the keep mask is ``mask`` (bool,
    (B, H, Tq, Tk)) when given, the fused kernels' mask for ``seed`` = (seed,
    offset) when that is given (attention_keep_mask, with the kernels' scale
    attention_dropout_scale(p): p quantised to steps of 1/256), else torch's RNG.
    """
    check_floats("causal_attention", q=q, k=k, v=v)
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"causal_attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_attention_shapes("causal_attention", q, k, v)
    Tq, Tk = q.shape[-2], k.shape[-2]
    dropout_p = attention_dropout_p("causal_attention", dropout_p)
    scale = attention_scale("causal_attention", scale, q.shape[-1])
    cd = opmath_dtype(q.dtype)
    with _no_autocast(q):
        s = torch.matmul(q.to(cd), k.to(cd).transpose(-1, -2)) * scale
        i = torch.arange(Tq, device=q.device).unsqueeze(1)
        j = torch.arange(Tk, device=q.device).unsqueeze(0)
        s = s.masked_fill(j > i + (Tk - Tq), float("-inf"))
        p = torch.softmax(s, dim=-1)
        if dropout_p > 0.0:
            scale_kept = 1.0 / (1.0 - dropout_p)
            if mask is None and seed is not None:
                if isinstance(seed, torch.Tensor):
                    check_seed_tensor("causal_attention", seed)
                pair = seed.tolist() if isinstance(seed, torch.Tensor) else seed_values(seed, "causal_attention")
                mask = attention_keep_mask(p.shape, dropout_p, *pair, device=p.device)
                scale_kept = attention_dropout_scale(dropout_p)
            if mask is None:
                keep = _uniform(p, generator) >= dropout_p
            elif mask.dtype != torch.bool or mask.shape != p.shape:
                raise ValueError(f"causal_attention: mask must be bool of shape {tuple(p.shape)}, "
                                 f"got {mask.dtype} {tuple(mask.shape)}")
            else:
                keep = mask
            p = p * keep * scale_kept
        o = torch.matmul(p, v.to(cd))
    return o.to(q.dtype)


def causal_attention_qkvpacked(qkv, scale=None, dropout_p: float = 0.0, seed=None):
    """causal_attention over a packed (B, T, 3, H, D) qkv (q, k, v its slices) -> o as (B, T, H * D)."""
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"causal_attention_qkvpacked: qkv must be a (B, T, 3, H, D) tensor, got {tuple(qkv.shape)}")
    B, T, _, H, D = qkv.shape
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    return causal_attention(q, k, v, scale, dropout_p, seed=seed).transpose(1, 2).reshape(B, T, H * D)


def check_bias_dropout_p(op: str, p) -> None:
    """p is a real number (a numpy scalar too) in [0, MAX_DROPOUT_P]: a ValueError naming it otherwise (both
    backends)."""
    if not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: dropout_p must be a number in [0, 1), got {p!r}")
    if p > MAX_DROPOUT_P:
        raise ValueError(f"{op}: dropout_p {p!r} is above {MAX_DROPOUT_P:.6f}: the extension's mask moves in "
                         "steps of 1/65536, which this close to 1 would keep the wrong fraction")


def dropout_threshold(dropout_p: float) -> int:
    """The extension's quantised drop threshold: keep <=> u16 >= it (p in steps of 1/65536)."""
    if dropout_p <= 0.0:
        return 0
    return int(min(65536.0, max(1.0, math.floor(dropout_p * 65536.0 + 0.5))))


def _philox_mulhilo(m: int, c: torch.Tensor):
    """(hi, lo) 32-bit halves of m * c for uint32 values held in int64 (no overflow)."""
    t = m * (c & 0xFFFF)                   # < 2^48
    u = m * (c >> 16) + (t >> 16)          # < 2^49
    return u >> 16, ((u & 0xFFFF) << 16) | (t & 0xFFFF)


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = 10):
    """Philox4x32-R (Salmon et al. 2011; R = 10 the extension's, 7 the attention kernels') on int64
    tensors of uint32 counters; returns 4 words."""
    k0, k1 = k0 & 0xFFFFFFFF, k1 & 0xFFFFFFFF
    for _ in range(rounds):
        hi0, lo0 = _philox_mulhilo(0xD2511F53, c0)
        hi1, lo1 = _philox_mulhilo(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def dropout_keep_mask(shape, dropout_p: float, seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """The keep mask (bool, True = kept) that the extension's bias_dropout_add draws for (seed, offset).

    The spec of csrc/philox.h: element i of the flattened tensor is in group
    g = i // 8; Philox4x32-10 with key (lo32(seed), hi32(seed)) and counter
    (lo32(g), hi32(g), lo32(offset), hi32(offset)) gives words w0..w3; element
    i reads the 16-bit half i % 2 (low first) of word (i % 8) // 2 as u and is
    kept iff u >= dropout_threshold(p). seed/offset are int64 (or uint64) values.
    """
    numel = math.prod(shape)
    seed, offset = int(seed) % 2**64, int(offset) % 2**64
    thr = dropout_threshold(dropout_p)
    g = torch.arange((numel + 7) // 8, dtype=torch.int64, device=device)
    full = lambda v: torch.full_like(g, v)  # noqa: E731
    w = philox4x32(g & 0xFFFFFFFF, g >> 32, full(offset & 0xFFFFFFFF), full(offset >> 32),
                   seed & 0xFFFFFFFF, seed >> 32)
    words = torch.stack(w, dim=1)                                       # (G, 4)
    u16 = torch.stack([words & 0xFFFF, words >> 16], dim=2).reshape(-1)  # (G * 8,) in element order
    return (u16[:numel] >= thr).reshape(shape)


def check_seed_tensor(op: str, seed: torch.Tensor) -> None:
    """A dropout seed given as a tensor is int64 of shape (2,) = (seed, offset) (metadata only: no sync)."""
    if seed.dtype != torch.int64 or tuple(seed.shape) != (2,):   # (a wrong dtype is a TypeError, as in the
        err = TypeError if seed.dtype != torch.int64 else ValueError   # extension's checks)
        raise err(f"{op}: seed must be an int64 tensor of shape (2,) = (seed, offset), "
                  f"got {seed.dtype} {tuple(seed.shape)}")


def seed_values(values, op: str = "dropout") -> list[int]:
    """The two whole numbers of a (seed, offset) pair: a TypeError for other values, a ValueError for
    another count."""
    try:
        vals = [operator.index(v) for v in values]
    except TypeError:
        raise TypeError(f"{op}: seed must be a pair (seed, offset) of whole numbers or an int64 tensor of "
                        f"shape (2,), got {values!r}") from None
    if len(vals) != 2:
        raise ValueError(f"{op}: seed must be a pair (seed, offset), got {len(vals)} values")
    return vals


def seed_pair(values, device=None, op: str = "dropout") -> torch.Tensor:
    """A (seed, offset) pair of Python ints as the int64 tensor the fused dropout ops take
    (values wrap modulo 2^64 into int64, as the kernels read them back as uint64)."""
    vals = seed_values(values, op)
    return torch.tensor([(v + 2**63) % 2**64 - 2**63 for v in vals], dtype=torch.int64, device=device)


def attention_scale(op: str, scale, head_dim: int) -> float:
    """The softmax scale as a float: 1/sqrt(head_dim) for None; a TypeError for what is not a number (a
    tensor that needs a gradient too: it would be detached without a word)."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if torch.compiler.is_compiling() and isinstance(scale, (float, torch.SymFloat)):
        return scale   # (a symbolic float under dynamic shapes: no hasattr / float() on it there)
    if (isinstance(scale, (str, bytes)) or not hasattr(scale, "__float__")
            or (isinstance(scale, torch.Tensor) and (scale.requires_grad or scale.numel() != 1))):
        raise TypeError(f"{op}: scale must be a number (a constant), got {scale!r}")
    try:
        scale = float(scale)
    except OverflowError:   # (an int past float's range: the check below, not float()'s own error)
        scale = math.inf if scale > 0 else -math.inf
    if not abs(scale) * 1.4426950408889634 < 3.4028234663852886e38:   # scale * log2(e), as the kernels use it
        raise ValueError(f"{op}: scale must be finite and below 2.3e38 in size (fp32, times log2 e), got {scale}")
    return scale


def attention_dropout_p(op: str, p) -> float:
    """causal_attention's dropout_p as a float in [0, 1): anything float() takes (a numpy scalar or 0-d array,
    a Fraction, a one-element tensor that needs no gradient), as attention_scale reads scale. A TypeError
    naming it for anything else (None or a string met a raw comparison error, a tensor that needs a
    gradient was detached without a word), a ValueError out of range."""
    if torch.compiler.is_compiling():   # (a symbolic float under dynamic shapes: no float() on it there)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{op}: dropout_p must be in [0, 1), got {p}")
        return p
    if (isinstance(p, (str, bytes)) or not hasattr(p, "__float__")
            or (isinstance(p, torch.Tensor) and (p.requires_grad or p.numel() != 1))):
        raise TypeError(f"{op}: dropout_p must be a number (a constant), got {p!r}")
    f = float(p)
    if not 0.0 <= f < 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1), got {p}")
    return f


def attention_dropout_threshold(dropout_p: float) -> int:
    """The attention kernels' quantised drop threshold: keep <=> a random byte >= it, so p acts in
    steps of 1/256 (round(256 p), at least 1 and at most 255; 0 for p = 0)."""
    if dropout_p <= 0.0:
        return 0
    return int(min(255.0, max(1.0, math.floor(dropout_p * 256.0 + 0.5))))


def attention_dropout_scale(dropout_p: float) -> float:
    """1 / (1 - the quantised p) = 256 / (256 - threshold): the attention kernels' scale of the kept
    weights, so the expectation of the output is exact for the rate they apply."""
    return 256.0 / (256 - attention_dropout_threshold(dropout_p))


def attention_keep_mask(shape, dropout_p: float, seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """The keep mask (bool, (..., Tq, Tk), True = kept) the Triton attention draws for (seed, offset).

    Groups of 16 elements share one Philox4x32-7 call: query rows {i, i + 8} x keys
    {j + 8 t + e : t < 4, e < 2} with i % 16 < 8, j % 32 < 8, j even (the elements one
    thread holds of a tensor-core accumulator tile, so no call is computed twice).
    For the (b, h) slice n (n = b * H + h), rows padded to 16 and keys to 32, group
        g = (n * ceil(Tq / 16) * 8 + i // 16 * 8 + i % 8) * (ceil(Tk / 32) * 4) + j // 32 * 4 + j % 8 // 2
    has counter (lo32 g, hi32 g, lo32 offset, hi32 offset) and key (lo32 seed, hi32 seed);
    element (i + 8 di, j + 8 t + e), di, e in {0, 1}, t in {0, 1, 2, 3}, reads byte
    2 (t // 2) + e (lowest first) of word 2 di + t % 2, and is kept iff it is
    >= attention_dropout_threshold(p). Kept weights are scaled by attention_dropout_scale(p).
    """
    *lead, tq, tk = shape
    n = math.prod(lead)
    seed, offset = int(seed) % 2**64, int(offset) % 2**64
    thr = attention_dropout_threshold(dropout_p)
    row_groups, col_groups = (tq + 15) // 16 * 8, (tk + 31) // 32 * 4
    g = torch.arange(n * row_groups * col_groups, dtype=torch.int64, device=device)
    full = lambda v: torch.full_like(g, v)  # noqa: E731
    w = philox4x32(g & 0xFFFFFFFF, g >> 32, full(offset & 0xFFFFFFFF), full(offset >> 32),
                   seed & 0xFFFFFFFF, seed >> 32, rounds=7)
    words = torch.stack(w, dim=1).reshape(n, row_groups, col_groups, 4)
    i = torch.arange(tq, device=device)
    j = torch.arange(tk, device=device)
    t = j % 32 // 8
    r = (i // 16 * 8 + i % 8)[:, None]                                   # (Tq, 1)
    c = (j // 32 * 4 + j % 8 // 2)[None, :]                              # (1, Tk)
    word = (2 * (i // 8 % 2))[:, None] + (t % 2)[None, :]                # (Tq, Tk)
    u = words[:, r, c, word]                                             # (n, Tq, Tk)
    u = (u >> (8 * (2 * (t // 2) + j % 2))) & 0xFF
    return (u >= thr).reshape(shape)


def bias_dropout_add(x, bias, residual, dropout_p: float = 0.0, generator=None, mask=None):
    """out = residual + dropout(x + bias, dropout_p); bias may be None.

    Kept elements are multiplied by scale = 1/(1 - p), a scalar in the compute
    dtype (fp32 for fp32 and lower; the extension's arithmetic, as torch's own
    fused dropout does it). out has residual's dtype. The mask
    is drawn with torch's RNG (``generator``) unless ``mask`` (bool, x's shape,
    True = kept) is given; ``dropout_keep_mask(x.shape, p, seed, offset)`` is
    the mask the extension draws for a (seed, offset), so p > 0 compares exactly.
    """
    check_floats("bias_dropout_add", x=x, bias=bias, residual=residual)
    check_x("bias_dropout_add", x)
    if x.shape != residual.shape:
        raise ValueError(f"bias_dropout_add: x {tuple(x.shape)} and residual {tuple(residual.shape)} differ")
    _check_vector("bias_dropout_add", "bias", bias, x)
    check_bias_dropout_p("bias_dropout_add", dropout_p)
    cd = opmath_dtype(torch.promote_types(x.dtype, residual.dtype))
    with _no_autocast(x):
        u = x.to(cd) if bias is None else x.to(cd) + bias.to(cd)
        if dropout_p > 0.0:
            if mask is None:
                keep = _uniform(u, generator) >= dropout_p
            elif mask.shape != u.shape or mask.dtype != torch.bool:
                raise ValueError(f"bias_dropout_add: mask must be bool of shape {tuple(u.shape)}, "
                                 f"got {mask.dtype} {tuple(mask.shape)}")
            else:
                keep = mask.to(u.device)
            u = u * keep * (1.0 / (1.0 - dropout_p))
        out = residual.to(cd) + u
    return out.to(residual.dtype)


def fused_linear_cross_entropy(h, W, targets, ignore_index: int = -100, reduction: str = "mean",
                               label_smoothing: float = 0.0):
    """loss = cross_entropy(h @ W^T, targets): the logits' GEMM in opmath, its result rounded to h's
    dtype when that is fp16/bf16 (what F.linear stores, and the fused kernel's logits tile), softmax
    and loss in opmath. Under torch.autocast, fastgpt.ops casts h and W to the autocast dtype first
    (as nn.Linear runs the head, and as the fused kernel does), so GPT's loss does not depend on
    return_logits.

    h: (N, C) (or (..., C), flattened), W: (V, C), targets: (N,) int64.
    reduction "mean" divides by the number of non-ignored targets; with none,
    the mean is defined as 0 (not NaN), so an all-padding micro-batch is
    harmless. "sum" sums over non-ignored targets. Label smoothing follows
    torch.nn.functional.cross_entropy. The loss is float32 (float64 for
    float64 inputs).
    """
    op = "fused_linear_cross_entropy"
    check_cross_entropy(op, h, W, targets, ignore_index, reduction, label_smoothing)
    h2 = h.reshape(-1, h.shape[-1])
    t = targets.reshape(-1)
    check_targets(op, t, W.shape[0], ignore_index)
    cd = opmath_dtype(torch.promote_types(h.dtype, W.dtype))
    with _no_autocast(h):
        logits = h2.to(cd) @ W.to(cd).t()
        if h.dtype in (torch.float16, torch.bfloat16):  # stored in h's dtype, as F.linear (and the kernel) store them
            logits = logits.to(h.dtype).to(cd)
        loss = F.cross_entropy(logits, t, ignore_index=ignore_index, reduction="sum",
                               label_smoothing=label_smoothing)
        if reduction == "mean":
            n = (t != ignore_index).sum().clamp_min(1)
            loss = loss / n
    return loss


# ----------------------------------------------------------------------------- the reference block
#
# The oracle for fastgpt.GPTBlock: the same parameters (GPT-2 names, nn.Linear
# layout) in plain PyTorch modules, one op at a time (nn.Linear, F.layer_norm,
# causal_attention above, F.gelu, nn.Dropout). Unlike the ops above, the
# modules follow the caller's autocast, exactly as a PyTorch user's model would.

class CausalSelfAttention(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, float(cfg.dropout)
        self.c_attn = torch.nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = torch.nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = torch.nn.Dropout(cfg.dropout)
        # None: causal_attention above; tests and selftest may set a callable (q, k, v, dropout_p) -> o
        # (a ref_lp as users run it, PyTorch's SDPA, or one with the fused kernels' TF32 dots)
        self.attend = None

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.reshape(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        o = causal_attention(q, k, v, dropout_p=p) if self.attend is None else self.attend(q, k, v, p)
        return self.resid_dropout(self.c_proj(o.transpose(1, 2).reshape(B, T, C)))


class MLP(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.c_fc = torch.nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = torch.nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = torch.nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class GPTBlock(torch.nn.Module):
    """One transformer block, the plain way (cfg: a fastgpt.GPTConfig).

    norm="pre"  (GPT-2): x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))
    norm="post" (GPT-1): h = ln_1(x + attn(x)); out = ln_2(h + mlp(h))
    Dropout (cfg.dropout) on the attention weights and on both residual branches.
    """

    def __init__(self, cfg):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.ln_1 = torch.nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = torch.nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        if self.pre:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))
        h = self.ln_1(x + self.attn(x))
        return self.ln_2(h + self.mlp(h))
