"""Check fastgpt's fused kernels against the reference on YOUR device: python -m fastgpt.selftest

Runs every op (forward and backward) and a whole GPT block, fused vs
fastgpt.reference, in each supported dtype, and applies the test suite's
tolerance rule (README.md, "Tests"; fastgpt/testing.py):

    max|fused - ref_hi| <= 2 * max|ref_lp - ref_hi| + C * eps(dtype) * max|ref_hi|

where ref_hi is the reference in float64 and ref_lp the reference in the op's
dtype. Prints one row per (op, dtype) with the worst check, then a verdict;
exits 1 if any check fails.

    python -m fastgpt.selftest            # CUDA if present, else the Triton interpreter on the CPU
    python -m fastgpt.selftest --quick    # smaller shapes, one launch config per kernel (no autotuning)
    python -m fastgpt.selftest --device cpu

On the CPU the kernels run under the Triton interpreter (slow; small shapes; its bf16 casts and
dots are corrected first: fastgpt/kernels/_interpreter.py).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

import torch


@contextlib.contextmanager
def _tf32_for_fp32_cuda(t: torch.Tensor):
    """ref_lp of an fp32 op that uses TF32 dots on the GPU (the attention kernel, DESIGN.md:
    "tf32 allowed where our kernel uses tf32") is the reference under allow_tf32."""
    if not (t.is_cuda and t.dtype == torch.float32):
        yield
        return
    # both the legacy flag and the precision API: on torch 2.11 (H100, 2026-11-26) the
    # legacy flag alone did not make the fp32 reference's GEMMs use TF32
    old_flag, old_prec = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_prec)
        torch.backends.cuda.matmul.allow_tf32 = old_flag


def _kernels_round_tf32() -> bool:
    """Whether fp32 attention on the fused backend runs TF32 dots (on the GPU; on the CPU only when a
    test turns on the interpreter's emulation of them)."""
    try:
        from fastgpt.kernels import attention
    except ImportError:   # no triton: the fused backend runs the reference
        return False
    return attention._round_tf32(torch.float32)


def _uses_tf32_ref(q: torch.Tensor, dropout_p: float, seed) -> bool:
    """Whether causal_attention's ref_lp for q is the emulated-TF32 one: fp32 where the kernels use
    TF32 dots, and the dropout mask (if any) known from seed."""
    return q.dtype == torch.float32 and _kernels_round_tf32() and (dropout_p == 0 or seed is not None)


def _attention_ref(dropout_p=0.0, seed=None):
    """ref_lp / ref_hi of causal_attention: in fp32 where the kernels use TF32 dots, those emulated
    (fastgpt.testing.tf32_attention_reference, what the test suite uses), else the reference."""
    from fastgpt import reference
    from fastgpt.testing import tf32_attention_reference

    def ref(q, k, v):
        if _uses_tf32_ref(q, dropout_p, seed):
            return tf32_attention_reference(q, k, v, None, dropout_p, seed)
        return reference.causal_attention(q, k, v, None, dropout_p, seed=seed)
    return ref


def _attention_op_ref(dropout_p=0.0, seed=None):
    """ref_lp / ref_hi of the causal_attention rows: the reference computed as fused attention computes
    it (fastgpt.testing.flash_attention_reference, what the test suite uses: operands in the op's
    precision, TF32 where the kernels use it, delta from the stored output)."""
    from fastgpt.testing import flash_attention_reference

    def ref(q, k, v):
        return flash_attention_reference(q, k, v, None, dropout_p, seed, tf32=_kernels_round_tf32())
    return ref


def _fill_(module: torch.nn.Module) -> torch.nn.Module:
    """Random weights at a realistic scale (so activations are O(1) and every path matters)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
            elif "ln" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.1)
    return module


def compare_block(cfg, dtype=torch.float32, device="cpu", backend="fused", B=2, T=17, autocast=None,
                  grad_mode="random", ref=None, attention_seed=None):
    """fastgpt.GPTBlock (backend) vs fastgpt.reference.GPTBlock: forward and all gradients.

    The fused block loads the reference block's state dict (strict). dtype is
    the dtype of the input and the parameters; with ``autocast`` (a dtype) both
    run under torch.autocast with fp32 inputs and parameters. ref_hi is the
    reference block in float64; ref_lp runs it as PyTorch would in low precision
    (its attention: in fp32 where the kernels use TF32 dots, those dots emulated, as
    every fp32 attention check does; else on CUDA PyTorch's own SDPA, where it draws
    no dropout mask). ``ref`` may supply the reference block (tests give it the fused
    ops' residual dropout masks); ``attention_seed``, a callable returning the
    (seed, offset) the fused attention drew, makes the reference attention apply
    that dropout mask. Returns a list of fastgpt.testing.Check named after the parameters.
    """
    from torch.func import functional_call

    from fastgpt import reference
    from fastgpt.model import GPTBlock
    from fastgpt.testing import compare_op

    ref = _fill_(reference.GPTBlock(cfg)).to(device) if ref is None else ref
    ours = GPTBlock(cfg, backend=backend).to(device)
    ours.load_state_dict(ref.state_dict(), strict=True)
    names = [n for n, _ in ref.named_parameters()]

    def attend(x):
        """The reference block's attention for input x (float64: ref_hi; else ref_lp)."""
        def fn(q, k, v, p):
            seed = attention_seed() if attention_seed is not None and p > 0 else None
            if x.dtype != torch.float64 and x.is_cuda and p == 0 and not _uses_tf32_ref(q, p, seed):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return _attention_ref(p, seed)(q, k, v)
        return fn

    def runner(module):
        def fn(x, *params):
            use = autocast is not None and x.dtype != torch.float64
            if module is ref:
                module.attn.attend = attend(x)
            tf32 = _tf32_for_fp32_cuda(x) if module is ref else contextlib.nullcontext()
            with tf32, torch.autocast(torch.device(device).type, dtype=autocast or torch.bfloat16, enabled=use):
                return functional_call(module, dict(zip(names, params)), (x,))
        return fn

    x = torch.randn(B, T, cfg.n_embd, device=device)
    inputs = [x.to(dtype)] + [p.detach().to(dtype) for _, p in ref.named_parameters()]
    checks = compare_op(f"block {cfg.norm}-LN", runner(ours), runner(ref), inputs, grad_mode=grad_mode)
    for c in checks:
        if " grad" in c.name:
            k = int(c.name.rsplit("grad", 1)[1])
            c.name = c.name.rsplit(" ", 1)[0] + (" dx" if k == 0 else f" d{names[k - 1]}")
    return checks


def _native_bf16(device) -> bool:
    """Whether the device computes in bf16 natively: the CPU (the interpreter), and GPUs of compute capability
    8.0 and newer (cli.native_bf16)."""
    from fastgpt.cli import native_bf16
    return device.type != "cuda" or native_bf16(device)


def _op_cases(device, quick):
    """(name, fused_fn, ref_fn, make_inputs(dtype), dtypes) per op."""
    from fastgpt import extension, ops, reference
    gpu = device.type == "cuda"
    all_dt = [torch.float32, torch.float16] + ([torch.bfloat16] if _native_bf16(device) else [])
    M, N = ((4096, 768) if not quick else (512, 768)) if gpu else (33, 96)
    F = 3072 if gpu else 128
    B, H, T, D = ((2, 12, 1024, 64) if not quick else (2, 4, 256, 64)) if gpu else (1, 2, 33, 16)
    Tq = 17 if gpu else 5
    Vocab, Nt = ((50304, 1024) if not quick else (8192, 256)) if gpu else (300, 24)

    def rnd(*s, dt):
        return torch.randn(*s, device=device).to(dt)

    def fused(fn):
        return lambda *a: fn(*a, backend="fused")

    def targets():
        t = torch.randint(0, Vocab, (Nt,), device=device)
        t[::7] = -100
        return t

    return [
        ("layer_norm", fused(ops.layer_norm), reference.layer_norm,
         lambda dt: [rnd(M, N, dt=dt), rnd(N, dt=dt), rnd(N, dt=dt), 1e-5], all_dt, f"{M}x{N}"),
        ("add_layer_norm", fused(ops.add_layer_norm), reference.add_layer_norm,
         lambda dt: [rnd(M, N, dt=dt), rnd(M, N, dt=dt), rnd(N, dt=dt), rnd(N, dt=dt), 1e-5], all_dt, f"{M}x{N}"),
        ("bias_gelu tanh", fused(ops.bias_gelu), reference.bias_gelu,
         lambda dt: [rnd(M, F, dt=dt), rnd(F, dt=dt), "tanh"], all_dt, f"{M}x{F}"),
        ("bias_gelu erf", fused(ops.bias_gelu), reference.bias_gelu,
         lambda dt: [rnd(M, F, dt=dt), rnd(F, dt=dt), "none"], all_dt, f"{M}x{F}"),
        ("causal_attention", fused(ops.causal_attention), _attention_op_ref(),
         lambda dt: [rnd(B, H, T, D, dt=dt), rnd(B, H, T, D, dt=dt), rnd(B, H, T, D, dt=dt)], all_dt,
         f"{B}x{H}x{T}x{D}"),
        ("causal_attention Tq<Tk", fused(ops.causal_attention), _attention_op_ref(),
         lambda dt: [rnd(B, H, Tq, D, dt=dt), rnd(B, H, T, D, dt=dt), rnd(B, H, T, D, dt=dt)], all_dt,
         f"q {Tq}, kv {T}"),
        # the opt-in atomic-dQ backward (kernels/attention.py BWD_DQ; run() sets it for this row)
        ("causal_attention atomic dQ", fused(ops.causal_attention), _attention_op_ref(),
         lambda dt: [rnd(B, H, T, D, dt=dt), rnd(B, H, T, D, dt=dt), rnd(B, H, T, D, dt=dt)], all_dt,
         f"{B}x{H}x{T}x{D}"),
        ("causal_attention p=0.1",  # the kernels' dropout mask, reproduced by the reference from the seed
         lambda q, k, v: ops.causal_attention(q, k, v, None, 0.1, seed=(7, 11), backend="fused"),
         _attention_op_ref(0.1, (7, 11)),
         lambda dt: [rnd(B, H, T, D, dt=dt), rnd(B, H, T, D, dt=dt), rnd(B, H, T, D, dt=dt)], all_dt,
         f"{B}x{H}x{T}x{D}"),
        ("bias_dropout_add p=0", fused(ops.bias_dropout_add), reference.bias_dropout_add,
         lambda dt: [rnd(M, N, dt=dt), rnd(N, dt=dt), rnd(M, N, dt=dt), 0.0], all_dt, f"{M}x{N}"),
        ("bias_dropout_add p=0.1",  # the extension's Philox mask, reproduced by the reference from the seed
         lambda x, b, r: extension.bias_dropout_add(x, b, r, 0.1, seed=(7, 11)),
         lambda x, b, r: reference.bias_dropout_add(
             x, b, r, 0.1, mask=reference.dropout_keep_mask(x.shape, 0.1, 7, 11, device=x.device)),
         lambda dt: [rnd(M, N, dt=dt), rnd(N, dt=dt), rnd(M, N, dt=dt)], all_dt, f"{M}x{N}"),
        ("fused_linear_cross_entropy", fused(ops.fused_linear_cross_entropy), reference.fused_linear_cross_entropy,
         lambda dt: [rnd(Nt, N, dt=dt), rnd(Vocab, N, dt=dt).mul_(N ** -0.5), targets()], all_dt,
         f"{Nt}x{N}, V={Vocab}"),
    ]


def _block_cases(device, quick):
    from fastgpt.config import GPTConfig
    gpu = device.type == "cuda"
    if gpu:
        C, H, T = (768, 12, 256) if not quick else (256, 4, 128)
    else:
        C, H, T = 64, 4, 17
    cases = []
    half = torch.bfloat16 if _native_bf16(device) else torch.float16   # (what training would autocast to)
    for norm in ("pre", "post"):
        cfg = GPTConfig(vocab_size=256, block_size=max(T, 32), n_layer=1, n_head=H, n_embd=C, norm=norm)
        cases.append((cfg, torch.float32, None, T))
        if gpu:
            cases.append((cfg, half, None, T))
            cases.append((cfg, torch.float32, half, T))  # autocast, fp32 params and residual
        else:
            # (no bf16-autocast row: at CPU shapes its check, fp32's eps for the fp32 inputs, so nearly
            # all of the bound is 2 |ref_lp - ref_hi|, failed 2 of 180 draws (worst err/bound median 0.7,
            # those 1.02 and 1.09; 2026-11-27): a row that fails now and then says nothing about a card)
            cases.append((cfg, torch.float16, None, T))
    return cases


def _summarise(checks):
    """The worst check (largest err / bound) and whether all passed."""
    worst = max(checks, key=lambda c: float("inf") if not c.ok and c.bound == 0 else c.err / max(c.bound, 1e-300))
    return worst, all(c.ok for c in checks)


def run(device=None, quick=False, out=None, only=None):
    """Run every check (or those whose label contains one of ``only``); print the table; True if all pass.
    cli.UsageError when ``only`` matches no check."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = out or sys.stdout
    from fastgpt.backend import fused_unavailable_reason
    from fastgpt.testing import C, compare_op

    def wanted(label):
        return not only or any(o in label for o in only)

    labels = list(dict.fromkeys([c[0] for c in _op_cases(device, quick)] +
                                [f"GPTBlock {cfg.norm}-LN C={cfg.n_embd}" for cfg, *_ in _block_cases(device, quick)]))
    unmatched = [o for o in (only or []) if not any(o in label for label in labels)]
    if unmatched:   # (a typo among good names was dropped silently)
        from fastgpt.cli import UsageError
        raise UsageError(f"--only {','.join(unmatched)}: matches no check; the checks are: {', '.join(labels)}")

    from fastgpt import extension
    from fastgpt.cli import UsageError, check_extension_setting
    check_extension_setting()   # (its rows were skipped as if the extension were off)
    try:
        reason = fused_unavailable_reason(device.type)
    except ValueError as e:   # a bad setting read when the kernels are imported (FASTGPT_ATTENTION_DQ)
        raise UsageError(str(e).splitlines()[0]) from None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    print(f"# fastgpt selftest on {name}, torch {torch.__version__}; rule: err <= 2*|ref_lp-ref_hi| "
          f"+ {C:g}*eps*max|ref_hi|", file=out)
    if not _native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        print(f"# no native bf16 on this GPU (compute capability {major}.{minor}; 8.0 has it): no bf16 rows, the "
              "block's in fp16", file=out)
    if reason is not None:
        print(f"# fused backend unavailable: {reason}", file=out)
        print("VERDICT: UNAVAILABLE — nothing to check (the reference path serves)", file=out)
        return False
    print(f"{'check':<30} {'dtype':<25} {'shape':<20} {'max err':>10} {'bound':>10}  {'worst of':<19} verdict",
          file=out)
    n_fail = n_rows = n_skip = 0
    t0 = time.time()
    torch.manual_seed(0)

    def report(label, dt, shape, fn):
        nonlocal n_fail, n_rows, n_skip
        # the optional C++ extension (loaded only when one of its rows runs): without it they are skipped
        no_ext = extension.unavailable_reason(device.type) if label.startswith("bias_dropout_add") else None
        if no_ext is not None:
            n_skip += 1
            print(f"{label:<30} {dt:<25} {shape:<20} {'-':>10} {'-':>10}  {'':<19} SKIP (extension: {no_ext})",
                  file=out)
            return
        n_rows += 1
        try:
            checks = fn()
        except Exception as e:  # a kernel that raises is a failure, shown in the table
            n_fail += 1
            print(f"{label:<30} {dt:<25} {shape:<20} {'-':>10} {'-':>10}  {'':<19} ERROR {type(e).__name__}: "
                  f"{str(e)[:100]}", file=out)
            return
        worst, ok = _summarise(checks)
        n_fail += not ok
        what = worst.name.split(" ")[-1]
        print(f"{label:<30} {dt:<25} {shape:<20} {worst.err:10.3e} {worst.bound:10.3e}  {what:<19} "
              f"{'ok' if ok else 'FAIL'}", file=out)

    for label, fused_fn, ref_fn, make, dtypes, shape in _op_cases(device, quick):
        if not wanted(label):
            continue
        path = contextlib.nullcontext()
        if label.endswith("atomic dQ"):   # the atomic-dQ backward for this row only (else as configured)
            from fastgpt.kernels import attention
            path = attention.dq_mode("atomic")
        with path:
            for dt in dtypes:
                report(label, str(dt).removeprefix("torch."), shape,
                       lambda: compare_op(label, fused_fn, ref_fn, make(dt), dtype=dt))
    for cfg, dt, ac, T in _block_cases(device, quick):
        label = f"GPTBlock {cfg.norm}-LN C={cfg.n_embd}"
        if not wanted(label):
            continue
        dts = str(dt).removeprefix("torch.") + (f"+autocast {str(ac)[6:]}" if ac else "")
        report(label, dts, f"B=2 T={T}",
               lambda: compare_block(cfg, dt, device, "fused", B=2, T=T, autocast=ac))
    skip = (f"; {n_skip} rows skipped: the optional C++ extension is off here (the reference serves "
            f"bias_dropout_add)") if n_skip else ""
    if n_rows == 0:   # every selected row skipped: nothing was checked, which is no pass
        print(f"VERDICT: UNAVAILABLE — no row ran{skip}", file=out)
        return False
    ok = n_fail == 0
    print(f"VERDICT: {'PASS' if ok else 'FAIL'} — {n_rows - n_fail}/{n_rows} rows within tolerance "
          f"({time.time() - t0:.1f} s){skip}", file=out)
    return ok


PROG = "python -m fastgpt.selftest"


def main(argv=None) -> int:
    import warnings

    from fastgpt import cli
    ap = cli.ArgumentParser(prog=PROG, description=__doc__,
                            epilog="exit status: 0 every row within tolerance, 1 a row failed (or the fused\n"
                                   "backend cannot run here, or every row chosen was skipped), 2 a usage\n"
                                   "error (one line), 130 interrupted.")
    ap.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda if available)")
    ap.add_argument("--quick", action="store_true",
                    help="smaller shapes and no autotuning (each kernel's default launch config)")
    ap.add_argument("--only", default=None, help="comma-separated substrings of the checks to run "
                    "(e.g. layer_norm,GPTBlock; default: all)")
    args = ap.parse_args(argv)
    if args.only is not None and not args.only.replace(",", "").strip():
        ap.error("--only is empty; give check names (or leave it out for all)")

    def body():
        dev = cli.device(args.device, "use --device cpu: the Triton interpreter")
        if dev.type == "cpu":
            if "triton" not in sys.modules:
                os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import
            # the interpreter evaluates masked-off lanes too (exp2(-inf), inf - inf): numpy warns about values
            # that are never stored; the table's error columns are what counts
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"triton\.runtime\.interpreter")
        # --quick: no autotuning (autotuning compiles every config: minutes). It is read when the kernels are
        # imported, so it is set around the run only, and a caller's later subprocesses do not inherit it.
        quick_env = args.quick and "FASTGPT_AUTOTUNE" not in os.environ
        if quick_env:
            os.environ["FASTGPT_AUTOTUNE"] = "0"
        try:
            return 0 if run(dev, args.quick, only=[o for o in (args.only or "").split(",") if o]) else 1
        finally:
            if quick_env:
                os.environ.pop("FASTGPT_AUTOTUNE", None)

    # usage errors: one line, 2; Ctrl-C: one line, 130 (the rows done so far are printed)
    return cli.run_main(PROG, body, {}, "use --quick (smaller shapes)")


if __name__ == "__main__":
    from fastgpt import cli
    sys.exit(cli.entry(main))
