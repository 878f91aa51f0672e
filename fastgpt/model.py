"""GPT-1 / GPT-2 on fastgpt's ops: the drop-in fused GPTBlock, the GPT model, HF interop, generation.

GPTBlock(cfg, backend=None) holds GPT-2's parameters under GPT-2's names in
nn.Linear layout (``ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
mlp.c_proj``), so a nanoGPT ``Block`` state dict loads unchanged; its math is
``fastgpt.reference.GPTBlock``'s, computed with ``fastgpt.ops`` end to end:

  pre-LN (GPT-2), dropout off:                      post-LN (GPT-1), dropout off:
    y   = layer_norm(x)            ln_1                 a   = attn(x)
    a   = attn(y)                                       n,_ = add_layer_norm(a, x)      ln_1
    y,x = add_layer_norm(a, x)     ln_2 (x += a)        m   = mlp(n)
    m   = mlp(y)                                        o,_ = add_layer_norm(m, n)      ln_2
    out = x + m   (or: handed on as "pending" so the next block's ln_1 adds it)

  attn(y): qkv = c_attn(y) viewed (B, T, 3, H, D); q, k, v are strided (B, H, T, D)
           views of it (no transpose copies) -> ops.causal_attention -> c_proj
  mlp(y):  u = y @ c_fc.W^T;  g = ops.bias_gelu(u, c_fc.b);  c_proj(g). In eager mode
           g is not kept for the backward: it is recomputed from u (one elementwise pass),
           which saves a (B, T, 4C) activation per block.

With dropout active (training, cfg.dropout > 0), each residual add is
``ops.bias_dropout_add(branch, c_proj.bias, x, p)`` followed by
``ops.layer_norm``; dropout also acts on the attention weights and on the
embeddings. Under autocast the matmuls run in the autocast dtype and the
activations stay in it; the residual stream keeps its own dtype (fp32 from the
embeddings, or ``cfg.residual_dtype``). In post-LN the stream is the LayerNorm
output, kept in the stream's dtype (as PyTorch's LayerNorm under autocast gives fp32).

GPT.forward hands ``(residual, pending)`` from block to block, so that every
residual add is fused into the following LayerNorm (the last one into ln_f).

The backend (``None`` auto | ``"fused"`` | ``"reference"``) is a runtime
attribute passed to every ops call, never saved. ``fastgpt.reference.GPTBlock``
is the plain-PyTorch oracle of the block.
"""
from __future__ import annotations

import inspect
import json
import math
import operator
import os
import re
import warnings
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastgpt import ops, reference
from fastgpt.backend import first_order_only
from fastgpt.config import GPTConfig

__all__ = ["GPTBlock", "GPT", "KVCache", "load_model", "hub_folder", "FORMAT", "FORMAT_VERSION"]

FORMAT = "fastgpt"          # config.json's "format": never taken for an HF directory
FORMAT_VERSION = 1
_BACKENDS = (None, "fused", "reference")


def _check_backend(backend):
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be None (auto), 'fused' or 'reference', got {backend!r}")
    return backend


def _weight(m: Optional[nn.Module]):
    return None if m is None else m.weight


def _bias(m: Optional[nn.Module]):
    return None if m is None else m.bias


# ----------------------------------------------------------------------------- KV cache

class KVCache:
    """Keys and values of the tokens seen so far, per layer, for incremental decoding.

    One buffer per layer of shape (B, max_len, 2, H, D) in the activation dtype;
    ``pos`` counts the cached positions. The attention reads (B, H, L, D)
    strided views of it, with Tq < Tk (bottom-right aligned causal mask).
    """

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.pos = 0
        self.bufs: list[Optional[torch.Tensor]] = [None] * n_layer

    def append(self, layer: int, kv: torch.Tensor):
        """kv: (B, T, 2, H, D), the new keys/values. Returns (k, v) over all positions, (B, H, L, D)."""
        B, T = kv.shape[:2]
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KVCache: {end} positions exceed the cache length {self.max_len}")
        buf = self.bufs[layer]
        shape = (B, self.max_len) + tuple(kv.shape[2:])
        if buf is None or buf.shape != shape or buf.dtype != kv.dtype or buf.device != kv.device:
            if self.pos:   # a new buffer would hold none of the cached positions: garbage, silently
                raise ValueError(f"KVCache: it holds {self.pos} positions of another batch, dtype or device "
                                 f"(now {B} rows of {kv.dtype} on {kv.device}); use a new KVCache for it")
            buf = self.bufs[layer] = kv.new_empty(shape)
        buf[:, self.pos:end].copy_(kv)
        return buf[:, :end, 0].transpose(1, 2), buf[:, :end, 1].transpose(1, 2)


# ----------------------------------------------------------------------------- MLP with recompute

class _GeluLinear(torch.autograd.Function):
    """out = c_proj(bias_gelu(u, b1)), saving u but not g = bias_gelu(u, b1) (recomputed in backward).
    The fused backend's MLP (the reference backend's is plain autograd: twice differentiable)."""

    @staticmethod
    def forward(ctx, u, b1, w2, b2, approximate, backend):
        g = ops.bias_gelu(u, b1, approximate, backend=backend)
        out = F.linear(g, w2.to(g.dtype), None if b2 is None else b2.to(g.dtype))
        ctx.save_for_backward(u, b1, w2, b2)
        ctx.approximate, ctx.backend = approximate, backend
        return out

    @staticmethod
    @first_order_only("GPTBlock")
    def backward(ctx, dout):
        u, b1, w2, b2 = ctx.saved_tensors
        with torch.autocast(u.device.type, enabled=False):
            g, gelu_bwd = ops.bias_gelu_recompute(u, b1, ctx.approximate, backend=ctx.backend)
            dout = dout.to(g.dtype)
            d2 = dout.reshape(-1, dout.shape[-1])
            dw2 = (d2.t() @ g.reshape(-1, g.shape[-1])).to(w2.dtype)
            db2 = None if b2 is None else d2.sum(0, dtype=torch.float32).to(b2.dtype)
            du, db1 = gelu_bwd(dout @ w2.to(g.dtype))
        return du, db1, dw2, db2, None, None


# ----------------------------------------------------------------------------- the block

class _Attn(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # nanoGPT before PyTorch 2 (and HF's GPT-2) kept the causal mask as a buffer "attn.bias" (4-D): a
        # nanoGPT Block's state dict loads into GPTBlock with it (it was an unexpected key)
        mask = state_dict.get(prefix + "bias")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            del state_dict[prefix + "bias"]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)


def _config_arg(cfg, who: str) -> GPTConfig:
    """GPTBlock's and GPT's cfg: a GPTConfig, or nanoGPT's GPTConfig (read by GPTConfig.from_nanogpt, so
    nanoGPT's model code can swap its Block / GPT for ours and keep its config)."""
    if isinstance(cfg, GPTConfig):
        return cfg
    why = "a dict (GPTConfig.from_dict reads ours, GPTConfig.from_nanogpt nanoGPT's model_args)"
    if not isinstance(cfg, dict):
        try:
            return GPTConfig.from_nanogpt(cfg)
        except TypeError as e:
            why = str(e).removeprefix("GPTConfig.from_nanogpt: ")
    raise TypeError(f"{who}: cfg must be a fastgpt.GPTConfig or nanoGPT's GPTConfig; got {why}")


def _plain(m: nn.Module, cls: type) -> bool:
    """m is exactly ``cls`` (nn.Linear / nn.LayerNorm) with no module hooks, so the fused path may read its
    weights instead of calling it. Anything else must be called: an adapter in its place (peft's LoRA), a
    quantised or parametrized Linear, pruning's pre-hook, a forward or backward hook (all were silently
    skipped, or failed on the missing .weight)."""
    return type(m) is cls and not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                                   or m._backward_pre_hooks)


class GPTBlock(nn.Module):
    """A fused transformer block, state-dict compatible with GPT-2 / nanoGPT blocks.

    forward(x: (B, T, C)) -> (B, T, C). ``cfg.norm`` picks pre-LN (GPT-2) or
    post-LN (GPT-1); see the module docstring for the data flow. The fused path
    reads ln_1, ln_2, attn.c_proj, mlp.c_fc and mlp.c_proj by their weights; when
    one of them is not a plain nn.LayerNorm / nn.Linear without hooks (see
    ``_plain``), the block calls its submodules instead (``_forward_modules``).
    """

    def __init__(self, cfg: GPTConfig, backend: Optional[str] = None):
        super().__init__()
        cfg = _config_arg(cfg, "GPTBlock")
        cfg.validate()
        self.backend = _check_backend(backend)
        self.pre = cfg.norm == "pre"
        self.n_head = cfg.n_head
        self.dropout = float(cfg.dropout)
        self.eps = float(cfg.layer_norm_eps)
        self.approximate = cfg.gelu_approximate
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = _Attn(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = _MLP(cfg)

    # -- pieces
    def _ln(self, ln, x):
        return ops.layer_norm(x, ln.weight, ln.bias, self.eps, backend=self.backend)

    def _add_ln(self, ln, delta, x):
        return ops.add_layer_norm(delta, x, ln.weight, ln.bias, self.eps, backend=self.backend)

    def _attention(self, y, p_attn: float, kv=None):
        """(B, T, C) normalised input -> (B, T, C) attention output before c_proj."""
        B, T, C = y.shape
        qkv = self.attn.c_attn(y).view(B, T, 3, self.n_head, C // self.n_head)
        if kv is None:  # packed: the fused backward writes one (B, T, 3, H, D) gradient
            return ops.causal_attention_qkvpacked(qkv, dropout_p=p_attn, backend=self.backend)
        # incremental decoding: Tq = T new queries against Tk = cached + T keys
        cache, layer = kv
        q = qkv[:, :, 0].transpose(1, 2)
        k, v = cache.append(layer, qkv[:, :, 1:])
        # out_layout="bthd": o is backed by a (B, T, H, D) buffer, so the transpose before c_proj is free
        o = ops.causal_attention(q, k, v, dropout_p=p_attn, backend=self.backend, out_layout="bthd")
        return o.transpose(1, 2).reshape(B, T, C)

    def _mlp(self, y, with_bias: bool):
        """c_proj(gelu(c_fc(y))), with c_proj's bias only if with_bias."""
        fc, proj = self.mlp.c_fc, self.mlp.c_proj
        u = F.linear(y, fc.weight)
        b2 = proj.bias if with_bias else None
        # (ops._fused: under a torch.func transform, the error naming the op before _GeluLinear's own)
        if torch.is_grad_enabled() and not torch.compiler.is_compiling() and ops._fused("GPTBlock", self.backend,
                                                                                        "x", u, fc.bias):
            return _GeluLinear.apply(u, fc.bias, proj.weight, b2, self.approximate, self.backend)
        g = ops.bias_gelu(u, fc.bias, self.approximate, backend=self.backend)
        return F.linear(g, proj.weight, b2)

    # -- forward
    def forward_stream(self, x, pending=None, kv=None):
        """One block on the residual stream ``x + pending`` (pending may be None).

        Returns ``(x, pending)``: the stream after the block is their sum, the
        add left for the next LayerNorm to fuse (pre-LN with dropout off);
        otherwise pending is None. ``kv`` = (KVCache, layer index) for decoding.
        """
        if not self._all_plain():
            return self._forward_modules(x if pending is None else x + pending, kv), None
        p = self.dropout if self.training else 0.0
        attn_proj = self.attn.c_proj
        if self.pre:
            if pending is None:
                y = self._ln(self.ln_1, x)
            else:
                y, x = self._add_ln(self.ln_1, pending, x)
            a = self._attention(y, p, kv)
            if p > 0.0:
                x = ops.bias_dropout_add(F.linear(a, attn_proj.weight), attn_proj.bias, x, p, backend=self.backend)
                y = self._ln(self.ln_2, x)
                m = self._mlp(y, with_bias=False)
                return ops.bias_dropout_add(m, self.mlp.c_proj.bias, x, p, backend=self.backend), None
            y, x = self._add_ln(self.ln_2, attn_proj(a), x)
            return x, self._mlp(y, with_bias=True)
        # post-LN: the stream is the LayerNorm output
        if pending is not None:
            raise ValueError("GPTBlock: a post-LN block takes no pending residual add")
        # y takes the dtype of add_layer_norm's x: the branch is cast to the stream's dtype first
        # (a no-op without autocast), so the stream stays exact as PyTorch's autocast LayerNorm keeps it.
        sdt = x.dtype
        a = self._attention(x, p, kv)
        if p > 0.0:
            n = self._ln(self.ln_1, ops.bias_dropout_add(F.linear(a, attn_proj.weight), attn_proj.bias, x, p,
                                                         backend=self.backend))
            m = self._mlp(n, with_bias=False)
            return self._ln(self.ln_2, ops.bias_dropout_add(m, self.mlp.c_proj.bias, n, p,
                                                            backend=self.backend)), None
        n = self._add_ln(self.ln_1, attn_proj(a).to(sdt), x)[0]
        return self._add_ln(self.ln_2, self._mlp(n, with_bias=True).to(sdt), n)[0], None

    def _all_plain(self) -> bool:
        m = self._modules   # (through nn.Module.__getattr__, self.ln_1 ..., this took ~10 us of host time)
        a, f = m["attn"]._modules, m["mlp"]._modules
        return (_plain(m["ln_1"], nn.LayerNorm) and _plain(m["ln_2"], nn.LayerNorm) and _plain(a["c_proj"], nn.Linear)
                and _plain(f["c_fc"], nn.Linear) and _plain(f["c_proj"], nn.Linear))

    def _forward_modules(self, x, kv=None):
        """The block by calling its submodules (so their hooks, adapters, quantisation or pruning act), with
        fastgpt's attention, GELU and dropout-add between them: what the fused path computes, unfused."""
        p = self.dropout if self.training else 0.0

        def add(branch, res):   # res + dropout(branch)
            return ops.bias_dropout_add(branch, None, res, p, backend=self.backend) if p > 0.0 else res + branch

        def mlp(y):
            return self.mlp.c_proj(ops.bias_gelu(self.mlp.c_fc(y), None, self.approximate, backend=self.backend))
        if self.pre:
            x = add(self.attn.c_proj(self._attention(self.ln_1(x), p, kv)), x)
            return add(mlp(self.ln_2(x)), x)
        n = self.ln_1(add(self.attn.c_proj(self._attention(x, p, kv)), x))
        return self.ln_2(add(mlp(n), n))

    def forward(self, x, pending=None, *, kv=None, return_pending: bool = False):
        """x: (B, T, C) -> (B, T, C). GPT calls its blocks as ``block(x, pending, kv=..., return_pending=True)``
        (the stream is x + pending; see forward_stream), which returns the (x, pending) pair: module hooks
        on a block inside GPT see that pair."""
        C = self.ln_1.normalized_shape[0]
        if x.dim() != 3 or x.shape[-1] != C:   # (else an unpacking error, or one blaming ln_1's weight)
            raise ValueError(f"GPTBlock: x must be (B, T, {C}), got shape {tuple(x.shape)}")
        x, pending = self.forward_stream(x, pending, kv)
        if return_pending:
            return x, pending
        # dropout off: the last residual add, which GPT fuses into the next LayerNorm, done plainly
        # (x's dtype wins, as the reference's x + mlp(...) under autocast)
        return x if pending is None else x + pending


# ----------------------------------------------------------------------------- HF interop tables

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_SKIP = (".attn.bias", ".attn.masked_bias", "position_ids")  # buffers, not weights
_GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
             "gelu": "gelu"}
_OPENAI_ACT = {"gelu": "gelu_tanh"}             # HF's OpenAI GPT maps afn="gelu" to gelu_new (tanh)


def _hf_get(c, key, default=None):
    return c.get(key, default) if isinstance(c, dict) else getattr(c, key, default)


def _config_from_hf(c) -> GPTConfig:
    """GPTConfig for an HF GPT2Config / OpenAIGPTConfig (object or config.json dict)."""
    mt = _hf_get(c, "model_type")
    common = dict(vocab_size=_hf_get(c, "vocab_size"), block_size=_hf_get(c, "n_positions"),
                  n_layer=_hf_get(c, "n_layer"), n_head=_hf_get(c, "n_head"), n_embd=_hf_get(c, "n_embd"),
                  layer_norm_eps=float(_hf_get(c, "layer_norm_epsilon", 1e-5)),
                  dropout=float(_hf_get(c, "resid_pdrop", 0.1)), bias=True)
    rates = {k: float(_hf_get(c, k, 0.1)) for k in ("resid_pdrop", "attn_pdrop", "embd_pdrop")}
    if len(set(rates.values())) > 1:
        warnings.warn(f"from_hf: fastgpt has one dropout rate; cfg.dropout = resid_pdrop = {rates['resid_pdrop']} "
                      f"(attn_pdrop {rates['attn_pdrop']} and embd_pdrop {rates['embd_pdrop']} are not kept)",
                      stacklevel=3)
    if _hf_get(c, "tie_word_embeddings", True) is False:
        raise ValueError("from_hf: untied LM head (tie_word_embeddings=False) is not supported")
    if mt == "gpt2":
        act = _hf_get(c, "activation_function", "gelu_new")
        if act not in _GPT2_ACT:
            raise ValueError(f"from_hf: GPT-2 activation_function {act!r} is not supported "
                             f"(supported: {sorted(_GPT2_ACT)})")
        n_inner = _hf_get(c, "n_inner")
        if n_inner not in (None, 4 * common["n_embd"]):
            raise ValueError(f"from_hf: n_inner={n_inner} is not supported (the MLP is 4 * n_embd wide)")
        for flag, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                           ("add_cross_attention", False)):
            if bool(_hf_get(c, flag, want)) != want:
                raise ValueError(f"from_hf: GPT-2 with {flag}={not want} is not supported")
        return GPTConfig(norm="pre", activation=_GPT2_ACT[act], **common)
    if mt == "openai-gpt":
        afn = _hf_get(c, "afn", "gelu")
        if afn not in _OPENAI_ACT:
            raise ValueError(f"from_hf: OpenAI GPT afn {afn!r} is not supported (supported: 'gelu')")
        return GPTConfig(norm="post", activation=_OPENAI_ACT[afn], **common)
    raise ValueError(f"from_hf: model_type {mt!r} is not supported (expected 'gpt2' or 'openai-gpt')")


def _from_hf_keys(sd: dict, model_type: str) -> dict:
    """HF state dict (with or without the 'transformer.' prefix) -> fastgpt names, nn.Linear layout."""
    emb = {"tokens_embed.weight": "wte.weight", "positions_embed.weight": "wpe.weight"} \
        if model_type == "openai-gpt" else {}
    if any(k.startswith("transformer.") for k in sd):
        heads = sorted(k for k in sd if not k.startswith("transformer.") and k != "lm_head.weight")
        if heads:
            raise ValueError(f"from_hf: weights outside the transformer and its tied LM head ({', '.join(heads[:4])}): "
                             "task heads (DoubleHeads, SequenceClassification, ...) are not loaded; pass the "
                             "model's .transformer (the bare GPT2Model / OpenAIGPTModel) instead")
    out = {}
    for k, v in sd.items():
        if k == "lm_head.weight" or k.endswith(_HF_SKIP):
            continue
        k = k[len("transformer."):] if k.startswith("transformer.") else k
        k = emb.get(k, k)
        if k.endswith(_CONV1D):
            v = v.t()
        out["transformer." + k] = v
    if "lm_head.weight" in sd and "transformer.wte.weight" in out:
        if not torch.equal(sd["lm_head.weight"], out["transformer.wte.weight"]):
            raise ValueError("from_hf: lm_head.weight differs from the token embedding; only tied heads are supported")
    return out


def _read_hf_dir(path: str):
    """(config dict, state dict) of an HF-format directory (safetensors, sharded or not, or .bin)."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    st, idx, binf = (os.path.join(path, n) for n in
                     ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))
    if os.path.exists(st) or os.path.exists(idx):
        from safetensors.torch import load_file
        if os.path.exists(st):
            sd = load_file(st)
        else:
            with open(idx) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            sd = {}
            for name in files:
                sd.update(load_file(os.path.join(path, name)))
    elif os.path.exists(binf):
        sd = torch.load(binf, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"from_hf: {path} has a config.json but no model.safetensors or pytorch_model.bin")
    return cfg, sd


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_FILE_ENDINGS = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".json", ".jsonl", ".txt", ".csv")   # not Hub ids
_HUB_WEIGHTS = (["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"], ["pytorch_model.bin"])


def hub_folder(name: str, offline: Optional[bool] = None) -> str:
    """The local folder of a Hugging Face Hub model id (``gpt2``, ``openai-community/gpt2-medium``): its
    config.json, checked to be a GPT-2 / OpenAI GPT one before anything else is fetched, and its weights
    (safetensors, else pytorch_model.bin), fetched once into the HF cache with huggingface_hub. ``offline``
    (None: $FASTGPT_OFFLINE; HF_HUB_OFFLINE works too): read that cache only. Call it for a path that does
    not exist: FileNotFoundError (one line) when ``name`` cannot be a Hub id (a file name, a deeper path) or
    the Hub does not give it; ValueError when its config is not one fastgpt loads."""
    missing = f"{name}: no such file or folder"
    if not _HUB_ID.fullmatch(name) or ".." in name or name.lower().endswith(_FILE_ENDINGS):
        raise FileNotFoundError(missing)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{missing} (a Hugging Face Hub id needs huggingface_hub: "
                                "pip install huggingface_hub)") from None
    if offline is None:
        from fastgpt.cli import env_flag
        offline = env_flag("FASTGPT_OFFLINE")

    def fetch(patterns) -> str:
        try:
            return snapshot_download(name, allow_patterns=patterns, local_files_only=bool(offline))
        except Exception as e:   # not on the Hub, no network, a gated model, not in the cache offline, ...
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
            first = first.split(". ")[0]   # its first sentence (it was cut at 160 characters, mid-sentence)
            first = first if len(first) <= 200 else first[:200].rsplit(" ", 1)[0] + " ..."
            where = "the Hugging Face cache has (offline)" if offline else "the Hugging Face Hub gives"
            raise FileNotFoundError(f"{missing}, nor a model {where} ({type(e).__name__}"
                                    f"{': ' + first if first else ''})") from None
    folder = fetch(["config.json"])
    try:
        _config_from_hf(_read_config_json(folder))   # before gigabytes of weights
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"{name}: {str(e).removeprefix('from_hf: ')}") from None
    for patterns in _HUB_WEIGHTS:
        folder = fetch(["config.json", *patterns])
        if any(os.path.exists(os.path.join(folder, f)) for f in patterns if "*" not in f):
            break
    return folder


def _read_config_json(path: str) -> dict:
    p = os.path.join(path, "config.json")
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{path}: no config.json (not a fastgpt or HF model directory)")
    with open(p, encoding="utf-8") as f:
        try:
            meta = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            where = f"{e.msg}, line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise ValueError(f"{p}: not valid JSON ({where}): a save cut short, or not a model's config") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{p}: expected a JSON object (a model's config), got a JSON {type(meta).__name__}")
    return meta


# ----------------------------------------------------------------------------- the model

def _retie_head(model: "GPT", incompatible_keys) -> None:
    """A load_state_dict post-hook (it runs for submodules too): assign=True gives lm_head and wte a
    Parameter each."""
    if model.lm_head.weight is not model.transformer.wte.weight:
        model.tie_weights()


class GPT(nn.Module):
    """GPT-1 (cfg.norm="post") or GPT-2 (cfg.norm="pre") language model on fastgpt's ops.

    Names: transformer.wte, transformer.wpe, transformer.h.N.*, transformer.ln_f
    (pre-LN only), lm_head (tied to wte). The embedding matrix has
    cfg.padded_vocab_size rows; see fastgpt.config for what the padding means.
    """

    def __init__(self, cfg: GPTConfig, backend: Optional[str] = None):
        super().__init__()
        cfg = _config_arg(cfg, "GPT")
        cfg.validate()
        self.config = cfg
        modules = dict(
            wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([GPTBlock(cfg, backend) for _ in range(cfg.n_layer)]),
        )
        if cfg.norm == "pre":
            modules["ln_f"] = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        self.tie_weights()
        self.register_load_state_dict_post_hook(_retie_head)
        self.backend = backend
        self.reset_parameters()

    # -- the tied head
    def tie_weights(self) -> None:
        """lm_head.weight IS transformer.wte.weight (one Parameter). PyTorch idioms that replace
        parameters module by module (to_empty from the meta device, load_state_dict(assign=True), also
        through a module holding this one) would untie them; _apply and a load hook tie them again."""
        self.lm_head.weight = self.transformer.wte.weight

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.lm_head.weight is not self.transformer.wte.weight:
            self.tie_weights()
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # (called for this module by any load_state_dict, its own or a parent's, before its children load,
        # with load_state_dict's own copy of the dict: keys set here are not the caller's)
        head_key, wte_key = prefix + "lm_head.weight", prefix + "transformer.wte.weight"
        head, wte = state_dict.get(head_key), state_dict.get(wte_key)
        V, Vp = self.config.vocab_size, self.config.padded_vocab_size

        def pad(t):   # vocab_size rows (nanoGPT's or HF's state dict): the padded rows are zero
            if t is None or V == Vp or t.dim() != 2 or t.shape[0] != V:
                return t
            return torch.cat([t, t.new_zeros(Vp - V, t.shape[1])])
        tied = head is None or head is wte   # the head not stored (save_pretrained's model.safetensors), or wte
        wte = pad(wte)
        head = wte if tied else pad(head)
        for key, t in ((wte_key, wte), (head_key, head)):
            if t is not None:
                state_dict[key] = t
        if (head is not None and wte is not None and head is not wte and head.shape == wte.shape
                and "meta" not in (head.device.type, wte.device.type)
                and not torch.equal(head, wte.to(head.dtype))):
            raise ValueError(f"GPT.load_state_dict: {prefix}lm_head.weight differs from "
                             f"{prefix}transformer.wte.weight; fastgpt's GPT ties them (an untied head is not supported)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- backend: a runtime attribute, shared with every block
    @property
    def backend(self):
        return self._backend

    @backend.setter
    def backend(self, value):
        self._backend = _check_backend(value)
        for b in self._blocks():
            b.backend = value

    def _blocks(self):
        """The GPTBlocks, also where a wrapper stands in a block's place (checkpoint_wrapper, torch.compile:
        an attribute set on the wrapper would not reach the block)."""
        return [m for m in self.transformer.h.modules() if isinstance(m, GPTBlock)]

    def set_dropout(self, p: float) -> None:
        """Change the dropout rate of every place it acts (embeddings, attention weights, residuals) and of
        ``config``: fine-tuning a model pre-trained without dropout, or the other way round."""
        cfg = self.config.replace(dropout=p)
        cfg.validate()
        self.config = cfg
        self.transformer.drop.p = float(p)
        for b in self._blocks():
            b.dropout = float(p)

    # -- init and size
    @torch.no_grad()
    def reset_parameters(self):
        """The papers' init: N(0, 0.02) weights, zero biases, unit LayerNorms; with GPT-2's pre-LN
        (norm="pre") the residual projections (attn.c_proj, mlp.c_proj) get std 0.02 / sqrt(2 * n_layer),
        GPT-2's scaling (GPT-1, post-LN, has none: its paper's N(0, 0.02) and HF's OpenAIGPT init);
        the padded vocabulary rows are zero."""
        std = 0.02
        scaled = std / math.sqrt(2 * self.config.n_layer) if self.config.norm == "pre" else std
        self.tie_weights()
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                if m is self.lm_head:
                    continue  # tied to wte
                s = scaled if name.endswith("c_proj") else std
                nn.init.normal_(m.weight, 0.0, s)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        self.transformer.wte.weight[self.config.vocab_size:].zero_()

    @torch.no_grad()
    def resize_token_embeddings(self, vocab_size: int, std: float = 0.02) -> None:
        """Grow the vocabulary to ``vocab_size`` tokens (e.g. fine-tuning's special tokens).

        The tied table is rebuilt at the config's padded size (DESIGN.md: a multiple
        of 64): the old rows are kept, new rows are drawn N(0, std), padding rows are
        zero; lm_head stays tied to it and ``config.vocab_size`` is updated. Shrinking
        is refused (rows of trained tokens would be lost silently).
        """
        V = self.config.vocab_size
        if vocab_size < V:
            raise ValueError(f"resize_token_embeddings: {vocab_size} < the current vocabulary {V}; only growing "
                             "is supported")
        cfg = self.config.replace(vocab_size=vocab_size)
        old = self.transformer.wte.weight
        W = old.new_zeros(cfg.padded_vocab_size, old.shape[1])
        W[:V] = old[:V]
        W[V:vocab_size].normal_(0.0, std)
        wte = self.transformer.wte
        wte.weight = nn.Parameter(W, requires_grad=old.requires_grad)
        wte.num_embeddings = W.shape[0]
        self.tie_weights()
        self.lm_head.out_features = W.shape[0]
        self.config = cfg

    def num_params(self, exclude_positions: bool = True) -> int:
        """Parameters (the tied head counted once); without the position embeddings by
        default, the N of DESIGN.md's MFU formula."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if exclude_positions else n

    def flops_per_token(self, T: Optional[int] = None) -> float:
        """Training FLOPs per token (DESIGN.md): 6N + 12 * L * H * D * T."""
        c = self.config
        T = c.block_size if T is None else T
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * c.head_dim * T

    # -- forward
    def hidden_states(self, idx: torch.Tensor, kv_cache: Optional[KVCache] = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, C) final hidden states (after ln_f in pre-LN)."""
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            raise ValueError("GPT: idx must be (B, T) token ids, got "
                             + (f"shape {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__))
        check_token_ids(idx, self.config.vocab_size, "GPT")
        B, T = idx.shape
        start = 0 if kv_cache is None else kv_cache.pos
        if start + T > self.config.block_size:
            raise ValueError(f"GPT: sequence length {start + T} exceeds block_size {self.config.block_size}")
        tr = self.transformer
        pos = torch.arange(start, start + T, device=idx.device)
        x = tr.drop(tr.wte(idx) + tr.wpe(pos))
        if self.config.residual_dtype is not None:
            rd = getattr(torch, self.config.residual_dtype)
            if rd != x.dtype and not reference.autocast_on(idx.device.type):
                # the sublayers' matmuls would meet a residual-dtype activation and x.dtype weights
                raise ValueError(f"GPT: residual_dtype={self.config.residual_dtype!r} runs under torch.autocast "
                                 f"(or with the model in that dtype); the weights are {x.dtype} and autocast is off")
            x = x.to(rd)
        pending = None
        for i, block in enumerate(tr.h):   # called as modules: their hooks, compile and wrappers act
            kv = None if kv_cache is None else (kv_cache, i)
            if isinstance(block, GPTBlock):
                x, pending = block(x, pending, kv=kv, return_pending=True)
            else:   # a wrapper in its place (activation checkpointing, torch.compile): a block's forward(x)
                x = x if pending is None else x + pending
                x, pending = block(x) if kv is None else block(x, kv=kv), None
        if kv_cache is not None:
            kv_cache.pos += T
        if self.config.norm == "post":
            return x
        ln = tr.ln_f
        if not _plain(ln, nn.LayerNorm):
            return ln(x if pending is None else x + pending)
        if pending is None:
            return ops.layer_norm(x, ln.weight, ln.bias, self.config.layer_norm_eps, backend=self.backend)
        return ops.add_layer_norm(pending, x, ln.weight, ln.bias, self.config.layer_norm_eps,
                                  backend=self.backend)[0]

    def forward(self, idx, targets=None, return_logits: bool = True, reduction: str = "mean"):
        """(logits, loss). logits: (B, T, vocab_size) (the padded columns are never
        returned), None when return_logits=False. loss: cross-entropy over the
        targets != -100, their mean (0 when there are none) or with reduction="sum"
        their sum (the training loop divides that by the step's global count of such
        targets), None without targets.

        With return_logits=False the loss comes from ops.fused_linear_cross_entropy
        (the logits are never materialised); with logits it is the same function
        computed from the returned logits (in fp32 from the autocast-dtype logits).
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"GPT: reduction must be 'mean' or 'sum', got {reduction!r}")
        if targets is not None and not isinstance(targets, torch.Tensor):
            raise TypeError(f"GPT: targets must be a tensor of class indices, got {type(targets).__name__}")
        if targets is not None and targets.dtype != torch.int64:  # (the logits path had torch's RuntimeError)
            raise TypeError(f"GPT: targets must be int64 (class indices), got {targets.dtype}")
        if targets is not None and isinstance(idx, torch.Tensor) and targets.shape != idx.shape:
            # (the same number of elements in another shape was paired with the wrong positions)
            raise ValueError(f"GPT: targets must have idx's shape {tuple(idx.shape)}, got {tuple(targets.shape)}")
        h = self.hidden_states(idx)
        if not return_logits:
            return None, (None if targets is None else self.lm_loss(h, targets, reduction))
        logits = self._logits(h)
        return logits, (None if targets is None else _cross_entropy(logits, targets, reduction=reduction))

    def lm_loss(self, h, targets, reduction: str = "mean"):
        """The LM head's cross-entropy on final hidden states h (..., C) against targets (-100: ignored):
        ops.fused_linear_cross_entropy (no logits in memory) while lm_head is a plain nn.Linear without hooks,
        else through lm_head called as a module. forward(return_logits=False) and fine-tuning's auxiliary
        loss use it."""
        if _plain(self.lm_head, nn.Linear):
            return ops.fused_linear_cross_entropy(h, self.lm_head.weight[:self.config.vocab_size], targets,
                                                  reduction=reduction, backend=self.backend)
        return _cross_entropy(self._logits(h), targets, reduction=reduction)

    def _logits(self, h):
        """lm_head(h) without the padded columns (a view: the GEMM runs on the padded, aligned vocabulary),
        the head called as a module when it is not plain."""
        logits = F.linear(h, self.lm_head.weight) if _plain(self.lm_head, nn.Linear) else self.lm_head(h)
        V = self.config.vocab_size
        return logits if logits.shape[-1] == V else logits[..., :V]

    # -- optimiser
    def configure_optimizers(self, weight_decay: float = 0.1, learning_rate: float = 6e-4,
                             betas=(0.9, 0.95), device_type: Optional[str] = None, eps: float = 1e-8,
                             fused: Optional[bool] = None):
        """AdamW with two groups: matrices and embeddings decay, biases and LayerNorms do not.
        The first four arguments in nanoGPT's order (weight_decay, learning_rate, betas, device_type).

        fused=None uses the fused AdamW on CUDA where this torch has it.
        """
        params = [p for p in self.parameters() if p.requires_grad]  # the tied weight appears once
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
        if device_type is None:
            device_type = next(self.parameters()).device.type
        if fused is None:
            fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        kw = dict(fused=True) if fused else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(betas), eps=eps, **kw)

    # -- generation
    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, use_cache: bool = True,
                 generator: Optional[torch.Generator] = None,
                 on_token: Optional[Callable[[torch.Tensor], None]] = None,
                 n_vocab: Optional[int] = None) -> torch.Tensor:
        """Append max_new_tokens sampled tokens to idx (B, T) and return (B, T + new).

        temperature=0 is greedy (argmax). top_k keeps the k most likely tokens,
        top_p the smallest set whose probability reaches p. With use_cache the
        prompt is run once and each new token attends to cached keys/values;
        beyond block_size the context is the last block_size tokens, recomputed
        each step (as without the cache), so both give the same logits.
        ``on_token`` is called with each new (B, 1) token tensor as it is sampled
        (to stream, or to keep the tokens so far when interrupted). ``n_vocab``
        samples only ids below it (a tokenizer with fewer ids than the model's vocabulary).
        """
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError("generate: idx must be a (B, T) tensor of token ids with T >= 1 (a prompt), got "
                             + (f"shape {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__))
        check_token_ids(idx, self.config.vocab_size, "generate", on_host=True)   # the prompt, once
        max_new_tokens = _whole(max_new_tokens, "max_new_tokens")
        if max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
        temperature = _real(temperature, "temperature")
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"generate: temperature must be a finite number >= 0, got {temperature}")
        if top_k is not None:
            top_k = _whole(top_k, "top_k")
            if top_k < 1:
                raise ValueError(f"generate: top_k must be >= 1, got {top_k}")
        top_p = None if top_p is None else _real(top_p, "top_p")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
        n_vocab = self.config.vocab_size if n_vocab is None else _whole(n_vocab, "n_vocab")
        if not 1 <= n_vocab <= self.config.vocab_size:
            raise ValueError(f"generate: n_vocab must be in [1, {self.config.vocab_size}], got {n_vocab}")
        if on_token is not None and not callable(on_token):   # (was a TypeError after the first token's work)
            raise TypeError(f"generate: on_token must be callable, got {type(on_token).__name__}")
        was_training = self.training
        self.eval()
        try:
            bs = self.config.block_size
            # the cache holds the positions fed while the context fits: the prompt, then each new token but
            # the last (a cache of block_size positions for a short sample would be mostly unused memory)
            cache = KVCache(self.config.n_layer, min(bs, idx.shape[1] + max_new_tokens - 1)) if use_cache else None
            for _ in range(max_new_tokens):
                if cache is not None and idx.shape[1] <= bs:
                    logits = self._next_logits(idx[:, cache.pos:], cache)
                else:
                    logits = self._next_logits(idx[:, -bs:], None)
                # (in the prompt's dtype: an int32 prompt came back int64)
                nxt = sample_next(logits[:, :n_vocab], temperature, top_k, top_p, generator).to(idx.dtype)
                idx = torch.cat([idx, nxt], dim=1)
                if on_token is not None:
                    on_token(nxt)
        finally:
            self.train(was_training)
        return idx

    def _next_logits(self, idx, cache):
        return self._logits(self.hidden_states(idx, cache)[:, -1, :]).float()

    # -- HF interop
    @classmethod
    def from_hf(cls, src, backend: Optional[str] = None) -> "GPT":
        """From a transformers GPT2LMHeadModel / OpenAIGPTLMHeadModel (or GPT2Model /
        OpenAIGPTModel), a local HF-format directory (config.json + weights), or a Hugging Face Hub id
        such as "gpt2" (see hub_folder: fetched once).

        Like every loader here it returns the model in eval mode (call .train() to train);
        cfg.dropout is HF's resid_pdrop."""
        if isinstance(src, (str, os.PathLike)):
            path = os.fspath(src)
            if not os.path.exists(path):
                try:
                    path = hub_folder(path)
                except (FileNotFoundError, ValueError) as e:
                    raise type(e)(f"from_hf: {e}") from None
            cfg_json = _read_config_json(path)
            if cfg_json.get("format") == FORMAT:
                raise ValueError(f"from_hf: {path} is a fastgpt directory; load it with GPT.from_pretrained")
            cfg = _config_from_hf(cfg_json)   # (an unsupported model says so before its weights are read)
            hf_cfg, sd = _read_hf_dir(path)
        elif hasattr(src, "config") and hasattr(src, "state_dict"):
            hf_cfg, sd = src.config, src.state_dict()
            cfg = _config_from_hf(hf_cfg)
        else:
            raise TypeError(f"from_hf: expected an HF model object or a directory, got {type(src).__name__}")
        model = cls(cfg, backend=backend)
        model._load_core(_from_hf_keys(sd, _hf_get(hf_cfg, "model_type")), "from_hf")
        return model.eval()

    def _load_core(self, sd: dict, where: str):
        """Load a state dict in fastgpt names whose wte may have vocab_size or padded rows."""
        sd = dict(sd)
        sd.pop("lm_head.weight", None)   # GPT._load_from_state_dict ties it to wte (padded to padded_vocab_size)
        try:
            missing, unexpected = self.load_state_dict(sd, strict=False)
        except RuntimeError as e:   # shapes that do not fit this config
            raise ValueError(f"{where}: state dict does not fit the config: "
                             f"{' '.join(str(e).split())[:300]}") from None
        if missing or unexpected:
            raise ValueError(f"{where}: state dict mismatch: missing {missing[:6]}, unexpected {unexpected[:6]}")

    def to_hf_state_dict(self) -> dict:
        """The state dict of the matching HF model (GPT2LMHeadModel for pre-LN,
        OpenAIGPTLMHeadModel for post-LN): Conv1D layout, vocab_size rows, tied lm_head."""
        self._require_hf("to_hf_state_dict")   # (it returned a dict without biases: HF loads that only non-strictly)
        post = self.config.norm == "post"
        emb = {"wte.weight": "tokens_embed.weight", "wpe.weight": "positions_embed.weight"} if post else {}
        out = {}
        for k, v in self.state_dict().items():
            if k == "lm_head.weight":
                continue
            k = k[len("transformer."):]
            if k == "wte.weight":
                v = v[: self.config.vocab_size]
            if k.endswith(_CONV1D):
                v = v.t()
            out["transformer." + emb.get(k, k)] = v.detach().contiguous()
        wte_key = "transformer." + emb.get("wte.weight", "wte.weight")
        out["lm_head.weight"] = out[wte_key]
        return out

    def _require_hf(self, where: str) -> None:
        """This architecture has an HF counterpart (biases; post-LN only with the tanh GELU)."""
        c = self.config
        if not c.bias:
            raise ValueError(f"{where}: HF GPT-2 / OpenAI GPT have biases; this model has bias=False")
        if c.norm == "post" and c.activation != "gelu_tanh":
            raise ValueError(f"{where}: HF OpenAI GPT has only the tanh GELU (afn='gelu'); this model uses exact "
                             "erf GELU")

    def hf_config(self):
        """The transformers config (GPT2Config / OpenAIGPTConfig) of this architecture."""
        c = self.config
        self._require_hf("hf_config")
        common = dict(vocab_size=c.vocab_size, n_positions=c.block_size, n_layer=c.n_layer, n_head=c.n_head,
                      n_embd=c.n_embd, layer_norm_epsilon=c.layer_norm_eps, resid_pdrop=c.dropout,
                      embd_pdrop=c.dropout, attn_pdrop=c.dropout)
        if c.norm == "post":
            from transformers import OpenAIGPTConfig
            return OpenAIGPTConfig(afn="gelu", **common)
        from transformers import GPT2Config
        # GPT2Config's end-of-text id (50256) is GPT-2's tokenizer's; another vocabulary has none we know
        ids = {} if c.vocab_size > 50256 else dict(bos_token_id=None, eos_token_id=None)
        return GPT2Config(activation_function="gelu_new" if c.activation == "gelu_tanh" else "gelu", **common, **ids)

    def to_hf(self):
        """A transformers GPT2LMHeadModel / OpenAIGPTLMHeadModel with these weights."""
        from transformers import GPT2LMHeadModel, OpenAIGPTLMHeadModel
        cls = OpenAIGPTLMHeadModel if self.config.norm == "post" else GPT2LMHeadModel
        hf = cls(self.hf_config())
        hf.load_state_dict(self.to_hf_state_dict(), strict=True)
        return hf.to(self.transformer.wte.weight.device)

    # -- our own format
    def save_pretrained(self, path) -> None:
        """config.json ({"format": "fastgpt", "version", "config"}) + model.safetensors
        (the tied wte / lm_head weight stored once)."""
        from safetensors.torch import save_file
        path = os.fspath(path)
        # the JSON first (a config.extra value that is not JSON fails before a file is touched), then
        # each file to a temp name and renamed over the old one: a failed or interrupted save leaves
        # the previous save whole (it had left new weights beside an emptied config.json), but for a
        # crash between the two renames (train and finetune swap in their model/ folder whole)
        text = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "config": self.config.to_dict()}, indent=2)
        os.makedirs(path, exist_ok=True)
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if k != "lm_head.weight"}
        weights, config = (os.path.join(path, n) for n in ("model.safetensors", "config.json"))
        tmp_w, tmp_c = (os.path.join(path, f".{n}.tmp{os.getpid()}") for n in ("model.safetensors", "config.json"))
        try:
            save_file(sd, tmp_w, metadata={"format": "pt"})
            with open(tmp_c, "w") as f:
                f.write(text)
            from fastgpt.checkpoint import fsync_dir, fsync_file
            from fastgpt.cli import same_mode_as
            same_mode_as(tmp_w, tmp_c)   # (safetensors made it 0600 whatever the umask)
            for t in (tmp_w, tmp_c):
                fsync_file(t)   # a power loss after the renames cannot leave the names on empty files
            os.replace(tmp_w, weights)
            os.replace(tmp_c, config)
            fsync_dir(path)
        finally:
            for t in (tmp_w, tmp_c):
                if os.path.exists(t):
                    os.unlink(t)

    @classmethod
    def from_pretrained(cls, path, backend: Optional[str] = None, map_location="cpu") -> "GPT":
        """Load a save_pretrained directory (an HF-format directory is passed to from_hf), in eval mode."""
        path = os.fspath(path)
        meta = _read_config_json(path)
        if meta.get("format") != FORMAT:
            if "model_type" in meta:
                return cls.from_hf(path, backend=backend).to(map_location)
            raise ValueError(f"from_pretrained: {path}/config.json is neither fastgpt's nor an HF config")
        if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("version", 0), int):
            raise ValueError(f"from_pretrained: {path}/config.json has no config object or a bad version: "
                             "a damaged save")
        if meta.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"from_pretrained: {path} has format version {meta['version']}, "
                             f"newer than this fastgpt's {FORMAT_VERSION}; upgrade fastgpt")
        from safetensors.torch import load_file
        model = cls(GPTConfig.from_dict(meta["config"]), backend=backend)
        dev = torch.device(map_location)   # (safetensors takes "cpu", not "cpu:0")
        sd = load_file(os.path.join(path, "model.safetensors"), device="cpu" if dev.type == "cpu" else str(dev))
        model.to(map_location)._load_core(sd, "from_pretrained")
        return model.eval()


# ----------------------------------------------------------------------------- helpers

def check_token_ids(idx: torch.Tensor, vocab_size: int, who: str, on_host: bool = False) -> None:
    """idx holds integer ids in [0, vocab_size): a TypeError for another dtype; for an id out of range a
    ValueError on the CPU (or with ``on_host``: it reads the ids back), else an asynchronous device assert
    (no sync). Ids in the padding past vocab_size were read silently, ones past it were the embedding's
    IndexError (CPU) or an unexplained device assert."""
    if idx.dtype not in (torch.int64, torch.int32):   # (the embedding's index dtypes)
        raise TypeError(f"{who}: idx must hold integer token ids (int64 or int32), got {idx.dtype}")
    if idx.numel() == 0 or idx.device.type == "meta":
        return
    msg = f"{who}: token ids must be in [0, {vocab_size})"
    if (on_host or idx.device.type == "cpu") and not torch.compiler.is_compiling():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{msg}, got {lo if lo < 0 else hi}")
    else:
        torch._assert_async(((idx >= 0) & (idx < vocab_size)).all(), msg)


def _whole(v, name: str) -> int:
    """v as an int (a Python or NumPy integer, not a bool or a float); else generate's ValueError."""
    if not isinstance(v, bool):
        try:
            return operator.index(v)
        except TypeError:
            pass
    raise ValueError(f"generate: {name} must be a whole number, got {v!r}")


def _real(v, name: str) -> float:
    """v as a float (a Python, NumPy or one-element tensor number, not a string); else generate's ValueError."""
    if not isinstance(v, (str, bytes)):
        try:
            return float(v)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise ValueError(f"generate: {name} must be a number, got {v!r}")


def _cross_entropy(logits, targets, ignore_index: int = -100, reduction: str = "mean"):
    """fastgpt.reference.fused_linear_cross_entropy's semantics on given logits, in fp32 (fp64 logits: fp64):
    the sum over targets != ignore_index, or ("mean") that sum over their count (0 when there are none)."""
    V = logits.shape[-1]
    t = targets.reshape(-1)
    reference.check_targets("GPT", t, V, ignore_index)
    logits = logits.reshape(-1, V)
    if logits.dtype not in (torch.float32, torch.float64):   # (a float64 model's loss stays in float64)
        logits = logits.float()
    loss = F.cross_entropy(logits, t, ignore_index=ignore_index, reduction="sum")
    return loss if reduction == "sum" else loss / (t != ignore_index).sum().clamp_min(1)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, V) logits -> (B, 1) token ids (temperature 0: argmax)."""
    if temperature < torch.finfo(torch.float32).tiny:   # 0, or 0 once in fp32: greedy
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float()
    # the row's max first: a tiny temperature sends the others to -inf, never the max to inf (no NaN)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs >= top_p       # the mass before this token already reaches p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


NANOGPT_GPT2_VOCAB = 50304   # nanoGPT's vocab_size for GPT-2's tokenizer, padded to a multiple of 64


def load_model(path, backend: Optional[str] = None, map_location="cpu") -> GPT:
    """A GPT (eval mode) from any of fastgpt's formats:

    * a save_pretrained directory, or an HF-format directory (config.json + weights);
    * a training checkpoint (fastgpt.checkpoint: a ckpt_*.pt file, or the out_dir holding them);
    * a torch.save'd dict with "config" (a GPTConfig dict) and "model" (a state dict);
    * a nanoGPT checkpoint (its train.py's ckpt.pt: "model_args" and "model"; GPTConfig.from_nanogpt); its
      padded GPT-2 vocabulary (50304) is read as GPT-2's 50257 tokens with the gpt2 tokenizer.

    A torch.compile "_orig_mod." prefix on the state dict is stripped. When the
    file names its tokenizer ("gpt2" | "byte"), it lands in config.extra["tokenizer"].
    """
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        return GPT.from_pretrained(path, backend=backend, map_location=map_location)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_model: {path} does not exist")
    if os.path.isdir(path):
        from fastgpt.checkpoint import newest_readable
        ckpt_path, skipped = newest_readable(path)
        if ckpt_path is None:
            raise FileNotFoundError(f"load_model: {path} has no config.json and no readable ckpt_*.pt"
                                    + "".join(f" ({p.name}: {why})" for p, why in skipped))
        for p, why in skipped:
            warnings.warn(f"load_model: skipping {p}: {why}", stacklevel=2)
        path = os.fspath(ckpt_path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:   # not a torch file, cut short, objects weights_only refuses (a pickled GPTConfig)
        from fastgpt.cli import out_of_memory
        if isinstance(e, FileNotFoundError) or out_of_memory(e, "") is not None:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"load_model: {path} is not a readable torch checkpoint ({type(e).__name__}: {first})") \
            from None
    cfg = ckpt.get("model_config", ckpt.get("config")) if isinstance(ckpt, dict) else None
    nanogpt = isinstance(ckpt, dict) and isinstance(ckpt.get("model_args"), dict)
    if not ((isinstance(cfg, dict) or nanogpt) and isinstance(ckpt.get("model"), dict)):
        raise ValueError(f"load_model: {path} is not a fastgpt or nanoGPT checkpoint (no model / model_config / "
                         "model_args)")
    try:
        cfg = GPTConfig.from_nanogpt(ckpt["model_args"]) if nanogpt else GPTConfig.from_dict(cfg)
    except TypeError as e:
        raise ValueError(f"load_model: {path}: {e}") from None
    if nanogpt and cfg.vocab_size == NANOGPT_GPT2_VOCAB:   # GPT-2's 50257 tokens, padded (the rest never targets)
        cfg = cfg.replace(vocab_size=50257, extra=dict(tokenizer="gpt2"))
    if isinstance(ckpt.get("tokenizer"), str):
        cfg.extra["tokenizer"] = ckpt["tokenizer"]
    model = GPT(cfg, backend=backend).to(map_location)
    sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    if nanogpt:   # nanoGPT before PyTorch 2 kept each block's causal mask as a buffer "attn.bias"
        sd = {k: v for k, v in sd.items() if not (k.endswith(".attn.bias") and v.dim() == 4)}
    model._load_core(sd, "load_model")
    return model.eval()
