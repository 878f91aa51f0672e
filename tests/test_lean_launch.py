"""The lean launch path (kernels/_common.launch) passes the kernel launcher exactly what triton's own path does.

Under the CPU interpreter that path never runs (the interpreter launches through
triton), so this runs benchmarks/host_overhead.py --check in a child process without
TRITON_INTERPRET: every launcher is called with Triton's driver replaced by an sm_90
stand-in, kernels are compiled for real, each compiled kernel's launcher is triton's own
CudaLauncher whose C entry (the driver call) is a recorder, and each launch is made
through triton's path and through the lean replay, then the two recorded calls (kernel,
grid, stream, flags, scratch, metadata, every argument) are compared. It
includes launches that differ only in what triton specialises on (alignment, == 1,
divisibility by 16), so a replay keyed too coarsely fails it. Then attention's replay
plans (kernels/attention.py: a call signature's launches replayed through
kernels/_common.Replay): each eager case's launches from a plan against triton's path.
"""
import torch

from conftest import KERNELS, needs_triton, run_standin

pytestmark = needs_triton


def test_lean_launch_matches_triton():
    r = run_standin("benchmarks.host_overhead", "--check")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert " 0 mismatch(es)" in r.stdout
    for kernel in KERNELS:
        assert kernel in r.stdout, f"{kernel} was not launched"
    plans = [line for line in r.stdout.splitlines() if line.startswith("plan replay ")]
    assert len(plans) == 22 and all(line.endswith(", ok") for line in plans), r.stdout[-4000:]


def test_host_time_table_has_every_op():
    """The timing mode (README: python -m benchmarks.host_overhead) runs every op both ways and prints its row."""
    r = run_standin("benchmarks.host_overhead", "--repeats", "1", "--number", "2")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    for op in ("empty autograd.Function", "causal_attention p=0.1", "causal_attention_qkvpacked", "add_layer_norm",
               "bias_gelu", "causal_attention atomic dQ",
               "layer_norm, no_grad", "GPTBlock fwd+bwd (fused)", "TorchBlock fwd+bwd (peer)"):
        assert any(line.startswith(op) and line.split()[-1].endswith("%") for line in r.stdout.splitlines()), \
            r.stdout


def test_host_profile_and_cuda_flag():
    """--profile prints cProfile's table for the matching cases (an unknown name exits 2 listing the
    cases); --cuda without a GPU exits 2 with one line."""
    import torch
    r = run_standin("benchmarks.host_overhead", "--profile", "qkvpacked", "--number", "3")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "=== causal_attention_qkvpacked: 3 calls" in r.stdout and "tottime" in r.stdout
    r = run_standin("benchmarks.host_overhead", "--profile", "nonesuch", "--number", "1")
    assert r.returncode == 2 and "no case matches 'nonesuch'" in r.stderr and "bias_gelu" in r.stderr
    if not torch.cuda.is_available():
        r = run_standin("benchmarks.host_overhead", "--cuda")
        assert r.returncode == 2 and r.stderr.strip() == "host_overhead: --cuda needs a CUDA device"


def test_autotune_key_buckets_the_row_count(monkeypatch):
    """With ``bucket``, the autotuner tunes each power of two of the row count (from 4096 up) anew (the
    benchmarks' 2048-row correctness check had tuned LayerNorm and bias-GELU for their 16384-row timings),
    clearing triton's own cache, which has no bucket, before timing a new one; a row count in a tuned bucket
    launches directly."""
    import torch
    import triton
    import triton.language as tl
    import triton.runtime.autotuner as ta

    from fastgpt.kernels import _common

    @triton.jit
    def copy(X, Y, M, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(Y + i, tl.load(X + i, mask=i < M), mask=i < M)

    configs = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})]
    tuner = _common._Autotuner(copy, configs, key=[], prune=None, do_bench=None, bucket="M")
    tuned = []

    def tune(self, *args, grid, warmup=False, **kwargs):   # triton's run: what it would time, recorded
        tuned.append((args[2], dict(self.cache)))
        self.cache[()] = self.best_config = configs[len(tuned) % 2]
        return self.fn.run(*args, grid=grid, warmup=warmup, **kwargs, **self.best_config.all_kwargs())

    monkeypatch.setattr(ta.Autotuner, "run", tune)
    for m in (2048, 1500, 16384, 4096):
        x = torch.arange(m, dtype=torch.float32)
        y = torch.empty_like(x)
        tuner.run(x, y, m, grid=lambda meta: (triton.cdiv(m, meta["BLOCK"]),))
        assert torch.equal(x, y)
    assert [m for m, _ in tuned] == [2048, 16384] and all(cache == {} for _, cache in tuned)
    key = lambda m: tuner._tuning_key((None, None, m), {})   # noqa: E731
    assert key(1) == key(1500) == key(4096) != key(4097) == key(8192) != key(8193)   # below 4096 rows: one


DISK_CACHE = r'''
import sys, torch, triton
import triton.language as tl
from benchmarks.compile_report import use_standin
use_standin()                                  # Triton's disk key names the target: sm_90, compile-only
from fastgpt.kernels import _common, _precompile
triton.knobs.cache.dir = sys.argv[1]

@triton.jit
def copy(X, Y, M, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + i, tl.load(X + i, mask=i < M), mask=i < M)

configs = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})]
timed, compiled = [], []
_precompile.precompile = lambda fn, cfgs, args, kwargs: compiled.append(args[2])
copy.run = lambda *args, **kwargs: None        # the tuned launch (nothing to run it on)

def tuner():   # a new process's autotuner: nothing tuned in memory
    t = _common._Autotuner(copy, configs, key=[], prune=None, do_bench=None, bucket="M")
    t.cache_results = True                     # as TRITON_CACHE_AUTOTUNING=1 sets it
    # BLOCK 16 wins below 4097 rows, BLOCK 32 above
    t._bench = lambda *a, config, **kw: timed.append(a[2]) or (1.0 if config is configs[a[2] > 4096] else 2.0)
    return t

x = torch.zeros(8)
def block(t, m):
    t.run(x, x, m, grid=(1,))
    return t.best_config.kwargs["BLOCK"]

a = tuner()
assert block(a, 2048) == 16 and timed == [2048] * 2 and compiled == [2048], (timed, compiled)
b = tuner()
assert block(b, 2048) == 16 and len(timed) == 2 and compiled == [2048]   # read back: no timing, no compiles
assert block(b, 16384) == 32, "another bucket's choice was read back"
assert timed[2:] == [16384] * 2 and compiled == [2048, 16384]
c = tuner()
assert block(c, 16384) == 32 and block(c, 3000) == 16 and len(timed) == 4 and len(compiled) == 2
print("disk cache ok")
'''


def test_disk_autotune_results_keep_the_bucket(tmp_path):
    """Triton's on-disk autotune results (TRITON_CACHE_AUTOTUNING=1) are filed under the autotuner's own key:
    Triton's has no row-count bucket, so a later process read the 2048-row choice back at 16384 rows. A result
    read back is neither timed nor compiled by the workers."""
    import subprocess
    import sys

    from conftest import ROOT, standin_env
    script = tmp_path / "disk_cache.py"   # (a @triton.jit function must be in a file)
    script.write_text(DISK_CACHE)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "cache")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=standin_env())
    assert r.returncode == 0 and "disk cache ok" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


# ----------------------------------------------------------------------------- from a mutation audit (2026-11-29)
# (each test below failed on a one-line mutant that every other test let through, and passes on the code)
def test_misaligned_and_idle_hooks_and_the_plan_cache_limit():
    """Mutants: misaligned() tested ptrs & 7 (a view 8 bytes off a 16-byte boundary passed as aligned, so a plan
    captured on aligned tensors replayed a kernel specialised on 16-byte alignment for it; --check's unaligned
    case is 2 bytes off); _idle() took any HookChain for idle (a replay then skipped a profiler's launch hooks);
    PlanCache.keep without its limit (a growing-length generation loop kept one plan per length forever)."""
    import torch
    from triton import knobs

    from fastgpt.kernels._common import PlanCache, _idle, misaligned
    t = torch.zeros(64, dtype=torch.bfloat16)
    assert not misaligned(t, None, t[8:])
    for k in (1, 2, 4):
        assert misaligned(t, t[k:]), k
    chain = knobs.HookChain()
    assert _idle(None) and _idle(chain)
    chain.add(lambda *a, **k: None)
    assert not _idle(chain)
    cache = PlanCache(2)
    for key in range(5):
        cache.keep(key, object())
        assert 1 <= len(cache) <= 2
    plan = object()
    cache.keep("k", plan)
    assert cache.find("k", lambda key: None) is plan and cache.find(None, lambda key: "new") == "new"


def test_autotune_key_has_the_tensor_dtypes():
    """Mutant: _tuning_key without the tensors' dtypes (Triton's own key has them): a config tuned for fp32 rows
    was launched for bf16 ones (and one that fits bf16's shared memory for fp32)."""
    import torch
    import triton
    import triton.language as tl

    from fastgpt.kernels import _common

    @triton.jit
    def copy(X, Y, M, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(Y + i, tl.load(X + i, mask=i < M), mask=i < M)

    tuner = _common._Autotuner(copy, [triton.Config({"BLOCK": 16})], key=[], prune=None, do_bench=None, bucket="M")
    f32, bf16 = torch.zeros(4), torch.zeros(4, dtype=torch.bfloat16)
    assert tuner._tuning_key((f32, f32, 8), {}) != tuner._tuning_key((bf16, bf16, 8), {})


def test_the_lean_launch_check_compares_every_argument_and_the_hooks():
    """Mutants in benchmarks/host_overhead.py's comparison (the oracle of test_lean_launch_matches_triton): _same
    took any two plain values of one type as equal, and _differing skipped the metadata and hook arguments even
    when a hook was set; either way --check passed a replay that passed the wrong values."""
    from triton import knobs

    from benchmarks.host_overhead import _C_ARGS, _differing
    base = (4, 1, 1, 0, 7, False, False, None, None, "packed", None, None, None, 16, 0.5, None)
    assert _differing(base, base) == []
    for i, v in ((0, 5), (13, 17), (14, 0.25), (13, 16.0)):
        got = list(base)
        got[i] = v
        assert _differing(base, tuple(got)) == [i], (i, v)
    chain = knobs.HookChain()
    chain.add(lambda *a, **k: None)
    got = list(base)
    got[_C_ARGS.index("enter_hook")] = chain
    assert _differing(base, tuple(got)) == [_C_ARGS.index("enter_hook")]


def test_host_time_table_figures(monkeypatch, capsys):
    """Mutants in host_overhead's timing mode: the row's us per call taken over all ``number`` calls, the max of the
    repeats for their min, and 'saved' as lean / triton for 1 - lean / triton: test_host_time_table_has_every_op
    checks that each row ends in a %, not its figures. Here a clock each call moves by 4 us on triton's path and
    1 us on the lean one, plus 50 us on the first timed call (a noisy first repeat): 4.0, 1.0 and 75 % saved."""
    from benchmarks import host_overhead
    from fastgpt.kernels import _common
    monkeypatch.setattr(_common, "LEAN_LAUNCH", _common.LEAN_LAUNCH)   # (timing sets it)
    clock, timed = [0], []

    def call():
        clock[0] += 1000 if _common.LEAN_LAUNCH else 4000

    def case():
        call()
        timed.append(1)
        if len(timed) == 3:   # the first timed call (after the 2 warm-up calls)
            clock[0] += 50_000
    monkeypatch.setattr(host_overhead, "_setup", lambda cuda: ({"op": case}, lambda: None, lambda: clock[0]))
    host_overhead.timing(repeats=2, number=2)
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.split() == ["op", "4.0", "1.0", "75%"], row


# ----------------------------------------------------------------------------- a mutation audit's cases
# (a mutation audit of ops.py and kernels/_common.py, 2026-11-30: each of these passed every test when broken)


def test_plan_key_has_dtype_strides_and_device_and_refuses_subclasses(monkeypatch):
    """Mutants: plan_key without the dtype, the strides or the device (a replay plan captured for one tensor
    replayed its launch for another: a kernel compiled for bf16 on fp32 data, a row stride baked into the
    launch for a differently strided view, another GPU's pointers), or keying any Tensor subclass. Under the
    interpreter the lean path is off and no test reached plan_key's fields; host_overhead --check repeats
    each signature unchanged."""
    from fastgpt.kernels import _common
    monkeypatch.setattr(_common, "LEAN_LAUNCH", True)
    a = torch.zeros(4, 8)
    key = _common.plan_key(a, None)
    assert key == _common.plan_key(torch.ones(4, 8), None)           # same signature, other values
    assert key != _common.plan_key(a.half(), None)                    # dtype
    assert key != _common.plan_key(torch.zeros(8, 4).t(), None)        # same shape (4, 8), strides (1, 4)
    assert key != _common.plan_key(torch.zeros(4, 16)[:, :8], None)    # same shape, row stride 16
    assert key != _common.plan_key(torch.zeros(4, 8, device="meta"), None)   # device
    assert key != _common.plan_key(a, a)                               # None-ness
    assert _common.plan_key(torch.nn.Parameter(a)) is not None

    class Sub(torch.Tensor):
        pass
    assert _common.plan_key(a.as_subclass(Sub)) is None
    monkeypatch.setattr(_common, "LEAN_LAUNCH", False)
    assert _common.plan_key(a) is None


def test_misaligned_looks_at_every_tensor():
    """Mutant: misaligned() kept only the last tensor's pointer (ptrs = instead of |=): a plan replayed its
    16-byte-aligned launch for a misaligned x whenever the last tensor (the bias) was aligned. The existing
    test puts the misaligned view last."""
    from fastgpt.kernels._common import misaligned
    t = torch.zeros(64, dtype=torch.bfloat16)
    assert misaligned(t[1:], t) and misaligned(t[1:], None) and misaligned(t, t[4:], t)
    assert not misaligned(None, None) and not misaligned(t[8:], t)


def test_autotuning_follows_the_environment_off_the_interpreter(monkeypatch):
    """Mutant: autotuning_enabled() defaulting FASTGPT_AUTOTUNE to '0': every GPU run launched each kernel's
    first config untuned (under the interpreter the answer is False either way, so no test saw it)."""
    from fastgpt.kernels import _common
    monkeypatch.setattr(_common, "INTERPRET", False)
    monkeypatch.delenv("FASTGPT_AUTOTUNE", raising=False)
    assert _common.autotuning_enabled() is True
    monkeypatch.setenv("FASTGPT_AUTOTUNE", "0")
    assert _common.autotuning_enabled() is False
    monkeypatch.setenv("FASTGPT_AUTOTUNE", "1")
    assert _common.autotuning_enabled() is True
    monkeypatch.setattr(_common, "INTERPRET", True)
    assert _common.autotuning_enabled() is False
