"""Fine-tuning: ``python -m fastgpt.finetune --task NAME_OR_FILE --init CKPT_OR_DIR [--key=value ...]``.

Stage 2 of the GPT recipe (Radford et al. 2018, section 3.2): a linear task
head on the final hidden state at the extract token, trained with
L3 = L2(task) + lambda * L1(language modelling on the same inputs)
(``--aux_lm_weight``, 0.5 as in the paper; 0 switches the auxiliary loss off).

Inputs (fastgpt.tasks): start / delimiter / extract tokens are added to the
vocabulary (the embedding grows to the next multiple of 64, new rows N(0, 0.02),
padding rows zero); ``classify`` [s] x [e], ``pair`` [s] a [$] b [e],
``similarity`` both orders with their extract states summed, ``choice`` one
sequence per choice, scored by the head and soft-maxed over the choices.

The engine is the pre-training one: autocast (bf16 / fp16 + loss scaler /
fp32), the fused kernels on CUDA, AdamW, linear warmup over 0.2% of the steps
then linear decay to 0 (the paper's fine-tuning schedule), gradient clipping,
atomic checkpoints that ``--resume`` continues exactly, a progress bar.
After every epoch: accuracy and macro-F1 on the validation split; the best
model by validation accuracy is kept in ``OUT_DIR/best/``; at the end the test
split is scored once with it and written to ``OUT_DIR/eval.json``.

``--init``: a ``fastgpt.train`` output folder (its newest checkpoint), a
checkpoint file, a ``save_pretrained`` folder, an HF GPT-2 folder (not OpenAI-GPT:
fastgpt has no GPT-1 BPE tokenizer),
a fine-tuned output (its backbone), or ``random``. Without it: the newest
checkpoint of ``fastgpt.train``'s default output folder, else random init (with
a warning).

``python -m fastgpt.finetune --predict --init OUT_DIR "some text" ...`` prints
one label per text, as each batch is done (``--predict_file FILE``: one text a
line, no blank lines, or JSONL / CSV with the task's fields).

Ctrl-C / SIGTERM while training: the step finishes, a checkpoint is saved (continue with
--resume), exit 0; a second Ctrl-C aborts at once (exit 130).

Exit status: 0 done (or saved after Ctrl-C / SIGTERM), 1 a data / checkpoint problem, 2 a usage
error or a bad label file (one line naming the file and line), 130 aborted.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastgpt import cli
from fastgpt import tasks as T

PROG = "python -m fastgpt.finetune"

EPILOG = f"""texts to label: {PROG} --predict --init FINETUNED_DIR [--key=value ...] TEXT [TEXT ...]

examples:
  {PROG} --task shakespeare-genre --init out --out_dir ft-genre
  {PROG} --task movie-reviews --init out --out_dir ft-movies --epochs 1
  {PROG} --task my_pairs.jsonl --task_type pair --init out --out_dir ft-mine
  {PROG} --out_dir ft-genre --resume   # continue; other options come from the checkpoint
  {PROG} --predict --init ft-genre "O, I am fortune's fool!"

outputs in --out_dir: best/ (the best model by validation accuracy), eval.json (test scores),
metrics.jsonl, ckpt_NNNNNNN.pt (resumable state).

exit status: 0 done (or saved after Ctrl-C / SIGTERM), 1 a data or checkpoint problem, 2 a usage
error or a bad task file (one line naming the file and line), 130 aborted (a second Ctrl-C), 141 stdout
closed early."""
FORMAT = "fastgpt-finetune"
VERSION = 1


_f = cli.opt


@dataclass
class FinetuneConfig:
    task: str = _f("shakespeare-genre", f"built-in task ({', '.join(T.BUILTIN_TASKS)}) or a .jsonl / .csv file",
                   path=True)
    task_type: Literal["classify", "pair", "similarity", "choice"] | None = _f(
        None, "input transformation", "classify, or choice when the file has a choices field")
    val_file: str | None = _f(None, "with a --task file: a separate validation file", "10% of --task", path=True)
    test_file: str | None = _f(None, "with a --task file: a separate test file",
                               "10% of --task, or none when --val_file is given", path=True)
    init: str | None = _f(None, "train output dir, checkpoint file, save_pretrained / HF dir, HF Hub id (gpt2), "
                          "or 'random'",
                          "newest checkpoint in fastgpt.train's default out_dir, else random", path=True)
    tokenizer: Literal["gpt2", "byte"] | None = _f(None, "base tokenizer", "the checkpoint's (byte for random init "
                                                                        "on CPU, gpt2 on CUDA)")
    preset: str | None = _f(None, "architecture for --init random", "tiny on CPU, gpt2 on CUDA")
    out_dir: str = _f("out-finetune", "checkpoints, best/, eval.json and metrics.jsonl go here", path=True)
    epochs: int = _f(3, "passes over the training split")
    max_iters: int | None = _f(None, "cap on the optimizer steps (total, counting resumed ones)",
                               "epochs x steps per epoch")
    batch_size: int = _f(32, "examples per step")
    eval_batch_size: int | None = _f(None, "examples per evaluation batch", "2 x batch_size")
    lr: float = _f(6.25e-5, "peak learning rate (the paper's)")
    warmup_frac: float = _f(0.002, "linear warmup over this fraction of the steps, then linear decay to 0")
    weight_decay: float = _f(0.01, "AdamW weight decay (matrices and embeddings)")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)")
    aux_lm_weight: float = _f(0.5, "lambda of L3 = L2(task) + lambda * L1(LM); 0 = no auxiliary LM loss")
    dropout: float | None = _f(None, "the backbone's dropout (embeddings, attention weights, residuals)",
                               "the --init model's")
    clf_dropout: float = _f(0.1, "dropout on the head's input")
    max_len: int | None = _f(None, "tokens per sequence (longer inputs are truncated)", "the model's block_size")
    seed: int = _f(1337, "seed of the head, dropout and example order")
    device: Literal["cpu", "cuda"] | None = _f(None, "device (one GPU of several: CUDA_VISIBLE_DEVICES=N)",
                                               "cuda if available, else cpu")
    dtype: Literal["bf16", "fp16", "fp32"] | None = _f(None, "autocast dtype",
                                                       "bf16 on CUDA (fp16 before compute capability 8.0), fp32 on CPU")
    backend: Literal["fused", "reference"] | None = _f(None, "op implementation (never saved)",
                                                       "fused on CUDA, reference on CPU")
    resume: bool = _f(False, "continue from the newest checkpoint in out_dir")
    ckpt_interval: int | None = _f(None, "also checkpoint every N steps (0 = only at epoch ends)", "0")
    keep_ckpts: int = _f(2, "keep the newest N checkpoints (0 = all)")
    log_interval: int = _f(10, "log the training loss every N steps")
    progress: bool | None = _f(None, "show a progress bar", "on when stderr is a terminal")
    offline: bool = _f(False, "never download (the built-in tasks must be in the cache)")
    predict: bool = _f(False, "label the texts given as arguments (or --predict_file) with the --init model")
    predict_file: str | None = _f(None, "with --predict: one text a line, or .jsonl / .csv with the task's fields",
                                  path=True)

    def validate(self) -> list[str]:
        from fastgpt.config import PRESETS, dropout_option_problems
        p = cli.empty_path_problems(out_dir=self.out_dir, init=self.init, task=self.task, val_file=self.val_file,
                                    test_file=self.test_file, predict_file=self.predict_file)
        if self.preset is not None and self.preset not in PRESETS:
            p.append(f"--preset: unknown preset {self.preset!r}; choose from {', '.join(sorted(PRESETS))}")
        for name in ("epochs", "batch_size", "log_interval"):
            if getattr(self, name) < 1:
                p.append(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_iters", "eval_batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                p.append(f"--{name} must be >= 1, got {v}")
        if self.max_len is not None and self.max_len < 5:
            p.append(f"--max_len must be >= 5 (3 special tokens and some text), got {self.max_len}")
        if not (0 <= self.lr < 10 and math.isfinite(self.lr)):
            p.append(f"--lr must be in [0, 10), got {self.lr}")
        if not 0 <= self.warmup_frac <= 1:
            p.append(f"--warmup_frac must be in [0, 1], got {self.warmup_frac}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            p.append(f"--weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not (self.grad_clip >= 0 and math.isfinite(self.grad_clip)):
            p.append(f"--grad_clip must be a finite number >= 0 (0 = off), got {self.grad_clip}")
        if not (self.aux_lm_weight >= 0 and math.isfinite(self.aux_lm_weight)):
            p.append(f"--aux_lm_weight must be a finite number >= 0, got {self.aux_lm_weight}")
        if not 0 <= self.clf_dropout < 1:
            p.append(f"--clf_dropout must be in [0, 1), got {self.clf_dropout}")
        p += dropout_option_problems(self.dropout)
        if self.ckpt_interval is not None and self.ckpt_interval < 0:
            p.append(f"--ckpt_interval must be >= 0, got {self.ckpt_interval}")
        if self.keep_ckpts < 0:
            p.append(f"--keep_ckpts must be >= 0, got {self.keep_ckpts}")
        p += cli.seed_problems(self.seed)
        if self.predict_file is not None and not self.predict:
            p.append("--predict_file needs --predict")
        for name in ("val_file", "test_file"):
            if getattr(self, name) is not None and self.task in T.BUILTIN_TASKS:
                p.append(f"--{name} applies to a --task file; the built-in task {self.task} has its own splits")
        return p


# Options a --resume takes from the command line rather than from the checkpoint.
RUNTIME_ONLY = ("device", "backend", "resume", "progress", "out_dir", "offline", "eval_batch_size",
                "predict", "predict_file")
# Options that name files or folders: saved absolute (see _absolute_paths).
PATH_OPTIONS = tuple(k for k, o in cli.options(FinetuneConfig).items() if o.path and k != "out_dir")


class RunError(RuntimeError):
    """A problem with the run's inputs (data, checkpoint); exit 1 with this one line."""


def _our_header(header: dict) -> bool:
    """Is this metrics.jsonl header a fine-tuning run's? (it names its task; fastgpt.train's does not)"""
    return "task" in header


def _absolute_path(v: str | None) -> str | None:
    """v made absolute when it names an existing file or folder: a run saves its options, and a --resume
    may start in another working folder. The built-in task names and 'random' are names, not paths; a
    path that does not exist stays as typed, for its error to name it so."""
    return v if v is None or v in T.BUILTIN_TASKS + ("random",) else cli.absolute_if_exists(v)


def _absolute_paths(cfg: "FinetuneConfig") -> "FinetuneConfig":
    cfg = cli.expanded_paths(cfg)   # (a config made in code: the command line's are expanded already)
    return dataclasses.replace(cfg, **{k: _absolute_path(getattr(cfg, k)) for k in PATH_OPTIONS})


def linear_schedule(step: int, lr: float, warmup: int, total: int) -> float:
    """The paper's fine-tuning schedule: linear warmup over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    return lr * max(0.0, (total - step) / max(1, total - warmup))


# ---------------------------------------------------------------------------
# Models: loading --init, growing the vocabulary, the task head
# ---------------------------------------------------------------------------
def grow_vocab(model, n_new: int, std: float = 0.02) -> None:
    """Add n_new token rows (new rows N(0, std)) to the tied embedding: GPT.resize_token_embeddings."""
    model.resize_token_embeddings(model.config.vocab_size + n_new, std)


def _tokenizer_for(name: str, offline: bool):
    from fastgpt import data
    try:
        return data.get_tokenizer(name, offline=offline or None)
    except data.DataError as e:
        raise RunError(str(e)) from None


def default_init_dir() -> Path:
    from fastgpt.train import TrainConfig
    return Path(TrainConfig().out_dir)


def _newest_checkpoint(d):
    from fastgpt import checkpoint as ck
    return ck.newest_readable(d, say=lambda msg: print(f"{PROG}: {msg}", file=sys.stderr))


def default_init() -> str:
    """What no --init means: the newest readable checkpoint in fastgpt.train's default output folder (an
    absolute path), else 'random' (with a warning). A run records it as its --init, so a --resume, from
    any folder and whatever train has written since, starts from the same weights."""
    d = default_init_dir()
    latest, _ = _newest_checkpoint(d)
    if latest is None:
        print(f"{PROG}: warning: no --init and no checkpoint in fastgpt.train's default output {d}/: "
              "fine-tuning from RANDOM weights (pre-train first with `python -m fastgpt.train`, or pass --init)",
              file=sys.stderr, flush=True)
        return "random"
    return cli.absolute_path(str(latest))


def load_init(spec: str | None, cfg: "FinetuneConfig", device_type: str):
    """(GPT backbone on CPU, base tokenizer name, description, finetune meta or None).

    A fine-tuned backbone (meta not None) already has the task specials in its vocabulary.
    """
    import torch
    from fastgpt import checkpoint as ck
    from fastgpt.config import GPTConfig
    from fastgpt.model import GPT

    if spec is None:
        spec = default_init()
    if spec == "random":
        preset = cfg.preset or ("gpt2" if device_type == "cuda" else "tiny")
        tok_name = cfg.tokenizer or ("gpt2" if device_type == "cuda" else "byte")
        tok = _tokenizer_for(tok_name, cfg.offline)
        torch.manual_seed(cfg.seed)
        mcfg = GPTConfig.preset(preset, vocab_size=tok.n_vocab)
        mcfg.extra = dict(tokenizer=tok_name)
        return GPT(mcfg), tok_name, f"random init ({preset})", None
    if cfg.preset is not None:
        raise cli.UsageError(f"--preset {cfg.preset} applies only to --init random; the --init model ({spec}) "
                             "has its own architecture")
    p = Path(spec)
    if not p.exists():
        from fastgpt.model import hub_folder
        try:
            p = Path(hub_folder(spec, offline=cfg.offline or None))
        except (FileNotFoundError, ValueError) as e:
            raise RunError(f"--init {e} (give a fastgpt.train out_dir, a checkpoint, a save_pretrained or HF folder, "
                           "a Hugging Face Hub id such as gpt2, or 'random')") from None
    meta = None
    if p.is_dir() and (p / "best" / "finetune.json").exists():
        p = p / "best"
    if p.is_dir() and (p / "finetune.json").exists():
        meta = json.loads((p / "finetune.json").read_text())
    if p.is_dir() and not (p / "config.json").exists():
        latest, skipped = _newest_checkpoint(p)
        if latest is None:
            raise RunError(f"--init {spec}: the folder has no {'readable ' if skipped else ''}ckpt_*.pt and no "
                           "config.json")
        p = latest
    if p.is_dir():
        from safetensors import SafetensorError
        try:
            model = GPT.from_pretrained(p)
        except (ValueError, KeyError, OSError, SafetensorError) as e:   # damaged or mismatched files
            raise RunError(f"--init {spec}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
        tok_name = model.config.extra.get("tokenizer")
        if tok_name is None and (p / "tokenizer.json").exists():
            tok_name = json.loads((p / "tokenizer.json").read_text()).get("tokenizer")
        kind = "fine-tuned model" if meta else ("pretrained folder" if json.loads(
            (p / "config.json").read_text()).get("format") == "fastgpt" else "HF folder")
    else:
        try:
            st = ck.load_checkpoint(p)
        except ck.CorruptCheckpointError as e:  # damaged (checksum, truncation): never fall back to a plain load
            raise RunError(f"--init {spec}: {e.problem}") from None
        except ck.CheckpointError as e:
            try:  # not a training checkpoint: a plain {"config", "model"} file (fastgpt.model.load_model's format)
                from fastgpt.model import load_model
                model = load_model(p)
            except Exception:
                raise RunError(f"--init {spec}: {e.problem}") from None
            st = dict(model=None)
        else:
            mc = st.get("config") if isinstance(st.get("config"), dict) and "n_layer" in st["config"] \
                else st.get("model_config")
            if mc is None:
                raise RunError(f"--init {spec}: the checkpoint has no model config")
            model = GPT(GPTConfig.from_dict(mc))
            sd = {k.removeprefix("_orig_mod."): v for k, v in st["model"].items()}
            try:
                model.load_state_dict(sd)
            except RuntimeError as e:
                raise RunError(f"--init {spec}: the weights do not fit the model config "
                               f"({str(e).splitlines()[0][:120]})") from None
        tok_name = st.get("tokenizer") or model.config.extra.get("tokenizer")
        meta = (st.get("extra") or {}).get("finetune")
        kind = "fine-tune checkpoint" if meta else "checkpoint"
    if meta is not None:
        tok_name = meta["tokenizer"]
    if cfg.tokenizer is not None and tok_name is not None and cfg.tokenizer != tok_name:
        raise cli.UsageError(f"--tokenizer {cfg.tokenizer}: the --init model was trained with {tok_name!r}")
    if tok_name is None:   # not recorded (an HF folder): --tokenizer, or the one the vocabulary size names
        from fastgpt import data
        try:
            tok_name = data.tokenizer_for_vocab(model.config.vocab_size, cfg.tokenizer)
        except data.DataError as e:
            raise cli.UsageError(f"--init {spec}: {e}") from None
    return model, tok_name, f"{kind} {p}", meta


def _resume_point(cfg: "FinetuneConfig", given: set[str], out_dir: Path) -> tuple:
    """--resume: (cfg with the options of the fine-tune it continues, the checkpoint's state, its path);
    the state and path are None when it starts a run again from its metrics.jsonl header, or a new one
    (cli.resume_point)."""
    from fastgpt import checkpoint as ck
    try:
        latest, ckpt_state, saved = cli.resume_point(
            out_dir, lambda msg: print(f"{PROG}: {msg}", file=sys.stderr), is_ours=_our_header,
            not_ours="a fastgpt.train run's (one that wrote no checkpoint to fine-tune from), not a "
                     "fine-tuning run's: choose another --out_dir")
    except ck.CheckpointError as e:
        raise RunError(str(e)) from None
    if ckpt_state is not None:
        saved = (ckpt_state.get("extra") or {}).get("finetune_config")
        if saved is None:
            raise RunError(f"{latest} is a fastgpt.train checkpoint, not a fine-tuning run's: fine-tune from it "
                           f"with --init {out_dir} --out_dir NEW_DIR")
        _check_resume_options(cfg, given, ckpt_state, latest)
    if saved is not None:
        cfg = cli.with_saved_options(cfg, given, saved, RUNTIME_ONLY)
        problems = cfg.validate()
        if problems:
            raise cli.UsageError(problems[0])
    return cfg, ckpt_state, latest


def _check_resume_options(cfg: "FinetuneConfig", given: set[str], st: dict, path) -> None:
    """--resume continues the checkpoint's model and head: --init, --preset, --tokenizer, --task_type or
    --dropout given on the command line that say otherwise are a usage error (they used to be ignored silently);
    so is another --batch_size or --seed (the saved step counts batches of the epoch's order: data would be
    skipped or repeated)."""
    saved, meta = st["extra"]["finetune_config"], st["extra"]["finetune"]
    was = dict(init=_absolute_path(saved.get("init")), preset=saved.get("preset"), tokenizer=st.get("tokenizer"),
               task_type=meta.get("task_type"),   # (init: relative in an earlier version's checkpoint)
               batch_size=saved.get("batch_size"),   # (the saved step counts batches of this size)
               seed=saved.get("seed"),   # (each epoch's order is drawn from it: a new one repeats and skips)
               dropout=st["config"]["dropout"])   # (the model's: the saved option may be None, the --init's)
    for k, v in was.items():
        if k in given and getattr(cfg, k) != v:
            raise cli.UsageError(f"--{k} {getattr(cfg, k)}: the checkpoint {path} continues a fine-tune with "
                                 f"{k} {'auto' if v is None else v}; drop --{k}, or use another --out_dir")


def _check_resumed_task(saved: dict, task, out_dir) -> None:
    """A --resume fine-tunes the checkpoint's task on the same split: another task, another label set or
    an edited task file (the fixed 80/10/10 shuffle would move trained-on examples into test) is refused,
    before the head (sized by the labels) is loaded."""
    where = f"--resume: the checkpoint in {out_dir}"
    if saved["task"] != task.name:
        raise RunError(f"{where} fine-tunes {saved['task']}, not {task.name}; use another --out_dir")
    if saved["labels"] != task.labels:
        raise RunError(f"{where} was trained with the labels {', '.join(saved['labels']) or '(choice indices)'}; "
                       f"{task.name} now has {', '.join(task.labels) or '(choice indices)'}; restore the file, "
                       "or use another --out_dir")
    if saved.get("examples_sha256") not in (None, T.examples_sha256(task)):   # (None: an earlier version's)
        raise RunError(f"{where} was trained on other examples of {task.name} (the file, or its --val_file / "
                       "--test_file, changed since: its train/val/test split would not be the one trained "
                       "and scored on); restore them, or use another --out_dir")


def build_head(n_embd: int, n_out: int, dropout: float):
    import torch.nn as nn
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_embd, n_out))
    nn.init.normal_(head[1].weight, 0.0, 0.02)
    nn.init.zeros_(head[1].bias)
    return head


def n_head_outputs(task_type: str, n_classes: int) -> int:
    return 1 if task_type == "choice" else n_classes


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------
@dataclass
class Encoded:
    """One example as token sequences (1, 2 for similarity, K for choice) and its label."""
    seqs: list[list[int]]
    label: int


def encode_all(examples, task_type, tok, max_len) -> list[Encoded]:
    return [Encoded(T.encode_example(e, task_type, tok, max_len), e.label) for e in examples]


def collate(batch: list[Encoded], device, pad_id: int = 0):
    """Right-padded (N, T) ids, LM targets (-100 on padding), the extract position of each row,
    the example / choice index of each row, and the labels (B,)."""
    import torch
    rows, ex_idx, ch_idx = [], [], []
    for i, e in enumerate(batch):
        for k, s in enumerate(e.seqs):
            rows.append(s)
            ex_idx.append(i)
            ch_idx.append(k)
    Tm = max(len(s) for s in rows)
    idx = torch.full((len(rows), Tm), pad_id, dtype=torch.long)
    tgt = torch.full((len(rows), Tm), -100, dtype=torch.long)
    for r, s in enumerate(rows):
        t = torch.tensor(s, dtype=torch.long)
        idx[r, :len(s)] = t
        tgt[r, :len(s) - 1] = t[1:]
    pos = torch.tensor([len(s) - 1 for s in rows], dtype=torch.long)
    out = dict(idx=idx, targets=tgt, pos=pos, ex=torch.tensor(ex_idx), ch=torch.tensor(ch_idx),
               labels=torch.tensor([e.label for e in batch], dtype=torch.long),
               n_choices=max(len(e.seqs) for e in batch))
    if torch.device(device).type == "cuda":
        return {k: (v.pin_memory().to(device, non_blocking=True) if torch.is_tensor(v) else v)
                for k, v in out.items()}
    return out


def forward_batch(model, head, b: dict, task_type: str, aux_lm_weight: float):
    """(task logits (B, n_out or K) fp32, task loss, lm loss or None, total loss). The ops run on the
    model's backend (model.backend)."""
    import torch
    import torch.nn.functional as F
    h = model.hidden_states(b["idx"])                                     # (N, T, C)
    feats = h[torch.arange(h.shape[0], device=h.device), b["pos"]]        # (N, C) at the extract token
    B = b["labels"].shape[0]
    if task_type == "similarity":
        feats = feats.view(B, 2, feats.shape[-1]).sum(1)
    out = head(feats).float()
    if task_type == "choice":
        logits = out.new_full((B, b["n_choices"]), float("-inf"))
        logits = logits.index_put((b["ex"], b["ch"]), out[:, 0])
    else:
        logits = out
    task_loss = F.cross_entropy(logits, b["labels"]) if (b["labels"] >= 0).all() else None
    lm_loss = None
    if aux_lm_weight > 0:   # (GPT.lm_loss: fused, or through lm_head when a hook or an adapter is on it)
        lm_loss = model.lm_loss(h, b["targets"])
    total = None
    if task_loss is not None:
        total = task_loss if lm_loss is None else task_loss + aux_lm_weight * lm_loss
    return logits, task_loss, lm_loss, total


# ---------------------------------------------------------------------------
# Saving the fine-tuned model
# ---------------------------------------------------------------------------
def save_finetuned(path: Path, model, head, meta: dict) -> None:
    """path/: save_pretrained backbone (config.json + model.safetensors) + head.safetensors + finetune.json,
    written to a sibling temp folder and swapped in."""
    from safetensors.torch import save_file

    from fastgpt import checkpoint as ck

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()},
                  str(tmp / "head.safetensors"))
        (tmp / "finetune.json").write_text(json.dumps(meta, indent=1))
        cli.same_mode_as(tmp / "head.safetensors", tmp / "finetune.json")   # (safetensors made it 0600)
    ck.replace_folder(path, fill)


def load_finetuned(path, device="cpu", backend=None, offline: bool = False):
    """(model, head, meta, TaskTokenizer) of a fine-tuned folder (OUT_DIR or OUT_DIR/best)."""
    from safetensors.torch import load_file
    from fastgpt.model import GPT
    p = Path(path)
    if not p.exists():
        raise RunError(f"--init {path}: no such folder (give a fastgpt.finetune out_dir)")
    if (p / "best" / "finetune.json").exists():
        p = p / "best"
    if not (p / "finetune.json").exists():
        from fastgpt import checkpoint as ck
        try:
            header = cli.metrics_header(p)
        except ck.CheckpointError:
            header = None
        if ck.list_checkpoints(p) and header is not None and _our_header(header):
            raise RunError(f"--init {path}: this fine-tune has no best/ model yet (it stopped before its first "
                           f"evaluation): continue it with {cli.resume_command(PROG, p)}")
        raise RunError(f"--init {path}: not a fine-tuned model (no finetune.json; give a fastgpt.finetune out_dir)")
    meta = json.loads((p / "finetune.json").read_text())
    if meta.get("format") != FORMAT:
        raise RunError(f"{p}/finetune.json is not a fastgpt fine-tune description")
    from safetensors import SafetensorError
    try:
        model = GPT.from_pretrained(p, backend=backend)
        head = build_head(model.config.n_embd, n_head_outputs(meta["task_type"], len(meta["labels"])), 0.0)
        head.load_state_dict(load_file(str(p / "head.safetensors")))
    except (ValueError, KeyError, OSError, RuntimeError, SafetensorError) as e:   # damaged or mismatched files
        raise RunError(f"{p}: not a usable fine-tuned model ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:200]})") from None
    model = model.to(device)
    tok = T.TaskTokenizer(_tokenizer_for(meta["tokenizer"], offline))
    if tok.n_vocab != model.config.vocab_size:
        raise RunError(f"{p}: the model's vocabulary ({model.config.vocab_size}) does not match its tokenizer "
                       f"({meta['tokenizer']} + {len(T.SPECIAL_TOKENS)} specials = {tok.n_vocab})")
    return model.eval(), head.to(device).eval(), meta, tok


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------
def predict_batches(model, head, data: list[Encoded], task_type: str, bs: int, device, autocast):
    """Per batch of data, in order: (predicted indices, task loss or None, examples in the batch); the
    model and head are in eval mode until the last batch is done."""
    import torch
    was = model.training
    model.eval()
    head.eval()
    try:
        for i in range(0, len(data), bs):
            chunk = data[i:i + bs]
            b = collate(chunk, device)
            with torch.no_grad(), autocast():  # (not held over the yield: the caller keeps its own grad mode)
                logits, task_loss, _, _ = forward_batch(model, head, b, task_type, 0.0)
            yield logits.argmax(-1).tolist(), task_loss, len(chunk)
    finally:
        model.train(was)
        head.train(was)


def predict_encoded(model, head, data: list[Encoded], task_type: str, bs: int, device, autocast):
    """(predicted indices, task loss mean or None) over data, in order."""
    preds, loss_sum, n = [], 0.0, 0
    for p, task_loss, k in predict_batches(model, head, data, task_type, bs, device, autocast):
        preds.extend(p)
        if task_loss is not None:
            loss_sum += float(task_loss) * k
            n += k
    return preds, (loss_sum / n if n else None)


def score(model, head, data, task_type, n_classes, bs, device, autocast) -> dict:
    preds, loss = predict_encoded(model, head, data, task_type, bs, device, autocast)
    gold = [e.label for e in data]
    return dict(accuracy=T.accuracy(preds, gold), macro_f1=T.macro_f1(preds, gold, n_classes or None),
                loss=loss, n=len(data))


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
def _device_and_dtype(cfg: FinetuneConfig):
    c = dataclasses.replace(cfg)
    c.device = cli.device(c.device).type
    if c.device == "cuda":   # auto: bf16, or fp16 on a GPU without native bf16
        c.dtype = cli.cuda_dtype(c.dtype)
    elif c.dtype is None:
        c.dtype = "fp32"
    if c.dtype == "fp16" and c.device != "cuda":
        raise cli.UsageError("--dtype fp16 needs --device cuda (on the CPU use bf16 or fp32)")
    cli.backend(c.backend, c.device)
    if c.progress is None:
        c.progress = sys.stderr.isatty()
    if c.eval_batch_size is None:
        c.eval_batch_size = 2 * c.batch_size
    if c.ckpt_interval is None:
        c.ckpt_interval = 0
    return c


def run(cfg: FinetuneConfig, given: set[str] | None = None) -> dict:
    """Fine-tune per cfg; returns the summary written to eval.json. Raises RunError / UsageError / TaskFileError.

    SIGINT / SIGTERM during training: the step finishes, a checkpoint is saved, and the summary is
    {"interrupted": signal name, "steps", "checkpoint"} (a second Ctrl-C aborts at once)."""
    with cli.GracefulStop(PROG) as sigs, cli.restored_torch_settings(), cli.OutDirLock() as lock:
        return _run(cfg, given, sigs, lock)


def _run(cfg: FinetuneConfig, given: set[str] | None, sigs: cli.GracefulStop, lock: cli.OutDirLock) -> dict:
    import numpy as np
    import torch
    from fastgpt import checkpoint as ck
    from fastgpt import data as fdata

    given = set(given or ())
    _one_process()
    cfg = _absolute_paths(cfg)
    out_dir = Path(cfg.out_dir)
    cli.check_out_dir(out_dir)  # before the task and the model are loaded
    err = lock.acquire(out_dir)
    if err:
        raise RunError(err)
    ckpt_state = latest = None
    if cfg.resume:
        cfg, ckpt_state, latest = _resume_point(cfg, given, out_dir)
    else:   # (a missing --task file said first: the --resume that the earlier run's line suggests is no fix)
        T.check_task_files(cfg.task, cfg.val_file, cfg.test_file)
        cli.check_no_earlier_run(out_dir, _our_header)
    placement = cli.placement_flags(cfg)   # as given (an automatic --device is not repeated: main's line too)
    cfg = _device_and_dtype(cfg)
    device = torch.device(cfg.device)
    cli.seed_run(cfg.seed, device)   # determinism and precision

    # --- task
    try:
        task = T.load_task(cfg.task, cfg.task_type, cfg.val_file, cfg.test_file, offline=cfg.offline or None)
    except fdata.DataError as e:
        raise RunError(str(e)) from None
    except ValueError as e:
        if isinstance(e, T.TaskFileError):
            raise
        raise cli.UsageError(str(e)) from None

    if ckpt_state is not None:
        _check_resumed_task(ckpt_state["extra"]["finetune"], task, out_dir)

    # --- model (the backbone; a resumed run rebuilds it from the checkpoint's own weights)
    if ckpt_state is not None:
        from fastgpt.config import GPTConfig
        from fastgpt.model import GPT
        model = GPT(GPTConfig.from_dict(ckpt_state["config"]))
        model.load_state_dict(ckpt_state["model"])
        tok_name = ckpt_state["tokenizer"]
        init_desc = ckpt_state["extra"]["init"]
    else:
        if cfg.init is None:
            cfg = dataclasses.replace(cfg, init=default_init())   # saved as the run's --init
        model, tok_name, init_desc, prior = load_init(cfg.init, cfg, device.type)
    tok = T.TaskTokenizer(_tokenizer_for(tok_name, cfg.offline))
    if ckpt_state is None:
        if prior is None:
            if model.config.vocab_size != tok.base_vocab:
                raise RunError(f"the --init model's vocabulary ({model.config.vocab_size}) does not match the "
                               f"{tok_name} tokenizer ({tok.base_vocab}); pass the right --tokenizer")
            grow_vocab(model, len(T.SPECIAL_TOKENS))
        elif model.config.vocab_size != tok.n_vocab:
            raise RunError(f"the fine-tuned --init model's vocabulary ({model.config.vocab_size}) does not match "
                           f"{tok_name} + specials ({tok.n_vocab})")
        model.config.extra = dict(model.config.extra, tokenizer=tok_name,
                                  special_tokens=list(T.SPECIAL_TOKENS), base_vocab=tok.base_vocab)
        if cfg.dropout is not None:
            model.set_dropout(cfg.dropout)
    model.backend = cfg.backend
    model.to(device)
    if cfg.max_len is not None and cfg.max_len > model.config.block_size:
        raise cli.UsageError(f"--max_len {cfg.max_len} exceeds the model's context of {model.config.block_size} "
                             f"positions (its block_size); use --max_len {model.config.block_size} or less")
    max_len = cfg.max_len or model.config.block_size
    torch.manual_seed(cfg.seed + 1)
    head = build_head(model.config.n_embd, n_head_outputs(task.task_type, task.n_classes),
                      cfg.clf_dropout).to(device)
    if ckpt_state is not None:
        head.load_state_dict(ckpt_state["head"])

    # --- data
    train = encode_all(task.train, task.task_type, tok, max_len)
    val = encode_all(task.val, task.task_type, tok, max_len)
    test = encode_all(task.test, task.task_type, tok, max_len)
    if not val:
        raise RunError(f"{cfg.task}: the validation split is empty (add examples or give --val_file)")
    spe = math.ceil(len(train) / cfg.batch_size)
    total = spe * cfg.epochs if cfg.max_iters is None else min(cfg.max_iters, spe * cfg.epochs)
    if ckpt_state is not None and total < ckpt_state["step"]:
        end = f"--max_iters {cfg.max_iters}" if total == cfg.max_iters else \
            f"--epochs {cfg.epochs} ({total} steps of {spe})"
        raise cli.UsageError(f"{end}: the checkpoint {latest} is already at step {ckpt_state['step']}; "
                             "give a larger value to train on, or leave it out")
    warmup = int(round(cfg.warmup_frac * total))

    # --- optimiser: AdamW, decay on matrices / embeddings (the paper's w = 0.01)
    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=cfg.weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    kw = dict(fused=True) if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, **kw)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")
    autocast = cli.autocast_factory(device, cfg.dtype)

    step = 0
    extra = dict(best=None, history=[], init=init_desc, seconds=0.0)   # seconds: of the run's earlier segments
    if ckpt_state is not None:
        optimizer.load_state_dict(ck.with_run_options(ckpt_state["optimizer"], optimizer))  # this run's decay
        if ckpt_state.get("scaler") and cfg.dtype == "fp16":
            scaler.load_state_dict(ckpt_state["scaler"])
        step = int(ckpt_state["step"])
        extra.update({k: ckpt_state["extra"][k] for k in ("best", "history", "init")})
        extra["seconds"] = ckpt_state["extra"].get("seconds", 0.0)   # (absent in an earlier version's)
        ck.set_rng_state(ckpt_state["rng"])

    saved_cfg = cli.to_dict(cfg, drop=("backend",))
    meta = dict(format=FORMAT, version=VERSION, task=task.name, task_type=task.task_type, labels=task.labels,
                tokenizer=tok_name, special_tokens=list(T.SPECIAL_TOKENS), base_vocab=tok.base_vocab,
                max_len=max_len, init=extra["init"], aux_lm_weight=cfg.aux_lm_weight,
                examples_sha256=T.examples_sha256(task))
    err = cli.make_out_dir(out_dir, step if ckpt_state is not None else None)
    if err:
        raise RunError(err)
    metrics_path = out_dir / "metrics.jsonl"
    log = cli.RunLog(metrics_path, append=ckpt_state is not None and metrics_path.exists(), bar=bool(cfg.progress),
                     total=total, initial=step, desc="finetune")

    def state(step):
        return dict(step=step, model=model.state_dict(), config=model.config.to_dict(), head=head.state_dict(),
                    optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict() if scaler.is_enabled() else None, rng=ck.rng_state(),
                    tokenizer=tok_name,
                    extra=dict(extra, finetune=meta, finetune_config=saved_cfg,
                               seconds=extra["seconds"] + time.perf_counter() - t0))

    def evaluate_and_keep(step, epoch):
        r = score(model, head, val, task.task_type, task.n_classes, cfg.eval_batch_size, device, autocast)
        best = extra["best"]
        improved = best is None or (r["accuracy"], r["macro_f1"]) > (best["accuracy"], best["macro_f1"])
        row = dict(step=step, epoch=epoch, val_accuracy=r["accuracy"], val_macro_f1=r["macro_f1"],
                   val_loss=r["loss"], best=improved)
        extra["history"].append(row)
        log.write(row)
        log.say(f"epoch {epoch:g} step {step}/{total}: val accuracy {r['accuracy']:.4f}, macro-F1 "
                f"{r['macro_f1']:.4f}, loss {r['loss']:.4f}" + ("  (best so far: kept in best/)" if improved else ""))
        if improved:
            extra["best"] = dict(step=step, epoch=epoch, accuracy=r["accuracy"], macro_f1=r["macro_f1"])
            save_finetuned(out_dir / "best", model, head, dict(meta, val=extra["best"]))

    t0 = time.perf_counter()
    try:
        log.say(f"{PROG}: {task.summary()}")
        log.say(f"{PROG}: init {init_desc}; {model.num_params() / 1e6:.2f}M params, {tok_name} + "
                f"{len(T.SPECIAL_TOKENS)} specials (vocab {model.config.vocab_size}, table "
                f"{model.config.padded_vocab_size}), max_len {max_len}; {spe} steps/epoch, {total} steps; "
                f"{cfg.device} {cfg.dtype}; lambda {cfg.aux_lm_weight}")
        if ckpt_state is not None:   # (a resumed run's header looks like a new run's)
            log.say(f"{PROG}: resuming from {latest} (step {step}/{total})")
        if step == 0:
            log.write(dict(type="header", config=saved_cfg, task=task.summary(), init=init_desc,
                           model_config=model.config.to_dict(), steps=total, steps_per_epoch=spe))
        model.train()
        head.train()
        order = None
        stopped = None
        sigs.armed = True
        while step < total:
            epoch, i = divmod(step, spe)
            if order is None or i == 0:  # each epoch's order depends only on (seed, epoch): resumable
                order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train)).tolist()
            chunk = [train[j] for j in order[i * cfg.batch_size:(i + 1) * cfg.batch_size]]
            lr = linear_schedule(step, cfg.lr, warmup, total)
            for grp in optimizer.param_groups:
                grp["lr"] = lr
            b = collate(chunk, device)
            with autocast():
                _, task_loss, lm_loss, loss = forward_batch(model, head, b, task.task_type, cfg.aux_lm_weight)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if log.bar is not None:
                log.bar.update(1)
            end_epoch = step % spe == 0 or step == total
            ckpt_now = bool(cfg.ckpt_interval) and step % cfg.ckpt_interval == 0
            log_now = step % cfg.log_interval == 0 or end_epoch
            if log_now or ckpt_now or sigs.name is not None:   # (never a checkpoint of non-finite weights, which
                lv = float(loss.detach())                      # would rotate the good ones out)
                if not math.isfinite(lv) and cfg.dtype != "fp16":
                    raise RunError(f"the loss became {lv} at step {step}; lower --lr (now {cfg.lr})"
                                   + (" or use --dtype fp32" if cfg.dtype != "fp32" else ""))
            if log_now:
                tv = float(task_loss.detach())
                row = dict(step=step, loss=lv, task_loss=tv, lr=lr, time_s=time.perf_counter() - t0)
                if lm_loss is not None:
                    row["lm_loss"] = float(lm_loss.detach())
                log.write(row)
                msg = f"loss {lv:.4f} (task {tv:.4f}" + (f" + {cfg.aux_lm_weight:g} x lm {row['lm_loss']:.4f})"
                                                          if lm_loss is not None else ")")
                if log.bar is not None:
                    log.bar.set_postfix_str(msg, refresh=False)
                else:
                    log.say(f"step {step}/{total}: {msg}, lr {lr:.2e}")
            gone = lock.lost() if end_epoch or ckpt_now or sigs.name is not None else None
            if gone:   # (the folder deleted: writing would make it again, maybe beside another run)
                raise ck.CheckpointError(gone)
            if end_epoch:
                evaluate_and_keep(step, round(step / spe, 3))
            saved = ck.save_checkpoint(out_dir, state(step), keep=cfg.keep_ckpts) if end_epoch or ckpt_now else None
            if sigs.name is not None and step < total:  # Ctrl-C / SIGTERM: this step is done; save and stop
                stopped = saved or ck.save_checkpoint(out_dir, state(step), keep=cfg.keep_ckpts)
                break
        sigs.armed = False
        if stopped is not None:
            log.say(f"{PROG}: {sigs.name}: stopped after step {step}/{total}; checkpoint saved to {stopped} "
                    f"(continue with: {cli.resume_command(PROG, out_dir, placement)})")
            return dict(interrupted=sigs.name, steps=step, checkpoint=str(stopped))
    finally:
        log.close()

    # --- the test split, scored once with the best model by validation
    if extra["best"] is None:  # resumed at the end, or nothing to train: evaluate what we have
        log = cli.RunLog(metrics_path, append=True, bar=False, total=0, initial=0)
        evaluate_and_keep(step, round(step / spe, 3))
        log.close()
    best_model, best_head, _, _ = load_finetuned(out_dir / "best", device, cfg.backend, cfg.offline)
    summary = dict(task=task.name, task_type=task.task_type, labels=task.labels, init=extra["init"],
                   aux_lm_weight=cfg.aux_lm_weight, steps=step, epochs=round(step / spe, 3), max_len=max_len,
                   val=extra["best"], n_train=len(train), n_val=len(val), n_test=len(test),
                   majority_accuracy=T.majority_accuracy(task.train, task.test) if task.test else None,
                   device=cfg.device, dtype=cfg.dtype, seconds=round(extra["seconds"] + time.perf_counter() - t0, 1),
                   info=task.info)
    if test:
        r = score(best_model, best_head, test, task.task_type, task.n_classes, cfg.eval_batch_size, device, autocast)
        summary.update(accuracy=r["accuracy"], macro_f1=r["macro_f1"], test_loss=r["loss"])
        print(f"{PROG}: test accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f} on {len(test)} examples "
              f"(majority class {summary['majority_accuracy']:.4f}; best val accuracy "
              f"{extra['best']['accuracy']:.4f} at step {extra['best']['step']})")
    else:
        summary.update(accuracy=None, macro_f1=None)
        print(f"{PROG}: no test split; best val accuracy {extra['best']['accuracy']:.4f}")
    cli.write_atomic(out_dir / "eval.json", json.dumps(summary, indent=1))
    return summary


def _one_process() -> None:
    """Fine-tuning and --predict run in one process: under torchrun N copies would write one out_dir
    at once (or label every text N times)."""
    world = cli.torchrun_world_size()
    if world > 1 and "RANK" in os.environ:
        raise cli.AlikeUsageError("fastgpt.finetune runs in one process (fine-tuning sets are small): start it "
                                  "without torchrun")
    if world > 1:
        raise cli.UsageError(f"fastgpt.finetune runs in one process, and $WORLD_SIZE is {world}: unset it")


# the options --predict reads (the rest are training's)
PREDICT_READS = ("predict", "init", "predict_file", "device", "dtype", "backend", "batch_size", "eval_batch_size",
                 "offline")


def predict(cfg: FinetuneConfig, texts: list[str]):
    """Labels (class names, or the chosen choice's text) for texts / cfg.predict_file with the --init model,
    yielded batch by batch: main prints each as it comes, so a long file's labels appear as they are made
    and a Ctrl-C keeps those already printed."""
    import torch
    _one_process()
    if cfg.init is None:
        raise cli.UsageError("--predict needs --init FINETUNED_DIR (a fastgpt.finetune out_dir)")
    if texts and cfg.predict_file is not None:   # (the texts were dropped without a word)
        raise cli.UsageError("--predict: give texts as arguments or --predict_file FILE, not both")
    for i, t in enumerate(texts, 1):   # (as in a --predict_file: no blank texts)
        problem = f"text {i} is blank" if not t.strip() else cli.not_utf8_problem(f"text {i}", t)
        if problem:
            raise cli.UsageError(f"--predict: {problem}")
    c = _device_and_dtype(cfg)
    device = torch.device(c.device)
    model, head, meta, tok = load_finetuned(cfg.init, device, cfg.backend, cfg.offline)   # (--offline: no fetch)
    tt = meta["task_type"]
    if cfg.predict_file is not None:
        exs = T.read_inputs(cfg.predict_file, tt)
    else:
        if not texts:
            raise cli.UsageError("--predict: give texts as arguments or --predict_file FILE")
        if tt != "classify":
            raise cli.UsageError(f"--predict: a {tt} model takes its inputs from --predict_file (JSONL or CSV)")
        exs = [T.Example(text=t, label=-1) for t in texts]
    data = [Encoded(T.encode_example(e, tt, tok, meta["max_len"]), -1) for e in exs]
    done = 0
    for preds, _, _ in predict_batches(model, head, data, tt, c.eval_batch_size, device,
                                       cli.autocast_factory(device, c.dtype)):
        for e, p in zip(exs[done:done + len(preds)], preds):
            # one line per input: a line break inside a choice's text is printed as \n (labels have none)
            yield _one_line(e.choices[p]) if tt == "choice" else meta["labels"][p]
        done += len(preds)


def _one_line(text: str) -> str:
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")


def _split_positionals(argv: list[str]) -> tuple[list[str], list[str]]:
    """(options, positional texts): fastgpt.cli takes only --key options; --predict's texts are positional.
    (Adapter: a value that follows a non-bool option is that option's.)"""
    opts = cli.options(FinetuneConfig)
    predicting = any(a == "--predict" or a.startswith("--predict=") for a in argv)
    keep, texts = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            texts.extend(argv[i:])
            break
        if a.startswith("--") and len(a) > 2:
            keep.append(a)
            key, eq, _ = a[2:].partition("=")
            o = opts.get(key.replace("-", "_"))
            if o is None and predicting and key not in ("help", "config"):   # (a text to label, perhaps)
                cli.die(PROG, f"{cli._unknown(key.replace('-', '_'), opts)} (a text to label that starts with -- "
                              "goes after a lone --: --predict ... -- TEXT)")
            if not eq and key != "help":
                if key == "config" or (o is not None and o.base is not bool):
                    if i < len(argv):
                        keep.append(argv[i])
                        i += 1
                elif (o is not None and o.name != "predict" and i < len(argv)
                      and argv[i].lower() in cli._TRUE + cli._FALSE):  # "--predict yes" labels the text "yes"
                    keep.append(argv[i])
                    i += 1
        elif a in ("-h",):
            keep.append(a)
        else:
            texts.append(a)
    return keep, texts


def main(argv=None) -> int:
    from fastgpt.checkpoint import CheckpointError
    argv = sys.argv[1:] if argv is None else list(argv)
    argv, texts = _split_positionals(argv)
    cfg, given = cli.parse(FinetuneConfig, argv, prog=PROG, description=__doc__.split("\n\n")[1], epilog=EPILOG)
    if texts and not cfg.predict:
        cli.die(PROG, f"unexpected argument {texts[0]!r} (texts to label need --predict; options look like "
                      "--key=value)")
    if cfg.predict:   # a training option on the command line was ignored without a word (a --config's may stay)
        unread = [k for a in argv if a.startswith("--")
                  if (k := a[2:].partition("=")[0].replace("-", "_")) in given and k not in PREDICT_READS]
        if unread:
            cli.die(PROG, f"--predict reads no --{unread[0]} (an option of training): leave it out")
    def body():
        if cfg.predict:
            n = 0
            try:
                for label in predict(cfg, texts):
                    print(cli.printable(label), flush=True)
                    n += 1
            except KeyboardInterrupt:  # the labels printed so far stay; say how many (one per input, in order)
                raise KeyboardInterrupt(f"after {n} label{'s' * (n != 1)}") from None
        else:
            run(cfg, given)

    # Ctrl-C: a training run names the checkpoint to continue from; --predict has no out_dir of its own
    training = (cfg.out_dir, "one is written at each epoch end, and every --ckpt_interval steps",
                cli.placement_flags(cfg))
    # CheckpointError: a checkpoint could not be written
    return cli.run_main(PROG, body, {T.TaskFileError: 2, RunError: 1, CheckpointError: 1},
                        "lower --batch_size or --max_len", interrupted=None if cfg.predict else training)


if __name__ == "__main__":
    sys.exit(cli.entry(main))
