"""The C++/CUDA extension ``fastgpt._C``: loader, Python registrations and the fused op.

The extension (sources in ``csrc/``) registers two torch operators::

    torch.ops.fastgpt.bias_dropout_add(x, bias, residual, p, seed) -> out
    torch.ops.fastgpt.bias_dropout_add_bwd(grad, seed, p, dx_dtype, dbias_dtype) -> (dx, dbias)

with CPU and CUDA kernels; this module adds their fake (meta) implementations
and the autograd formula, so ``torch.compile(fullgraph=True)`` traces them and
``torch.library.opcheck`` passes.

Loading (``load()``), first that works:
  1. the prebuilt module ``fastgpt._C`` that ``pip install -e .`` compiled
     (skipped when a file in ``csrc/`` is newer than it: a stale build);
  2. a JIT build with ``torch.utils.cpp_extension.load`` (ninja; cached under
     ``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``; the
     CUDA sources are added when torch has CUDA, nvcc exists and a GPU is visible).
When neither works, ``load()`` returns None and ``unavailable_reason()`` says
why in one line; ``fastgpt.ops`` then serves the reference (warning once on
CUDA) or raises that reason when ``backend="fused"`` was asked for.
``FASTGPT_EXTENSION=off`` disables the extension, ``=jit`` skips the prebuilt
module. Nothing here runs at ``import fastgpt``: ``fastgpt.ops`` imports this
module on the first fused call.

Randomness: with p > 0 the op takes ``seed``, an int64 tensor (seed, offset)
drawn by ``torch.randint`` from torch's default generators (see new_seed: the
CPU one in eager mode, so no extra GPU kernel; the device one under
torch.compile and CUDA-graph capture, read by the kernel from device memory so
each replay draws a fresh mask), or from ``generator=``. So
``torch.manual_seed`` reproduces a run, and activation checkpointing
(``torch.utils.checkpoint`` restores the CPU and device RNG states before
recomputing) redraws the same seed and replays the same mask. The op itself is
a pure function of its inputs: the mask is a function of (seed, offset,
element index) only (``csrc/philox.h``; ``fastgpt.reference.dropout_keep_mask``
mirrors it), the same on CPU and CUDA; the backward regenerates it from the
saved seed instead of storing it (no mask memory; the Philox work hides under
the memory time).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from fastgpt import reference
from fastgpt.backend import assume_constant_result, first_order_only

__all__ = ["load", "unavailable_reason", "cuda_compiled", "bias_dropout_add", "new_seed"]

_ROOT = Path(__file__).resolve().parent.parent
CSRC = _ROOT / "csrc"
SOURCES = ("binding.cpp", "dropout_add_cpu.cpp")
CUDA_SOURCES = ("dropout_add_cuda.cu",)
HEADERS = ("dropout_add.h", "philox.h")
_OP = "bias_dropout_add"

_lock = threading.Lock()
_state: dict = {}  # "module", "reason", "how" once load() has run


# ----------------------------------------------------------------------------- loading

def _stale(so_path: str) -> bool:
    """True when a source in csrc/ is newer than the prebuilt module (an editable install)."""
    if not CSRC.is_dir():
        return False
    try:
        built = os.path.getmtime(so_path)
        files = SOURCES + HEADERS + (CUDA_SOURCES if torch.version.cuda else ())
        return any((CSRC / f).exists() and os.path.getmtime(CSRC / f) > built for f in files)
    except OSError:
        return False


def _has_cuda(so_path: str) -> bool:
    """Whether a built module contains the CUDA launchers (read before importing: a module cannot be unloaded)."""
    try:
        with open(so_path, "rb") as f:
            return b"fastgpt_bda_fwd_cuda" in f.read()
    except OSError:
        return True


def _compiler() -> Optional[str]:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx.split()[0]) if cxx else None


def _want_cuda() -> bool:
    from torch.utils import cpp_extension
    return bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None and torch.cuda.is_available()


def _ops_registered() -> bool:
    return hasattr(torch.ops.fastgpt, "bias_dropout_add")


def _jit_build():
    """Compile the extension with torch.utils.cpp_extension.load; returns (module, None) or (None, reason)."""
    from torch.utils import cpp_extension
    missing = [f for f in SOURCES + HEADERS if not (CSRC / f).exists()]
    if missing:
        return None, f"no prebuilt fastgpt._C and the sources are not here ({CSRC / missing[0]} is missing)"
    if _compiler() is None:
        return None, ("no prebuilt fastgpt._C and no C++ compiler to build it (install g++/clang, "
                      "or set CXX); the reference path serves")
    if not cpp_extension.is_ninja_available():
        return None, "no prebuilt fastgpt._C and ninja is not installed to build it (pip install ninja)"
    cuda = _want_cuda()
    sources = [str(CSRC / f) for f in SOURCES + (CUDA_SOURCES if cuda else ())]
    flags = ["-O3"] + (["-DFASTGPT_WITH_CUDA"] if cuda else [])
    try:
        mod = cpp_extension.load(
            name="fastgpt_C" + ("_cuda" if cuda else ""), sources=sources, extra_cflags=flags,
            extra_cuda_cflags=["-O3", "-lineinfo"], extra_include_paths=[str(CSRC)],
            with_cuda=cuda, verbose=os.environ.get("FASTGPT_EXTENSION_VERBOSE", "0") == "1")
    except Exception as e:  # compiler errors, a broken toolchain
        last = [ln for ln in str(e).strip().splitlines() if ln.strip()][-1:] or [type(e).__name__]
        return None, (f"building the extension failed ({last[0][:200]}); rerun with "
                      "FASTGPT_EXTENSION_VERBOSE=1 to see the compiler output")
    return mod, None


def _mode() -> str:
    """$FASTGPT_EXTENSION, lowercased; unset or empty: auto (as an empty $FASTGPT_BACKEND is)."""
    return (os.environ.get("FASTGPT_EXTENSION", "").strip() or "auto").lower()


def setting_problem() -> str | None:
    """What is wrong with $FASTGPT_EXTENSION (one line), or None. The programs refuse to start with one
    (fastgpt.cli.backend, selftest); the Python API serves without the extension, saying why."""
    mode = _mode()
    if mode not in ("auto", "jit", "prebuilt", "off", "0", "none"):
        return f"FASTGPT_EXTENSION must be auto, jit, prebuilt or off, got {mode!r}"
    return None


def _load():
    mode = _mode()
    if mode in ("off", "0", "none"):
        return None, "disabled by FASTGPT_EXTENSION=off", None
    problem = setting_problem()
    if problem is not None:
        return None, problem, None
    notes, skipped = [], False
    if mode in ("auto", "prebuilt"):
        spec = importlib.util.find_spec("fastgpt._C")
        if spec is not None and spec.origin and _stale(spec.origin) and mode == "auto":
            notes.append("the prebuilt fastgpt._C is older than csrc/")
            skipped = True
        elif spec is not None and spec.origin and mode == "auto" and _want_cuda() and not _has_cuda(spec.origin):
            notes.append("the prebuilt fastgpt._C has no CUDA kernels")
            skipped = True
        elif spec is not None:
            try:
                return importlib.import_module("fastgpt._C"), None, "prebuilt"
            except ImportError as e:  # built against another torch, a missing library
                notes.append(f"the prebuilt fastgpt._C does not import ({e})")
        if mode == "prebuilt":
            return None, "; ".join(notes) or "FASTGPT_EXTENSION=prebuilt but fastgpt._C was not built", None
    if _ops_registered():   # by a library that loaded and then failed to import (no PyInit: a broken build);
        # a JIT module registering them again would abort the process (c10::Error from a static initialiser)
        return None, "; ".join(notes + [
            "fastgpt's operators are registered already, by a library that did not import, so a JIT build "
            "cannot load beside it: rebuild (pip install --no-build-isolation -e .)"]), None
    mod, reason = _jit_build()
    if mod is None and skipped:  # no JIT build here: the prebuilt module as it is beats none
        try:
            mod = importlib.import_module("fastgpt._C")
        except ImportError as e:
            notes.append(f"it does not import either ({e})")
        else:
            warnings.warn(f"fastgpt: {notes[0]} and a JIT build failed ({reason}); using the prebuilt one as it "
                          "is (rebuild: pip install --no-build-isolation -e .)", RuntimeWarning, stacklevel=3)
            return mod, None, "prebuilt"
    if mod is None:
        return None, "; ".join(notes + [reason]), None
    return mod, None, "jit"


def load():
    """The extension module (the ops registered), or None when it cannot be had; see unavailable_reason()."""
    if "module" not in _state:
        with _lock:
            if "module" not in _state:
                mod, reason, how = _load()
                if mod is not None:
                    _register_python_side()
                _state.update(module=mod, reason=reason, how=how)
    return _state["module"]


@assume_constant_result
def unavailable_reason(device_type: Optional[str] = None) -> Optional[str]:
    """None if the extension can run on this device type (any, when None), else why not (one line).

    Memoised; torch.compile treats it as a constant (it loads nothing while tracing).
    """
    reasons = _state.setdefault("reasons", {})
    if device_type not in reasons:
        reasons[device_type] = _reason(device_type)
    return reasons[device_type]


def _reason(device_type):
    mod = load()
    if mod is None:
        return f"the C++/CUDA extension fastgpt._C is off: {_state['reason']}"
    if device_type in (None, "cpu"):
        return None
    if device_type == "cuda":
        if not cuda_compiled():
            return ("fastgpt._C was built without CUDA (torch without CUDA, no nvcc or no GPU at build time); "
                    "reinstall with `pip install --no-build-isolation -e .` on the GPU machine, or set "
                    "FASTGPT_EXTENSION=jit")
        return None
    return f"the extension has no kernels for device type {device_type!r}"


def cuda_compiled() -> bool:
    """True when the loaded extension has its CUDA kernels (False when it is not loaded)."""
    return load() is not None and bool(torch.ops.fastgpt._ext_cuda_compiled())


def how_loaded() -> Optional[str]:
    """'prebuilt' or 'jit' once loaded, else None."""
    load()
    return _state.get("how")


# ----------------------------------------------------------------------------- Python-side registration

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _validate(x, bias, residual, p) -> None:
    op = _OP
    for name, t in (("x", x), ("residual", residual), ("bias", bias)):
        if t is None and name == "bias":
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
    reference.check_x(op, x)
    if x.shape != residual.shape:
        raise ValueError(f"{op}: x {tuple(x.shape)} and residual {tuple(residual.shape)} differ")
    if bias is not None:
        reference.check_vector_shape(op, "bias", bias, x.shape[-1])
    dev = x.device
    if residual.device != dev or (bias is not None and bias.device != dev):
        devs = {n: t.device for n, t in (("x", x), ("bias", bias), ("residual", residual)) if t is not None}
        raise ValueError(f"{op}: tensors on different devices ("
                         + ", ".join(f"{n} on {d}" for n, d in devs.items()) + ")")
    reference.check_bias_dropout_p(op, p)


# (a direct call with real CPU tensors and a meta seed comes here too, Meta outranking CPU: the seed is
# checked, or it returned uninitialised memory)
def _fake_fwd(x, bias, residual, p, seed):
    _validate(x, bias, residual, p)
    if p > 0 and seed is not None:
        _validate_seed(seed, x.device)
    return x.new_empty(x.shape, dtype=residual.dtype)


def _fake_bwd(grad, seed, p, dx_dtype, dbias_dtype):
    if p > 0 and seed is not None:
        _validate_seed(seed, grad.device)
    dx = grad.new_empty(grad.shape, dtype=dx_dtype)
    if dbias_dtype is None:
        return dx, grad.new_empty((0,), dtype=dx_dtype)
    return dx, grad.new_empty((grad.shape[-1],), dtype=dbias_dtype)


def _setup_context(ctx, inputs, output):
    x, bias, residual, p, seed = inputs
    ctx.p = p
    ctx.x_dtype = x.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(seed if p > 0 else None)


@first_order_only("bias_dropout_add")
def _backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    need_x, need_b, need_r = ctx.needs_input_grad[:3]
    dx = db = None
    if need_x or need_b:
        dx, db = torch.ops.fastgpt.bias_dropout_add_bwd(grad, seed, ctx.p, ctx.x_dtype,
                                                        ctx.bias_dtype if need_b else None)
    return (dx if need_x else None), (db if need_b else None), (grad if need_r else None), None, None


_registered = False


def _register_python_side() -> None:
    """register_fake + register_autograd for the C++ ops (once; called by load())."""
    global _registered
    if _registered:
        return
    torch.library.register_fake("fastgpt::bias_dropout_add")(_fake_fwd)
    torch.library.register_fake("fastgpt::bias_dropout_add_bwd")(_fake_bwd)
    torch.library.register_autograd("fastgpt::bias_dropout_add", _backward, setup_context=_setup_context)
    _registered = True


# ----------------------------------------------------------------------------- the op

def new_seed(device, generator: Optional[torch.Generator] = None) -> Tensor:
    """A fresh (seed, offset) int64 pair for an op on ``device``, drawn from torch's generator.

    In eager mode on CUDA it is drawn on the CPU (torch's CPU generator): the
    binding reads it on the host and passes it by value, so no extra kernel
    runs on the GPU. Under torch.compile and during CUDA-graph capture it is
    drawn on the device (its generator is graph-safe) and the kernel reads it
    from device memory, so every replay gets a fresh mask. ``generator`` draws
    on that generator's device. 63 random bits each: [0, 2^63 - 1) keeps
    high - low inside int64, which inductor's randint lowering needs.
    """
    if generator is not None:
        where = generator.device
    else:
        where = torch.device(device)
        if where.type == "cuda" and not torch.compiler.is_compiling() and not torch.cuda.is_current_stream_capturing():
            where = torch.device("cpu")
    return torch.randint(0, 2**63 - 1, (2,), dtype=torch.int64, device=where, generator=generator)


def _validate_seed(s: Tensor, device: torch.device) -> None:
    """The C++ seed checks, in Python (metadata only), before any op runs."""
    if s.dtype != torch.int64:
        raise TypeError(f"{_OP}: seed must be int64, got {s.dtype}")
    if tuple(s.shape) != (2,):
        raise ValueError(f"{_OP}: seed must have shape (2,) = (seed, offset), got {tuple(s.shape)}")
    if s.device.type != "cpu":
        if s.device != device:
            raise ValueError(f"{_OP}: seed is on {s.device} but x is on {device}")
        if not s.is_contiguous():
            raise ValueError(f"{_OP}: a device seed must be contiguous")


class _BiasDropoutAdd(torch.autograd.Function):
    """The eager path: the C++ kernels called below the Autograd dispatch key.

    The same ops and the same formula as the registered custom-op path
    (_setup_context / _backward), without its per-call Python machinery
    (the generated autograd kernel, its redispatch and metadata objects),
    which costs several times the host time of this Function.
    """

    @staticmethod
    def forward(ctx, x, bias, residual, p, seed):
        with torch._C._AutoDispatchBelowAutograd():
            out = torch.ops.fastgpt.bias_dropout_add.default(x, bias, residual, p, seed)
        ctx.p = p
        ctx.x_dtype = x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(seed if p > 0 else None)
        return out

    @staticmethod
    @first_order_only("bias_dropout_add")
    def backward(ctx, grad):
        (seed,) = ctx.saved_tensors
        need_x, need_b, need_r = ctx.needs_input_grad[:3]
        dx = db = None
        if need_x or need_b:
            with torch._C._AutoDispatchBelowAutograd():
                dx, db = torch.ops.fastgpt.bias_dropout_add_bwd.default(
                    grad, seed, ctx.p, ctx.x_dtype, ctx.bias_dtype if need_b else None)
        return (dx if need_x else None), (db if need_b else None), (grad if need_r else None), None, None


def _eager_ok(grad_inputs) -> bool:
    """The Function path serves plain eager calls; torch.compile, torch.func transforms,
    tensor subclasses and torch function / dispatch modes go through the registered custom op."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:  # torch.func transforms
        return False
    return all(type(t) is Tensor or type(t) is torch.nn.Parameter for t in grad_inputs if t is not None)


def bias_dropout_add(x: Tensor, bias: Optional[Tensor], residual: Tensor, dropout_p: float = 0.0, *,
                     seed=None, generator: Optional[torch.Generator] = None, _path: Optional[str] = None) -> Tensor:
    """residual + dropout(x + bias, dropout_p) through the extension (forward and backward).

    out has residual's dtype; grads: dx in x's dtype, dbias in bias's dtype
    (an fp32 row sum), dresidual = the upstream gradient. ``seed`` (an int64
    tensor or pair (seed, offset)) fixes the mask; by default it is drawn from
    torch's generator of x's device (``generator=`` to use another). p = 0 does
    no RNG work. Raises RuntimeError when the extension is unavailable.

    In eager mode the call goes through a torch.autograd.Function that calls
    the C++ kernels directly (a few times less host time per call); under
    torch.compile through the registered custom op ``torch.ops.fastgpt.bias_dropout_add``.
    Both compute the same thing from the same seed. ``_path`` ("eager" /
    "op") forces one, for tests.
    """
    _validate(x, bias, residual, dropout_p)
    reason = unavailable_reason(x.device.type)
    if reason is not None:
        raise RuntimeError(f"fastgpt: {reason}")
    p = float(dropout_p)
    if p == 0.0:
        s = None
    elif seed is None:
        s = new_seed(x.device, generator)
    elif isinstance(seed, Tensor):
        s = seed
        if not torch.compiler.is_compiling():
            _validate_seed(s, x.device)  # the C++ checks, before any op runs
    else:
        s = reference.seed_pair(seed, None, _OP)   # on the CPU: read by value (a CUDA one was a synced copy)
    if _path == "eager" or (_path is None and _eager_ok((x, bias, residual))):
        if torch.is_grad_enabled() and (x.requires_grad or residual.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return _BiasDropoutAdd.apply(x, bias, residual, p, s)
        with torch._C._AutoDispatchBelowAutograd():  # nothing to differentiate: the kernel alone
            return torch.ops.fastgpt.bias_dropout_add.default(x, bias, residual, p, s)
    return torch.ops.fastgpt.bias_dropout_add(x, bias, residual, p, s)
