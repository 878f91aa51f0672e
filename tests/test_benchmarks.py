"""The benchmarks' CPU-checkable helpers (the benchmarks themselves need a GPU), and a check that
every module's code only uses names that exist."""
import pytest
import torch

from benchmarks import bench_attention


def test_attention_breakdown_line():
    times = {"_attn_bwd_dkdv_kernel": 0.2, "_attn_fwd_kernel": 0.1, "_attn_bwd_dq_kernel": 0.15,
             "Memset (Device)": 0.01, "elementwise_kernel": 0.02}
    line = bench_attention.format_breakdown(times, {"fwd": "(128,64,8,3)"})
    assert line == ("kernels ms: dkdv 0.200, dq 0.150, fwd 0.100, other 0.030, sum 0.480; "
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


def _names(code, ops):
    """The names the code object (and every function, lambda and class body inside it) uses with ops."""
    import dis
    import types
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ops}
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _names(c, ops)
    return names


def _undefined(module_name):
    """Globals the module's code loads that neither the module, its module or class bodies
    (STORE_NAME: e.g. under `if __name__ == "__main__"`), nor builtins define."""
    import builtins
    import importlib
    mod = importlib.import_module(module_name)
    with open(mod.__file__) as f:
        code = compile(f.read(), mod.__file__, "exec")
    stored = _names(code, ("STORE_NAME",)) | {"__file__", "__name__"}
    return sorted(n for n in _names(code, ("LOAD_GLOBAL", "LOAD_NAME")) - stored
                  if not hasattr(mod, n) and not hasattr(builtins, n))


def _python_modules():
    import pkgutil
    import fastgpt
    import fastgpt.kernels
    import benchmarks
    mods = []
    for pkg in (fastgpt, fastgpt.kernels, benchmarks):
        mods += [m.name for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + ".")
                 if m.name not in ("fastgpt._C", "benchmarks.__main__")]   # an extension; runs on import
    return mods


@pytest.mark.parametrize("name", _python_modules())
def test_modules_resolve_every_global(name):
    """Much of the benchmarks and of the GPU branches only runs on a GPU: at least every global
    name their functions use must exist (a helper lost in an edit would surface only there)."""
    if name.startswith("fastgpt.kernels") or name == "benchmarks.compile_report":
        pytest.importorskip("triton")
    missing = _undefined(name)
    assert not missing, f"{name} uses undefined names: {missing}"
