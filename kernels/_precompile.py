"""Compile an autotune space in worker processes before it is timed (used by _common._Autotuner).

Triton's autotuner meets a new key by compiling each launch config in turn, just before timing it:
about a second of one CPU core per attention kernel for sm_90 (the dev machine), 6-11 configs per
space, so the first call of each attention, LayerNorm and GELU shape spends tens of seconds
compiling, most of a benchmark family's time on a GPU machine. Where cores are idle, precompile()
first hands the configs to worker processes that compile them into Triton's on-disk cache; the
autotuner's own compile of each config then reads it back from there.

A worker is a fresh interpreter (``python -m fastgpt.kernels._precompile``: multiprocessing's spawn
would re-import the user's main script in it) with the GPU hidden and Triton's driver replaced by a
compile-only stand-in that names the parent's GPU target. It rebuilds each launch's arguments from
what Triton specialises on (a tensor's dtype and 16-byte alignment, an int's or float's value); the
parent first checks that the rebuilt arguments specialise exactly as its own. Triton's cache key
covers the kernel's source, that specialisation, the target, the compile options and the
environment, so the workers can only save time: a config they did not compile, or compiled under
another key, the autotuner compiles itself, as it always did.

FASTGPT_COMPILE_WORKERS: how many workers (default: the CPUs this process may use, divided by
LOCAL_WORLD_SIZE under torchrun, less one, at most 8); below 2 turns this off. The workers live until
the process ends (about a third of a GB of memory each).
"""
from __future__ import annotations

import atexit
import importlib
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings

import torch
from triton.backends.compiler import BaseBackend
from triton.runtime.jit import JITFunction

MAX_WORKERS = 8       # ~0.33 GB of memory each (torch and triton imported): 8 take a whole space in one or two rounds
_pool: list = []      # the worker processes, once started
_broken = False       # a worker failed to start or died: off for the rest of this process
STATS = {"spaces": 0, "configs": 0, "failed": 0, "seconds": 0.0}   # the workers' work so far (benchmarks print it)


class StandIn:
    """The few driver calls a compile-only launch makes, answered for ``target``; no GPU is touched."""

    def __init__(self, target):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def is_active(self):
        return True


def workers() -> int:
    """How many worker processes precompile() may use (FASTGPT_COMPILE_WORKERS, else from the CPU count)."""
    value = os.environ.get("FASTGPT_COMPILE_WORKERS", "").strip()
    if value:
        try:
            return max(int(value), 0)
        except ValueError:   # a tuning knob: a typo must not stop a training run
            warnings.warn(f"FASTGPT_COMPILE_WORKERS={value!r} is not a whole number of processes; "
                          "compiling in this process alone", stacklevel=2)
            return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        local = 1
    return min(MAX_WORKERS, cpus // local - 1)


def encode(arg):
    """What a worker needs to rebuild launch argument ``arg`` as Triton specialises it (TypeError otherwise)."""
    if isinstance(arg, torch.Tensor):
        return ("tensor", arg.dtype, arg.data_ptr() % 16 == 0)
    if arg is None or isinstance(arg, (bool, int, float)):
        return ("value", arg)
    raise TypeError(f"precompile: no worker encoding for a {type(arg).__name__} argument")


def decode(enc):
    """encode()'s argument back: a small CPU tensor of that dtype and alignment, or the value itself."""
    if enc[0] == "tensor":
        t = torch.empty(32, dtype=enc[1])   # torch's CPU allocator aligns to 64 bytes
        return t if enc[2] else t[1:]
    return enc[1]


def specialisation(arg):
    """Triton's specialisation of a launch argument: its type and attribute (alignment, divisibility, 1)."""
    from triton._C.libtriton import native_specialize_impl
    return native_specialize_impl(BaseBackend, arg, False, True, True)


def _start(n: int, target) -> None:
    """n workers into _pool, each told the GPU target to compile for."""
    import fastgpt
    from triton import knobs
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "FASTGPT_COMPILE_WORKERS": "0",
           "TRITON_CACHE_DIR": knobs.cache.dir}   # the parent's cache, also when it was set in code
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastgpt.__file__)))   # the parent's fastgpt first
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    for _ in range(n):
        p = subprocess.Popen([sys.executable, "-m", "fastgpt.kernels._precompile"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        _pool.append(p)
        pickle.dump(target, p.stdin)
        p.stdin.flush()


def stop() -> None:
    """End the workers (at exit, or after a failure; the next precompile() starts new ones). A worker keeps
    nothing worth waiting for: Triton writes each cache file whole, under a temporary name first."""
    global _pool
    procs, _pool = _pool, []
    for p in procs:
        p.kill()
        p.wait()
        for f in (p.stdin, p.stdout):
            try:
                f.close()
            except OSError:   # a write that a dead worker never read (BrokenPipeError) is dropped
                pass


atexit.register(stop)


def precompile(fn: JITFunction, configs, args, kwargs) -> int:
    """Compile ``fn`` at each triton.Config of ``configs`` for the launch ``fn[grid](*args, **kwargs)`` in the
    worker processes; returns how many compiled (0 when this is off, has too few configs, or cannot
    rebuild the arguments). It never raises for a worker's failure: the autotuner then compiles as before."""
    global _broken
    from fastgpt.kernels import INTERPRET
    n = workers()
    if INTERPRET or n < 2 or len(configs) < 2 or _broken or not sys.executable:
        return 0
    try:
        enc = [encode(a) for a in args]
        if any(specialisation(a) != specialisation(decode(e)) for a, e in zip(args, enc)):
            return 0
        jobs = [(fn.fn.__module__, fn.fn.__name__, enc, {**kwargs, **cfg.all_kwargs()}) for cfg in configs]
        pickle.dumps(jobs)
    except (TypeError, AttributeError, pickle.PicklingError):
        return 0
    start = time.perf_counter()
    try:
        if not _pool:
            from triton.runtime.driver import driver
            _start(n, driver.active.get_current_target())
        busy = []
        for i, p in enumerate(_pool):   # job j to worker j mod n; all sent before any reply is read
            if jobs[i::len(_pool)]:
                pickle.dump(jobs[i::len(_pool)], p.stdin)
                p.stdin.flush()
                busy.append(p)
        done = sum(error is None for p in busy for error in pickle.load(p.stdout))
    except (OSError, EOFError, pickle.UnpicklingError):   # a worker died or never started: off from here on
        stop()
        _broken = True
        return 0
    STATS["spaces"] += 1
    STATS["configs"] += done
    STATS["failed"] += len(jobs) - done   # (the autotuner compiles those itself, and reports their errors)
    STATS["seconds"] += time.perf_counter() - start
    return done


def _compile(module: str, name: str, enc: list, kwargs: dict):
    """One job in a worker: None once compiled (or found in the cache), else the error in one line."""
    try:
        fn = getattr(importlib.import_module(module), name)
        while not isinstance(fn, JITFunction):   # an autotuner / heuristics wrapper holds the JITFunction
            fn = fn.fn
        fn.run(*[decode(e) for e in enc], grid=(1,), warmup=True, **kwargs)
        return None
    except Exception as e:  # reported, never raised: the parent compiles this config itself
        return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300]


def _serve() -> None:
    """A worker's loop: the target, then lists of jobs, each answered with a list of results."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr   # a stray print must not corrupt the replies
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a Ctrl-C is the parent's (train saves and goes on)
    from triton.runtime.driver import driver
    driver.set_active(StandIn(pickle.load(inp)))
    while True:
        try:
            jobs = pickle.load(inp)
        except EOFError:
            return
        pickle.dump([_compile(*job) for job in jobs], out)
        out.flush()


if __name__ == "__main__":
    _serve()
