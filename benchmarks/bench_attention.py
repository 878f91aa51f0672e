"""Causal attention TFLOP/s: fastgpt's Triton flash-attention vs PyTorch SDPA (each backend forced)
and a naive matmul-softmax-matmul.

FLOPs (the usual causal count, half of the full 4*B*H*T*T*D): forward = 2*B*H*T*T*D,
forward+backward = 3.5 x forward. fwd+bwd is timed as torch.autograd.grad(f(), (q, k, v), dO),
forward included. bf16, q/k/v contiguous (B, H, T, D). Each shape also runs with attention
dropout p = 0.1 (fastgpt's in-kernel Philox mask, a fresh seed per call as in training, vs the
SDPA backends that support dropout); the issue's target is p = 0.1 within 15% of p = 0.

Shapes: all three; the first only with --quick; ATTENTION_SHAPES="0,2" picks by index.

Correctness first: fastgpt's output and gradients at the full shape are compared (the tolerance
rule) on the first batch element with the float64 and bf16 references; a failure skips the case.
The full-shape call also runs the autotuner before anything is timed.

The rows "fastgpt atomic dQ" (after every other row) are the same op with the atomic-dQ backward (kernels/attention.py,
BWD_DQ = "atomic": the dK/dV pass adds dQ in fp32, five products instead of the split's seven),
checked and timed the same way; it is opt-in (FASTGPT_ATTENTION_DQ=atomic) until it wins here.

Where the time goes: fastgpt's fwd+bwd is also timed by CUDA-graph replay (no host
overhead: the row "fastgpt graph"), and its note lists each kernel's GPU time (the
torch profiler over a few calls) with the launch config the autotuner picked, so a
gap between the whole op and the kernels' sum, or a poor pick, shows in one run. Every
fwd+bwd row's note also gives its host time per call (common.host_ms: the calls issued
while the GPU is busy): a row whose host time exceeds its time is launch-bound.
"""
import contextlib
import math
import os

import torch
import torch.nn.functional as F

from benchmarks.common import bench_impl, correct, row
from fastgpt import reference

SHAPES = [(16, 12, 1024, 64), (8, 12, 2048, 64), (4, 16, 4096, 128)]


def shapes(quick: bool, pick: str = "") -> list:
    """The shapes to run: ``pick`` (the ATTENTION_SHAPES environment variable) names indexes of
    SHAPES, e.g. "0,2" for the GPT-2 shape and the D = 128 one; else the first with --quick,
    else all."""
    if not pick.strip():
        return SHAPES[:1] if quick else SHAPES
    try:
        idx = [int(i) for i in pick.split(",")]
    except ValueError:
        idx = [-1]
    if any(not 0 <= i < len(SHAPES) for i in idx):
        raise ValueError(f"bench_attention: ATTENTION_SHAPES={pick!r}: give indexes 0-{len(SHAPES) - 1} of "
                         f"{SHAPES}, comma-separated")
    return [SHAPES[i] for i in idx]


def _naive(q, k, v):
    T = q.shape[-2]
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1) @ v


DROPOUT_P = 0.1


def _configs(D=None, T=None, p=0.0, atomic=False):
    """The autotuner's picks: {kernel kind: "(BLOCK_M, BLOCK_N, warps, stages)"} for the case's key
    (head dim D, length T's bucket, dropout on or off; for dK/dV the split backward's key or, with
    ``atomic``, the atomic-dQ one's; no dQ kernel then). D None: the last key tuned, whatever it is."""
    from fastgpt.kernels import attention as A
    want = None if D is None else (D, A._bucket(T), p > 0)
    out = {}
    for kind, tuner in (("fwd", A._attn_fwd), ("dkdv", A._attn_bwd_dkdv), ("dq", A._attn_bwd_dq)):
        if atomic and kind == "dq":
            continue
        names = A.TUNED[kind][2]   # the key's named entries (the tensors' dtypes follow)
        for key, c in getattr(tuner, "_tuned", {}).items():
            named = dict(zip(names, key))
            if want is not None and (named.get("HEAD_DIM"), named.get("T_BUCKET"),
                                     bool(named.get("DROPOUT"))) != want:
                continue
            if "DQ_ATOMIC" in named and bool(named["DQ_ATOMIC"]) != atomic:
                continue
            out[kind] = f"({c.kwargs['BLOCK_M']},{c.kwargs['BLOCK_N']},{c.num_warps},{c.num_stages})"
    return out


def _kernel_times(fn, iters=5, device="cuda"):
    """{kernel name: mean device ms per call of fn} from the torch profiler ("cpu": CPU ops)."""
    from torch.profiler import ProfilerActivity, profile
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    kind = torch.autograd.DeviceType.CUDA if device == "cuda" else torch.autograd.DeviceType.CPU
    fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
        sync()
    times = {}
    for e in prof.key_averages():
        if e.device_type == kind:
            us = e.device_time_total if device == "cuda" else e.self_cpu_time_total
            times[e.key] = times.get(e.key, 0.0) + us / 1e3 / iters
    return times


_SHORT = {"_attn_fwd": "fwd", "_attn_bwd_dkdv": "dkdv", "_attn_bwd_dq_cast": "dq cast", "_attn_bwd_dq": "dq",
          "_attn_bwd_prep": "prep"}


def format_breakdown(times, configs):
    """One line: the attention kernels' ms per call by short name (largest first), the rest
    summed as "other", the total, and the autotuner's configs."""
    parts, other = [], 0.0
    for name, ms in sorted(times.items(), key=lambda kv: -kv[1]):
        tag = next((v for k, v in _SHORT.items() if name.startswith(k)), None)
        if tag:
            parts.append(f"{tag} {ms:.3f}")
        else:
            other += ms
    cfg = " ".join(f"{k}={v}" for k, v in configs.items())
    return f"kernels ms: {', '.join(parts)}, other {other:.3f}, sum {sum(times.values()):.3f}; {cfg}"


def _breakdown(fn, q, p, atomic=False):
    """format_breakdown of fn's kernels, with the configs tuned for q's head dim and length and p."""
    try:
        times = _kernel_times(fn)
    except Exception as e:  # the profiler is a diagnostic: never lose the table for it
        return f"profiler failed: {type(e).__name__}"
    return format_breakdown(times, _configs(q.shape[-1], q.shape[-2], p, atomic))


def _sdpa(backend, dropout_p=0.0):
    """PyTorch SDPA, to be timed under _forced(backend): the backend is forced once around the timing,
    as a user would, not per call (its context manager cost ~11 us of host time a call on the dev CPU)."""
    def f(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    f.backend = backend
    return f


def _forced(f):
    """The context that forces an _sdpa row's backend (nothing for the other rows)."""
    from torch.nn.attention import sdpa_kernel
    backend = getattr(f, "backend", None)
    return contextlib.nullcontext() if backend is None else sdpa_kernel(backend)


def _check(K, q, k, v, do, dropout_p=0.0):
    """(ok, message): fastgpt's o, dq, dk, dv at the full shape, checked on batch element 0
    (with dropout, against the reference run with the kernels' mask for the same seed). A check
    that raises (e.g. the float64 reference out of memory) fails the case, not the family."""
    try:
        return _check_outputs(K, q, k, v, do, dropout_p)
    except Exception as e:
        torch.cuda.empty_cache()
        return False, f"check failed: {type(e).__name__}: {str(e)[:120]}"


def _check_outputs(K, q, k, v, do, dropout_p):
    seed = torch.tensor([20261126, 7], dtype=torch.int64, device=q.device)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    o = K.causal_attention(*leaves, dropout_p=dropout_p, seed=seed)
    grads = torch.autograd.grad(o, leaves, do)
    ours = [o[:1], *(g[:1] for g in grads)]
    refs = []
    for dt in (torch.float64, None):
        ins = [t[:1].detach().to(dt or t.dtype).requires_grad_() for t in (q, k, v)]
        r = reference.causal_attention(*ins, dropout_p=dropout_p, seed=seed.tolist())
        refs.append([r.detach(), *torch.autograd.grad(r, ins, do[:1].to(r.dtype))])
        del ins, r
    msgs = []
    for name, a, hi, lp in zip(("o", "dq", "dk", "dv"), ours, *refs):
        ok, msg = correct(f"attention {name}", a, hi, lp, q.dtype)
        if not ok:
            msgs.append(msg)
    del refs, grads, o
    torch.cuda.empty_cache()
    return not msgs, "; ".join(msgs)


def run(args):
    import fastgpt.kernels as K
    from fastgpt.kernels import attention as A
    from torch.nn.attention import SDPBackend
    rows = []
    dt = torch.bfloat16
    # the "fastgpt" rows are the default (split) backward, whatever FASTGPT_ATTENTION_DQ says
    with A.dq_mode("split"):
        for B, H, T, D in shapes(args.quick, os.environ.get("ATTENTION_SHAPES", "")):
            q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
            do = torch.randn(B, H, T, D, device="cuda", dtype=dt)
            for p in (0.0, DROPOUT_P):
                case = f"B{B} H{H} T{T} D{D} bf16" + (f" p={p}" if p else "")
                ok, msg = _check(K, q, k, v, do, p)
                if not ok:
                    rows.append(row("attention", f"{case} fwd+bwd", "fastgpt", ok=False, note=msg))
                    continue
                impls = {
                    "fastgpt": lambda q, k, v, p=p: K.causal_attention(q, k, v, dropout_p=p),
                    "sdpa flash": _sdpa(SDPBackend.FLASH_ATTENTION, p),
                    "sdpa cudnn": _sdpa(SDPBackend.CUDNN_ATTENTION, p),
                    "sdpa efficient": _sdpa(SDPBackend.EFFICIENT_ATTENTION, p),
                }
                if not p:
                    impls.update({"sdpa math": _sdpa(SDPBackend.MATH), "naive torch": _naive})
                fwd_flops = 2 * B * H * T * T * D
                for impl, f in impls.items():
                    step = lambda f=f: torch.autograd.grad(f(q, k, v), (q, k, v), do)  # noqa: E731
                    with _forced(f):
                        with torch.no_grad():
                            bench_impl(rows, "attention", f"{case} fwd", impl, lambda f=f: f(q, k, v),
                                       flops=fwd_flops)
                        ms = bench_impl(rows, "attention", f"{case} fwd+bwd", impl, step, flops=3.5 * fwd_flops,
                                        memory=True, host=True)
                    if impl == "fastgpt" and ms is not None:
                        _where_the_time_goes(rows, case, impl, step, 3.5 * fwd_flops, q, p)
                    torch.cuda.empty_cache()
            del q, k, v, do
    # last, so a stage budget that runs out loses only these: their autotuning compiles the dK/dV
    # space again (~9 kernels per shape and p)
    for B, H, T, D in shapes(args.quick, os.environ.get("ATTENTION_SHAPES", "")):
        q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
        do = torch.randn(B, H, T, D, device="cuda", dtype=dt)
        for p in (0.0, DROPOUT_P):
            case = f"B{B} H{H} T{T} D{D} bf16" + (f" p={p}" if p else "")
            _atomic_rows(rows, K, case, q, k, v, do, p, 3.5 * 2 * B * H * T * T * D)
        del q, k, v, do
    return rows


def _atomic_rows(rows, K, case, q, k, v, do, p, flops):
    """fwd+bwd with the atomic-dQ backward (BWD_DQ = "atomic": five products instead of seven, dQ
    added in fp32 by the dK/dV pass, one dropout-mask regeneration instead of two): checked like
    the default, then timed the same way."""
    from fastgpt.kernels import attention as A
    impl = "fastgpt atomic dQ"
    with A.dq_mode("atomic"):
        ok, msg = _check(K, q, k, v, do, p)
        if not ok:
            rows.append(row("attention", f"{case} fwd+bwd", impl, ok=False, note=msg))
            return
        step = lambda: torch.autograd.grad(K.causal_attention(q, k, v, dropout_p=p), (q, k, v), do)  # noqa: E731
        if bench_impl(rows, "attention", f"{case} fwd+bwd", impl, step, flops=flops, memory=True,
                      host=True) is not None:
            _where_the_time_goes(rows, case, impl, step, flops, q, p, atomic=True)
    torch.cuda.empty_cache()


def _where_the_time_goes(rows, case, impl, step, flops, q, p, atomic=False):
    """After a fastgpt fwd+bwd row: its per-kernel times and configs in its note, and at p = 0 the
    same step timed by CUDA-graph replay (no host time; the seed draw of p > 0 is capturable too,
    but the row is kept to p = 0)."""
    rows[-1]["note"] = f"{rows[-1]['note']}; {_breakdown(step, q, p, atomic)}"
    if not p:
        bench_impl(rows, "attention", f"{case} fwd+bwd", f"{impl} graph", step, flops=flops, graph=True)
