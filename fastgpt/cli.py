"""Typed-dataclass configuration from the command line and an optional config file.

A config is a ``@dataclass`` whose fields carry a type (int, float, str, bool,
``X | None``, ``Literal[...]``) and ``metadata={"help": ..., "auto": ...}``
(``auto`` documents what a ``None`` default resolves to). ``parse(cls, argv)``
accepts ``--key=value`` and ``--key value``; a bool field is a flag
(``--compile``) that also takes ``--compile=false``; ``none`` sets an optional
field to None. ``--config FILE`` (JSON or TOML, the same keys) is applied
first, then the command line, so the command line wins.

Misuse exits with status 2 and one line on stderr, never a traceback: unknown
keys (with a suggestion), bad types, values outside ``choices`` and whatever
the config's ``validate()`` (returning a list of problems) rejects.
``--help`` lists every option with its type and default.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import os
import random
import re
import shutil
import stat
import sys
import textwrap
import types
import typing
from typing import Any, Literal

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NONE = ("none", "null")


class UsageError(ValueError):
    """A bad option or value; the message is one line."""


class ConfigFileError(UsageError):
    """A --config file that cannot be read or parsed: its own node's problem (said by every rank)."""


class AlikeUsageError(UsageError):
    """A usage error every torchrun worker meets the same way (the options against the checkpoint all of
    them read, say): said by rank 0 alone (see die)."""


def torchrun_world_size() -> int:
    """$WORLD_SIZE as torchrun sets it (1 when unset or empty); UsageError (one line) when it is not a whole
    number."""
    raw = os.environ.get("WORLD_SIZE", "").strip() or "1"
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"$WORLD_SIZE is {raw!r}, not a whole number: unset it, or let torchrun set it") from None


def _world_size_or_1() -> int:
    """torchrun_world_size() where an error is being said already: a malformed $WORLD_SIZE (not torchrun's)
    counts as one process instead of raising a second error inside the first one's handler."""
    try:
        return torchrun_world_size()
    except UsageError:
        return 1


@dataclasses.dataclass
class Option:
    name: str
    base: type          # int | float | str | bool
    optional: bool      # None allowed
    choices: tuple | None
    default: Any
    help: str
    auto: str | None
    path: bool = False  # a file or folder: a leading ~ is expanded (the shell leaves --key=~/x alone)


def opt(default, help: str, auto: str | None = None, path: bool = False):
    """A config dataclass field with its --help text and, for a None default, what "auto" picks; ``path``:
    it names a file or folder (a leading ~ is expanded)."""
    md = dict(help=help, path=path)
    if auto:
        md["auto"] = auto
    return dataclasses.field(default=default, metadata=md)


def options(cls) -> dict[str, Option]:
    """The options of a config dataclass, by field name, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=False)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        tp = hints[f.name]
        optional = False
        args = typing.get_args(tp)
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            non_none = [a for a in args if a is not type(None)]
            optional = len(non_none) < len(args)
            if len(non_none) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: unsupported type {tp}")
            tp = non_none[0]
        choices = None
        if typing.get_origin(tp) is Literal:
            choices = typing.get_args(tp)
            tp = type(choices[0])
        if tp not in (int, float, str, bool):
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported type {tp}")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out[f.name] = Option(f.name, tp, optional, choices, default, f.metadata.get("help", ""),
                             f.metadata.get("auto"), f.metadata.get("path", False))
    return out


def _type_name(o: Option) -> str:
    if o.choices:
        return "{" + "|".join(map(str, o.choices)) + "}"
    return {int: "INT", float: "FLOAT", str: "STR", bool: "BOOL"}[o.base]


def convert(o: Option, value: Any, where: str = "") -> Any:
    """value (a string from the command line, or a JSON/TOML value) as o's type; UsageError if it is not."""
    where = where or f"--{o.name}"
    if isinstance(value, str):
        s = value.strip()
        if o.optional and s.lower() in _NONE:
            return None
        try:
            if o.base is bool:
                if s.lower() in _TRUE:
                    v = True
                elif s.lower() in _FALSE:
                    v = False
                else:
                    raise ValueError
            elif o.base is int:
                v = int(s.replace("_", "")) if not _is_sci_int(s) else int(float(s))
            elif o.base is float:
                v = float(s)
            else:
                v = value
        except ValueError:
            raise UsageError(f"{where} expects {_type_name(o)}, got {value!r}") from None
    else:
        v = value
        if v is None:
            if not o.optional:
                raise UsageError(f"{where} cannot be none")
            return None
        ok = (isinstance(v, bool) if o.base is bool else
              isinstance(v, int) and not isinstance(v, bool) if o.base is int else
              isinstance(v, (int, float)) and not isinstance(v, bool) if o.base is float else
              isinstance(v, str))
        if not ok:
            raise UsageError(f"{where} expects {_type_name(o)}, got {value!r}")
        if o.base is float:
            v = float(v)
    if o.base is float and v != v:
        raise UsageError(f"{where} must be a number, got nan")
    if o.choices and v not in o.choices:
        raise UsageError(f"{where} must be one of {', '.join(map(str, o.choices))}; got {v!r}")
    return v


def _is_sci_int(s: str) -> bool:
    """'1e4' style integers (exact ones only)."""
    try:
        f = float(s)
    except ValueError:
        return False
    return "e" in s.lower() and f.is_integer() and abs(f) < 2**53


def _unknown(name: str, opts, where="option --") -> UsageError:
    close = difflib.get_close_matches(name, list(opts) + ["config", "help"], n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return UsageError(f"unknown {where}{name}{hint}; see --help")


def load_config_file(path: str, opts) -> dict:
    """{key: value} from a JSON or TOML file with the same keys as the options."""
    try:
        with open(os.path.expanduser(path), "rb") as f:   # (--config=~/c.toml: the shell left its ~)
            raw = f.read()
    except OSError as e:
        raise ConfigFileError(f"--config {path}: cannot read it ({e.strerror})") from None
    is_toml = path.lower().endswith(".toml")
    try:
        if is_toml:
            try:
                import tomllib
            except ImportError:   # Python 3.10: its forerunner (a dependency there)
                import tomli as tomllib
            data = tomllib.loads(raw.decode("utf-8-sig"))   # (an editor's byte-order mark)
        else:   # (a key given twice: JSON keeps the last silently, TOML refuses it)
            data = json.loads(raw, object_pairs_hook=lambda pairs: _no_repeated_key(path, pairs))
    except ConfigFileError:
        raise
    except Exception as e:  # a syntax error: say where, in one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        kind = "TOML" if is_toml else "JSON"
        raise ConfigFileError(f"--config {path}: not valid {kind} ({msg})") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"--config {path}: expected a table/object of option: value")
    out = {}
    for k, v in data.items():
        k2 = k.replace("-", "_")
        if k2 not in opts:
            raise _unknown(k2, opts, where=f"key in {path}: ")
        if k2 in out:   # (max-iters and max_iters)
            raise ConfigFileError(f"--config {path}: {k2} given twice")
        out[k2] = convert(opts[k2], v, where=f"{k} in {path}")
    return out


def _no_repeated_key(path: str, pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise ConfigFileError(f"--config {path}: {k} given twice")
    return dict(pairs)


def parse_args(cls, argv: list[str]) -> tuple[Any, set[str]]:
    """(config, names set explicitly) from argv; raises UsageError; prints help and exits 0 on --help."""
    opts = options(cls)
    from_argv: dict[str, Any] = {}
    config_path = None
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a in ("-h", "--help"):
            raise _Help()
        if not a.startswith("--") or a == "--":
            raise UsageError(f"unexpected argument {a!r} (options look like --key=value or --key value)")
        key, eq, val = a[2:].partition("=")
        key = key.replace("-", "_")
        if key == "config":
            if not eq:
                if i >= len(argv):
                    raise UsageError("--config needs a file name")
                val, i = argv[i], i + 1
            if not val:
                raise UsageError("--config needs a file name")
            if config_path is not None:
                raise UsageError("--config given twice")
            config_path = val
            continue
        if key not in opts:
            raise _unknown(key, opts)
        o = opts[key]
        if not eq:
            if o.base is bool:
                if i < len(argv) and argv[i].lower() in _TRUE + _FALSE:
                    val, i = argv[i], i + 1
                else:
                    val = "true"
            else:
                if i >= len(argv) or (argv[i].startswith("--") and len(argv[i]) > 2):
                    raise UsageError(f"--{key} needs a value ({_type_name(o)})")
                val, i = argv[i], i + 1
        if key in from_argv:
            raise UsageError(f"--{key} given twice")
        from_argv[key] = convert(o, val)
    values = load_config_file(config_path, opts) if config_path else {}
    values.update(from_argv)
    return expanded_paths(cls(**values)), set(values)


def expanded_paths(cfg):
    """cfg with a leading ~ expanded in its path options (``opt(..., path=True)``): the shell expands none
    in --out_dir=~/x, nor does a --config file or a config made in code."""
    paths = {k: os.path.expanduser(v) for k, o in options(type(cfg)).items()
             if o.path and isinstance(v := getattr(cfg, k), str)}
    return dataclasses.replace(cfg, **paths)


class _Help(Exception):
    pass


def format_help(cls, prog: str, description: str = "", epilog: str = "") -> str:
    opts = options(cls)
    width = max(80, min(shutil.get_terminal_size((120, 24)).columns - 2, 120))
    lines = [f"usage: {prog} [--config FILE] [--key=value | --key value ...]", ""]
    if description:
        lines += [description.strip(), ""]
    lines.append("options:")

    def row(left: str, text: str):
        # wrapped to the terminal (as argparse does), the text in a column of its own
        body = textwrap.wrap(text, width=width - 37, break_on_hyphens=False) or [""]
        if len(left) > 34:
            lines.append(f"  {left}")
            lines.extend(f"  {'':<34} {t}" for t in body)
        else:
            lines.append(f"  {left:<34} {body[0]}")
            lines.extend(f"  {'':<34} {t}" for t in body[1:])

    row("--config FILE", "JSON or TOML file of option values (the command line wins)")
    for o in opts.values():
        left = f"--{o.name} {_type_name(o)}" if o.base is not bool else f"--{o.name}[=BOOL]"
        if o.default is None and o.auto:
            dflt = f"auto: {o.auto}"
        else:
            dflt = "none" if o.default is None else repr(o.default) if o.base is str else str(o.default)
        row(left, f"{o.help} (default: {dflt})" if o.help else f"(default: {dflt})")
    row("-h, --help", "show this message and exit")
    if epilog:
        lines += ["", epilog.strip("\n")]
    return "\n".join(lines)


def parse(cls, argv: list[str] | None = None, prog: str = "fastgpt", description: str = "", epilog: str = ""):
    """(config, explicitly-set names) or exit: 0 after --help, 2 with one line on misuse.

    If the config has ``validate(self) -> list[str]``, its first problem is a usage error too.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg, given = parse_args(cls, argv)
        problems = cfg.validate() if hasattr(cfg, "validate") else []
        if problems:
            raise UsageError(problems[0])
    except _Help:
        print(format_help(cls, prog, description, epilog))
        sys.exit(0)
    except UsageError as e:
        # the options alone are the same on every rank; a --config file is read on each node
        die(prog, str(e), every_rank_alike=not isinstance(e, ConfigFileError))
    return cfg, given


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """argparse help for the house style: the description and epilog as written, each option's default shown
    (unless its help already names it, or there is none to show: a None or a flag's False)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "default" in h or action.default in (None, False) or action.default is argparse.SUPPRESS:
            return h
        return super()._get_help_string(action)


class _StoreOnce(argparse._StoreAction):
    """An option that takes a value and may be given once, as ``parse``'s: argparse keeps the last of two
    silently (selftest --only a --only b checked b alone and said PASS)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if self.dest in parser._given:
            parser.error(f"{option_string} given twice")
        parser._given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the commands that take positional arguments: a usage error is ONE line on
    stderr (``PROG: error: MESSAGE; see --help``) and exit status 2, as ``parse`` gives; an option
    with a value given twice is one too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)
        self._argv = []
        self._given = set()

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        self._given = set()
        return super().parse_known_args(args, namespace)

    def print_help(self, file=None):
        # argparse's own swallows a write error: `--help | head -1` then exited 0 here, 141 in train's
        # --help (see entry); written directly, a closed pipe ends every command alike
        (file or sys.stdout).write(self.format_help())

    def error(self, message):
        msg = message.splitlines()[0] if message else "bad arguments"
        # a path that starts with - reads as an option: say so rather than "arguments are required"
        before_dashes = self._argv[:self._argv.index("--")] if "--" in self._argv else self._argv
        if msg.startswith(("the following arguments are required", "unrecognized arguments")):
            for a in before_dashes:
                if a.startswith("-") and a not in self._option_string_actions and os.path.lexists(a):
                    msg = f"{a} is read as an option; put -- before a path that starts with - ({msg})"
                    break
        # an option's value that starts with - (--prompt -x) reads as an option too: say how to give it
        m = re.match(r"argument (--[\w-]+)(?:/\S+)?: expected one argument", msg)
        if m and m.group(1) in before_dashes:
            i = before_dashes.index(m.group(1))
            if i + 1 < len(before_dashes) and before_dashes[i + 1].startswith("-"):
                msg += f" (a value that starts with - is given as {m.group(1)}={before_dashes[i + 1]})"
        die(self.prog, f"{msg}; see --help", every_rank_alike=True)


def out_of_memory(e: BaseException, hint: str) -> str | None:
    """The one line for an allocation failure (CUDA out of memory, the CPU allocator's refusal,
    Python's MemoryError), naming what to lower; None for any other exception."""
    import torch
    text = str(e)
    if isinstance(e, torch.OutOfMemoryError) or "CUDA out of memory" in text:
        where = "the GPU"
    elif isinstance(e, MemoryError) or "can't allocate memory" in text:
        where = "the host"
    else:
        return None
    first = text.splitlines()[0][:160] if text else type(e).__name__
    return f"out of memory on {where} ({first}); {hint}"


def other_rank() -> bool:
    """A torchrun worker other than rank 0 ($RANK of a $WORLD_SIZE > 1), whose lines that every worker
    would print alike (a usage error, an agreed stop) are left to rank 0: N copies of one line said
    nothing more. (A stray $RANK in a single process is not one.)"""
    return _world_size_or_1() > 1 and os.environ.get("RANK", "0").strip() not in ("", "0")


def die(prog: str, msg: str, status: int = 2, every_rank_alike: bool = False):
    """One line on stderr and exit (2 = usage error). ``every_rank_alike``: an error every torchrun worker
    meets the same way (one in the command line's options, an agreed stop), said by rank 0 alone; the
    others (a device, a folder, memory) may be one process's own, and each process that meets one says it."""
    if not (every_rank_alike and other_rank()):
        print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(status)


def run_main(prog: str, body, statuses: dict, memory_hint: str, interrupted=None, alike: tuple = ()) -> int:
    """A CLI main's body with its known failures as one line each: body() runs; an exception of a
    class in ``statuses`` (first match, in order; UsageError is always 2) ends the process with one
    line and that exit status; an allocation failure says what to lower (``memory_hint``); Ctrl-C
    prints one line and returns 130: interrupted_line(prog, *interrupted) for a training run
    (``interrupted`` = (out_dir, when[, extra options]): the checkpoint to continue from), else "PROG: interrupted",
    followed by what the KeyboardInterrupt carries (a body may re-raise it as
    ``KeyboardInterrupt("after 12 of 40 labels")`` to say how far it got). Under torchrun a collective
    that failed because another process died is one line too (peer_failure). Anything else propagates
    (a bug: its traceback is wanted). Under torchrun the lines of the ``alike`` classes (errors every
    rank meets the same way) and of Ctrl-C are rank 0's alone (see die). Returns body()'s value when it
    is an int (an exit status), else 0 (a run's summary, None)."""
    statuses = {UsageError: 2, **statuses}
    try:
        rc = body()
    except tuple(statuses) as e:
        die(prog, str(e), next(code for cls, code in statuses.items() if isinstance(e, cls)),
            every_rank_alike=isinstance(e, (AlikeUsageError, *alike)))
    except (RuntimeError, MemoryError) as e:
        msg = out_of_memory(e, memory_hint)
        if msg is None:
            msg = peer_failure(e)
            if msg is None:
                raise
            if interrupted:
                msg += "; " + where_to_continue(prog, *interrupted)
        die(prog, msg, 1)
    except KeyboardInterrupt as e:   # (torchrun passes a Ctrl-C to every worker: rank 0 says it)
        if not other_rank():
            line = interrupted_line(prog, *interrupted) if interrupted else f"{prog}: interrupted"
            print("\n" + line + (f" {e}" if str(e) else ""), file=sys.stderr, flush=True)
        return 130
    return rc if isinstance(rc, int) else 0


class _LostReaderSafe:
    """A text stream that drops its output once the reader is gone (a closed pipe: ``| head``; a hung-up
    terminal: EIO) instead of raising into the training loop; everything else is the stream's own."""

    def __init__(self, stream):
        self._stream = stream
        self.lost = False

    def write(self, s):
        if not self.lost:
            try:
                return self._stream.write(s)
            except OSError:  # BrokenPipeError, or EIO from a hung-up terminal
                self.lost = True
        return len(s)

    def flush(self):
        if not self.lost:
            try:
                self._stream.flush()
            except OSError:  # BrokenPipeError, or EIO from a hung-up terminal
                self.lost = True

    def __getattr__(self, name):  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)


class GracefulStop:
    """SIGINT / SIGTERM / SIGHUP inside a training loop -> finish the step, save, exit 0; a second SIGINT
    aborts at once (KeyboardInterrupt). The loop sets ``armed`` while it runs (outside it a signal aborts
    at once) and, after each step, stops when ``name`` (the signal's name) is set. An abort that surfaces
    as another exception (the KeyboardInterrupt raised inside, say, torch.save's writer) leaves the
    ``with`` block as the KeyboardInterrupt it was. Inside the block stdout and stderr drop their output
    once their reader is gone (a closed pipe, a hung-up terminal): the run goes on, logging to
    metrics.jsonl, instead of dying without a checkpoint."""

    def __init__(self, prog: str, quiet: bool = False):
        self.prog = prog
        self.name = None
        self.armed = False
        self.aborted = False
        self.quiet = quiet  # the non-zero ranks of a DDP run say nothing
        self._old = {}

    def __enter__(self):
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handler)
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _LostReaderSafe(sys.stdout), _LostReaderSafe(sys.stderr)
        return self

    def __exit__(self, exc_type, exc, tb):
        import signal
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old.clear()
        for safe, fd in ((sys.stdout, 1), (sys.stderr, 2)):
            if getattr(safe, "lost", False):  # later writes, and the flush at exit, go nowhere quietly
                _to_devnull(fd)
        sys.stdout, sys.stderr = self._streams
        if self.aborted and exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            raise KeyboardInterrupt from exc

    def _handler(self, signum, frame):
        import signal
        name = signal.Signals(signum).name
        if not self.armed:
            self.aborted = True
            raise KeyboardInterrupt
        if self.name is not None:
            if signum == signal.SIGINT:
                self.aborted = True
                raise KeyboardInterrupt
            return  # a repeated SIGTERM (torchrun forwards one after the terminal's SIGINT): already stopping
        self.name = name
        if self.quiet:
            return
        # os.write, not print: a handler may interrupt a print to the same stream
        # under torchrun a second Ctrl-C reaches torchrun, which sends a SIGTERM: no abort to offer
        hint = "" if "TORCHELASTIC_RUN_ID" in os.environ else " (press Ctrl-C again to abort at once)"
        try:
            os.write(2, f"\n{self.prog}: {name}: finishing this step and saving a checkpoint{hint}\n".encode())
        except OSError:  # SIGHUP: the terminal is gone
            pass


def device(spec: str | None, cpu_hint: str = "use --device cpu"):
    """--device as a torch.device (None: cuda if available, else cpu); a UsageError (one line) unless
    it names a usable cpu / cuda / cuda:N. A cuda:N becomes the current device, so the program's
    torch.cuda calls without a device (synchronize for a timing, memory statistics) mean it."""
    import torch
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(spec)
    except (RuntimeError, ValueError):
        d = None
    if d is None or d.type not in ("cpu", "cuda") or (d.type == "cpu" and d.index not in (None, 0)):
        raise UsageError(f"--device must be cpu, cuda or cuda:N; got {spec!r}")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA device is available ({cpu_hint})")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: there are only {torch.cuda.device_count()} CUDA devices")
        if d.index is not None:
            torch.cuda.set_device(d)
        return d
    return torch.device("cpu")   # (cpu:0 is the one CPU; some loaders, safetensors', take only "cpu")


def native_bf16(device=None) -> bool:
    """Whether a CUDA device (default: the current one) computes in bf16 natively: compute capability 8.0 and
    newer (A100, H100, RTX 30xx / 40xx). torch.cuda.is_bf16_supported() says yes on older GPUs too (V100, T4,
    RTX 20xx): it counts emulated bf16 (slow), and so train, finetune and sample chose bf16 there; and it asks
    the current device only (selftest.run may be given another)."""
    import torch
    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


def cuda_dtype(dtype: str | None) -> str:
    """--dtype on the current CUDA device: auto (None) is bf16 where it is native (native_bf16), else fp16,
    with the loss scaler; an explicit bf16 where it is not native is a UsageError."""
    import torch
    if dtype not in (None, "bf16"):
        return dtype
    if native_bf16():
        return "bf16"
    if dtype is None:
        return "fp16"
    major, minor = torch.cuda.get_device_capability()
    raise UsageError(f"--dtype bf16: this GPU (compute capability {major}.{minor}) has no native bf16 "
                     "(it needs 8.0 or newer); use --dtype fp16")


def check_extension_setting() -> None:
    """A UsageError (one line) for a bad $FASTGPT_EXTENSION: the Python API would serve without the extension,
    quietly; a program refuses to start."""
    from fastgpt.extension import setting_problem
    if (problem := setting_problem()) is not None:
        raise UsageError(problem)


def backend(name: str | None, device_type: str) -> str:
    """--backend resolved for the device (fastgpt.backend.resolve: 'fused' or 'reference'); a UsageError
    (one line) when it cannot be: --backend fused where it cannot run, a bad $FASTGPT_BACKEND or
    $FASTGPT_EXTENSION (a typo there would quietly turn the extension off)."""
    from fastgpt.backend import INTERPRETER_HINT, USE_REFERENCE, resolve
    check_extension_setting()
    try:
        return resolve(name, device_type)
    except (RuntimeError, ValueError) as e:   # the advice in the programs' words, not the Python API's
        msg = str(e).splitlines()[0].replace(USE_REFERENCE, "use --backend reference")
        raise UsageError(msg.replace(INTERPRETER_HINT, "(TRITON_INTERPRET=1, for tests: far too slow for real runs)")) \
            from None


def autocast_factory(device, dtype: str):
    """A function that returns a fresh autocast context for --dtype (bf16 | fp16 | fp32) on the
    torch.device: torch.autocast, or for fp32 a null context."""
    import torch
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[dtype]

    def autocast():
        return contextlib.nullcontext() if amp is None else torch.autocast(device.type, dtype=amp)
    return autocast


def empty_path_problems(**paths) -> list[str]:
    """A problem line for each path option given as an empty string (None: not given): Path("") is the
    working folder, so an unset shell variable ($OUT, $DATA) would quietly mean it."""
    return [f"--{k} is empty (an unset variable?); give a path, or leave the option out" for k, v in paths.items()
            if v is not None and not str(v).strip()]


def seed_problems(seed: int) -> list[str]:
    """The problem line, if any, of a --seed outside [0, 2^63) (what torch.Generator.manual_seed takes)."""
    return [] if 0 <= seed < 2**63 else [f"--seed must be in [0, 2^63), got {seed}"]


def not_utf8_problem(flag: str, text: str) -> str | None:
    """The problem line when text holds bytes of another encoding (lone surrogates from the command line),
    else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"{flag} is not UTF-8 text (a byte that is not, at character {e.start})"
    return None


def check_out_dir(path, flag: str = "--out_dir") -> None:
    """A usage error (one line) unless path is, or can be created as, a writable folder."""
    from pathlib import Path
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise UsageError(f"{flag} {path}: exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {path}: the folder is not writable")
        return
    parent = p.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: cannot create it ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot create it ({parent} is not writable)")


@contextlib.contextmanager
def restored_torch_settings():
    """Put back, on leaving, the process-wide torch settings a run changes (the TF32 flags, the fp32
    matmul precision, deterministic algorithms), so a run called in-process (a notebook, the tests)
    leaves none of them behind for the code after it."""
    import torch
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision(),
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[2])   # first: it sets the matmul flag too
        cuda.allow_tf32, cudnn.allow_tf32 = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])


def printable(text: str, stream=None) -> str:
    """text as stream (stdout) can write it: a character its encoding lacks (cp1252 on Windows, an ASCII
    locale) becomes "?" rather than an error that loses the output."""
    enc = getattr(stream or sys.stdout, "encoding", None) or "utf-8"
    try:
        text.encode(enc)
        return text
    except UnicodeEncodeError:
        return text.encode(enc, errors="replace").decode(enc)
    except LookupError:   # (an encoding Python does not know)
        return text


def seed_run(seed: int, device) -> None:
    """Seed Python's, NumPy's and torch's generators and set the run's precision: TF32 matmuls on a
    GPU; on a CPU deterministic algorithms (warn only), so a CPU run repeats bit for bit. Undone by
    restored_torch_settings."""
    import numpy as np
    import torch
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)


def check_no_earlier_run(path, is_ours, eval_only: bool = False) -> None:
    """A usage error (one line) when path already holds a run (checkpoints or metrics.jsonl) and
    --resume was not given: a new run there would overwrite part of it and leave the rest (its later
    checkpoints, which a --resume would take) to mix with the new one. ``is_ours(header)``: as for
    resume_point, which decides what --resume would do, so the advice is one that works (``eval_only``:
    this command is an evaluation, which --resume repeats when the folder holds one)."""
    from pathlib import Path

    from fastgpt.checkpoint import CheckpointError, list_checkpoints
    p = Path(path)
    ckpts = [c.name for c in list_checkpoints(p)[-2:]]
    found = ckpts + (["metrics.jsonl"] if (p / "metrics.jsonl").exists() else [])
    if not found:
        return
    todo = "add --resume to continue it, or choose another --out_dir"
    if not ckpts:  # --resume cannot continue the run; it starts it again if its header says how
        try:
            header = metrics_header(p)
        except CheckpointError:
            header = None
        todo = ("add --resume to start it again from step 0 with its options (it wrote no checkpoint), or "
                "choose another --out_dir") if header is not None and is_ours(header) else \
            "its metrics.jsonl has no header of this program's to start it again from: choose another --out_dir"
        if eval_only and header is not None and is_ours(header) and header.get("eval_only"):   # (not a dead run)
            raise UsageError(f"--out_dir {path} already holds an evaluation (metrics.jsonl): add --resume to "
                             "evaluate again with its options, or choose another --out_dir")
    raise UsageError(f"--out_dir {path} already holds a run ({', '.join(found)}): {todo}")


def interrupted_line(prog: str, out_dir, when: str, extra: tuple = ()) -> str:
    """What an aborted run (KeyboardInterrupt) says: the checkpoint to continue from, or that there is
    none yet (``when`` says when one is written): with its metrics.jsonl, --resume starts it again from
    step 0 with its options (the folder refuses a new run), else there is nothing to resume."""
    from fastgpt.checkpoint import latest_checkpoint
    if latest_checkpoint(out_dir) is None:
        head = f"{prog}: interrupted before any checkpoint was written in {out_dir} ({when})"
        if os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
            return f"{head}; to start it again from step 0 with its options: {resume_command(prog, out_dir, extra)}"
        return f"{head}; nothing to resume"
    return f"{prog}: interrupted; {where_to_continue(prog, out_dir, when, extra)}"


def where_to_continue(prog: str, out_dir, when: str, extra: tuple = ()) -> str:
    """'the last checkpoint is X (continue with: COMMAND)', or that none was written yet (``when``: when one is)."""
    from fastgpt.checkpoint import latest_checkpoint
    last = latest_checkpoint(out_dir)
    if last is None:
        return f"no checkpoint was written in {out_dir} yet ({when})"
    return f"the last checkpoint is {last} (continue with: {resume_command(prog, out_dir, extra)})"


def peer_failure(e: BaseException) -> str | None:
    """Under torchrun, the one line for a collective that failed because another process of the job died or
    was stopped (gloo's "Connection reset by peer", NCCL's errors: a page of traceback from every survivor
    otherwise), else None."""
    if _world_size_or_1() <= 1:
        return None
    import torch.distributed as tdist
    text = str(e)
    kinds = tuple(getattr(tdist, n) for n in ("DistError",) if hasattr(tdist, n))
    if not (isinstance(e, kinds) or any(s in text for s in ("gloo", "NCCL", "Connection reset by peer",
                                                            "Connection closed by peer", "ProcessGroup"))):
        return None
    first = re.sub(r"^\[[^\]]*\]\s*", "", (text.strip().splitlines() or [type(e).__name__])[0])   # (a source path)
    return f"another process of this job failed or was stopped ({first[:160]})"


def placement_flags(cfg) -> tuple:
    """A run's --device and --backend when they were set: a --resume does not take them from the checkpoint,
    so the command that continues it repeats them (a --device cpu run on a GPU machine stays on the CPU)."""
    return tuple(f"--{k}={getattr(cfg, k)}" for k in ("device", "backend") if getattr(cfg, k, None) is not None)


def path_arg(path) -> str:
    """path as a positional argument of a command to paste: shell-quoted, and a relative path that starts
    with "-" written as ./-path (argparse would read -path as an option: ``fastgpt.sample -run/model``)."""
    import shlex
    s = str(path)
    if s.startswith("-"):
        s = os.path.join(".", s)
    return shlex.quote(s)


def resume_command(prog: str, out_dir, extra: tuple = ()) -> str:
    """The command that continues a run, ready to paste: the folder shell-quoted; under torchrun the
    launcher with as many processes (a plain python would resume on one, with a smaller global batch);
    ``extra``: the options --resume does not restore that the run needs (train's --fsdp, ...)."""
    import shlex
    cmd = prog
    world = torchrun_world_size()
    if world > 1:
        module = prog.removeprefix("python ")
        local = os.environ.get("LOCAL_WORLD_SIZE", "")
        cmd = (f"torchrun --nproc_per_node={world} {module}" if local == str(world) else
               f"torchrun (your options: {world} processes) {module}")
    return " ".join([cmd, "--resume", "--out_dir", shlex.quote(str(out_dir)), *extra])


class OutDirLock:
    """An exclusive advisory lock (flock) on OUT_DIR/.lock, from acquire() to the end of the with block
    or release(): a second run into a folder that a live run writes (a --resume started twice, a job
    re-queued while the old one still runs) is refused, instead of the two mixing checkpoints and the
    first losing its metrics rows. Where the file system has no locks (or on Windows), no lock."""

    def __init__(self):
        self.f = self.made = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self, out_dir) -> str | None:
        """None when held (or locks are unavailable); else the one-line reason."""
        from pathlib import Path
        try:
            import fcntl
        except ImportError:
            return None
        d = Path(out_dir)
        path = d / ".lock"
        try:
            d.mkdir(parents=True)
            self.made = d   # removed again by release() if the run wrote nothing into it
        except FileExistsError:
            pass
        except OSError as e:
            return f"--out_dir {out_dir}: cannot create it ({e.strerror or e})"
        for _ in range(3):
            try:
                f = open(path, "a+")
            except PermissionError:   # another user's lock file: a read-only descriptor locks as well
                f = open(path)
            except OSError as e:
                return f"--out_dir {out_dir}: cannot create {path.name} in it ({e.strerror or e})"
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                pid = (f.read().split() or [""])[-1]   # (the holder wrote its pid)
                f.close()
                return (f"--out_dir {out_dir} is in use by another run{f' (pid {pid})' if pid.isdigit() else ''}: "
                        "wait for it to end, or choose another --out_dir")
            except OSError:   # no locks on this file system
                f.close()
                return None
            try:   # the file locked is still the folder's (a run ending just now removes its own)
                same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
            except OSError:
                same = False
            if same:
                break
            f.close()
        else:
            return f"--out_dir {out_dir}: its {path.name} keeps changing; is another run starting there?"
        if f.writable():
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
        self.f = f
        return None

    def lost(self) -> str | None:
        """Why the lock no longer guards the folder (its .lock removed or replaced: the folder was deleted, and
        maybe made again by another run), or None: a run checks before it writes a checkpoint, which would
        otherwise make the folder again and write beside that other run."""
        if self.f is None:
            return None
        path = os.path.join(os.path.dirname(os.path.abspath(self.f.name)), ".lock")
        try:
            held, now = os.fstat(self.f.fileno()), os.stat(path)
            if held.st_nlink > 0 and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):   # (an inode number
                return None                                                 # may be reused by a new .lock)
        except OSError:
            pass
        return (f"{os.path.dirname(path)} was removed (or replaced) while this run wrote it; nothing more is "
                "written there")

    def release(self) -> None:
        """Unlock; a folder acquire() created that holds nothing else is removed first (still locked, so no
        run can take a lock on a file about to go)."""
        if self.made is not None:
            try:
                if self.f is not None and [p.name for p in self.made.iterdir()] == [".lock"]:
                    (self.made / ".lock").unlink()
                self.made.rmdir()   # (only if empty)
            except OSError:
                pass
        self.made = None
        if self.f is not None:
            self.f.close()
            self.f = None


# ---------------------------------------------------------------------------
# A run's out_dir: metrics.jsonl and where --resume starts (shared by train and finetune)
# ---------------------------------------------------------------------------
class RunLog:
    """Progress bar (tqdm) or plain lines on stderr, plus the metrics JSONL file.

    The file is opened at the first row, not before: a run that dies before it has anything to log
    (a long initial evaluation) leaves the previous metrics.jsonl as it was (or none), never an empty
    one that --resume could not read a header from."""

    def __init__(self, path, append: bool, bar: bool, total: int, initial: int, desc: str = "train"):
        """path None: a silent log (the non-zero ranks of a DDP run)."""
        self.quiet = path is None
        self.path, self.mode = path, "a" if append else "w"
        self.f = None
        self.failed = False
        self.bar = None
        if bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def write(self, obj: dict):
        """One row; a file that cannot be written (disk full, a dangling link) is one warning and no more
        rows, never an error: rank 0 alone writes it while the others wait in the next collective."""
        if self.quiet or self.failed:
            return
        try:
            row = json.dumps(obj) + "\n"
            if self.f is None and self.mode == "w":  # a new file: its first row (the header) whole, or the old file
                write_atomic(self.path, row)
                self.f = open(self.path, "a")
                return
            if self.f is None:
                self.f = open(self.path, self.mode)
            self.f.write(row)
            self.f.flush()
        except OSError as e:
            self.failed = True
            self.say(f"warning: cannot write {self.path} ({e.strerror or e}); no more metrics rows, the run goes on")

    def say(self, msg: str):
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.f is not None:
            try:
                self.f.close()
            except OSError:   # its write already warned
                pass


def make_out_dir(out_dir, trim_to_step: int | None) -> str | None:
    """Create out_dir if missing and, for a resumed run (``trim_to_step``: its checkpoint's step), trim
    its metrics.jsonl to that step (trim_metrics); None when done, else the one-line problem."""
    from pathlib import Path
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"--out_dir {out_dir}: cannot create it ({e.strerror})"
    if trim_to_step is not None:
        try:
            trim_metrics(out_dir / "metrics.jsonl", trim_to_step)
        except OSError as e:
            return f"{out_dir / 'metrics.jsonl'}: cannot rewrite it ({e.strerror})"
    return None


def trim_metrics(path, step: int) -> None:
    """Drop the rows that a crashed run logged after the checkpoint a --resume starts from at ``step``
    (those steps are trained again, and would otherwise appear twice), atomically."""
    from pathlib import Path
    path = Path(path)
    if not path.exists():
        return
    # (bytes that are not UTF-8 make lines that are not JSON: dropped, as a line a crash cut short)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line the crash cut short
            continue
        if row.get("type") == "header" or row.get("step", 0) <= step:
            keep.append(line + "\n")
    if len(keep) < len(lines):
        write_atomic(path, "".join(keep))


def same_mode_as(path, like) -> None:
    """Give file ``path`` the permission bits of ``like`` (safetensors creates its files 0600 whatever the
    umask: the weights as readable as the JSON written beside them). Best-effort: where chmod is refused,
    the file stays as it is."""
    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IMODE(os.stat(like).st_mode))


def write_atomic(path, data: str | bytes) -> None:
    """path's content becomes data (text or bytes) all at once (a temp file beside it, fsync'ed, renamed
    over it): a crash or a power loss leaves the old file or the new one, never a part or an empty file.
    A symbolic link stays one: its target is written."""
    from pathlib import Path
    try:
        path = Path(path).resolve()
    except RuntimeError as e:   # a symlink loop (Python < 3.13; an OSError from 3.13 on)
        raise OSError(40, f"cannot resolve {path}: {e}") from None
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if isinstance(data, str):
        data = data.encode("utf-8")   # (not the locale's: a C locale cannot write U+FFFD)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())   # the bytes reach the disk before the name points at them
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def metrics_header(out_dir) -> dict | None:
    """The header row of OUT_DIR/metrics.jsonl (its first line, {"type": "header", "config": {...}, ...},
    as train and finetune write it); None when there is no metrics.jsonl; CheckpointError (one line)
    when its first line is not a readable header."""
    from pathlib import Path

    from fastgpt.checkpoint import CheckpointError
    path = Path(out_dir) / "metrics.jsonl"
    try:
        with open(path, encoding="utf-8") as f:
            row = json.loads(f.readline())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable, not UTF-8, empty, or a first line the crash cut short
        row = None
    if not (isinstance(row, dict) and row.get("type") == "header" and isinstance(row.get("config"), dict)):
        raise CheckpointError(f"--resume: {out_dir} has no checkpoint, and its metrics.jsonl no readable header "
                              "to start its run again from: remove metrics.jsonl, or choose another --out_dir")
    return row


def resume_point(out_dir, say, is_ours, not_ours: str):
    """Where --resume starts, said in one line through ``say``: (path, state, None) of the newest usable
    checkpoint in out_dir (checkpoint.load_for_resume); else (None, None, options) when only metrics.jsonl
    is there (a run that died before its first checkpoint): its header's options, to start that run again
    from step 0 (a run from the command line's options would be another run, maybe another task); else
    (None, None, None): an empty out_dir, a new run (a job that always passes --resume starts that way).
    ``is_ours(header)`` tells this program's header from the other's (``not_ours`` completes the error
    "D/metrics.jsonl is ..."). CheckpointError (one line) when no checkpoint there is usable, or the
    header is unreadable or the other program's, or out_dir cannot be read."""
    from pathlib import Path

    from fastgpt.checkpoint import CheckpointError, load_for_resume
    try:
        latest, state = load_for_resume(out_dir, say)
    except OSError as e:   # a folder that cannot be read (a network file system that went away)
        raise CheckpointError(f"--resume: cannot read {out_dir} ({e.strerror or e})") from None
    if latest is not None:
        return latest, state, None
    header = metrics_header(out_dir)
    if header is None:
        say(f"no checkpoint in {out_dir}: starting a new run")
        return None, None, None
    if not is_ours(header):
        raise CheckpointError(f"--resume: {Path(out_dir) / 'metrics.jsonl'} is {not_ours}")
    say(f"no checkpoint in {out_dir} yet: starting its run again from step 0 with the options in its metrics.jsonl")
    return None, None, header["config"]


def with_saved_options(cfg, given: set[str], saved: dict, runtime_only):
    """cfg with the options of the run a --resume continues (``saved``: a checkpoint's or a metrics.jsonl
    header's config): all of them but those given on this command line and the ``runtime_only`` ones
    (device, out_dir, ...), which stay this command's. Saved keys that are no option are ignored."""
    keep = {k: getattr(cfg, k) for k in set(given) | set(runtime_only)}
    names = {f.name for f in dataclasses.fields(cfg)}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in saved.items() if k in names})
    return dataclasses.replace(cfg, **keep)


def absolute_path(path: str) -> str:
    """path (``~`` expanded) made absolute: a run saves its paths so, and a --resume may start in
    another working folder."""
    return os.path.abspath(os.path.expanduser(path))


def absolute_if_exists(path: str) -> str:
    """path made absolute (``~`` expanded) when it names an existing file or folder; else as typed (a Hub
    id, a name, or a missing path, for its error to name it so)."""
    return absolute_path(path) if os.path.exists(os.path.expanduser(path)) else path


def to_dict(cfg, drop=()) -> dict:
    """The config as a JSON-ready dict, without the fields in ``drop``."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in drop}


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what the shell reports for `seq 1 1000000 | head -1`
EXIT_INTERRUPTED = 130  # 128 + SIGINT


# Set by a command whose process the interpreter's teardown may abort after its work is done (train, once it
# closed a gloo process group: its threads, pytorch/pytorch#179291): run_program then skips the teardown.
HARD_EXIT = False


def run_program(main):
    """``sys.exit(entry(main))``, the end of ``python -m fastgpt.train`` and ``python -m fastgpt``. Once
    HARD_EXIT is set, a successful run ends with os._exit(0) instead, its output flushed: every file a
    command writes is written and fsynced before it returns, so nothing the teardown would do is needed.
    A failed one exits as before: under torchrun its other ranks exit 1 quietly while rank 0 says why,
    and exiting at once they had torchrun stop rank 0 before it said it (the abort in the teardown was
    seen after successful runs only)."""
    rc = entry(main)
    if HARD_EXIT and not rc:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)
    sys.exit(rc)


def entry(main, argv=None):
    """Run a command's ``main`` as a program: ``sys.exit(cli.entry(main))`` under ``if __name__ == "__main__"``.

    A reader that closes the pipe early (``... --help | head -3``) ends the program
    quietly with status 141, as coreutils and git end there (killed by SIGPIPE, which
    the shell reports as 128 + 13), instead of a BrokenPipeError traceback. Python
    ignores SIGPIPE, so the write raises; stdout is then pointed at /dev/null so the
    flush at interpreter exit cannot raise again.
    """
    try:
        try:
            rc = main(argv) if argv is not None else main()
        except SystemExit:  # argparse's --help / usage exit: its output may still sit in the buffer
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a broken pipe shows up here if nothing forced a write before
        return rc
    except KeyboardInterrupt:   # (train, finetune and sample say more, themselves): one line, not a traceback
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        prog = f"python -m {spec.name}" if spec is not None else os.path.basename(sys.argv[0])
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:
            _to_devnull(sys.stdout.fileno())
        except ValueError:  # no real stdout file descriptor (an embedding host)
            pass
        return EXIT_BROKEN_PIPE


def _to_devnull(fd: int) -> None:
    """Point file descriptor fd at /dev/null (its reader is gone), quietly if that fails."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE
