"""Run the fastgpt benchmarks against the peers, in one run, and print a ratio table last.

    python -m benchmarks                       # everything
    python -m benchmarks --only layernorm,gelu # some families
    python -m benchmarks --json out.json       # also write every row as JSON

Each family lives in benchmarks/bench_<name>.py and exposes run(args) -> rows.
Needs a CUDA GPU (kernels are timed with CUDA events).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

import torch

if __package__ in (None, ""):   # run as a script (python benchmarks/run.py): the families import "benchmarks.*"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.summary import eager_mark  # noqa: E402  (after the path fix above)

FAMILIES = ["layernorm", "gelu", "dropout_add", "attention", "cross_entropy", "block", "train"]


def _fmt(v, spec):
    """v in spec, or a "-" as wide as spec's field (the columns stay aligned)."""
    return format("-", f">{spec.split('.')[0]}") if v is None else format(v, spec)


def print_rows(rows, copy_gbps=None):
    """One line per row; with the card's copy bandwidth, GB/s rows also show their share of it."""
    print(f"{'bench':<13} {'case':<34} {'impl':<22} {'ms':>9} {'GB/s':>8} {'%copy':>5} {'TFLOP/s':>8} "
          f"{'tok/s':>9} {'GiB':>6}  note")
    for r in rows:
        share = 100 * r["gbps"] / copy_gbps if copy_gbps and r["gbps"] else None
        print(f"{r['bench']:<13} {r['case'][:34]:<34} {r['impl'][:22]:<22} {_fmt(r['ms'], '9.3f')} "
              f"{_fmt(r['gbps'], '8.0f')} {_fmt(share, '5.0f')} {_fmt(r['tflops'], '8.1f')} "
              f"{_fmt(r['tok_s'], '9.0f')} {_fmt(r['mem_gib'], '6.2f')}  {'' if r['ok'] else 'FAILED '}{r['note']}")


def ratio_table(rows):
    """fastgpt's speed-up over each other impl of the same case (time ratio, >1 = fastgpt faster).

    The "graph" rows (GPU time alone, a diagnostic of host overhead) are left out: the peers are
    timed as users call them; so are the "launch-bound" ones (host time included), whose peers of the
    same case are timed as CUDA graphs. A pair where one row fell back to eager timing (its graph
    capture failed: host time counted) and the other did not is marked in the peer's label."""
    out = []
    cases = {}
    for r in rows:
        cases.setdefault((r["bench"], r["case"]), []).append(r)
    for (bench, case), rs in cases.items():
        ours = [r for r in rs if r["impl"].startswith("fastgpt") and "graph" not in r["impl"]
                and "launch-bound" not in r["impl"] and r["ms"]]
        for o in ours:
            for p in rs:
                if p is o or p["impl"].startswith("fastgpt") or not p["ms"]:
                    continue
                out.append((bench, case, o["impl"], p["impl"] + eager_mark(o, p), p["ms"] / o["ms"]))
    return out


def _write_json(path, env, rows):
    """Write via a temporary file, so a kill mid-write never leaves a truncated JSON behind."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(dict(env=env, rows=rows), f, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help=f"comma-separated families (default: all of {','.join(FAMILIES)})")
    ap.add_argument("--json", default=None, help="write all rows (and the environment) to this JSON file")
    ap.add_argument("--quick", action="store_true", help="fewer shapes / shorter timing (smoke runs)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or FAMILIES
    if args.only and not args.only.strip(", "):   # ("--only ," ran every family)
        print(f"benchmarks: --only is empty; choose from {FAMILIES}", file=sys.stderr)
        sys.exit(2)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:  # before the GPU check: a typo says so on any machine
        print(f"benchmarks: unknown family {unknown}; choose from {FAMILIES}", file=sys.stderr)
        sys.exit(2)
    if args.json:  # checked now, not after minutes of GPU work
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            print(f"benchmarks: --json {args.json}: {folder} is not a writable folder", file=sys.stderr)
            sys.exit(2)
        if os.path.isdir(args.json):
            print(f"benchmarks: --json {args.json} is a folder; give a file name", file=sys.stderr)
            sys.exit(2)
    if not torch.cuda.is_available():
        print("benchmarks: a CUDA GPU is required (kernels are timed with CUDA events)", file=sys.stderr)
        sys.exit(2)
    import triton
    from benchmarks import common
    from benchmarks.common import copy_gbps, gpu_name
    env = dict(card=gpu_name(), torch=torch.__version__, triton=triton.__version__,
               python=platform.python_version(), date=time.strftime("%Y-%m-%d"), copy_gbps=copy_gbps())
    print(f"# {env['card']}  torch {env['torch']}  triton {env['triton']}  copy {env['copy_gbps']:.0f} GB/s")
    from fastgpt.kernels import _precompile
    env["compile_workers"] = _precompile.workers()
    rows, failed, interrupted = [], [], False
    for n in names:
        t0 = time.time()
        start = len(common.JOURNAL)
        before = dict(_precompile.STATS)
        try:
            mod = importlib.import_module(f"benchmarks.bench_{n}")
            new = mod.run(args)
        except (Exception, KeyboardInterrupt) as e:
            # keep the rows made before it died (a crash, or the SIGINT of gpu_check's time budget)
            # and say what stopped the family, instead of losing every row of it
            import traceback
            traceback.print_exc()
            new = list(common.JOURNAL[start:])
            why = "interrupted (SIGINT: gpu_check's time budget?)" if isinstance(e, KeyboardInterrupt) \
                else f"{type(e).__name__}: {str(e)[:150]}"
            new.append(common.row(n, "(family stopped)", "fastgpt", ok=False, note=why))
            failed.append(n)
            interrupted = isinstance(e, KeyboardInterrupt)
        rows += new
        w = {k: _precompile.STATS[k] - before[k] for k in before}
        failed_note = f", {w['failed']} failed" if w["failed"] else ""
        workers_note = (f" (compile workers: {w['configs']} configs of {w['spaces']} autotune spaces in "
                        f"{w['seconds']:.1f} s{failed_note})") if w["spaces"] else ""
        print(f"# {n}: {len(new)} rows in {time.time() - t0:.1f} s{workers_note}")
        if args.json:
            _write_json(args.json, env, rows)
        if interrupted:
            break
    print_rows(rows, env["copy_gbps"])
    print("\n# fastgpt speed-up (peer time / fastgpt time; >1 means fastgpt is faster)")
    for bench, case, ours, peer, r in ratio_table(rows):
        print(f"{bench:<13} {case[:34]:<34} {ours:<18} vs {peer:<22} {r:6.2f}x")
    if failed:
        print(f"benchmarks: {', '.join(failed)} stopped part-way (see the '(family stopped)' rows)",
              file=sys.stderr)
        sys.exit(130 if interrupted else 1)
    wrong = [f"{r['bench']} {r['case']} ({r['impl']})" for r in rows if r["impl"].startswith("fastgpt") and not r["ok"]]
    if wrong:   # a fastgpt result that failed its check against the reference, or raised: not a pass
        print(f"benchmarks: fastgpt failed its correctness check, or raised while timed, in {len(wrong)} row(s): "
              f"{'; '.join(wrong[:5])}", file=sys.stderr)
        sys.exit(1)
    return rows


if __name__ == "__main__":
    main()
