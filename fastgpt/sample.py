"""Sample text from a trained or pretrained GPT: python -m fastgpt.sample PATH [options]

PATH is a save_pretrained directory, an HF-format GPT-2 / OpenAI-GPT directory,
or a training checkpoint (a ckpt_*.pt file or the out_dir holding them); see
fastgpt.model.load_model.

    python -m fastgpt.sample out/ --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8 --top-k 200
    python -m fastgpt.sample out/ --num-samples 3 --seed 1 --dtype bf16

Decoding uses the KV cache (--no-cache recomputes the context every step); the
throughput (generated tokens/s, after one warm-up run when --warmup) is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from fastgpt.model import load_model


def _tokenizer(name: str, cfg):
    """fastgpt.data's tokenizer ("byte" | "gpt2"); "auto" reads the checkpoint, else the vocab size."""
    if name == "auto":
        name = cfg.extra.get("tokenizer") or ("byte" if cfg.vocab_size == 256 else
                                              "gpt2" if cfg.vocab_size == 50257 else None)
        if name is None:
            raise SystemExit(f"sample: cannot tell the tokenizer of a {cfg.vocab_size}-token vocabulary; "
                             "pass --tokenizer byte|gpt2")
    from fastgpt.data import get_tokenizer
    return get_tokenizer(name)


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="save_pretrained dir, HF dir, or training checkpoint (file or out_dir)")
    ap.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--num-samples", type=int, default=1, help="samples, decoded as one batch")
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=200)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype on CUDA")
    ap.add_argument("--backend", default=None, choices=["fused", "reference"])
    ap.add_argument("--tokenizer", default="auto", choices=["auto", "byte", "gpt2"])
    ap.add_argument("--no-cache", action="store_true", help="recompute the whole context every step")
    ap.add_argument("--warmup", action="store_true", help="one untimed run first (kernel compilation)")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(args.path, backend=args.backend, map_location=device)
    tok = _tokenizer(args.tokenizer, model.config)
    ids = tok.encode(args.prompt)
    if not ids:
        raise SystemExit("sample: the prompt encodes to no tokens")
    idx = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    kw = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, use_cache=not args.no_cache)
    with _autocast(device, args.dtype):
        if args.warmup:
            model.generate(idx, min(args.max_new_tokens, 8), generator=torch.Generator(device=device), **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(idx, args.max_new_tokens, generator=gen, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    for i, row in enumerate(out.tolist()):
        if args.num_samples > 1:
            print(f"---------- sample {i + 1}")
        print(tok.decode(row))
    n = args.num_samples * args.max_new_tokens
    print(f"---------- {n} tokens in {dt:.2f} s: {n / dt:.1f} tok/s "
          f"({'KV cache' if not args.no_cache else 'no cache'}, {device.type}, backend "
          f"{args.backend or 'auto'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
