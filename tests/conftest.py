"""Test set-up: the Triton interpreter on CPU-only machines, per-test seeds, devices.

TRITON_INTERPRET must be set before triton is imported (it is fixed when
@triton.jit runs), so it is set here, before any test module imports
fastgpt.kernels, and only where CUDA is absent: on a GPU the interpreter would
copy tensors to the CPU and test nothing real.
"""
import os
import random
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # one (default) launch config per kernel: autotuning every config at every
    # test shape would dominate the GPU suite; the benchmarks run the tuned path
    os.environ.setdefault("FASTGPT_AUTOTUNE", "0")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"

try:
    import triton  # noqa: F401
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
# The fused attention's fp32 dots are TF32 on the GPU (operands to 10 mantissa bits: ~1e-3 on o and its
# gradients at unit scale; the H200 run, 2026-11-29, read up to 9.5e-4) and exact under the interpreter. For
# tests of behaviour that compare a fused path holding attention with the reference in fp32 by a fixed bound
# (accuracy tests take fastgpt.testing's rule, with a TF32 ref_lp on the GPU).
FP32_ATTENTION_TOL = dict(rtol=5e-3, atol=5e-3) if HAS_CUDA else dict(rtol=1e-4, atol=1e-4)
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
ROOT = Path(__file__).resolve().parents[1]


def _check_the_checkout_under_test():
    """The tests must import this checkout: setup.py maps fastgpt.kernels to the folder kernels/, so with an
    editable install of another checkout in the environment, fastgpt came from here and its kernels from
    there, and every kernel test would test the other checkout's code (two reviews' copies did, 2026-11-27)."""
    import importlib.util
    for name in ("fastgpt", "fastgpt.kernels"):
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is None or ROOT not in origin.parents:
            pytest.exit(f"{name} imports from {origin or 'nowhere'}, not from this checkout ({ROOT}): install this "
                        "checkout into its own environment (bash scripts/install.sh) and run its .venv/bin/python",
                        returncode=4)


_FAILURE_LOG = None   # FASTGPT_FAILURE_LOG made absolute at start: a failing test may have changed directory


def pytest_configure(config):
    global _FAILURE_LOG
    _check_the_checkout_under_test()   # (at conftest import, pytest.exit showed as an ImportError traceback)
    _test_shard()                      # a malformed FASTGPT_TEST_SHARD stops the run before collection
    path = os.environ.get("FASTGPT_FAILURE_LOG")
    _FAILURE_LOG = os.path.abspath(path) if path else None


def pytest_runtest_logreport(report):
    """With FASTGPT_FAILURE_LOG set (benchmarks/gpu_check.sh sets it for each test file), each failure's
    report, its captured output (the seed) included, is appended to that file as it happens: a pytest
    killed at its stage's budget prints no summary (run 5's test_attention.py left four F's, no names).
    The path is the one given, made absolute at start (a relative one, opened from a test that had changed
    directory, stopped the file with an INTERNALERROR); a log that cannot be written is said, not raised."""
    if _FAILURE_LOG is None or not report.failed:
        return
    try:
        with open(_FAILURE_LOG, "a", encoding="utf-8") as f:
            f.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext}\n")
            for title, content in report.sections:
                f.write(f"--- {title}\n{content}\n")
            f.write("\n")
    except OSError as e:
        print(f"conftest: cannot write FASTGPT_FAILURE_LOG {_FAILURE_LOG}: {e}", file=sys.stderr)


def _test_shard():
    """(K, N) from FASTGPT_TEST_SHARD=K/N, or None when it is unset or empty."""
    spec = os.environ.get("FASTGPT_TEST_SHARD", "").strip()
    if not spec:
        return None
    try:
        k, n = (int(x) for x in spec.split("/"))
        if not 1 <= k <= n:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"FASTGPT_TEST_SHARD must be K/N with 1 <= K <= N, got {spec!r}") from None
    return k, n


def pytest_collection_modifyitems(config, items):
    """With FASTGPT_TEST_SHARD=K/N (benchmarks/gpu_check.sh sets it to spread a long file over N pytest
    processes: on a GPU each process spends most of its time compiling kernels, one core each), only
    every N-th test from the K-th (K = 1..N) in the order of their ids runs; the others are deselected.
    Dealt out round-robin, each parametrized family is spread over the shards; by id, not by collection
    order, so that processes whose orders differ (pytest-randomly shuffles each its own way) still share
    the tests out exactly."""
    shard = _test_shard()
    if shard is None:
        return
    k, n = shard
    by_id = sorted(range(len(items)), key=lambda i: items[i].nodeid)
    mine = {i for rank, i in enumerate(by_id) if rank % n == k - 1}
    config.hook.pytest_deselected(items=[item for i, item in enumerate(items) if i not in mine])
    items[:] = [item for i, item in enumerate(items) if i in mine]


# every Triton kernel; the sm_90 stand-in tools (compile_report, host_overhead --check) must reach each
KERNELS = ("_layer_norm_fwd_kernel", "_layer_norm_bwd_kernel", "_bias_gelu_fwd_kernel", "_bias_gelu_bwd_kernel",
           "_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_prep_kernel",
           "_attn_bwd_dq_cast_kernel", "_sum_partials_kernel", "_ce_fwd_grad_kernel")


def run_standin(module: str, *args, timeout: float = 600):
    """``python -m module args`` from the repo root for the tools that compile kernels with Triton's driver
    replaced by the sm_90 stand-in (benchmarks.compile_report, benchmarks.host_overhead): no interpreter,
    the lean launch at its default, and on a GPU machine the real GPU hidden from them."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=standin_env(), capture_output=True,
                          text=True, timeout=timeout)


def standin_env(**extra) -> dict:
    """run_standin's environment (plus ``extra``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTGPT_LEAN_LAUNCH")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if HAS_CUDA:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return {**env, **extra}


def fake_cuda_capability(monkeypatch, capability):
    """Make torch report a CUDA device of this compute capability to the dtype choice (cli.native_bf16,
    cli.cuda_dtype) on a machine without one: get_device_capability returns it; torch.cuda.is_bf16_supported
    counts emulated bf16 below 8.0 (its default) but not native-only. Returns whether bf16 is native."""
    native = tuple(capability) >= (8, 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: tuple(capability))
    return native


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def seed():
    """A fresh seed per test (FASTGPT_TEST_SEED pins it); printed, so a failure shows it."""
    s = int(os.environ.get("FASTGPT_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(s)
    random.seed(s)
    print(f"seed = {s} (rerun with FASTGPT_TEST_SEED={s})")
    return s


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests choose backends explicitly; a user's FASTGPT_BACKEND must not leak in."""
    monkeypatch.delenv("FASTGPT_BACKEND", raising=False)


@pytest.fixture(autouse=True)
def _poison_kernel_outputs(monkeypatch):
    """Every buffer a Triton launcher allocates starts as NaN during tests. And attention's backward
    is the default split one (bitwise deterministic, which tests rely on) whatever a user's
    FASTGPT_ATTENTION_DQ says; the atomic-dQ tests set it themselves."""
    if HAS_TRITON:
        from fastgpt.kernels import _common, attention
        monkeypatch.setattr(_common, "POISON", True)
        monkeypatch.setattr(attention, "BWD_DQ", "split")


def assert_unrecorded_calls_match(call, inputs, function_cls, monkeypatch):
    """An op with nothing for autograd to record (no input requires grad, or no_grad) calls its
    launcher directly, skipping ``function_cls`` (its autograd.Function); the outputs must be
    the recorded call's, bit for bit, and carry no grad_fn."""
    recorded = call(*[t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in inputs])
    recorded = [o.detach() for o in (recorded if isinstance(recorded, tuple) else (recorded,))]

    def refuse(*args, **kwargs):
        raise AssertionError(f"{function_cls.__name__}.apply called with nothing to record")

    monkeypatch.setattr(function_cls, "apply", refuse)
    plain = call(*inputs)
    with torch.no_grad():
        nograd = call(*[t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in inputs])
    for outs in (plain, nograd):
        outs = outs if isinstance(outs, tuple) else (outs,)
        assert len(outs) == len(recorded)
        for o, r in zip(outs, recorded):
            assert o.grad_fn is None and o.dtype == r.dtype and o.stride() == r.stride() and torch.equal(o, r)


def count_calls(monkeypatch, module, names, record=None) -> list:
    """Wrap module.<name> for each name so every call appends to the returned list: the name, or
    with ``record``, record(args, result) (e.g. which kernel a launcher got, what a switch said)."""
    calls = []
    for name in names:
        def counted(*a, _f=getattr(module, name), _name=name, **kw):
            if record is None:
                calls.append(_name)
                return _f(*a, **kw)
            out = _f(*a, **kw)
            calls.append(record(a, out))
            return out
        monkeypatch.setattr(module, name, counted)
    return calls


def assert_plan_replays(run, checked: list):
    """A replay plan's contract: ``run()`` (a call and its backward, returning tensors) gives the
    first, checked call's results bit for bit on every repeat, and a later repeat (a replay) calls
    none of the checked launchers that ``checked`` counts (count_calls)."""
    first = run()
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(run(), first))
    del checked[:]
    assert all(torch.equal(a, b) for a, b in zip(run(), first)) and not checked


class ForcedConfig:
    """Stands in for a module's autotuned kernel and launches one given config of its space, so a
    test covers every candidate (the interpreter and the GPU tests, FASTGPT_AUTOTUNE=0, run only
    the first): ``monkeypatch.setattr(module, name, ForcedConfig(tuner, config))``."""

    def __init__(self, tuner, config):
        self.fn, self.kwargs = tuner.fn, config.all_kwargs()

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.fn[grid](*args, **kwargs, **self.kwargs)

    def run_replayable(self, n_lead, *args, grid, **kwargs):   # _common._Autotuner's: no Replay from a test
        self.fn[grid](*args, **kwargs, **self.kwargs)


def fail_import(monkeypatch, module: str, message: str) -> None:
    """importlib.import_module(module) raises ImportError(message) (a broken install, a .so that does not
    import); every other import is importlib's own."""
    import importlib
    real = importlib.import_module

    def import_module(name, *a, **k):
        if name == module:
            raise ImportError(message)
        return real(name, *a, **k)
    monkeypatch.setattr(importlib, "import_module", import_module)


def interrupt_on_call(monkeypatch, owner, name: str, n: int) -> None:
    """Replace owner.name with a wrapper that raises KeyboardInterrupt (a Ctrl-C) on its n-th call."""
    real, calls = getattr(owner, name), []

    def wrapper(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(owner, name, wrapper)


def record_syncs_and_renames(monkeypatch, name) -> list:
    """os.fsync and os.replace, still doing their work, each appending to the returned list in order:
    ("fsync", name(path of the synced file or folder)) and ("replace", name(destination)). The path of an
    fsync'ed descriptor is read from /proc/self/fd (Linux)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", name(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", name(os.fspath(dst))))
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def remove_out_dir_after_each_save(monkeypatch) -> None:
    """fastgpt.checkpoint.save_checkpoint, then the run's folder deleted (an rm -rf of a running run's
    --out_dir, as a user or a cleanup job does)."""
    import shutil

    from fastgpt import checkpoint as ck
    real = ck.save_checkpoint

    def save_then_remove(d, *a, **k):
        p = real(d, *a, **k)
        shutil.rmtree(d)
        return p
    monkeypatch.setattr(ck, "save_checkpoint", save_then_remove)
