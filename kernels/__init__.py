"""fastgpt.kernels: the Triton ops, always Triton (installed from the folder kernels/).

Importing this module requires triton. Under ``TRITON_INTERPRET=1`` (set
before triton is imported) the kernels run on the CPU through Triton's
interpreter, which is how CI tests them without a GPU.
"""
import os

import triton  # noqa: F401  (a clear ImportError here when triton is missing)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if INTERPRET:   # the interpreter's bf16 casts truncate and its bf16 dots read raw bits: fixed first
    from fastgpt.kernels._interpreter import patch as _patch_interpreter
    _patch_interpreter()

from fastgpt.kernels.layernorm import add_layer_norm, layer_norm  # noqa: E402
from fastgpt.kernels.gelu import bias_gelu  # noqa: E402
from fastgpt.kernels.attention import causal_attention, causal_attention_qkvpacked  # noqa: E402
from fastgpt.kernels.cross_entropy import fused_linear_cross_entropy  # noqa: E402

__all__ = ["INTERPRET", "layer_norm", "add_layer_norm", "bias_gelu", "causal_attention", "causal_attention_qkvpacked",
           "fused_linear_cross_entropy"]
