"""The benchmarks' CPU-checkable helpers (the benchmarks themselves need a GPU)."""
import pytest
import torch

from benchmarks import bench_attention


def test_attention_breakdown_line():
    times = {"_attn_bwd_dkdv_kernel": 0.2, "_attn_fwd_kernel": 0.1, "_attn_bwd_delta_kernel": 0.02,
             "_attn_bwd_dq_kernel": 0.15, "Memset (Device)": 0.01}
    line = bench_attention.format_breakdown(times, {"fwd": "(128,64,8,3)"})
    assert line == ("kernels ms: dkdv 0.200, dq 0.150, fwd 0.100, delta 0.020, other 0.010, sum 0.480; "
                    "fwd=(128,64,8,3)")


def test_profiler_kernel_times_on_cpu():
    a = torch.randn(64, 64)
    times = bench_attention._kernel_times(lambda: a @ a, iters=3, device="cpu")
    assert any("mm" in name for name in times) and all(ms >= 0 for ms in times.values())


def test_autotuner_configs_readout(monkeypatch):
    """The picks are read from fastgpt's _Autotuner as (BLOCK_M,BLOCK_N,warps,stages)."""
    triton = pytest.importorskip("triton")
    from fastgpt.kernels import attention as A
    monkeypatch.setattr(A._attn_bwd_dq, "_tuned", {("key",): triton.Config({"BLOCK_M": 64, "BLOCK_N": 32},
                                                                           num_warps=4, num_stages=2)})
    monkeypatch.setattr(A._attn_fwd, "_tuned", {})
    monkeypatch.setattr(A._attn_bwd_dkdv, "_tuned", {})
    assert bench_attention._configs() == {"dq": "(64,32,4,2)"}
