"""LayerNorm (and add+LayerNorm) bandwidth: fastgpt vs torch eager, torch.compile, Liger.

Bytes are counted as in shared/anchors/gpu_anchors.py: forward = 2 passes over
the tensor (read x, write y), forward+backward = 5 (adds read x, read dy,
write dx). add+LayerNorm forward = 4 passes (read x, r; write y, h).
fwd+bwd is timed as torch.autograd.grad(f(), inputs, dy), forward included.
Timing: GPU time by CUDA-graph replay, inputs rotated so L2 does not serve
them; one more row, "fastgpt (launch-bound)", times fastgpt's eager calls
from Python (host overhead included), as a user's loop without graphs sees them.
Correctness first: layer_norm and add_layer_norm, forward and backward, on the
first 2048 rows by DESIGN.md's rule (fastgpt.testing.compare_op); a failure skips the shape.
torch.compile's caches are reset per shape, so each shape compiles as a user's
single-shape run would (static shapes, no recompile limit).
"""
import torch
import torch.nn.functional as F

from benchmarks.common import LIGER_MISSING, all_correct, bench_impl, liger, n_sets, rotating, row
from fastgpt import reference
from fastgpt.testing import compare_op

SHAPES = [(16384, 768), (16384, 1600), (16384, 3072), (65536, 1024)]


def _liger_ln():
    if liger() is None:
        return None
    try:
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction
        return lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, 1e-5)
    except Exception:
        return None


def run(args):
    import fastgpt.kernels as K
    rows = []
    dt = torch.bfloat16
    lig = _liger_ln()
    for M, N in (SHAPES[:1] if args.quick else SHAPES):
        case = f"{M}x{N} bf16"
        w = torch.randn(N, device="cuda", dtype=dt, requires_grad=True)
        b = torch.randn(N, device="cuda", dtype=dt, requires_grad=True)
        sets = [(torch.randn(M, N, device="cuda", dtype=dt, requires_grad=True), torch.randn(M, N, device="cuda", dtype=dt),
                 torch.randn(M, N, device="cuda", dtype=dt)) for _ in range(n_sets(M * N * 2))]
        # correctness gate on the first 2048 rows, fwd and bwd: float64 reference vs bf16 reference vs ours
        xs, rs = sets[0][0][:2048].detach(), sets[0][1][:2048]
        checks = compare_op("layer_norm", K.layer_norm, reference.layer_norm, [xs, w, b]) + \
            compare_op("add_layer_norm", K.add_layer_norm, reference.add_layer_norm, [xs, rs, w, b])
        ok, msg = all_correct(checks)
        if not ok:
            rows.append(row("layernorm", case, "fastgpt", ok=False, note=msg))
            continue
        torch._dynamo.reset()
        impls = {"fastgpt": lambda x: K.layer_norm(x, w, b),
                 "torch eager": lambda x: F.layer_norm(x, (N,), w, b, 1e-5),
                 "torch.compile": torch.compile(lambda x: F.layer_norm(x, (N,), w, b, 1e-5))}
        if lig is not None:
            impls["liger"] = lambda x: lig(x, w, b)
        else:
            rows.append(row("layernorm", case, "liger", note=LIGER_MISSING))
        for impl, f in impls.items():
            fwd = rotating(lambda x, r, dy, f=f: f(x), sets)
            fb = rotating(lambda x, r, dy, f=f: torch.autograd.grad(f(x), (x, w, b), dy), sets)
            bench_impl(rows, "layernorm", f"{case} fwd", impl, fwd, nbytes=2 * M * N * 2, graph=True)
            bench_impl(rows, "layernorm", f"{case} fwd+bwd", impl, fb, nbytes=5 * M * N * 2, graph=True)
        f = impls["fastgpt"]
        bench_impl(rows, "layernorm", f"{case} fwd+bwd", "fastgpt (launch-bound)",
                   rotating(lambda x, r, dy: torch.autograd.grad(f(x), (x, w, b), dy), sets), nbytes=5 * M * N * 2,
                   host=True)
        # add + LayerNorm (the residual stream), bf16 throughout
        impls = {"fastgpt": lambda x, r: K.add_layer_norm(x, r, w, b)[0],
                 "torch eager": lambda x, r: F.layer_norm(x + r, (N,), w, b, 1e-5),
                 "torch.compile": torch.compile(lambda x, r: F.layer_norm(x + r, (N,), w, b, 1e-5))}
        for impl, f in impls.items():
            bench_impl(rows, "add_layernorm", f"{case} fwd", impl, rotating(lambda x, r, dy, f=f: f(x, r), sets),
                       nbytes=4 * M * N * 2, graph=True)
        del sets, w, b
    return rows
