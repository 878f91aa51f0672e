"""Small helpers shared by the kernel files (validation, launch configs, the partial-sum finish)."""
from __future__ import annotations

import functools
import inspect
import math
import os
import sys
from typing import Optional

import torch
import triton
import triton.language as tl
import triton.runtime.autotuner
from triton import knobs
from triton.runtime.driver import driver

from fastgpt import reference
from fastgpt.kernels import INTERPRET, _precompile

try:  # triton's own argument specialisation (C++, triton >= 3.4), which the lean launch keys on
    from triton._C.libtriton import native_specialize_impl
except ImportError:  # an older triton: every launch takes triton's own path
    native_specialize_impl = None
try:  # the CUDA launcher class, whose C entry the lean launch calls directly
    from triton.backends.nvidia.driver import CudaLauncher
except ImportError:
    CudaLauncher = None

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def on_its_device(fn):
    """Decorator for a public op: run it with its first argument's CUDA device current.

    Triton launches on the current device and its current stream, not on the tensors' device:
    with tensors on cuda:1 and cuda:0 current, a launch fails ("cannot be accessed from Triton")
    or, with peer access, runs on the wrong GPU, unordered with cuda:1's stream. The backward
    needs no guard: autograd's engine runs it with the gradients' device current. Under
    torch.compile the guard is inductor's (it enters the device around each kernel and custom op);
    the eager and aot_eager compile backends have none."""
    first = next(iter(inspect.signature(fn).parameters))

    @functools.wraps(fn)
    def run(*args, **kwargs):
        x = args[0] if args else kwargs.get(first)
        if not torch.compiler.is_compiling() and isinstance(x, torch.Tensor) and x.is_cuda:
            index = x.get_device()
            if index != torch.cuda.current_device():
                with torch.cuda.device(index):
                    return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return run


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the launchers (triton.cdiv is a constexpr function: ~6 us per host call)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), for the launchers (triton.next_power_of_2 costs
    as much as triton.cdiv on the host)."""
    return 1 << (n - 1).bit_length()


def check_float(name: str, t: torch.Tensor, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported: float16, bfloat16, float32")


def check_same_device(op: str, **tensors) -> None:
    """The tensors share one device, and it is one the kernels run on: CUDA, or the CPU under the
    interpreter (else Triton's own error would be "0 active drivers", which names nothing)."""
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devs.items())
        raise ValueError(f"{op}: tensors on different devices ({desc})")
    dev = next(iter(devs.values()))
    # read at call time: the sm_90 stand-in tools (benchmarks/compile_report.py, host_overhead.py) set it
    if dev.type != "cuda" or sys.modules["fastgpt.kernels"].INTERPRET:
        from fastgpt.backend import fused_unavailable_reason
        reason = fused_unavailable_reason(dev.type)
        if reason is not None:
            raise ValueError(f"{op}: {reason}")


# The row kernels' persistent loops (LayerNorm, bias-GELU) step an int32 row start past M by up to one
# grid's rows, which is M itself where every tile has its own program: 2 M plus a tile stays below 2**31.
MAX_ROWS = 2**30 - 2**10


def check_rows(op: str, x: torch.Tensor) -> None:
    """x has at most MAX_ROWS rows (the product of its leading dims)."""
    rows = math.prod(x.shape[:-1])
    if rows > MAX_ROWS:
        raise ValueError(f"{op}: x has {rows:,} rows (the product of its leading dims), above the kernels' limit of "
                         f"{MAX_ROWS:,}; use backend='reference'")


def check_vector(op: str, name: str, t, n: int) -> None:
    """t (if given) is a float vector of shape (n,): the reference's shape check, plus the kernels' dtypes."""
    if t is None:
        return
    check_float(name, t, op)
    reference.check_vector_shape(op, name, t, n)


def unit_stride(t):
    """A weight or bias vector the kernels can index as t[i]: t itself, or a contiguous copy of a
    strided or expanded (N,) view (autograd carries the gradient back to the view)."""
    if isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() > 1 and t.stride(0) != 1:
        return t.contiguous()
    return t


def check_grad(op: str, name: str, g, like: torch.Tensor) -> None:
    """An upstream gradient given to a backward launcher: a float tensor of ``like``'s shape on its
    device (the kernels index it with like's shape: a wrong one would read out of bounds)."""
    check_float(name, g, op)
    if g.shape != like.shape:
        raise ValueError(f"{op}: {name} has shape {tuple(g.shape)}, the forward's output {tuple(like.shape)}")
    if g.device != like.device:
        raise ValueError(f"{op}: {name} is on {g.device}, the forward's tensors on {like.device}")


def check_out(op: str, out, like: torch.Tensor) -> None:
    """An ``out`` tensor given to a forward launcher (the kernels write it as a contiguous tensor of
    ``like``'s shape and dtype)."""
    if out is not None and (out.shape != like.shape or out.dtype != like.dtype or not out.is_contiguous()
                            or out.device != like.device):
        raise ValueError(f"{op}: out must be a contiguous {like.dtype} tensor of shape {tuple(like.shape)} on "
                         f"{like.device}")


def records_grad(*tensors) -> bool:
    """Whether autograd must record an op on these inputs (grad mode on, one of them requires
    grad). When not (inference, evaluation, generation), the public ops call their launchers
    directly: an autograd.Function costs ~20 us of host time even under no_grad."""
    return torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in tensors)


def rows_2d(x: torch.Tensor) -> torch.Tensor:
    """View x as (M, N) with unit column stride, copying only when that is impossible."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[1] > 1 and x2.stride(1) != 1:
        x2 = x2.contiguous()
    return x2


def row_stride(x2: torch.Tensor) -> int:
    return x2.stride(0) if x2.shape[0] > 1 else x2.shape[1]


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=None)
def max_shared_mem(device_index: int) -> int:
    """Bytes of shared memory one block may use on the device (what triton's launch check reads)."""
    return int(triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"])


def reduction_programs(device: torch.device, work_items: int, per_sm: int = 4) -> int:
    """How many programs a persistent (grid-stride) kernel launches."""
    if device.type != "cuda":
        return max(1, min(work_items, 4))
    return max(1, min(work_items, sm_count(device.index or 0) * per_sm))


def _bench_for(rep_ms: int):
    """The autotuner's timing function: triton's do_bench over rep_ms of calls (median and quantiles)."""
    def bench(kernel_call, quantiles):
        import triton.testing
        return triton.testing.do_bench(kernel_call, warmup=10, rep=rep_ms, quantiles=quantiles)
    return bench


# ----------------------------------------------------------------------------- launches
# A Triton launch from Python costs ~25 us of host time on the dev CPU before the driver
# call (JITFunction.run: binding every argument into dicts, specialising each, building the
# cache key; benchmarks/host_overhead.py measures it), about as much as the kernel itself
# at small sizes, and a fused op launches 1-3 kernels each way. launch() keeps triton's
# path for the first launch of each call signature and replays later ones straight to the
# compiled kernel's launcher. The signature is the keyword arguments (constexprs, launch
# options) and triton's own specialisation of every positional argument (tensor dtype and
# 16-byte alignment; integer type, == 1 and divisibility by 16), so a replay runs the very
# kernel triton would pick, with the argument list triton would pass
# (benchmarks/host_overhead.py --check compares the two on every launcher). The launcher's
# calling convention is triton's internal one, checked on triton 3.6 (the pinned version): any
# other version, and FASTGPT_LEAN_LAUNCH=0, send every launch through triton's own path.
# Triton's process-wide debug switches (knobs.runtime.debug, knobs.compilation.instrumentation_mode;
# TRITON_DEBUG / TRITON_INSTRUMENTATION_MODE) are not in the signature (reading them costs ~90 ns a
# launch): set them before the first launch, as the environment does, or with FASTGPT_LEAN_LAUNCH=0;
# switched on later, a call signature already seen keeps replaying the kernel compiled without them.
# Two more per-launch costs go when nothing uses them: triton 3.6 passes its launch hooks as
# HookChain objects even when empty, so every launch builds a metadata dict and its C launcher
# calls two empty chains (a replay passes None for all three while the chains are empty); and
# CudaLauncher.__call__, a Python frame that only adds the kernel's scratch buffers (none for
# ours) and two flags before the C entry, which a replay calls directly.

LEAN_LAUNCH = not INTERPRET and native_specialize_impl is not None and triton.__version__.startswith("3.6.") \
    and os.environ.get("FASTGPT_LEAN_LAUNCH", "1") != "0"


def launch(fn, grid, *args, **kwargs):
    """``fn[grid](*args, **kwargs)`` for a @triton.jit kernel, with the lean replay above.

    ``grid`` is a tuple or a callable of the constexpr and option values (``meta["BLOCK_M"]``).
    """
    return _lean_launch(fn, grid, args, kwargs, None)[0]


def launch_replayable(fn, grid, n_lead, *args, **kwargs):
    """launch(), returning a Replay of it with its first ``n_lead`` arguments left open; None when
    n_lead is None, or the launch did not take the lean path, or cannot be replayed (see Replay)."""
    return _lean_launch(fn, grid, args, kwargs, n_lead)[1]


def _lean_launch(fn, grid, args, kwargs, n_lead):
    """launch()'s body: returns (the kernel, a Replay when n_lead is given and it can be made, else None)."""
    if not LEAN_LAUNCH or fn.pre_run_hooks:
        return fn[grid](*args, **kwargs), None
    device = driver.active.get_current_device()
    stream = driver.active.get_current_stream(device)
    backend = fn.device_caches[device][3]
    key = (device, *kwargs.items(), *[native_specialize_impl(backend, a, False, True, True) for a in args])
    cache = fn.__dict__.setdefault("_fastgpt_launches", {})
    hit = cache.get(key)
    if hit is None:  # triton's path: it compiles (or finds) the kernel and launches it
        kernel = fn.run(*args, grid=grid, warmup=False, **kwargs)
        names = fn.arg_names[len(args):]
        # the values of the parameters not passed positionally, as triton binds them
        tail = tuple(kwargs[n] if n in kwargs else p.default for n, p in zip(names, fn.params[len(args):]))
        if kernel is not None and not hasattr(kernel, "result"):
            cache[key] = (kernel, tail, dict(zip(names, tail)), _c_entry(kernel))
        return kernel, None
    kernel, tail, meta, c_entry = hit
    full = args + tail
    if callable(grid):
        grid = grid(meta)
    n = len(grid)
    gx, gy, gz = grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1
    enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    if _idle(enter) and _idle(leave):
        enter = leave = metadata = None
    else:
        metadata = kernel.launch_metadata(grid, stream, *full)
    if c_entry is None:
        kernel.run(gx, gy, gz, stream, kernel.function, kernel.packed_metadata, metadata, enter, leave, *full)
    else:
        c_launch, cooperative, pdl = c_entry
        c_launch(gx, gy, gz, stream, kernel.function, cooperative, pdl, None, None, kernel.packed_metadata, metadata,
                 enter, leave, *full)
    if n_lead is None or c_entry is None or metadata is not None or not all(
            a is None or (isinstance(a, torch.Tensor) and a.data_ptr() % 16 == 0) for a in args[:n_lead]) \
            or any(isinstance(a, torch.Tensor) for a in args[n_lead:]):
        return kernel, None
    return kernel, Replay(fn, device, c_entry, kernel, (gx, gy, gz), full[n_lead:])


class Replay:
    """One lean launch kept for replay: the compiled kernel, the grid and every argument after the
    first n_lead fixed. ``replay(stream, *lead)`` launches it again with new leading arguments
    (tensors or None) straight through the C entry, skipping triton's specialisation of every
    argument (~5 us of a ~11 us lean launch on the dev CPU). It is the launch triton would make
    only when the new arguments specialise as the captured ones did, which the caller guarantees:
    the same dtypes and None-ness (its cache key) and 16-byte-aligned data pointers (every captured
    tensor's was); and while usable() holds (the lean path on, no pre-run or launch hooks, the
    captured current device)."""
    __slots__ = ("device", "_fn", "_c_launch", "_cooperative", "_pdl", "_function", "_packed", "_grid", "_rest")

    def __init__(self, fn, device, c_entry, kernel, grid, rest):
        self._fn, self.device = fn, device
        self._c_launch, self._cooperative, self._pdl = c_entry
        self._function, self._packed = kernel.function, kernel.packed_metadata
        self._grid, self._rest = grid, rest

    def usable(self) -> bool:
        return LEAN_LAUNCH and not self._fn.pre_run_hooks and _idle(knobs.runtime.launch_enter_hook) \
            and _idle(knobs.runtime.launch_exit_hook) and driver.active.get_current_device() == self.device

    def __call__(self, stream, *lead):
        gx, gy, gz = self._grid
        self._c_launch(gx, gy, gz, stream, self._function, self._cooperative, self._pdl, None, None, self._packed,
                       None, None, None, *lead, *self._rest)


# ----------------------------------------------------------------------------- replay plans
# An op's eager call signature can keep its launches as Replays once they have taken the lean path
# (the first call compiles and, with autotuning, tunes; a later one is captured): the calls after
# that skip the validation (an identical signature passed it), the launchers' argument building and
# triton's per-argument specialisation. kernels/attention.py, layernorm.py and gelu.py hold plans;
# benchmarks/host_overhead.py --check compares their launches with triton's path.

def plan_key(*tensors):
    """The tensors' part of a plan's key: each one's (shape, strides, dtype, device), None for None;
    or None (no plan: the checked path every time) with the lean path off or for anything but a
    plain torch.Tensor or nn.Parameter (another subclass may compute any of these differently)."""
    if not LEAN_LAUNCH:
        return None
    key = []
    for t in tensors:
        if t is None:
            key.append(None)
        elif type(t) in _PLAIN:
            key.append((t.shape, t.stride(), t.dtype, t.device))
        else:
            return None
    return tuple(key)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


class PlanCache(dict):
    """key -> plan, dropped wholesale past ``limit`` entries (a growing-length generation loop makes
    one signature per length)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def find(self, key, new):
        """The plan kept under ``key``, else ``new(key)`` (key None: a plan that never keeps)."""
        plan = self.get(key) if key is not None else None
        return plan if plan is not None else new(key)

    def keep(self, key, plan) -> None:
        if self.get(key) is not plan:
            if len(self) >= self.limit:
                self.clear()
            self[key] = plan


def misaligned(*tensors) -> bool:
    """Whether any of the tensors (or None) starts off a 16-byte boundary (triton specialises on it;
    fresh buffers never do: the allocators align far more)."""
    ptrs = 0
    for t in tensors:
        if t is not None:
            ptrs |= t.data_ptr()
    return bool(ptrs & 15)


def same_data(view, t) -> bool:
    """Whether rows_2d's ``view`` of t (or None) made no copy: a replay may then pass as_2d(t)."""
    return t is None or view.data_ptr() == t.data_ptr()


def as_2d(t):
    """rows_2d's view for a replay, whose capture checked that rows_2d made no copy (None stays None)."""
    return t if t is None or t.dim() == 2 else t.view(-1, t.shape[-1])


def current_stream(device: int):
    """The current stream of ``device`` as triton's launches take it (a raw handle)."""
    return driver.active.get_current_stream(device)


def _idle(hook) -> bool:
    """A launch hook that does nothing: None, or an empty HookChain (triton 3.6's default)."""
    return hook is None or (isinstance(hook, knobs.HookChain) and not hook.calls)


def _c_entry(kernel):
    """(C launch function, cooperative-grid flag, PDL flag) of a compiled kernel whose launcher is
    triton's CudaLauncher with no scratch buffers, else None (the replay then calls the launcher)."""
    run = kernel.run
    if CudaLauncher is None or type(run) is not CudaLauncher or run.global_scratch_size \
            or run.profile_scratch_size:
        return None
    return run.launch, run.launch_cooperative_grid, run.launch_pdl


MIN_BUCKET = 4096   # the smallest row-count bucket an autotuner keys on (see _Autotuner)


class _Autotuner(triton.runtime.autotuner.Autotuner):
    """triton's Autotuner with a lean launch once a key is tuned.

    Autotuner.run rebuilds dicts of every argument on each launch, about as
    much host time as the JIT launch itself (measured through
    benchmarks/compile_report.py's stand-in driver). After the first launch of
    a key, this launches the tuned config through launch(). The key is
    Triton's (the named key arguments plus the dtypes of the tensor arguments),
    and with ``bucket`` (the name of the row-count argument) its power of two,
    at least MIN_BUCKET: the tile and pipeline depth that win at 2048 rows (a
    benchmark's correctness check, a first small batch) are not the ones that
    win at 16384; below 4096 rows (decoding, small batches) the kernels are
    launch-bound, and timing every config again for each size (~0.5 s a
    kernel) would buy nothing. Configs with pre-hooks are not supported.
    Before a new key is timed, its pruned configs go to _precompile's worker processes (where CPUs
    are idle), so that Triton's compile of each one is a read from its on-disk cache.
    With Triton's on-disk autotune results on (TRITON_CACHE_AUTOTUNING=1), they are filed under this
    key, bucket included (see check_disk_cache).
    """

    def __init__(self, fn, configs, key, prune, do_bench, reset_to_zero=(), bucket=None):
        def zero(nargs, reset_only=False):   # triton's reset_to_zero, for arguments that may be None
            for name in reset_to_zero:
                if nargs[name] is not None:
                    nargs[name].zero_()
        super().__init__(fn, fn.arg_names, configs, key, None, None, pre_hook=zero if reset_to_zero else None,
                         do_bench=do_bench,
                         prune_configs_by={"early_config_prune": prune} if prune is not None else None)
        assert all(c.pre_hook is None for c in self.configs), "fastgpt's autotune takes no pre-hooks"
        self._key_pos = [(fn.arg_names.index(k), k) for k in key]
        self._bucket_pos = None if bucket is None else (fn.arg_names.index(bucket), bucket)
        self._tuned = {}          # key -> the tuned triton.Config
        self._config_kwargs = {}  # key -> its launch kwargs
        self._new_key = None      # (key, args, kwargs) of the key run() is tuning, for check_disk_cache

    @staticmethod
    def _arg(args, kwargs, pos):
        """The launch argument at ``pos`` = (index, name), passed by position or by name."""
        i, name = pos
        return args[i] if i < len(args) else kwargs[name]

    def _tuning_key(self, args, kwargs):
        key = (*[self._arg(args, kwargs, p) for p in self._key_pos],
               *[a.dtype for a in args if isinstance(a, torch.Tensor)])
        if self._bucket_pos is not None:
            key += (max(next_pow2(max(int(self._arg(args, kwargs, self._bucket_pos)), 1)), MIN_BUCKET),)
        return key

    def run(self, *args, grid, warmup=False, **kwargs):
        key = self._tuning_key(args, kwargs)
        config_kwargs = self._config_kwargs.get(key)
        if config_kwargs is None or warmup:
            if config_kwargs is None and not warmup:
                self.cache.clear()  # triton's own cache has no bucket: a new one is timed afresh
                self.nargs = dict(zip(self.arg_names, args))
                self._new_key = (key, args, kwargs)
                if not self.cache_results:   # (else only when the disk has no result: check_disk_cache)
                    _precompile.precompile(self.fn, self.prune_configs(kwargs), args, kwargs)   # workers, if any
            try:
                out = super().run(*args, grid=grid, warmup=warmup, **kwargs)
            finally:
                self._new_key = None   # (it holds the arguments)
            if not warmup:
                self._tuned[key] = self.best_config
                self._config_kwargs[key] = self.best_config.all_kwargs()
            return out
        return launch(self.fn, grid, *args, **kwargs, **config_kwargs)

    def check_disk_cache(self, tuning_key, configs, bench_fn):
        """Triton's on-disk autotune results (TRITON_CACHE_AUTOTUNING=1) under this autotuner's key: Triton's
        own ``tuning_key`` has no row-count bucket, so a choice timed at 4096 rows would be read back at
        16384. The configs go to the compile workers only when they are to be timed (a miss)."""
        if self._new_key is None:   # a warmup call (not a new key of run's)
            return super().check_disk_cache(tuning_key, configs, bench_fn)
        key, args, kwargs = self._new_key
        key = tuple(str(k) if isinstance(k, torch.dtype) else k for k in key)   # (stored as JSON, as Triton's)

        def bench():
            _precompile.precompile(self.fn, configs, args, kwargs)
            bench_fn()   # (files its choice under tuning_key, where Triton's run looks it up)
        if not super().check_disk_cache(key, configs, bench):
            return False
        self.cache[tuning_key] = self.cache.pop(key)
        return True

    def run_replayable(self, n_lead, *args, grid, **kwargs):
        """run(), returning a Replay of the launch once its key is tuned (else, or with n_lead None, None)."""
        key = self._tuning_key(args, kwargs)
        config_kwargs = self._config_kwargs.get(key)
        if config_kwargs is None:
            self.run(*args, grid=grid, **kwargs)
            return None
        return launch_replayable(self.fn, grid, n_lead, *args, **kwargs, **config_kwargs)


def autotuning_enabled() -> bool:
    """False under the interpreter and with FASTGPT_AUTOTUNE=0 (the GPU tests, selftest --quick)."""
    return not INTERPRET and os.environ.get("FASTGPT_AUTOTUNE", "1") != "0"


def autotune(configs, key, prune=None, rep_ms=40, reset_to_zero=(), enabled=None, bucket=None):
    """triton.autotune over ``configs`` on the GPU, with short timing runs (rep_ms per config) and a
    lean launch path. ``reset_to_zero``: names of tensor arguments a launch adds into (None skipped),
    zeroed before each timing run and before the tuned launch. ``enabled``: None follows
    autotuning_enabled() (below); True tunes over every config regardless (GPU tests). ``bucket``:
    the row-count argument, tuned per power of two of it (see _Autotuner).

    Only the first config (make it a good default) is used under the
    interpreter (autotuning more than one config fails there) and when
    FASTGPT_AUTOTUNE=0 (the GPU test suite sets it: compiling every config for
    every test shape would dominate its run time).
    """
    def wrap(fn):
        if not (autotuning_enabled() if enabled is None else enabled):
            return _Autotuner(fn, configs[:1], key, None, None)
        return _Autotuner(fn, configs, key, prune, _bench_for(rep_ms), reset_to_zero, bucket)
    return wrap


# Tests set this to True: every buffer a launcher allocates then starts as NaN,
# so an element the kernel fails to write fails the comparison.
POISON = False


def empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty for launcher outputs (NaN-filled when POISON is set)."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if POISON and t.is_floating_point():
        t.fill_(float("nan"))
    return t


# ----------------------------------------------------------------------------- partial sums
# The weight/bias gradients of LayerNorm and bias-GELU are reduced in two stages: the
# backward kernel's G programs each write one fp32 row of partial sums, then this kernel
# adds the G rows in a fixed order (deterministic, no atomics) and writes the result in the
# parameter's dtype: one launch for both gradients, instead of a torch sum and a cast each
# (four small kernels and their host time for LayerNorm's dw and db).

@triton.jit
def _sum_partials_kernel(P0, P1, OUT0, OUT1, G, N, TWO: tl.constexpr, BLOCK_G: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    acc0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        rows = g0 + tl.arange(0, BLOCK_G)
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        mask = (rows < G)[:, None] & cmask[None, :]
        acc0 += tl.sum(tl.load(P0 + offs, mask=mask, other=0.0), axis=0)
        if TWO:
            acc1 += tl.sum(tl.load(P1 + offs, mask=mask, other=0.0), axis=0)
    tl.store(OUT0 + cols, acc0.to(OUT0.dtype.element_ty), mask=cmask)
    if TWO:
        tl.store(OUT1 + cols, acc1.to(OUT1.dtype.element_ty), mask=cmask)


def sum_partials(p0: torch.Tensor, p1, dtype: torch.dtype, replays: Optional[list] = None):
    """(p0.sum(0), p1.sum(0)) of contiguous fp32 (G, N) partial buffers, in ``dtype``, in one
    launch; p1 may be None (then None is returned for it). ``replays``: a list that gets the
    launch's Replay (its 4 tensors open: p0, p1, out0, out1; None when it cannot be replayed)."""
    G, N = p0.shape
    out0 = empty((N,), dtype, p0.device)
    out1 = empty((N,), dtype, p0.device) if p1 is not None else None
    if N == 0:
        return out0, out1
    # Narrow column blocks for many programs (N = 768: 96; one 32-byte sector per row of the
    # tile) and one tall row block for all of G (the backward kernels use G = 4 per SM, 528 on
    # an H100): every load is issued at once, no dependent trips through G. (It was 24 programs
    # of 32 columns making 5 trips of 128 rows each: latency-bound, several us for 3 MB.)
    BLOCK_N = 8
    BLOCK_G = min(1024, max(128, next_pow2(G)))
    r = launch_replayable(_sum_partials_kernel, (cdiv(N, BLOCK_N),), 4 if replays is not None else None,
                          p0, p1 if p1 is not None else p0, out0, out1 if out1 is not None else out0, G, N,
                          TWO=p1 is not None, BLOCK_G=BLOCK_G, BLOCK_N=BLOCK_N, num_warps=4 if BLOCK_G <= 256 else 8)
    if replays is not None:
        replays.append(r)
    return out0, out1


# the folders whose frames a warning skips to reach the user's line: fastgpt, its kernels, and torch (whose
# custom-op and autograd machinery may sit between them)
_LIBRARY_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                      for m in (reference, sys.modules[__name__], torch))


def caller_stacklevel() -> int:
    """warnings.warn's stacklevel, called from the function that warns, for the first frame outside fastgpt
    and torch: the user's line, however many of our frames (fastgpt.ops, the packed path) sit between. Under
    ``python -m fastgpt.X`` there is none (runpy's frame came next): the outermost fastgpt frame then."""
    f, level = sys._getframe(1), 1
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(_LIBRARY_DIRS):
        f, level = f.f_back, level + 1
    if f is None or f.f_globals.get("__name__") == "runpy":
        return level - 1
    return level
