"""Training checkpoints: full state, written atomically, the last N kept.

A checkpoint is ``OUT_DIR/ckpt_<step:07d>.pt``, a ``torch.save`` of a dict::

    format, version     "fastgpt-train", 1
    step                optimizer steps done
    model               model state dict
    config              the model's GPTConfig as a dict (never a backend: backends are not stored);
                        with "model" it is what fastgpt.model.load_model reads
    model_config        the same dict (the name fastgpt.model.load_model looks for first)
    train_config        the TrainConfig as a dict, without ``backend``
    optimizer, scaler   their state dicts (scaler: None unless fp16)
    rng                 python / numpy (global) / torch CPU / torch CUDA generator states
    data                the batch sampler's state (its numpy Generator and a counter)
    tokenizer           "gpt2" | "byte"
    extra               anything else the loop keeps (best val loss, tokens seen, ...)

Writing: a temp file in the same folder, flushed and fsync'ed, then
``os.replace`` onto the final name and an fsync of the folder, so a crash
leaves either the old set of checkpoints or the new one, never a torn file.
It loads with ``torch.load(weights_only=True)``: only tensors and plain
Python containers are stored (numpy state is converted to lists).
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

FORMAT = "fastgpt-train"
VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{7,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line saying what to do."""


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = dict(python=_to_plain(random.getstate()), torch_cpu=torch.get_rng_state(),
              numpy=dict(kind=kind, keys=[int(k) for k in keys], pos=int(pos), has_gauss=int(has_gauss),
                         cached_gaussian=float(cached)))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(_to_tuple(st["python"]))
    n = st["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(st["torch_cpu"])
    if "torch_cuda" in st and torch.cuda.is_available():
        states = st["torch_cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            torch.cuda.set_rng_state(states[0])


def _to_plain(x):
    return [_to_plain(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return  # not supported (Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path) -> Path:
    """torch.save(obj) to path via temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def list_checkpoints(out_dir) -> list[Path]:
    """The checkpoints in out_dir, oldest step first."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir) -> Path | None:
    c = list_checkpoints(out_dir)
    return c[-1] if c else None


def save_checkpoint(out_dir, state: dict, keep: int = 2) -> Path:
    """Write state (with format/version added) as ckpt_<step>.pt; delete all but the newest ``keep``."""
    state = dict(state, format=FORMAT, version=VERSION)
    path = atomic_save(state, Path(out_dir) / f"ckpt_{int(state['step']):07d}.pt")
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """The state dict of a checkpoint file; CheckpointError (one line) if it is not a usable one."""
    path = Path(path)
    try:
        st = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as e:  # truncated / not a torch file / unpickling refused
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''}); delete it to resume from an "
                              "older one") from None
    if not isinstance(st, dict) or st.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastgpt training checkpoint")
    if st.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer fastgpt (checkpoint version {st['version']}); "
                              "upgrade fastgpt")
    return st


def load_model(path, device="cpu", backend=None):
    """A GPT (eval mode) from a training checkpoint file or an out_dir holding checkpoints."""
    from fastgpt.model import GPT
    from fastgpt.config import GPTConfig
    p = Path(path)
    if p.is_dir():
        c = latest_checkpoint(p)
        if c is None:
            raise CheckpointError(f"no ckpt_*.pt in {p}")
        p = c
    st = load_checkpoint(p, map_location=device)
    model = GPT(GPTConfig.from_dict(st["config"]), backend=backend)
    model.load_state_dict(st["model"])
    return model.to(device).eval()
