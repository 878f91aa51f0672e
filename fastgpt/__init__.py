"""fastgpt: a GPT training engine whose hot paths are fused Triton kernels.

``import fastgpt`` works without triton: the reference path then serves.
"""
import sys as _sys

__version__ = "0.1.0"

try:
    from fastgpt import ops, reference  # noqa: F401
    from fastgpt.config import GPTConfig  # noqa: F401
    from fastgpt.model import GPT, GPTBlock  # noqa: F401
except KeyboardInterrupt:
    # ``python -m fastgpt.X`` imports this package while it looks the module up (sys.argv[0] is then "-m"):
    # a Ctrl-C while torch loads (the first second or so) ends as a later one does, in one line, not a
    # traceback. Imported by anything else, the interrupt is the importer's.
    if _sys.argv[:1] != ["-m"]:
        raise
    _argv = getattr(_sys, "orig_argv", [])
    _name = _argv[_argv.index("-m") + 1] if "-m" in _argv[:-1] else "fastgpt"
    print(f"python -m {_name}: interrupted", file=_sys.stderr, flush=True)
    raise SystemExit(130) from None
