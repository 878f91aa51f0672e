"""Shared benchmark helpers: timing, memory, correctness gates, peers, result rows.

Every bench_<family>.py exposes ``run(args) -> list[dict]``; each dict is one
result row made by ``row(...)``. Rows of one case share ``case``; the runner
prints fastgpt's ratio against every other impl of the same case.
Timing: triton.testing.do_bench (CUDA events, median). Correctness is checked
against fastgpt.reference before anything is timed; a failed check is recorded
in the row (ok=False) and the impl is not timed.
"""
from __future__ import annotations

import functools
import gc

import torch

from fastgpt.testing import check


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def time_ms(fn, warmup_ms: int = 25, rep_ms: int = 100, graph: bool = False) -> float:
    """Median milliseconds of fn() by CUDA events.

    graph=False: triton.testing.do_bench (each call launched from Python, so
    host overhead shows when it exceeds the GPU time). graph=True: the calls
    are captured in a CUDA graph and replayed (do_bench_cudagraph), which
    measures GPU time alone; if capture fails, falls back to do_bench.
    """
    return timed(fn, warmup_ms, rep_ms, graph)[0]


def timed(fn, warmup_ms: int = 25, rep_ms: int = 100, graph: bool = False) -> tuple[float, str]:
    """(ms, how): time_ms, and "" or a note saying that graph capture failed and the calls were
    timed eagerly (host overhead included), so such a row is not taken for GPU time."""
    import triton.testing
    how = ""
    if graph:
        try:
            return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")), ""
        except Exception as e:  # not capturable (a host sync, a CPU-side RNG draw): time it eagerly
            torch.cuda.synchronize()
            how = f"eager timing: graph capture failed ({type(e).__name__}: {str(e)[:60]})"
    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")), how


def rotating(fn, arg_sets):
    """A zero-argument callable that calls fn(*arg_sets[i]) for i = 0, 1, 2, ... cyclically.

    Repeated calls on one buffer measure the L2 cache (50 MB on an H100), not
    memory: rotate over enough input sets that consecutive calls touch > 2x L2.
    """
    i = [0]

    def call():
        args = arg_sets[i[0] % len(arg_sets)]
        i[0] += 1
        return fn(*args)
    return call


def n_sets(bytes_per_call: int, l2_bytes: int = 50 << 20) -> int:
    """How many input sets keep consecutive calls from hitting in L2 (at most 8): ``bytes_per_call`` is
    what the lightest timed call reads from its set (a forward's input, not a fwd+bwd's whole
    traffic: sized by that, LayerNorm's 16384 x 768 forward row read the same ~1x L2 of x over
    and over, not 3x)."""
    return max(1, min(8, -(-3 * l2_bytes // max(bytes_per_call, 1))))


def peak_extra_gib(fn) -> float:
    """Peak memory fn() allocates above what was allocated before it, in GiB."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


@functools.lru_cache(maxsize=None)
def copy_gbps() -> float:
    """The card's measured device-to-device copy bandwidth (bytes read + written), GB/s."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a))
    del a, b
    return 2 * n / ms / 1e6


def correct(name, ours, ref_hi, ref_lp, dtype) -> tuple[bool, str]:
    c = check(name, ours, ref_hi, ref_lp, dtype)
    return c.ok, str(c)


def all_correct(checks) -> tuple[bool, str]:
    """(ok, note) of a list of fastgpt.testing checks (compare_op's): the note names the failed ones."""
    bad = [str(c) for c in checks if not c.ok]
    return not bad, "; ".join(bad)[:300]


# the note of the row that stands for a missing Liger peer (a table without it would not say why)
LIGER_MISSING = ("no Liger row: liger_kernel, or the op of it used here, does not import on this machine "
                 "(gpu_check.sh installs wheels carried in .whl/)")


def liger():
    """The liger_kernel package, or None when it is not importable (it is optional)."""
    try:
        import liger_kernel  # noqa: F401
        return liger_kernel
    except Exception:  # ImportError, or a broken install on this machine
        return None


# Every row made, in order: when a family dies part-way (an exception, or the SIGINT of a
# stage's time budget), benchmarks/run.py keeps the rows it had made instead of losing them all.
JOURNAL: list[dict] = []


def row(bench: str, case: str, impl: str, ms: float | None = None, *, gbps: float | None = None,
        tflops: float | None = None, tok_s: float | None = None, mem_gib: float | None = None,
        ok: bool = True, note: str = "", **extra) -> dict:
    r = dict(bench=bench, case=case, impl=impl, ms=ms, gbps=gbps, tflops=tflops, tok_s=tok_s,
             mem_gib=mem_gib, ok=ok, note=note, **extra)
    JOURNAL.append(r)
    return r


def keep_gpu_busy() -> "torch.cuda.Event":
    """Wait for the GPU, then queue ~0.2 s of spin on it: calls issued next never wait for the GPU, so
    their wall time is host time, as long as the spin lasts. Returns an event that completes with the
    spin: if it has completed when the calls are issued, the host may have waited on the GPU."""
    torch.cuda.synchronize()
    torch.cuda._sleep(400_000_000)
    spun = torch.cuda.Event()
    spun.record()
    return spun


def host_ms(fn, calls: int = 20, device: str = "cuda") -> float | None:
    """Host milliseconds per call of fn: the time to issue its work, with the GPU kept busy by a spin
    kernel queued first, so the host never waits for it. When this exceeds a row's time, that row is
    host-bound (the GPU waits for the launches), whatever its kernels cost.

    Where the spin ended before the last call was issued, the host may have waited after all: calls
    that launch many kernels fill the driver's launch queue (about a thousand entries), and the host
    then blocks until the GPU drains it (the H200 run, 2026-11-29: every block row read 10.85 ms a
    call, the 0.2 s spin over 20 calls). Then it measures again with half the calls, and gives None
    when even one call outlasts the spin."""
    import time
    fn()
    while calls >= 1:
        spun = keep_gpu_busy() if device == "cuda" else None
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        dt = (time.perf_counter() - t0) / calls
        if spun is None:
            return dt * 1e3
        waited = spun.query()
        torch.cuda.synchronize()
        if not waited:
            return dt * 1e3
        calls //= 2
    return None


def bench_impl(rows, bench, case, impl, fn, *, nbytes=None, flops=None, tokens=None, memory=False,
               warmup_ms=25, rep_ms=100, graph=False, host=False, **extra):
    """Time fn and append a row with GB/s (nbytes), TFLOP/s (flops) or tok/s (tokens).

    host=True also measures fn's host time per call (host_ms), into the row and its note.
    A peer that raises (not installed, unsupported shape) gets a row with its error, not a crash; an
    error in the memory or host measurement after the timing keeps the time and notes the error.
    """
    def error(e, what=""):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return f"{what}{type(e).__name__}: {str(e)[:120]}"
    try:
        ms, how = timed(fn, warmup_ms, rep_ms, graph=graph)
    except Exception as e:  # keep the run going: one peer failing must not lose the table
        given = extra.pop("note", "")
        err = error(e)
        rows.append(row(bench, case, impl, ok=False, note=f"{given}; {err}" if given else err, **extra))
        return None
    mem = None
    try:
        mem = peak_extra_gib(fn) if memory else None
    except Exception as e:
        how = "; ".join(filter(None, [how, error(e, "memory not measured: ")]))
    if host:
        try:
            h = host_ms(fn)
            if h is None:
                raise RuntimeError("one call outlasts the GPU's 0.2 s spin")
            extra["host_ms"] = h
            how = f"host {h:.3f} ms/call" + (f"; {how}" if how else "")
        except Exception as e:
            how = "; ".join(filter(None, [how, error(e, "host time not measured: ")]))
    if how:
        extra["note"] = f"{extra['note']}; {how}" if extra.get("note") else how
    rows.append(row(bench, case, impl, ms,
                    gbps=nbytes / ms / 1e6 if nbytes else None,
                    tflops=flops / ms / 1e9 if flops else None,
                    tok_s=tokens / ms * 1e3 if tokens else None,
                    mem_gib=mem, **extra))
    return ms
