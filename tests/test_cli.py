"""fastgpt.cli and the train command line: parsing, config files, one-line errors with exit status 2."""
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field, fields
from typing import Literal

import pytest

from fastgpt import cli, train


@dataclass
class Cfg:
    n: int = field(default=3, metadata=dict(help="a count"))
    x: float = 0.5
    name: str = "abc"
    flag: bool = False
    opt: int | None = field(default=None, metadata=dict(help="maybe", auto="n * 2"))
    mode: Literal["a", "b"] = "a"

    def validate(self):
        return [f"--n must be >= 0, got {self.n}"] if self.n < 0 else []


def parse(argv):
    return cli.parse_args(Cfg, argv)


def test_forms_and_types():
    c, given = parse(["--n=5", "--x", "1e-3", "--name", "hi there", "--flag", "--opt=none", "--mode", "b"])
    assert (c.n, c.x, c.name, c.flag, c.opt, c.mode) == (5, 1e-3, "hi there", True, None, "b")
    assert given == {"n", "x", "name", "flag", "opt", "mode"}
    assert parse(["--flag=false"])[0].flag is False and parse(["--flag", "no", "--n", "2"])[0].n == 2
    assert parse(["--opt", "7", "--n=1e3", "--x=-2"])[0] == Cfg(n=1000, opt=7, x=-2.0)
    assert parse(["--n", "-4"])[0].n == -4  # a negative number is a value, not an option
    assert parse([])[0] == Cfg() and parse([])[1] == set()


@pytest.mark.parametrize("argv,msg", [
    (["--nn=3"], "unknown option --nn (did you mean --n?)"),
    (["--n=3.5"], "--n expects INT, got '3.5'"),
    (["--x=fast"], "--x expects FLOAT, got 'fast'"),
    (["--flag=maybe"], "--flag expects BOOL"),
    (["--mode=c"], "--mode must be one of a, b"),
    (["--n"], "--n needs a value"),
    (["--n", "--x=1"], "--n needs a value"),
    (["stray"], "unexpected argument 'stray'"),
    (["--n=1", "--n=2"], "--n given twice"),
    (["--n=none"], "--n expects INT"),
])
def test_usage_errors(argv, msg):
    with pytest.raises(cli.UsageError) as e:
        parse(argv)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_parse_exits_2_with_one_line(capsys):
    for argv in (["--n=-1"], ["--bogus"], ["--x=1", "--config=/no/such/file.json"]):
        with pytest.raises(SystemExit) as e:
            cli.parse(Cfg, argv, prog="prog")
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("prog: error: ")


def test_config_files(tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"n": 9, "x": 2, "name": "from-file", "flag": True}))
    c, given = parse([f"--config={j}", "--name=cli-wins"])
    assert (c.n, c.x, c.name, c.flag) == (9, 2.0, "cli-wins", True) and isinstance(c.x, float)
    assert given == {"n", "x", "name", "flag"}
    t = tmp_path / "c.toml"
    t.write_text('n = 4\nmode = "b"\nopt = 2\n')
    assert parse(["--config", str(t)])[0] == Cfg(n=4, mode="b", opt=2)
    for text, msg in [({"n": 3.5}, "n in .* expects INT"), ({"nn": 1}, "unknown key in"), ({"flag": 1}, "expects BOOL"),
                      ({"n": True}, "expects INT")]:
        j.write_text(json.dumps(text))
        with pytest.raises(cli.UsageError, match=msg):
            parse([f"--config={j}"])
    j.write_text("{not json")
    with pytest.raises(cli.UsageError, match="not valid JSON"):
        parse([f"--config={j}"])


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(train.TrainConfig, ["--help"], prog=train.PROG)
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in fields(train.TrainConfig):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"--{f.name} ") or
                    ln.strip().startswith(f"--{f.name}["))
        assert line  # every option is listed
    assert out.count("(default:") == len(fields(train.TrainConfig)) and "auto: tiny on CPU, gpt2 on CUDA" in out


@pytest.mark.parametrize("argv,msg", [
    (["--preset=gpt3"], "unknown preset 'gpt3'; choose from"),
    (["--preset=GPT2"], "unknown preset 'GPT2'"),  # exact names only
    (["--max_iters=0"], "--max_iters must be >= 1"),
    (["--lr=-1"], "--lr must be in [0, 10)"),
    (["--dtype=fp8"], "--dtype must be one of bf16, fp16, fp32"),
    (["--tokenizer=gpt4"], "--tokenizer must be one of gpt2, byte"),
    (["--batch_size=8.5"], "--batch_size expects INT"),
    (["--dropout=1.5"], "--dropout must be in [0, 1)"),
    (["--warmup_iters=10", "--lr_decay_iters=5"], "--warmup_iters (10) must not exceed"),
    (["--device=cpu", "--dtype=fp16"], "--dtype fp16 needs --device cuda"),
    (["--learning_rate=1e-3"], "unknown option --learning_rate"),
])
def test_train_usage_errors_in_process(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err, err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_requested_without_gpu(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--device=cuda"])
    assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err


def test_entry_point_subprocess(tmp_path):
    """The real command: exit 2, one line, no traceback; --help exits 0; bad --data exits 1 with one line."""
    env = dict(os.environ, FASTGPT_CACHE=str(tmp_path / "cache"), FASTGPT_OFFLINE="1")
    cmds = {
        "bad": [sys.executable, "-m", "fastgpt.train", "--max_iters", "ten"],
        "help": [sys.executable, "-m", "fastgpt.train", "--help"],
        "data": [sys.executable, "-m", "fastgpt.train", "--data", str(tmp_path / "missing"), "--device=cpu",
                 f"--out_dir={tmp_path / 'o'}"],
        "cache": [sys.executable, "-m", "fastgpt.train", "--device=cpu", f"--out_dir={tmp_path / 'o'}"],
    }
    procs = {k: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for k, c in cmds.items()}
    res = {k: (p.wait(120), *p.communicate()) for k, p in procs.items()}
    rc, out, err = res["bad"]
    assert rc == 2 and err.strip() == "python -m fastgpt.train: error: --max_iters expects INT, got 'ten'"
    rc, out, err = res["help"]
    assert rc == 0 and "--lr_decay_iters INT" in out and "--compile[=BOOL]" in out
    rc, out, err = res["data"]
    assert rc == 1 and err.count("\n") == 1 and "names no text files" in err and "Traceback" not in err
    rc, out, err = res["cache"]  # no cached corpus, offline: one line saying how to prepare the cache
    assert rc == 1 and err.count("\n") == 1 and "python -m fastgpt.data --prepare" in err, err
