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
