"""Every Triton kernel compiles for an H100 (sm_90), checked on a machine without a GPU.

The CPU interpreter that runs the other kernel tests never type-checks or lowers
a kernel, so a kernel can pass all of them and still fail to compile for the
GPU (seen: a jit helper whose two return statements had different types). This
runs benchmarks/compile_report.py, which calls every launcher with Triton's
driver replaced by an sm_90 stand-in and compiles (ptxas from the triton wheel)
the first launch config of every autotune space, dropout on and off. It also
fails when a kernel needs more shared memory than an H100 has, and when an attention
kernel gets less than kernels/attention.py's smem_floor (the bound its autotuner prunes by).
"""
import re

from conftest import KERNELS, needs_triton, run_standin

pytestmark = needs_triton


def test_every_kernel_compiles_for_sm90():
    r = run_standin("benchmarks.compile_report", "--first")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert " 0 failure(s)" in r.stdout
    for kernel in KERNELS:
        assert kernel in r.stdout, f"{kernel} was not compiled"


def test_shards_split_the_launches():
    """--shard I/N compiles launches I, I + N, ...: two shards together cover every launch once."""
    counts = []
    for shard in ("0/2", "1/2"):
        r = run_standin("benchmarks.compile_report", "--only", "gelu", "--first", "--shard", shard, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        m = re.search(r"(\d+) launches compiled for sm_90 \(shard \d/2 of (\d+)\)", r.stdout)
        assert m, r.stdout[-500:]
        counts.append((int(m.group(1)), int(m.group(2))))
    (a, total), (b, total_b) = counts
    assert total == total_b and a + b == total and abs(a - b) <= 1
    r = run_standin("benchmarks.compile_report", "--shard", "2/2", timeout=60)
    assert r.returncode == 2 and "--shard must be I/N" in r.stderr


def test_report_verdicts_and_failure_count(monkeypatch, capsys):
    """Mutants: the shared-memory verdict (fits = True, or < for <=), the smem_floor one (floor_ok = True, fp32's
    4-byte elements read as 2) and the failure count: every real kernel fits, so the two tests above pass
    whatever these say. Here main() reports recorded compiles (no triton patched, nothing compiled): one at
    the H100's limit exactly, one a byte over it, attention kernels at and below their smem_floor, a compile
    error, and a kernel that triton's cache handed back twice (listed once)."""
    from types import SimpleNamespace

    from benchmarks import compile_report as CR
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("FASTGPT_AUTOTUNE", "0")   # (main sets it; restored after the test)
    k = lambda shared: SimpleNamespace(shared=shared)  # noqa: E731
    at_limit = k(CR.H100_SMEM)
    attn = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_D=64)
    # smem_floor: fwd 2 B * D 64 * 2 * 3 stages * BLOCK_N 128 = 98304; dkdv 4 B * 64 * 2 * (2 * 64 + 128) = 131072
    compiled = [("_layer_norm_fwd_kernel", "bf16", {"BLOCK_N": 1024}, 4, 1, at_limit),
                ("_layer_norm_fwd_kernel", "bf16", {"BLOCK_N": 1024}, 4, 1, at_limit),
                ("_bias_gelu_fwd_kernel", "bf16", {"BLOCK_N": 64}, 4, 1, k(CR.H100_SMEM + 1)),
                ("_attn_fwd_kernel", "bf16", attn, 4, 3, k(98304)),
                ("_attn_bwd_dkdv_kernel", "f32", attn, 4, 2, k(131071)),
                ("_attn_bwd_dq_kernel", "bf16", attn, 4, 3, RuntimeError("boom"))]

    class Recorded:
        rows, launches = [], 0

        def __init__(self, all_configs, shard):
            pass

        def install(self):
            pass
    monkeypatch.setattr(CR, "Recorder", Recorded)
    monkeypatch.setattr(CR, "_families", lambda only: [("fake", lambda: Recorded.rows.extend(compiled))])
    monkeypatch.setattr(CR, "_resources", lambda kernel, sass: dict(regs=40, stack=0, shared=kernel.shared))
    assert CR.main(["--first"]) == 1
    lines = capsys.readouterr().out.splitlines()
    verdict = {ln.split()[0]: ln for ln in lines[1:-1]}
    assert len(lines) == 7 and lines[-1] == "compile_report: 6 launches compiled for sm_90, 3 failure(s)", lines
    assert verdict["_layer_norm_fwd_kernel"].endswith("  227.0  ok")
    assert verdict["_bias_gelu_fwd_kernel"].endswith("  TOO MUCH SHARED MEMORY")
    assert verdict["_attn_fwd_kernel"].endswith("   96.0  ok")
    assert verdict["_attn_bwd_dkdv_kernel"].endswith("  BELOW attention.smem_floor (131072 B)")
    assert "COMPILE ERROR: RuntimeError: boom" in verdict["_attn_bwd_dq_kernel"]
