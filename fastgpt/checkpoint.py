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
    rng_ranks           (runs of several processes) each rank's ``rng``, by rank
    data                the batch sampler's state (its numpy Generator and a counter)
    tokenizer           "gpt2" | "byte"
    extra               anything else the loop keeps (best val loss, tokens seen, ...)

A fine-tuning checkpoint (fastgpt.finetune) has the same format without ``model_config``,
``train_config`` and ``data``, with the task ``head``'s state dict, and its options and task
description in ``extra`` (``finetune_config``, ``finetune``).

Writing: a temp file in the same folder, flushed and fsync'ed, then
``os.replace`` onto the final name and an fsync of the folder, so a crash
leaves either the old set of checkpoints or the new one, never a torn file.
It loads with ``torch.load(weights_only=True)``: only tensors and plain
Python containers are stored (numpy state is converted to lists).

Checksum: the ``torch.save`` bytes are followed by a fixed-size footer
``\nfastgpt-ckpt sha256=<64 hex> size=<20 digits>\n`` (the SHA-256 of the
bytes before it, computed while they are written). ``torch.load`` ignores
bytes after the zip archive, so the file stays a plain torch checkpoint;
``verify_checkpoint`` / ``load_checkpoint`` check the footer first, so a
truncated, torn or bit-flipped file is reported as such, and
``load_latest_checkpoint`` (``--resume``) takes the newest one that verifies,
saying which it skipped and why. Files without a footer (written before it
existed) load unverified.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

FORMAT = "fastgpt-train"
VERSION = 1
_NAME = re.compile(r"ckpt_(\d{7,})\.pt\Z")   # (match: anchored at the start; \Z: not before a newline)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line saying what to do.

    ``problem`` is the message without the advice (``--resume``'s "delete it ..."), for callers
    whose user did not ask to resume (fine-tuning's --init)."""

    def __init__(self, problem: str, advice: str = ""):
        super().__init__(f"{problem}; {advice}" if advice else problem)
        self.problem = problem


RESUME_ADVICE = "delete it to resume from an older one"


class UnusableCheckpointError(CheckpointError):
    """A file that holds no usable checkpoint (damaged, cut short, another program's, gone): a --resume
    passes over it to an older one. Other CheckpointErrors (no permission to read it, a newer fastgpt's)
    stop the run: the file may be good, and the run would overwrite it."""


class CorruptCheckpointError(UnusableCheckpointError):
    """A checkpoint file that is truncated or fails its checksum (never fall back to reading it anyway)."""


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = dict(python=_to_plain(random.getstate()), torch_cpu=torch.get_rng_state(),
              numpy=dict(kind=kind, keys=[int(k) for k in keys], pos=int(pos), has_gauss=int(has_gauss),
                         cached_gaussian=float(cached)))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["torch_cuda"] = list(torch.cuda.get_rng_state_all())
        st["torch_cuda_current"] = torch.cuda.current_device()   # a DDP rank's own GPU
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
        else:  # other GPUs visible now (e.g. one per rank, where each rank saw all): the run's own GPU's
            torch.cuda.set_rng_state(states[st.get("torch_cuda_current", 0)])


def _to_plain(x):
    return [_to_plain(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x


def fsync_file(path) -> None:
    """The file's bytes on the disk (before a rename makes them the real name's)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(d) -> None:
    """The folder's entries (a rename into it) on the disk; quietly nothing where a folder cannot be synced."""
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


def _fsync_tree(folder: Path) -> None:
    """fsync every file under folder, then each folder (deepest first)."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)


_FOOTER_TAG = b"\nfastgpt-ckpt sha256="
_FOOTER_LEN = len(_FOOTER_TAG) + 64 + len(b" size=") + 20 + 1
_TMP = re.compile(r"\.(.+)\.tmp(\d+)\Z")
# replace_folder's previous folder, between its two renames: of the folders fastgpt swaps (the run's model/, a
# fine-tune's best/) only, never a user's own ".X.oldN"
_OLD = re.compile(r"\.(model|best)\.old(\d+)\Z")


def _footer(digest: str, size: int) -> bytes:
    b = _FOOTER_TAG + digest.encode() + b" size=" + f"{size:020d}".encode() + b"\n"
    assert len(b) == _FOOTER_LEN
    return b


class _HashingWriter:
    """A write-only file object for torch.save that hashes what it writes (no read-back)."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0
        self.error = None  # the OSError of a failed write (torch.save re-raises it as a RuntimeError)

    def write(self, b) -> int:
        self.h.update(b)
        try:
            n = self.f.write(b)
        except OSError as e:
            self.error = e
            raise
        self.n += memoryview(b).nbytes
        return n

    def flush(self):
        self.f.flush()


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: assume alive, keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def hold_while_open(f) -> None:
    """Mark an open temp file as being written: an exclusive flock, held until the file is closed, which
    remove_stale_temps respects (a writer in another pid namespace, a container sharing the folder, has
    a pid this process cannot see). Where flock is missing or refused, the pid alone tells."""
    try:
        import fcntl
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):
        pass


def _held(p: Path) -> bool | None:
    """Is p a file some process holds hold_while_open's lock on? None: cannot tell (a folder, no flock here)."""
    try:
        import fcntl
        with open(p, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except (ImportError, OSError):
        return None
    return False


def remove_path(p: Path) -> None:
    """Delete p, a file (or a link) or a folder with what is in it; nothing when it is not there."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def replace_folder(dest, fill) -> None:
    """Make the folder dest anew, whole or not at all: fill(tmp) writes it beside dest
    (``.NAME.tmpPID``, which remove_stale_temps deletes if this process dies), then its files and itself
    are fsync'ed and it is swapped in (and the parent folder fsync'ed). A failure, a crash or a power
    loss leaves the previous dest (or, between the two renames, ``.NAME.oldPID``, which remove_stale_temps
    puts back as dest, or deletes where a dest has been made since) whole."""
    dest = Path(dest)
    tmp, old = (dest.with_name(f".{dest.name}.{kind}{os.getpid()}") for kind in ("tmp", "old"))
    try:
        remove_path(tmp)
        if old.exists() or old.is_symlink():   # an earlier process of this pid (a container's pid 1) died between
            _settle_old(old, dest)              # the renames
        fill(tmp)
        _fsync_tree(tmp)   # the bytes reach the disk before the name points at them
        had = dest.exists() or dest.is_symlink()
        try:
            if had:
                os.replace(dest, old)
            os.replace(tmp, dest)
        except BaseException:   # (a Ctrl-C between the renames too)
            if had and not (dest.exists() or dest.is_symlink()) and (old.exists() or old.is_symlink()):
                os.replace(old, dest)   # (if this fails too, old stays: the only copy, never deleted)
            raise
        fsync_dir(dest.parent)   # the rename itself, before the previous folder goes
        if had:
            _remove_quietly(old)   # the new folder is in place: the previous one may go
    finally:
        _remove_quietly(tmp)


def _settle_old(old: Path, dest: Path) -> bool:
    """replace_folder's previous folder ``old``, left by a process that died between the two renames: renamed
    back to ``dest`` where there is none, else deleted (a newer dest was made since). True when deleted."""
    if dest.exists() or dest.is_symlink():
        remove_path(old)
        return True
    os.replace(old, dest)
    return False


def _remove_quietly(p: Path) -> None:
    """Housekeeping: what cannot be removed is left."""
    try:
        remove_path(p)
    except OSError:
        pass


def remove_stale_temps(folder) -> list[Path]:
    """Delete ``.NAME.tmpPID`` files (or folders: a fine-tune's ``.best.tmpPID``) left by writers that died
    (SIGKILL, power loss): no such pid here and, for a file, no writer's lock on it (hold_while_open);
    the removed paths. Housekeeping: one that cannot be removed is left alone. This process's own pid is
    an earlier process's (a container's trainer is pid 1 at every start: this one is not writing any
    while it calls this): such a file goes when its lock can be taken (not where flock cannot tell, e.g.
    another container's on a shared filesystem without locks), such a folder (an out_dir's) goes.
    A ``.model.oldPID`` / ``.best.oldPID`` folder (replace_folder's previous folder, where its process died
    between the two renames) of a pid not alive here (or this process's own: an earlier process's) is renamed
    back where there is no model/ or best/ (the run's last one, missing else), and deleted (and listed) where
    there is one (a newer save)."""
    d, gone = Path(folder), []
    if not d.is_dir():
        return gone
    for p in d.iterdir():
        m = _TMP.match(p.name)
        if not m:
            old = _OLD.match(p.name)
            if old and p.is_dir() and not p.is_symlink() and (
                    int(old.group(2)) == os.getpid() or not _pid_alive(int(old.group(2)))):
                try:
                    if _settle_old(p, d / old.group(1)):
                        gone.append(p)
                except OSError:
                    pass
            continue
        pid, held = int(m.group(2)), _held(p)
        if pid == os.getpid():
            stale = held is False or (held is None and p.is_dir())
        else:
            stale = not held and not _pid_alive(pid)
        if stale:
            try:
                remove_path(p)
            except OSError:
                continue
            gone.append(p)
    return gone


def atomic_save(obj, path) -> Path:
    """torch.save(obj) to path via temp file + checksum footer + fsync + rename + fsync of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pause = float(os.environ.get("FASTGPT_TEST_SAVE_PAUSE", "0") or 0)
    try:
        with open(tmp, "wb") as f:
            hold_while_open(f)
            w = _HashingWriter(f)
            try:
                torch.save(obj, w)
            except RuntimeError:
                if w.error is not None:  # disk full, quota, I/O error: say so, not torch's writer's words
                    raise w.error from None
                raise
            if pause:  # test hook (FASTGPT_TEST_SAVE_PAUSE): hang before the footer, so a test can kill us here
                f.flush()
                mark = os.environ.get("FASTGPT_TEST_SAVE_PAUSE_MARK")
                if mark:  # tells the test that torch.save is done and the pause has begun
                    Path(mark).touch()
                time.sleep(pause)
            f.write(_footer(w.h.hexdigest(), w.n))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def verify_checkpoint(path) -> str | None:
    """None if the file's checksum footer matches its contents, else why not (one phrase).

    A file without a footer (written before checksums) gives None: it is checked by loading it.
    """
    path = Path(path)
    if path.exists() and not path.is_file():   # a FIFO or a device: opening it would block or never end
        return "not a regular file"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size >= _FOOTER_LEN:
                f.seek(size - _FOOTER_LEN)
                foot = f.read(_FOOTER_LEN)
            else:
                foot = b""
            if not foot.startswith(_FOOTER_TAG):
                # no footer: legacy file, or one cut short; a zip (torch.save) ends with its directory record
                f.seek(max(0, size - 22))
                return None if f.read(4) == b"PK\x05\x06" else \
                    f"truncated or not a fastgpt checkpoint (no checksum footer, {size} bytes)"
            try:
                digest = foot[len(_FOOTER_TAG):len(_FOOTER_TAG) + 64].decode()
                n = int(foot[-21:-1])
            except (UnicodeDecodeError, ValueError):
                return "its checksum footer is damaged"
            if n != size - _FOOTER_LEN:
                return f"truncated or padded ({size - _FOOTER_LEN} bytes of data, the footer says {n})"
            f.seek(0)
            h, left = hashlib.sha256(), n
            while left:
                b = f.read(min(left, 1 << 24))
                if not b:
                    return f"truncated while reading ({n - left} of {n} bytes)"
                h.update(b)
                left -= len(b)
    except FileNotFoundError:
        return "it does not exist"
    except OSError as e:
        return f"it cannot be read ({e.strerror})"
    if h.hexdigest() != digest:
        return "checksum mismatch (the file is corrupt)"
    return None


def has_footer(path) -> bool:
    """Does the file end with a checksum footer (every checkpoint this fastgpt writes; not older ones)?"""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, Path(path).stat().st_size - _FOOTER_LEN))
            return f.read(_FOOTER_LEN).startswith(_FOOTER_TAG)
    except OSError:
        return False


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


def newest_readable(out_dir, say=None) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(path, skipped): the newest checkpoint in out_dir whose checksum verifies, and the newer ones
    passed over with the reason (a crash or a full disk can leave the newest one damaged), each also
    named through ``say`` when given."""
    skipped = []
    for p in reversed(list_checkpoints(out_dir)):
        why = verify_checkpoint(p)
        if why is None:
            return p, skipped
        skipped.append((p, why))
        if say is not None:
            say(f"skipping {p}: {why}")
    return None, skipped


def _step(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def save_checkpoint(out_dir, state: dict, keep: int = 2) -> Path:
    """Write state (with format/version added) as ckpt_<step>.pt; delete all but the newest ``keep``.

    A failed write (disk full, the folder gone or read-only) raises CheckpointError (one line); the
    partial file is removed and the older checkpoints stay."""
    state = dict(state, format=FORMAT, version=VERSION)
    remove_stale_temps(out_dir)
    try:
        path = atomic_save(state, Path(out_dir) / f"ckpt_{int(state['step']):07d}.pt")
    except OSError as e:
        last = newest_readable(out_dir)[0]   # (not a damaged newer one)
        raise CheckpointError(f"cannot write a checkpoint to {out_dir} ({e.strerror or e}); "
                              + (f"the last good one is {last}" if last else "no earlier checkpoint")) from None
    if keep > 0:  # among the checkpoints up to this step: a later one left by a run resumed past it
        # (a damaged newest checkpoint, skipped) must not count, or it would push the good ones out
        done = [p for p in list_checkpoints(out_dir) if _step(p) <= int(state["step"])]
        for old in done[:-keep]:
            try:
                old.unlink(missing_ok=True)
            except OSError:   # housekeeping: a file that cannot be removed stays, the run goes on
                pass
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """The state dict of a checkpoint file; CheckpointError (one line) if it is not a usable one."""
    from fastgpt.cli import out_of_memory
    path = Path(path)
    if not path.exists():
        raise UnusableCheckpointError(f"no checkpoint at {path}")
    if not path.is_file():   # a FIFO or device would block the read or never end
        raise UnusableCheckpointError(f"{path} is not a regular file")
    try:   # a file this process may not read is not a damaged one (nor one to skip: the run would overwrite it)
        open(path, "rb").close()
    except FileNotFoundError:
        raise UnusableCheckpointError(f"no checkpoint at {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror}); check its permissions") from None
    advice = RESUME_ADVICE if _NAME.match(path.name) else ""   # (not for a file that is no checkpoint at all)
    bad = verify_checkpoint(path)
    if bad is not None:
        raise CorruptCheckpointError(f"{path} is not a readable checkpoint: {bad}", advice)
    try:
        st = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UnusableCheckpointError(f"no checkpoint at {path}") from None
    except Exception as e:  # truncated / not a torch file / unpickling refused
        if out_of_memory(e, "") is not None:   # a good file too large for this machine: not a damaged one
            raise
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot read {path} ({e.strerror or e})") from None
        raise CorruptCheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0][:120] if str(e) else ''})", advice) from None
    if not isinstance(st, dict) or st.get("format") != FORMAT:
        raise UnusableCheckpointError(f"{path} is not a fastgpt training checkpoint")
    if st.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer fastgpt (checkpoint version {st['version']}); "
                              "upgrade fastgpt")
    return st


def load_latest_checkpoint(out_dir, map_location="cpu") -> tuple[Path | None, dict | None, list[tuple[Path, str]]]:
    """(path, state, skipped) of the newest checkpoint in out_dir that verifies and loads.

    ``skipped`` lists the newer ones passed over (UnusableCheckpointError: damaged, another program's),
    each with the reason; (None, None, skipped) when none is usable (or there are none). Any other
    CheckpointError (a file it may not read, a newer fastgpt's) and running out of memory are raised.
    """
    skipped = []
    for p in reversed(list_checkpoints(out_dir)):
        try:
            return p, load_checkpoint(p, map_location), skipped
        except UnusableCheckpointError as e:
            # the reason without the path (the caller names it: "skipping PATH: REASON") and the advice
            reason = "removed since it was listed" if e.problem == f"no checkpoint at {p}" else \
                e.problem.removeprefix(f"{p} is not a readable checkpoint: ").removeprefix(f"{p} is ")
            skipped.append((p, reason))
    return None, None, skipped


def load_for_resume(out_dir, say) -> tuple[Path | None, dict | None]:
    """--resume's checkpoint: (path, state) of the newest one in out_dir that verifies and loads, each
    newer unusable one named through ``say`` (one line each); (None, None) when there is none (what
    the run does then is its caller's to say: cli.resume_point). CheckpointError when there are
    checkpoints and none of them is usable."""
    latest, state, skipped = load_latest_checkpoint(out_dir)
    if latest is None and skipped:
        raise CheckpointError(f"--resume: not a readable checkpoint in {out_dir} ("
                              + "; ".join(f"{p.name}: {why}" for p, why in skipped) + "); move them away to start fresh")
    for p, why in skipped:
        say(f"skipping {p}: {why}")
    if skipped:
        say(f"resuming from {latest}")
    return latest, state


# An optimizer's param_group keys that are the resuming run's to choose, not state to bring back:
# the weight decay and betas (a --resume may change them) and the implementation (a CPU run's
# checkpoint resumed on a GPU takes the fused AdamW; loaded as saved, it stayed the slow loop).
RUN_OPTIONS = ("weight_decay", "betas", "fused", "foreach", "capturable")


def with_run_options(saved: dict, optimizer) -> dict:
    """An optimizer state dict ``saved`` with ``optimizer``'s RUN_OPTIONS in its param_groups: load it,
    and the run keeps them (load_state_dict takes every group option from the state dict) and the
    state is placed as they need (fused AdamW keeps its step counts on the parameters' device)."""
    groups = [dict(sg, **{k: g[k] for k in RUN_OPTIONS if k in g})
              for sg, g in zip(saved["param_groups"], optimizer.param_groups)]
    return dict(saved, param_groups=groups + saved["param_groups"][len(groups):])


def load_model(path, device="cpu", backend=None):
    """A GPT (eval mode) from a training checkpoint file or an out_dir holding checkpoints."""
    from fastgpt.model import GPT
    from fastgpt.config import GPTConfig
    p = Path(path)
    if p.is_dir():
        p, st, skipped = load_latest_checkpoint(p, map_location=device)
        if p is None:
            raise CheckpointError(f"no readable ckpt_*.pt in {path}"
                                  + "".join(f"; {q.name}: {why}" for q, why in skipped))
    else:
        st = load_checkpoint(p, map_location=device)
    model = GPT(GPTConfig.from_dict(st["config"]), backend=backend)
    model.load_state_dict(st["model"])
    return model.to(device).eval()


def main(argv=None) -> int:
    """``python -m fastgpt.checkpoint FILE_OR_DIR ...``: verify checkpoints; exit 1 if any fails."""
    from fastgpt import cli
    ap = cli.ArgumentParser(prog="python -m fastgpt.checkpoint",
                            description="Verify training checkpoints (the SHA-256 footer, then a load); one line "
                                        "per file; exit 1 if any is unusable.")
    ap.add_argument("paths", nargs="+", metavar="FILE_OR_OUT_DIR",
                    help="a checkpoint file, or a run's out_dir (each ckpt_*.pt in it); after --, a path may "
                         "start with -")
    args = ap.parse_args(argv).paths
    if "" in args:   # (an unset "$OUT_DIR": not the current folder)
        ap.error("an empty path")
    bad = 0
    for a in args:
        try:
            folder = Path(a).is_dir()
            files = list_checkpoints(a) if folder else [Path(a)]
        except OSError as e:   # a folder it may not list, a name too long
            print(cli.printable(f"{a}: cannot read it ({e.strerror or e})"))
            bad += 1
            continue
        if not files:
            print(cli.printable(f"{a}: no ckpt_*.pt here"))
            bad += 1
        for f in files:
            try:
                st = load_checkpoint(f)
                unverified = "" if has_footer(f) else "; no checksum footer (an older fastgpt's): it loads, " \
                                                       "but its bytes are not verified"
                print(cli.printable(f"{f}: ok (step {st.get('step')}{unverified})"))
            except CheckpointError as e:
                if folder and not f.exists():   # rotated away by a running run since it was listed
                    print(cli.printable(f"{f}: removed meanwhile (a run's checkpoint rotation)"))
                    continue
                print(cli.printable(f"{f}: BAD: {e}"))
                bad += 1
            except Exception as e:
                oom = cli.out_of_memory(e, "check it where there is more memory")
                if oom is None:
                    raise
                print(cli.printable(f"{f}: cannot check it: {oom}"))
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    from fastgpt import cli
    raise SystemExit(cli.entry(main))
