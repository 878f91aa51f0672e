"""Shared by the training tests (test_train.py, test_robust.py): a generated corpus, the
command line of a tiny CPU run, and readers of its metrics file.

Each test file keeps its own defaults (``argv_factory(eval_iters=..., ...)``) and corpus
size (``make_corpus(..., n_lines=...)``); everything else lives here once.
"""
import json
import random
from pathlib import Path

import pytest
import torch

WORDS = ("the king is dead long live the king my lord what news from the court "
         "good night sweet prince and flights of angels sing thee to thy rest").split()

# A run that takes a second or two on one CPU thread: byte-level, the tiny preset, 4 x 32 tokens.
TINY_RUN = dict(device="cpu", tokenizer="byte", preset="tiny", batch_size=4, block_size=32, log_interval=1,
                sample_tokens=0, lr=3e-3, warmup_iters=1, seed=1)

# Environment a user or an earlier test may have set that would change a run: test hooks, torchrun.
RUN_ENV = ("FASTGPT_TEST_NONFINITE", "FASTGPT_TEST_SAVE_PAUSE", "FASTGPT_TEST_SAVE_PAUSE_MARK", "WORLD_SIZE", "RANK",
           "LOCAL_RANK")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes: one thread is as fast on a quiet machine and far faster on a busy one (no spin-waits).

    Autouse in every test module that imports it (pytest collects fixtures from a module's names).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_corpus(tmp_path, monkeypatch, n_lines: int) -> Path:
    """A text file of n_lines random sentences over WORDS (seed 0), with a private data cache and a
    clean environment (RUN_ENV unset, OMP_NUM_THREADS=1 for subprocesses)."""
    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for k in RUN_ENV:
        monkeypatch.delenv(k, raising=False)
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
             for _ in range(n_lines)]
    p = tmp_path / "text.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def argv_factory(**defaults):
    """``args(corpus, out, **options) -> ["--key=value", ...]``: TINY_RUN, then ``defaults``, then ``options``."""
    def args(corpus, out, **kw):
        a = dict(data=corpus, out_dir=out, **TINY_RUN)
        a.update(defaults)
        a.update(kw)
        return [f"--{k}={v}" for k, v in a.items()]
    return args


def rows(out) -> list[dict]:
    """Every line of OUT/metrics.jsonl (headers included)."""
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def steps(out) -> dict[int, dict]:
    """{step: row} of the per-step rows (the last one wins, e.g. after a resume)."""
    return {r["step"]: r for r in rows(out) if r.get("type") != "header" and "step" in r}
