"""Fine-tuning (fastgpt.finetune, fastgpt.tasks): data files, input transformations, the
grown vocabulary, the L3 loss, learning, every kind of --init, --predict, and clear errors.

Tiny models (1 layer, 64 wide, byte tokenizer) and tiny synthetic files made here;
the built-in tasks' downloads are marked ``network``.
"""
import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import signal
from pathlib import Path

import pytest
import torch

from conftest import DEVICE, interrupt_on_call, remove_out_dir_after_each_save
from fastgpt import checkpoint as ck
from fastgpt import finetune as FT
from fastgpt import tasks as T
from fastgpt.config import GPTConfig
from fastgpt.model import GPT

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes: one intra-op thread is faster than two (no fork/join per op), and much
    faster on a loaded machine; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(vocab_size=256, block_size=64, n_layer=1, n_head=2, n_embd=64, dropout=0.0)


def tiny_model(**over) -> GPT:
    cfg = GPTConfig(**{**TINY, **over})
    cfg.extra = dict(tokenizer="byte")
    return GPT(cfg)


@pytest.fixture
def tiny_init(tmp_path):
    """A save_pretrained folder of a random tiny byte-level model."""
    d = tmp_path / "init"
    torch.manual_seed(0)
    tiny_model().save_pretrained(d)
    return str(d)


WORDS = {"fruit": "apple banana cherry grape mango".split(),
         "tool": "hammer wrench drill saw pliers".split(),
         "color": "red blue green yellow pink".split()}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def class_rows(n, seed=0):
    """Three classes, 50/30/20: the majority class is 'fruit'."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        lab = r.choices(["fruit", "tool", "color"], [5, 3, 2])[0]
        rows.append(dict(text=" ".join(r.choice(WORDS[lab]) for _ in range(r.randint(2, 4))), label=lab))
    return rows


def cfg_for(task, init, out_dir, **kw):
    base = dict(task=str(task), init=init, out_dir=str(out_dir), device=DEVICE, lr=2e-3, batch_size=16,
                epochs=1, seed=0, progress=False, clf_dropout=0.0, log_interval=1)
    base.update(kw)
    return FT.FinetuneConfig(**base)


def metrics(out_dir):
    return [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- files
def test_parse_jsonl_and_csv_agree(tmp_path):
    rows = [dict(text="a b", label=1), dict(text="c d", label=0), dict(text="e", label="1")]
    j = write_jsonl(tmp_path / "t.jsonl", rows)
    c = tmp_path / "t.csv"
    with open(c, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        for r in rows:
            w.writerow([r["label"], r["text"]])
    for path in (j, str(c)):
        tt, labels, exs = T.parse_rows(path)
        assert tt == "classify" and labels == ["0", "1"]
        assert [e.label for e in exs] == [1, 0, 1] and exs[0].text == "a b"
        assert exs[1].source.endswith(":2") if path == j else exs[1].source.endswith(":3")


def test_unicode_line_separators_inside_texts_are_text(tmp_path):
    """JSON keeps U+2028 / U+2029 / U+0085 raw inside strings (json.dumps(ensure_ascii=False)), and csv.writer
    does not quote them: they are not line breaks (str.splitlines had cut the rows there); line numbers
    count "\\n" only."""
    rows = [dict(text=f"review {i}" + ("\u2028second\u0085third\u2029" if i == 1 else ""), label="ab"[i % 2])
            for i in range(4)]
    j = tmp_path / "u.jsonl"
    j.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    c = tmp_path / "u.csv"
    with open(c, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([r["text"], r["label"]] for r in rows)
    for path, line in ((j, 3), (c, 4)):
        _, labels, exs = T.parse_rows(str(path))
        assert labels == ["a", "b"] and [e.text for e in exs] == [r["text"] for r in rows]
        assert exs[2].source.endswith(f":{line}")


def test_label_order_does_not_depend_on_the_hash_seed():
    """'nan' sorted by float('nan') compared false both ways: the order followed the set's, which changes
    with PYTHONHASHSEED (and a --resume in another process then refused its own run)."""
    import itertools
    labels = ["2", "nan", "10", "b", "-1", "inf", "a"]
    orders = {tuple(sorted(p, key=T._label_key)) for p in itertools.permutations(labels, len(labels))}
    assert orders == {("-1", "2", "10", "a", "b", "inf", "nan")}


def test_parse_pair_and_choice(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [dict(text="x", text_b="y", label="yes"), dict(text="u", text_b="v", label="no")])
    tt, labels, exs = T.parse_rows(p, "pair")
    assert (tt, labels, exs[0].text_b) == ("pair", ["no", "yes"], "y")
    c = tmp_path / "c.csv"
    c.write_text('text,choices,label\nctx one,"[""a"", ""b"", ""c""]",2\nctx two,"[""p"", ""q""]",q\n')
    tt, labels, exs = T.parse_rows(str(c))          # choices present -> choice by default
    assert tt == "choice" and labels == []
    assert exs[0].choices == ["a", "b", "c"] and exs[0].label == 2 and exs[1].label == 1


BAD = [
    ("m.jsonl", '{"text": "ok", "label": "a"}\n{"text": "no label"}\n', "m.jsonl:2: missing field 'label'"),
    ("e.jsonl", '{"text": "ok", "label": "a"}\n{"text": "ok2", "label": "b"}\n\n{"text": "  ", "label": "a"}\n',
     "e.jsonl:4: empty 'text'"),
    ("j.jsonl", '{"text": "ok", "label": "a"}\n{"text": "ok", label: b}\n', "j.jsonl:2: not valid JSON"),
    ("h.csv", "sentence,label\nhello,a\n", "h.csv:1: header has no 'text' column"),
    ("c.csv", 'text,label\nfine,a\n"two\nlines",b\n,a\n', "c.csv:5: empty 'text'"),
    ("k.jsonl", '{"text": "q", "choices": ["a", "b"], "label": 5}\n', "k.jsonl:1: unknown label '5'"),
    ("l.jsonl", '{"text": "q", "choices": "a b", "label": 0}\n', "l.jsonl:1: 'choices' must be"),
    ("x.txt", "text,label\n", "x.txt: unknown file type"),
]


BAD += [
    ("d.csv", "text,label,label\na,x,y\nb,y,x\n", "d.csv:1: duplicate column 'label' in the header"),
    ("n.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "two\\nlines"}\n',
     "n.jsonl:2: a label must be one line"),
]


BAD += [   # (a review, 2026-11-28)
    ("s.jsonl", '{"text": "ok", "label": "a"}\n{"text": "cut emoji \\ud83d here", "label": "b"}\n',
     "s.jsonl:2: a \\uXXXX escape of half a character"),
    ("f.jsonl", '{"text": "q", "label": "a"}\n{"text": "q2", "choices": ["a", "b"], "label": 0}\n',
     "f.jsonl:2: has 'choices' but the file's first row has none"),
]


@pytest.mark.parametrize("name,content,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_files_name_file_and_line(tmp_path, name, content, msg):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(T.TaskFileError) as ei:
        T.load_task(str(p))
    assert str(ei.value).startswith(str(tmp_path / msg.split(":")[0])) and msg.split(":", 1)[1] in str(ei.value)


def test_unknown_label_in_val_file_and_cli_exit_2(tmp_path, capsys):
    tr = write_jsonl(tmp_path / "train.jsonl", class_rows(20))
    va = write_jsonl(tmp_path / "val.jsonl", [dict(text="red", label="color"), dict(text="x", label="vehicle")])
    with pytest.raises(SystemExit) as ei:
        FT.main(["--task", tr, "--val_file", va, "--init", "random", "--out_dir", str(tmp_path / "o")])
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{va}:2: unknown label 'vehicle'" in err[0]


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    for argv, needle in ((["--aux_lm_weight", "-1"], "--aux_lm_weight"), (["--task_type", "regress"], "--task_type"),
                         (["stray text"], "stray text"), (["--task", str(tmp_path / "nope.jsonl")], "nope.jsonl"),
                         (["--grad_clip", "inf"], "--grad_clip must be a finite number >= 0 (0 = off), got inf")):
        with pytest.raises(SystemExit) as ei:
            FT.main(argv + ["--out_dir", str(tmp_path / "o")])
        assert ei.value.code == 2
        assert needle in capsys.readouterr().err


def test_long_csv_cells_spaced_choice_labels_and_missing_named_files(tmp_path):
    """(a review, 2026-11-28) A CSV cell longer than the csv module's 131072-character default is text; a
    choice label that is a choice's text with its leading space names that choice; a missing --val_file or
    --test_file is named by its option (not offered the built-in tasks, which those options do not take)."""
    rows = [["text", "label"], ["x" * 140_000, "a"]] + [[f"short {i}", "ab"[i % 2]] for i in range(9)]
    with open(tmp_path / "long.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    _, labels, exs = T.parse_rows(tmp_path / "long.csv")
    assert labels == ["a", "b"] and len(exs[0].text) == 140_000
    p = write_jsonl(tmp_path / "sp.jsonl", [dict(text="The capital of France is", choices=[" Rome", " Paris"],
                                                 label=" Paris")])
    assert [e.label for e in T.parse_rows(p)[2]] == [1]
    task = write_jsonl(tmp_path / "t.jsonl", class_rows(20))
    for kw, flag in ((dict(val_file=str(tmp_path / "nope.jsonl")), "--val_file"),
                     (dict(test_file=str(tmp_path / "nope.jsonl")), "--test_file")):
        with pytest.raises(T.TaskFileError) as e:
            T.load_file_task(task, **kw)
        assert str(e.value) == f"{flag} {tmp_path / 'nope.jsonl'}: no such file"
    for name in ("nope.jsonl", "nope.txt"):
        with pytest.raises(T.TaskFileError, match=f"^--predict_file .*{name}: no such file$"):
            T.read_inputs(tmp_path / name, "classify")
    for name in ("texts", "texts.jsonl"):   # (a review: a folder was "no such file")
        (tmp_path / name).mkdir()
        with pytest.raises(T.TaskFileError, match=f"^--predict_file .*{name}: a folder, not a file of texts$"):
            T.read_inputs(tmp_path / name, "classify")


def test_predict_file_fields_the_model_does_not_read_and_no_texts_are_errors(tmp_path):
    """(a review, 2026-11-29) --predict_file: fields the model does not read are refused, as in a task file (a
    classify model labelled the text alone, text_b dropped), and a blank-only text file is "no texts" as an
    empty .jsonl is (it printed nothing, exit 0)."""
    for model, row, needle in (("classify", dict(text="a", text_b="b"), "has 'text_b', but the model is a classify"),
                               ("pair", dict(text="a", text_b="b", choices=["x", "y"]), "has 'choices', but the "
                                "model is a pair model")):
        with pytest.raises(T.TaskFileError, match=f":1: {needle}"):
            T.read_inputs(write_jsonl(tmp_path / "p.jsonl", [row]), model)
    assert [e.choices for e in T.read_inputs(write_jsonl(tmp_path / "c.jsonl", [dict(text="a", choices=["x", "y"])]),
                                             "choice")] == [["x", "y"]]
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(T.TaskFileError, match="blank.txt:1: no texts in the file"):
        T.read_inputs(tmp_path / "blank.txt", "classify")


def test_refuses_torchrun(tmp_path, capsys, monkeypatch):
    """Under torchrun every process would run the whole fine-tuning and write the same out_dir: one line from
    rank 0, exit 2 (the others exit 2 quietly); a $WORLD_SIZE left in the environment without torchrun (no
    $RANK) is named (it said "start it without torchrun")."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, needle in ((None, "and $WORLD_SIZE is 2: unset it"), ("0", "start it without torchrun"), ("1", "")):
        if rank is not None:
            monkeypatch.setenv("RANK", rank)
        for argv in (["--out_dir", str(tmp_path / "o")], ["--predict", "--init", str(tmp_path), "some text"]):
            with pytest.raises(SystemExit) as ei:   # (--predict would label every text once per process)
                FT.main(argv)
            err = capsys.readouterr().err
            assert ei.value.code == 2 and err.count("\n") == (1 if needle else 0) and needle in err, (rank, err)
            assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("prog", ["train", "finetune"])
def test_a_world_size_that_is_not_a_number_is_one_line(prog, tmp_path, capsys, monkeypatch):
    from fastgpt import train
    monkeypatch.setenv("WORLD_SIZE", "two")
    main = train.main if prog == "train" else FT.main
    with pytest.raises(SystemExit) as ei:
        main(["--out_dir", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and err.count("\n") == 1 and "$WORLD_SIZE is 'two'" in err, err


# ----------------------------------------------------------------------------- inputs
def test_input_transformations():
    tok = T.TaskTokenizer(type("B", (), dict(n_vocab=256, encode=lambda s, t: list(t.encode()),
                                             decode=lambda s, i: bytes(i).decode()))())
    s, d, e = tok.start, tok.delim, tok.extract
    assert (s, d, e, tok.n_vocab) == (256, 257, 258, 259)
    a, b = [1, 2, 3], [7, 8]
    assert T.build_inputs("classify", tok, a, 16) == [[s, 1, 2, 3, e]]
    assert T.build_inputs("pair", tok, a, 16, text_b_ids=b) == [[s, 1, 2, 3, d, 7, 8, e]]
    assert T.build_inputs("similarity", tok, a, 16, text_b_ids=b) == [[s, 1, 2, 3, d, 7, 8, e],
                                                                      [s, 7, 8, d, 1, 2, 3, e]]
    assert T.build_inputs("choice", tok, a, 16, choice_ids=[[5], [6, 6]]) == [[s, 1, 2, 3, d, 5, e],
                                                                            [s, 1, 2, 3, d, 6, 6, e]]
    # truncation: classify keeps the head; two texts cut the longer first; choice context keeps its end
    assert T.build_inputs("classify", tok, list(range(10)), 6) == [[s, 0, 1, 2, 3, e]]
    assert T.build_inputs("pair", tok, list(range(10)), 8, text_b_ids=[20, 21]) == [[s, 0, 1, 2, d, 20, 21, e]]
    assert T.build_inputs("choice", tok, list(range(10)), 8, choice_ids=[[20]]) == [[s, 6, 7, 8, 9, d, 20, e]]
    assert all(len(x) <= 8 for x in T.build_inputs("similarity", tok, list(range(9)), 8, text_b_ids=list(range(9))))
    assert tok.decode([s, 104, 105, e]) == "<|start|>hi<|extract|>"


@pytest.mark.parametrize("V", [256, 50257])
def test_vocab_grows_by_the_specials(V):
    torch.manual_seed(0)
    m = GPT(GPTConfig(**{**TINY, "vocab_size": V, "n_embd": 16, "n_head": 2}))
    old = m.transformer.wte.weight.detach().clone()
    FT.grow_vocab(m, len(T.SPECIAL_TOKENS))
    W = m.transformer.wte.weight
    assert m.config.vocab_size == V + 3
    assert W.shape[0] == m.config.padded_vocab_size == (V + 3 + 63) // 64 * 64
    assert m.lm_head.weight is W                                      # still tied
    assert torch.equal(W[:V], old[:V])                                # old rows kept
    assert (W[V:V + 3].norm(dim=1) > 0).all() and W[V:V + 3].std() < 0.1   # new rows N(0, 0.02)
    assert not W[V + 3:].any()                                        # padding rows zero
    logits, _ = m(torch.tensor([[V, 1, V + 2]]))
    assert logits.shape[-1] == V + 3


def test_padded_batch_gathers_each_rows_extract_state():
    """Right padding: each row's extract state equals that sequence run alone; similarity sums both
    orders; choice scores are soft-maxed over each example's own choices (-inf for absent ones)."""
    torch.manual_seed(0)
    m = tiny_model()
    FT.grow_vocab(m, 3)
    m.eval()
    head = FT.build_head(64, 3, 0.0)
    enc = [FT.Encoded([[256, 5, 6, 7, 8, 258]], 0), FT.Encoded([[256, 9, 258]], 2)]
    b = FT.collate(enc, "cpu")
    assert b["pos"].tolist() == [5, 2] and b["targets"][1].tolist() == [9, 258, -100, -100, -100, -100]
    logits, *_ = FT.forward_batch(m, head, b, "classify", 0.0)
    for i, e in enumerate(enc):
        alone = head(m.hidden_states(torch.tensor(e.seqs))[0, -1])
        torch.testing.assert_close(logits[i], alone.float())
    sim = [FT.Encoded([[256, 5, 257, 6, 7, 258], [256, 6, 7, 257, 5, 258]], 1)]
    logits, *_ = FT.forward_batch(m, head, FT.collate(sim, "cpu"), "similarity", 0.0)
    h = sum(m.hidden_states(torch.tensor([s]))[0, -1] for s in sim[0].seqs)
    torch.testing.assert_close(logits[0], head(h).float())
    head1 = FT.build_head(64, 1, 0.0)
    ch = [FT.Encoded([[256, 5, 257, 1, 258], [256, 5, 257, 2, 258], [256, 5, 257, 3, 258]], 2),
          FT.Encoded([[256, 9, 257, 4, 258], [256, 9, 257, 4, 4, 258]], 0)]
    logits, loss, _, _ = FT.forward_batch(m, head1, FT.collate(ch, "cpu"), "choice", 0.0)
    logits = logits.detach()
    assert logits.shape == (2, 3) and math.isinf(logits[1, 2]) and torch.isfinite(logits[0]).all()
    want = -(torch.log_softmax(logits[0], 0)[2] + torch.log_softmax(logits[1, :2], 0)[0]) / 2
    torch.testing.assert_close(loss, want)


@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_loss_is_the_weighted_sum(lam):
    torch.manual_seed(0)
    m = tiny_model()
    FT.grow_vocab(m, 3)
    head = FT.build_head(64, 2, 0.0)
    b = FT.collate([FT.Encoded([[256, 5, 6, 7, 258]], 0), FT.Encoded([[256, 9, 258]], 1)], "cpu")
    _, task, lm, total = FT.forward_batch(m, head, b, "classify", lam)
    if lam == 0:
        assert lm is None and total is task
    else:
        logits, want_lm = m(b["idx"], b["targets"])          # the model's own LM loss, padding ignored
        torch.testing.assert_close(lm, want_lm)
        torch.testing.assert_close(total, task + lam * lm)


# ----------------------------------------------------------------------------- runs
def test_head_learns_and_lambda_runs(tmp_path, tiny_init, capsys):
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(300))
    for lam in (0.0, 0.5):
        out = tmp_path / f"o{lam}"
        # lambda = 0: a short run checks the loss fields; lambda = 0.5: two epochs must learn the task
        r = FT.run(cfg_for(task, tiny_init, out, aux_lm_weight=lam, epochs=2, max_iters=4 if lam == 0 else None))
        ev = json.loads((out / "eval.json").read_text())
        assert ev["accuracy"] == r["accuracy"] and ev["n_test"] == 30
        rows = [x for x in metrics(out) if "loss" in x]
        assert rows and all(("lm_loss" in x) == (lam > 0) for x in rows)
        for x in rows:   # the reported loss is L2 + lambda * L1
            assert math.isclose(x["loss"], x["task_loss"] + lam * x.get("lm_loss", 0.0), rel_tol=1e-5)
    assert [x["epoch"] for x in metrics(out) if "val_accuracy" in x] == [1, 2]
    assert r["majority_accuracy"] < 0.6 and r["accuracy"] >= r["majority_accuracy"] + 0.3, r
    # the best model labels texts given on the command line
    capsys.readouterr()
    assert FT.main(["--predict", "--init", str(tmp_path / "o0.5"), "banana mango apple", "drill hammer saw",
                    "--device", DEVICE]) == 0
    assert capsys.readouterr().out.split() == ["fruit", "tool"]
    (tmp_path / "in.txt").write_text("red blue pink\nwrench pliers\n")
    assert FT.main(["--predict", "--init", str(tmp_path / "o0.5"), "--predict_file", str(tmp_path / "in.txt"),
                    "--device", DEVICE]) == 0
    assert capsys.readouterr().out.split() == ["color", "tool"]


def test_same_seed_same_run_and_torch_settings_restored(tmp_path, tiny_init):
    """A run repeats bit for bit under its --seed (dropout on: the seed reaches every stream), and leaves
    the process's torch settings (deterministic algorithms, set for a CPU run) as it found them."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(60))
    before = torch.are_deterministic_algorithms_enabled()
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        FT.run(cfg_for(task, tiny_init, tmp_path / name, seed=seed, clf_dropout=0.1, max_iters=3))
        runs.append([(x["loss"], x["task_loss"]) for x in metrics(tmp_path / name) if "loss" in x])
    assert runs[0] and runs[0] == runs[1] and runs[0] != runs[2]
    assert torch.are_deterministic_algorithms_enabled() == before


def test_pair_similarity_choice_runs(tmp_path, tiny_init):
    r = random.Random(0)
    pairs, choice = [], []
    for _ in range(48):
        a, b = r.choice(list(WORDS)), r.choice(list(WORDS))
        pairs.append(dict(text=r.choice(WORDS[a]), text_b=r.choice(WORDS[b]), label=int(a == b)))
        k = r.randrange(3)
        opts = [r.choice(WORDS["tool"]), r.choice(WORDS["color"]), r.choice(WORDS["tool"])]
        opts[k] = r.choice(WORDS["fruit"])
        choice.append(dict(text="which is a fruit?", choices=opts, label=k))
    for tt, rows in (("pair", pairs), ("similarity", pairs), (None, choice)):
        f = write_jsonl(tmp_path / f"{tt}.jsonl", rows)
        out = tmp_path / f"o{tt}"
        old_umask = os.umask(0o022)   # (under umask 077 the JSON is 0600 too: the mode check could not fail)
        try:
            s = FT.run(cfg_for(f, tiny_init, out, task_type=tt, max_iters=3))
        finally:
            os.umask(old_umask)
        assert s["task_type"] == (tt or "choice") and s["steps"] == 3
        assert 0.0 <= s["accuracy"] <= 1.0
        meta = json.loads((out / "best" / "finetune.json").read_text())
        assert meta["task_type"] == s["task_type"]
        modes = {p.name: p.stat().st_mode & 0o777 for p in (out / "best").iterdir()}   # (safetensors': 0600)
        assert set(modes.values()) == {0o644} and len(modes) == 4, modes
    # --predict on a choice model answers with one of each row's choices
    inp = write_jsonl(tmp_path / "ask.jsonl", [dict(text="which?", choices=["saw", "mango"]),
                                               dict(text="which?", choices=["red", "drill", "apple"])])
    got = list(FT.predict(FT.FinetuneConfig(init=str(tmp_path / "oNone"), predict=True, predict_file=inp,
                                            device=DEVICE), []))
    assert len(got) == 2 and got[0] in ("saw", "mango") and got[1] in ("red", "drill", "apple")


def test_train_checkpoint_starts_and_resumes(tmp_path, monkeypatch):
    from fastgpt import train
    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "corpus.txt"
    text.write_text(" ".join(random.Random(0).choice(sum(WORDS.values(), [])) for _ in range(3000)))
    tcfg = train.TrainConfig(data=str(text), preset="tiny", tokenizer="byte", out_dir=str(tmp_path / "pre"),
                             max_iters=2, batch_size=2, block_size=32, eval_iters=1, eval_interval=2,
                             sample_tokens=0, device=DEVICE, progress=False, warmup_iters=0)
    pre = train.run(tcfg, {"max_iters"})   # its summary names the last checkpoint (an audit: the key could go)
    assert pre["checkpoint"] == str(ck.latest_checkpoint(tmp_path / "pre")) and pre["step"] == 2
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(60))
    out = tmp_path / "ft"
    s = FT.run(cfg_for(task, str(tmp_path / "pre"), out, max_iters=2, epochs=3))
    assert s["init"].startswith("checkpoint") and s["steps"] == 2
    m = GPT.from_pretrained(out / "best")
    assert m.config.vocab_size == 259 and m.config.n_embd == 128 and m.config.padded_vocab_size == 320
    # resume to 4 steps: continues from step 2, same history prefix
    first = [(x["step"], x["loss"]) for x in metrics(out) if "task_loss" in x]
    s2 = FT.run(cfg_for(task, str(tmp_path / "pre"), out, max_iters=4, epochs=3, resume=True), {"max_iters"})
    assert s2["steps"] == 4
    steps = [x["step"] for x in metrics(out) if "task_loss" in x]
    assert steps == [1, 2, 3, 4]
    assert [(x["step"], x["loss"]) for x in metrics(out) if "task_loss" in x][:2] == first   # (not trained again)
    assert [x.get("type") for x in metrics(out)].count("header") == 1
    # a plain --resume keeps the run's own --max_iters (it used to fall back to all 3 epochs)
    s3 = FT.run(cfg_for(task, str(tmp_path / "pre"), out, epochs=3, resume=True), set())
    assert s3["steps"] == 4 and [x["step"] for x in metrics(out) if "task_loss" in x] == steps
    # --resume on the other program's out_dir: one line saying what to do, no KeyError
    with pytest.raises(FT.RunError, match="is a fastgpt.train checkpoint, not a fine-tuning run's"):
        FT.run(cfg_for(task, str(tmp_path / "pre"), tmp_path / "pre", resume=True), set())
    with pytest.raises(train.RunError, match="not a fastgpt.train checkpoint"):
        train.run(train.TrainConfig(out_dir=str(out), resume=True, device=DEVICE), {"out_dir", "resume"})
    # a damaged fine-tuned model: one line, for --predict and as --init
    (out / "best" / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(FT.RunError, match="not a usable fine-tuned model"):
        FT.load_finetuned(out)
    with pytest.raises(FT.RunError, match=f"--init {out}"):
        FT.load_init(str(out), FT.FinetuneConfig(task=str(task)), "cpu")


def test_hf_model_starts_a_finetune(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=64,
                                                               n_layer=1, n_head=2))
    hf.save_pretrained(tmp_path / "hf")
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    s = FT.run(cfg_for(task, str(tmp_path / "hf"), tmp_path / "o", max_iters=2, tokenizer="byte"))
    assert s["init"].startswith("HF folder") and s["steps"] == 2
    emb = hf.transformer.wte.weight.detach()
    got = GPT.from_pretrained(tmp_path / "o" / "best").transformer.wte.weight
    assert got.shape[0] == 320 and not got[259:].any()
    # the imported rows moved only by two small steps
    assert (got[:256].cpu() - emb).abs().max() < 0.05


# ----------------------------------------------------------------------------- metrics
def test_metrics():
    assert T.accuracy([0, 1, 1, 2], [0, 1, 2, 2]) == 0.75
    # class 0: tp1 fp0 fn0 -> 1; class 1: tp1 fp1 fn0 -> 2/3; class 2: tp1 fp0 fn1 -> 2/3
    assert math.isclose(T.macro_f1([0, 1, 1, 2], [0, 1, 2, 2], 3), (1 + 2 / 3 + 2 / 3) / 3)
    assert T.macro_f1([1, 1], [0, 0], 3) == 0.0
    tr = [T.Example("a", 1), T.Example("b", 1), T.Example("c", 0)]
    assert T.majority_accuracy(tr, [T.Example("d", 1), T.Example("e", 0)]) == 0.5


def test_given_val_or_test_file_splits_the_rest_from_the_task(tmp_path):
    """A --test_file alone: the validation split is 10% of --task and no example is dropped (one was);
    a --val_file alone: no test split (as --help says)."""
    tr = write_jsonl(tmp_path / "tr.jsonl", class_rows(20))
    other = write_jsonl(tmp_path / "o.jsonl", class_rows(5, seed=1))
    t = T.load_task(str(tr), test_file=str(other))
    assert (len(t.train), len(t.val), len(t.test)) == (18, 2, 5)
    t = T.load_task(str(tr), val_file=str(other))
    assert (len(t.train), len(t.val), len(t.test)) == (20, 5, 0)
    t = T.load_task(str(tr), val_file=str(other), test_file=str(other))
    assert (len(t.train), len(t.val), len(t.test)) == (20, 5, 5)


# ----------------------------------------------------------------------------- built-in tasks
@pytest.mark.network
def test_shakespeare_genre_splits():
    from fastgpt import data
    task = T.load_task("shakespeare-genre")
    plays = {s: {e.source.split("#")[0] for e in getattr(task, s)} for s in ("train", "val", "test")}
    assert plays["test"] == set(data.HELD_OUT_PLAYS)                   # the pre-training's held-out plays
    assert plays["val"] == set(T.GENRE_VAL_PLAYS) and not plays["val"] & plays["test"]
    assert plays["train"] | plays["val"] | plays["test"] == set(data.PLAY_GENRES)
    assert not (plays["train"] & (plays["val"] | plays["test"]))
    assert not set(data.POEMS) & set().union(*plays.values())
    for e in task.train[::500] + task.test[::300]:
        assert task.labels[e.label] == data.PLAY_GENRES[e.source.split("#")[0]]
        assert 0 < len(e.text) <= T.GENRE_PASSAGE_CHARS
    assert all(sum(e.label == k for e in task.test) > 500 for k in range(3))


def test_the_auxiliary_lm_loss_calls_a_head_that_is_not_plain():
    """(a review, 2026-11-29) The auxiliary LM loss read lm_head.weight directly: a hook (or an adapter) on the
    head changed GPT's own loss but not fine-tuning's. Both go through GPT.lm_loss now."""
    torch.manual_seed(0)
    m = tiny_model()
    FT.grow_vocab(m, 3)
    head = FT.build_head(64, 2, 0.0)
    b = FT.collate([FT.Encoded([[256, 5, 6, 7, 258]], 1), FT.Encoded([[256, 9, 258]], 0)], "cpu")
    m.lm_head.register_forward_hook(lambda mod, i, o: o * 3)
    _, _, lm, _ = FT.forward_batch(m, head, b, "classify", 0.5)
    V = m.config.vocab_size
    logits = 3 * torch.nn.functional.linear(m.hidden_states(b["idx"]), m.lm_head.weight)[..., :V]
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["targets"].flatten())
    torch.testing.assert_close(lm, want)
    torch.testing.assert_close(m(b["idx"], b["targets"])[1], want)


def test_movie_review_labels_follow_the_score_sign(tmp_path):
    """(a mutation audit, 2026-11-29) Nothing checked which label a score gets: flipped labels trained and
    scored as well, and --predict then called a bad review positive. A zero score is no label."""
    p = tmp_path / "reviews.tsv"
    p.write_text("id\tscore\ttext\n1\t2.5\ta delight\n2\t-3.0\ta mess\n3\t0\tmeh\n4\t0.2\tfine\n")
    assert [(e.text, T.MOVIE_LABELS[e.label]) for e in T.parse_movie_reviews(p)] == [
        ("a delight", "positive"), ("a mess", "negative"), ("fine", "positive")]


@pytest.mark.network
def test_movie_reviews():
    task = T.load_task("movie-reviews")
    n = len(task.train) + len(task.val) + len(task.test)
    assert n == 10605 - 37 and task.labels == ["negative", "positive"]
    assert abs(len(task.test) - n / 10) <= 1
    src = {e.source for e in task.train} & {e.source for e in task.test}
    assert not src


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path, tiny_init, capsys):
    """SIGTERM mid-epoch: the step finishes, a checkpoint is saved, exit 0 naming it; --resume goes on."""
    import signal
    import subprocess
    import sys
    import time
    from fastgpt import checkpoint as ck
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(400))
    out = tmp_path / "o"
    argv = ["--task", task, "--init", tiny_init, "--out_dir", str(out), "--device", "cpu", "--batch_size", "4",
            "--epochs", "50", "--log_interval", "1", "--progress", "false", "--seed", "0"]
    p = subprocess.Popen([sys.executable, "-m", "fastgpt.finetune", *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t = time.monotonic()
    while not ((out / "metrics.jsonl").exists() and '"loss"' in (out / "metrics.jsonl").read_text()):
        assert p.poll() is None, p.communicate()[1][-2000:]
        assert time.monotonic() - t < 120, "timed out waiting for the first step"
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    rc, (_, err) = p.wait(120), p.communicate()
    assert rc == 0, err
    path = ck.latest_checkpoint(out)
    assert path is not None and ck.verify_checkpoint(path) is None
    step = ck.load_checkpoint(path)["step"]
    total = next(r["steps"] for r in metrics(out) if r.get("type") == "header")
    assert 0 < step < total
    assert err.strip().splitlines()[-1] == (f"{FT.PROG}: SIGTERM: stopped after step {step}/{total}; checkpoint "
                                            f"saved to {path} (continue with: {FT.PROG} --resume --out_dir {out} "
                                            "--device=cpu)")   # (the run's --device: a resume does not restore it)
    assert not (out / "eval.json").exists()  # not finished: no test scores
    # --resume continues from that very step, here to a 2-step-later end
    assert FT.main(["--resume", "--out_dir", str(out), "--max_iters", str(step + 2), "--device", "cpu",
                    "--progress", "false"]) == 0
    assert f"{FT.PROG}: resuming from {path} (step {step}/{step + 2})" in capsys.readouterr().err
    assert ck.load_checkpoint(ck.latest_checkpoint(out))["step"] == step + 2 and (out / "eval.json").exists()


# ----------------------------------------------------------------------------- resuming, --predict
def _ft_argv(task, init, out, **kw):
    a = dict(task=task, init=init, out_dir=out, device="cpu", batch_size=4, max_iters=2, lr=1e-3, seed=3,
             clf_dropout=0.0, log_interval=1, progress="false")
    a.update(kw)
    return [f"--{k}={v}" for k, v in a.items()]


def _loss_rows(out):
    return [(x["step"], x["loss"]) for x in metrics(out) if "task_loss" in x]


def test_resume_without_a_checkpoint_starts_the_run_again_with_its_logged_options(tmp_path, tiny_init, capsys,
                                                                                 monkeypatch):
    """A run that died before its first checkpoint leaves only metrics.jsonl: --resume starts that run again
    from step 0 with the options of its header (it used to start the default task from random weights and
    overwrite the log); a metrics.jsonl with no readable header, or train's, is one line; an empty out_dir
    starts a new run (a job that always passes --resume); the refusal without --resume says what --resume does."""
    monkeypatch.setenv("FASTGPT_OFFLINE", "1")   # the old behaviour reached for the default task's download
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(60))
    out = tmp_path / "o"
    assert FT.main(_ft_argv(task, tiny_init, out)) == 0
    first = _loss_rows(out)
    for p in list(out.glob("ckpt_*.pt")) + [out / "eval.json"]:   # as if killed before the first checkpoint
        p.unlink()
    __import__("shutil").rmtree(out / "best")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        FT.main(_ft_argv(task, tiny_init, out))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "add --resume to start it again from step 0 with its options" in err
    # a missing task / validation file is said first (the --resume that line suggests would not fix it)
    nosuch = str(tmp_path / "nosuch.jsonl")
    for argv in (_ft_argv(nosuch, tiny_init, out), _ft_argv(task, tiny_init, out, val_file=nosuch)):
        with pytest.raises(SystemExit) as e:
            FT.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and f"{nosuch}: no such file" in err, err
    assert FT.main(["--resume", f"--out_dir={out}", "--device=cpu"]) == 0
    err = capsys.readouterr().err
    assert (f"{FT.PROG}: no checkpoint in {out} yet: starting its run again from step 0 with the options in its "
            "metrics.jsonl") in err.splitlines()
    head = metrics(out)[0]
    assert head["config"]["task"] == task and (head["config"]["batch_size"], head["config"]["seed"]) == (4, 3)
    assert _loss_rows(out) == first   # the same run, step for step, logged once
    # metrics.jsonl whose first line is no header, or a fastgpt.train run's: one line, exit 1
    for name, first_line, needle in (("bad", "not json\n", "no readable header"),
                                     ("tr", json.dumps(dict(type="header", config={})) + "\n", "fastgpt.train run's")):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.jsonl").write_text(first_line)
        with pytest.raises(SystemExit) as e:
            FT.main(["--resume", f"--out_dir={d}", "--device=cpu"])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.count("\n") == 1 and needle in err, err
        with pytest.raises(SystemExit) as e:   # and without --resume the refusal does not advise it
            FT.main(_ft_argv(task, tiny_init, d))
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--resume" not in err and "no header of this program's" in err, err
    # nothing in out_dir: --resume starts the run the command line describes
    assert FT.main(["--resume"] + _ft_argv(task, tiny_init, tmp_path / "new", max_iters=1)) == 0
    assert f"no checkpoint in {tmp_path / 'new'}: starting a new run" in capsys.readouterr().err


def test_relative_paths_are_saved_absolute_and_resume_from_another_folder(tmp_path, tiny_init, monkeypatch):
    """--task / --val_file / --init given relative to the working folder are saved absolute: a --resume
    from another folder finds them (it said "cls.jsonl: no such file"); built-in task names and 'random'
    stay names even where a file of that name exists."""
    write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    write_jsonl(tmp_path / "val.jsonl", class_rows(8, seed=1))
    (tmp_path / "random").write_text("a file, not the 'random' init")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    assert FT.main(_ft_argv("cls.jsonl", "init", out, val_file="val.jsonl", max_iters=1, ckpt_interval=1)) == 0
    saved = ck.load_checkpoint(ck.latest_checkpoint(out))["extra"]["finetune_config"]
    assert (saved["task"], saved["val_file"], saved["init"]) == (
        str(tmp_path / "cls.jsonl"), str(tmp_path / "val.jsonl"), tiny_init)
    kept = FT._absolute_paths(FT.FinetuneConfig(task="movie-reviews", init="random", test_file="nope.jsonl"))
    assert (kept.task, kept.init, kept.test_file) == ("movie-reviews", "random", "nope.jsonl")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert FT.main(["--resume", f"--out_dir={out}", "--max_iters=2", "--device=cpu", "--init=../init"]) == 0
    assert ck.load_checkpoint(ck.latest_checkpoint(out))["step"] == 2


def test_resume_trims_rows_logged_after_the_checkpoint_and_refuses_an_earlier_end(tmp_path, tiny_init, capsys):
    """A crash between checkpoints: --resume trains those steps again and their rows appear once (they
    were appended twice); a --max_iters below the checkpoint's step is a usage error (it re-scored the
    test set without a word); the same --max_iters as the run's end finishes quietly."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(60))
    out = tmp_path / "o"
    # (dropout on: steps 3-4 repeat only if the resumed run continues the checkpoint's RNG streams)
    assert FT.main(_ft_argv(task, tiny_init, out, max_iters=4, ckpt_interval=2, keep_ckpts=0, clf_dropout=0.1)) == 0
    first = _loss_rows(out)
    ck.latest_checkpoint(out).unlink()   # died after logging steps 3-4, before their checkpoint
    assert FT.main(["--resume", f"--out_dir={out}", "--device=cpu"]) == 0
    assert _loss_rows(out) == first      # steps 3-4 trained again, exactly, and logged once
    assert [x["step"] for x in metrics(out) if "val_accuracy" in x] == [4]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        FT.main(["--resume", f"--out_dir={out}", "--device=cpu", "--max_iters=3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--max_iters 3: the checkpoint" in err
    assert "already at step 4" in err
    assert FT.main(["--resume", f"--out_dir={out}", "--device=cpu", "--max_iters=4"]) == 0
    ev = json.loads((out / "eval.json").read_text())   # the epochs trained (not --epochs), the run's seconds
    saved = ck.load_checkpoint(ck.latest_checkpoint(out))["extra"]["seconds"]   # (those of the earlier segments)
    assert ev["steps"] == 4 and ev["epochs"] == round(4 / 12, 3) and saved > 0 and ev["seconds"] >= round(saved, 1)


def test_resume_refuses_a_changed_task_file_and_batch_size(tmp_path, tiny_init, capsys):
    """--resume after the task file changed: a new label (the head's size: it was a size-mismatch
    traceback), an appended row (the fixed split reshuffles: trained-on examples would land in test), or
    another --batch_size (the saved step counts batches) is one line naming the problem; the same
    file and options resume."""
    rows = class_rows(60)
    task = tmp_path / "cls.jsonl"
    write_jsonl(task, rows)
    out = tmp_path / "o"
    assert FT.main(_ft_argv(str(task), tiny_init, out, max_iters=2)) == 0
    cases = [(rows + [dict(text="zz", label="vehicle")], [], 1,
              "was trained with the labels color, fruit, tool; cls.jsonl now has color, fruit, tool, vehicle"),
             (rows + [dict(text="red blue", label="color")], [], 1, "was trained on other examples of cls.jsonl"),
             (rows, ["--batch_size=8"], 2, "--batch_size 8: the checkpoint"),
             (rows, ["--seed=9"], 2, "--seed 9: the checkpoint")]   # (each epoch's order comes from the seed)
    for new_rows, extra, code, msg in cases:
        write_jsonl(task, new_rows)
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            FT.main(["--resume", f"--out_dir={out}", "--device=cpu", "--max_iters=3"] + extra)
        err = capsys.readouterr().err
        assert e.value.code == code and err.count("\n") == 1 and msg in err, err
    write_jsonl(task, rows)
    assert FT.main(["--resume", f"--out_dir={out}", "--device=cpu", "--max_iters=3"]) == 0


def test_dropout_replaces_the_init_models_rate(tmp_path, tiny_init, capsys):
    """--dropout sets the backbone's rate (the paper fine-tunes with 0.1; a model pre-trained with none kept 0: a
    review); the saved model records it, a --resume with another rate is refused, an impossible one is a usage
    error."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    out = tmp_path / "o"
    assert FT.main(_ft_argv(task, tiny_init, out, dropout=0.1)) == 0
    assert json.loads((out / "best" / "config.json").read_text())["config"]["dropout"] == 0.1
    for extra, code, msg in ((["--dropout=0.2"], 2, "--dropout 0.2: the checkpoint"),
                             (["--dropout=1.5"], 2, "--dropout must be in [0, 0.999237], got 1.5")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            FT.main(["--resume", f"--out_dir={out}", "--device=cpu", "--max_iters=3"] + extra)
        err = capsys.readouterr().err
        assert e.value.code == code and err.count("\n") == 1 and msg in err, err
    assert FT.main(["--resume", f"--out_dir={out}", "--device=cpu", "--max_iters=3", "--dropout=0.1"]) == 0
    assert ck.load_checkpoint(ck.newest_readable(out)[0])["config"]["dropout"] == 0.1


def test_predict_prints_one_line_per_input_for_choices_with_line_breaks(tmp_path, tiny_init, capsys):
    rows = [dict(text=f"q{i}", choices=["line one\nline two", "other\r\nanswer"], label=i % 2) for i in range(20)]
    task = write_jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "o"
    assert FT.main(_ft_argv(task, tiny_init, out, max_iters=2)) == 0
    inputs = write_jsonl(tmp_path / "in.jsonl", [{k: r[k] for k in ("text", "choices")} for r in rows[:3]])
    capsys.readouterr()
    assert FT.main(["--predict", f"--init={out}", f"--predict_file={inputs}", "--device=cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and set(lines) <= {"line one\\nline two", "other\\nanswer"}, lines


def test_predict_file_lines_up_and_ctrl_c_keeps_the_labels_printed(tmp_path, tiny_init, capsys, monkeypatch):
    """--predict_file: a blank line is refused with FILE:LINE (it was dropped, so the labels after it no longer
    lined up with their lines), a blank text argument likewise; Ctrl-C keeps the labels printed so far and
    says one line, "interrupted", not advice about a training out_dir."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    out = tmp_path / "o"
    assert FT.main(_ft_argv(task, tiny_init, out, max_iters=1)) == 0
    gaps = tmp_path / "gaps.txt"
    gaps.write_text("red blue\n\nsaw drill\n   \n")
    with pytest.raises(T.TaskFileError, match=f"^{gaps}:2: blank line"):
        T.read_inputs(gaps, "classify")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        FT.main(["--predict", f"--init={out}", f"--predict_file={gaps}", "--device=cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"{gaps}:2: blank line" in err
    for texts, needle in ((["red", " "], "--predict: text 2 is blank"),   # (it was labelled)
                          (["ab\udcff"], "--predict: text 1 is not UTF-8 text"),
                          ([f"--predict_file={gaps}", "red"], "not both"),   # (the texts were dropped)
                          # (2026-11-29) training options were ignored without a word (exit 0, no out_dir)
                          ([f"--out_dir={tmp_path / 'zz'}", "--epochs=5", "red"], "--predict reads no --out_dir "
                           "(an option of training): leave it out"),
                          # and a text that starts with -- is an unknown option: the message says where it goes
                          (["--weird text"], "unknown option --weird text; see --help (a text to label that "
                           "starts with -- goes after a lone --")):
        with pytest.raises(SystemExit) as e:
            FT.main(["--predict", f"--init={out}", "--device=cpu"] + texts)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and needle in err, err
    # --predict --offline reads the tokenizer without fetching (it was read with offline=False: a download)
    from fastgpt import data as fdata
    seen, real = [], fdata.get_tokenizer
    monkeypatch.setattr(fdata, "get_tokenizer", lambda name, offline=None: seen.append(offline) or real(name, offline))
    assert FT.main(["--predict", f"--init={out}", "--device=cpu", "--offline", "red"]) == 0
    assert seen == [True], seen
    capsys.readouterr()
    interrupt_on_call(monkeypatch, FT, "forward_batch", 2)   # Ctrl-C in the second batch
    try:
        rc = FT.main(["--predict", f"--init={out}", "--eval_batch_size=1", "--device=cpu", "red", "saw", "pink"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a KeyboardInterrupt")
    o, err = capsys.readouterr()
    assert rc == 130 and len(o.split()) == 1 and o.split()[0] in ("fruit", "tool", "color")
    assert err == f"\n{FT.PROG}: interrupted after 1 label\n"


def test_no_init_is_recorded_as_the_weights_it_resolved_to(tmp_path, monkeypatch):
    """Without --init the run saves what it started from (the newest train checkpoint, absolute, or
    'random'), not None: a --resume from the metrics header, from another folder or after train wrote a
    newer checkpoint, started from other weights (a random model instead of the pre-trained one)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(FT, "_newest_checkpoint", lambda d: (Path("out/ckpt_0000007.pt"), []))
    assert FT.default_init() == str(tmp_path / "out" / "ckpt_0000007.pt")
    monkeypatch.setattr(FT, "_newest_checkpoint", lambda d: (None, []))
    assert FT.default_init() == "random"
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    argv = [a for a in _ft_argv(task, None, tmp_path / "o", max_iters=1, ckpt_interval=1) if not a.startswith("--init")]
    assert FT.main(argv) == 0
    assert metrics(tmp_path / "o")[0]["config"]["init"] == "random"
    assert ck.load_checkpoint(ck.latest_checkpoint(tmp_path / "o"))["extra"]["finetune_config"]["init"] == "random"


def test_predict_file_lines_are_newline_separated(tmp_path):
    """A plain --predict_file splits at "\\n" only (CRLF too): splitlines() also split at U+0085, U+2028,
    form feeds and a lone "\\r" inside a text, so that line got two labels and the rest shifted; blank
    lines after the last text are dropped (they shift nothing), a blank line before it is refused."""
    f = tmp_path / "in.txt"
    f.write_bytes("great film\u0085 loved it\r\nawful\u2028truly\x0c\nok\rfine\n\n\n".encode())
    assert [e.text for e in T.read_inputs(f, "classify")] == ["great film\u0085 loved it", "awful\u2028truly\x0c",
                                                           "ok\rfine"]
    f.write_text("a\n\nb\n")
    with pytest.raises(T.TaskFileError, match=":2: blank line"):
        T.read_inputs(f, "classify")


def test_predict_on_a_fine_tune_without_best_yet_says_to_resume_it(tmp_path, tiny_init, capsys):
    """A fine-tune stopped before its first evaluation has checkpoints but no best/: --predict --init on it
    said 'not a fine-tuned model'; it says what to do."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(60))
    out = tmp_path / "o"
    assert FT.main(_ft_argv(task, tiny_init, out, max_iters=4, ckpt_interval=2)) == 0
    import shutil
    shutil.rmtree(out / "best")   # as if stopped at step 2, before the end-of-run evaluation
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        FT.main(["--predict", f"--init={out}", "--device=cpu", "some text"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "has no best/ model yet" in err and f"--resume --out_dir {out}" in err, err


def test_a_folder_as_task_is_named_as_one(tmp_path):
    with pytest.raises(T.TaskFileError, match="a folder, not a task file"):
        T.load_task(str(tmp_path))


def test_a_non_finite_loss_is_caught_before_a_checkpoint_between_log_lines(tmp_path, tiny_init, capsys, monkeypatch):
    """The loss was checked on log steps only: with --ckpt_interval 1 and a sparse --log_interval, checkpoints
    of NaN weights were written (and the good ones rotated out) before the error."""
    real, calls = FT.forward_batch, []

    def nan_at_3(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        return (*out[:3], out[3] * float("nan")) if len(calls) == 3 else out
    monkeypatch.setattr(FT, "forward_batch", nan_at_3)
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(60))
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        FT.main(_ft_argv(task, tiny_init, out, max_iters=6, ckpt_interval=1, log_interval=100, keep_ckpts=0))
    err = capsys.readouterr().err
    assert e.value.code == 1 and "the loss became nan at step 3" in err and "--dtype fp32" not in err, err
    assert ck.latest_checkpoint(out).name == "ckpt_0000002.pt"


# ----------------------------------------------------------------------------- the loop's arithmetic
# (a mutation review, 2026-11-27: a loop that back-propagated the task loss only, never clipped, or kept the
# peak lr after warmup passed every other test)

def test_finetune_trains_on_the_auxiliary_lm_loss(tmp_path, tiny_init):
    """L2 + lambda L1 is what is back-propagated, not only logged: from one init and one data order, a run
    with lambda = 0.5 ends with other embedding weights than a run with lambda = 0."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    sds = []
    for lam in (0.0, 0.5):
        out = tmp_path / f"o{lam}"
        FT.run(cfg_for(task, tiny_init, out, aux_lm_weight=lam, batch_size=8, max_iters=2))
        sds.append(GPT.from_pretrained(out / "best").state_dict())
    assert not torch.equal(sds[0]["transformer.wte.weight"], sds[1]["transformer.wte.weight"])


def test_finetune_clips_gradients(tmp_path, tiny_init, monkeypatch):
    """Every step clips the global gradient norm to --grad_clip."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        calls.append((max_norm, len({id(p) for p in params})))
        return real(params, max_norm, *a, **k)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    FT.run(cfg_for(task, tiny_init, tmp_path / "o", grad_clip=0.5, batch_size=8, max_iters=3))
    from safetensors.torch import load_file
    n = len(list(GPT.from_pretrained(tmp_path / "o" / "best").parameters())) + \
        len(load_file(str(tmp_path / "o" / "best" / "head.safetensors")))   # global: the backbone's and the head's
    assert calls == [(0.5, n)] * 3, (calls, n)


def test_linear_schedule_warms_up_then_decays_to_zero(tmp_path, tiny_init):
    """The paper's schedule: linear warmup to lr, then linear decay to 0 at the last step; the loop sets it
    on every param group (not only in the logged rows)."""
    f = lambda s: FT.linear_schedule(s, 1.0, 2, 10)  # noqa: E731
    assert f(0) == pytest.approx(1 / 3) and f(1) == pytest.approx(2 / 3)
    assert f(2) == pytest.approx(1.0) and f(6) == pytest.approx(0.5) and f(10) == 0.0
    assert all(f(s) >= f(s + 1) for s in range(2, 12))
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    FT.run(cfg_for(task, tiny_init, tmp_path / "o", batch_size=8, max_iters=3, warmup_frac=0.0))
    groups = ck.load_checkpoint(ck.latest_checkpoint(tmp_path / "o"))["optimizer"]["param_groups"]
    want = FT.linear_schedule(2, 2e-3, 0, 3)   # the lr of the last step taken (step index 2)
    assert want < 2e-3 and [g["lr"] for g in groups] == pytest.approx([want, want])


# ----------------------------------------------------------------------------- tasks and scoring
# (a second mutation review, 2026-11-28: each test failed on a mutant that every other test let through)

def _byte_task_tok():   # (test_input_transformations' stand-in base tokenizer)
    return T.TaskTokenizer(type("B", (), dict(n_vocab=256, encode=lambda s, t: list(t.encode()),
                                              decode=lambda s, i: bytes(i).decode()))())


def test_two_texts_of_equal_length_cut_the_first_at_a_tie():
    tok = _byte_task_tok()
    s, d, e = tok.start, tok.delim, tok.extract
    # budget 7 for 5 + 5 tokens: a tie cuts text (a), then b (now the longer), then a again: 3 + 4
    assert T.build_inputs("pair", tok, list(range(5)), 10, text_b_ids=list(range(10, 15))) == \
        [[s, 0, 1, 2, d, 10, 11, 12, 13, e]]


def test_split_fixed_is_fixed_and_never_leaves_val_or_test_empty():
    random.seed(1)
    a = T.split_fixed(list(range(50)))
    random.seed(2)
    assert T.split_fixed(list(range(50))) == a          # independent of the global random state (--seed)
    assert [len(x) for x in a] == [40, 5, 5]
    for n in (3, 4):                                    # 10% of 3 or 4 rounds to 0: still one each
        tr, va, te = T.split_fixed(list(range(n)))
        assert (len(tr), len(va), len(te)) == (n - 2, 1, 1)


def test_numeric_labels_sort_as_numbers_and_float_integers_are_integers(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps(dict(text=f"t{i}", label=lab)) + "\n"
                         for i, lab in enumerate([10, 2, 1.0, "1", 2.0, 10])))
    _, labels, exs = T.parse_rows(p)
    assert labels == ["1", "2", "10"]
    assert [e.label for e in exs] == [2, 1, 0, 0, 1, 2]


def test_a_json_integer_choice_label_is_an_index_even_when_a_choice_reads_the_same(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(dict(text="q", choices=["1", "0"], label=0)) + "\n"
                 + json.dumps(dict(text="q", choices=["1", "0"], label="0")) + "\n")
    _, _, exs = T.parse_rows(p)
    assert [e.label for e in exs] == [0, 1]   # int 0: the first choice; text "0": the choice that reads "0"


def test_macro_f1_skips_absent_classes_and_majority_is_the_most_frequent_label():
    assert T.macro_f1([0, 0], [0, 0], 3) == 1.0       # classes 1 and 2: never seen, never predicted
    assert math.isclose(T.macro_f1([0, 1], [0, 0], 3), (2 / 3 + 0.0) / 2)
    tr = [T.Example("a", 0), T.Example("b", 0), T.Example("c", 1)]
    assert T.majority_accuracy(tr, [T.Example("d", 0), T.Example("e", 0), T.Example("f", 1)]) == 2 / 3


def test_eval_loss_is_the_mean_over_examples_not_over_batches():
    import contextlib
    tok = _byte_task_tok()
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=259, block_size=64, n_layer=1, n_head=2, n_embd=64, dropout=0.0),
            backend="reference").eval()
    head = FT.build_head(64, 2, 0.0).eval()
    exs = [T.Example(t, lab) for t, lab in (("red", 0), ("saw", 1), ("a pink hammer", 1))]
    enc = FT.encode_all(exs, "classify", tok, 32)

    def loss(batch, bs):
        return FT.predict_encoded(m, head, batch, "classify", bs, "cpu", contextlib.nullcontext)[1]
    per_example = [loss([e], 1) for e in enc]
    assert math.isclose(loss(enc, 2), sum(per_example) / 3, rel_tol=1e-5)
    assert math.isclose(loss(enc, 1), sum(per_example) / 3, rel_tol=1e-5)


def test_an_out_dir_removed_mid_run_is_not_made_again(tmp_path, tiny_init, monkeypatch):
    """(a review, 2026-11-29) As for train: a fine-tune whose --out_dir was deleted stops at its next save (it
    made the folder again, without its .lock)."""
    from fastgpt import checkpoint as ck
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(60))
    out = tmp_path / "o"
    remove_out_dir_after_each_save(monkeypatch)
    with pytest.raises(ck.CheckpointError, match="was removed \\(or replaced\\) while this run wrote it"):
        FT.run(cfg_for(task, tiny_init, out, max_iters=4, ckpt_interval=1))
    assert not out.exists()


# ----------------------------------------------------------------------------- from a mutation audit (2026-11-29)
# each test names the one-line mutant it kills, which the suite had let through

def test_similarity_sums_each_examples_own_two_orders_in_a_batch_of_several():
    """Mutant: feats.view(2, B, C).sum(0) (rows are example-major: ex0 a$b, ex0 b$a, ex1 a$b, ...). With one
    example in the batch (the only case tested before) both groupings agree; with two, the wrong one sums
    ex0's a$b with ex1's a$b: every similarity example trains on another's features."""
    torch.manual_seed(0)
    cfg = GPTConfig(**TINY)
    m = GPT(cfg)
    FT.grow_vocab(m, 3)
    m.eval()
    head = FT.build_head(64, 2, 0.0)
    s, d, e = 256, 257, 258
    sim = [FT.Encoded([[s, 5, d, 6, 7, e], [s, 6, 7, d, 5, e]], 1),
           FT.Encoded([[s, 9, 9, d, 4, e], [s, 4, d, 9, 9, e]], 0),
           FT.Encoded([[s, 1, d, 2, e], [s, 2, d, 1, e]], 1)]
    logits, *_ = FT.forward_batch(m, head, FT.collate(sim, "cpu"), "similarity", 0.0)
    for i, ex in enumerate(sim):
        h = sum(m.hidden_states(torch.tensor([q]))[0, -1] for q in ex.seqs)
        torch.testing.assert_close(logits[i], head(h).float())


def _scripted_val_accuracy(monkeypatch, accs, f1s=None):
    """FT.score with the validation accuracies (and macro-F1s, else 0.5) of the first len(accs) calls (the epoch
    ends) replaced by accs; records the head weights each call was given."""
    real, seen = FT.score, []

    def score(model, head, data, *a, **k):
        r = real(model, head, data, *a, **k)
        seen.append(head[1].weight.detach().cpu().clone())
        if len(seen) <= len(accs):
            r = dict(r, accuracy=accs[len(seen) - 1], macro_f1=0.5 if f1s is None else f1s[len(seen) - 1])
        return r
    monkeypatch.setattr(FT, "score", score)
    return seen


def test_best_is_the_highest_validation_accuracy_not_the_first_or_last(tmp_path, tiny_init, monkeypatch):
    """Mutant: the comparison in evaluate_and_keep flipped (or keep-last). Validation accuracies 0.5, 0.9, 0.7
    over three epochs: best/ is epoch 2's model, eval.json says so, metrics mark only epochs 1 and 2 best."""
    from safetensors.torch import load_file
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    seen = _scripted_val_accuracy(monkeypatch, [0.5, 0.9, 0.7])
    out = tmp_path / "o"
    s = FT.run(cfg_for(task, tiny_init, out, epochs=3, batch_size=16))
    assert s["val"]["accuracy"] == 0.9 and s["val"]["epoch"] == 2, s["val"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["best"] for x in rows if "val_accuracy" in x] == [True, True, False]
    best_w = load_file(str(out / "best" / "head.safetensors"))["1.weight"]
    assert torch.equal(best_w, seen[1]) and not torch.equal(best_w, seen[2])


def test_best_breaks_an_accuracy_tie_by_macro_f1_and_survives_a_resume(tmp_path, tiny_init, monkeypatch):
    """(a mutation audit, 2026-11-30: the tie-break dropped, macro-F1 compared first, or the best not restored on
    --resume, each passed every test) accuracy first, then macro-F1: epochs (0.7, 0.9), (0.9, 0.5), (0.9, 0.6),
    (0.8, 0.95) make epoch 3 best; a resumed run keeps the best of the epochs before it."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    _scripted_val_accuracy(monkeypatch, [0.7, 0.9, 0.9, 0.8], [0.9, 0.5, 0.6, 0.95])
    s = FT.run(cfg_for(task, tiny_init, tmp_path / "o", epochs=4, batch_size=16))
    assert s["val"]["epoch"] == 3 and s["val"]["macro_f1"] == 0.6, s["val"]
    out = tmp_path / "r"
    _scripted_val_accuracy(monkeypatch, [0.9])
    assert FT.main(_ft_argv(task, tiny_init, out, max_iters=None, epochs=1, batch_size=16)) == 0
    _scripted_val_accuracy(monkeypatch, [0.5])   # (the resumed process's first evaluation: epoch 2, worse)
    assert FT.main(["--resume", f"--out_dir={out}", "--device=cpu", "--epochs=2"]) == 0
    assert json.loads((out / "eval.json").read_text())["val"]["epoch"] == 1


def test_warmup_is_a_fraction_of_all_the_steps_and_each_epoch_has_its_own_order(tmp_path, tiny_init, monkeypatch):
    """(a mutation audit: warmup as a fraction of one epoch's steps, or one order for every epoch, passed every
    test) 32 training rows, batch 8, 2 epochs: 8 steps, warmup 0.5 x 8 = 4, the first lr lr / 5; the second
    epoch sees the same rows in another order."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))   # (80/10/10: 32 train)
    orders, collate = [], FT.collate
    monkeypatch.setattr(FT, "collate", lambda chunk, *a, **k: orders.append([str(e.seqs) for e in chunk])
                        or collate(chunk, *a, **k))
    out = tmp_path / "o"
    FT.run(cfg_for(task, tiny_init, out, epochs=2, batch_size=8, warmup_frac=0.5, lr=1e-3))
    lrs = [r["lr"] for r in metrics(out) if "lr" in r]
    assert lrs[0] == pytest.approx(1e-3 / 5), lrs
    steps = [o for o in orders if len(o) == 8]   # (the validation and test batches: 4 rows each)
    first, second = (sum(steps[i:i + 4], []) for i in (0, 4))
    assert len(first) == 32 and sorted(first) == sorted(second) and first != second


def test_fp16_clips_the_unscaled_gradients(tmp_path, tiny_init, monkeypatch):
    """(a mutation audit, 2026-11-30: scaler.unscale_ dropped passed every test) under fp16 (a GPU without native
    bf16) the gradient norm is clipped after the loss scale is taken out: the first step's norm is the fp32 run's,
    not 65536 times it. fp16 runs on the CPU here (autocast + GradScaler("cpu"), as test_robust does for train)."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    real_dd, real_clip, norms = FT._device_and_dtype, torch.nn.utils.clip_grad_norm_, {}

    def clip(params, *a, **k):
        params = list(params)
        norms.setdefault(dtype, float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))))
        return real_clip(params, *a, **k)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    for dtype in ("fp32", "fp16"):
        monkeypatch.setattr(FT, "_device_and_dtype", lambda cfg: dataclasses.replace(real_dd(cfg), dtype=dtype))
        FT.run(cfg_for(task, tiny_init, tmp_path / dtype, max_iters=1))
    assert 0.8 < norms["fp16"] / norms["fp32"] < 1.25, norms


def test_the_majority_baseline_is_the_training_splits_majority_label_on_test(tmp_path, tiny_init):
    """(a mutation audit: the test split's own majority passed every test) the baseline answers the training
    split's most frequent label: here 'fruit' in train, a quarter of test."""
    task = write_jsonl(tmp_path / "train.jsonl", class_rows(40))   # (50 % fruit)
    test = write_jsonl(tmp_path / "test.jsonl", [dict(text="red", label="color")] * 3 + [dict(text="saw",
                                                                                                label="fruit")])
    s = FT.run(cfg_for(task, tiny_init, tmp_path / "o", test_file=test, max_iters=1))
    assert s["majority_accuracy"] == 0.25, s


def test_the_test_split_is_scored_with_the_best_model_not_the_last(tmp_path, tiny_init, monkeypatch):
    """Mutant: best_model, best_head = model, head (the final weights score the test split). The epoch-2 model
    is best; the test score must come from it."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    seen = _scripted_val_accuracy(monkeypatch, [0.5, 0.9, 0.7])
    FT.run(cfg_for(task, tiny_init, tmp_path / "o", epochs=3, batch_size=16))
    assert len(seen) == 4                              # 3 validations + the test
    assert torch.equal(seen[3], seen[1]) and not torch.equal(seen[3], seen[2])


def test_predict_choice_answers_come_from_each_rows_own_choices_across_batches(tmp_path, tiny_init):
    """Mutant: zip(exs[:len(preds)], preds) (the batch offset dropped): from the second batch on, a choice
    answer was looked up in the first rows' choices. eval_batch_size=1 makes every row its own batch."""
    rows = [dict(text=f"q{i}", choices=["saw", "mango"], label=i % 2) for i in range(12)]
    task = write_jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "o"
    FT.run(cfg_for(task, tiny_init, out, max_iters=1))
    asks = [["saw", "mango"], ["red", "drill", "apple"], ["x1", "x2", "x3", "x4"]]
    inp = write_jsonl(tmp_path / "ask.jsonl", [dict(text="which?", choices=c) for c in asks])
    got = list(FT.predict(FT.FinetuneConfig(init=str(out), predict=True, predict_file=inp, device=DEVICE,
                                            eval_batch_size=1), []))
    assert len(got) == 3 and all(g in c for g, c in zip(got, asks)), got


def test_an_empty_text_b_cell_in_a_csv_is_no_text_b(tmp_path):
    """Mutant: only 'choices' of an empty CSV cell read as absent: a classify CSV with an (empty) text_b
    column, as spreadsheets export it, was refused ("empty 'text_b'"), for training and for --predict."""
    p = tmp_path / "t.csv"
    p.write_text("text,text_b,label\nred apple,,fruit\nold saw,,tool\n")
    tt, labels, exs = T.parse_rows(p)
    assert tt == "classify" and labels == ["fruit", "tool"] and [e.text_b for e in exs] == [None, None]
    assert [e.text_b for e in T.read_inputs(p, "classify")] == [None, None]


def test_json_booleans_are_labels_as_their_json_text_and_agree_with_csv(tmp_path):
    """Mutant: str(v) for a JSON boolean ("True"): a JSONL true and a CSV true were two labels (a --val_file in
    CSV then had an unknown label), and --predict printed Python's spelling."""
    j = write_jsonl(tmp_path / "t.jsonl", [dict(text="a", label=True), dict(text="b", label=False)])
    assert T.parse_rows(j)[1] == ["false", "true"]
    c = tmp_path / "v.csv"
    with open(c, "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], ["c", "true"], ["d", "false"]])
    assert [e.label for e in T.parse_rows(c, "classify", ["false", "true"])[2]] == [1, 0]


def test_predict_takes_a_config_option_with_its_value():
    """Mutant: under --predict, --config (no FinetuneConfig field) was taken for an unknown option."""
    for argv in (["--predict", "--config", "c.json", "a text"], ["--predict", "--config=c.json", "a text"]):
        opts, texts = FT._split_positionals(argv)
        assert opts == argv[:-1] and texts == ["a text"]


def test_the_hint_to_continue_does_not_repeat_an_automatic_device(tmp_path, tiny_init, capsys, monkeypatch):
    """Mutant: the stop line's flags taken from the resolved options (--device=cpu, which this run was not
    given: the machine picked it)."""
    import os
    import signal
    real = FT.collate

    def collate_then_signal(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)
    monkeypatch.setattr(FT, "collate", collate_then_signal)
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    out = tmp_path / "o"
    argv = [a for a in _ft_argv(task, tiny_init, out, max_iters=20) if not a.startswith("--device=")]
    assert FT.main(argv) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "SIGTERM: stopped after step 1/" in last and last.endswith(
        f"(continue with: {FT.PROG} --resume --out_dir {out})"), last


def test_a_damaged_training_checkpoint_as_init_is_refused_not_loaded_plainly(tmp_path):
    """--init with a fastgpt.train checkpoint whose bytes were flipped inside a weight: the checksum
    refuses it in one line (a mutation audit, 2026-11-30: with that branch gone, the file fell through to
    load_model's plain torch.load, which loaded the damaged weights without a word)."""
    m = tiny_model()
    p = ck.save_checkpoint(tmp_path / "pre", dict(step=1, model=m.state_dict(), config=m.config.to_dict()))
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x10   # in the middle of the weights: torch.load itself would not notice
    p.write_bytes(bytes(b))
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(20))
    with pytest.raises(FT.RunError, match=f"--init {p}: .*checksum mismatch"):
        FT.load_init(str(p), FT.FinetuneConfig(task=task), "cpu")


def test_epoch_checkpoints_are_rotated(tmp_path, tiny_init):
    """--keep_ckpts N keeps the newest N of a fine-tuning run's checkpoints (a mutation audit, 2026-11-30:
    saving them all passed every test)."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(60))
    out = tmp_path / "o"
    assert FT.main(_ft_argv(task, tiny_init, out, max_iters=6, ckpt_interval=1, keep_ckpts=2)) == 0
    assert [ck._step(p) for p in ck.list_checkpoints(out)] == [5, 6]


def test_fp16_resume_restores_the_loss_scale(tmp_path, tiny_init, monkeypatch):
    """An fp16 fine-tuning run resumed keeps its GradScaler's loss scale (a mutation audit, 2026-11-30: the
    restore dropped, it started again from 65536, passed every test). fp16 on the CPU as above; the saved
    scale is set to 1024 so that restored and default differ."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    real_dd = FT._device_and_dtype
    monkeypatch.setattr(FT, "_device_and_dtype",   # (the resumed run's saved options say fp16 already)
                        lambda cfg: dataclasses.replace(real_dd(dataclasses.replace(cfg, dtype=None)), dtype="fp16"))
    out = tmp_path / "o"
    FT.run(cfg_for(task, tiny_init, out, max_iters=2, epochs=3, ckpt_interval=2, keep_ckpts=0))
    st = ck.load_checkpoint(ck.latest_checkpoint(out))
    assert st["step"] == 2 and st["scaler"]["scale"] == 65536.0
    st["scaler"]["scale"] = 1024.0
    ck.save_checkpoint(out, st, keep=0)
    FT.run(cfg_for(task, tiny_init, out, max_iters=3, epochs=3, ckpt_interval=1, keep_ckpts=0, resume=True),
           {"max_iters", "ckpt_interval"})
    st = ck.load_checkpoint(ck.latest_checkpoint(out))
    assert st["step"] == 3 and st["scaler"]["scale"] == 1024.0, st["scaler"]


# ----------------------------------------------------------------------------- a mutation audit's cases
# (a mutation audit of tasks.py and the task head, 2026-11-30: each of these passed every test when broken)

def _seeded_tiny(**over):
    torch.manual_seed(0)
    return tiny_model(**over)


def test_the_fixed_split_shuffles_a_label_sorted_file(tmp_path):
    """Mutant: split_fixed without its shuffle (val / test = the file's first 10% / next 10%). Files are often
    sorted by label: then validation and test held one class only."""
    p = write_jsonl(tmp_path / "sorted.jsonl",
                    [dict(text=f"t{i}", label="neg" if i < 50 else "pos") for i in range(100)])
    task = T.load_task(str(p))
    assert {e.label for e in task.val} == {0, 1} and {e.label for e in task.test} == {0, 1}


@pytest.mark.parametrize("label", [2, -1, "2", "-1"])
def test_a_choice_label_outside_the_choices_is_a_file_error(tmp_path, label):
    """Mutants: 0 <= k <= len(choices), and the 0 <= dropped: label 2 of 2 choices (or -1) was taken, and the
    run crashed in cross_entropy (a device assert on CUDA; -1 made the task loss None) instead of FILE:LINE."""
    p = write_jsonl(tmp_path / "c.jsonl", [dict(text="q", choices=["a", "b"], label=0),
                                      dict(text="q", choices=["a", "b"], label=label)])
    with pytest.raises(T.TaskFileError, match=r"c\.jsonl:2: unknown label"):
        T.parse_rows(p)


def test_a_file_with_one_label_is_refused(tmp_path):
    """Mutant: len(labels) < 1: a file whose every row has one label trained a one-class 'classifier'."""
    p = write_jsonl(tmp_path / "one.jsonl", [dict(text=f"t{i}", label="a") for i in range(5)])
    with pytest.raises(T.TaskFileError, match=r"one\.jsonl:1: every example has the label 'a'"):
        T.parse_rows(p)


def test_a_row_with_one_choice_is_refused(tmp_path):
    """Mutant: len(choices) < 1: a one-choice row (always right) was trained and scored."""
    p = write_jsonl(tmp_path / "c.jsonl", [dict(text="q", choices=["a", "b"], label=0), dict(text="q", choices=["a"],
                                                                                        label=0)])
    with pytest.raises(T.TaskFileError, match=r"c\.jsonl:2: 'choices' must be a list of at least 2"):
        T.parse_rows(p)


def test_text_b_in_a_classify_file_is_refused(tmp_path):
    """Mutant: the check dropped: a pair file without --task_type trained on 'text' alone, text_b ignored."""
    p = write_jsonl(tmp_path / "p.jsonl",
                    [dict(text="x", text_b="y", label="a"), dict(text="u", text_b="v", label="b")])
    with pytest.raises(T.TaskFileError, match=r"p\.jsonl:1: has 'text_b'; pass --task_type pair"):
        T.parse_rows(p)


def test_a_pair_row_without_text_b_is_a_file_error(tmp_path):
    """Mutants: text_b not required for pair / similarity (task file, and --predict_file): build_inputs then
    failed with a TypeError (list(None)) instead of naming the row."""
    p = write_jsonl(tmp_path / "p.jsonl", [dict(text="x", text_b="y", label="a"), dict(text="u", label="b")])
    for tt in ("pair", "similarity"):
        with pytest.raises(T.TaskFileError, match=r"p\.jsonl:2: missing field 'text_b'"):
            T.parse_rows(p, tt)
        with pytest.raises(T.TaskFileError, match=r"p\.jsonl:2: missing field 'text_b'"):
            T.read_inputs(p, tt)


def test_a_bad_first_csv_row_is_named_by_its_own_line(tmp_path):
    """Mutant: start = reader.line_num (not + 1) before the first row: its errors named line 1, the header."""
    p = tmp_path / "t.csv"
    p.write_text("text,label\n,a\nb,c\n")
    with pytest.raises(T.TaskFileError, match=r"t\.csv:2: empty 'text'"):
        T.parse_rows(p)


def test_a_test_files_labels_index_the_training_labels(tmp_path):
    """Mutant: the --test_file parsed with its own label set: a test file with a subset of the labels got other
    indices (every score wrong) and an unknown label went unreported."""
    tr = write_jsonl(tmp_path / "tr.jsonl", [dict(text=f"t{i}", label=l) for i, l in enumerate(["a", "b", "c"] * 4)])
    te = write_jsonl(tmp_path / "te.jsonl", [dict(text="x", label="c"), dict(text="y", label="b")])
    task = T.load_task(str(tr), test_file=str(te))
    assert task.labels == ["a", "b", "c"] and [e.label for e in task.test] == [2, 1]
    bad = write_jsonl(tmp_path / "bad.jsonl", [dict(text="x", label="c"), dict(text="y", label="z")])
    with pytest.raises(T.TaskFileError, match=r"bad\.jsonl:2: unknown label 'z'"):
        T.load_task(str(tr), test_file=str(bad))


def test_macro_f1_without_n_classes_counts_a_predicted_only_class():
    """Mutant: classes = set(gold) when n_classes is None (the choice tasks' call: n_classes 0): a choice
    predicted but never right was left out, and macro-F1 read 2/3 instead of 1/3."""
    assert math.isclose(T.macro_f1([0, 1], [0, 0]), (2 / 3 + 0.0) / 2)
    assert math.isclose(T.macro_f1([0, 1], [0, 0]), T.macro_f1([0, 1], [0, 0], 3))


def test_the_auxiliary_lm_loss_trains_the_transformer_blocks():
    """Mutant: model.lm_loss(h.detach(), ...): the auxiliary loss still changed the (tied) embedding, which is
    all test_finetune_trains_on_the_auxiliary_lm_loss checks, but no longer the transformer blocks."""
    m = _seeded_tiny()
    FT.grow_vocab(m, 3)
    head = FT.build_head(64, 2, 0.0)
    b = FT.collate([FT.Encoded([[256, 5, 6, 7, 258]], 0), FT.Encoded([[256, 9, 258]], 1)], "cpu")
    _, _, lm, _ = FT.forward_batch(m, head, b, "classify", 0.5)
    lm.backward()
    blocks = [p for n, p in m.named_parameters() if ".h." in n or n.startswith("transformer.h")]
    assert blocks and all(p.grad is not None for p in blocks)
    m2 = _seeded_tiny()
    FT.grow_vocab(m2, 3)
    m2(b["idx"], b["targets"])[1].backward()    # the model's own LM loss: the same gradients
    for (n, p), p2 in zip(m.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p.grad, p2.grad, msg=n)


def test_validation_and_test_scores_are_computed_without_dropout():
    """Mutant: predict_batches without model.eval() / head.eval(): with the default --clf_dropout 0.1 (and the
    backbone's dropout) every validation / test score was a random draw, and best/ was picked on noise."""
    import contextlib
    m = _seeded_tiny(vocab_size=259, dropout=0.3)
    head = FT.build_head(64, 3, 0.5)
    m.train()
    head.train()
    tok = T.TaskTokenizer(type("B", (), dict(n_vocab=256, encode=lambda s, t: list(t.encode()),
                                             decode=lambda s, i: bytes(i).decode()))())
    exs = [T.Example(t, k % 3) for k, t in enumerate(["red", "saw", "a pink hammer", "apple", "drill", "blue sky"])]
    enc = FT.encode_all(exs, "classify", tok, 32)
    runs = [FT.predict_encoded(m, head, enc, "classify", 4, "cpu", contextlib.nullcontext) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert m.training and head.training     # restored for training
    with torch.no_grad():
        b = FT.collate(enc, "cpu")
        m.eval(), head.eval()
        logits, *_ = FT.forward_batch(m, head, b, "classify", 0.0)
    assert runs[0][0] == logits.argmax(-1).tolist()


def test_the_head_has_one_output_per_label(tmp_path):
    """Mutant: n_head_outputs = n_classes + 1: an output that names no label (trained down, but --predict
    indexed labels[3] when it won)."""
    d = tmp_path / "init"
    _seeded_tiny().save_pretrained(d)
    rows = [dict(text=w, label=l) for l, ws in (("fruit", "apple mango"), ("tool", "saw drill"), ("color", "red blue"))
            for w in ws.split()] * 4
    task = write_jsonl(tmp_path / "t.jsonl", rows)
    FT.run(FT.FinetuneConfig(task=str(task), init=str(d), out_dir=str(tmp_path / "o"), device=DEVICE, epochs=1,
                             max_iters=1, batch_size=8, seed=0, progress=False))
    _, head, meta, _ = FT.load_finetuned(tmp_path / "o")
    assert len(meta["labels"]) == 3 and head[1].out_features == 3


def test_text_b_in_a_choice_file_is_refused_and_float_labels_read_as_their_text(tmp_path):
    """(a review, 2026-11-30) A choice task's 'text_b' (a question beside its context, say) was dropped without a
    word, in a task file and in --predict_file: refused, as a classify file's is. A JSON 1.0 label read as "1"
    and a CSV cell 1.0 as "1.0", so a CSV --val_file beside a JSONL task said "unknown label": both are "1"
    (a choice row's label stays text: it may name a choice that reads "1.0"; naming none, 1.0 is index 1)."""
    p = write_jsonl(tmp_path / "c.jsonl", [dict(text="ctx", choices=["a", "b"], label=0),
                                      dict(text="ctx", text_b="q?", choices=["a", "b"], label=1)])
    with pytest.raises(T.TaskFileError, match=r"c\.jsonl:2: has 'text_b', which a choice task does not read"):
        T.parse_rows(p)
    with pytest.raises(T.TaskFileError, match=r"c\.jsonl:2: has 'text_b', but the model is a choice model"):
        T.read_inputs(p, "choice")
    tr = write_jsonl(tmp_path / "tr.jsonl", [dict(text=f"t{i}", label=float(i % 2)) for i in range(20)])
    va = tmp_path / "va.csv"
    va.write_text("text,label\nx,1.0\ny,0.0\n")
    task = T.load_task(str(tr), val_file=str(va))
    assert task.labels == ["0", "1"] and [e.label for e in task.val] == [1, 0]
    big = tmp_path / "big.csv"   # as text: 17+ digits are not rounded (a float would make ...567 into ...568)
    big.write_text("text,label\n" + "".join(f"t{i},{lab}\n" for i, lab in enumerate(
        ["12345678901234567.0", "12345678901234567", "-0.0", "0", "1.", "1"])))
    assert T.parse_rows(big)[1] == ["0", "1", "1.", "12345678901234567"]   # ("1." is text: not 1.0)
    c = tmp_path / "c.csv"
    c.write_text('text,choices,label\nq,"[""0.5"", ""1.0""]",1.0\nq,"[""a"", ""b""]",1\nq,"[""a"", ""b""]",1.0\n'
                 'q,"[""a"", ""1""]",1.00\n')
    assert [e.label for e in T.parse_rows(c)[2]] == [1, 1, 1, 1]   # (1.0 naming no choice: index 1, as JSONL's 1.0)
    c.write_text('text,choices,label\nq,"[""a"", ""b""]",2.0\n')
    with pytest.raises(T.TaskFileError, match=r"c\.csv:2: unknown label '2\.0'"):
        T.parse_rows(c)


# ----------------------------------------------------------------------------- from a mutation audit of finetune.py
# (2026-11-30: each test below failed on a mutant that every other test let through, and passes on the code)


def test_an_exact_tie_keeps_the_earlier_best(tmp_path, tiny_init, monkeypatch):
    """Equal validation accuracy and macro-F1: best/ stays the first epoch's (the model kept is the one first
    seen to score that; a later equal one is not "best so far")."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    _scripted_val_accuracy(monkeypatch, [0.8, 0.8], [0.6, 0.6])
    out = tmp_path / "o"
    s = FT.run(cfg_for(task, tiny_init, out, epochs=2, batch_size=16))
    assert s["val"]["epoch"] == 1, s["val"]
    assert [x["best"] for x in metrics(out) if "val_accuracy" in x] == [True, False]


def test_a_resume_with_nothing_left_to_train_still_scores_and_keeps_a_best(tmp_path, tiny_init):
    """A run stopped at a --ckpt_interval checkpoint before its first epoch end (no best/ yet), resumed with
    --max_iters at that step: nothing to train, so the model it has is evaluated, kept in best/, and scored on test."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(60))   # (48 train, batch 4: 12 steps an epoch)
    out = tmp_path / "o"
    assert FT.main(_ft_argv(task, tiny_init, out, max_iters=2, epochs=1, ckpt_interval=1, keep_ckpts=0)) == 0
    for p in ck.list_checkpoints(out)[1:]:   # as if stopped after step 1's checkpoint
        p.unlink()
    __import__("shutil").rmtree(out / "best")
    (out / "eval.json").unlink()
    assert FT.main(["--resume", f"--out_dir={out}", "--device=cpu", "--max_iters=1"]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["steps"] == 1 and ev["val"]["step"] == 1 and ev["accuracy"] is not None
    assert (out / "best" / "finetune.json").exists()


def test_a_choice_tasks_macro_f1_counts_the_choice_indices():
    tok = _byte_task_tok()
    m = _seeded_tiny(vocab_size=259).eval()
    head = FT.build_head(64, 1, 0.0).eval()
    exs = [T.Example(f"q{i}", 0, choices=["saw", "mango", "red"][: 2 + i % 2]) for i in range(8)]
    enc = FT.encode_all(exs, "choice", tok, 32)
    preds, _ = FT.predict_encoded(m, head, enc, "choice", 4, "cpu", contextlib.nullcontext)
    for i, e in enumerate(enc):   # half right, half wrong: accuracy 0.5
        e.label = preds[i] if i % 2 == 0 else (preds[i] + 1) % len(e.seqs)
    gold = [e.label for e in enc]
    r = FT.score(m, head, enc, "choice", 0, 4, "cpu", contextlib.nullcontext)   # (a choice task: n_classes 0)
    assert r["accuracy"] == 0.5
    assert r["macro_f1"] > 0 and math.isclose(r["macro_f1"], T.macro_f1(preds, gold)), (r, preds, gold)


def test_ckpt_interval_saves_every_nth_step_and_the_end(tmp_path, tiny_init):
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(60))   # (48 train, batch 4: 12 steps an epoch)
    out = tmp_path / "o"
    assert FT.main(_ft_argv(task, tiny_init, out, max_iters=7, ckpt_interval=3, keep_ckpts=0)) == 0
    assert [ck._step(p) for p in ck.list_checkpoints(out)] == [3, 6, 7]


def test_the_head_drops_out_its_input_by_clf_dropout():
    head = FT.build_head(64, 3, 0.5).train()
    x = torch.ones(16, 64)
    torch.manual_seed(0)
    assert not torch.equal(head(x), head(x))           # training: dropout on the head's input
    head.eval()
    assert torch.equal(head(x), head(x))


def test_clf_dropout_and_max_len_reach_the_run(tmp_path, tiny_init, monkeypatch):
    """--clf_dropout is the head's rate (not 0); --max_len truncates every sequence (saved for --predict), and
    --max_len equal to the model's block_size is accepted."""
    rates, lens, real_build, real_collate = [], [], FT.build_head, FT.collate
    monkeypatch.setattr(FT, "build_head", lambda n, k, p: rates.append(p) or real_build(n, k, p))
    monkeypatch.setattr(FT, "collate", lambda chunk, *a, **k: lens.extend(len(s) for e in chunk for s in e.seqs)
                        or real_collate(chunk, *a, **k))
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    s = FT.run(cfg_for(task, tiny_init, tmp_path / "o", clf_dropout=0.3, max_len=8, batch_size=16, max_iters=1))
    assert rates[0] == 0.3
    assert s["max_len"] == 8 and max(lens) == 8
    assert json.loads((tmp_path / "o" / "best" / "finetune.json").read_text())["max_len"] == 8
    s = FT.run(cfg_for(task, tiny_init, tmp_path / "o64", max_len=64, batch_size=16, max_iters=1))   # = block_size
    assert s["max_len"] == 64


def test_the_defaults_are_the_papers_fine_tuning_recipe():
    """Radford et al. 2018, 3.2 / 4.1: lr 6.25e-5, batch 32, 3 epochs, warmup over 0.2% of training, lambda 0.5,
    dropout 0.1 on the classifier, w = 0.01. The module doc and --help promise these; a run without options
    relies on them."""
    c = FT.FinetuneConfig()
    assert (c.lr, c.batch_size, c.epochs, c.warmup_frac) == (6.25e-5, 32, 3, 0.002)
    assert (c.aux_lm_weight, c.clf_dropout, c.weight_decay, c.grad_clip) == (0.5, 0.1, 0.01, 1.0)
    assert c.validate() == []


def test_a_fine_tuned_model_as_init_continues_with_its_specials(tmp_path, tiny_init):
    """--init a fine-tune's out_dir (the module doc: "a fine-tuned output (its backbone)"): its best/ backbone, the
    special tokens already in the vocabulary (not added again), on a new task."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    FT.run(cfg_for(task, tiny_init, tmp_path / "a", batch_size=16, max_iters=1))
    rows = [dict(text=r["text"], label="long" if len(r["text"]) > 14 else "short") for r in class_rows(40, seed=1)]
    task2 = write_jsonl(tmp_path / "len.jsonl", rows)
    s = FT.run(cfg_for(task2, str(tmp_path / "a"), tmp_path / "b", batch_size=16, max_iters=1))
    assert s["init"].startswith("fine-tuned model") and s["init"].endswith(str(tmp_path / "a" / "best")), s["init"]
    m = GPT.from_pretrained(tmp_path / "b" / "best")
    assert m.config.vocab_size == 259 and m.config.padded_vocab_size == 320
    assert json.loads((tmp_path / "b" / "best" / "finetune.json").read_text())["labels"] == ["long", "short"]


def test_an_init_whose_vocabulary_does_not_fit_its_tokenizer_is_one_line(tmp_path):
    d = tmp_path / "init"
    tiny_model(vocab_size=128).save_pretrained(d)   # (records the byte tokenizer: 256 tokens)
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    with pytest.raises(FT.RunError, match=r"vocabulary \(128\) does not match the byte tokenizer \(256\)"):
        FT.run(cfg_for(task, str(d), tmp_path / "o", batch_size=16, max_iters=1))


def test_max_iters_is_a_cap_not_a_step_count_and_warmup_rounds_to_nearest(tmp_path, tiny_init):
    """--max_iters caps the optimizer steps at epochs x steps per epoch (its help: "cap on the optimizer steps";
    a mutant that trained --max_iters steps ran 25 epochs instead of 2 and passed every test); warmup is
    round(warmup_frac x total): 0.4 x 4 = 1.6 -> 2 steps, the first lr lr / 3 (floor: 1 step, lr / 2)."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))   # (80/10/10: 32 train, batch 16: 2 steps an epoch)
    out = tmp_path / "o"
    s = FT.run(cfg_for(task, tiny_init, out, epochs=2, batch_size=16, max_iters=50, warmup_frac=0.4, lr=1e-3))
    assert s["steps"] == 4 and s["epochs"] == 2, s
    rows = metrics(out)
    assert rows[0]["steps"] == 4
    assert [r["epoch"] for r in rows if "val_accuracy" in r] == [1, 2]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert len(lrs) == 4 and lrs[0] == pytest.approx(1e-3 / 3) and lrs[1] == pytest.approx(2e-3 / 3), lrs


def test_weight_decay_is_on_matrices_only_and_grad_clip_0_is_off(tmp_path, tiny_init, monkeypatch):
    """AdamW decays the matrices / embeddings by --weight_decay (the paper's w = 0.01) and nothing else; the head's
    weight is among them. --grad_clip 0 means no clipping (help: "0 = off"): clip_grad_norm_ is never called."""
    groups, clips = [], []
    real_adamw, real_clip = torch.optim.AdamW, torch.nn.utils.clip_grad_norm_

    def adamw(params, *a, **k):
        groups.append([dict(g, params=list(g["params"])) for g in params])
        assert k["betas"] == (0.9, 0.999) and k["eps"] == 1e-8   # (the paper's Adam)
        return real_adamw(groups[-1], *a, **k)

    def clip(*a, **k):
        clips.append(1)
        return real_clip(*a, **k)
    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    FT.run(cfg_for(task, tiny_init, tmp_path / "o", weight_decay=0.05, grad_clip=0.0, batch_size=16, max_iters=1))
    assert clips == []
    (g,) = groups
    decay, no_decay = g
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["params"] and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["params"] and all(p.dim() < 2 for p in no_decay["params"])
    assert any(p.shape == (3, 64) for p in decay["params"])   # the head's (3 labels x n_embd) weight


def test_a_resume_decays_by_its_own_weight_decay(tmp_path, tiny_init):
    """--resume --weight_decay W: the resumed steps decay the matrices by W (the optimizer state is the
    checkpoint's, its group options this run's); the no-decay group stays at 0."""
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    out = tmp_path / "o"
    FT.run(cfg_for(task, tiny_init, out, weight_decay=0.01, batch_size=16, epochs=2, max_iters=1))
    FT.run(cfg_for(task, tiny_init, out, weight_decay=0.2, batch_size=16, epochs=2, max_iters=2, resume=True),
           {"weight_decay", "max_iters"})
    st = ck.load_checkpoint(ck.latest_checkpoint(out))
    assert st["step"] == 2 and [g["weight_decay"] for g in st["optimizer"]["param_groups"]] == [0.2, 0.0]


def test_finetune_option_bounds_are_inclusive_where_the_help_says():
    ok = lambda **kw: FT.FinetuneConfig(**kw).validate() == []   # noqa: E731
    assert ok(max_len=5) and not ok(max_len=4)
    assert ok(clf_dropout=0.0) and ok(clf_dropout=0.99) and not ok(clf_dropout=1.0)
    assert ok(warmup_frac=0.0) and ok(warmup_frac=1.0) and not ok(warmup_frac=1.01)


def test_a_sigterm_during_the_last_step_finishes_the_run(tmp_path, tiny_init, monkeypatch):
    real, calls = FT.forward_batch, []

    def term_in_step_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:   # (training's second and last batch; evaluations call it later)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)
    monkeypatch.setattr(FT, "forward_batch", term_in_step_2)
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    out = tmp_path / "o"
    s = FT.run(cfg_for(task, tiny_init, out, batch_size=16, max_iters=2, epochs=3))
    assert "interrupted" not in s and s["steps"] == 2, s
    assert json.loads((out / "eval.json").read_text())["steps"] == 2


def test_each_epoch_end_scores_the_validation_split(tmp_path, tiny_init, monkeypatch):
    """40 training rows and a 5-row --val_file (no test split then): each epoch end scores exactly those 5
    rows, and the logged accuracy is a multiple of 1/5."""
    real, scored = FT.score, []
    monkeypatch.setattr(FT, "score", lambda model, head, data, *a, **k: scored.append([e.seqs for e in data])
                        or real(model, head, data, *a, **k))
    task = write_jsonl(tmp_path / "cls.jsonl", class_rows(40))
    val_rows = [dict(text=t, label=lab) for t, lab in (("zz apple", "fruit"), ("zz saw", "tool"), ("zz red", "color"),
                                                       ("zz mango", "fruit"), ("zz drill", "tool"))]
    val = write_jsonl(tmp_path / "val.jsonl", val_rows)
    out = tmp_path / "o"
    s = FT.run(cfg_for(task, tiny_init, out, val_file=val, epochs=2, batch_size=20))
    assert (s["n_train"], s["n_val"], s["n_test"]) == (40, 5, 0)
    assert len(scored) == 2 and all(len(x) == 5 for x in scored)
    assert all(bytes(seq[0][1:3]) == b"zz" for x in scored for seq in x)   # (byte tokens after the start token)
    accs = [r["val_accuracy"] for r in metrics(out) if "val_accuracy" in r]
    assert len(accs) == 2 and all(abs(a * 5 - round(a * 5)) < 1e-9 for a in accs)

