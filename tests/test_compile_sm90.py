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
