"""bias+GELU (tanh) bandwidth: fastgpt vs torch eager and torch.compile.

No Liger row: Liger-Kernel has no plain (bias-)GELU op, only the gated GEGLU / SwiGLU MLPs.

Bytes as in shared/anchors/gpu_anchors.py: forward = 2 passes (read x, write y),
forward+backward = 5 (adds read x, read dy, write dx); the bias is negligible.
Timing: GPU time by CUDA-graph replay over rotated inputs (see bench_layernorm),
plus one launch-bound fastgpt row. Correctness first: forward and backward on the first
2048 rows by the tolerance rule (fastgpt.testing.compare_op); torch.compile is reset per shape.
"""
import torch
import torch.nn.functional as F

from benchmarks.common import all_correct, bench_impl, n_sets, rotating, row
from fastgpt import reference
from fastgpt.testing import compare_op

SHAPES = [(16384, 3072), (16384, 768), (16384, 1600), (65536, 1024)]


def run(args):
    import fastgpt.kernels as K
    rows = []
    dt = torch.bfloat16
    for M, N in (SHAPES[:1] if args.quick else SHAPES):
        case = f"{M}x{N} bf16"
        bias = torch.randn(N, device="cuda", dtype=dt, requires_grad=True)
        sets = [(torch.randn(M, N, device="cuda", dtype=dt, requires_grad=True), torch.randn(M, N, device="cuda", dtype=dt))
                for _ in range(n_sets(M * N * 2))]
        xs = sets[0][0][:2048].detach()
        ok, msg = all_correct(compare_op("bias_gelu", K.bias_gelu, reference.bias_gelu, [xs, bias, "tanh"]))
        if not ok:
            rows.append(row("bias_gelu", case, "fastgpt", ok=False, note=msg))
            continue
        torch._dynamo.reset()
        impls = {"fastgpt": lambda x: K.bias_gelu(x, bias),
                 "torch eager": lambda x: F.gelu(x + bias, approximate="tanh"),
                 "torch.compile": torch.compile(lambda x: F.gelu(x + bias, approximate="tanh"))}
        for impl, f in impls.items():
            bench_impl(rows, "bias_gelu", f"{case} fwd", impl, rotating(lambda x, dy, f=f: f(x), sets),
                       nbytes=2 * M * N * 2, graph=True)
            bench_impl(rows, "bias_gelu", f"{case} fwd+bwd", impl,
                       rotating(lambda x, dy, f=f: torch.autograd.grad(f(x), (x, bias), dy), sets),
                       nbytes=5 * M * N * 2, graph=True)
        f = impls["fastgpt"]
        bench_impl(rows, "bias_gelu", f"{case} fwd+bwd", "fastgpt (launch-bound)",
                   rotating(lambda x, dy: torch.autograd.grad(f(x), (x, bias), dy), sets), nbytes=5 * M * N * 2,
                   host=True)
        del sets, bias
    return rows
