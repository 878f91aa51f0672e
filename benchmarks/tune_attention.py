"""Sweep launch configs of each attention kernel on the GPU, one kernel at a time.

    python -m benchmarks.tune_attention                     # both target shapes, p = 0 and 0.1
    python -m benchmarks.tune_attention --kinds dkdv,dq --shapes 16,12,1024,64 --p 0
    python -m benchmarks.tune_attention --json tune.json

For each shape, dropout p and kernel kind ("fwd", "dkdv", "dq", and "dkdvq": the dK/dV
kernel of the atomic-dQ backward, BWD_DQ = "atomic", which also adds dQ) every candidate
(BLOCK_M, BLOCK_N, num_warps, num_stages) is launched through the launchers'
``config=`` / ``configs=`` hooks (the other backward kernel keeps its default
config, so two bwd rows differ only by the kernel under test; a "dkdvq" row is the whole
atomic-dQ backward, comparable with the split backward's rows). Each candidate is
checked first against the reference on batch element 0 (the tests' tolerance
rule: README.md, "Tests", and fastgpt/testing.py; the dropout cases with the
kernels' own mask), then timed by CUDA-graph replay. A config that does not
compile (shared memory) or fails the check gets a row saying so. The table,
fastest first per group, is what goes into benchmarks/ATTENTION_NOTES.md; the
winners go into kernels/attention.py's spaces and default_config.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from benchmarks.common import correct, timed
from fastgpt import reference

TARGET_SHAPES = [(16, 12, 1024, 64), (4, 16, 4096, 128)]
# (BLOCK_M, BLOCK_N, num_warps, num_stages). fwd and dq hold BLOCK_M query rows and stream
# BLOCK_N keys; dkdv holds BLOCK_N keys and streams BLOCK_M query rows.
CANDIDATES = {
    "fwd": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2), (128, 32, 4, 4),
            (128, 64, 4, 4), (64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 4), (64, 32, 4, 4)],
    "dkdv": [(32, 128, 4, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 3), (32, 128, 8, 2),
             (64, 128, 8, 2), (32, 128, 4, 4), (64, 128, 4, 3), (16, 128, 4, 3), (64, 64, 4, 4)],
    "dq": [(128, 32, 4, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 8, 2),
           (128, 32, 4, 4), (128, 64, 4, 3), (64, 64, 4, 2), (128, 16, 4, 3), (64, 32, 4, 4)],
    # 64 query rows make the dQ product a wgmma too (16 or 32 rows: mma.sync; compile_report --sass)
    "dkdvq": [(16, 128, 4, 3), (32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 128, 8, 2),
              (64, 128, 8, 2), (64, 64, 4, 2), (32, 64, 4, 3), (64, 128, 4, 3), (16, 64, 4, 2)],
}


def _cfg(c):
    bm, bn, w, s = c
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s}


NAMES = ("o", "dq", "dk", "dv")


def _refs(q, k, v, do, p, seed):
    """{name: (float64 reference, input-dtype reference)} for o, dq, dk, dv on batch element 0."""
    out = []
    for dt in (torch.float64, None):
        ins = [t[:1].detach().to(dt or t.dtype).requires_grad_() for t in (q, k, v)]
        r = reference.causal_attention(*ins, dropout_p=p, seed=seed.tolist())
        out.append([r.detach(), *torch.autograd.grad(r, ins, do[:1].to(r.dtype))])
    return {n: (h, l) for n, h, l in zip(NAMES, *out)}


def sweep(shape, p, kinds, dtype=torch.bfloat16, device="cuda", candidates=CANDIDATES, rows=None):
    """The rows of every candidate config of ``kinds`` at one (shape, p), appended to ``rows`` (a list the
    caller keeps: an interrupted sweep leaves the rows it measured) and returned."""
    from fastgpt.kernels import attention as A
    B, H, T, D = shape
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, do = (torch.randn(B, H, T, D, device=device, generator=gen).to(dtype) for _ in range(4))
    seed = torch.tensor([20261126, 7], dtype=torch.int64, device=device)
    refs = _refs(q, k, v, do, p, seed)
    o, lse = A.attention_fwd(q, k, v, dropout_p=p, seed=seed, config=A.default_config("fwd", D, dtype, p > 0))
    defaults = (A.default_config("dkdv", D, dtype, p > 0), A.default_config("dq", D, dtype, p > 0))
    rows = [] if rows is None else rows
    for kind in kinds:
        with A.dq_mode("atomic" if kind == "dkdvq" else "split"):
            _sweep_kind(kind, candidates[kind], p, q, k, v, do, o, lse, seed, refs, defaults, dtype, device, rows)
    return rows


def _sweep_kind(kind, candidates, p, q, k, v, do, o, lse, seed, refs, defaults, dtype, device, rows):
    """sweep()'s rows of one kernel kind (BWD_DQ already set for it), appended to ``rows``."""
    from fastgpt.kernels import attention as A
    shape = tuple(q.shape)
    for c in candidates:
        if p > 0 and c[1] % 32:   # dropout's keep-mask groups span 32 keys
            continue
        cfg = _cfg(c)
        try:
            if kind == "fwd":
                fn = lambda: A.attention_fwd(q, k, v, dropout_p=p, seed=seed, config=cfg)  # noqa: E731
                outs = {"o": fn()[0]}
            else:
                cfgs = (defaults[0], cfg) if kind == "dq" else (cfg, defaults[1])
                fn = lambda: A.attention_bwd(do, q, k, v, o, lse, dropout_p=p, seed=seed,  # noqa: E731
                                             configs=cfgs)
                dq, dk, dv = fn()
                outs = {"dk": dk, "dv": dv} if kind == "dkdv" else {"dq": dq} if kind == "dq" else \
                    {"dq": dq, "dk": dk, "dv": dv}
            checks = [correct(f"{kind} {c} {n}", t[:1], *refs[n], dtype) for n, t in outs.items()]
            ok = all(c_ok for c_ok, _ in checks)
            msg = "; ".join(m for c_ok, m in checks if not c_ok)
            ms, how = timed(fn, graph=True) if ok and device == "cuda" else (None, "")
            msg = "; ".join(m for m in (msg, how) if m)  # eager timing is not comparable: say so
        except Exception as e:  # out of shared memory, a compile error: record it, go on
            ok, msg, ms = False, f"{type(e).__name__}: {str(e)[:100]}", None
        rows.append({"shape": list(shape), "p": p, "kind": kind, "config": list(c), "ms": ms, "ok": ok,
                     "note": msg})
        if device == "cuda":
            torch.cuda.empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tune_attention", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in TARGET_SHAPES),
                    help="B,H,T,D[;B,H,T,D...] (default: the issue's two target shapes)")
    ap.add_argument("--p", default="0,0.1", help="dropout probabilities, comma-separated")
    ap.add_argument("--kinds", default="fwd,dkdv,dq,dkdvq", help="kernels to sweep: fwd,dkdv,dq,dkdvq")
    ap.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = ap.parse_args(argv)
    try:   # (the arguments first: a typo says so on any machine, before the GPU check)
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";") if s]
        ps = [float(x) for x in args.p.split(",")]
    except ValueError as e:
        print(f"tune_attention: bad --shapes/--p ({e})", file=sys.stderr)
        return 2
    kinds = [k for k in args.kinds.split(",") if k]
    bad_shape = any(len(s) != 4 or min(s) < 1 for s in shapes)
    if not shapes or not kinds or bad_shape or any(k not in CANDIDATES for k in kinds):
        print(f"tune_attention: shapes are B,H,T,D (each >= 1); kinds are {','.join(CANDIDATES)}", file=sys.stderr)
        return 2
    if not all(0 <= p < 1 for p in ps):
        print(f"tune_attention: --p values must be in [0, 1), got {args.p}", file=sys.stderr)
        return 2
    if args.json:   # checked now, not after the first sweep
        folder = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json) or not os.access(folder, os.W_OK):
            print(f"tune_attention: --json {args.json}: not a file that can be written in {folder}", file=sys.stderr)
            return 2
    if not torch.cuda.is_available():
        print("tune_attention: a CUDA GPU is required", file=sys.stderr)
        return 2
    rows, interrupted = [], False

    def write():
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"card": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f)
    try:
        for shape in shapes:
            for p in ps:
                sweep(shape, p, kinds, rows=rows)
                write()
    except KeyboardInterrupt:   # gpu_check's time budget: keep and print what was measured
        interrupted = True
        write()
    print(f"{'shape':<18} {'p':>4} {'kind':<5} {'config (BM, BN, warps, stages)':<32} {'ms':>8}  note")
    key = lambda r: (str(r["shape"]), r["p"], r["kind"], r["ms"] is None, r["ms"] or 0)  # noqa: E731
    for r in sorted(rows, key=key):
        ms = f"{r['ms']:8.3f}" if r["ms"] is not None else "       -"
        print(f"{str(tuple(r['shape'])):<18} {r['p']:>4} {r['kind']:<5} {str(tuple(r['config'])):<32} {ms}  "
              f"{r['note']}")
    if interrupted:
        print(f"tune_attention: interrupted after {len(rows)} configs; the table holds those", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
