"""Full training step: GPT-2 124M, B=16, T=1024, bf16 autocast, fused AdamW, grad clip 1.0.

fastgpt (fused backend, the engine's own ``train_step``; eager and under
torch.compile) against a nanoGPT-style model written out in plain PyTorch (SDPA
attention, the same step) in eager mode and under torch.compile, in one run on
one card. The peer is the one /work/shared/anchors/gpu_anchors.py measures
(472k tok/s, MFU 41%, 8.4 GiB under torch.compile on an H100): vocabulary
padded to 50304, tied head, tanh GELU, no dropout.

Rows: ms per step, tokens/s, peak memory (max_memory_allocated over the timed
steps: weights, optimizer state and activations), and MFU (DESIGN.md: 6N +
12*L*H*D*T FLOPs per token over the card's dense bf16 peak). Before timing,
fastgpt's fused loss is checked against its reference backend on the same
weights and batch. Without --quick, a second case at B=32 (eager, fastgpt vs the
peer) shows the fused LM head's memory: the peer materialises the fp32 logits
and their gradient (B*T*50304 each), fastgpt never forms them.

    python -m benchmarks --only train [--quick]
"""
from __future__ import annotations

import contextlib
import gc
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.common import gpu_name, row

B, T = 16, 1024
L, H, C = 12, 12, 768
V_PAD = 50304


# ---- the peer: nanoGPT-style GPT-2 in plain PyTorch (GPT-2 parameter names) ----------------
class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, H, c // H).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.attn = _Attn()
        self.c_fc, self.c_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class NanoGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V_PAD, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(_Block() for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V_PAD, bias=False)
        self.lm_head.weight = self.wte.weight
        for n, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L) if n.endswith("c_proj.weight") else 0.02)

    def forward(self, idx, targets, return_logits=False, reduction="mean"):  # train_step asks for "sum"
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.h:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))
        return None, F.cross_entropy(logits.float().view(-1, V_PAD), targets.view(-1), reduction=reduction)

    def num_params(self):
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()


def _fastgpt_model(residual_dtype=None):
    from fastgpt.config import GPTConfig
    from fastgpt.model import GPT
    cfg = GPTConfig.preset("gpt2", dropout=0.0, residual_dtype=residual_dtype)
    return GPT(cfg, backend="fused").cuda()


def _check_fastgpt(rows) -> bool:
    """fastgpt's fused bf16 loss and gradients against its reference backend, same weights and batch."""
    from fastgpt.testing import check
    torch.manual_seed(0)
    m = _fastgpt_model()
    idx = torch.randint(0, 50257, (2, 256), device="cuda")
    out = {}
    for be in ("reference", "fused"):
        m.backend = be
        m.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = m(idx, idx, return_logits=False)
        loss.backward()
        out[be] = (loss.detach().float(), m.transformer.wte.weight.grad.float().clone())
    m.backend = "reference"
    m.zero_grad(set_to_none=True)
    m64 = m.double()
    _, loss_hi = m64(idx, idx, return_logits=False)
    loss_hi.backward()
    ref_hi = (loss_hi.detach(), m64.transformer.wte.weight.grad.clone())
    ok = True
    notes = []
    for i, name in enumerate(("loss", "wte.grad")):
        c = check(f"train {name}", out["fused"][i].double(), ref_hi[i], out["reference"][i].double(), torch.bfloat16)
        ok &= c.ok
        if not c.ok:
            notes.append(str(c))
    del m, m64
    gc.collect()
    torch.cuda.empty_cache()
    if not ok:
        rows.append(row("train", "correctness", "fastgpt", ok=False, note="; ".join(notes)[:200]))
    return ok


def _batch(batch_size, device="cuda"):
    """(inputs, targets) of GPT-2's vocabulary, (batch_size, T) each; contiguous, as the training loader's
    are (nanoGPT's loss views its targets: a slice of one (B, T + 1) tensor failed there)."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 50257, (batch_size, T + 1), device=device, generator=g)
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def _measure(model, fwd, steps, warm, batch_size=B):
    from fastgpt.train import train_step
    if hasattr(model, "configure_optimizers"):  # fastgpt: the engine's own (fused on CUDA)
        opt = model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4, betas=(0.9, 0.95), device_type="cuda")
    else:
        opt = torch.optim.AdamW([dict(params=[p for p in model.parameters() if p.dim() >= 2], weight_decay=0.1),
                                 dict(params=[p for p in model.parameters() if p.dim() < 2], weight_decay=0.0)],
                                lr=6e-4, betas=(0.9, 0.95), fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    xb, yb = _batch(batch_size)
    batch = lambda: (xb, yb)
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    step = lambda: train_step(fwd, list(model.parameters()), opt, scaler, batch, 1, 1.0, autocast)
    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return dt * 1e3, torch.cuda.max_memory_allocated() / 2**30, float(loss)


def _time_variant(rows, case, name, make, comp, steps, warm, peak, batch_size):
    """Build, (compile,) time and append one row; a failure becomes a row with its error."""
    model = fwd = None
    try:
        torch.manual_seed(0)
        model = make()
        if isinstance(model, NanoGPT):
            model = model.cuda()
        n = model.num_params()
        flops_tok = 6 * n + 12 * L * H * (C // H) * T
        fwd = torch.compile(model) if comp else model
        ms, mem, loss = _measure(model, fwd, steps, warm + (3 if comp else 0), batch_size)
        tok_s = batch_size * T / ms * 1e3
        mfu = tok_s * flops_tok / peak if peak else None
        note = f"MFU {mfu * 100:.1f}%  loss {loss:.3f}" if mfu else f"loss {loss:.3f}"
        rows.append(row("train", case, name, ms, tok_s=tok_s, mem_gib=mem, tflops=tok_s * flops_tok / 1e12,
                        note=note, mfu=mfu))
    except Exception as e:  # one failing variant must not lose the table
        rows.append(row("train", case, name, ok=False, note=f"{type(e).__name__}: {str(e)[:120]}"))
    finally:
        model = fwd = None
        gc.collect()
        torch.cuda.empty_cache()
        with contextlib.suppress(Exception):
            torch._dynamo.reset()


def run(args) -> list[dict]:
    """The train family's rows, with TF32 matmuls as fastgpt.train runs them on a GPU; the flags are put
    back afterwards (they were left on for whatever the process ran next)."""
    from fastgpt.cli import restored_torch_settings
    with restored_torch_settings():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return _rows(args)


def _rows(args) -> list[dict]:
    from fastgpt.train import peak_flops
    rows = []
    try:  # fastgpt is timed only if its loss and gradients are right
        ours_ok = _check_fastgpt(rows)
    except Exception as e:
        rows.append(row("train", "correctness", "fastgpt", ok=False, note=f"{type(e).__name__}: {str(e)[:120]}"))
        ours_ok = False
        gc.collect()
        torch.cuda.empty_cache()
    steps, warm = (6, 3) if getattr(args, "quick", False) else (20, 5)
    peak = peak_flops(gpu_name())
    case = f"gpt2-124M B{B} T{T} bf16"
    impls = [
        ("fastgpt", lambda: _fastgpt_model(), False),
        ("fastgpt+compile", lambda: _fastgpt_model(), True),
        ("nanogpt-sdpa eager", NanoGPT, False),
        ("nanogpt-sdpa compile", NanoGPT, True),
    ]
    if not getattr(args, "quick", False):
        impls.insert(2, ("fastgpt+compile bf16res", lambda: _fastgpt_model("bfloat16"), True))
    for name, make, comp in impls:
        if name.startswith("fastgpt") and not ours_ok:
            rows.append(row("train", case, name, ok=False, note="not timed: failed the correctness check"))
            continue
        _time_variant(rows, case, name, make, comp, steps, warm, peak, B)
    if not getattr(args, "quick", False) and ours_ok:
        # issue 10: at twice the batch the materialised fp32 logits (and their gradient) are what
        # grows; fastgpt's fused head never forms them. Eager both, so the rows are about memory.
        case2 = f"gpt2-124M B{2 * B} T{T} bf16 (memory)"
        for name, make in (("fastgpt", _fastgpt_model), ("nanogpt-sdpa eager", NanoGPT)):
            _time_variant(rows, case2, name, make, False, steps, warm, peak, 2 * B)
    return rows
