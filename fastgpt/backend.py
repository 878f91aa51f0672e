"""Which implementation serves an op: the fused kernels or the reference.

Precedence (DESIGN.md): the ``backend=`` argument > the ``FASTGPT_BACKEND``
environment variable > the device (CUDA -> fused, CPU -> reference). The
choice is made per call and never stored in checkpoints or configs.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings

import torch

BACKENDS = ("fused", "reference")
# the advice in the reasons below; the command-line programs say it their way (cli.backend)
USE_REFERENCE = "use backend='reference'"
INTERPRETER_HINT = "(set TRITON_INTERPRET=1 before importing fastgpt)"


def _check_name(name, where):
    if name not in BACKENDS:
        raise ValueError(f"{where} must be 'fused' or 'reference' (or None for auto), got {name!r}")


def _kernels_or_reason():
    mod = sys.modules.get("fastgpt.kernels")  # the common case; also keeps torch.compile out of importlib
    if mod is not None:
        return mod, None
    return _import_kernels()


@functools.lru_cache(maxsize=None)
def _import_kernels():
    try:
        return importlib.import_module("fastgpt.kernels"), None
    except ImportError as e:  # triton missing (macOS, Windows) or a broken install
        return None, f"the Triton kernels cannot be imported ({e}); install triton, or {USE_REFERENCE}"


def assume_constant_result(fn):
    """torch.compiler.assume_constant_result(fn), without its import of torch._dynamo: that import
    cost ~1 s of every ``import fastgpt`` and imports triton, after which TRITON_INTERPRET=1 no
    longer takes effect (the CPU selftest found the interpreter off). This sets the marker that
    torch._dynamo.decorators.assume_constant_result sets and dynamo reads when it traces a call;
    tests/test_ops.py checks that a fullgraph compile still honours it."""
    fn._dynamo_marked_constant = True
    return fn


@assume_constant_result
def fused_unavailable_reason(device_type: str) -> str | None:
    """None if the Triton kernels can run on this device type, else why not (one line).

    torch.compile runs it as it is (not traced) and keeps the answer: the first call may import
    fastgpt.kernels, which dynamo would refuse to trace (a fullgraph compile as a process's first
    fused call failed), and afterwards ops reach the module through sys.modules."""
    mod, reason = _kernels_or_reason()
    if mod is None:
        return reason
    if device_type == "cuda":
        if mod.INTERPRET:
            return ("fastgpt.kernels was imported with TRITON_INTERPRET=1, which runs kernels on the CPU; "
                    "unset it to run them on the GPU")
        return None
    if device_type == "cpu":
        if not mod.INTERPRET:
            return ("the fused backend needs a CUDA GPU; on the CPU it runs only under the Triton interpreter "
                    f"{INTERPRETER_HINT} — or {USE_REFERENCE}")
        return None
    return f"the fused backend does not support device type {device_type!r}; {USE_REFERENCE}"


def requested_backend(backend: str | None = None) -> str | None:
    """The explicit choice (argument, then environment), or None for auto."""
    if backend is not None:
        _check_name(backend, "backend")
        return backend
    env = os.environ.get("FASTGPT_BACKEND") or None
    if env is not None:
        _check_name(env, "FASTGPT_BACKEND")
    return env


@functools.lru_cache(maxsize=None)
def _warn_once(msg):
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def resolve(backend: str | None, device_type: str, fused_reason=fused_unavailable_reason) -> str:
    """Pick 'fused' or 'reference' for one call on ``device_type``.

    An explicit 'fused' that cannot run raises RuntimeError with the reason;
    auto on CUDA without Triton falls back to the reference with one warning.
    """
    choice = requested_backend(backend)
    if choice == "reference":
        return "reference"
    if choice == "fused":
        reason = fused_reason(device_type)
        if reason is not None:
            raise RuntimeError(f"fastgpt: fused backend unavailable: {reason}")
        return "fused"
    if device_type != "cuda":
        return "reference"
    reason = fused_reason(device_type)
    if reason is not None:
        _warn_once(f"fastgpt: using the reference path on CUDA: {reason}")
        return "reference"
    return "fused"


def kernels():
    """The fastgpt.kernels module (call only after resolve() said 'fused')."""
    return _kernels_or_reason()[0]


def first_order_only(op: str, instead: str = USE_REFERENCE):
    """Decorates a fused op's autograd backward: its gradients come from kernels (no graph of their
    own), so double backward (create_graph=True, under which autograd runs a backward with grad mode
    on) would silently drop the second-order terms; raise instead."""
    def deco(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            if torch.is_grad_enabled():
                raise RuntimeError(f"{op}: the fused backward is first-order only (double backward / "
                                   f"create_graph=True is not supported); {instead}")
            return backward(ctx, *grads)
        return wrapper
    return deco
