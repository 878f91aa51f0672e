"""Pre-training: ``python -m fastgpt.train [--key=value ...]``.

With no arguments it trains on the default corpus (Shakespeare's plays, see
fastgpt.data): on a CPU-only machine the ``tiny`` preset, byte-level, fp32,
in a few minutes; on a GPU the ``gpt2`` preset with GPT-2 BPE, bf16 and the
fused kernels. ``--help`` lists every option with its default.

The loop: autocast (bf16, or fp16 with a dynamic loss scaler, or fp32);
gradient accumulation with the loss normalised by the global token count of
the step; gradient clipping; linear warmup then cosine decay to ``min_lr`` at
``lr_decay_iters``; fused AdamW on CUDA; optional torch.compile; periodic
evaluation on the held-out split; checkpoints (fastgpt.checkpoint) that
``--resume`` continues exactly; metrics in ``OUT_DIR/metrics.jsonl`` (a header
line, then one object per logged step); a generated sample at the end.

Exit status: 0 done, 1 a data/checkpoint problem (one line saying what to
do), 2 a usage error (one line), 130 interrupted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastgpt import cli

PROG = "python -m fastgpt.train"


# What a None option resolves to on each device (--help shows these as "auto: ...").
AUTO = {
    # CPU: ~3M tokens, about 3 minutes on 2 cores; block 128 (not the preset's 256) halves the attention cost
    "cpu": dict(preset="tiny", tokenizer="byte", dtype="fp32", max_iters=750, warmup_iters=50, batch_size=32,
                block_size=128, lr=2e-3, eval_interval=150, eval_iters=10, log_interval=10),
    "cuda": dict(preset="gpt2", tokenizer="gpt2", dtype="bf16", max_iters=1000, warmup_iters=100,
                 batch_size=16, block_size=None, lr=6e-4, eval_interval=100, eval_iters=20, log_interval=10),
}


def _dev(name: str) -> str:
    c, g = AUTO["cpu"][name], AUTO["cuda"][name]
    return f"{c} on CPU, {g} on CUDA" if c != g else str(c)


def _f(default, help, auto=None):
    md = dict(help=help)
    if auto:
        md["auto"] = auto
    return field(default=default, metadata=md)


@dataclass
class TrainConfig:
    """Every option of the training engine. ``None`` = chosen by device (see ``AUTO``)."""
    preset: str | None = _f(None, "model architecture preset, by exact name (fastgpt.config.PRESETS)",
                            _dev("preset"))
    data: str | None = _f(None, "text file, folder or glob to train on (tokenized once, cached); "
                                "none = the default Shakespeare corpus")
    tokenizer: Literal["gpt2", "byte"] | None = _f(None, "tokenizer", _dev("tokenizer"))
    val_fraction: float = _f(0.1, "with --data: the last fraction of each file used for validation")
    out_dir: str = _f("out", "checkpoints, metrics.jsonl and the final model go here")
    max_iters: int | None = _f(None, "optimizer steps to train for (total, counting resumed ones)",
                               _dev("max_iters"))
    lr_decay_iters: int | None = _f(None, "cosine schedule horizon in steps (lr = min_lr after it)", "max_iters")
    warmup_iters: int | None = _f(None, "linear warmup steps", _dev("warmup_iters"))
    batch_size: int | None = _f(None, "sequences per micro-batch", _dev("batch_size"))
    block_size: int | None = _f(None, "sequence length in tokens", "128 on CPU, the preset's on CUDA")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    lr: float | None = _f(None, "peak learning rate", _dev("lr"))
    min_lr: float | None = _f(None, "learning rate at the end of the decay", "lr / 10")
    weight_decay: float = _f(0.1, "AdamW weight decay (matrices and embeddings only)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)")
    dropout: float | None = _f(None, "dropout probability", "the preset's")
    seed: int = _f(1337, "seed of the weights, dropout and batch order")
    device: Literal["cpu", "cuda"] | None = _f(None, "device", "cuda if available, else cpu")
    dtype: Literal["bf16", "fp16", "fp32"] | None = _f(None, "autocast dtype (fp16 adds a dynamic loss scaler)",
                                                       _dev("dtype"))
    backend: Literal["fused", "reference"] | None = _f(None, "op implementation (never saved)",
                                                       "$FASTGPT_BACKEND, else fused on CUDA and reference on CPU")
    compile: bool = _f(False, "torch.compile the model for training")
    eval_interval: int | None = _f(None, "evaluate every N steps (and at the start and the end)",
                                   _dev("eval_interval"))
    eval_iters: int | None = _f(None, "validation batches per evaluation", _dev("eval_iters"))
    log_interval: int | None = _f(None, "log the training loss every N steps", _dev("log_interval"))
    ckpt_interval: int | None = _f(None, "checkpoint every N steps (and at the end; 0 = only at the end)",
                                   "eval_interval")
    keep_ckpts: int = _f(2, "keep the newest N checkpoints (0 = all)")
    resume: bool = _f(False, "continue from the newest checkpoint in out_dir (options not given "
                             "are taken from it)")
    eval_only: bool = _f(False, "evaluate (the resumed or freshly initialised model) and exit")
    sample_tokens: int = _f(300, "tokens to generate at the end (0 = no sample)")
    prompt: str = _f("", "prompt of the final sample (empty: a newline, or <|endoftext|> for gpt2)")
    temperature: float = _f(0.8, "sampling temperature of the final sample")
    top_k: int | None = _f(200, "sample from the k most likely tokens (none = all)")
    peak_tflops: float | None = _f(None, "the card's dense bf16 peak for MFU", "looked up by GPU name")
    progress: bool | None = _f(None, "show a progress bar (else log lines)", "on when stderr is a terminal")

    def validate(self) -> list[str]:
        from fastgpt.config import PRESETS
        p = []
        if self.preset is not None and self.preset not in PRESETS:
            p.append(f"--preset: unknown preset {self.preset!r}; choose from {', '.join(sorted(PRESETS))}")
        for name in ("max_iters", "batch_size", "block_size", "eval_iters", "log_interval", "lr_decay_iters"):
            v = getattr(self, name)
            if v is not None and v < 1:
                p.append(f"--{name} must be >= 1, got {v}")
        for name in ("warmup_iters", "ckpt_interval", "keep_ckpts", "sample_tokens"):
            v = getattr(self, name)
            if v is not None and v < 0:
                p.append(f"--{name} must be >= 0, got {v}")
        if self.eval_interval is not None and self.eval_interval < 1:
            p.append(f"--eval_interval must be >= 1, got {self.eval_interval}")
        if self.grad_accum < 1:
            p.append(f"--grad_accum must be >= 1, got {self.grad_accum}")
        for name in ("lr", "min_lr"):
            v = getattr(self, name)
            if v is not None and not (0 <= v < 10 and math.isfinite(v)):
                p.append(f"--{name} must be in [0, 10), got {v}")
        if self.lr is not None and self.min_lr is not None and self.min_lr > self.lr:
            p.append(f"--min_lr ({self.min_lr}) must not exceed --lr ({self.lr})")
        if self.weight_decay < 0:
            p.append(f"--weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                p.append(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.grad_clip < 0:
            p.append(f"--grad_clip must be >= 0, got {self.grad_clip}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            p.append(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.val_fraction < 1:
            p.append(f"--val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.temperature < 0:
            p.append(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            p.append(f"--top_k must be >= 1, got {self.top_k}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            p.append(f"--peak_tflops must be > 0, got {self.peak_tflops}")
        if self.seed < 0:
            p.append(f"--seed must be >= 0, got {self.seed}")
        if (self.warmup_iters is not None and self.lr_decay_iters is not None
                and self.warmup_iters > self.lr_decay_iters):
            p.append(f"--warmup_iters ({self.warmup_iters}) must not exceed --lr_decay_iters ({self.lr_decay_iters})")
        return p


# Options a --resume takes from the command line rather than from the checkpoint.
RUNTIME_ONLY = ("device", "backend", "compile", "resume", "eval_only", "progress", "out_dir", "peak_tflops")

# Dense bf16 datasheet peaks (TFLOP/s) by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
               ("A100", 312.0), ("A10G", 70.0), ("L40S", 362.0), ("L4", 121.0)]


class RunError(RuntimeError):
    """A problem with the run's inputs (data, checkpoint); exit 1 with this one line."""


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for key, tf in PEAK_TFLOPS:
        if key in device_name:
            return tf * 1e12
    return None


def lr_at(step: int, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from lr to min_lr at ``decay_iters``, then min_lr."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay_iters:
        return min_lr
    ratio = (step - warmup) / max(1, decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def resolve(cfg: TrainConfig, given: set[str]) -> TrainConfig:
    """Fill the auto (None) options for the device; usage errors raise cli.UsageError."""
    import torch
    from fastgpt.config import PRESETS
    c = dataclasses.replace(cfg)
    if c.device is None:
        c.device = "cuda" if torch.cuda.is_available() else "cpu"
    if c.device == "cuda" and not torch.cuda.is_available():
        raise cli.UsageError("--device cuda: no CUDA device is available (use --device cpu)")
    for k, v in AUTO[c.device].items():
        if getattr(c, k) is None:
            setattr(c, k, v)
    if c.dtype == "fp16" and c.device != "cuda":
        raise cli.UsageError("--dtype fp16 needs --device cuda (on the CPU use bf16 or fp32)")
    if c.dtype == "bf16" and c.device == "cuda" and not torch.cuda.is_bf16_supported():
        raise cli.UsageError("--dtype bf16: this GPU has no bf16; use --dtype fp16")
    if c.block_size is None:
        c.block_size = PRESETS[c.preset]["block_size"]
    if c.lr_decay_iters is None:
        c.lr_decay_iters = c.max_iters
    if c.min_lr is None:
        c.min_lr = c.lr / 10
    if c.ckpt_interval is None:
        c.ckpt_interval = c.eval_interval
    if c.warmup_iters > c.lr_decay_iters:
        c.warmup_iters = c.lr_decay_iters if "warmup_iters" not in given else c.warmup_iters
        if c.warmup_iters > c.lr_decay_iters:
            raise cli.UsageError(f"--warmup_iters ({c.warmup_iters}) must not exceed the schedule horizon "
                                 f"--lr_decay_iters ({c.lr_decay_iters})")
    if c.progress is None:
        c.progress = sys.stderr.isatty()
    return c


def _versions(device) -> dict:
    import numpy
    import torch
    import fastgpt
    v = dict(fastgpt=fastgpt.__version__, torch=torch.__version__, numpy=numpy.__version__,
             python=platform.python_version(), platform=platform.platform())
    try:
        import triton
        v["triton"] = triton.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        v["cuda"] = torch.version.cuda
    return v


class _Log:
    """Progress bar (tqdm) or plain lines, plus the metrics JSONL file."""

    def __init__(self, path: Path, append: bool, bar: bool, total: int, initial: int):
        self.f = open(path, "a" if append else "w")
        self.bar = None
        if bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def write(self, obj: dict):
        self.f.write(json.dumps(obj) + "\n")
        self.f.flush()

    def say(self, msg: str):
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self.f.close()


def run(cfg: TrainConfig, given: set[str] | None = None) -> dict:
    """Train (or evaluate) per cfg; returns a summary dict. Raises RunError / cli.UsageError."""
    import numpy as np
    import torch

    from fastgpt import checkpoint as ck
    from fastgpt import data as fdata
    from fastgpt.backend import resolve as resolve_backend
    from fastgpt.config import GPTConfig
    from fastgpt.model import GPT

    given = set(given or ())
    out_dir = Path(cfg.out_dir)
    ckpt_state = None
    if cfg.resume:
        latest = ck.latest_checkpoint(out_dir)
        if latest is None:
            print(f"fastgpt.train: no checkpoint in {out_dir} to resume; starting fresh", file=sys.stderr)
        else:
            try:
                ckpt_state = ck.load_checkpoint(latest)
            except ck.CheckpointError as e:
                raise RunError(str(e)) from None
            # options not given on this command line come from the checkpoint
            saved = ckpt_state["train_config"]
            keep = {k: getattr(cfg, k) for k in given | set(RUNTIME_ONLY)}
            cfg = dataclasses.replace(cfg, **{k: v for k, v in saved.items()
                                              if k in {f.name for f in dataclasses.fields(cfg)}})
            cfg = dataclasses.replace(cfg, **keep)
            if "lr_decay_iters" not in given and "max_iters" in given and saved.get("lr_decay_iters") == saved.get(
                    "max_iters") and saved.get("_lr_decay_auto"):
                cfg.lr_decay_iters = None  # it followed max_iters: keep following
            problems = cfg.validate()
            if problems:
                raise cli.UsageError(problems[0])
    lr_decay_auto = cfg.lr_decay_iters is None
    cfg = resolve(cfg, given)
    device = torch.device(cfg.device)
    try:
        backend_name = resolve_backend(cfg.backend, device.type)
    except (RuntimeError, ValueError) as e:
        raise cli.UsageError(str(e).splitlines()[0]) from None

    # --- determinism and precision
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)

    # --- data
    try:
        td = fdata.prepare(cfg.data, cfg.tokenizer, cfg.val_fraction)
        tok = fdata.get_tokenizer(cfg.tokenizer)
    except fdata.DataError as e:
        raise RunError(str(e)) from None
    if len(td.val) < cfg.block_size + 1:
        raise RunError(f"the validation split has {len(td.val)} tokens, fewer than block_size + 1 = "
                       f"{cfg.block_size + 1}; use a smaller --block_size, more text or a larger --val_fraction")
    try:
        train_batches = fdata.BatchSampler(td.train, cfg.batch_size, cfg.block_size, cfg.seed)
    except fdata.DataError as e:
        raise RunError(str(e)) from None

    # --- model
    if ckpt_state is not None:
        mcfg = GPTConfig.from_dict(ckpt_state["config"])
        if ckpt_state.get("tokenizer") != cfg.tokenizer:
            raise RunError(f"the checkpoint was trained with the {ckpt_state.get('tokenizer')!r} tokenizer, "
                           f"this run uses {cfg.tokenizer!r}")
    else:
        over = dict(vocab_size=tok.n_vocab, block_size=cfg.block_size)
        if cfg.dropout is not None:
            over["dropout"] = cfg.dropout
        mcfg = GPTConfig.preset(cfg.preset, **over)
        mcfg.extra = dict(tokenizer=cfg.tokenizer)
    try:
        model = GPT(mcfg, backend=cfg.backend).to(device)
    except RuntimeError as e:  # e.g. the fused backend unavailable on this machine
        raise cli.UsageError(str(e).splitlines()[0]) from None
    if ckpt_state is not None:
        model.load_state_dict(ckpt_state["model"])
    optimizer = model.configure_optimizers(weight_decay=cfg.weight_decay, learning_rate=cfg.lr,
                                           betas=(cfg.beta1, cfg.beta2), device_type=device.type)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[cfg.dtype]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    step = 0
    extra = dict(tokens_seen=0, best_val_loss=None)
    if ckpt_state is not None:
        optimizer.load_state_dict(ckpt_state["optimizer"])
        if ckpt_state.get("scaler") and cfg.dtype == "fp16":
            scaler.load_state_dict(ckpt_state["scaler"])
        try:
            train_batches.load_state_dict(ckpt_state["data"])
        except fdata.DataError as e:
            raise RunError(str(e)) from None
        step = int(ckpt_state["step"])
        extra.update(ckpt_state.get("extra", {}))
        ck.set_rng_state(ckpt_state["rng"])
    fwd = torch.compile(model) if cfg.compile else model

    n_params = model.num_params()
    flops_tok = model.flops_per_token(cfg.block_size)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_flops(dev_name, cfg.peak_tflops) if device.type == "cuda" else None
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum

    @torch.no_grad()
    def evaluate() -> float:
        """Mean loss over eval_iters fixed validation batches (the same ones every time)."""
        was = model.training
        model.eval()
        sampler = fdata.BatchSampler(td.val, cfg.batch_size, cfg.block_size, seed=cfg.seed + 1)
        tot = torch.zeros((), device=device, dtype=torch.float64)
        for _ in range(cfg.eval_iters):
            x, y = sampler.next(device)
            with autocast():
                _, loss = model(x, y, return_logits=False)
            tot += loss.double()
        model.train(was)
        return float(tot / cfg.eval_iters)

    out_dir.mkdir(parents=True, exist_ok=True)
    saved_cfg = cli.to_dict(cfg, drop=("backend",))
    saved_cfg["_lr_decay_auto"] = lr_decay_auto
    header = dict(type="header", versions=_versions(device), device=dev_name, device_type=device.type,
                  config=saved_cfg, model_config=mcfg.to_dict(), n_params=n_params,
                  tokenizer=cfg.tokenizer, data=str(td.dir), tokens=td.meta["n_tokens"],
                  backend=backend_name,
                  resumed_from=step if ckpt_state is not None else None,
                  started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    metrics_path = out_dir / "metrics.jsonl"
    log = _Log(metrics_path, append=ckpt_state is not None and metrics_path.exists(),
               bar=cfg.progress and not cfg.eval_only, total=cfg.max_iters, initial=step)
    summary = dict(out_dir=str(out_dir), step=step)

    def state(step):
        return dict(step=step, model=model.state_dict(), config=mcfg.to_dict(), model_config=mcfg.to_dict(),
                    optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict() if scaler.is_enabled() else None, rng=ck.rng_state(),
                    data=train_batches.state_dict(), train_config=saved_cfg, tokenizer=cfg.tokenizer,
                    extra=dict(extra))

    try:
        log.say(f"fastgpt.train: {cfg.preset} ({n_params / 1e6:.2f}M params), {cfg.tokenizer} tokens, "
                f"{td.meta['n_tokens']['train']:,} train / {td.meta['n_tokens']['val']:,} val tokens, "
                f"{dev_name} {cfg.dtype}, backend {header['backend']}, out_dir {out_dir}")
        if cfg.eval_only:
            v = evaluate()
            header["eval_only"] = True
            log.write(header)
            log.write(dict(step=step, val_loss=v, eval_only=True))
            print(f"step {step}: val_loss {v:.4f}")
            summary.update(val_loss=v)
            return summary
        if step == 0 and cfg.eval_iters:
            header["init_val_loss"] = evaluate()
            log.say(f"step 0: val_loss {header['init_val_loss']:.4f}")
        log.write(header)
        if step >= cfg.max_iters:
            log.say(f"fastgpt.train: already at step {step} >= --max_iters {cfg.max_iters}; nothing to train")

        model.train()
        t0 = t_last = time.perf_counter()
        step_last = step
        while step < cfg.max_iters:
            lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss_acc = train_step(fwd, model.parameters(), optimizer, scaler, lambda: train_batches.next(device),
                                  cfg.grad_accum, cfg.grad_clip, autocast)
            step += 1
            extra["tokens_seen"] += tokens_per_step

            last = step == cfg.max_iters
            is_eval = cfg.eval_iters > 0 and (step % cfg.eval_interval == 0 or last)
            if step % cfg.log_interval == 0 or is_eval or last:
                lv = float(loss_acc)  # syncs
                if not math.isfinite(lv) and cfg.dtype != "fp16":
                    raise RunError(f"the training loss became {lv} at step {step}; lower --lr (now {cfg.lr}) or "
                                   "use --dtype fp32")
                now = time.perf_counter()
                dt = now - t_last
                tok_s = (step - step_last) * tokens_per_step / dt if dt > 0 else None
                row = dict(step=step, loss=lv, lr=lr, tok_s=tok_s, time_s=now - t0)
                if peak and tok_s:
                    row["mfu"] = tok_s * flops_tok / peak
                if scaler.is_enabled():
                    row["loss_scale"] = scaler.get_scale()
                if is_eval:
                    v = evaluate()
                    row["val_loss"] = v
                    if extra["best_val_loss"] is None or v < extra["best_val_loss"]:
                        extra["best_val_loss"] = v
                log.write(row)
                mfu_s = f", mfu {row['mfu'] * 100:.1f}%" if "mfu" in row else ""
                tok_s_s = f", {tok_s:,.0f} tok/s" if tok_s else ""
                if log.bar is not None:
                    log.bar.set_postfix_str(f"loss {lv:.4f}, lr {lr:.2e}{tok_s_s}{mfu_s}", refresh=False)
                if is_eval or log.bar is None:
                    vs = f", val_loss {row['val_loss']:.4f}" if is_eval else ""
                    log.say(f"step {step}/{cfg.max_iters}: loss {lv:.4f}{vs}, lr {lr:.2e}{tok_s_s}{mfu_s}")
                t_last, step_last = time.perf_counter(), step  # evaluation time is not training time
            if log.bar is not None:
                log.bar.update(1)
            if last or (cfg.ckpt_interval and step % cfg.ckpt_interval == 0):
                p = ck.save_checkpoint(out_dir, state(step), keep=cfg.keep_ckpts)
                summary["checkpoint"] = str(p)
        summary.update(step=step, best_val_loss=extra["best_val_loss"], init_val_loss=header.get("init_val_loss"))
    finally:
        log.close()

    # --- the trained model, and a sample from it
    model.save_pretrained(out_dir / "model")
    with open(out_dir / "model" / "tokenizer.json", "w") as f:
        json.dump(dict(tokenizer=cfg.tokenizer), f)
    if cfg.sample_tokens:
        text = sample(model, tok, cfg.prompt, cfg.sample_tokens, cfg.temperature, cfg.top_k, device, cfg.seed)
        print(f"--- sample ({cfg.sample_tokens} tokens, temperature {cfg.temperature}) ---")
        print(text)
        print("---")
        summary["sample"] = text
    return summary


def train_step(fwd, params, optimizer, scaler, next_batch, grad_accum: int, grad_clip: float, autocast):
    """One optimizer step over grad_accum micro-batches; returns the step's loss (a 0-dim tensor, no sync).

    The model returns each micro-batch's mean loss; it is weighted by the micro-batch's share of the
    step's target tokens (every target counts in pre-training), so the gradient is that of the mean
    over the step's global token count, whatever the split into micro-batches.
    """
    import torch
    batches = [next_batch() for _ in range(grad_accum)] if grad_accum > 1 else None
    total = sum(y.numel() for _, y in batches) if batches else None
    loss_acc = None
    for i in range(grad_accum):
        x, y = batches[i] if batches else next_batch()
        with autocast():
            _, loss = fwd(x, y, return_logits=False)
        if total is not None:
            loss = loss * (y.numel() / total)
        scaler.scale(loss).backward()
        loss_acc = loss.detach() if loss_acc is None else loss_acc + loss.detach()
    params = [p for p in params if p.grad is not None]
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_acc


def sample(model, tok, prompt: str, n: int, temperature: float, top_k, device, seed: int) -> str:
    """Generate n tokens after prompt (empty: newline, or <|endoftext|> for GPT-2 BPE) with its own RNG."""
    import torch
    ids = tok.encode(prompt) if prompt else ([tok.eot] if tok.eot is not None else tok.encode("\n"))
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, n, temperature=temperature, top_k=top_k, generator=g)
    new = out[0, len(ids):].tolist()
    return (prompt or "") + tok.decode(new)


def main(argv=None) -> int:
    cfg, given = cli.parse(TrainConfig, argv, prog=PROG, description=__doc__.split("\n\n")[1])
    try:
        run(cfg, given)
    except cli.UsageError as e:
        cli.die(PROG, str(e), 2)
    except RunError as e:
        cli.die(PROG, str(e), 1)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
