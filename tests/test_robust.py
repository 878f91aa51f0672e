"""Training that survives: signals, torn checkpoints, non-finite steps, activation checkpointing, DDP.

The runs are tiny (byte-level, a few steps on a generated text file, CPU). The
signal and SIGKILL tests run the real command in a subprocess; the rest run
``fastgpt.train.main`` in-process. The two-process DDP run uses torchrun on
gloo (CPU) on every machine; fp16 runs where CUDA is available.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import HAS_CUDA, needs_cuda
from fastgpt import checkpoint as ck
from fastgpt import train

WORDS = ("the king is dead long live the king my lord what news from the court "
         "good night sweet prince and flights of angels sing thee to thy rest").split()
PROG = "python -m fastgpt.train"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for k in ("FASTGPT_TEST_NONFINITE", "FASTGPT_TEST_SAVE_PAUSE", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(2000)]
    p = tmp_path / "text.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def _args(corpus, out, **kw):
    a = dict(data=corpus, out_dir=out, device="cpu", tokenizer="byte", preset="tiny", batch_size=4,
             block_size=32, eval_iters=1, eval_interval=1000, log_interval=1, sample_tokens=0, lr=3e-3,
             warmup_iters=1, seed=1)
    a.update(kw)
    return [f"--{k}={v}" for k, v in a.items()]


def _rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _steps(out):
    return {r["step"]: r for r in _rows(out) if r.get("type") != "header" and "step" in r}


def _spawn(argv, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "fastgpt.train", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(cond, proc, timeout=60.0):
    t = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early (rc {proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() - t > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.01)


def _logged_steps(out):
    p = Path(out) / "metrics.jsonl"
    return sum(1 for ln in p.read_text().splitlines() if '"step"' in ln and '"header"' not in ln) if p.exists() else 0


def _temps(out):
    return [p for p in Path(out).iterdir() if ".tmp" in p.name] if Path(out).exists() else []


# ----------------------------------------------------------------------------- signals

def test_sigterm_saves_and_exits_0_then_second_sigint_aborts(corpus, tmp_path):
    out = tmp_path / "out"
    p = _spawn(_args(corpus, out, max_iters=100000, ckpt_interval=0))
    _wait_for(lambda: _logged_steps(out) >= 2, p)
    p.send_signal(signal.SIGTERM)
    rc, (_, err) = p.wait(60), p.communicate()
    assert rc == 0, err
    last = err.strip().splitlines()[-1]
    step = max(_steps(out))
    path = out / f"ckpt_{step:07d}.pt"
    assert last == (f"{PROG}: SIGTERM: stopped after step {step}/100000; checkpoint saved to {path} "
                    f"(continue with: {PROG} --resume --out_dir {out})"), err
    assert ck.list_checkpoints(out) == [path] and ck.verify_checkpoint(path) is None
    assert not (out / "model").exists()  # no final export: the run is not finished
    # --resume continues from exactly that step
    assert train.main([f"--out_dir={out}", "--resume", f"--max_iters={step + 2}", "--device=cpu"]) == 0
    assert [r.get("resumed_from") for r in _rows(out) if r.get("type") == "header"] == [None, step]
    assert max(_steps(out)) == step + 2

    # SIGINT, and a second SIGINT while the checkpoint is being written: abort at once (130), no torn file
    out2 = tmp_path / "out2"
    p = _spawn(_args(corpus, out2, max_iters=100000, ckpt_interval=0), {"FASTGPT_TEST_SAVE_PAUSE": "60"})
    _wait_for(lambda: _logged_steps(out2) >= 1, p)
    p.send_signal(signal.SIGINT)
    _wait_for(lambda: bool(_temps(out2)), p)
    p.send_signal(signal.SIGINT)
    rc, (_, err) = p.wait(30), p.communicate()
    assert rc == 130 and "interrupted" in err.strip().splitlines()[-1], err
    assert ck.list_checkpoints(out2) == [] and _temps(out2) == []


def test_sigkill_while_saving_resumes_from_previous(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert train.main(_args(corpus, out, max_iters=2, ckpt_interval=2)) == 0
    first = ck.latest_checkpoint(out)
    # the continued run hangs midway through writing its step-4 checkpoint; kill -9 it there
    p = _spawn([f"--out_dir={out}", "--resume", "--max_iters=4", "--device=cpu"], {"FASTGPT_TEST_SAVE_PAUSE": "60"})
    _wait_for(lambda: bool(_temps(out)), p)
    p.kill()
    p.wait(30)
    p.communicate()
    assert ck.list_checkpoints(out) == [first] and len(_temps(out)) == 1  # the torn temp file is not a checkpoint
    capsys.readouterr()
    assert train.main([f"--out_dir={out}", "--resume", "--max_iters=4", "--device=cpu"]) == 0
    assert [r.get("resumed_from") for r in _rows(out) if r.get("type") == "header"][-1] == 2
    assert _temps(out) == []  # the dead writer's temp file is cleaned up by the next save
    assert [c.name for c in ck.list_checkpoints(out)] == ["ckpt_0000002.pt", "ckpt_0000004.pt"]


# ----------------------------------------------------------------------------- checksums

def test_truncated_or_corrupt_checkpoint_is_skipped_with_a_message(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert train.main(_args(corpus, out, max_iters=3, ckpt_interval=1, keep_ckpts=3)) == 0
    c1, c2, c3 = ck.list_checkpoints(out)
    good = c3.read_bytes()
    c3.write_bytes(good[: len(good) // 2])  # power loss mid-copy: truncated
    b = bytearray(c2.read_bytes())
    b[len(b) // 3] ^= 0x40  # a flipped bit, size unchanged
    c2.write_bytes(bytes(b))
    assert "truncated" in ck.verify_checkpoint(c3) and "checksum mismatch" in ck.verify_checkpoint(c2)
    assert ck.verify_checkpoint(c1) is None
    # named directly: one clear line
    for c, why in ((c3, "truncated"), (c2, "checksum mismatch")):
        with pytest.raises(ck.CorruptCheckpointError) as e:
            ck.load_checkpoint(c)
        msg = str(e.value)
        assert "\n" not in msg and str(c) in msg and why in msg and "not a readable checkpoint" in msg
    capsys.readouterr()
    assert ck.main([str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{c1}: ok (step 1)" and lines[1].startswith(f"{c2}: BAD: ") and "truncated" in lines[2]
    assert train.main([f"--out_dir={out}", "--resume", "--max_iters=4", "--device=cpu"]) == 0
    err = capsys.readouterr().err
    assert f"skipping {c3}: truncated" in err and f"skipping {c2}: checksum mismatch" in err, err
    assert f"resuming from {c1}" in err
    assert [r.get("resumed_from") for r in _rows(out) if r.get("type") == "header"][-1] == 1
    # the file is still a plain torch checkpoint (the footer is ignored by torch.load)
    st = torch.load(ck.latest_checkpoint(out), weights_only=True)
    assert st["step"] == 4 and st["format"] == ck.FORMAT


# ----------------------------------------------------------------------------- non-finite steps

@pytest.mark.parametrize("dtype", ["bf16", pytest.param("fp16", marks=needs_cuda)])
def test_injected_inf_gradient_is_skipped(corpus, tmp_path, monkeypatch, dtype):
    out = tmp_path / "out"
    monkeypatch.setenv("FASTGPT_TEST_NONFINITE", "3")
    dev = "cuda" if dtype == "fp16" else "cpu"
    # the bad step is the last: its checkpoint (forced at the end) holds the state the skip left
    assert train.main(_args(corpus, out, max_iters=3, ckpt_interval=1, keep_ckpts=0, dtype=dtype, device=dev)) == 0
    assert train.main([f"--out_dir={out}", "--resume", "--max_iters=4", f"--device={dev}"]) == 0
    rows = _steps(out)
    # (fp16 may also skip an early step of its own while the loss scale calibrates)
    assert rows[3]["skipped"] is True and (dtype == "fp16" or not rows[2].get("skipped"))
    assert not rows[4].get("skipped") and rows[4]["loss"] < rows[1]["loss"]
    s2, s3, s4 = (ck.load_checkpoint(out / f"ckpt_{i:07d}.pt") for i in (2, 3, 4))
    # the skipped step changed neither the weights nor the optimizer state; the next one trains
    assert all(torch.equal(s2["model"][k], s3["model"][k]) for k in s2["model"])
    assert not all(torch.equal(s3["model"][k], s4["model"][k]) for k in s3["model"])
    assert s3["extra"]["skipped_steps"] == 1 or dtype == "fp16"
    o2, o3 = s2["optimizer"]["state"], s3["optimizer"]["state"]
    assert all(torch.equal(o2[i]["exp_avg"], o3[i]["exp_avg"]) for i in o2)
    if dtype == "fp16":  # the scaler backed off
        assert rows[3]["loss_scale"] == rows[2]["loss_scale"] / 2


def test_k_consecutive_bad_steps_stop_the_run(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setenv("FASTGPT_TEST_NONFINITE", "3,4,5")
    with pytest.raises(SystemExit) as e:
        train.main(_args(corpus, out, max_iters=10, ckpt_interval=1, keep_ckpts=2, max_bad_steps=3))
    assert e.value.code == train.EXIT_DIVERGED == 3
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    good = out / "ckpt_0000002.pt"
    assert last.startswith(f"{PROG}: error: stopped: 3 consecutive steps (3-5) had a non-finite loss or gradient; "
                           f"the last good checkpoint is {good}"), err
    assert err.count("non-finite gradient; step skipped") == 3
    # no checkpoint during the bad run rotated the good ones out; no final export
    assert ck.list_checkpoints(out) == [out / "ckpt_0000001.pt", good] and not (out / "model").exists()
    assert ck.load_checkpoint(good)["step"] == 2
    # bad steps that are not consecutive do not stop it
    out2 = tmp_path / "out2"
    monkeypatch.setenv("FASTGPT_TEST_NONFINITE", "2,4")
    assert train.main(_args(corpus, out2, max_iters=5, max_bad_steps=2)) == 0
    assert [s for s, r in _steps(out2).items() if r.get("skipped")] == [2, 4]
    assert ck.load_checkpoint(ck.latest_checkpoint(out2))["extra"]["skipped_steps"] == 2


# ----------------------------------------------------------------------------- activation checkpointing

@pytest.mark.parametrize("norm", ["pre", "post"])
def test_grad_checkpoint_same_loss_and_grads_with_dropout(norm, monkeypatch):
    from fastgpt.config import GPTConfig
    from fastgpt.model import GPT, GPTBlock
    dev = "cuda" if HAS_CUDA else "cpu"
    cfg = GPTConfig.preset("tiny", vocab_size=256, block_size=32, dropout=0.2, norm=norm)
    a = GPT(cfg).to(dev).train()
    b = GPT(cfg).to(dev).train()
    b.load_state_dict(a.state_dict())
    train._enable_grad_checkpoint(b)
    calls = []
    orig = GPTBlock._mlp
    monkeypatch.setattr(GPTBlock, "_mlp", lambda self, *a_, **k: (calls.append(1), orig(self, *a_, **k))[1])
    idx = torch.randint(0, 256, (3, 32), device=dev)
    tgt = torch.randint(0, 256, (3, 32), device=dev)
    out = []
    for m in (a, b):
        calls.clear()
        torch.manual_seed(7)
        _, loss = m(idx, tgt, return_logits=False)
        loss.backward()
        out.append((loss.detach(), {k: p.grad for k, p in m.named_parameters()}, len(calls)))
    (la, ga, na), (lb, gb, nb) = out
    assert na == cfg.n_layer and nb == 2 * cfg.n_layer  # b recomputed every block in backward
    torch.testing.assert_close(lb, la)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], msg=lambda m, k=k: f"{k}: {m}")
    # the training command: same losses with and without --grad_checkpoint (dropout on)


def test_grad_checkpoint_flag_same_losses(corpus, tmp_path):
    o1, o2 = tmp_path / "a", tmp_path / "b"
    common = dict(max_iters=3, dropout=0.1, grad_accum=2, ckpt_interval=0)
    assert train.main(_args(corpus, o1, **common)) == 0
    assert train.main(_args(corpus, o2, grad_checkpoint="true", **common)) == 0
    assert {s: r["loss"] for s, r in _steps(o1).items()} == {s: r["loss"] for s, r in _steps(o2).items()}


# ----------------------------------------------------------------------------- DDP

def test_ddp_two_processes_gloo_match_one_process(corpus, tmp_path, capsys):
    """torchrun, 2 processes x batch 4 == 1 process x batch 8 (grad_accum 2: no_sync on the first)."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = dict(max_iters=3, grad_accum=2, eval_interval=3, eval_iters=2, ckpt_interval=3)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "fastgpt.train", *_args(corpus, two, batch_size=4, **common)],
                       capture_output=True, text=True, env=env, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert train.main(_args(corpus, one, batch_size=8, **common)) == 0
    r1, r2 = _steps(one), _steps(two)
    assert sorted(r1) == sorted(r2) == [1, 2, 3]
    for s in r1:
        assert r2[s]["loss"] == pytest.approx(r1[s]["loss"], rel=1e-5)
    assert r2[3]["val_loss"] == pytest.approx(r1[3]["val_loss"], rel=1e-5)
    heads = [r for r in _rows(two) if r.get("type") == "header"]
    assert len(heads) == 1 and heads[0]["world_size"] == 2  # rank 0 alone writes
    assert p.stderr.count("step 3/3") == 1 and "2 processes (DDP, gloo)" in p.stderr
    st2 = ck.load_checkpoint(ck.latest_checkpoint(two))
    st1 = ck.load_checkpoint(ck.latest_checkpoint(one))
    assert st2["extra"]["world_size"] == 2 and len(st2["rng_ranks"]) == 2
    for k in st1["model"]:
        torch.testing.assert_close(st2["model"][k], st1["model"][k])
    # resume the 2-process checkpoint in one process: it warns about the data order
    capsys.readouterr()
    assert train.main([f"--out_dir={two}", "--resume", "--max_iters=4", "--device=cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning: the checkpoint was written by 2 process(es), this run has 1" in err, err
    assert max(_steps(two)) == 4
