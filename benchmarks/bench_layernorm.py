"""LayerNorm (and add+LayerNorm) bandwidth: fastgpt vs torch eager, torch.compile, Liger.

Bytes are counted as in shared/anchors/gpu_anchors.py: forward = 2 passes over
the tensor (read x, write y), forward+backward = 5 (adds read x, read dy,
write dx). add+LayerNorm forward = 4 passes (read x, r; write y, h).
fwd+bwd is timed as torch.autograd.grad(f(), inputs, dy), forward included.
"""
import torch
import torch.nn.functional as F

from benchmarks.common import bench_impl, correct, liger, row
from fastgpt import reference

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
    shapes = SHAPES[:1] if args.quick else SHAPES
    lig = _liger_ln()
    for M, N in shapes:
        case = f"{M}x{N} bf16"
        x = torch.randn(M, N, device="cuda", dtype=dt, requires_grad=True)
        w = torch.randn(N, device="cuda", dtype=dt, requires_grad=True)
        b = torch.randn(N, device="cuda", dtype=dt, requires_grad=True)
        dy = torch.randn_like(x)
        # correctness gate on the first 2048 rows: float64 reference vs bf16 reference vs ours
        xs = x[:2048].detach()
        ok, msg = correct("layer_norm", K.layer_norm(xs, w, b), reference.layer_norm(xs.double(), w.double(),
                          b.double()), reference.layer_norm(xs, w, b), dt)
        if not ok:
            rows.append(row("layernorm", case, "fastgpt", ok=False, note=msg))
            continue
        impls = {"fastgpt": lambda: K.layer_norm(x, w, b),
                 "torch eager": lambda: F.layer_norm(x, (N,), w, b, 1e-5),
                 "torch.compile": torch.compile(lambda: F.layer_norm(x, (N,), w, b, 1e-5))}
        if lig is not None:
            impls["liger"] = lambda: lig(x, w, b)
        for impl, f in impls.items():
            bench_impl(rows, "layernorm", f"{case} fwd", impl, f, nbytes=2 * M * N * 2)
            bench_impl(rows, "layernorm", f"{case} fwd+bwd", impl,
                       lambda f=f: torch.autograd.grad(f(), (x, w, b), dy), nbytes=5 * M * N * 2)
        # add + LayerNorm (the residual stream), bf16 throughout
        r = torch.randn_like(x)
        impls = {"fastgpt": lambda: K.add_layer_norm(x, r, w, b)[0],
                 "torch eager": lambda: F.layer_norm(x + r, (N,), w, b, 1e-5),
                 "torch.compile": torch.compile(lambda: F.layer_norm(x + r, (N,), w, b, 1e-5))}
        for impl, f in impls.items():
            bench_impl(rows, "add_layernorm", f"{case} fwd", impl, f, nbytes=4 * M * N * 2)
        del x, w, b, dy, r
    return rows
