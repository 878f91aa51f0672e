"""Compile every Triton kernel for an H100 (sm_90) on a machine without a GPU, and report its resources.

    python -m benchmarks.compile_report                 # every kernel, every launch config of its space
    python -m benchmarks.compile_report --only attention --sass
    python -m benchmarks.compile_report --first         # only the first config of each space (CI)
    python -m benchmarks.compile_report --shard 2/8     # every 8th launch from the 3rd (8 processes, one each)

Nothing runs on a GPU: the launchers are called on small CPU tensors with
Triton's driver replaced by a stand-in that names an sm_90 target, and every
kernel launch becomes a compile-only ``warmup`` (ptxas ships in the triton
wheel). So it catches what the CPU interpreter cannot: the interpreter never
type-checks or lowers a kernel, so a kernel can pass every CPU test and still
fail to compile for the GPU. For each compiled kernel it prints registers per
thread, the local-memory stack (spills), dynamic shared memory against the
H100's 227 KiB, and with --sass the count of matrix instructions in the SASS
(HGMMA = Hopper's wgmma; HMMA = the older mma.sync path) and of local-memory
loads/stores (LDL/STL). Exit status 1 if a kernel fails to compile, does not
fit in shared memory, or is an attention kernel that triton gave less shared memory
than kernels/attention.py's smem_floor (the autotuner's pruning would then drop
configs that fit).
With --sass it also counts every SASS instruction ("instr") and the integer
multiply-adds, 3-input logic ops and shared-memory stores/loads (IMAD, LOP3,
STS, LDS): static counts, how ATTENTION_NOTES.md weighs the dropout mask's cost.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

H100_SMEM = 232448          # bytes of shared memory one block may use on an H100 (227 KiB)
SASS_OPS = ("HGMMA", "HMMA", "LDL", "STL", "IMAD", "LOP3", "STS", "LDS")


def use_standin() -> None:
    """Make Triton compile for the sm_90 stand-in, and let the launchers take CPU tensors: the kernels
    are compiled, never run (the launchers' device check and the backend check read this flag)."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    import fastgpt.kernels
    from fastgpt.kernels._precompile import StandIn
    driver.set_active(StandIn(GPUTarget("cuda", 90, 32)))
    fastgpt.kernels.INTERPRET = True


def _bindir():
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _resources(kernel, sass: bool) -> dict:
    """regs / stack from cuobjdump's resource usage; op counts from the SASS."""
    out = {"regs": None, "stack": None, "shared": kernel.metadata.shared}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([os.path.join(_bindir(), "cuobjdump"), "-res-usage", path],
                               capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
        if m:
            out["regs"], out["stack"] = int(m.group(1)), int(m.group(2))
        if sass:
            text = subprocess.run([os.path.join(_bindir(), "cuobjdump"), "-sass", path],
                                  capture_output=True, text=True).stdout
            ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", text)  # opcode per line
            counts = collections.Counter(ops)
            out.update({op: counts.get(op, 0) for op in SASS_OPS}, instr=len(ops))
    return out


_ATTENTION_KINDS = {"_attn_fwd_kernel": "fwd", "_attn_bwd_dkdv_kernel": "dkdv", "_attn_bwd_dq_kernel": "dq"}


def _attention_smem_floor(name: str, consts: dict, stages: int, dtypes: str):
    """fastgpt.kernels.attention.smem_floor of a compiled attention kernel (None for other kernels)."""
    if name not in _ATTENTION_KINDS:
        return None
    from fastgpt.kernels.attention import smem_floor
    elem = 4 if dtypes.split("/")[0] == "f32" else 2   # (q's dtype comes first)
    return smem_floor(_ATTENTION_KINDS[name], consts["BLOCK_M"], consts["BLOCK_N"], stages, consts["BLOCK_D"], elem)


def _why(e: Exception) -> str:
    """One line for a compile error: the innermost cause (triton chains the real error under the
    call sites) and the source position of the first one."""
    inner = e
    while inner.__cause__ is not None:
        inner = inner.__cause__
    where = str(e).strip().splitlines()[0] if str(e).strip() else ""
    lines = [ln.strip() for ln in str(inner).strip().splitlines() if ln.strip() and set(ln.strip()) != {"^"}]
    return f"{type(inner).__name__}: {lines[-1] if lines else ''} ({where})"[:240]


class Recorder:
    """Patches triton so launches compile (warmup) instead of running, and records each kernel."""

    def __init__(self, all_configs: bool, shard: tuple[int, int] = (0, 1)):
        self.all_configs = all_configs
        self.shard, self.launches = shard, 0   # compile only launches i, i + n, i + 2n, ... of (i, n)
        self.rows = []  # (kernel name, tensor dtypes, constexprs, num_warps, num_stages, CompiledKernel | Exception)

    def install(self):
        from triton.runtime import autotuner, jit
        use_standin()
        rec, jit_run = self, jit.JITFunction.run

        def run(fn, *args, grid=None, warmup=False, **kwargs):
            rec.launches += 1
            if (rec.launches - 1) % rec.shard[1] != rec.shard[0]:
                return None
            consts = {p.name: kwargs.get(p.name) for p in fn.params if p.is_constexpr and p.name in kwargs}
            dtypes = "/".join(dict.fromkeys(str(a.dtype).replace("torch.", "").replace("float", "f")
                                             for a in args if hasattr(a, "dtype")))
            try:
                k = jit_run(fn, *args, grid=grid, warmup=True, **kwargs)
            except Exception as e:  # a compile error: recorded, the run goes on
                k = e
            rec.rows.append((fn.fn.__name__, dtypes, consts, kwargs.get("num_warps", 4), kwargs.get("num_stages", 3),
                             k))
            return None if isinstance(k, Exception) else k

        def tuner_run(tuner, *args, **kwargs):
            tuner.nargs = dict(zip(tuner.arg_names, args))
            configs = tuner.prune_configs(kwargs) if len(tuner.configs) > 1 else tuner.configs
            for cfg in configs if rec.all_configs else configs[:1]:
                tuner.fn.run(*args, **kwargs, **cfg.all_kwargs())
            tuner.nargs = None

        jit.JITFunction.run = run
        autotuner.Autotuner.run = tuner_run
        from fastgpt.kernels import _common
        _common._Autotuner.run = tuner_run   # fastgpt's subclass (a lean launch path) overrides run
        _common.LEAN_LAUNCH = False          # every launch through run() above: it only compiles


def _families(only):
    """(family, callable) pairs; each callable calls the launchers on small CPU tensors."""
    import torch
    from fastgpt.kernels import attention as A
    from fastgpt.kernels import cross_entropy as CE
    from fastgpt.kernels import gelu as G
    from fastgpt.kernels import layernorm as LN

    bf16 = torch.bfloat16

    def layernorm():
        # (x dtype, weight dtype, residual dtype or None, bias?) over hidden sizes 768 and 1600
        cases = [(bf16, bf16, bf16, True), (torch.float16, torch.float16, None, False),
                 (torch.float32, torch.float32, torch.float32, True), (bf16, torch.float32, None, True),
                 (bf16, torch.float32, torch.float32, True)]   # autocast: fp32 weights / fp32 residual stream
        for N in (768, 1600):
            for xd, wd, rd, has_b in cases:
                x = torch.randn(256, N, dtype=xd)
                r = torch.randn(256, N, dtype=rd) if rd is not None else None
                w, b = torch.ones(N, dtype=wd), (torch.zeros(N, dtype=wd) if has_b else None)
                y, h, mean, rstd = LN.layer_norm_fwd(x, r, w, b, 1e-5)
                dh = torch.randn_like(h) if h is not None else None
                LN.layer_norm_bwd(torch.randn_like(y), dh, h if h is not None else x, w, has_b, mean, rstd, xd,
                                  rd)

    def gelu():
        for dt in (bf16, torch.float16, torch.float32):
            x, b = torch.randn(256, 3072, dtype=dt), torch.randn(3072, dtype=dt)
            for bias, approximate in ((b, "tanh"), (None, "none")):
                G.bias_gelu_fwd(x, bias, approximate)
                G.bias_gelu_bwd(torch.randn_like(x), x, bias, approximate)

    def attention():
        seed = torch.tensor([1, 2], dtype=torch.int64)
        for D, dt in ((64, bf16), (128, bf16), (64, torch.float32), (80, torch.float16)):
            q, k, v = (torch.randn(1, 2, 256, D, dtype=dt) for _ in range(3))
            for p in (0.0, 0.1) if D in (64, 128) and dt == bf16 else (0.0,):
                o, lse = A.attention_fwd(q, k, v, dropout_p=p, seed=seed)
                for mode in A.BWD_DQ_MODES:   # the split backward, then the atomic-dQ one
                    with A.dq_mode(mode):
                        A.attention_bwd(torch.randn_like(o), q, k, v, o, lse, dropout_p=p, seed=seed)

    def cross_entropy():
        for dt, smoothing, need in ((bf16, 0.0, True), (torch.float32, 0.1, True), (bf16, 0.0, False)):
            h, W = torch.randn(128, 768, dtype=dt), torch.randn(4096, 768, dtype=dt)
            t = torch.randint(0, 4096, (128,))
            CE.flce_fwd(h, W, t, -100, "mean", smoothing, None, need, need)

    fams = {"layernorm": layernorm, "gelu": gelu, "attention": attention, "cross_entropy": cross_entropy}
    return [(n, f) for n, f in fams.items() if not only or n in only]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compile_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="families: layernorm,gelu,attention,cross_entropy (default all)")
    ap.add_argument("--first", action="store_true", help="only the first launch config of each autotune space")
    ap.add_argument("--sass", action="store_true", help="also count HGMMA/HMMA/LDL/STL in the SASS")
    ap.add_argument("--shard", default="0/1", metavar="I/N",
                    help="compile only every N-th launch, from the I-th (0-based): N processes share the work")
    args = ap.parse_args(argv)
    try:
        shard = tuple(int(v) for v in args.shard.split("/"))
        if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
            raise ValueError
    except ValueError:
        print(f"compile_report: --shard must be I/N with 0 <= I < N, got {args.shard!r}", file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_report: unset TRITON_INTERPRET (it compiles for the GPU, it does not interpret)",
              file=sys.stderr)
        return 2
    only = {s for s in args.only.split(",") if s}
    known = {"layernorm", "gelu", "attention", "cross_entropy"}
    if only - known:
        print(f"compile_report: --only: unknown famil{'ies' if len(only - known) > 1 else 'y'} "
              f"{', '.join(sorted(only - known))}; choose from {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    os.environ["FASTGPT_AUTOTUNE"] = "1"   # the full spaces: --first picks the first config itself
    rec = Recorder(all_configs=not args.first, shard=shard)
    rec.install()
    failures = 0
    print(f"{'kernel':<26} {'dtypes':<18} {'constexprs':<58} {'w':>2} {'s':>2} {'regs':>4} {'stack':>5} {'smem KiB':>8}"
          + ("".join(f" {op:>5}" for op in ("instr",) + SASS_OPS) if args.sass else "") + "  verdict")
    for fam, call in _families(only):
        start = len(rec.rows)
        try:
            call()
        except Exception as e:  # a launcher that breaks before any kernel: one line, go on
            print(f"{fam}: launcher failed: {type(e).__name__}: {str(e)[:200]}")
            failures += 1
        seen = set()
        for name, dts, consts, w, s, k in rec.rows[start:]:
            first = [n for n in ("BLOCK_M", "BLOCK_N", "BLOCK_V", "HEAD_DIM") if n in consts]
            c = ",".join(f"{n}={int(consts[n]) if isinstance(consts[n], bool) else consts[n]}"
                         for n in first + [n for n in consts if n not in first and n not in ("BLOCK_D", "EVEN_D")])
            if id(k) in seen:  # the same compiled kernel again (triton's cache): listed once
                continue
            seen.add(id(k))
            if isinstance(k, Exception):
                failures += 1
                print(f"{name:<26} {dts[:18]:<18} {c[:58]:<58} {w:>2} {s:>2}  COMPILE ERROR: {_why(k)}")
                continue
            r = _resources(k, args.sass)
            fits = r["shared"] <= H100_SMEM
            failures += not fits
            floor = _attention_smem_floor(name, consts, s, dts)
            floor_ok = floor is None or floor <= r["shared"]   # (the autotuner prunes by it: a floor above
            failures += not floor_ok                           # what triton allocates would drop configs)
            print(f"{name:<26} {dts[:18]:<18} {c[:58]:<58} {w:>2} {s:>2} {r['regs'] or '-':>4} {r['stack'] or 0:>5} "
                  f"{r['shared'] / 1024:8.1f}"
                  + ("".join(f" {r[op]:>5}" for op in ("instr",) + SASS_OPS) if args.sass else "")
                  + ("  ok" if fits and floor_ok else "  TOO MUCH SHARED MEMORY" if not fits else "")
                  + ("" if floor_ok else f"  BELOW attention.smem_floor ({floor} B)"))
    print(f"compile_report: {len(rec.rows)} launches compiled for sm_90"
          + (f" (shard {shard[0]}/{shard[1]} of {rec.launches})" if shard[1] > 1 else "") + f", {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
