"""GPTConfig: the architecture of a GPT-1 / GPT-2 model, and the named presets.

    cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    cfg = GPTConfig.preset("gpt2")                      # by exact name, see PRESETS
    cfg = GPTConfig.preset("gpt1", vocab_size=256)      # a preset with overrides

Vocabulary padding: ``vocab_size`` is the real vocabulary (the tokenizer's);
the embedding / LM-head matrix has ``padded_vocab_size`` rows, rounded up to a
multiple of ``vocab_multiple`` (64) so the head matmul runs on tensor-core
friendly shapes. The padded rows are zero-initialised and never seen by the
user: returned logits, the loss and sampling use only the first
``vocab_size`` columns, so a padded id never wins a sample and is never a
target (their rows get no gradient).

The backend (fused / reference) is never part of a config: it is a per-model
runtime choice.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

NORMS = ("pre", "post")
ACTIVATIONS = ("gelu_tanh", "gelu")
RESIDUAL_DTYPES = (None, "float32", "bfloat16", "float16")
# the largest dropout p: bias_dropout_add (the C++ extension, and the reference alike) compares 16 random
# bits, so its drop rate moves in steps of 1/65536; above this the kept fraction (1 - p, at most 50/65536)
# would be off by more than 1 %
MAX_DROPOUT_P = 1.0 - 50.0 / 65536.0


def dropout_option_problems(p) -> list:
    """fastgpt.train's and fastgpt.finetune's --dropout: its problem, or none (None: the model's own rate)."""
    if p is not None and not 0 <= p <= MAX_DROPOUT_P:
        return [f"--dropout must be in [0, {MAX_DROPOUT_P:.6f}], got {p}"]
    return []


_INT_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_multiple")
_FLOAT_FIELDS = ("dropout", "layer_norm_eps")


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024          # maximum sequence length (learned positions)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0            # embeddings, attention weights and both residual branches
    bias: bool = True               # biases in the Linear layers and LayerNorms
    norm: str = "pre"               # "pre" = GPT-2 (x + f(ln(x))); "post" = GPT-1 (ln(x + f(x)))
    activation: str = "gelu_tanh"   # "gelu_tanh" (GPT-1/GPT-2/HF) or "gelu" (exact erf, nanoGPT)
    layer_norm_eps: float = 1e-5
    residual_dtype: str | None = None   # None: the residual stream keeps the embeddings' dtype (fp32
                                        # under autocast); "bfloat16" keeps it in bf16 (faster, less exact)
    vocab_multiple: int = 64        # padded_vocab_size = vocab_size rounded up to this multiple
    extra: dict = field(default_factory=dict, compare=False)  # free-form metadata (e.g. tokenizer name)

    def __post_init__(self):
        if self.extra is None:   # (a config.json with "extra": null)
            self.extra = {}
        for name in _INT_FIELDS:   # NumPy numbers as Python ones (to_dict writes JSON)
            v = getattr(self, name)
            if isinstance(v, numbers.Integral) and not isinstance(v, (bool, int)):
                setattr(self, name, int(v))
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, numbers.Real) and not isinstance(v, (bool, int, float)):
                setattr(self, name, float(v))
        self.validate()

    def validate(self) -> None:
        """ValueError (one line) for an impossible config; GPT and GPTBlock call it again, since a
        dataclass can be changed after it was built."""
        if not isinstance(self.extra, dict):
            raise ValueError(f"GPTConfig: extra must be a dict (free-form metadata), got {type(self.extra).__name__}")
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.norm not in NORMS:
            raise ValueError(f"GPTConfig: norm must be 'pre' (GPT-2) or 'post' (GPT-1), got {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"GPTConfig: activation must be 'gelu_tanh' or 'gelu' (exact erf), "
                             f"got {self.activation!r}")
        for name, ok, want in (("dropout", lambda v: 0.0 <= v <= MAX_DROPOUT_P,
                                f"a number in [0, {MAX_DROPOUT_P:.6f}]"),
                               ("layer_norm_eps", lambda v: 0.0 < v < math.inf, "a finite number > 0")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                raise ValueError(f"GPTConfig: {name} must be {want}, got {v!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"GPTConfig: bias must be True or False, got {self.bias!r}")
        if self.residual_dtype not in RESIDUAL_DTYPES:
            raise ValueError(f"GPTConfig: residual_dtype must be one of {RESIDUAL_DTYPES}, got {self.residual_dtype!r}")

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def gelu_approximate(self) -> str:
        """The ``approximate=`` argument of ops.bias_gelu / F.gelu for this activation."""
        return "tanh" if self.activation == "gelu_tanh" else "none"

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"GPTConfig: unknown field(s) {unknown}")
        return cls(**d)

    def replace(self, **changes) -> "GPTConfig":
        changes.setdefault("extra", dict(self.extra))   # (a shared dict: editing the copy's changed this one's)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_nanogpt(cls, c) -> "GPTConfig":
        """nanoGPT's GPTConfig, or the ``model_args`` dict of its checkpoints, as a fastgpt config: pre-LN
        with exact-erf GELU (nanoGPT's MLP uses nn.GELU()) and LayerNorm eps 1e-5, as nanoGPT's Block computes.
        A TypeError (one line) for anything else: missing nanoGPT fields, fields nanoGPT has not (a fork's
        switches), or fastgpt's own (a config that names its norm or activation must not be read as
        nanoGPT's). A missing ``bias`` is True (nanoGPT before that option)."""
        if isinstance(c, dict):
            values = dict(c)
        else:
            names = [f.name for f in dataclasses.fields(c)] if dataclasses.is_dataclass(c) else \
                list(getattr(c, "__dict__", {}))
            values = {k: getattr(c, k) for k in {*names, *NANOGPT_FIELDS} if hasattr(c, k)}
        values.setdefault("bias", True)   # (nanoGPT before its bias option: biases everywhere)
        ours = [f for f in _OWN_FIELDS if f in values]
        other = sorted(set(values) - set(NANOGPT_FIELDS) - set(_OWN_FIELDS))
        missing = [f for f in NANOGPT_FIELDS if values.get(f) is None]
        if ours:
            why = f"has fastgpt's field(s) {ours} (use GPTConfig.from_dict)"
        elif other:
            why = (f"has field(s) {other[:5]}{' ...' if len(other) > 5 else ''} that nanoGPT's GPTConfig has not "
                   "(a variant fastgpt cannot build)")
        elif missing:
            why = f"lacks nanoGPT's field(s) {missing}"
        if ours or other or missing:
            raise TypeError(f"GPTConfig.from_nanogpt: {type(c).__name__} {why}")
        return cls(**{f: values[f] for f in NANOGPT_FIELDS}, norm="pre", activation="gelu")

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """The preset called exactly ``name`` (see PRESETS), with keyword overrides."""
        if name not in PRESETS:
            raise ValueError(f"GPTConfig: unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# nanoGPT's GPTConfig (model.py) and its checkpoints' model_args; the fields only ours has
NANOGPT_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")
_OWN_FIELDS = ("norm", "activation", "layer_norm_eps", "residual_dtype", "vocab_multiple")

# Architectures as published. Dropout 0.1 as in the GPT-1 paper (and HF's GPT-1 / GPT-2 configs);
# pass dropout=0.0 for speed runs. gpt1's vocabulary is its 40478-token BPE, GPT-2's 50257.
PRESETS: dict[str, dict] = {
    "gpt1": dict(vocab_size=40478, block_size=512, n_layer=12, n_head=12, n_embd=768, norm="post",
                 activation="gelu_tanh", dropout=0.1),
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.1),
    "gpt2-medium": dict(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024, dropout=0.1),
    "gpt2-large": dict(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280, dropout=0.1),
    "gpt2-xl": dict(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600, dropout=0.1),
    # CPU runs: byte-level vocabulary, 4 x 128 (DESIGN.md: ~20k tok/s on 2 cores).
    "tiny": dict(vocab_size=256, block_size=256, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
}

__all__ = ["GPTConfig", "PRESETS"]
