"""bias + dropout + residual add (the extension op) vs torch eager and torch.compile.

    out = residual + dropout(x + bias, p)        (GPT-1's residual dropout, p = 0.1)

Cases: 16384x768 and 16384x3072, p = 0 and p = 0.1, bf16 x / bias / residual;
without --quick also "amp", the autocast layout (bf16 x, fp32 bias and residual).
Peers: torch eager `residual + F.dropout(x + bias, p)` and torch.compile of
the same function (default mode).
GB/s counts the minimal traffic, the same for every impl: forward = read x,
read residual, write out; forward+backward adds read dout and write dx (the
residual's gradient is dout itself; the bias vector is negligible; no mask
bytes: fastgpt regenerates its mask, the peers also write and read a bool mask).
fwd+bwd is timed as torch.autograd.grad(f(), (x, bias, residual), dout), forward included.
Timing: GPU time by CUDA-graph replay (benchmarks.common.time_ms); the 2026-11-26 run 2
figures in RESULTS.md predate this and were launched from Python (host overhead included).
"""
import torch
import torch.nn.functional as F

from benchmarks.common import bench_impl, correct, n_sets, rotating, row
from fastgpt import extension, ops, reference

SHAPES = [(16384, 768), (16384, 3072)]
BENCH = "dropout_add"


def _eager(x, b, r, p):
    return r + F.dropout(x + b, p, training=True)


def _gate(x, b, r, p, op=None):
    """(ok, note): fastgpt (or ``op``, same signature) against the reference with the same Philox mask, the
    output and the gradients of x, bias and residual, on the first 2048 rows."""
    op = op or extension.bias_dropout_add
    xs, rs, bs = x[:2048].detach(), r[:2048].detach(), b.detach()
    seed = (12345, 678)
    mask = reference.dropout_keep_mask(xs.shape, p, *seed, device=xs.device) if p > 0 else None
    g = torch.randn(xs.shape, dtype=rs.dtype, device=xs.device)

    def run(f, double=False):
        ins = [(t.double() if double else t).clone().requires_grad_() for t in (xs, bs, rs)]
        out = f(*ins)
        out.backward(g.to(out.dtype))
        return [out.detach()] + [t.grad for t in ins]
    ours = run(lambda x, b, r: op(x, b, r, p, seed=seed))
    hi = run(lambda x, b, r: reference.bias_dropout_add(x, b, r, p, mask=mask), double=True)
    lp = run(lambda x, b, r: reference.bias_dropout_add(x, b, r, p, mask=mask))
    for name, o, h, lo, dtype in zip(("out", "dx", "dbias", "dresidual"), ours, hi, lp,
                                     (rs.dtype, xs.dtype, bs.dtype, rs.dtype)):
        ok, note = correct(f"bias_dropout_add {name}", o, h, lo, dtype)
        if not ok:
            return False, note
    return True, ""


def _peer_ok(f, x, b, r, p):
    """A peer's output: exact formula at p = 0 (by the rule), kept fraction near 1 - p otherwise."""
    with torch.no_grad():
        out = f(x, b, r, p)
        if p == 0:
            return correct("peer", out, reference.bias_dropout_add(x.double(), b.double(), r.double()),
                           reference.bias_dropout_add(x, b, r), r.dtype)
        kept = (out != r).float().mean().item()
        return abs(kept - (1 - p)) < 0.01, f"kept fraction {kept:.4f}"


def run(args):
    if extension.unavailable_reason("cuda") is not None:
        return [row(BENCH, "all", "fastgpt", ok=False, note=extension.unavailable_reason("cuda"))]
    rows = []
    bf16, f32 = torch.bfloat16, torch.float32
    layouts = [("bf16", bf16, bf16)] + ([] if args.quick else [("amp", f32, f32)])
    rep = 30 if args.quick else 100
    for M, N in SHAPES:
        for name, rdt, bdt in layouts:
            for p in (0.0, 0.1):
                case = f"{M}x{N} p={p} {name}"
                b = torch.randn(N, device="cuda", dtype=bdt, requires_grad=True)
                # (x, residual) sets rotated through, so consecutive calls do not hit in L2
                sets = [(torch.randn(M, N, device="cuda", dtype=bf16, requires_grad=True),
                         torch.randn(M, N, device="cuda", dtype=rdt, requires_grad=True))
                        for _ in range(n_sets(M * N * (2 + torch.finfo(rdt).bits // 8)))]
                x, r = sets[0]
                dout = torch.randn(M, N, device="cuda", dtype=rdt)
                try:
                    ok, msg = _gate(x, b, r, p)
                except Exception as e:  # skip the case, keep the others
                    ok, msg = False, f"check failed: {type(e).__name__}: {str(e)[:120]}"
                if not ok:
                    rows.append(row(BENCH, case, "fastgpt", ok=False, note=msg))
                    continue
                fwd_bytes = M * N * (x.element_size() + 2 * r.element_size())
                bwd_bytes = M * N * (r.element_size() + x.element_size())
                # the cache lives on _eager's code object, shared by every case: without a reset
                # the 3rd case hits dynamo's recompile limit (8) and "torch.compile" silently runs
                # eager (seen in run 2: 16384x3072 p=0.1 compile == eager); per case it also
                # compiles with static shapes, as a user's single-shape run would
                torch._dynamo.reset()
                compiled = torch.compile(_eager)
                impls = {
                    "fastgpt": lambda x, b, r, p: ops.bias_dropout_add(x, b, r, p, backend="fused"),
                    "torch eager": _eager,
                    "torch.compile": compiled,
                }
                bd = b.detach()
                detached = [(xs.detach(), rs.detach()) for xs, rs in sets]
                for impl, f in impls.items():
                    if impl != "fastgpt":
                        pok, pmsg = _peer_ok(f, x, b, r, p)
                        if not pok:
                            rows.append(row(BENCH, case, impl, ok=False, note=pmsg))
                            continue
                    bench_impl(rows, BENCH, f"{case} fwd", impl,
                               rotating(lambda xs, rs, f=f: f(xs, bd, rs, p), detached),
                               nbytes=fwd_bytes, rep_ms=rep, graph=True)
                    bench_impl(rows, BENCH, f"{case} fwd+bwd", impl,
                               rotating(lambda xs, rs, f=f: torch.autograd.grad(f(xs, b, rs, p), (xs, b, rs), dout),
                                        sets),
                               nbytes=fwd_bytes + bwd_bytes, rep_ms=rep, graph=True)
                del x, b, r, dout, compiled, sets, detached
                torch.cuda.empty_cache()
    return rows
