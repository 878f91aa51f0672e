"""fastgpt.ops dispatch: backend precedence, clear errors, and life without triton."""
import os
import subprocess
import sys

import pytest
import torch

import fastgpt.ops as ops
from conftest import DEVICE, HAS_CUDA, HAS_TRITON
from fastgpt import backend as be
from fastgpt import reference


def test_precedence(monkeypatch):
    assert be.requested_backend(None) is None
    monkeypatch.setenv("FASTGPT_BACKEND", "reference")
    assert be.requested_backend(None) == "reference"
    assert be.requested_backend("fused") == "fused"           # the argument wins over the environment
    assert be.resolve(None, "cuda", lambda d: None) == "reference"
    monkeypatch.delenv("FASTGPT_BACKEND")
    assert be.resolve(None, "cuda", lambda d: None) == "fused"  # device decides last
    assert be.resolve(None, "cpu", lambda d: None) == "reference"


def test_bad_backend_names(monkeypatch):
    with pytest.raises(ValueError, match="backend must be"):
        ops.layer_norm(torch.randn(2, 4), torch.ones(4), backend="triton")
    monkeypatch.setenv("FASTGPT_BACKEND", "fast")
    with pytest.raises(ValueError, match="FASTGPT_BACKEND"):
        ops.layer_norm(torch.randn(2, 4), torch.ones(4))


def test_explicit_fused_unavailable_is_a_clear_error():
    with pytest.raises(RuntimeError, match="fused backend unavailable: no reason"):
        be.resolve("fused", "cpu", lambda d: "no reason")


def test_auto_on_cuda_without_triton_falls_back_with_warning():
    with pytest.warns(RuntimeWarning, match="reference path on CUDA"):
        assert be.resolve(None, "cuda", lambda d: "triton missing (test)") == "reference"


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_env_selects_fused(monkeypatch):
    x = torch.randn(3, 16, device=DEVICE)
    w = torch.randn(16, device=DEVICE)
    monkeypatch.setenv("FASTGPT_BACKEND", "fused")
    y = ops.layer_norm(x, w)
    torch.testing.assert_close(y, reference.layer_norm(x, w))


def _run(code, env_extra=None, drop=("TRITON_INTERPRET", "FASTGPT_BACKEND")):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_import_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, fastgpt, fastgpt.ops as ops\n"
            "x = torch.randn(2, 4)\n"
            "print(tuple(ops.layer_norm(x, torch.ones(4)).shape))\n"
            "try:\n    ops.bias_gelu(x, backend='fused')\n"
            "except RuntimeError as e:\n    print('ERR', e)\n")
    p = _run(code)
    assert p.returncode == 0, p.stderr
    assert "(2, 4)" in p.stdout
    assert "ERR fastgpt: fused backend unavailable" in p.stdout and "triton" in p.stdout


@pytest.mark.skipif(HAS_CUDA or not HAS_TRITON, reason="CPU-only machine with triton")
def test_fused_on_cpu_without_interpreter_says_why():
    code = ("import torch, fastgpt.ops as ops\n"
            "try:\n    ops.layer_norm(torch.randn(2, 4), torch.ones(4), backend='fused')\n"
            "except RuntimeError as e:\n    print('ERR', e)\n")
    p = _run(code)
    assert p.returncode == 0, p.stderr
    assert "needs a CUDA GPU" in p.stdout and "TRITON_INTERPRET=1" in p.stdout


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_kernels_on_cpu_tensors_without_interpreter_say_why():
    """fastgpt.kernels called directly with CPU tensors (no interpreter): a ValueError naming the fix,
    not Triton's "0 active drivers" (on a CPU-only machine) or a pointer error (on a GPU one)."""
    code = ("import torch, fastgpt.kernels as K\n"
            "x, w, t = torch.randn(4, 16), torch.ones(16), torch.zeros(4, dtype=torch.long)\n"
            "q = torch.randn(1, 1, 4, 16)\n"
            "for f, a in ((K.layer_norm, (x, w)), (K.add_layer_norm, (x, x, w)), (K.bias_gelu, (x,)),\n"
            "             (K.causal_attention, (q, q, q)), (K.fused_linear_cross_entropy, (x, x, t))):\n"
            "    try:\n        f(*a)\n    except ValueError as e:\n        print('ERR', e)\n")
    p = _run(code)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 5 and all("needs a CUDA GPU" in ln and "TRITON_INTERPRET=1" in ln for ln in lines), p.stdout


@pytest.mark.parametrize("name", ops.__all__)
def test_every_contract_op_exists_in_reference(name):
    assert callable(getattr(ops, name)) and callable(getattr(reference, name))


def test_reference_attention_alignment_and_mean_of_nothing():
    q = torch.randn(1, 1, 2, 8)
    k = torch.randn(1, 1, 5, 8)
    v = torch.randn(1, 1, 5, 8)
    o = reference.causal_attention(q, k, v)
    # bottom-right: the last query sees every key, the one before it all but the last
    s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    p_last = torch.softmax(s[..., 1, :], -1)
    torch.testing.assert_close(o[..., 1, :], p_last @ v[0, 0])
    p_first = torch.softmax(s[..., 0, :4], -1)
    torch.testing.assert_close(o[..., 0, :], p_first @ v[0, 0, :4])
    with pytest.raises(ValueError, match="exceeds key length"):
        reference.causal_attention(k, q, q)
    h = torch.randn(3, 8, requires_grad=True)
    W = torch.randn(11, 8)
    loss = reference.fused_linear_cross_entropy(h, W, torch.full((3,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(h.grad, torch.zeros_like(h))


@pytest.mark.parametrize("p", [1.0, 1.5, -0.5])
def test_reference_dropout_p_out_of_range_is_an_error(p):
    """The reference refuses what the fused ops refuse (p = 1 used to give NaN, others passed silently)."""
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="dropout_p must be in"):
        ops.causal_attention(q, q, q, dropout_p=p, backend="reference")
    with pytest.raises(ValueError, match="dropout_p must be in"):
        ops.bias_dropout_add(q, None, q, p, backend="reference")


def test_compare_op_catches_a_wrong_or_missing_backward():
    """The shared comparison (tests and selftest) fails a fused op whose forward is right but whose
    gradient is wrong, or whose output carries no gradient at all (it used to skip the backward)."""
    from fastgpt.testing import compare_op
    x, w = torch.randn(6, 32), torch.randn(32)
    ref = lambda x, w: reference.layer_norm(x, w)  # noqa: E731

    class WrongGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            return reference.layer_norm(x, w)

        @staticmethod
        def backward(ctx, g):
            return g, g.sum(0)  # not LayerNorm's gradient

    assert all(c.ok for c in compare_op("ln", ref, ref, [x, w]))
    assert not all(c.ok for c in compare_op("ln", WrongGrad.apply, ref, [x, w]))
    lost = compare_op("ln", lambda x, w: ref(x, w).detach(), ref, [x, w])
    assert [c.ok for c in lost] == [True, False] and "no gradient" in lost[1].name
