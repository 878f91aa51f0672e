"""Compile an autotune space in worker processes before it is timed (used by _common._Autotuner).

Triton's autotuner meets a new key by compiling each launch config in turn, just before timing it:
about a second of one CPU core per attention kernel for sm_90 (the dev machine), 6-11 configs per
space, so the first call of each attention, LayerNorm and GELU shape spends tens of seconds
compiling, most of a benchmark family's time on a GPU machine. Where cores are idle, precompile()
first hands the configs to worker processes that compile them into Triton's on-disk cache; the
autotuner's own compile of each config then reads it back from there.

A worker is a fresh interpreter (``python -m fastgpt.kernels._precompile``: multiprocessing's spawn
would re-import the user's main script in it) with the GPU hidden and Triton's driver replaced by a
compile-only stand-in that names the parent's GPU target; it answers on a pipe of its own (whatever
it prints goes nowhere). It rebuilds each launch's arguments from what Triton specialises on (a
tensor's dtype and 16-byte alignment, an int's or float's value); the parent first checks that the
rebuilt arguments specialise exactly as its own. Triton's cache key covers the kernel's source, that
specialisation, the target, the compile options and the environment; the workers get the parent's
environment and cache folder (restarted when either changes), and precompile() stays off while the
parent has a Triton setting made in code that its key does not cover or the workers would not see
(_SETTINGS_IN_CODE). So the workers only save time: a config they did not compile, or compiled under
another key, the autotuner compiles itself, as it always did. A worker that does not answer in time,
or fails, turns them off for the rest of the process; a Ctrl-C while they work ends them (the next
new key starts new ones).

FASTGPT_COMPILE_WORKERS: how many workers (default: the CPUs this process may use, less one, at most
8; where the process may use every CPU of the machine, they are first shared out among the local
ranks: LOCAL_WORLD_SIZE (torchrun), OMPI_COMM_WORLD_LOCAL_SIZE, SLURM_NTASKS_PER_NODE); below 2 turns
this off. The workers live until the process ends (about a third of a GB of memory each).
"""
from __future__ import annotations

import atexit
import importlib
import os
import pickle
import selectors
import signal
import subprocess
import sys
import time
import warnings

import torch
from triton.backends.compiler import BaseBackend
from triton.runtime.jit import JITFunction

MAX_WORKERS = 8       # ~0.33 GB of memory each (torch and triton imported): 8 take a whole space in one or two rounds
START_TIMEOUT = 120   # seconds for the workers to import torch and triton and say they are ready
BATCH_TIMEOUT = 900   # seconds for one space (a kernel takes ~1-2 s; a hung ptxas must not hang the parent)
_pool: list = []      # the worker processes, once started (each with .replies, its answer pipe)
_started_with = None  # the (environment, cache folder) the workers were started with
_broken = False       # a worker failed, or did not answer in time: off for the rest of this process
# Triton settings made in code that the workers would not share and that are outside Triton's cache key, or
# inside it but not passed on (their compiles would be wasted): (namespace, name, default)
_SETTINGS_IN_CODE = (("runtime", "add_stages_inspection_hook", None), ("runtime", "jit_cache_hook", None),
                     ("runtime", "debug", False), ("runtime", "override_arch", None),
                     ("compilation", "always_compile", False), ("compilation", "override", False),
                     ("compilation", "instrumentation_mode", ""), ("nvidia", "mock_ptx_version", None),
                     ("cache", "manager_class", None))
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
    machine = os.cpu_count() or 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else machine
    local = 1
    if cpus >= machine:   # every CPU: shared with the other ranks on this machine (a pinned rank's are its own)
        for name in ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
            try:
                local = max(int(os.environ[name]), 1)
                break
            except (KeyError, ValueError):   # (SLURM may say "2(x3)": then the next, or 1)
                continue
    return min(MAX_WORKERS, cpus // local - 1)


def _settings_in_code() -> list:
    """The _SETTINGS_IN_CODE the parent has changed from their defaults (names)."""
    from triton import knobs
    return [f"{ns}.{name}" for ns, name, default in _SETTINGS_IN_CODE
            if getattr(getattr(knobs, ns), name, default) not in (default, None)]


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
    from fastgpt.kernels._common import native_specialize_impl   # (None before triton 3.4: precompile is off)
    return native_specialize_impl(BaseBackend, arg, False, True, True)


def _target():
    """The GPU target this process compiles for (Triton's active driver's)."""
    from triton.runtime.driver import driver
    return driver.active.get_current_target()


def _command(reply_fd: int) -> list:
    """A worker's command line."""
    return [sys.executable, "-m", "fastgpt.kernels._precompile", str(reply_fd)]


def _receive(p, deadline: float):
    """Worker p's next answer, or TimeoutError once ``deadline`` (time.monotonic) has passed. (A worker has at
    most one message in flight: data read ahead into p.replies' buffer would not wake the selector.)"""
    with selectors.DefaultSelector() as sel:   # (select.select fails on descriptors >= 1024)
        sel.register(p.replies, selectors.EVENT_READ)
        if not sel.select(max(deadline - time.monotonic(), 0)):
            raise TimeoutError("a compile worker did not answer in time")
    return pickle.load(p.replies)


def _start(n: int, target) -> None:
    """n workers into _pool, each told the GPU target to compile for; returns once all are ready."""
    global _started_with
    import fcntl

    import fastgpt
    from triton import knobs
    _started_with = (dict(os.environ), knobs.cache.dir)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "FASTGPT_COMPILE_WORKERS": "0",
           "TRITON_CACHE_DIR": knobs.cache.dir}   # the parent's cache (knobs.cache.dir = ... sets the variable too)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastgpt.__file__)))   # the parent's fastgpt first
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    for _ in range(n):
        r, w0 = os.pipe()
        w = fcntl.fcntl(w0, fcntl.F_DUPFD_CLOEXEC, 3)   # above 0-2 (a daemon's closed stdio): the worker's own
        os.close(w0)
        try:   # (its own session: a Ctrl-C at the terminal is the parent's, which ends the workers itself)
            p = subprocess.Popen(_command(w), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=env, pass_fds=(w,), start_new_session=True)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        p.replies = os.fdopen(r, "rb")
        _pool.append(p)
        pickle.dump(target, p.stdin)
        p.stdin.flush()
    deadline = time.monotonic() + START_TIMEOUT
    for p in _pool:   # (all ready before any job is sent: one message in a pipe at a time)
        if _receive(p, deadline) != "ready":
            raise RuntimeError("a compile worker said something else than ready")


def stop() -> None:
    """End the workers (at exit, after a failure or a Ctrl-C; the next precompile() starts new ones). A worker
    keeps nothing worth waiting for: Triton writes each cache file whole, under a temporary name first."""
    global _pool
    procs, _pool = _pool, []
    for p in procs:
        p.kill()
        p.wait()
        for f in (p.stdin, p.replies):
            try:
                f.close()
            except OSError:   # a write that a dead worker never read (BrokenPipeError) is dropped
                pass


atexit.register(stop)


def precompile(fn: JITFunction, configs, args, kwargs) -> int:
    """Compile ``fn`` at each triton.Config of ``configs`` for the launch ``fn[grid](*args, **kwargs)`` in the
    worker processes; returns how many compiled (0 when this is off, has too few configs, or cannot
    rebuild the arguments). A worker's failure never reaches the caller (the autotuner then compiles as
    before); a KeyboardInterrupt does, after the workers are ended."""
    global _broken
    from fastgpt.kernels import INTERPRET
    from fastgpt.kernels._common import native_specialize_impl
    n = workers()
    if INTERPRET or n < 2 or len(configs) < 2 or _broken or not sys.executable or native_specialize_impl is None \
            or _settings_in_code():
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
        from triton import knobs
        if _pool and _started_with != (dict(os.environ), knobs.cache.dir):
            stop()   # the environment or the cache folder changed since they started: workers that share them
        if not _pool:
            _start(n, _target())
        busy = []
        for i, p in enumerate(_pool):   # job j to worker j mod n; all sent before any reply is read
            if jobs[i::len(_pool)]:
                pickle.dump(jobs[i::len(_pool)], p.stdin)
                p.stdin.flush()
                busy.append(p)
        deadline = time.monotonic() + BATCH_TIMEOUT
        done = sum(error is None for p in busy for error in _receive(p, deadline))
    except BaseException as e:   # the pipes may be out of step now: the workers go
        stop()
        if not isinstance(e, Exception):
            raise   # (a Ctrl-C is the caller's; the next new key starts new workers)
        _broken = True   # a worker that died, hung, or answered nonsense: off from here on
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
    except BaseException as e:  # reported, never raised (nor the worker's end): the parent compiles it itself
        try:
            text = str(e).strip()
        except BaseException:
            text = ""
        return f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"[:300]


def _serve(reply_fd: int) -> None:
    """A worker's loop: the target (answered "ready"), then lists of jobs, each answered with a list of
    results on the pipe ``reply_fd``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a Ctrl-C is the parent's (train saves and goes on)
    os.set_inheritable(reply_fd, False)
    inp, out = sys.stdin.buffer, os.fdopen(reply_fd, "wb")
    from triton.runtime.driver import driver
    driver.set_active(StandIn(pickle.load(inp)))
    pickle.dump("ready", out)
    out.flush()
    while True:
        try:
            jobs = pickle.load(inp)
        except EOFError:
            return
        pickle.dump([_compile(*job) for job in jobs], out)
        out.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
