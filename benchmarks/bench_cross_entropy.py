"""LM head + cross-entropy, fwd+bwd: fastgpt's fused kernel vs torch on materialised logits vs Liger.

Case: N tokens x C hidden -> V logits (GPT-2: 16384 x 768 -> 50304), bf16.
  fastgpt   fastgpt.kernels.fused_linear_cross_entropy (chunked: no N x V logits)
  torch     F.cross_entropy((h @ W.T).float(), t): bf16 logits, fp32 loss, as nanoGPT under autocast
  liger     LigerFusedLinearCrossEntropyLoss, when liger_kernel is importable
Each impl's fwd+bwd is torch.autograd.grad(loss, (h, W)); the GiB column is the peak memory
allocated beyond the inputs during one such call (the returned grads included).
TFLOP/s counts the three GEMMs (6 N V C). A correctness gate at a reduced N (float64 reference
on the GPU, DESIGN.md's rule for loss, dh and dW) runs before anything is timed.
The full run adds chunk-size variants and the mixed-precision case (bf16 h, fp32 W under autocast).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import LIGER_MISSING, bench_impl, correct, liger, row
from fastgpt import reference

BENCH = "cross_entropy"
DEV = "cuda"  # tests set "cpu" to run the correctness gate under the Triton interpreter


def _torch_loss(h, W, t):
    return F.cross_entropy((h @ W.to(h.dtype).t()).float(), t)


def _impls(chunks=(None,)):
    import fastgpt.kernels as K
    out = {}
    for c in chunks:
        name = "fastgpt" if c is None else f"fastgpt chunk={c}"
        out[name] = (lambda c: lambda h, W, t: K.fused_linear_cross_entropy(h, W, t, chunk_size=c))(c)
    out["torch"] = _torch_loss
    lg = liger()
    if lg is not None:
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
            lce = LigerFusedLinearCrossEntropyLoss()

            def liger_loss(h, W, t):
                out = lce(W, h, t)
                return out[0] if isinstance(out, tuple) else out
            out["liger"] = liger_loss
        except Exception:  # an install without the fused loss
            pass
    return out


def _inputs(N, C, V, dtype, w_dtype):
    h = torch.randn(N, C, device=DEV, dtype=dtype, requires_grad=True)
    W = (torch.randn(V, C, device=DEV) * 0.02).to(w_dtype).requires_grad_()
    t = torch.randint(0, min(V, 50257), (N,), device=DEV)
    t[::97] = -100
    return h, W, t


def _grads(fn, h, W, t, autocast):
    with torch.autocast(DEV, dtype=torch.bfloat16, enabled=autocast):
        loss = fn(h, W, t)
    return (loss.detach(), *torch.autograd.grad(loss, (h, W)))


def _gate(name, fn, C, V, dtype, w_dtype, autocast, N=1024):
    """DESIGN.md's rule at a reduced N: (ok, note)."""
    torch.manual_seed(0)
    h, W, t = _inputs(N, C, V, dtype, w_dtype)
    ours = _grads(fn, h, W, t, autocast)
    lp = _grads(_torch_loss, h, W, t, autocast)
    h64 = h.detach().double().requires_grad_()
    W64 = W.detach().double().requires_grad_()
    hi = _grads(reference.fused_linear_cross_entropy, h64, W64, t, False)
    notes = []
    ok = True
    for what, o, r, l, d in zip(("loss", "dh", "dW"), ours, hi, lp, (dtype, dtype, w_dtype)):
        good, msg = correct(f"{name} {what}", o, r, l, d)
        ok &= good
        if not good:
            notes.append(msg)
    del h64, W64, hi
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return ok, "; ".join(notes)


def _case_name(N, C, V, dtype, autocast):
    return f"N{N} C{C} V{V} {str(dtype)[6:]}" + (" W fp32 autocast" if autocast else "")


def _case(rows, args, N, C, V, dtype, w_dtype, autocast, impls):
    case = _case_name(N, C, V, dtype, autocast)
    rep = 30 if args.quick else 100
    h, W, t = _inputs(N, C, V, dtype, w_dtype)
    for name, fn in impls.items():
        try:
            ok, note = _gate(name, fn, C, V, dtype, w_dtype, autocast)
        except Exception as e:  # one impl failing (a peer's bug, an OOM) must not lose the others
            ok, note = False, f"{type(e).__name__}: {str(e)[:120]}"
            torch.cuda.empty_cache()
        if not ok:
            rows.append(row(BENCH, case, name, ok=False, note=note))
            continue

        def step(fn=fn):
            with torch.autocast(DEV, dtype=torch.bfloat16, enabled=autocast):
                loss = fn(h, W, t)
            return torch.autograd.grad(loss, (h, W))
        bench_impl(rows, BENCH, case, name, step, flops=6 * N * V * C, memory=True, rep_ms=rep)
        torch.cuda.empty_cache()
    del h, W, t
    torch.cuda.empty_cache()


def run(args) -> list[dict]:
    rows: list[dict] = []
    N, C, V = 16384, 768, 50304
    chunks = (None,) if args.quick else (None, 1024, 4096)
    impls = _impls(chunks)
    if "liger" not in impls:
        rows.append(row(BENCH, _case_name(N, C, V, torch.bfloat16, False), "liger", note=LIGER_MISSING))
    _case(rows, args, N, C, V, torch.bfloat16, torch.bfloat16, False, impls)
    if not args.quick:
        # mixed precision as training runs it: bf16 activations, fp32 master weights, autocast
        impls = {k: v for k, v in _impls().items() if k != "liger"}
        _case(rows, args, N, C, V, torch.bfloat16, torch.float32, True, impls)
    return rows
