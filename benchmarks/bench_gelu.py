"""bias+GELU (tanh) bandwidth: fastgpt vs torch eager and torch.compile (and Liger's GELU when present).

Bytes as in shared/anchors/gpu_anchors.py: forward = 2 passes (read x, write y),
forward+backward = 5 (adds read x, read dy, write dx); the bias is negligible.
"""
import torch
import torch.nn.functional as F

from benchmarks.common import bench_impl, correct, row
from fastgpt import reference

SHAPES = [(16384, 3072), (16384, 768), (16384, 1600), (65536, 1024)]


def run(args):
    import fastgpt.kernels as K
    rows = []
    dt = torch.bfloat16
    for M, N in (SHAPES[:1] if args.quick else SHAPES):
        case = f"{M}x{N} bf16"
        x = torch.randn(M, N, device="cuda", dtype=dt, requires_grad=True)
        bias = torch.randn(N, device="cuda", dtype=dt, requires_grad=True)
        dy = torch.randn_like(x)
        xs = x[:2048].detach()
        ok, msg = correct("bias_gelu", K.bias_gelu(xs, bias), reference.bias_gelu(xs.double(), bias.double()),
                          reference.bias_gelu(xs, bias), dt)
        if not ok:
            rows.append(row("bias_gelu", case, "fastgpt", ok=False, note=msg))
            continue
        impls = {"fastgpt": lambda: K.bias_gelu(x, bias),
                 "torch eager": lambda: F.gelu(x + bias, approximate="tanh"),
                 "torch.compile": torch.compile(lambda: F.gelu(x + bias, approximate="tanh"))}
        for impl, f in impls.items():
            bench_impl(rows, "bias_gelu", f"{case} fwd", impl, f, nbytes=2 * M * N * 2)
            bench_impl(rows, "bias_gelu", f"{case} fwd+bwd", impl,
                       lambda f=f: torch.autograd.grad(f(), (x, bias), dy), nbytes=5 * M * N * 2)
        del x, bias, dy
    return rows
