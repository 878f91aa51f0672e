"""fastgpt: a GPT training engine whose hot paths are fused Triton kernels.

``import fastgpt`` works without triton: the reference path then serves.
"""
__version__ = "0.1.0"

from fastgpt import ops, reference  # noqa: F401
from fastgpt.config import GPTConfig  # noqa: E402,F401
from fastgpt.model import GPT, GPTBlock  # noqa: E402,F401
