"""The C++/CUDA extension op bias_dropout_add (fastgpt._C) against fastgpt.reference.

p = 0 is compared exactly (forward, dx, dresidual) and by the tolerance rule
(dbias: a reduction in another order). p > 0 is compared through the mask the
extension draws, which fastgpt.reference.dropout_keep_mask reproduces in pure
PyTorch from the same (seed, offset); plus the statistics of the mask.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from conftest import DEVICE, HAS_CUDA, fail_import, needs_cuda
from fastgpt import backend, extension, ops, reference
from fastgpt.testing import compare_op

ROOT = Path(__file__).resolve().parent.parent
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
SHAPES = [(1, 1), (3, 17), (2, 5, 64), (5, 768), (3, 1600), (7, 13)]
if HAS_CUDA:
    SHAPES += [(4096, 768), (1000, 1600), (8, 512, 3072), (333, 1001)]
shape_ids = lambda s: "x".join(map(str, s))  # noqa: E731
dt_ids = lambda d: "none" if d is None else str(d)[6:]  # noqa: E731
# (x dtype, residual dtype, bias dtype): same dtype everywhere, and autocast's fp32 residual / bias
DTYPES = [(F32, F32, F32), (F16, F16, F16), (BF16, BF16, BF16), (BF16, F32, F32), (F16, F32, F32),
          (BF16, BF16, F32), (F32, BF16, None)]
dtypes_ids = lambda t: "-".join(dt_ids(d) for d in t)  # noqa: E731


@pytest.fixture(scope="module", autouse=True)
def ext():
    """The extension, built or JIT-compiled; a machine with a C++ compiler must be able to build it."""
    mod = extension.load()
    if mod is None:
        reason = extension.unavailable_reason()
        off = os.environ.get("FASTGPT_EXTENSION", "auto").lower() in ("off", "0", "none")
        if extension._compiler() is not None and not off:
            pytest.fail(f"a C++ compiler exists but the extension did not load: {reason}")
        pytest.skip(reason)
    reason = extension.unavailable_reason(DEVICE)
    assert reason is None, reason
    return mod


def _assert(checks):
    bad = [str(c) for c in checks if not c.ok]
    assert not bad, "\n".join(bad)


def _inputs(shape, dtypes, device=DEVICE):
    xd, rd, bd = dtypes
    x = (torch.randn(shape, device=device) * 2).to(xd)
    r = torch.randn(shape, device=device).to(rd)
    b = None if bd is None else torch.randn(shape[-1], device=device).to(bd)
    return x, b, r


def _seed():
    return [int(v) for v in torch.randint(-2**63, 2**63 - 1, (2,))]


def _fused(seed):
    return lambda x, b, r, p: extension.bias_dropout_add(x, b, r, p, seed=seed)


def _ref(seed):
    def f(x, b, r, p):
        mask = reference.dropout_keep_mask(x.shape, p, *seed, device=x.device) if p > 0 else None
        return reference.bias_dropout_add(x, b, r, p, mask=mask)
    return f


# ----------------------------------------------------------------------------- Philox

# Known-answer vectors of Random123's kat_vectors for philox4x32_10: (counter, key) -> words.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    assert tuple(v & 0xFFFFFFFF for v in torch.ops.fastgpt._ext_philox4x32_10(*ctr, *key)) == want
    words = reference.philox4x32(*[torch.tensor([c], dtype=torch.int64) for c in ctr], *key)
    assert tuple(int(w) for w in words) == want


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1001])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_is_the_spec(numel, p):
    """The extension's mask equals reference.dropout_keep_mask, element for element."""
    seed = _seed()
    x = torch.ones(numel, device=DEVICE)
    out = extension.bias_dropout_add(x, None, torch.zeros_like(x), p, seed=seed)
    want = reference.dropout_keep_mask((numel,), p, *seed, device=DEVICE)
    assert torch.equal(out != 0, want)
    assert torch.equal(out[want], torch.full_like(out[want], 1 / (1 - p)))


# ----------------------------------------------------------------------------- values

@pytest.mark.parametrize("shape", SHAPES, ids=shape_ids)
@pytest.mark.parametrize("dtypes", DTYPES, ids=dtypes_ids)
def test_p0_exact(shape, dtypes):
    x, b, r = _inputs(shape, dtypes)
    _assert(compare_op("bda p=0", _fused(None), _ref(None), [x, b, r, 0.0]))
    # forward, dx and dresidual are exact: the same fp32 additions and casts as the reference
    xs, rs = x.clone().requires_grad_(), r.clone().requires_grad_()
    xr, rr = x.clone().requires_grad_(), r.clone().requires_grad_()
    out = extension.bias_dropout_add(xs, b, rs, 0.0)
    ref = reference.bias_dropout_add(xr, b, rr, 0.0)
    assert out.dtype == r.dtype and torch.equal(out, ref)
    g = torch.randn(shape, device=DEVICE).to(out.dtype)
    out.backward(g)
    ref.backward(g)
    assert torch.equal(xs.grad, xr.grad) and torch.equal(rs.grad, rr.grad)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_ids)
@pytest.mark.parametrize("dtypes", DTYPES[:5], ids=dtypes_ids)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_matches_reference_with_the_same_mask(shape, dtypes, p):
    x, b, r = _inputs(shape, dtypes)
    seed = _seed()
    _assert(compare_op(f"bda p={p}", _fused(seed), _ref(seed), [x, b, r, p]))


def _stale(*likes):
    """Fill, then free, a block the size of each tensor: CUDA's caching allocator hands it to the next
    allocation of that size, so an output element the op leaves unwritten reads as NaN (DESIGN.md's
    poisoned outputs, for outputs that C++ allocates). On the CPU malloc reuses it only sometimes
    (seen: the f32 outputs of the two larger shapes); there the reference comparison is the check."""
    for t in likes:
        torch.full_like(t, float("nan"))


@pytest.mark.parametrize("shape", [(7, 13), (3, 1600), (5, 8, 129)] + ([(333, 1001)] if HAS_CUDA else []),
                         ids=shape_ids)
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_every_output_element_is_written(shape, p):
    x, b, r = _inputs(shape, (BF16, F32, F32))
    seed = _seed()
    st = torch.tensor(seed, dtype=torch.int64)
    want = _ref(seed)(x, b, r, p)
    _stale(want)
    out = torch.ops.fastgpt.bias_dropout_add(x, b, r, p, st)
    assert not out.isnan().any()
    torch.testing.assert_close(out, want)
    g = torch.randn_like(r)
    xx, bb = x.clone().requires_grad_(), b.clone().requires_grad_()
    want_dx, want_db = torch.autograd.grad(_ref(seed)(xx, bb, r, p), (xx, bb), g)
    _stale(want_dx, want_db)
    dx, db = torch.ops.fastgpt.bias_dropout_add_bwd(g, st, p, x.dtype, b.dtype)
    assert not dx.isnan().any() and not db.isnan().any()
    torch.testing.assert_close(dx, want_dx)
    torch.testing.assert_close(db, want_db, rtol=1e-4, atol=1e-4 * x.shape[0])


@pytest.mark.parametrize("grad_mode", ["random", "sum"])
def test_gradient_values(grad_mode):
    """dx, dbias, dresidual against the reference (stride-0 upstream gradients included)."""
    x, b, r = _inputs((6, 40), (BF16, F32, F32))
    seed = _seed()
    _assert(compare_op("bda grads", _fused(seed), _ref(seed), [x, b, r, 0.2], grad_mode=grad_mode))


def test_backward_uses_the_forward_mask():
    x = torch.randn(33, 129, device=DEVICE).requires_grad_()
    b = torch.randn(129, device=DEVICE).requires_grad_()
    r = torch.zeros(33, 129, device=DEVICE, requires_grad=True)
    p = 0.3
    out = ops.bias_dropout_add(x, b, r, p, backend="fused")
    kept = out != 0
    assert 0 < kept.float().mean() < 1
    g = torch.randn_like(out)
    out.backward(g)
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    assert torch.equal(x.grad, torch.where(kept, g * scale, torch.zeros_like(g)))
    assert torch.equal(r.grad, g)
    torch.testing.assert_close(b.grad, x.grad.sum(0))


def test_kept_fraction_and_scale():
    n = 1 << 20
    x = torch.randn(n // 1024, 1024, device=DEVICE) + 5.0  # never 0, so a zero means dropped
    r = torch.zeros_like(x)
    for p in (0.1, 0.37):
        out = ops.bias_dropout_add(x, None, r, p, backend="fused")
        kept = out != 0
        frac = kept.double().mean().item()
        se = ((1 - p) * p / n) ** 0.5
        assert abs(frac - (1 - p)) < 5 * se, f"p={p}: kept {frac:.5f}, expected {1 - p} +- {5 * se:.5f}"
        # kept values are x / (1 - p) (one fp32 rounding: x * fp32(1 / (1 - p)))
        scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
        assert torch.equal(out[kept], x[kept] * scale)
        # neighbouring elements and rows are not correlated: each 8-element group draws 8 fresh values
        k = kept.float()
        corr = ((k[:, 1:] - k.mean()) * (k[:, :-1] - k.mean())).mean() / k.var()
        assert abs(corr.item()) < 0.02


def test_seeds():
    x, b, r = _inputs((9, 100), (F32, F32, F32))
    s1, s2 = _seed(), _seed()
    o1 = extension.bias_dropout_add(x, b, r, 0.5, seed=s1)
    assert torch.equal(o1, extension.bias_dropout_add(x, b, r, 0.5, seed=s1))
    assert not torch.equal(o1, extension.bias_dropout_add(x, b, r, 0.5, seed=s2))
    # the offset alone changes the stream too
    assert not torch.equal(o1, extension.bias_dropout_add(x, b, r, 0.5, seed=(s1[0], s1[1] + 1)))
    # a seed tensor on the device, or the pair: the same mask
    st = torch.tensor(s1, dtype=torch.int64, device=DEVICE)
    assert torch.equal(o1, extension.bias_dropout_add(x, b, r, 0.5, seed=st))
    # by default the seed comes from torch's generator: manual_seed reproduces, the next call differs
    torch.manual_seed(1234)
    d1 = ops.bias_dropout_add(x, b, r, 0.5, backend="fused")
    d2 = ops.bias_dropout_add(x, b, r, 0.5, backend="fused")
    torch.manual_seed(1234)
    assert torch.equal(d1, ops.bias_dropout_add(x, b, r, 0.5, backend="fused"))
    assert not torch.equal(d1, d2)
    g = torch.Generator(device=DEVICE).manual_seed(7)
    e1 = extension.bias_dropout_add(x, b, r, 0.5, generator=g)
    g.manual_seed(7)
    assert torch.equal(e1, extension.bias_dropout_add(x, b, r, 0.5, generator=g))


def test_p0_draws_no_randomness():
    x, b, r = _inputs((4, 24), (F32, F32, F32))
    states = lambda: [torch.get_rng_state()] + ([torch.cuda.get_rng_state()] if HAS_CUDA else [])  # noqa: E731
    before = states()
    out = ops.bias_dropout_add(x, b, r, 0.0, backend="fused")
    assert all(torch.equal(a, z) for a, z in zip(before, states()))
    assert torch.equal(out, reference.bias_dropout_add(x, b, r, 0.0))


@pytest.mark.parametrize("shape", [(257, 384)] + ([(16384, 768), (4096, 1001)] if HAS_CUDA else []),
                         ids=shape_ids)
def test_dbias_is_deterministic(shape):
    """On CUDA the last block of each column tile to finish sums the tile's partials, in an order
    that does not depend on which block that is: bitwise the same dbias every run (16384 x 768:
    hundreds of row groups; N = 1001: the scalar paths)."""
    x, b, r = _inputs(shape, (BF16, F32, F32))
    seed = _seed()
    g = torch.randn(shape, device=DEVICE)
    keep = reference.dropout_keep_mask(shape, 0.1, *seed, device=DEVICE)
    want = (g.double() * keep / 0.9).sum(0)

    def dbias(grad):
        bb = b.clone().requires_grad_()
        extension.bias_dropout_add(x, bb, r, 0.1, seed=seed).backward(grad)
        return bb.grad

    grads = []
    for _ in range(3):
        grads.append(dbias(g))
        dbias(-2 * g)  # in between, other partials in the (likely reused) workspace
        torch.testing.assert_close(grads[-1].double(), want, rtol=1e-4, atol=1e-5 * shape[0])
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_empty_and_bias_only_grad():
    x, b, r = _inputs((0, 16), (F32, F32, F32))
    b.requires_grad_()
    out = extension.bias_dropout_add(x, b, r, 0.1, seed=(1, 2))
    out.sum().backward()
    assert out.shape == (0, 16) and torch.equal(b.grad, torch.zeros_like(b))
    x, b, r = _inputs((3, 16), (F32, F32, F32))
    b.requires_grad_()
    extension.bias_dropout_add(x, b, r, 0.1, seed=(1, 2)).sum().backward()
    keep = reference.dropout_keep_mask((3, 16), 0.1, 1, 2, device=DEVICE)
    torch.testing.assert_close(b.grad, (keep.float() / 0.9).sum(0))


# ----------------------------------------------------------------------------- torch integration

@pytest.mark.parametrize("p", [0.0, 0.25])
@pytest.mark.parametrize("has_bias", [True, False])
def test_opcheck(p, has_bias):
    x = torch.randn(3, 40, device=DEVICE, requires_grad=True)
    b = torch.randn(40, device=DEVICE, requires_grad=True) if has_bias else None
    r = torch.randn(3, 40, device=DEVICE, requires_grad=True)
    seed = torch.tensor(_seed(), device=DEVICE) if p > 0 else None
    torch.library.opcheck(torch.ops.fastgpt.bias_dropout_add.default, (x, b, r, p, seed))
    g = torch.randn(3, 40, device=DEVICE)
    torch.library.opcheck(torch.ops.fastgpt.bias_dropout_add_bwd.default,
                          (g, seed, p, torch.bfloat16, torch.float32 if has_bias else None))


def test_a_meta_seed_in_a_direct_op_call_is_refused():
    """Meta outranks CPU in the dispatcher: a direct op call with real tensors and a meta seed ran the fake
    implementation, which returned uninitialised memory (forward and backward); now the seed check."""
    x = torch.ones(2, 8, device=DEVICE)
    meta_seed = torch.zeros(2, dtype=torch.int64, device="meta")
    with pytest.raises(ValueError, match=f"seed is on meta but x is on {x.device}"):
        torch.ops.fastgpt.bias_dropout_add(x, None, x, 0.5, meta_seed)
    with pytest.raises(ValueError, match="seed is on meta but x is on"):
        torch.ops.fastgpt.bias_dropout_add_bwd(x, meta_seed, 0.5, torch.float32, None)


@needs_cuda
def test_a_seed_pair_costs_no_device_sync():
    """A (seed, offset) pair became a CUDA tensor (a blocking host-to-device copy each call, an error inside
    a CUDA-graph capture); the kernels read a CPU seed by value."""
    x = torch.randn(4, 64, device="cuda")
    want = extension.bias_dropout_add(x, None, x, 0.25, seed=torch.tensor([3, 4], device="cuda"))
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = extension.bias_dropout_add(x, None, x, 0.25, seed=(3, 4))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got, want)


def test_compile_fullgraph():
    """torch.compile sees no graph break: the seed is drawn by torch.randint inside the graph."""
    compile_backend = "inductor" if HAS_CUDA else "aot_eager"
    x = torch.randn(8, 64, device=DEVICE, requires_grad=True)
    b = torch.randn(64, device=DEVICE, requires_grad=True)
    r = torch.randn(8, 64, device=DEVICE, requires_grad=True)
    f = lambda x, b, r: ops.bias_dropout_add(x, b, r, 0.2, backend="fused") * 2  # noqa: E731
    cf = torch.compile(f, fullgraph=True, backend=compile_backend)
    torch.manual_seed(5)
    out = cf(x, b, r)
    g = torch.randn_like(out)
    gx, gb, gr = torch.autograd.grad(out, (x, b, r), g)
    kept = (out - 2 * r) != 0
    assert torch.equal(gx != 0, kept)  # the backward replays the forward's mask
    torch.testing.assert_close(gr, 2 * g)
    if compile_backend == "aot_eager":  # the same RNG draws as eager: the same result
        torch.manual_seed(5)
        ref = f(x, b, r)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        torch.testing.assert_close(gx, torch.autograd.grad(ref, x, g)[0])


def test_reference_dropout_compiles_with_dynamic_shapes():
    """The reference ops' dropout (torch's RNG) under torch.compile(dynamic=True): passing generator=None
    to torch.rand there was an error; the draws are eager's, so the results are too."""
    f = lambda x, b, r: reference.bias_dropout_add(x, b, r, 0.3)  # noqa: E731
    g = lambda q: reference.causal_attention(q, q, q, dropout_p=0.3)  # noqa: E731
    cf = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    cg = torch.compile(g, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (5, 9):
        x, b, q = torch.randn(n, 16), torch.randn(16), torch.randn(1, 2, n, 8)
        for fn, cfn, args in ((f, cf, (x, b, x)), (g, cg, (q,))):
            torch.manual_seed(n)
            out = cfn(*args)
            torch.manual_seed(n)
            torch.testing.assert_close(out, fn(*args), rtol=0, atol=0)


def test_activation_checkpointing_replays_the_mask():
    from torch.utils.checkpoint import checkpoint
    x = torch.randn(16, 48, device=DEVICE, requires_grad=True)
    b = torch.randn(48, device=DEVICE, requires_grad=True)
    r = torch.randn(16, 48, device=DEVICE, requires_grad=True)
    f = lambda x, b, r: torch.tanh(ops.bias_dropout_add(x, b, r, 0.5, backend="fused"))  # noqa: E731
    torch.manual_seed(11)
    out = f(x, b, r)
    want = torch.autograd.grad(out.sum(), (x, b, r))
    torch.manual_seed(11)
    out_ck = checkpoint(f, x, b, r, use_reentrant=False)
    got = torch.autograd.grad(out_ck.sum(), (x, b, r))
    assert torch.equal(out, out_ck)
    for w, gt in zip(want, got):
        assert torch.equal(w, gt)


# ----------------------------------------------------------------------------- dispatch and errors

@pytest.mark.parametrize("case,exc,msg", [
    ("shape", ValueError, "differ"),
    ("p", ValueError, "dropout_p"),
    ("p near 1", ValueError, r"dropout_p 0.9999 is above 0.999237"),
    ("dtype", TypeError, "dtype"),
    ("bias", ValueError, "bias must have shape"),
    ("device", ValueError, "different devices"),
])
def test_bad_input(case, exc, msg):
    x = torch.randn(2, 8, device=DEVICE)
    r = torch.randn(2, 8, device=DEVICE)
    with pytest.raises(exc, match=msg):
        if case == "shape":
            extension.bias_dropout_add(x, None, r[:1], 0.1)
        elif case == "p":
            extension.bias_dropout_add(x, None, r, 1.0)
        elif case == "p near 1":   # its 16-bit threshold kept 1/65536 there, and dropped all from 1 - 2^-17
            extension.bias_dropout_add(x, None, r, 0.9999)
        elif case == "dtype":
            extension.bias_dropout_add(x.double(), None, r, 0.1)
        elif case == "bias":
            extension.bias_dropout_add(x, torch.ones(9, device=DEVICE), r, 0.1)
        elif case == "device":
            extension.bias_dropout_add(x, torch.ones(8, device="meta" if DEVICE == "cpu" else "cpu"), r, 0.1)


def check_op_level_errors(device):
    """Direct op calls reach the C++ checks: each raises its intended error kind and message."""
    extension.load()
    x = torch.randn(2, 8, device=device)
    with pytest.raises(ValueError, match="needs a seed"):
        torch.ops.fastgpt.bias_dropout_add(x, None, x, 0.5, None)
    with pytest.raises(TypeError, match="dtype"):
        torch.ops.fastgpt.bias_dropout_add(x.double(), None, x.double(), 0.0, None)
    # every message that holds a number, word for word: on the GPU machine each of these died in SIGSEGV
    # while the messages without numbers raised (ext_diag.sh, 2026-11-29; csrc/binding.cpp's Num)
    seed = torch.zeros(2, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match=r"shape \(2,\) = \(seed, offset\), got 1 dims and 3 elements$"):
        torch.ops.fastgpt.bias_dropout_add(x, None, x, 0.5, torch.zeros(3, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match=r"dropout_p must be a number in \[0, 1\), got 1.5$"):
        torch.ops.fastgpt.bias_dropout_add(x, None, x, 1.5, seed)
    with pytest.raises(ValueError, match=r"dropout_p 0.9999 is above 0.999237"):
        torch.ops.fastgpt.bias_dropout_add(x, None, x, 0.9999, seed)
    with pytest.raises(ValueError, match=r"shapes differ \(2 dims, 16 elements vs 2 dims, 8 elements\)$"):
        torch.ops.fastgpt.bias_dropout_add(x, None, x[:1], 0.5, seed)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\), got 1 dims and 9 elements$"):
        torch.ops.fastgpt.bias_dropout_add(x, torch.ones(9, device=device), x, 0.5, seed)


def test_op_level_errors_are_clear():
    """The C++ checks raise the same kinds of errors as the Python wrapper. On CUDA the calls
    run in a child process: there they once killed the process (a segfault on the H100,
    RESULTS.md run 3), and a crash must fail this test, not end the run of this file."""
    if DEVICE == "cpu":
        check_op_level_errors(DEVICE)
        return
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
            f"import test_dropout_add as t; t.check_op_level_errors({DEVICE!r}); print('checked')")
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "checked" in r.stdout, (
        f"exit status {r.returncode} (negative: killed by that signal)\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_eager_path_equals_the_custom_op_path(p):
    """The eager torch.autograd.Function and the registered custom op: the same outputs and grads."""
    x, b, r = _inputs((7, 40), (BF16, F32, F32))
    res = []
    for path in ("eager", "op"):
        xx, bb, rr = (t.clone().requires_grad_() for t in (x, b, r))
        torch.manual_seed(21)  # the same seed drawn on both paths
        out = extension.bias_dropout_add(xx, bb, rr, p, _path=path)
        # each path is the one asked for: the eager Function's node, or the custom op's own
        assert (type(out.grad_fn) is extension._BiasDropoutAdd._backward_cls) == (path == "eager"), out.grad_fn
        out.backward(torch.randn_like(out, generator=torch.Generator(DEVICE).manual_seed(2)))
        res.append((out, xx.grad, bb.grad, rr.grad))
        # a call with nothing to differentiate takes the kernel-only branch
        torch.manual_seed(21)
        assert torch.equal(extension.bias_dropout_add(x, b, r, p, _path=path), out.detach())
    for e, o in zip(*res):
        assert e.dtype == o.dtype and torch.equal(e, o)
    if p > 0:
        assert (res[0][1] == 0).any()  # some elements were dropped


def test_bad_seed_is_caught_before_the_op():
    x = torch.randn(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        extension.bias_dropout_add(x, None, x, 0.5, seed=torch.zeros(3, dtype=torch.int64, device=DEVICE))
    with pytest.raises(TypeError, match="int64"):
        extension.bias_dropout_add(x, None, x, 0.5, seed=torch.zeros(2, dtype=torch.int32, device=DEVICE))


def test_ops_dispatch():
    x, b, r = _inputs((4, 32), (F32, F32, F32))
    torch.manual_seed(3)
    fused = ops.bias_dropout_add(x, b, r, 0.5, backend="fused")
    torch.manual_seed(3)
    assert torch.equal(fused, extension.bias_dropout_add(x, b, r, 0.5))
    if not HAS_CUDA:  # auto on CPU is the reference (torch's RNG)
        torch.manual_seed(3)
        auto = ops.bias_dropout_add(x, b, r, 0.5)
        torch.manual_seed(3)
        assert torch.equal(auto, reference.bias_dropout_add(x, b, r, 0.5))


def test_unavailable_extension_falls_back_clearly(monkeypatch):
    """Without the extension: backend='fused' raises the reason, auto on CUDA warns once and uses the reference."""
    monkeypatch.setattr(extension, "_state",
                        {"module": None, "reason": "no C++ compiler (test)", "how": None})
    x, b, r = _inputs((2, 8), (F32, F32, F32), device="cpu")
    with pytest.raises(RuntimeError, match="fastgpt._C is off: no C\\+\\+ compiler"):
        ops.bias_dropout_add(x, b, r, 0.1, backend="fused")
    assert torch.equal(ops.bias_dropout_add(x, b, r, 0.0), reference.bias_dropout_add(x, b, r, 0.0))
    backend._warn_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert backend.resolve(None, "cuda", fused_reason=ops._extension_reason) == "reference"
    with warnings_as_errors():  # once: the second call is silent
        assert backend.resolve(None, "cuda", fused_reason=ops._extension_reason) == "reference"


def test_a_stale_prebuilt_serves_when_no_jit_build_is_possible():
    """auto mode skips a prebuilt module older than csrc/ for a JIT build; when that build cannot run (no
    compiler, ninja or nvcc), the prebuilt one is used as it is, with a warning, rather than none at all."""
    import importlib.util
    if importlib.util.find_spec("fastgpt._C") is None:
        pytest.skip("no prebuilt fastgpt._C")
    code = ("import warnings, fastgpt.extension as e\n"
            "e._stale = lambda path: True\n"
            "e._jit_build = lambda: (None, 'no C++ compiler (test)')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    mod, reason, how = e._load()\n"
            "assert mod is not None and reason is None and how == 'prebuilt', (mod, reason, how)\n"
            "msg = str(w[0].message)\n"
            "assert 'older than csrc/ and a JIT build failed (no C++ compiler (test))' in msg, msg\n")
    env = dict(os.environ, FASTGPT_EXTENSION="auto")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_no_jit_build_beside_a_library_that_registered_the_ops_and_did_not_import():
    """A prebuilt .so that loads but does not import (a broken build: no PyInit__C) has registered the operators
    by then; a JIT module registering them again aborted the process (c10::Error, no Python traceback). The
    extension is off instead, saying why."""
    code = ("import importlib.util, torch, fastgpt.extension as e\n"
            "lib = torch.library.Library('fastgpt', 'DEF')\n"
            "lib.define('bias_dropout_add(Tensor x) -> Tensor')\n"
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda n, *a: None if n == 'fastgpt._C' else real(n, *a)\n"
            "e._jit_build = lambda: (_ for _ in ()).throw(AssertionError('built'))\n"
            "mod, reason, how = e._load()\n"
            "assert mod is None and 'registered already, by a library that did not import' in reason, reason\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, FASTGPT_EXTENSION="auto"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


class warnings_as_errors:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *a):
        return self._cm.__exit__(*a)


def test_jit_build_reports_a_missing_compiler(monkeypatch):
    monkeypatch.setattr(extension, "_compiler", lambda: None)
    mod, reason = extension._jit_build()
    assert mod is None and "no C++ compiler" in reason


def test_import_fastgpt_does_not_load_the_extension():
    code = ("import sys, fastgpt, fastgpt.ops; "
            "assert 'fastgpt._C' not in sys.modules and 'fastgpt.extension' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_source_compiles_for_sm90(tmp_path):
    """The .cu includes no torch headers, so a bare nvcc compiles it: CUDA syntax and ptxas
    resource errors (registers, shared memory, spills) fail CI without a GPU."""
    cmd = ["nvcc", "-c", "-arch=sm_90", "-O3", "-std=c++17", "-Xptxas", "-warn-spills,-Werror",
           # the flags torch.utils.cpp_extension passes: no implicit half/bf16 conversions
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
           "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
           str(ROOT / "csrc" / "dropout_add_cuda.cu"), "-o", str(tmp_path / "dropout_add_cuda.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


# ----------------------------------------------------------------------------- GPU only

@needs_cuda
@pytest.mark.parametrize("dtypes", [(F32, F32, F32), (BF16, F32, F32), (BF16, BF16, BF16)], ids=dtypes_ids)
@pytest.mark.parametrize("shape", [(5, 768), (333, 1001), (64, 3072)], ids=shape_ids)
def test_cpu_and_cuda_give_the_same_mask(dtypes, shape):
    x, b, r = _inputs(shape, dtypes, device="cpu")
    seed = _seed()
    out_cpu = extension.bias_dropout_add(x, b, r, 0.1, seed=seed)
    out_gpu = extension.bias_dropout_add(x.cuda(), None if b is None else b.cuda(), r.cuda(), 0.1, seed=seed)
    ones = torch.ones(shape)
    m_cpu = extension.bias_dropout_add(ones, None, torch.zeros(shape), 0.1, seed=seed) != 0
    m_gpu = extension.bias_dropout_add(ones.cuda(), None, torch.zeros(shape, device="cuda"), 0.1, seed=seed) != 0
    assert torch.equal(m_cpu, m_gpu.cpu())
    # values agree up to one rounding of the fp32 multiply-add (the GPU may fuse it)
    torch.testing.assert_close(out_gpu.cpu(), out_cpu)


def test_misaligned_and_strided_inputs():
    """Views that start mid-vector (copied for the 16-byte loads) and strided views give the spec's result."""
    M, N = 9, 64
    x = torch.randn(M * N + 1, device=DEVICE)[1:].view(M, N)        # contiguous, misaligned
    r = torch.randn(M, 2 * N, device=DEVICE)[:, ::2]                 # strided
    b = torch.randn(N + 1, device=DEVICE)[1:]                        # misaligned bias
    seed = _seed()
    _assert(compare_op("bda views", _fused(seed), _ref(seed), [x, b, r, 0.3]))
    # the views themselves too, forward and backward, each gradient read on its base
    outs, grads = [], []
    for f in (_fused(seed), _ref(seed)):
        views = [t.detach().clone().requires_grad_() for t in (x._base, r._base, b._base)]
        xv, rv, bv = views[0][1:].view(M, N), views[1][:, ::2], views[2][1:]
        outs.append(f(xv, bv, rv, 0.3))
        outs[-1].backward(torch.ones_like(outs[-1]))
        grads.append([v.grad for v in views])
    torch.testing.assert_close(outs[0], outs[1])
    for ours, want in zip(*grads):
        torch.testing.assert_close(ours, want)


@needs_cuda
def test_cuda_graph_replays_draw_fresh_masks():
    x = torch.ones(64, 256, device="cuda")
    r = torch.zeros_like(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            ops.bias_dropout_add(x, None, r, 0.5, backend="fused")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.bias_dropout_add(x, None, r, 0.5, backend="fused")
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, out)
    assert abs((first != 0).float().mean().item() - 0.5) < 0.05


@needs_cuda
@pytest.mark.parametrize("has_bias", [True, False])
def test_one_kernel_launch_per_direction(has_bias):
    """The forward and the backward are one kernel each (with dbias too: the last block per
    column tile sums the partials; its ticket counters are zeroed by a memset, not a kernel)."""
    from torch.profiler import ProfilerActivity, profile
    x, b, r = _inputs((4096, 768), (BF16, BF16, BF16))
    x.requires_grad_()
    if has_bias:
        b.requires_grad_()
    else:
        b = None
    g = torch.randn_like(r)
    seed = (3, 4)
    out = extension.bias_dropout_add(x, b, r, 0.1, seed=seed)  # warm: the extension and its occupancy query
    out.backward(g)
    torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=acts) as prof:
        out = extension.bias_dropout_add(x, b, r, 0.1, seed=seed)
        torch.cuda.synchronize()
    with profile(activities=acts) as prof_bwd:
        torch.autograd.grad(out, [x] + ([b] if has_bias else []), g)
        torch.cuda.synchronize()
    kernels = lambda p: [e.name for e in p.events()  # noqa: E731
                         if e.device_type == torch.autograd.DeviceType.CUDA and "Memset" not in e.name
                         and "Memcpy" not in e.name]
    assert len(kernels(prof)) == 1 and "bda_fwd" in kernels(prof)[0], kernels(prof)
    assert len(kernels(prof_bwd)) == 1, kernels(prof_bwd)
    name = kernels(prof_bwd)[0]
    assert ("bda_bwd_dbias_kernel" in name) if has_bias else ("bda_bwd_kernel" in name), name


@needs_cuda
def test_cuda_graph_replays_the_backward_with_dbias():
    """The dbias kernel's ticket memset and its workspace are captured too: every replay rewrites the
    gradients, equal to an eager backward of the same upstream gradient."""
    x, b, r = _inputs((2048, 768), (BF16, F32, F32))
    x.requires_grad_()
    b.requires_grad_()
    g = torch.randn_like(r)
    st = torch.tensor([11, 12], dtype=torch.int64, device="cuda")

    def step():
        out = extension.bias_dropout_add(x, b, r, 0.1, seed=st)
        return torch.autograd.grad(out, (x, b), g)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = step()
    for _ in range(3):
        g.copy_(torch.randn_like(g))
        want = step()
        for t in got:
            t.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ----------------------------------------------------------------------------- from a mutation review
# (2026-11-28: each test below failed on a mutant that every other test let through, and passes on the code)
def _ext():
    from fastgpt import extension
    if extension.load() is None:
        pytest.skip(extension.unavailable_reason())
    return extension


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_mask_is_the_spec_on_a_million_elements(p):
    """Mutants D3 (keep <=> u > threshold) and D5 (threshold floor(p * 65536), not rounded): they differ from
    the spec only where u16 equals one value (1/65536 of the elements), which test_mask_is_the_spec's
    <= 1001 elements almost never meet. 2^20 elements meet it ~16 times (missed with prob. ~e^-16)."""
    extension = _ext()
    n = 1 << 20
    seed = [int(v) for v in torch.randint(-2**63, 2**63 - 1, (2,))]
    x = torch.ones(n, device=DEVICE)
    out = extension.bias_dropout_add(x, None, torch.zeros_like(x), p, seed=seed)
    want = reference.dropout_keep_mask((n,), p, *seed, device=DEVICE)
    assert torch.equal(out != 0, want), int(((out != 0) != want).sum())


@pytest.mark.parametrize("bias", ["none", "frozen"])
def test_backward_without_a_bias_gradient_scales_the_kept(bias):
    """Mutant D6: the backward that computes no dbias (no bias, or a bias that needs no gradient) left the
    kept gradients unscaled; every p > 0 backward in test_dropout_add.py has a bias that requires grad."""
    extension = _ext()
    p = 0.3
    x = torch.randn(33, 129, device=DEVICE).requires_grad_()
    b = None if bias == "none" else torch.randn(129, device=DEVICE)
    r = torch.randn(33, 129, device=DEVICE)
    seed = (5, 6)
    out = extension.bias_dropout_add(x, b, r, p, seed=seed)
    kept = reference.dropout_keep_mask(x.shape, p, *seed, device=DEVICE)
    g = torch.randn_like(out)
    out.backward(g)
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    assert torch.equal(x.grad, torch.where(kept, g * scale, torch.zeros_like(g)))


def test_only_the_residual_needs_a_gradient():
    """Mutant E2: with only the residual requiring grad, the op took its kernel-only (unrecorded) branch and
    the residual got no gradient."""
    extension = _ext()
    x, b = torch.randn(4, 24, device=DEVICE), torch.randn(24, device=DEVICE)
    r = torch.randn(4, 24, device=DEVICE, requires_grad=True)
    out = extension.bias_dropout_add(x, b, r, 0.3, seed=(1, 2))
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.equal(r.grad, g)


@pytest.mark.parametrize("p", [0.0, 0.25])
def test_opcheck_mixed_dtypes(p):
    """Mutant E3: the fake (meta) forward gave out x's dtype, not the residual's; test_opcheck's tensors are all
    fp32, so the fake and the real op agreed. Autocast's layout (bf16 x, fp32 bias and residual) tells them apart."""
    _ext()
    x = torch.randn(3, 40, device=DEVICE).bfloat16().requires_grad_()
    b = torch.randn(40, device=DEVICE, requires_grad=True)
    r = torch.randn(3, 40, device=DEVICE, requires_grad=True)
    seed = torch.tensor([3, 4], device=DEVICE) if p > 0 else None
    torch.library.opcheck(torch.ops.fastgpt.bias_dropout_add.default, (x, b, r, p, seed))


def test_a_newer_source_or_header_makes_the_prebuilt_stale(tmp_path, monkeypatch):
    """Mutant E5: _stale looked at the .cpp sources only, so an edited philox.h / dropout_add.h kept the old
    prebuilt module (a header-only change to the mask rule would not be rebuilt)."""
    from fastgpt import extension
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    names = extension.SOURCES + extension.HEADERS
    old = time.time() - 1000
    for f in names:
        (csrc / f).write_text("")
        os.utime(csrc / f, (old, old))
    so = tmp_path / "_C.so"
    so.write_bytes(b"")
    os.utime(so, (old + 10, old + 10))
    monkeypatch.setattr(extension, "CSRC", csrc)
    assert not extension._stale(str(so))
    for f in names:
        os.utime(csrc / f, (old + 20, old + 20))
        assert extension._stale(str(so)), f
        os.utime(csrc / f, (old, old))


# ----------------------------------------------------------------------------- from a mutation audit of extension.py
# (2026-11-30: each test below failed on a mutant that every other test let through, and passes on the code)

_FAKE_JIT = types.ModuleType("fastgpt_C_jit_stand_in")


def _prebuilt_or_skip():
    spec = importlib.util.find_spec("fastgpt._C")
    if spec is None or extension.load() is None:
        pytest.skip("no prebuilt fastgpt._C")
    return spec


@pytest.fixture
def jit_calls(monkeypatch):
    """_jit_build replaced by a stand-in that 'builds' _FAKE_JIT; the list records the calls."""
    calls = []

    def fake():
        calls.append(1)
        return _FAKE_JIT, None
    monkeypatch.setattr(extension, "_jit_build", fake)
    monkeypatch.setattr(extension, "_stale", lambda path: False)
    monkeypatch.setattr(extension, "_ops_registered", lambda: False)   # (this process loaded the real module)
    return calls


@pytest.mark.parametrize("mode", ["auto", "jit", "prebuilt", "off", "0", "none", "Prebuilt", "JIT", "OFF"])
def test_every_documented_extension_setting_is_accepted(mode, monkeypatch):
    """Mutants E07 (FASTGPT_EXTENSION=prebuilt, a documented mode, called a bad setting: selftest refused to run)
    and E08 (the setting compared case-sensitively there while _load lowercases it: =JIT refused)."""
    monkeypatch.setenv("FASTGPT_EXTENSION", mode)
    assert extension.setting_problem() is None
    monkeypatch.setenv("FASTGPT_EXTENSION", "bogus")
    assert "got 'bogus'" in extension.setting_problem()


@pytest.mark.parametrize("mode", ["off", "0", "none", "OFF"])
def test_every_off_spelling_disables_the_extension(mode, monkeypatch, jit_calls):
    """Mutant E09: FASTGPT_EXTENSION=0 (a documented 'off') loaded the extension anyway."""
    monkeypatch.setenv("FASTGPT_EXTENSION", mode)
    assert extension._load() == (None, "disabled by FASTGPT_EXTENSION=off", None)
    assert not jit_calls


def test_jit_mode_skips_the_prebuilt_module(monkeypatch, jit_calls):
    """Mutants E11 (=jit used the prebuilt module) and E15 (a JIT-built module reported as 'prebuilt')."""
    monkeypatch.setenv("FASTGPT_EXTENSION", "jit")
    assert extension._load() == (_FAKE_JIT, None, "jit")
    assert jit_calls == [1]


def test_prebuilt_mode_uses_the_prebuilt_module_even_when_stale(monkeypatch, jit_calls):
    """Mutants E10 (=prebuilt JIT-built instead) and E12 (=prebuilt refused a prebuilt module older than csrc/:
    the staleness skip is auto mode's only)."""
    spec = _prebuilt_or_skip()
    monkeypatch.setenv("FASTGPT_EXTENSION", "prebuilt")
    monkeypatch.setattr(extension, "_stale", lambda path: True)
    mod, reason, how = extension._load()
    assert (mod.__file__, reason, how) == (spec.origin, None, "prebuilt")
    assert not jit_calls


def test_prebuilt_mode_without_a_built_module_says_so_and_builds_nothing(monkeypatch, jit_calls):
    """Mutant E13: =prebuilt with no fastgpt._C went on to a JIT build (minutes of compiling, the opposite of
    what was asked) instead of saying that it was not built."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "fastgpt._C" else find_spec(name, *a, **k))
    monkeypatch.setenv("FASTGPT_EXTENSION", "prebuilt")
    assert extension._load() == (None, "FASTGPT_EXTENSION=prebuilt but fastgpt._C was not built", None)
    assert not jit_calls


def test_the_reason_names_every_failed_way(monkeypatch):
    """Mutant E16: with a stale prebuilt module that does not import and a JIT build that failed, the reason
    named the JIT failure only (not why the prebuilt module was passed over)."""
    _prebuilt_or_skip()
    monkeypatch.setenv("FASTGPT_EXTENSION", "auto")
    monkeypatch.setattr(extension, "_stale", lambda path: True)
    monkeypatch.setattr(extension, "_jit_build", lambda: (None, "no C++ compiler (test)"))
    monkeypatch.setattr(extension, "_ops_registered", lambda: False)   # (this process loaded the real module)
    fail_import(monkeypatch, "fastgpt._C", "undefined symbol (test)")
    assert extension._load() == (None, "the prebuilt fastgpt._C is older than csrc/; it does not import either "
                                       "(undefined symbol (test)); no C++ compiler (test)", None)


def test_staleness_needs_a_strictly_newer_source_and_a_csrc_folder(tmp_path, monkeypatch):
    """Mutants E01 (no csrc/ at all -- an installed wheel -- counted as stale: every process tried a JIT build,
    found no sources and warned) and E02 (a source as old as the module counted as newer)."""
    so = tmp_path / "_C.so"
    so.write_bytes(b"")
    monkeypatch.setattr(extension, "CSRC", tmp_path / "no-csrc-here")
    assert not extension._stale(str(so))
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    t = time.time() - 1000
    for f in extension.SOURCES + extension.HEADERS:
        (csrc / f).write_text("")
        os.utime(csrc / f, (t, t))
    os.utime(so, (t, t))
    monkeypatch.setattr(extension, "CSRC", csrc)
    assert not extension._stale(str(so))


def test_has_cuda_reads_the_cuda_launcher_symbol(tmp_path):
    """Mutant E03: _has_cuda looked for a name the module does not hold, so on a GPU machine auto mode took every
    CUDA build of fastgpt._C for a CPU-only one and rebuilt it (or warned) in every process."""
    with_cuda, without = tmp_path / "a.so", tmp_path / "b.so"
    with_cuda.write_bytes(b"\x7fELF...fastgpt_bda_fwd_cuda\x00...")
    without.write_bytes(b"\x7fELF...fastgpt_bda_fwd_cpu\x00...")
    assert extension._has_cuda(str(with_cuda)) and not extension._has_cuda(str(without))
    assert extension._has_cuda(str(tmp_path / "missing.so"))   # unreadable: assume it has them (no rebuild)
    spec = importlib.util.find_spec("fastgpt._C")
    if spec is not None and extension.how_loaded() == "prebuilt":   # and it agrees with the loaded module
        assert extension._has_cuda(spec.origin) == extension.cuda_compiled()


def test_a_compiler_given_with_a_wrapper_or_flags_is_found(monkeypatch):
    """Mutant E04: CXX='ccache g++' (or 'g++ -std=...') was looked up as one program name, so the JIT build said
    'no C++ compiler' on a machine that has one."""
    monkeypatch.setenv("CXX", f"{sys.executable} -q")
    assert extension._compiler() is not None


def test_jit_build_reasons(tmp_path, monkeypatch):
    """Mutants E05 (missing sources went on to the compiler: 'building the extension failed' instead of naming the
    missing file) and E06 (no ninja went on to cpp_extension.load). cpp_extension.load is replaced by a stand-in
    that fails, so nothing is compiled either way."""
    from torch.utils import cpp_extension
    monkeypatch.setattr(extension, "_compiler", lambda: "/usr/bin/c++")

    def failing_load(**kw):
        raise RuntimeError("Error building extension 'fastgpt_C'\nbinding.cpp:1: error: boom (test)\n\n")
    monkeypatch.setattr(cpp_extension, "load", failing_load)
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    mod, reason = extension._jit_build()   # the real csrc/: the stand-in compiler fails; its last line is told
    assert mod is None and "building the extension failed (binding.cpp:1: error: boom (test))" in reason
    assert "FASTGPT_EXTENSION_VERBOSE=1" in reason
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    mod, reason = extension._jit_build()
    assert mod is None and "ninja is not installed" in reason
    monkeypatch.setattr(extension, "CSRC", tmp_path)
    mod, reason = extension._jit_build()
    assert mod is None and f"({tmp_path / extension.SOURCES[0]} is missing)" in reason


def _ext():
    if extension.load() is None:
        pytest.skip(extension.unavailable_reason())
    return extension


def test_unavailable_reason_is_per_device_type():
    """Mutants E19 (a device type with no kernels, e.g. 'meta' or 'mps', was called available: the op then
    failed inside the dispatcher) and E21 (the memo kept one answer for every device type: after a CPU
    call, 'cuda' was 'available' on a CPU-only build)."""
    _ext()
    assert extension.unavailable_reason("cpu") is None
    assert extension.unavailable_reason("meta") == "the extension has no kernels for device type 'meta'"
    if not extension.cuda_compiled():
        assert "built without CUDA" in extension.unavailable_reason("cuda")   # mutant E20 too


def test_the_op_refuses_when_the_extension_cannot_run_on_the_device(monkeypatch):
    """Mutant E29: extension.bias_dropout_add went on into torch.ops.fastgpt.* when unavailable_reason said no
    (a dispatcher error, or an AttributeError when the module is not loaded) instead of raising the reason."""
    _ext()
    monkeypatch.setattr(extension, "unavailable_reason", lambda device_type=None: "no kernels here (test)")
    x = torch.randn(2, 8, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"^fastgpt: no kernels here \(test\)$"):
        extension.bias_dropout_add(x, None, x, 0.0)


@pytest.mark.parametrize("case", ["residual", "bias"])
def test_tensors_on_different_devices_are_refused(case):
    """Mutant E22: the residual's device was not compared with x's (test_bad_input moves only the bias). With
    the residual on the meta device the fake implementation ran and returned uninitialised memory."""
    _ext()
    x = torch.randn(2, 8, device=DEVICE)
    other = torch.ones(2, 8, device="meta")
    with pytest.raises(ValueError, match=f"different devices .*{case} on meta"):
        if case == "residual":
            extension.bias_dropout_add(x, None, other, 0.1)
        else:
            extension.bias_dropout_add(x, other[0], x, 0.1)


@pytest.mark.parametrize("p", ["0.1", torch.tensor(0.1)])
def test_a_dropout_rate_that_is_not_a_number_is_refused_as_on_the_reference_path(p):
    """Mutant E23: without the Python check, float(dropout_p) took a string or a tensor, which the reference path
    refuses (a ValueError): the two backends disagreed. The C++ check sees only the converted float."""
    _ext()
    x = torch.randn(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="dropout_p must be a number in \\[0, 1\\)"):
        extension.bias_dropout_add(x, None, x, p)
    with pytest.raises(ValueError, match="dropout_p must be a number in \\[0, 1\\)"):
        reference.bias_dropout_add(x, None, x, p)


def test_eager_seed_is_drawn_on_the_host_for_cuda(monkeypatch):
    """Mutant E27: in eager mode a CUDA op's seed was drawn on the GPU (an extra kernel and a device tensor per
    call, instead of a pair the binding reads by value). Checked on any machine through new_seed's answer."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    s = extension.new_seed("cuda")
    assert s.device.type == "cpu" and s.dtype == torch.int64 and s.shape == (2,)


def test_a_meta_seed_of_the_wrong_shape_is_refused_by_the_fake_implementation():
    """Mutant E35: the Python seed check took any 1-dim seed; the C++ check repeats it for real seeds, but a seed
    on the meta device reaches the fake implementation only (Meta outranks CPU), where the shape check is the
    only one: a (3,) meta seed slipped past it to the device check. Under torch.compile the fake is all there is."""
    _ext()
    x = torch.ones(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match=r"seed must have shape \(2,\) = \(seed, offset\), got \(3,\)"):
        torch.ops.fastgpt.bias_dropout_add(x, None, x, 0.5, torch.zeros(3, dtype=torch.int64, device="meta"))
    with pytest.raises(ValueError, match=r"seed must have shape \(2,\)"):
        torch.ops.fastgpt.bias_dropout_add_bwd(x, torch.zeros(3, dtype=torch.int64, device="meta"), 0.5,
                                               torch.float32, None)


def test_a_call_under_a_dispatch_mode_takes_the_registered_op():
    """Mutant E31: under a torch function / dispatch mode (selective activation checkpointing, FlopCounterMode,
    DebugMode...) the call took the eager Function instead of the registered custom op that _eager_ok promises
    such modes. The existing check (test_ops' _PassThroughMode) only reads the double-backward message, which both
    paths give; the grad_fn tells them apart (as in test_eager_path_equals_the_custom_op_path)."""
    _ext()
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x = torch.randn(3, 16, device=DEVICE, requires_grad=True)
    with Seen():
        out = extension.bias_dropout_add(x, None, x.detach(), 0.25, seed=(1, 2))
    assert type(out.grad_fn) is not extension._BiasDropoutAdd._backward_cls, out.grad_fn
    out = extension.bias_dropout_add(x, None, x.detach(), 0.25, seed=(1, 2))   # outside: the eager Function
    assert type(out.grad_fn) is extension._BiasDropoutAdd._backward_cls, out.grad_fn



# ----------------------------------------------------------------------------- from a mutation audit of reference.py
# and testing.py (2026-11-30: each test below failed on a mutant that every other test let through)

# reference.bias_dropout_add pinned by itself: out = residual + keep * (x + bias) * fp32(1 / (1 - p)).
# Every other check of its values compares it with the extension (test_p0_exact,
# test_dropout_matches_reference_with_the_same_mask), which skips where the extension is unavailable (and would
# match an equally wrong extension). Mutants killed: the bias dropped (``u = x``), the kept values left unscaled
# (``u = u * keep``).


def test_reference_bias_dropout_add_is_residual_plus_scaled_kept_x_plus_bias():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 33, generator=g)
    b = torch.randn(33, generator=g)
    r = torch.randn(5, 33, generator=g)
    # p = 0: exactly residual + x + bias (fp32, one rounding per add)
    assert torch.equal(reference.bias_dropout_add(x, b, r, 0.0), r + (x + b))
    assert torch.equal(reference.bias_dropout_add(x, None, r, 0.0), r + x)
    # a given mask: kept values scaled by fp32(1 / (1 - p)), dropped ones give the residual
    p = 0.3
    keep = torch.rand(5, 33, generator=g) >= p
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    want = r + (x + b) * keep * scale
    torch.testing.assert_close(reference.bias_dropout_add(x, b, r, p, mask=keep), want, rtol=1e-6, atol=1e-6)
    # the torch-RNG path: kept elements scaled the same way, and about 1 - p of them kept
    out = reference.bias_dropout_add(x, b, r, p, generator=torch.Generator().manual_seed(1))
    kept = (out - r).abs() > 1e-6
    assert 0 < kept.sum() < kept.numel()
    torch.testing.assert_close((out - r)[kept], ((x + b) * scale)[kept], rtol=1e-5, atol=1e-5)
    assert abs(kept.float().mean().item() - (1 - p)) < 0.15
    # and float64 (ref_hi) the same, exactly in float64
    xd, bd, rd, kd = x.double(), b.double(), r.double(), keep
    torch.testing.assert_close(reference.bias_dropout_add(xd, bd, rd, p, mask=kd), rd + (xd + bd) * kd / (1 - p),
                               rtol=1e-14, atol=1e-14)

