"""Sample text from a trained or pretrained GPT: python -m fastgpt.sample PATH [options]

PATH is a save_pretrained directory, an HF-format GPT-2 directory (OpenAI-GPT
weights load as well, but GPT-1's BPE tokenizer is not part of fastgpt, so they
cannot be sampled here), or a training checkpoint (a ckpt_*.pt file or the out_dir
holding them; nanoGPT's ckpt.pt or its out_dir too); see fastgpt.model.load_model.

Decoding uses the KV cache (--no-cache recomputes the context every step); the
throughput (generated tokens/s, after one warm-up run when --warmup) is printed
on stderr, the samples on stdout.
"""
from __future__ import annotations

import os
import sys
import time

import torch

from fastgpt import cli

PROG = "python -m fastgpt.sample"

EPILOG = """examples:
  python -m fastgpt.sample out/ --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8 --top-k 200
  python -m fastgpt.sample out/model --num-samples 3 --seed 1 --top-p 0.95
  python -m fastgpt.sample out/ckpt_0000500.pt --temperature 0          # greedy

Options may also be spelled with underscores, as train and finetune spell theirs
(--max_new_tokens 50, --top_k=none).

exit status: 0 done, 1 PATH is not a loadable model, 2 a usage error (one line), 130 interrupted
(Ctrl-C: the samples so far are printed)."""


class LoadError(RuntimeError):
    """PATH cannot be loaded as a model; exit 1 with this one line."""


def _tokenizer(name: str, cfg):
    """fastgpt.data's tokenizer ("byte" | "gpt2"); "auto" reads the checkpoint, else the vocab size.

    A tokenizer that does not fit the model (another one than it was trained with, or ids past its
    vocabulary) is a usage error."""
    from fastgpt.data import TOKENIZERS, DataError, get_tokenizer, tokenizer_for_vocab
    known = cfg.extra.get("tokenizer")
    if known is not None and known not in TOKENIZERS:   # (a model trained elsewhere: the user may know better)
        if name == "auto":
            raise cli.UsageError(f"the model names the tokenizer {known!r}, which fastgpt does not have; pass "
                                 f"--tokenizer {' or '.join(TOKENIZERS)} if its ids are that one's")
        known = None
    if known is not None and name not in ("auto", known):
        raise cli.UsageError(f"--tokenizer {name}: the model was trained with the {known!r} tokenizer "
                             f"(leave --tokenizer out, or pass --tokenizer {known})")
    if known is not None:
        name = known
    else:
        try:
            name = tokenizer_for_vocab(cfg.vocab_size, None if name == "auto" else name)
        except DataError as e:
            raise cli.UsageError(("" if name == "auto" else f"--tokenizer {name}: ") + str(e)) from None
    try:
        tok = get_tokenizer(name)
    except DataError as e:
        raise LoadError(str(e).splitlines()[0]) from None
    if tok.n_vocab > cfg.vocab_size:
        raise cli.UsageError(f"--tokenizer {name}: its {tok.n_vocab} tokens do not fit the model's "
                             f"{cfg.vocab_size}-token vocabulary")
    return tok


def _check_args(args) -> None:
    bad_seed = cli.seed_problems(args.seed)
    if bad_seed:
        raise cli.UsageError(bad_seed[0])
    if args.max_new_tokens < 1:
        raise cli.UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise cli.UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if not (args.temperature >= 0 and args.temperature != float("inf")):
        raise cli.UsageError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise cli.UsageError(f"--top-k must be >= 1 (or none), got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise cli.UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.prompt == "":
        raise cli.UsageError("--prompt is empty; give some text (the default is a newline)")
    bad_prompt = cli.not_utf8_problem("--prompt", args.prompt)
    if bad_prompt:
        raise cli.UsageError(bad_prompt)


def load(path: str, backend, device: torch.device, prog: str = PROG):
    """The model at path (see fastgpt.model.load_model); LoadError with one line if it is not one. prog: the
    program whose lines on stderr these are (fastgpt.train's --init loads through here)."""
    from fastgpt import checkpoint as ck
    from fastgpt.model import load_model
    if not os.path.exists(path):
        from fastgpt.model import hub_folder
        try:
            path = hub_folder(path)
        except (FileNotFoundError, ValueError) as e:
            raise LoadError(f"{e} (give a save_pretrained / HF folder, a Hugging "
                            "Face Hub id such as gpt2, a ckpt_*.pt file or the fastgpt.train out_dir holding "
                            "them)") from None
    target = path
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        target, skipped = ck.newest_readable(path, say=lambda msg: print(f"{prog}: {msg}", file=sys.stderr))
        if target is None and not skipped and os.path.isfile(os.path.join(path, "ckpt.pt")):   # nanoGPT's out_dir
            return load(os.path.join(path, "ckpt.pt"), backend, device, prog)
        if target is None:
            raise LoadError(f"{path}: the folder has no config.json and no " + ("readable " if skipped else "")
                            + "ckpt_*.pt")
        path = os.fspath(target)  # verified: load it, not the folder (which would verify it again)
        print(f"{prog}: {'sampling' if prog == PROG else 'loading'} {path}, the newest checkpoint in the folder",
              file=sys.stderr, flush=True)
    elif os.path.isfile(target):
        bad = ck.verify_checkpoint(target)  # a text file, a torn or truncated checkpoint: say so, not torch's words
        if bad is not None:
            raise LoadError(f"{target} is not a readable checkpoint: {bad}")
    try:
        return load_model(path, backend=backend, map_location=device)
    except Exception as e:  # anything else that makes it unloadable: one line naming the file
        msg = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise LoadError(f"{path}: cannot load a model from it ({msg[:200]})") from None


def _print_samples(tok, rows: list[list[int]]) -> None:
    for i, row in enumerate(rows):
        if len(rows) > 1:
            print(f"---------- sample {i + 1}")
        print(cli.printable(tok.decode(row)))
    sys.stdout.flush()


def _top_k(s: str) -> int | None:
    if s.strip().lower() in ("none", "all"):
        return None
    return int(s)


_top_k.__name__ = "integer or 'none'"  # argparse names the type in its error: "invalid integer or 'none' value"


def _hyphenate(ap, argv: list[str]) -> list[str]:
    """argv with each option spelled with underscores (train's and finetune's style: --max_new_tokens,
    --top_k=none) turned into this parser's hyphenated one; what follows an "=", arguments that are not
    options of this parser, and everything after "--" are left alone."""
    known = {s for a in ap._actions for s in a.option_strings}
    out = []
    for i, a in enumerate(argv):
        if a == "--":
            return out + argv[i:]
        name, eq, value = a.partition("=")
        if name.startswith("--") and "_" in name and name.replace("_", "-") in known:
            a = name.replace("_", "-") + eq + value
        out.append(a)
    return out


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog=PROG, description=__doc__, epilog=EPILOG)
    ap.add_argument("path", help="save_pretrained dir, HF dir or Hub id (gpt2), training checkpoint (file or "
                    "out_dir; nanoGPT's ckpt.pt too)")
    ap.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    ap.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per sample")
    ap.add_argument("--num-samples", type=int, default=1, help="samples, decoded as one batch")
    ap.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    ap.add_argument("--top-k", type=_top_k, default=200, metavar="K",
                    help="sample from the K most likely tokens ('none' = all)")
    ap.add_argument("--top-p", type=float, default=None, metavar="P",
                    help="nucleus sampling: the smallest set of tokens whose probability reaches P, in (0, 1] "
                         "(default: off)")
    ap.add_argument("--seed", type=int, default=1337, help="seed of the sampling RNG")
    ap.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                    help="autocast dtype on CUDA (default: bf16, fp16 before compute capability 8.0); "
                         "the CPU samples in fp32")
    ap.add_argument("--backend", default=None, choices=["fused", "reference"],
                    help="op implementation (default: $FASTGPT_BACKEND, else fused on CUDA, reference on CPU)")
    ap.add_argument("--tokenizer", default="auto", choices=["auto", "byte", "gpt2"],
                    help="auto = the one the model was trained with")
    ap.add_argument("--no-cache", action="store_true", help="recompute the whole context every step")
    ap.add_argument("--warmup", action="store_true", help="one untimed run first (kernel compilation)")
    args = ap.parse_args(_hyphenate(ap, sys.argv[1:] if argv is None else list(argv)))
    return cli.run_main(PROG, lambda: _run(args), {LoadError: 1}, "lower --num-samples or --max-new-tokens")


def _run(args) -> int:
    _check_args(args)
    device = cli.device(args.device)
    if device.type != "cuda" and args.dtype == "fp16":   # (as train's and finetune's; it was ignored without a word)
        raise cli.UsageError("--dtype fp16 needs --device cuda (on the CPU sampling runs in fp32)")
    backend = cli.backend(args.backend, device.type)
    model = load(args.path, args.backend, device)
    tok = _tokenizer(args.tokenizer, model.config)
    ids = tok.encode(args.prompt)
    if not ids:
        raise cli.UsageError("--prompt encodes to no tokens")
    idx = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    dtype = cli.cuda_dtype(args.dtype) if device.type == "cuda" else "fp32"   # (--dtype: CUDA's)
    if dtype == "fp32":   # a residual stream kept in bf16 / fp16 needs autocast; without it, fp32 (more exact)
        model.config.residual_dtype = None
    kw = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, use_cache=not args.no_cache,
              n_vocab=tok.n_vocab)   # a byte tokenizer on a larger vocabulary would drop ids >= 256
    with cli.autocast_factory(device, dtype)():
        if args.warmup:
            model.generate(idx, min(args.max_new_tokens, 8), generator=torch.Generator(device=device), **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        new = []
        try:
            out = model.generate(idx, args.max_new_tokens, generator=gen, on_token=new.append, **kw)
        except KeyboardInterrupt:  # print the samples as far as they got (they grow together, one batch)
            if new:
                _print_samples(tok, torch.cat([idx] + new, dim=1).tolist())
            raise KeyboardInterrupt(f"after {len(new)} of {args.max_new_tokens} new tokens"
                                    + (" (the samples so far are printed)" if new else "")) from None
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    _print_samples(tok, out.tolist())
    n = args.num_samples * args.max_new_tokens
    bs = model.config.block_size
    if args.no_cache:
        how = "no cache"
    elif len(ids) > bs:
        how = "no cache: the prompt is longer than block_size"
    elif len(ids) + args.max_new_tokens - 1 > bs:   # generate() recomputes the context once it passes block_size
        how = f"KV cache up to {bs} tokens of context, then recomputed"
    else:
        how = "KV cache"
    print(f"---------- {n} tokens in {dt:.2f} s: {n / dt:.1f} tok/s ({how}, {device.type}, backend {backend})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.entry(main))
