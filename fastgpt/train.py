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

Surviving: SIGINT or SIGTERM finishes the current step, saves a checkpoint
and exits 0 with a line naming it (a second SIGINT aborts at once, 130).
Checkpoints are written atomically with a SHA-256 footer; ``--resume`` takes
the newest that verifies and names those it skipped. A step whose loss or
gradient is not finite is skipped and counted (the fp16 scaler backs off);
``--max_bad_steps`` consecutive ones stop the run (exit 3), leaving the last
good checkpoint. ``--grad_checkpoint`` recomputes each block in backward.
Under ``torchrun --nproc_per_node=N -m fastgpt.train`` it trains with DDP
(NCCL on CUDA, gloo on CPU): ``--batch_size`` is per process, every rank
draws the same global batch stream and keeps its rows, so N processes with
batch B follow one process with batch N*B; rank 0 logs and checkpoints.
With ``--fsdp`` it shards instead (FSDP2 ``fully_shard``: each block, then
the root); the checkpoints are the same full state dicts as a single
process writes, so a run resumes at any world size, with or without FSDP.
Test hooks (environment): FASTGPT_TEST_NONFINITE="3,5" puts an inf in a
gradient at those steps; FASTGPT_TEST_SAVE_PAUSE=SECONDS hangs checkpoint
writes midway (touching the file FASTGPT_TEST_SAVE_PAUSE_MARK names, if set, as the pause begins).

Exit status: 0 done (or stopped by a signal after saving), 1 a
data/checkpoint problem (one line saying what to do), 2 a usage error (one
line), 3 stopped after --max_bad_steps non-finite steps, 130 aborted, 141
stdout closed early (``... | head``: quietly, as coreutils and git end there).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastgpt import cli
from fastgpt.config import PRESETS

PROG = "python -m fastgpt.train"

EPILOG = f"""examples:
  {PROG}                                        # the default run (Shakespeare, fetched once)
  {PROG} --data my_texts/ --preset tiny --max_iters 2000 --out_dir runs/a
  {PROG} --out_dir runs/a --resume --max_iters 4000   # continue; other options: the checkpoint's
  {PROG} --out_dir runs/a --resume --eval_only
  {PROG} --config run.toml --lr=3e-4            # JSON/TOML file of options; the command line wins
  {PROG} --init gpt2 --data my_texts/ --lr 3e-5 --max_iters 200   # from GPT-2's weights (HF Hub id)
  torchrun --nproc_per_node=8 -m fastgpt.train --batch_size=16   # DDP (--fsdp: sharded)

outputs in --out_dir: ckpt_NNNNNNN.pt (full state, atomic, SHA-256 checked), metrics.jsonl, model/
(save_pretrained; sample with: python -m fastgpt.sample OUT_DIR).

exit status: 0 done (or saved after Ctrl-C / SIGTERM / SIGHUP), 1 a data or checkpoint problem, 2 a
usage error, 3 stopped after --max_bad_steps non-finite steps, 130 aborted (a second Ctrl-C), 141 stdout
closed early."""


# What a None option resolves to on each device (--help shows these as "auto: ...").
AUTO = {
    # CPU: ~2M tokens, 2 to 4 minutes on 2 cores (9k-19k tok/s on the dev machine, 2026-11-26/29, by its load);
    # block 128 (not the preset's 256) halves the attention cost
    "cpu": dict(preset="tiny", tokenizer="byte", dtype="fp32", max_iters=500, warmup_iters=50, batch_size=32,
                block_size=128, lr=2e-3, eval_interval=100, eval_iters=10, log_interval=10),
    "cuda": dict(preset="gpt2", tokenizer="gpt2", dtype="bf16", max_iters=1000, warmup_iters=100,
                 batch_size=16, block_size=None, lr=6e-4, eval_interval=100, eval_iters=20, log_interval=10),
}


def _dev(name: str) -> str:
    c, g = AUTO["cpu"][name], AUTO["cuda"][name]
    return f"{c} on CPU, {g} on CUDA" if c != g else str(c)


_f = cli.opt


@dataclass
class TrainConfig:
    """Every option of the training engine. ``None`` = chosen by device (see ``AUTO``)."""
    preset: str | None = _f(None, f"model architecture preset, by exact name: {', '.join(PRESETS)}",
                            _dev("preset"))
    init: str | None = _f(None, "weights to start from: a save_pretrained / HF folder, an HF Hub id (gpt2), a "
                          "fastgpt.train out_dir or checkpoint, nanoGPT's ckpt.pt; keeps its architecture and "
                          "tokenizer (--block_size may shorten its context, --dropout replaces its rate)",
                          "random weights of --preset", path=True)
    data: str | None = _f(None, "text file, folder or glob to train on (tokenized once, cached); "
                                "none = the default Shakespeare corpus", path=True)
    tokenizer: Literal["gpt2", "byte"] | None = _f(None, "tokenizer", _dev("tokenizer"))
    val_fraction: float = _f(0.1, "with --data: the last fraction of each file used for validation")
    out_dir: str = _f("out", "checkpoints, metrics.jsonl and the final model go here", path=True)
    max_iters: int | None = _f(None, "optimizer steps to train for (total, counting resumed ones)",
                               _dev("max_iters"))
    lr_decay_iters: int | None = _f(None, "cosine schedule horizon in steps (lr = min_lr after it)", "max_iters")
    warmup_iters: int | None = _f(None, "linear warmup steps (the default: at most lr_decay_iters // 10)",
                                  _dev("warmup_iters"))
    batch_size: int | None = _f(None, "sequences per micro-batch", _dev("batch_size"))
    block_size: int | None = _f(None, "sequence length in tokens", "128 on CPU, the preset's on CUDA")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    lr: float | None = _f(None, "peak learning rate", _dev("lr"))
    min_lr: float | None = _f(None, "learning rate at the end of the decay", "lr / 10")
    weight_decay: float = _f(0.1, "AdamW weight decay (matrices and embeddings only)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)")
    dropout: float | None = _f(None, "dropout probability", "the preset's, or the --init model's")
    seed: int = _f(1337, "seed of the weights, dropout and batch order")
    device: Literal["cpu", "cuda"] | None = _f(None, "device (one GPU of several: CUDA_VISIBLE_DEVICES=N; several: torchrun)",
                                               "cuda if available, else cpu")
    dtype: Literal["bf16", "fp16", "fp32"] | None = _f(None, "autocast dtype (fp16 adds a dynamic loss scaler)",
                                                       _dev("dtype") + " (fp16 before compute capability 8.0)")
    backend: Literal["fused", "reference"] | None = _f(None, "op implementation (never saved)",
                                                       "$FASTGPT_BACKEND, else fused on CUDA and reference on CPU")
    compile: bool = _f(False, "torch.compile the model for training")
    eval_interval: int | None = _f(None, "evaluate every N steps (and at the start and the end)",
                                   _dev("eval_interval"))
    eval_iters: int | None = _f(None, "validation batches (global: --batch_size x processes sequences) per eval",
                                _dev("eval_iters"))
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
    peak_tflops: float | None = _f(None, "the card's dense bf16 peak for MFU (CUDA only: no MFU on a CPU)",
                                   "looked up by GPU name")
    progress: bool | None = _f(None, "show a progress bar (else log lines)", "on when stderr is a terminal")
    grad_checkpoint: bool = _f(False, "activation checkpointing: recompute each block in backward (less memory, "
                                      "~1/3 more compute; dropout masks replayed exactly)")
    max_bad_steps: int = _f(10, "stop (exit 3) after this many consecutive steps with a non-finite loss or "
                                "gradient, each skipped (0 = never stop)")
    fsdp: bool = _f(False, "under torchrun: shard parameters, gradients and optimizer state over the processes "
                           "(FSDP2, one unit per block + the root) instead of DDP; checkpoints stay full and "
                           "resume at any world size; not with --compile")

    def validate(self) -> list[str]:
        p = cli.empty_path_problems(out_dir=self.out_dir, data=self.data, init=self.init)
        bad_prompt = cli.not_utf8_problem("--prompt", self.prompt or "")
        if bad_prompt:
            p.append(bad_prompt)
        if self.init is not None and self.preset is not None:
            p.append("--preset applies to random weights: the --init model has its own architecture; drop one of them")
        if self.init == "random" and not os.path.lexists("random"):   # (finetune's spelling: a Hub lookup here)
            p.append("--init random is fastgpt.finetune's spelling: fastgpt.train starts from random weights "
                     "without --init (of --preset's architecture); drop --init")
        if self.preset is not None and self.preset not in PRESETS:
            p.append(f"--preset: unknown preset {self.preset!r}; choose from {', '.join(sorted(PRESETS))}")
        for name in ("max_iters", "batch_size", "block_size", "eval_iters", "log_interval", "lr_decay_iters"):
            v = getattr(self, name)
            if v is not None and v < 1:
                p.append(f"--{name} must be >= 1, got {v}")
        for name in ("warmup_iters", "ckpt_interval", "keep_ckpts", "sample_tokens", "max_bad_steps"):
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
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            p.append(f"--weight_decay must be a finite number >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                p.append(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if not (self.grad_clip >= 0 and math.isfinite(self.grad_clip)):
            p.append(f"--grad_clip must be a finite number >= 0 (0 = off), got {self.grad_clip}")
        from fastgpt.config import dropout_option_problems
        p += dropout_option_problems(self.dropout)
        if not 0 < self.val_fraction < 1:   # (0: no validation split, which the evaluations need)
            p.append(f"--val_fraction must be in (0, 1), got {self.val_fraction}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            p.append(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            p.append(f"--top_k must be >= 1, got {self.top_k}")
        if self.peak_tflops is not None and not (0 < self.peak_tflops < math.inf):
            p.append(f"--peak_tflops must be a finite number > 0, got {self.peak_tflops}")
        p += cli.seed_problems(self.seed)
        if self.fsdp and self.compile:
            p.append("--fsdp with --compile is not supported; drop one of them")
        if (self.warmup_iters is not None and self.lr_decay_iters is not None
                and self.warmup_iters > self.lr_decay_iters):
            p.append(f"--warmup_iters ({self.warmup_iters}) must not exceed --lr_decay_iters ({self.lr_decay_iters})")
        return p


# Options a --resume takes from the command line rather than from the checkpoint.
RUNTIME_ONLY = ("device", "backend", "compile", "resume", "eval_only", "progress", "out_dir", "peak_tflops",
                "grad_checkpoint", "fsdp")
# Options whose default follows another one (lr_decay_iters = max_iters, min_lr = lr / 10, ckpt_interval =
# eval_interval, warmup_iters = the device's default, at most lr_decay_iters // 10): left to follow, they
# are derived again on --resume from that run's values.
FOLLOWING = ("lr_decay_iters", "min_lr", "ckpt_interval", "warmup_iters")

# Dense bf16 datasheet peaks (TFLOP/s) by a name in torch.cuda.get_device_name(), matched as whole words (the
# first that matches: the longer names first); as a substring, "L4" matched the L40's name (MFU 1.5x too high)
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("GH200", 989.4), ("H200 NVL", 835.0),
               ("H200", 989.4), ("A100", 312.0), ("A10G", 70.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0)]


# Devices offered --dtype fp16. PyTorch also trains in fp16 on the CPU (autocast + GradScaler("cpu"),
# checked with torch 2.13; the tests use it to exercise the loss scaler there), but it is slower than
# fp32 on most CPUs and has bf16's cost without its range, so the command line steers users away.
FP16_DEVICES = ("cuda",)


class RunError(RuntimeError):
    """A problem with the run's inputs (data, checkpoint); exit 1 with this one line."""


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for key, tf in PEAK_TFLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", device_name):
            return tf * 1e12
    return None


def lr_at(step: int, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from lr to min_lr at ``decay_iters``, then min_lr.
    Step ``warmup`` takes the peak lr even when it is decay_iters (a warmup as long as the schedule went
    from 5/6 of lr straight to min_lr, never reaching lr)."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay_iters and step > warmup:
        return min_lr
    ratio = (step - warmup) / max(1, decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


# Options an --init model decides when not given (_init_model), rather than the device's defaults.
INIT_OWN = ("preset", "tokenizer", "block_size")


def resolve(cfg: TrainConfig, given: set[str]) -> TrainConfig:
    """Fill the auto (None) options for the device (with --init, _init_model fills INIT_OWN's after it);
    usage errors raise cli.UsageError."""
    from fastgpt import data as fdata
    c = dataclasses.replace(cfg)
    c.device = cli.device(c.device).type
    if c.tokenizer is None and c.init is None and c.data is not None:   # a token folder's own, not the device's
        c.tokenizer = fdata.token_dir_tokenizer(c.data)
    defaulted = {k for k in AUTO[c.device] if getattr(c, k) is None   # (a --resume's saved values are set)
                 and not (k in INIT_OWN and c.init is not None)}       # (--init: the model's, _init_model)
    for k in defaulted:
        setattr(c, k, AUTO[c.device][k])
    if c.dtype == "fp16" and c.device not in FP16_DEVICES:
        raise cli.UsageError("--dtype fp16 needs --device cuda (on the CPU use bf16 or fp32)")
    if c.device == "cuda":   # auto: bf16, or fp16 on a GPU without native bf16
        c.dtype = cli.cuda_dtype(None if "dtype" in defaulted else c.dtype)
    if c.data is not None:  # absolute: the checkpoint keeps it, and a --resume may start from another folder
        c.data = cli.absolute_path(c.data)
    if c.init is not None:
        c.init = cli.absolute_if_exists(c.init)   # (a Hub id stays as typed)
    if c.block_size is None and c.init is None:
        c.block_size = PRESETS[c.preset]["block_size"]
    if c.lr_decay_iters is None:
        c.lr_decay_iters = c.max_iters
    if c.min_lr is None:
        c.min_lr = c.lr / 10
    elif c.min_lr > c.lr:  # --min_lr given, --lr the device's default
        default = "" if "lr" in given else f", the default on {c.device}"
        raise cli.AlikeUsageError(f"--min_lr ({c.min_lr}) must not exceed --lr ({c.lr}{default})")
    if c.ckpt_interval is None:
        c.ckpt_interval = c.eval_interval
    if "warmup_iters" in defaulted:  # the device's default warmup takes at most a tenth of the schedule:
        # a short run (--max_iters 12 on the CPU's 50) was all warmup, ending near the peak lr, never decayed
        c.warmup_iters = min(c.warmup_iters, c.lr_decay_iters // 10)
    if c.warmup_iters > c.lr_decay_iters:
        raise cli.AlikeUsageError(f"--warmup_iters ({c.warmup_iters}) must not exceed the schedule horizon "
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


class _Dist:
    """This process's place in a torchrun job (world 1 = a plain single-process run)."""

    def __init__(self, world: int = 1, rank: int = 0, local_rank: int = 0, owned: bool = False):
        self.world, self.rank, self.local_rank, self.owned = world, rank, local_rank, owned

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t, op: str = "avg"):
        """t reduced over ranks in place (avg | max | sum); a no-op in a single process."""
        if self.world > 1:
            import torch.distributed as tdist
            if op == "avg":
                tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
                t /= self.world
            else:
                tdist.all_reduce(t, op=tdist.ReduceOp.MAX if op == "max" else tdist.ReduceOp.SUM)
        return t

    def gather_objects(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as tdist
        out = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def agree(self, error: str | None) -> None:
        """A barrier that carries each rank's error (None: fine). If any rank failed, rank 0 raises
        RunError with the first message (its one line) and the others exit 1 quietly: work that one
        rank does alone (tokenizing, writing files) never leaves the others in a broken collective."""
        errors = self.gather_objects(error) if self.world > 1 else [error]
        first = next((e for e in errors if e), None)
        if first is not None:
            if self.main:
                raise RunError(first)
            raise SystemExit(1)

    def close(self):
        if self.owned:
            import torch.distributed as tdist
            if tdist.is_initialized():
                gloo = tdist.get_backend() == "gloo"
                tdist.destroy_process_group()
                # free the process group (and join gloo's worker threads) while Python is whole: left to
                # interpreter shutdown, a worker releasing the last collective's tensors needs the GIL
                # then and aborts the process ("terminate called without an active exception", seen
                # in 4 of 22 two-rank gloo runs; 0 of 42 with this; pytorch/pytorch#179291 describes it)
                gc.collect()
                # and even so gloo's threads aborted a rank at interpreter shutdown now and then, after the
                # run was done and written (twice in the two-rank CI test on a loaded machine, 2026-11-29):
                # such a process skips the teardown (cli.run_program)
                cli.HARD_EXIT |= gloo


def init_distributed(device_type: str, always: bool = False) -> _Dist:
    """Join the torchrun job described by $WORLD_SIZE / $RANK / $LOCAL_RANK (NCCL on CUDA, gloo on CPU).

    A world of 1 is a plain process without a process group, unless ``always`` (FSDP needs one).
    """
    world = cli.torchrun_world_size()
    if world <= 1 and not always:
        return _Dist()
    import torch
    import torch.distributed as tdist
    if "RANK" not in os.environ:
        raise cli.UsageError(f"$WORLD_SIZE is {world} but $RANK is not set: start multi-process runs with "
                             "torchrun --nproc_per_node=N -m fastgpt.train")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        if local >= torch.cuda.device_count():
            raise cli.UsageError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices; "
                                 "use --nproc_per_node <= the GPU count")
        torch.cuda.set_device(local)
    owned = not tdist.is_initialized()
    if owned:
        kw = dict(device_id=torch.device("cuda", local)) if device_type == "cuda" else {}
        # 30 minutes for any collective (NCCL's default is 10): the other ranks wait in one while rank 0
        # tokenizes a corpus or writes a checkpoint alone (README: prepare a big corpus beforehand)
        tdist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30),
                                 **kw)
    return _Dist(tdist.get_world_size(), tdist.get_rank(), local, owned)


class AlikeRunError(RunError):
    """A RunError every torchrun worker meets the same way (the checkpoint, --init model or data that all of them
    read): said by rank 0 alone (cli.die), as AlikeUsageError."""


class DivergedError(RunError):
    """max_bad_steps consecutive non-finite steps; exit 3."""


EXIT_DIVERGED = 3


def _enable_grad_checkpoint(model) -> None:
    """Recompute each transformer block in backward (torch.utils.checkpoint, non-reentrant).

    Wraps ``GPTBlock.forward_stream`` per block, so the (x, pending) pair the
    fused pre-LN path passes between blocks stays as it is; the RNG state is
    saved and restored around the recomputation (preserve_rng_state), so the
    dropout masks of the recomputed forward equal the first ones.
    """
    import torch
    from torch.utils.checkpoint import checkpoint
    for block in model.transformer.h:
        if getattr(block, "_fastgpt_ckpt", False):
            continue
        inner = block.forward_stream

        def forward_stream(x, pending=None, kv=None, _inner=inner):
            if kv is not None or not torch.is_grad_enabled():
                return _inner(x, pending, kv)
            return checkpoint(_inner, x, pending, None, use_reentrant=False, preserve_rng_state=True)

        block.forward_stream = forward_stream
        block._fastgpt_ckpt = True


def _fsdp_shard(model, device_type: str) -> None:
    """FSDP2 over the default process group: each transformer block one unit, then the root.

    A block's parameters are all-gathered just before it runs and freed after
    it (reshard_after_forward; not the last block, whose backward comes right
    away); the root unit holds the embeddings (wte tied to lm_head), wpe and
    ln_f. GPT.hidden_states calls each block as a module (its forward takes and
    returns the pending residual add), so FSDP's hooks fire there. Apply
    ``_enable_grad_checkpoint`` before this, so the FSDP hooks sit outside the
    checkpoint: the recomputation in backward runs on the parameters FSDP's
    pre-backward hook has already gathered.

    Precision stays with autocast (no MixedPrecisionPolicy): fp32 parameters
    are gathered and fp32 gradients reduce-scattered, the ops see what they
    see in one process (fp32 weights, autocast activations), and the losses
    match a single-process run with the same global batch.
    """
    import warnings

    import torch.distributed as tdist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    # The pre-LN block returns its pending MLP output as a view of a (B*T, C) matmul; FSDP2 warns that
    # an in-place op on it would bypass its pre-backward hook. The next block only reads it
    # (add_layer_norm is out of place), so the warning does not apply here.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    # the mesh names the run's device: fully_shard's default would pick CUDA whenever there is one
    mesh = init_device_mesh(device_type, (tdist.get_world_size(),))
    blocks = list(model.transformer.h)
    for i, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh)


def _fsdp_full_state(model, optimizer=None) -> tuple[dict, dict | None]:
    """(model, optimizer) full state dicts on rank 0, on the CPU, in the single-process format (a
    collective: every rank calls it; the others get empty dicts).

    torch.distributed.checkpoint keys the optimizer state by parameter name; it is re-keyed by the
    index torch.optim.Optimizer.state_dict() uses (position in the param groups), so the file is
    the one a single process writes, and either kind of run resumes it.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    if "lm_head.weight" in msd and "transformer.wte.weight" in msd:   # the tied weight, gathered twice: one
        msd["lm_head.weight"] = msd["transformer.wte.weight"]         # tensor, as a single process saves it
    osd = None if optimizer is None else get_optimizer_state_dict(model, optimizer, options=opts)
    if not osd:
        return msd, osd
    names = [n for g in osd["param_groups"] for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    return msd, dict(state={index[n]: v for n, v in osd["state"].items()},
                     param_groups=[dict(g, params=[index[n] for n in g["params"]]) for g in osd["param_groups"]])


def _fsdp_load_optimizer(model, optimizer, state: dict) -> None:
    """Load a full, index-keyed optimizer state dict (any checkpoint's) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    name = {id(p): n for n, p in model.named_parameters()}  # the tied wte/lm_head weight once, as wte
    names = [name[id(p)] for g in optimizer.param_groups for p in g["params"]]
    if len(names) != sum(len(g["params"]) for g in state["param_groups"]):
        raise AlikeRunError("the checkpoint's optimizer state does not match this model's parameters")
    osd = dict(state={names[i]: v for i, v in state["state"].items()},
               param_groups=[dict(g, params=[names[i] for i in g["params"]]) for g in state["param_groups"]])
    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))
    # the hyperparameters exactly as saved (set_optimizer_state_dict's flattening turns tuples into lists)
    for g, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        g.update({k: v for k, v in saved.items() if k != "params"})


def _nonfinite_test_steps() -> set[int]:
    """Test hook: $FASTGPT_TEST_NONFINITE="3,4" puts an inf in a gradient at those (1-based) steps."""
    raw = os.environ.get("FASTGPT_TEST_NONFINITE", "").strip()
    return {int(s) for s in raw.split(",") if s.strip()} if raw else set()


def _resume_point(cfg: TrainConfig, given: set[str], dist: _Dist, out_dir: Path, say) -> tuple:
    """--resume: (cfg with the options of the run it continues, the checkpoint's state, its path); the
    state and path are None when it starts a run again from its metrics.jsonl header, or a new one
    (cli.resume_point). Every rank must see the same: RunError (rank 0's line) when they do not."""
    from fastgpt import checkpoint as ck
    err = saved = ckpt_state = resumed_from = None
    try:
        resumed_from, ckpt_state, saved = cli.resume_point(
            out_dir, lambda msg: say(f"{PROG}: {msg}"), is_ours=_our_header,
            not_ours="a fine-tuning run's: resume it with python -m fastgpt.finetune --resume")
    except ck.CheckpointError as e:
        err, resumed_from = str(e), None
    if dist.world > 1:   # every rank joins, with its error if any: each must continue the same run
        views = dist.gather_objects((err, resumed_from and Path(resumed_from).name, saved is not None))
        err = next((e for e, _, _ in views if e), None)   # (a folder on a network file system may lag
        if err is None and len({v[1:] for v in views}) > 1:   # on one node)
            seen = sorted({name or ("its metrics.jsonl only" if header else "nothing")
                           for _, name, header in views})
            err = (f"--resume: the processes see different newest checkpoints in {out_dir} "
                   f"({', '.join(seen)}): is the folder in sync on every node?")
    dist.agree(err)
    if ckpt_state is not None:
        saved = ckpt_state.get("train_config")
        if saved is None:
            raise AlikeRunError(f"{resumed_from} is not a fastgpt.train checkpoint (a fine-tuning run's? resume that "
                           "with python -m fastgpt.finetune --resume)")
    if saved is not None:
        cfg = _resumed_config(cfg, given, saved, from_checkpoint=ckpt_state is not None)
    return cfg, ckpt_state, resumed_from


def _check_resumed(ckpt_state: dict, cfg: TrainConfig, given: set[str], path) -> None:
    """--resume continues the checkpoint's run: a --max_iters it has passed, or a --tokenizer, --preset,
    --dropout or --block_size given on the command line that would describe another model is a usage
    error (--preset, --dropout and --block_size used to be ignored without a word)."""
    from fastgpt.config import GPTConfig
    if not cfg.eval_only and cfg.max_iters < ckpt_state["step"]:
        raise cli.AlikeUsageError(f"--max_iters {cfg.max_iters}: the checkpoint {path} is already at "
                                  f"step {ckpt_state['step']}; give a larger --max_iters to train on, or leave it out")
    if ckpt_state.get("tokenizer") != cfg.tokenizer:
        raise cli.AlikeUsageError(f"--tokenizer {cfg.tokenizer}: the checkpoint {path} was trained with "
                                  f"the {ckpt_state.get('tokenizer')!r} tokenizer; drop --tokenizer")
    mcfg = GPTConfig.from_dict(ckpt_state["config"])
    arch = ("n_layer", "n_head", "n_embd", "norm", "activation", "bias")
    if "preset" in given:
        p = GPTConfig.preset(cfg.preset)
        diff = [f"{k} {getattr(mcfg, k)} vs {getattr(p, k)}" for k in arch if getattr(p, k) != getattr(mcfg, k)]
        if diff:
            raise cli.AlikeUsageError(f"--preset {cfg.preset}: the checkpoint {path} holds another architecture "
                                      f"({', '.join(diff)}); --resume continues its model: drop --preset, or "
                                      "start afresh in another --out_dir")
    for opt in ("dropout", "block_size"):
        if opt in given and getattr(cfg, opt) != getattr(mcfg, opt):
            raise cli.AlikeUsageError(f"--{opt} {getattr(cfg, opt)}: the checkpoint {path} was trained with {opt} "
                                      f"{getattr(mcfg, opt)}; --resume continues its model as it was: drop --{opt}")


def _our_header(header: dict) -> bool:
    """Is this metrics.jsonl header a fastgpt.train run's? (finetune's names its task)"""
    return "task" not in header


def _from_the_resumed_run(msg: str, cfg: TrainConfig, given: set[str]) -> str:
    """msg, naming the options it blames that a --resume took from its run rather than from this command line
    (a message about --min_lr when only --lr was typed)."""
    names = [n for n in dict.fromkeys(re.findall(r"--(\w+)", msg))
             if cfg.resume and n not in given and n not in RUNTIME_ONLY and hasattr(cfg, n)]
    if not names:
        return msg
    it = "it" if len(names) == 1 else "them"
    return f"{msg} ({', '.join('--' + n for n in names)}: the resumed run's; give {it} here to change {it})"


def _check_data(cfg: TrainConfig, given: set[str], dist: _Dist) -> None:
    """--data's cheap checks, before an --init model is fetched and the text tokenized: a usage error for
    --val_fraction where it does not apply, RunError (rank 0's line) when --data names no text files."""
    from fastgpt import data as fdata
    if "val_fraction" in given and (cfg.data is None or fdata.is_token_dir(cfg.data)):   # (it was ignored)
        raise cli.UsageError("--val_fraction applies to text files given with --data: " + (
            "the default corpus holds out six plays" if cfg.data is None else
            f"{cfg.data} is a prepared token folder, split when it was made"))

    def problem():
        try:
            if cfg.data is not None and not fdata.is_token_dir(cfg.data):
                fdata.resolve_data_files(cfg.data)
        except fdata.DataError as e:
            return _from_the_resumed_run(str(e), cfg, given)
    dist.agree(problem() if dist.main else None)


def _token_data(cfg: TrainConfig, dist: _Dist):
    """(token data, tokenizer) for --data / --tokenizer: rank 0 tokenizes into the cache first, the
    others then read it; RunError (rank 0's line) when any rank cannot."""
    from fastgpt import data as fdata

    def prepare():
        """((token data, tokenizer), None) or (None, the error)."""
        try:
            td = fdata.prepare(cfg.data, cfg.tokenizer, cfg.val_fraction)
            return (td, fdata.get_tokenizer(cfg.tokenizer)), None
        except fdata.DataError as e:
            return None, str(e)
    got, err = prepare() if dist.main else (None, None)
    dist.agree(err)             # rank 0 first (or every rank stops)
    if not dist.main:
        got, err = prepare()
    dist.agree(err)
    td, tok = got
    text_files = cfg.data is not None and not fdata.is_token_dir(cfg.data)   # (split by --val_fraction)
    for split, arr, vf in (("training", td.train, "smaller"), ("validation", td.val, "larger")):
        if len(arr) < cfg.block_size + 1:
            raise AlikeRunError(f"the {split} split has {len(arr)} tokens, fewer than block_size + 1 = "
                           f"{cfg.block_size + 1}; use a smaller --block_size, more text"
                           + (f" or a {vf} --val_fraction" if text_files else ""))
    return td, tok


def _init_model(cfg: TrainConfig, given: set[str], dist: _Dist):
    """--init: (the model it names, on the CPU, and cfg with that model's tokenizer and, unless set, its
    block_size). Rank 0 loads it first (a Hub id is fetched once), then the others; RunError (rank 0's
    line) when it cannot be loaded or names a tokenizer fastgpt has not, a usage error when it is a
    fine-tuned model or --tokenizer or --block_size does not fit it (cfg's are given, or else a restarted
    run's header's)."""
    import torch

    from fastgpt import data as fdata
    from fastgpt import sample

    def load():
        """(model, None) or (None, the error line)."""
        try:   # whatever fastgpt.sample loads, with its one-line errors
            return sample.load(cfg.init, None, torch.device("cpu"), PROG), None
        except sample.LoadError as e:
            return None, f"--init {e}"
    model, err = load() if dist.main else (None, None)
    dist.agree(err)
    if not dist.main:
        model, err = load()
    dist.agree(err)
    mc, where = model.config, f"--init {cfg.init}"
    if mc.extra.get("special_tokens"):   # (fastgpt.finetune's: base vocabulary + its task tokens)
        raise cli.AlikeUsageError(f"{where} is a fine-tuned model (its vocabulary has task tokens); continue "
                                  "pre-training from the model it was fine-tuned from")
    sizes = fdata.TOKENIZER_VOCAB
    if mc.vocab_size < min(sizes.values()):
        raise cli.AlikeUsageError(f"{where}: its {mc.vocab_size}-token vocabulary is smaller than any fastgpt "
                                  f"tokenizer's ({', '.join(f'{t}: {n}' for t, n in sizes.items())})")
    recorded = mc.extra.get("tokenizer")
    if recorded is not None and recorded not in sizes:
        raise AlikeRunError(f"{where}: it names the tokenizer {recorded!r}, which fastgpt has not ({', '.join(sizes)})")

    def unfit(k: str, why: str, fix: str):
        """The usage error for cfg's --k: given, or (a restarted run) its header's, when the model has changed."""
        if k in given:
            return cli.AlikeUsageError(f"--{k} {getattr(cfg, k)}: {why}; {fix}")
        return cli.AlikeUsageError(f"--{k} {getattr(cfg, k)} (the restarted run's, from its metrics.jsonl header): "
                                   f"{why}, so it has changed since; start afresh in another --out_dir")
    known = recorded or fdata.VOCAB_TOKENIZER.get(mc.vocab_size)
    if cfg.tokenizer is not None and known is not None and cfg.tokenizer != known:
        raise unfit("tokenizer", f"the --init model was trained with the {known!r} tokenizer" if recorded else
                    f"the --init model has the {known!r} tokenizer's {mc.vocab_size}-token vocabulary",
                    "drop --tokenizer")
    try:
        tok = known or fdata.tokenizer_for_vocab(mc.vocab_size, cfg.tokenizer)
    except fdata.DataError as e:
        raise cli.AlikeUsageError(f"{where}: {e}") from None
    if sizes[tok] > mc.vocab_size:   # (ids past the model's vocabulary: an index error mid-step)
        if known is not None:   # (a model file that contradicts itself)
            raise AlikeRunError(f"{where}: it names the {tok!r} tokenizer ({sizes[tok]} tokens) but has a "
                           f"{mc.vocab_size}-token vocabulary")
        raise unfit("tokenizer", f"its {sizes[tok]} tokens do not fit the --init model's {mc.vocab_size}-token "
                    "vocabulary", "give the model's tokenizer")
    if cfg.block_size is not None and cfg.block_size > mc.block_size:
        raise unfit("block_size", f"the --init model has {mc.block_size} positions",
                    f"give at most {mc.block_size}, or leave it out")
    return model, dataclasses.replace(cfg, tokenizer=tok, block_size=cfg.block_size or mc.block_size)


def _model_config(cfg: TrainConfig, n_vocab: int, ckpt_state: dict | None, init=None):
    """The model's GPTConfig: a resumed run's checkpoint's; else the --init model's, or --preset's with this
    run's vocabulary; with this run's --block_size and --dropout (when given)."""
    from fastgpt.config import GPTConfig
    if ckpt_state is not None:
        return GPTConfig.from_dict(ckpt_state["config"])
    over = dict(vocab_size=n_vocab, block_size=cfg.block_size)
    if cfg.dropout is not None:
        over["dropout"] = cfg.dropout
    if init is not None:
        over.pop("vocab_size")   # (the model's, at least the tokenizer's: tokenizer_for_vocab saw to it)
        mcfg = init.config.replace(**over)
        mcfg.extra = dict(tokenizer=cfg.tokenizer)
        return mcfg
    mcfg = GPTConfig.preset(cfg.preset, **over)
    mcfg.extra = dict(tokenizer=cfg.tokenizer)
    return mcfg


def _restore_batch_stream(batches, n_val: int, sha256, ckpt_state: dict, cfg: TrainConfig, W: int, say) -> None:
    """Continue the checkpoint's training batch stream in ``batches`` (a BatchSampler drawing W x
    --batch_size windows), after a usage error if --batch_size changed at the same process count; a
    RunError when the data is not the checkpoint's (n_val: this run's validation tokens; sha256: its
    token folder's digests, None for a folder written before they were recorded)."""
    from fastgpt import data as fdata
    B, ds = cfg.batch_size, ckpt_state["data"]
    version = ds.get("tokens_version", 2)   # (checkpoints before it was recorded: 2)
    changed = any(cfg.tokenizer in fdata.TOKENS_CHANGED_IN.get(v, ()) for v in
                  range(min(version, fdata.USER_TOKENS_VERSION) + 1, max(version, fdata.USER_TOKENS_VERSION) + 1))
    newer = "" if not changed else (
        f"; or this fastgpt tokenizes text otherwise than the one that wrote the checkpoint (token format "
        f"{fdata.USER_TOKENS_VERSION}, the checkpoint's {version}): resume with that one, or start a new run")
    if ds.get("n_val", n_val) != n_val:   # (an edit at a file's end: the training split can stay as long)
        raise AlikeRunError(f"the checkpoint's validation split had {ds['n_val']} tokens, this run's has {n_val}: "
                       "its val_loss would not compare with the run's before; resume with the same --data "
                       "(unedited), --tokenizer and --val_fraction" + newer)
    if sha256 and ds.get("sha256") and ds["sha256"] != sha256:   # (an edit that kept the lengths)
        split = next((s for s in ("train", "val") if ds["sha256"].get(s) != sha256.get(s)), "train")
        raise AlikeRunError(f"the {split} tokens of this --data are not the checkpoint's (their SHA-256 differs: an "
                       "edited file?); resume with the data the run was trained on, unedited" + newer)
    if cfg.eval_only:   # an evaluation draws no training batches: any --batch_size will do
        return
    saved_world = int(ckpt_state.get("extra", {}).get("world_size", 1))
    if saved_world == W and ds["B"] != B * W:
        raise cli.AlikeUsageError(f"--batch_size {B}: the checkpoint was written with --batch_size {ds['B'] // W} "
                                  f"per process ({W} process(es)); resume with the same --batch_size")
    # the windows are drawn one by one from one stream, whatever the draw's size: only the batch per
    # optimizer step (processes x --batch_size x --grad_accum) can change, not the data order
    was, now = ds["B"] * int(ckpt_state["train_config"].get("grad_accum", 1)), B * W * cfg.grad_accum
    if was != now:
        say(f"{PROG}: warning: the global batch is now {now} sequences per step ({W} process(es) x "
            f"--batch_size {B} x --grad_accum {cfg.grad_accum}); the checkpoint's run had {was}")
    try:
        if ds["B"] == B * W:
            batches.load_state_dict(ds)
        else:   # (another process count)
            if (ds["T"], ds["n"]) != (cfg.block_size, len(batches.data)):
                batches.load_state_dict(ds)  # raises the data-mismatch DataError
            batches.rng.bit_generator.state = ds["bit_generator"]
            batches.drawn = ds["drawn"]
    except fdata.DataError as e:
        raise AlikeRunError(str(e)) from None


def _resumed_config(cfg: TrainConfig, given: set[str], saved: dict, from_checkpoint: bool = False) -> TrainConfig:
    """cfg with the options of the run a --resume continues (``saved``: its checkpoint's, or its metrics.jsonl
    header's when it died before its first checkpoint): those not given on this command line come from it,
    except that options left to follow another one (FOLLOWING) keep following it. UsageError if the mix
    is not a valid config."""
    # a new --seed would re-seed the validation batches alone (the training streams come from the checkpoint);
    # a run restarted from its metrics header starts from step 0 and may take one
    if from_checkpoint and "seed" in given and saved.get("seed") not in (None, cfg.seed):
        raise cli.AlikeUsageError(f"--seed {cfg.seed}: a resumed run continues the random streams of its checkpoint "
                                  f"(seed {saved['seed']}); drop --seed, or start a new run in another --out_dir")
    if "init" in given and saved.get("init") != cli.absolute_if_exists(cfg.init):
        if from_checkpoint:
            raise cli.AlikeUsageError(f"--init {cfg.init}: --resume continues the weights of its checkpoint; drop "
                                      "--init, or start afresh in another --out_dir")
        # its header's --block_size and --tokenizer may be the model's it started from
        was = f"--init {saved['init']}" if saved.get("init") else f"random weights (--preset {saved.get('preset')})"
        raise cli.AlikeUsageError(f"--init {cfg.init}: the run this --resume starts again (from its metrics.jsonl "
                                  f"header) began from {was}; drop --init, or start afresh in another --out_dir")
    cfg = cli.with_saved_options(cfg, given, saved, RUNTIME_ONLY)
    followed = saved.get("_following")
    if followed is None:  # a checkpoint of an earlier fastgpt: infer what followed what
        followed = [k for k, on in (
            ("lr_decay_iters", saved.get("_lr_decay_auto")),
            ("min_lr", saved.get("lr") and math.isclose(saved.get("min_lr") or 0.0, saved["lr"] / 10)),
            ("ckpt_interval", saved.get("ckpt_interval") == saved.get("eval_interval"))) if on]
    for k in set(followed) - given:
        setattr(cfg, k, None)  # it followed another option: keep following
    if ("warmup_iters" not in given and None not in (cfg.lr_decay_iters, cfg.warmup_iters)
            and cfg.warmup_iters > cfg.lr_decay_iters):
        cfg.warmup_iters = cfg.lr_decay_iters  # a saved warmup never outlasts a new, shorter schedule
    problems = cfg.validate()
    if problems:
        raise cli.AlikeUsageError(_from_the_resumed_run(problems[0], cfg, given))
    return cfg


def run(cfg: TrainConfig, given: set[str] | None = None) -> dict:
    """Train (or evaluate) per cfg; returns a summary dict. Raises RunError / cli.UsageError.

    Under torchrun (``$WORLD_SIZE`` > 1) it joins the process group, trains with DDP (or FSDP2
    with ``--fsdp``) and leaves it at the end.
    """
    cfg = cli.expanded_paths(cfg)
    dev_type = cli.device(cfg.device).type
    if cfg.fsdp and not ("WORLD_SIZE" in os.environ and "RANK" in os.environ):
        raise cli.UsageError("--fsdp shards over the processes of a torchrun job: start it with "
                             "torchrun --nproc_per_node=N -m fastgpt.train --fsdp")
    dist = init_distributed(dev_type, always=cfg.fsdp)
    try:
        with cli.GracefulStop(PROG, quiet=not dist.main) as sigs, cli.restored_torch_settings(), \
                cli.OutDirLock() as lock:
            return _run(cfg, set(given or ()), dist, sigs, lock)
    finally:
        dist.close()


def _run(cfg: TrainConfig, given: set[str], dist: _Dist, sigs: cli.GracefulStop, lock: cli.OutDirLock) -> dict:
    import numpy as np
    import torch

    from fastgpt import checkpoint as ck
    from fastgpt import data as fdata
    from fastgpt.model import GPT

    def say0(msg):
        if dist.main:
            print(msg, file=sys.stderr, flush=True)

    out_dir = Path(cfg.out_dir)
    cli.check_out_dir(out_dir)  # before the data and the model: minutes, on a big corpus
    dist.agree(lock.acquire(out_dir) if dist.main else None)   # rank 0 writes the folder, for all
    ckpt_state = resumed_from = None
    if cfg.resume:
        cfg, ckpt_state, resumed_from = _resume_point(cfg, given, dist, out_dir, say0)
    following = sorted(k for k in FOLLOWING if getattr(cfg, k) is None)
    resume_flags = _resume_flags(cfg)   # as given (an automatic --device is not repeated: main's line too)
    cfg = resolve(cfg, given)
    if ckpt_state is not None:   # (before the data: a --tokenizer gpt2 would fetch its files first)
        _check_resumed(ckpt_state, cfg, given, resumed_from)
    device = torch.device(cfg.device, dist.local_rank) if cfg.device == "cuda" and dist.world > 1 \
        else torch.device(cfg.device)
    backend_name = cli.backend(cfg.backend, device.type)
    _check_data(cfg, given, dist)
    if not cfg.resume:   # after the options' own checks (a newcomer: a missing --data was said second)
        cli.check_no_earlier_run(out_dir, _our_header, cfg.eval_only)
    init = None
    if cfg.init is not None and ckpt_state is None:   # (a checkpoint has the weights: --init was its start)
        init, cfg = _init_model(cfg, given, dist)   # (after the usage checks above: it may fetch gigabytes)

    cli.seed_run(cfg.seed, device)   # determinism and precision

    # --- data
    td, tok = _token_data(cfg, dist)
    # Every rank draws the same global batch (batch_size x world windows) and keeps its own rows:
    # the stream is that of one process with the global batch, whatever the world size.
    B, W = cfg.batch_size, dist.world
    try:
        train_batches = td.sampler("train", B * W, cfg.block_size, cfg.seed)
    except fdata.DataError as e:
        raise AlikeRunError(str(e)) from None

    def shard(sampler):
        try:   # (every rank draws the same windows: a damaged token file is met by all alike)
            if W == 1:
                return sampler.next(device)
            x, y = sampler.next_numpy()
        except fdata.DataError as e:
            raise AlikeRunError(str(e)) from None
        rows = slice(dist.rank * B, (dist.rank + 1) * B)
        x, y = (torch.from_numpy(np.ascontiguousarray(a[rows])) for a in (x, y))
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    # --- model
    mcfg = _model_config(cfg, tok.n_vocab, ckpt_state, init)
    try:
        model = GPT(mcfg, backend=cfg.backend).to(device)
    except RuntimeError as e:  # e.g. the fused backend unavailable on this machine
        raise cli.UsageError(str(e).splitlines()[0]) from None
    if ckpt_state is not None:
        model.load_state_dict(ckpt_state["model"])
    elif init is not None:   # its weights, the position table cut to --block_size
        sd = init.state_dict()
        sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"][:cfg.block_size]
        model.load_state_dict(sd)
        del init, sd
    if cfg.grad_checkpoint:
        _enable_grad_checkpoint(model)
    n_params = model.num_params()
    flops_tok = model.flops_per_token(cfg.block_size)
    if cfg.fsdp:  # after the checkpoint's weights are in and before the optimizer sees the parameters
        _fsdp_shard(model, device.type)
    optimizer = model.configure_optimizers(weight_decay=cfg.weight_decay, learning_rate=cfg.lr,
                                           betas=(cfg.beta1, cfg.beta2), device_type=device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")
    autocast = cli.autocast_factory(device, cfg.dtype)

    step = 0
    extra = dict(tokens_seen=0, best_val_loss=None, skipped_steps=0)
    if W > 1:  # each rank its own dropout stream (the weights above came from the common seed)
        torch.manual_seed(cfg.seed + 1_000_003 * dist.rank)
    if ckpt_state is not None:
        # the moments and step counts from the checkpoint, the hyperparameters and the implementation
        # from this run (lr is set every step)
        saved_optimizer = ck.with_run_options(ckpt_state["optimizer"], optimizer)
        if cfg.fsdp:
            _fsdp_load_optimizer(model, optimizer, saved_optimizer)
        else:
            optimizer.load_state_dict(saved_optimizer)
        if ckpt_state.get("scaler") and cfg.dtype == "fp16":
            scaler.load_state_dict(ckpt_state["scaler"])
        step = int(ckpt_state["step"])
        extra.update(ckpt_state.get("extra", {}))
        _restore_batch_stream(train_batches, len(td.val), td.meta.get("sha256"), ckpt_state, cfg, W, say0)
        ranks = ckpt_state.get("rng_ranks")
        ck.set_rng_state(ranks[dist.rank] if ranks and len(ranks) == W else ckpt_state["rng"])
        if W > 1 and not (ranks and len(ranks) == W):
            torch.manual_seed(cfg.seed + 1_000_003 * dist.rank + step)
    extra["world_size"] = W
    compiled = torch.compile(model) if cfg.compile else model
    if W > 1 and not cfg.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        fwd = DDP(compiled, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    else:
        fwd = compiled  # (FSDP: the sharded model itself)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_flops(dev_name, cfg.peak_tflops) if device.type == "cuda" else None
    tokens_per_step = B * cfg.block_size * cfg.grad_accum * W

    @torch.no_grad()
    def evaluate() -> float:
        """Mean loss over eval_iters fixed validation batches (the same ones every time), over all ranks: each of
        the global batch's size (B x W windows, as a training step's), so the validation set is that of any
        run with the same global batch, whatever its process count."""
        was = model.training
        model.eval()
        sampler = td.sampler("val", B * W, cfg.block_size, seed=cfg.seed + 1)
        tot = torch.zeros((), device=device, dtype=torch.float64)
        for _ in range(cfg.eval_iters):
            x, y = shard(sampler)
            with autocast():
                _, loss = model(x, y, return_logits=False)
            tot += loss.double()
        model.train(was)
        return float(dist.all_reduce(tot / cfg.eval_iters))

    trim_to = step if ckpt_state is not None and not cfg.eval_only else None
    dist.agree(cli.make_out_dir(out_dir, trim_to) if dist.main else None)   # rank 0 writes the folder
    saved_cfg = cli.to_dict(cfg, drop=("backend",))
    saved_cfg["_following"] = following
    header = dict(type="header", versions=_versions(device), device=dev_name, device_type=device.type,
                  config=saved_cfg, model_config=mcfg.to_dict(), n_params=n_params,
                  tokenizer=cfg.tokenizer, data=str(td.dir), tokens=td.meta["n_tokens"],
                  backend=backend_name, world_size=W,
                  resumed_from=step if ckpt_state is not None else None,
                  started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    metrics_path = out_dir / "metrics.jsonl"
    # a resumed run continues its metrics, and so does an evaluation (of a run without a checkpoint too)
    append = (ckpt_state is not None or cfg.eval_only) and metrics_path.exists()
    log = cli.RunLog(metrics_path if dist.main else None, append=append,
                     bar=cfg.progress and not cfg.eval_only and dist.main, total=cfg.max_iters, initial=step)
    summary = dict(out_dir=str(out_dir), step=step)
    inject = _nonfinite_test_steps()

    def save(step) -> Path | None:
        """Checkpoint on rank 0 (every rank joins the gather of the per-rank RNG states)."""
        rngs = dist.gather_objects(ck.rng_state()) if W > 1 else None
        p = err = None
        msd, osd = _fsdp_full_state(model, optimizer) if cfg.fsdp else (None, None)
        if dist.main:
            st = dict(step=step, model=msd if cfg.fsdp else model.state_dict(), config=mcfg.to_dict(),
                      model_config=mcfg.to_dict(), optimizer=osd if cfg.fsdp else optimizer.state_dict(),
                      scaler=scaler.state_dict() if scaler.is_enabled() else None, rng=ck.rng_state(),
                      data=dict(train_batches.state_dict(), n_val=len(td.val), sha256=td.meta.get("sha256"),
                                tokens_version=fdata.USER_TOKENS_VERSION),
                      train_config=saved_cfg,
                      tokenizer=cfg.tokenizer, extra=dict(extra))
            if rngs is not None:
                st["rng_ranks"] = rngs
            err = lock.lost()   # (the folder deleted: saving would make it again, maybe beside another run)
            try:
                if err is None:
                    p = ck.save_checkpoint(out_dir, st, keep=cfg.keep_ckpts)
                    summary["checkpoint"] = str(p)
            except ck.CheckpointError as e:  # disk full, folder made read-only under us
                err = str(e)
        dist.agree(err)
        return p

    try:
        what = cfg.preset or f"from {cfg.init}"
        log.say(f"fastgpt.train: {what} ({n_params / 1e6:.2f}M params), {cfg.tokenizer} tokens, "
                f"{td.meta['n_tokens']['train']:,} train / {td.meta['n_tokens']['val']:,} val tokens, "
                f"{dev_name} {cfg.dtype}, backend {backend_name}, out_dir {out_dir}"
                + (f", {W} process{'es' if W > 1 else ''} ({'FSDP' if cfg.fsdp else 'DDP'}, "
                   f"{'nccl' if device.type == 'cuda' else 'gloo'})" if W > 1 or cfg.fsdp else "")
                + (", activation checkpointing" if cfg.grad_checkpoint else ""))
        if ckpt_state is not None:   # (a newcomer: a resumed run's header looked like a new run's)
            log.say(f"fastgpt.train: evaluating {resumed_from} (step {step})" if cfg.eval_only else
                    f"fastgpt.train: resuming from {resumed_from} (step {step}/{cfg.max_iters})")
        if backend_name == "fused" and device.type == "cuda" and not cfg.eval_only:
            from fastgpt.kernels import _precompile
            n = _precompile.workers()
            log.say("fastgpt.train: the first steps compile the fused kernels and time their launch configs "
                    + (f"({n} compile worker processes per rank; " if n >= 2 else "(")
                    + "a pause at the start; the first logged tok/s counts it)")
        if cfg.eval_only:
            v = evaluate()
            header["eval_only"] = True
            log.write(header)
            log.write(dict(step=step, val_loss=v, eval_only=True))
            if dist.main:
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
        sigs.armed = True
        t0 = t_last = time.perf_counter()
        step_last = step_first = step
        stopped = False
        # a run of non-finite steps that a stop cut in two goes on counting after --resume
        bad_run, bad_first, last_saved = extra.get("bad_in_a_row", 0), extra.get("bad_first"), resumed_from
        def evaluate_and_track() -> float:
            nonlocal t_last
            t = time.perf_counter()
            v = evaluate()
            t_last += time.perf_counter() - t   # evaluation time is not training time (tok/s, mfu)
            summary["val_loss"] = extra["val_loss"] = v   # (extra: a --resume with nothing left reports it)
            if extra["best_val_loss"] is None or v < extra["best_val_loss"]:
                extra["best_val_loss"] = v
            return v

        while step < cfg.max_iters:
            lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
            for g in optimizer.param_groups:
                g["lr"] = lr
            res = optimizer_step(fwd, model.parameters(), optimizer, scaler, lambda: shard(train_batches),
                                 cfg.grad_accum, cfg.grad_clip, autocast, dist=dist,
                                 stop_requested=lambda: sigs.name is not None, inject_nonfinite=step + 1 in inject)
            step += 1
            extra["tokens_seen"] += tokens_per_step

            last = step == cfg.max_iters
            is_eval = cfg.eval_iters > 0 and (step % cfg.eval_interval == 0 or last)
            if res.bad:
                extra["skipped_steps"] += 1
                bad_run += 1
                bad_first = step if bad_run == 1 else bad_first
                diverged = cfg.max_bad_steps and bad_run >= cfg.max_bad_steps
                lv = float(dist.all_reduce(res.loss.detach().float().clone()))
                row = dict(step=step, loss=lv if math.isfinite(lv) else None, lr=lr, skipped=True,
                           bad_in_a_row=bad_run)
                if scaler.is_enabled():
                    row["loss_scale"] = scaler.get_scale()
                if is_eval and not diverged:  # a skipped step leaves the weights as they were: evaluate them
                    row["val_loss"] = evaluate_and_track()
                log.write(row)
                sc = f", fp16 loss scale now {row['loss_scale']:g}" if scaler.is_enabled() else ""
                lim = f"/{cfg.max_bad_steps}" if cfg.max_bad_steps else ""
                what = "gradient" if math.isfinite(lv) else f"loss ({lv})"
                vs = f"; val_loss {row['val_loss']:.4f}" if "val_loss" in row else ""
                log.say(f"step {step}: non-finite {what}; step skipped "
                        f"({bad_run}{lim} in a row, {extra['skipped_steps']} in all{sc}){vs}")
                if diverged:
                    where = f"the last good checkpoint is {last_saved}" if last_saved else \
                        "no checkpoint was saved before it"
                    raise DivergedError(
                        f"stopped: {bad_run} consecutive steps ({bad_first}-{step}) had a non-finite loss or "
                        f"gradient; {where}; lower --lr (now {cfg.lr}), "
                        + ("use --dtype fp32 or " if cfg.dtype != "fp32" else "") + "raise --max_bad_steps")
            else:
                bad_run = 0
                if step % cfg.log_interval == 0 or is_eval or last:
                    lv = float(dist.all_reduce(res.loss.detach().float().clone()))  # syncs
                    now = time.perf_counter()
                    dt = now - t_last
                    tok_s = (step - step_last) * tokens_per_step / dt if dt > 0 else None
                    row = dict(step=step, loss=lv, lr=lr, tok_s=tok_s, time_s=now - t0)
                    if peak and tok_s:
                        row["mfu"] = tok_s * flops_tok / (peak * W)
                    if scaler.is_enabled():
                        row["loss_scale"] = scaler.get_scale()
                    if is_eval:
                        row["val_loss"] = evaluate_and_track()
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
            # no periodic checkpoint during a run of bad steps: the last good one is not rotated out
            stop = res.stop
            if last or stop or (cfg.ckpt_interval and step % cfg.ckpt_interval == 0 and not bad_run):
                t = time.perf_counter()
                extra.update(bad_in_a_row=bad_run, bad_first=bad_first)
                last_saved = save(step)
                t_last += time.perf_counter() - t   # nor is checkpointing (the next row's tok/s, mfu)
                if not (last or stop):   # a signal during this save (or the evaluation before it): stop on
                    flag = torch.tensor(float(sigs.name is not None), device=device)   # it, on every rank,
                    stop = bool(dist.all_reduce(flag, "max"))   # not one step and one more save later
            if stop and not last:
                stopped = True
                break
        sigs.armed = False
        summary.update(step=step, best_val_loss=extra["best_val_loss"], init_val_loss=header.get("init_val_loss"))
        if stopped:
            log.say(f"{PROG}: {sigs.name or 'signal'}: stopped after step {step}/{cfg.max_iters}; checkpoint saved "
                    f"to {last_saved} (continue with: {cli.resume_command(PROG, out_dir, resume_flags)})")
            summary["interrupted"] = sigs.name or "signal"
            return summary
    finally:
        log.close()
    trained_s = time.perf_counter() - t0   # (the summary's time: not the final save's or the sample's)

    # --- the trained model, and a sample from it (rank 0)
    if cfg.fsdp:  # gathered (every rank joins) into a plain model on rank 0
        msd, _ = _fsdp_full_state(model)
        if dist.main:
            model = GPT(mcfg, backend=cfg.backend)
            model.load_state_dict(msd)
            model.to(device)
    err = None
    if dist.main:
        try:
            _save_final(model, out_dir / "model", cfg.tokenizer)
        except RunError as e:
            err = str(e)
    dist.agree(err)
    if dist.main:
        if cfg.sample_tokens:
            try:
                text = sample(model, tok, cfg.prompt, cfg.sample_tokens, cfg.temperature, cfg.top_k, device,
                              cfg.seed)
            except KeyboardInterrupt:   # training and every save are done: the run is not interrupted
                print(f"{PROG}: sample skipped (interrupted); python -m fastgpt.sample "
                      f"{cli.path_arg(out_dir / 'model')} makes one", file=sys.stderr, flush=True)
            else:
                print(f"--- sample ({cfg.sample_tokens} tokens, temperature {cfg.temperature}) ---")
                print(cli.printable(text))
                print("---")
                summary["sample"] = text
        summary["model"] = str(out_dir / "model")
        if step_first == step and summary.get("val_loss") is None:   # nothing trained: the run's last evaluation
            summary["val_loss"] = extra.get("val_loss")   # (it said "no evaluation (best X)")
        vs = f"val_loss {summary['val_loss']:.4f}" if summary.get("val_loss") is not None else "no evaluation"
        best = extra["best_val_loss"]
        bs = f" (best {best:.4f})" if best is not None and best != summary.get("val_loss") else ""
        # (after a --resume the time is this process's, for its steps alone: tokens seen are the whole run's)
        took = "nothing trained by this command" if step_first == step else \
            _hms(trained_s) + (f" for steps {step_first + 1}-{step}" if step_first > 0 else "")
        print(f"{PROG}: done: trained to step {step} of {cfg.max_iters}, {extra['tokens_seen']:,} tokens seen, "
              f"{took}; {vs}{bs}; model saved to {out_dir / 'model'} "
              f"(python -m fastgpt.sample {cli.path_arg(out_dir / 'model')})", file=sys.stderr, flush=True)
    # (no barrier here: the other ranks are done once the model is saved, and would otherwise wait in a
    # collective through rank 0's sample, where a Ctrl-C ended them and left rank 0's barrier without peers)
    return summary


def _resume_flags(cfg: TrainConfig) -> tuple:
    """The options a --resume does not take from the checkpoint (RUNTIME_ONLY) that its command must repeat:
    how the run was laid out in memory (without them an FSDP run resumes as DDP: a full replica per GPU),
    and where it ran."""
    return tuple(f"--{k}" for k in ("fsdp", "grad_checkpoint", "compile") if getattr(cfg, k)) + cli.placement_flags(cfg)


def _save_final(model, dest: Path, tokenizer: str) -> None:
    """The trained model as a save_pretrained folder (+ tokenizer.json), swapped in whole: written
    beside ``dest`` first, so a crash or a full disk leaves the previous folder or the new one."""
    from safetensors import SafetensorError

    from fastgpt.checkpoint import replace_folder

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        (tmp / "tokenizer.json").write_text(json.dumps(dict(tokenizer=tokenizer)))
    try:
        replace_folder(dest, fill)
    except (OSError, SafetensorError) as e:
        raise RunError(f"cannot write the trained model to {dest}: {getattr(e, 'strerror', None) or e}") from None


def _hms(seconds: float) -> str:
    """'42.1 s', '3m05s', '2h07m'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


@dataclass
class StepResult:
    loss: "object"        # this rank's summed loss x world / the step's global target count (a 0-dim
                          # tensor): its average over ranks is the step's mean loss
    grad_norm: "object"   # the global gradient norm before clipping (a 0-dim tensor; non-finite if bad)
    bad: bool             # non-finite loss or gradient somewhere: the optimizer step was skipped
    stop: bool            # some rank got SIGINT/SIGTERM: stop after this step


def optimizer_step(fwd, params, optimizer, scaler, next_batch, grad_accum: int, grad_clip: float, autocast, *,
                   dist=None, stop_requested=False, inject_nonfinite: bool = False) -> StepResult:
    """One optimizer step over grad_accum micro-batches, skipped if the loss or a gradient is not finite.

    The model returns each micro-batch's summed loss (``reduction="sum"``), divided by the step's
    global count of targets != -100 (all micro-batches, all ranks: one small all-reduce, no host
    sync) and multiplied by the world size, which DDP's and FSDP's gradient averaging divides back
    out: the gradient is that of the mean over every target of the step, whatever the split into
    micro-batches or ranks and wherever targets are ignored. Under DDP (``fwd`` a DistributedDataParallel) the
    gradients are all-reduced only on the last micro-batch (``no_sync`` on the others). Under FSDP
    (``fwd`` the sharded model) each micro-batch's gradients are reduce-scattered as it finishes,
    so no unsharded gradient outlives its block's backward.
    ``stop_requested`` (a bool, or a callable read after the backward passes) is OR-ed over ranks.

    One host sync per step decides the skip: a non-finite gradient norm or loss (under DDP
    reduced with the stop flag in one all-reduce). On a bad step the fp16 scaler backs off (its
    unscale_ found the inf), the optimizer does not step, and the gradients are dropped.
    """
    import torch
    batches = [next_batch() for _ in range(grad_accum)]
    world = dist.world if dist is not None else 1
    count = sum((y != -100).sum() for _, y in batches).float()   # the step's targets on this rank
    if world > 1:
        dist.all_reduce(count, "sum")
    scale = world / count.clamp_min(1)
    ddp = hasattr(fwd, "no_sync")
    loss_acc = None
    for i, (x, y) in enumerate(batches):
        sync = contextlib.nullcontext() if not ddp or i == grad_accum - 1 else fwd.no_sync()
        with sync:
            with autocast():
                _, loss = fwd(x, y, return_logits=False, reduction="sum")
            loss = loss * scale
            scaler.scale(loss).backward()
        loss_acc = loss.detach() if loss_acc is None else loss_acc + loss.detach()
    params = [p for p in params if p.grad is not None]
    if inject_nonfinite and params:  # test hook: an overflowed gradient (FSDP: in this rank's shard)
        g = params[0].grad
        g = g.to_local() if hasattr(g, "to_local") else g
        if g.numel():
            g.view(-1)[0] = float("inf")
    # a no-op unless fp16; on FSDP's DTensor gradient shards DTensor all-reduces the found-inf flag,
    # so every rank's scaler backs off together
    scaler.unscale_(optimizer)
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):  # FSDP: a replicated DTensor, already the norm over every shard
        norm = norm.full_tensor()
    flags = torch.stack([(~torch.isfinite(norm.float())) | (~torch.isfinite(loss_acc.float())),
                         torch.tensor(bool(stop_requested() if callable(stop_requested) else stop_requested),
                                      device=norm.device)]).float()
    if dist is not None and dist.world > 1:
        dist.all_reduce(flags, "max")
    bad, stop = (bool(v) for v in flags.tolist())
    if bad:
        if scaler.is_enabled():
            scaler.update()  # unscale_ recorded the inf: the scale backs off
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_acc, norm, bad, stop)


def train_step(fwd, params, optimizer, scaler, next_batch, grad_accum: int, grad_clip: float, autocast):
    """One optimizer step (see optimizer_step); returns the step's loss (a 0-dim tensor)."""
    return optimizer_step(fwd, params, optimizer, scaler, next_batch, grad_accum, grad_clip, autocast).loss


def sample(model, tok, prompt: str, n: int, temperature: float, top_k, device, seed: int) -> str:
    """Generate n tokens after prompt (empty: newline, or <|endoftext|> for GPT-2 BPE) with its own RNG."""
    import torch
    ids = tok.encode(prompt) if prompt else ([tok.eot] if tok.eot is not None else tok.encode("\n"))
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, n, temperature=temperature, top_k=top_k, generator=g,
                         n_vocab=tok.n_vocab)   # an --init model's vocabulary may be larger than its tokenizer's
    new = out[0, len(ids):].tolist()
    return (prompt or "") + tok.decode(new)


def main(argv=None) -> int:
    cfg, given = cli.parse(TrainConfig, argv, prog=PROG, description=__doc__.split("\n\n")[1], epilog=EPILOG)
    return cli.run_main(PROG, lambda: run(cfg, given), {DivergedError: EXIT_DIVERGED, RunError: 1},
                        "lower --batch_size or --block_size (--grad_accum keeps the tokens per step), or use "
                        "--grad_checkpoint",
                        interrupted=(cfg.out_dir, "one is written every --ckpt_interval steps and at the end",
                                     _resume_flags(cfg)), alike=(DivergedError, AlikeRunError))


if __name__ == "__main__":
    cli.run_program(main)
