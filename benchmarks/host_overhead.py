"""Host time of the fused ops, and a check of the lean launch path, on a machine without a GPU.

    python -m benchmarks.host_overhead            # host us per op fwd+bwd, lean launch on vs off
    python -m benchmarks.host_overhead --check    # the lean path passes what triton's path passes
    python -m benchmarks.host_overhead --profile causal_attention   # where one case's host time goes
    python -m benchmarks.host_overhead --cuda     # the same rows on a GPU, real launches

A fused op called from Python spends host time (validation, allocation, autograd, the
Triton launches) that the GPU waits on when the kernels are short: run 2 timed LayerNorm
fwd+bwd launched from Python at 0.400 ms on the H100 machine, ~5x its GPU time.
This measures that time without a GPU: Triton's driver is replaced by compile_report's
sm_90 stand-in, kernels are really compiled (ptxas from the triton wheel), and each
compiled kernel's launcher is replaced by a recorder, so everything up to the driver call
runs for real and only the driver call is missing. Times are thread CPU time, the minimum
over interleaved repeats (the dev machine is shared and noisy); the "empty
autograd.Function" row is PyTorch's own floor for one op with a backward.

--cuda runs the same cases on the GPU with the real driver (run 4 measured the H100 machine's
host at ~2x the dev CPU's, so the stand-in's times are a lower bound there): each repeat first
queues a spin kernel that outlasts the calls, so the GPU never makes the host wait, and the
rows are wall time per call (the driver's own launch cost included). --profile NAME prints
cProfile's top functions over the cases whose name contains NAME (stand-in or --cuda).

--check runs every launcher of benchmarks/compile_report.py twice and, for each launch
that reaches kernels._common.launch, makes it through triton's own path (JITFunction.run)
and through the lean replay, and compares what reaches the C launch entry (the driver call;
triton's path gets there through CudaLauncher.__call__, the replay directly): the compiled
kernel, grid, stream, flags, scratch buffers, metadata and every argument (launch hooks that do
nothing, None or an empty chain, count as equal). Then attention's replay plans
(kernels/attention.py, _Plan): eager calls (layouts, dropout, packed qkv, no_grad, saved-tensor
hooks, unaligned inputs) made with the lean path off and, after warm-up calls, replayed from a
plan, must reach the C entry with the same kernels, grids, scalars, input tensors and fresh
buffers in the same places. Exit status 1 on any difference.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time


def install_stub_launcher(records: list) -> None:
    """Triton compiles for the sm_90 stand-in; each compiled kernel gets triton's own CudaLauncher
    (its Python __call__ runs for real) whose C entry, the driver call, appends its call to records."""
    from triton.backends.nvidia.driver import CudaLauncher
    from triton.compiler.compiler import CompiledKernel

    from benchmarks.compile_report import use_standin
    use_standin()

    def init_handles(kernel):
        if kernel.module is not None:
            return
        kernel.module, kernel.function = "stub", 0
        kernel.n_regs = kernel.n_spills = 0
        launcher = object.__new__(CudaLauncher)   # CudaLauncher.__init__ would build the C module
        md = kernel.metadata
        launcher.num_ctas = getattr(md, "num_ctas", 1)
        launcher.global_scratch_size, launcher.global_scratch_align = md.global_scratch_size, md.global_scratch_align
        launcher.profile_scratch_size, launcher.profile_scratch_align = md.profile_scratch_size, md.profile_scratch_align
        launcher.launch_cooperative_grid, launcher.launch_pdl = md.launch_cooperative_grid, md.launch_pdl
        launcher.launch = lambda *call: records.append((kernel, call))
        kernel._run = launcher

    CompiledKernel._init_handles = init_handles


# the C launch entry's arguments before the kernel's own (triton 3.6's CudaLauncher.launch)
_C_ARGS = ["gridX", "gridY", "gridZ", "stream", "function", "cooperative", "pdl", "global_scratch",
           "profile_scratch", "packed_metadata", "launch_metadata", "enter_hook", "exit_hook"]


def _differing(ref: tuple, got: tuple) -> list:
    """Indices where two C-entry calls differ. Launch hooks that do nothing (None or an empty chain)
    count as equal, and so does the metadata passed only to them."""
    meta, enter, leave = (_C_ARGS.index(n) for n in ("launch_metadata", "enter_hook", "exit_hook"))
    from fastgpt.kernels._common import _idle
    idle = all(_idle(c[i]) for c in (ref, got) for i in (enter, leave))
    skip = {meta, enter, leave} if idle else set()
    return [i for i, (x, y) in enumerate(zip(ref, got)) if i not in skip and not _same(x, y)]


def _same(a, b) -> bool:
    """Equal launcher arguments: the same object, or equal plain values of the same type."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, (int, float, str, bool, tuple)):
        return a == b
    data = getattr(a, "data", None)  # launch metadata (triton's LazyDict): its fixed entries
    return isinstance(data, dict) and data == getattr(b, "data", None)


def _specialisation_cases():
    """Launches that differ only in what triton specialises on, one after the other: a replay
    keyed too coarsely would reuse the previous call's kernel, and the check would see it."""
    import torch

    from fastgpt.kernels import gelu as G
    from fastgpt.kernels import layernorm as LN
    bf = torch.bfloat16
    w = torch.ones(1000, dtype=bf)
    for M, N, offset in ((4, 768, 0), (4, 768, 1), (1, 768, 0), (4, 1000, 0), (16, 1000, 0), (17, 1000, 3)):
        x = torch.randn(M * N + offset, dtype=bf)[offset:].view(M, N)   # offset 1: not 16-byte aligned
        y, _, mean, rstd = LN.layer_norm_fwd(x, None, w[:N], None, 1e-5)
        LN.layer_norm_bwd(torch.randn_like(y), None, x, w[:N], False, mean, rstd, bf, None)
        G.bias_gelu_fwd(x, w[:N], "tanh")


def check() -> int:
    """Compare the lean replay with triton's path on every launch of compile_report's launchers."""
    os.environ["FASTGPT_AUTOTUNE"] = "0"   # one config per kernel: nothing to time on a stand-in
    records: list = []
    install_stub_launcher(records)
    from benchmarks.compile_report import _families
    from fastgpt.kernels import _common, attention, cross_entropy
    lean = _common.launch
    compared, failures, kernels = 0, 0, set()

    def dual(fn, grid, *args, **kwargs):
        nonlocal compared, failures
        _common.LEAN_LAUNCH = False
        del records[:]
        lean(fn, grid, *args, **kwargs)
        ref = records.pop()
        _common.LEAN_LAUNCH = True
        lean(fn, grid, *args, **kwargs)   # a first call of this signature takes triton's path
        lean(fn, grid, *args, **kwargs)   # then the replay
        got = records.pop()
        compared += 1
        kernels.add(fn.fn.__name__)
        bad = _differing(ref[1], got[1])
        if ref[0] is not got[0] or len(ref[1]) != len(got[1]) or bad:
            failures += 1
            names = _C_ARGS + list(fn.arg_names)
            print(f"MISMATCH {fn.fn.__name__}: kernel {'same' if ref[0] is got[0] else 'differs'}, "
                  f"differing: {[names[i] if i < len(names) else i for i in bad]}")

    def dual_replayable(fn, grid, n_lead, *args, **kwargs):   # launch_replayable (its Replays: check_plans)
        dual(fn, grid, *args, **kwargs)

    lean_replayable = _common.launch_replayable
    _common.launch, cross_entropy.launch = dual, dual
    _common.launch_replayable = attention.launch_replayable = dual_replayable
    for fam, call in _families(set()) + [("specialisation", _specialisation_cases)]:
        call()   # fills triton's caches and the single-config autotuners' picks
        call()   # every launch now reaches launch()
    _common.launch, cross_entropy.launch = lean, lean
    _common.launch_replayable = attention.launch_replayable = lean_replayable
    print(f"host_overhead --check: {compared} launches of {len(kernels)} kernels compared "
          f"({', '.join(sorted(kernels))}), {failures} mismatch(es)")
    plan_failures = check_plans(records)
    return 1 if failures or not compared or plan_failures else 0


def _plan_cases():
    """Eager attention calls (fwd+bwd, or forward only), whose later repeats replay a plan unless
    marked: name -> (the call, whether it replays), and the input tensors."""
    import torch

    import fastgpt.kernels as K
    bf = torch.bfloat16
    q, k, v = (torch.randn(1, 2, 40, 64, dtype=bf, requires_grad=True) for _ in range(3))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    do = torch.randn(1, 2, 40, 64, dtype=bf)
    do_t = torch.randn(1, 40, 2, 64, dtype=bf).transpose(1, 2)   # another upstream-gradient layout
    qkv = torch.randn(1, 40, 3, 2, 64, dtype=bf, requires_grad=True)
    do_packed = torch.randn(1, 40, 128, dtype=bf)
    seed = torch.tensor([5, 7])
    flat = torch.randn(3 * 40 * 64 * 2 + 1, dtype=bf)   # q, k, v one element off a 16-byte boundary
    qu, ku, vu = (flat[1 + i * 5120:1 + (i + 1) * 5120].view(1, 2, 40, 64).requires_grad_() for i in range(3))
    grad = torch.autograd.grad
    do32 = do.float()

    def bthd():
        return grad(K.causal_attention(q, k, v, out_layout="bthd"), (q, k, v), do)


    # LayerNorm and bias-GELU: 2-D and 3-D rows, autocast's layout (bf16 x, fp32 residual and weights)
    x, r = (torch.randn(2, 5, 96, dtype=bf, requires_grad=True) for _ in range(2))
    r32 = r.detach().float().requires_grad_()
    w, b = (torch.nn.Parameter(torch.randn(96)) for _ in range(2))   # as a model's
    x2d = x.detach().view(10, 96).requires_grad_()
    dy = torch.randn(2, 5, 96, dtype=bf)
    dy_t = torch.randn(96, 2, 5, dtype=bf).permute(1, 2, 0)    # not viewable as rows: copied, no plan
    flat_x = torch.randn(961, dtype=bf)
    xu = flat_x[1:].view(10, 96).requires_grad_()               # off a 16-byte boundary
    u = torch.randn(2, 5, 384, dtype=bf, requires_grad=True)
    bu = torch.nn.Parameter(torch.randn(384))
    du = torch.randn(2, 5, 384, dtype=bf)

    def gelu_recompute():   # the block's MLP backward (model._GeluLinear)
        from fastgpt import ops
        g, grad_fn = ops.bias_gelu_recompute(u.detach(), bu.detach(), backend="fused")
        return g, grad_fn(du)

    inputs = [q, k, v, q32, k32, v32, do, do_t, do32, qkv, do_packed, seed, flat, x, r, r32, w, b, x2d, dy, dy_t,
              flat_x, u, bu, du]
    cases = {
        "bf16": (lambda: grad(K.causal_attention(q, k, v), (q, k, v), do), True),
        "bf16 p=0.1": (lambda: grad(K.causal_attention(q, k, v, dropout_p=0.1, seed=seed), (q, k, v), do), True),
        "bf16 p=0.1, a seed drawn per call": (lambda: grad(K.causal_attention(q, k, v, dropout_p=0.1), (q, k, v), do),
                                              True),
        "bf16 bthd, transposed dO": (lambda: grad(K.causal_attention(q, k, v, out_layout="bthd"), (q, k, v), do_t),
                                     True),
        "fp32 scale=0.3": (lambda: grad(K.causal_attention(q32, k32, v32, scale=0.3), (q32, k32, v32), do32), True),
        "packed qkv p=0.1": (lambda: grad(K.causal_attention_qkvpacked(qkv, dropout_p=0.1, seed=seed), (qkv,),
                                          do_packed), True),
        "packed qkv p=0.1, atomic dQ": (lambda: _atomic_dq(lambda: grad(K.causal_attention_qkvpacked(
            qkv, dropout_p=0.1, seed=seed), (qkv,), do_packed)), True),
        "fp32 atomic dQ": (lambda: _atomic_dq(lambda: grad(K.causal_attention(q32, k32, v32), (q32, k32, v32), do32)),
                           True),
        "no_grad": (torch.no_grad()(lambda: K.causal_attention(q, k, v)), True),
        # o comes back in another layout: a backward of its own
        "saved-tensor hooks": (lambda: (bthd(), _with_contiguous_saves(bthd)), True),
        "unaligned inputs (the checked path)": (lambda: grad(K.causal_attention(qu, ku, vu), (qu, ku, vu), do), False),
        "layer_norm 3-D": (lambda: grad(K.layer_norm(x, w, b), (x, w, b), dy), True),
        "layer_norm 2-D, no bias": (lambda: grad(K.layer_norm(x2d, w), (x2d, w), dy.view(10, 96)), True),
        "add_layer_norm bf16 + fp32 residual": (lambda: grad(K.add_layer_norm(x, r32, w, b), (x, r32, w, b),
                                                             (dy, dy.float())), True),
        "layer_norm no_grad": (torch.no_grad()(lambda: K.layer_norm(x, w, b)), True),
        "layer_norm, a dy to copy (the checked backward)": (lambda: grad(K.layer_norm(x, w, b), (x, w, b), dy_t),
                                                            False),
        "layer_norm unaligned (the checked path)": (lambda: grad(K.layer_norm(xu, w, b), (xu, w, b),
                                                                 dy.view(10, 96)), False),
        "bias_gelu bf16 + fp32 bias": (lambda: grad(K.bias_gelu(u, bu), (u, bu), du), True),
        "bias_gelu erf, no bias": (lambda: grad(K.bias_gelu(u, None, "none"), (u,), du), True),
        "bias_gelu no_grad": (torch.no_grad()(lambda: K.bias_gelu(u, bu)), True),
        "bias_gelu recompute (the block's MLP)": (gelu_recompute, True),
        "bias_gelu, a dy to copy (the checked backward)": (lambda: grad(K.bias_gelu(u, bu), (u, bu),
                                                                        du.transpose(0, 1).contiguous()
                                                                        .transpose(0, 1)), False),
    }
    return cases, inputs


def _atomic_dq(f):
    """f() with attention's atomic-dQ backward (prologue, dK/dV with dQ, epilogue)."""
    from fastgpt.kernels import attention as A
    with A.dq_mode("atomic"):
        return f()


def _with_contiguous_saves(f):
    """f() with every tensor autograd saves handed back as a contiguous copy (as offloading does)."""
    import torch
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.contiguous(), lambda t: t):
        return f()


def _tensor_roles(calls: list, results, inputs_storage: set) -> list:
    """Each tensor argument of a case's C-entry calls, then each tensor the case returned, as
    (dtype, shape, strides, address mod 16, role): an input's view keeps its address; any other
    tensor is numbered by its first appearance in the case (fresh buffers differ between runs, but
    which launch reads or writes which buffer, and which buffer is returned as what, must not)."""
    import torch
    first: dict = {}
    roles = []
    for call in [c for _, c in calls] + [_flat_tensors(results)]:
        row = []
        for a in call:
            if not isinstance(a, torch.Tensor):
                row.append(None)
                continue
            if a.untyped_storage().data_ptr() in inputs_storage:
                role = ("input", a.data_ptr())
            else:
                role = ("fresh", first.setdefault(a.data_ptr(), len(first)))
            row.append((a.dtype, tuple(a.shape), a.stride(), a.data_ptr() % 16, role))
        roles.append(row)
    return roles


def _flat_tensors(x) -> list:
    import torch
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in (x if isinstance(x, (tuple, list)) else ()) for t in _flat_tensors(item)]


def check_plans(records: list) -> int:
    """The replay plans of kernels/attention.py against triton's path: each case's C-entry calls
    once with the lean launch off and once after three warm-up calls with it on (replayed from a
    plan) must name the same kernels, grids and scalar arguments, the same input tensors (views at
    the same address), and the same fresh buffers in the same places (by dtype, shape, strides,
    alignment and order of first use), and return the same buffers as the same results. Returns
    the number of mismatching cases."""
    import torch

    from fastgpt.kernels import _common, attention, gelu, layernorm
    checked_calls = []
    originals = {(m, name): getattr(m, name) for m, names in ((attention, ("_fwd", "_bwd")),   # what a replay skips
                                                              (layernorm, ("layer_norm_fwd", "layer_norm_bwd")),
                                                              (gelu, ("bias_gelu_fwd", "bias_gelu_bwd")))
                 for name in names}
    for (m, name), f in originals.items():
        def counted(*a, _f=f, **kw):
            checked_calls.append(1)
            return _f(*a, **kw)
        setattr(m, name, counted)
    cases, inputs = _plan_cases()
    storages = {t.untyped_storage().data_ptr() for t in inputs}
    failures = 0
    try:
        for case, (f, replays) in cases.items():
            _common.LEAN_LAUNCH = False
            f()
            del records[:]
            ref_out = f()
            ref = list(records)
            _common.LEAN_LAUNCH = True
            for _ in range(3):
                f()
            del records[:], checked_calls[:]
            got_out = f()
            got = list(records)
            bad = [] if len(ref) == len(got) else ["number of launches"]
            for (kr, cr), (kg, cg) in zip(ref, got):
                if kr is not kg:
                    bad.append("kernel")
                bad += [f"{kr.name} arg {i}" for i in _differing(cr, cg)
                        if not (isinstance(cr[i], torch.Tensor) and isinstance(cg[i], torch.Tensor))]
            names = [k.name for k, _ in ref] + ["returned"]
            for n, (rr, rg) in enumerate(zip(_tensor_roles(ref, ref_out, storages),
                                             _tensor_roles(got, got_out, storages))):
                bad += [f"{names[n]} tensor {i}" for i, (a, b) in enumerate(zip(rr, rg)) if a != b]
            if replays == bool(checked_calls):
                bad.append("the checked launchers ran: no plan replayed" if replays else "a plan replayed")
            failures += bool(bad)
            print(f"plan replay {case}: {len(got)} launches, {'ok' if not bad else 'MISMATCH ' + ', '.join(bad)}")
    finally:
        for (m, name), f in originals.items():
            setattr(m, name, f)
    return failures


def _cases(device="cpu"):
    import torch

    import fastgpt.kernels as K
    bf = torch.bfloat16

    def leaf(*shape, n=1):
        return [torch.randn(*shape, dtype=bf, device=device, requires_grad=True) for _ in range(n)]

    q, k, v = leaf(1, 1, 32, 64, n=3)
    do = torch.randn(1, 1, 32, 64, dtype=bf, device=device)
    qkv, = leaf(1, 32, 3, 1, 64)
    do_packed = torch.randn(1, 32, 64, dtype=bf, device=device)
    x, r = leaf(8, 768, n=2)
    w = torch.ones(768, dtype=bf, device=device, requires_grad=True)
    b = torch.zeros(768, dtype=bf, device=device, requires_grad=True)
    dy = torch.randn(8, 768, dtype=bf, device=device)
    x3, = leaf(8, 3072)
    b3 = torch.zeros(3072, dtype=bf, device=device, requires_grad=True)
    dy3 = torch.randn(8, 3072, dtype=bf, device=device)
    grad = torch.autograd.grad

    class Empty(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b_, c):
            ctx.save_for_backward(a, b_, c)
            return torch.empty_like(a)

        @staticmethod
        def backward(ctx, g):
            return tuple(torch.empty_like(t) for t in ctx.saved_tensors)

    return {
        "empty autograd.Function": lambda: grad(Empty.apply(q, k, v), (q, k, v), do),
        "causal_attention": lambda: grad(K.causal_attention(q, k, v), (q, k, v), do),
        "causal_attention p=0.1": lambda: grad(K.causal_attention(q, k, v, dropout_p=0.1), (q, k, v), do),
        "causal_attention_qkvpacked": lambda: grad(K.causal_attention_qkvpacked(qkv), (qkv,), do_packed),
        "causal_attention atomic dQ": lambda: _atomic_dq(lambda: grad(K.causal_attention(q, k, v), (q, k, v), do)),
        "layer_norm": lambda: grad(K.layer_norm(x, w, b), (x, w, b), dy),
        "add_layer_norm": lambda: grad(K.add_layer_norm(x, r, w, b), (x, r, w, b), (dy, dy)),
        "bias_gelu": lambda: grad(K.bias_gelu(x3, b3), (x3, b3), dy3),
        # generation / evaluation: nothing to record, so no autograd.Function either
        "causal_attention, no_grad": torch.no_grad()(lambda: K.causal_attention(q, k, v)),
        "layer_norm, no_grad": torch.no_grad()(lambda: K.layer_norm(x, w, b)),
        **_block_cases(device),
    }


def _block_cases(device):
    """A GPT-2 (pre-LN) block fwd+bwd, fastgpt's fused block against PyTorch's eager one.

    Narrow (C = 64, 8 tokens) so the CPU matmuls cost little; the peer's LayerNorm, attention and
    GELU do run on the CPU (its row is an upper bound of its host time), fastgpt's kernels are
    stubbed like every launch here."""
    import torch

    from benchmarks.bench_block import TorchBlock
    from fastgpt.config import GPTConfig
    from fastgpt.model import GPTBlock
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=64, vocab_size=256, dropout=0.0, norm="pre")
    x = torch.randn(1, 8, 64, device=device, requires_grad=True)
    dy = torch.randn(1, 8, 64, device=device)

    def fwd_bwd(block):
        block = block.to(device)
        inputs = [x, *block.parameters()]
        return lambda: torch.autograd.grad(block(x), inputs, dy)

    return {"GPTBlock fwd+bwd (fused)": fwd_bwd(GPTBlock(cfg, backend="fused")),
            "TorchBlock fwd+bwd (peer)": fwd_bwd(TorchBlock(cfg))}


def _setup(cuda: bool):
    """(cases, clear, clock): the cases on the GPU (real launches) or on the CPU with launches
    stubbed; clear() drops what the stub recorded; clock() the time source in ns (wall time on the
    GPU, where the driver's own work counts, else this thread's CPU time)."""
    import torch
    os.environ["FASTGPT_AUTOTUNE"] = "0"
    if cuda:
        return _cases("cuda"), lambda: None, time.perf_counter_ns
    records: list = []
    install_stub_launcher(records)
    torch.set_num_threads(1)
    # the stubbed kernels never write their outputs: the block's matmuls then read whatever the
    # allocator hands out, and denormal garbage made them several times slower on the CPU (the fused
    # block's forward measured 274 us instead of 148); flushed to zero, they cost what real values do
    torch.set_flush_denormal(True)
    return _cases(), records.clear, time.thread_time_ns


def _gpu_busy(cuda: bool):
    """On the GPU, queue a spin kernel (~0.2 s) so the calls that follow never wait for it; returns the
    event that completes with it (None on the CPU)."""
    if cuda:
        from benchmarks.common import keep_gpu_busy
        return keep_gpu_busy()
    return None


def timing(repeats: int, number: int, cuda: bool = False) -> None:
    """Host us per fwd+bwd (forward only for the no_grad rows) of each op, lean launch on and off,
    min of interleaved repeats."""
    cases, clear, clock = _setup(cuda)
    from fastgpt.kernels import _common
    best = {(name, lean): float("inf") for name in cases for lean in (True, False)}
    for f in cases.values():   # compile and fill the caches
        f()
        f()
    for rep in range(repeats):
        for name, f in cases.items():
            for lean in (True, False) if rep % 2 else (False, True):   # no order bias
                _common.LEAN_LAUNCH = lean
                spun = _gpu_busy(cuda)
                t0 = clock()
                for _ in range(number):
                    f()
                dt = (clock() - t0) / number / 1e3
                if spun is None or not spun.query():   # else the host may have waited on a full launch queue
                    best[name, lean] = min(best[name, lean], dt)
                clear()
    how = "real launches, wall time" if cuda else "launches stubbed"
    print(f"host time per fwd+bwd, forward only under no_grad ({how}), min of {repeats} x {number}")
    print(f"{'op':<26} {'triton path us':>15} {'lean launch us':>15} {'saved':>6}")
    for name in cases:
        off, on = best[name, False], best[name, True]
        if math.isinf(off) or math.isinf(on):
            print(f"{name:<26} not measured: the GPU's spin ended before the {number} calls were issued "
                  "(a full launch queue makes the host wait): try a smaller --number")
            continue
        print(f"{name:<26} {off:15.1f} {on:15.1f} {1 - on / off:6.0%}")


def profile(name: str, number: int, cuda: bool = False) -> int:
    """cProfile's top functions (own time) over ``number`` calls of each case whose name contains name."""
    import cProfile
    import pstats
    cases, clear, _ = _setup(cuda)
    picked = {n: f for n, f in cases.items() if name in n}
    if not picked:
        print(f"host_overhead: no case matches {name!r}; cases: {', '.join(cases)}", file=sys.stderr)
        return 2
    for case, f in picked.items():
        f()
        f()
        _gpu_busy(cuda)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(number):
            f()
        prof.disable()
        clear()
        print(f"=== {case}: {number} calls ({'real launches' if cuda else 'launches stubbed'}), by own time")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(30)
    return 0


def _positive_int(s: str) -> int:
    n = int(s)
    if n < 1:
        raise ValueError(s)
    return n


_positive_int.__name__ = "whole number >= 1"   # (argparse's error: "invalid whole number >= 1 value: '0'")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.host_overhead", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare the lean launch with triton's path; no timing")
    ap.add_argument("--repeats", type=_positive_int, default=15, help="interleaved repeats (the minimum is kept)")
    ap.add_argument("--number", type=_positive_int, default=100, help="calls per repeat")
    ap.add_argument("--cuda", action="store_true", help="run on the GPU with real launches (wall time)")
    ap.add_argument("--profile", metavar="NAME", help="cProfile the cases whose name contains NAME")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("host_overhead: unset TRITON_INTERPRET (it compiles for the GPU, it does not interpret)",
              file=sys.stderr)
        return 2
    if args.cuda:
        import torch
        if not torch.cuda.is_available():
            print("host_overhead: --cuda needs a CUDA device", file=sys.stderr)
            return 2
    if args.check:
        return check()
    if args.profile:
        return profile(args.profile, args.number, args.cuda)
    timing(args.repeats, args.number, args.cuda)
    return 0


if __name__ == "__main__":
    sys.exit(main())
