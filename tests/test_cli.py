"""fastgpt.cli and the train command line: parsing, config files, one-line errors with exit status 2."""
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field, fields
from typing import Literal

import pytest

from conftest import HAS_CUDA, fake_cuda_capability, interrupt_on_call
from fastgpt import cli, finetune, train


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
    assert parse(["--flag=false"])[0].flag is False and parse(["--flag", "no", "--n", "2"])[0] == Cfg(n=2)
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


@pytest.mark.parametrize("module,argv,opt", [
    ("selftest", ["--quick", "--only", "layer_norm", "--only=gelu"], "--only"),   # (it checked gelu alone: PASS)
    ("sample", ["--temperature=1", "--temperature", "2", "out"], "--temperature"),
    ("data", ["--tokenizer=byte", "--tokenizer=gpt2", "--prepare"], "--tokenizer"),
])
def test_an_option_given_twice_is_refused_by_every_command(module, argv, opt, capsys):
    """The argparse commands refuse a repeated option as train's and finetune's do (argparse kept the last
    silently; a review)."""
    import importlib
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"fastgpt.{module}").main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"error: {opt} given twice" in err, err


def test_a_leading_tilde_is_expanded_in_path_options_only(tmp_path, monkeypatch):
    """--out_dir=~/runs/a (the shell expands no ~ after "="; nor does a config file) is the home folder's runs/a,
    not a folder named "~" in the working one, and --config=~/c.json is the home folder's c.json; other text (a
    --prompt) keeps its ~."""
    @dataclass
    class P:
        out: str = cli.opt("o", "a folder", path=True)
        init: str | None = cli.opt(None, "a file or a Hub id", path=True)
        prompt: str = cli.opt("", "text")

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.json").write_text(json.dumps({"init": "~/m"}))
    c, _ = cli.parse_args(P, ["--out=~/runs/a", "--prompt=~/runs/a", "--config=~/c.json"])
    assert (c.out, c.init, c.prompt) == (str(tmp_path / "runs/a"), str(tmp_path / "m"), "~/runs/a")
    assert cli.parse_args(P, ["--init=gpt2", "--out=a~/b"])[0] == P(out="a~/b", init="gpt2")
    assert cli.expanded_paths(P(out="~/x", prompt="~")) == P(out=str(tmp_path / "x"), prompt="~")   # (made in code)
    opts = {name for cls in (train.TrainConfig, finetune.FinetuneConfig)
            for name, o in cli.options(cls).items() if o.path}
    assert opts == {"out_dir", "data", "init", "task", "val_file", "test_file", "predict_file"}


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
    for text in ("[1, 2]", '"n"', "3"):   # valid JSON, not an object of options (an audit, 2026-11-30)
        j.write_text(text)
        with pytest.raises(cli.UsageError, match="expected a table/object of option: value"):
            parse([f"--config={j}"])
    # (a review, 2026-11-28) an editor's byte-order mark, an upper-case suffix; an empty or a second --config
    # was dropped silently (the first file's values lost)
    T = tmp_path / "C.TOML"
    T.write_bytes("\ufeffn = 6\n".encode("utf-8"))
    assert parse(["--config", str(T)])[0] == Cfg(n=6)
    j.write_bytes("\ufeff{\"n\": 8}".encode("utf-8"))
    assert parse([f"--config={j}"])[0] == Cfg(n=8)
    # a key given twice (a review, 2026-11-30: JSON kept the last silently; TOML refuses it itself)
    j.write_text('{"n": 2, "name": "a", "n": 3}')
    with pytest.raises(cli.UsageError, match="n given twice"):
        parse([f"--config={j}"])
    from fastgpt.train import TrainConfig
    j.write_text('{"max_iters": 2, "max-iters": 3}')
    with pytest.raises(cli.UsageError, match="max_iters given twice"):
        cli.load_config_file(str(j), cli.options(TrainConfig))
    j.write_bytes("\ufeff{\"n\": 8}".encode("utf-8"))
    for argv, msg in (([f"--config={j}", f"--config={t}"], "--config given twice"),
                      (["--config="], "--config needs a file name"), (["--config", ""], "--config needs a file name")):
        with pytest.raises(cli.UsageError, match=msg):
            parse(argv)


def test_toml_config_without_tomllib_reads_with_tomli(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib; there --config FILE.toml reads with tomli (a dependency there).
    Here (3.11+) tomllib is hidden so that the fallback runs."""
    tomli = pytest.importorskip("tomli", reason="tomli is in requirements-test.txt")
    monkeypatch.setitem(sys.modules, "tomllib", None)        # `import tomllib` raises ImportError
    with pytest.raises(ImportError):
        import tomllib  # noqa: F401
    t = tmp_path / "c.toml"
    t.write_bytes('\ufeffn = 5\nmode = "b"\n'.encode("utf-8"))
    assert parse(["--config", str(t)])[0] == Cfg(n=5, mode="b")
    t.write_text("n = = 5\n")
    with pytest.raises(cli.UsageError, match=r"not valid TOML \(") as e:
        parse(["--config", str(t)])
    assert "tomllib" not in str(e.value) and tomli.__name__ == "tomli"


def _unwrapped(text: str) -> str:
    """Help text with its wrapping undone (every run of whitespace one space): the help is wrapped to the
    terminal's width, so a phrase a test looks for may be split across lines (at COLUMNS=80 or 100, and
    under pytest-xdist, "auto: tiny on CPU, gpt2 on CUDA" was)."""
    return " ".join(text.split())


@pytest.mark.parametrize("columns", ["40", "80", "200"])
def test_help_lists_every_option_with_default(columns, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    with pytest.raises(SystemExit) as e:
        cli.parse(train.TrainConfig, ["--help"], prog=train.PROG)
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in fields(train.TrainConfig):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"--{f.name} ") or
                    ln.strip().startswith(f"--{f.name}["))
        assert line  # every option is listed
    flat = _unwrapped(out)
    assert flat.count("(default:") == len(fields(train.TrainConfig)) and "auto: tiny on CPU, gpt2 on CUDA" in flat
    options = out[out.index("options:"):].split("\n\n")[0].splitlines()   # (the examples after it are as written)
    assert max(map(len, options)) <= max(80, int(columns) - 2)   # wrapped to the terminal, 80 columns at the least


@pytest.mark.parametrize("argv,msg", [
    (["--preset=gpt3"], "unknown preset 'gpt3'; choose from"),
    (["--preset=GPT2"], "unknown preset 'GPT2'"),  # exact names only
    (["--max_iters=0"], "--max_iters must be >= 1"),
    (["--lr=-1"], "--lr must be in [0, 10)"),
    (["--dtype=fp8"], "--dtype must be one of bf16, fp16, fp32"),
    (["--tokenizer=gpt4"], "--tokenizer must be one of gpt2, byte"),
    (["--batch_size=8.5"], "--batch_size expects INT"),
    (["--dropout=1.5"], "--dropout must be in [0, 0.999237]"),
    (["--dropout=-0.1"], "--dropout must be in [0, 0.999237], got -0.1"),   # (a ValueError traceback; an audit)
    (["--seed=9223372036854775808"], "--seed must be in [0, 2^63)"),
    (["--warmup_iters=10", "--lr_decay_iters=5"], "--warmup_iters (10) must not exceed"),
    (["--device=cpu", "--dtype=fp16"], "--dtype fp16 needs --device cuda"),
    (["--learning_rate=1e-3"], "unknown option --learning_rate"),
    # (a review, 2026-11-28: inf was accepted (nan is a parse error), and --weight_decay=inf trained to nan)
    (["--temperature=inf"], "--temperature must be a finite number >= 0, got inf"),
    (["--weight_decay=inf"], "--weight_decay must be a finite number >= 0, got inf"),
    (["--grad_clip=inf"], "--grad_clip must be a finite number >= 0 (0 = off), got inf"),
    (["--peak_tflops=inf"], "--peak_tflops must be a finite number > 0, got inf"),
])
def test_train_usage_errors_in_process(argv, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # (an option wrongly accepted trains into ./out: not the checkout's)
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
                 f"--out_dir={tmp_path / 'o1'}"],   # (one folder each: two runs at once into one are refused)
        "cache": [sys.executable, "-m", "fastgpt.train", "--device=cpu", f"--out_dir={tmp_path / 'o2'}"],
    }
    procs = {k: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for k, c in cmds.items()}
    res = {k: (p.wait(120), *p.communicate()) for k, p in procs.items()}
    rc, out, err = res["bad"]
    assert rc == 2 and err.strip() == "python -m fastgpt.train: error: --max_iters expects INT, got 'ten'"
    rc, out, err = res["help"]
    assert rc == 0 and "--lr_decay_iters INT" in out and "--compile[=BOOL]" in out
    rc, out, err = res["data"]
    assert rc == 1 and err.count("\n") == 1 and "no such file or folder" in err and "Traceback" not in err
    rc, out, err = res["cache"]  # no cached corpus, offline: one line saying how to prepare the cache
    assert rc == 1 and err.count("\n") == 1 and "python -m fastgpt.data --prepare" in err, err


# ----------------------------------------------------------------------------- the usability audit
# Each command meets bad input with ONE line on stderr, no traceback, and a non-zero status
# (2 a usage error, 1 a file that is not what it should be).

def _one_line_exit(fn, argv, capsys, code, needle):
    with pytest.raises(SystemExit) as e:
        fn(argv)
    err = capsys.readouterr().err
    assert e.value.code == code and err.count("\n") == 1 and needle in err and "Traceback" not in err, (argv, err)
    return err


@pytest.fixture
def tiny_dir(tmp_path):
    """A save_pretrained folder of a random 1-layer byte-level model, and a training-like out_dir."""
    import torch
    from fastgpt import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", n_layer=1, block_size=32)
    cfg.extra = dict(tokenizer="byte")
    d = tmp_path / "model"
    GPT(cfg).save_pretrained(d)
    return d


def test_a_path_that_starts_with_a_dash_is_named(tmp_path, monkeypatch, capsys):
    """checkpoint -old.pt said only that a path was required: argparse reads -old.pt as an option.
    The one line now says so and how to pass it; after --, the path is checked."""
    from fastgpt import checkpoint
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-old.pt").write_text("not a checkpoint\n")
    err = _one_line_exit(checkpoint.main, ["-old.pt"], capsys, 2, "-old.pt is read as an option; put -- before")
    assert "required: FILE_OR_OUT_DIR" in err
    _one_line_exit(checkpoint.main, ["-new.pt"], capsys, 2, "required: FILE_OR_OUT_DIR")   # no such path: as before
    assert checkpoint.main(["--", "-old.pt"]) == 1
    assert "-old.pt: BAD: -old.pt is not a readable checkpoint" in capsys.readouterr().out
    _one_line_exit(checkpoint.main, ["a.pt", "-old.pt"], capsys, 2, "-old.pt is read as an option")   # unrecognized
    # an option's value that starts with -: no -- hint there, but the way that works (--prompt=-old.pt)
    from fastgpt import sample
    err = _one_line_exit(sample.main, ["x", "--prompt", "-old.pt"], capsys, 2, "--prompt: expected one argument "
                         "(a value that starts with - is given as --prompt=-old.pt)")
    assert "put --" not in err
    err = _one_line_exit(sample.main, ["x", "--prompt"], capsys, 2, "--prompt: expected one argument")
    assert "given as" not in err   # (no value at all: nothing to suggest)


def test_sample_bad_input_is_one_line(tiny_dir, tmp_path, capsys):
    from fastgpt import sample
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    torn = tmp_path / "ckpt_0000001.pt"
    torn.write_bytes(b"PK\x03\x04" + b"\0" * 300)
    (tmp_path / "empty").mkdir()
    m = str(tiny_dir)
    for argv, code, needle in [
        ([str(tmp_path / "missing")], 1, "no such file or folder"),
        ([str(tmp_path / "empty")], 1, "no config.json and no ckpt_*.pt"),
        ([str(text)], 1, "not a readable checkpoint"),
        ([str(torn)], 1, "not a readable checkpoint"),
        ([m, "--temperature", "-1"], 2, "--temperature must be >= 0"),
        ([m, "--top-k", "0"], 2, "--top-k must be >= 1"),
        ([m, "--top-k", "many"], 2, "--top-k"),
        ([m, "--top-p", "0"], 2, "--top-p must be in (0, 1]"),
        ([m, "--top-p", "1.5"], 2, "--top-p must be in (0, 1]"),
        ([m, "--max-new-tokens", "0"], 2, "--max-new-tokens must be >= 1"),
        ([m, "--num-samples", "0"], 2, "--num-samples must be >= 1"),
        ([m, "--device", "gpu"], 2, "--device must be cpu, cuda or cuda:N"),
        ([m, "--dtype", "fp8"], 2, "invalid choice"),
        ([m, "--prompt", ""], 2, "--prompt is empty"),
        ([m, "--prompt", "ab\udcff"], 2, "--prompt is not UTF-8 text"),
        ([m, "--seed", "-1"], 2, "--seed must be in [0, 2^63)"),
        ([m, "--seed", str(2 ** 64)], 2, "--seed must be in [0, 2^63)"),
        ([m, "--device", "cpu:3"], 2, "--device must be cpu, cuda or cuda:N"),
        ([m, "--tokenizer", "gpt2"], 2, "trained with the 'byte' tokenizer"),
        ([m, "--bogus"], 2, "unrecognized arguments: --bogus"),
        ([], 2, "required: path"),
    ]:
        err = _one_line_exit(sample.main, argv, capsys, code, needle)
        assert err.startswith("python -m fastgpt.sample: error: ")
    if not __import__("torch").cuda.is_available():
        _one_line_exit(sample.main, [m, "--device", "cuda"], capsys, 2, "no CUDA device")
    # and the good path still samples, from the folder and with top-k off
    assert sample.main([m, "--max-new-tokens", "3", "--top-k", "none", "--device", "cpu"]) == 0


def test_sample_passes_its_sampling_options_to_generate_and_warmup_leaves_the_seed_alone(tiny_dir, monkeypatch,
                                                                                         capsys):
    """(a mutation audit, 2026-11-30) --temperature, --top-k and --top-p reached generate() untested (each could be
    dropped with every test passing), and --warmup drawing from the seeded generator changed the samples."""
    from fastgpt import sample
    from fastgpt.model import GPT
    seen, real = [], GPT.generate

    def generate(self, idx, n, **kw):
        seen.append({k: kw.get(k) for k in ("temperature", "top_k", "top_p")})
        return real(self, idx, n, **kw)
    monkeypatch.setattr(GPT, "generate", generate)
    argv = [str(tiny_dir), "--device", "cpu", "--max-new-tokens", "12", "--seed", "5", "--num-samples", "2"]
    assert sample.main(argv + ["--temperature", "0.5", "--top-k", "3", "--top-p", "0.7"]) == 0
    assert seen == [dict(temperature=0.5, top_k=3, top_p=0.7)], seen
    capsys.readouterr()
    outs = []
    for extra in ([], ["--warmup"]):
        assert sample.main(argv + extra) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and len(seen) == 4, outs


def test_sample_takes_underscore_option_names(tiny_dir, capsys):
    """train and finetune spell options with underscores; sample takes those spellings too (each one
    maps to its hyphenated option, '=value' forms included), and its errors name the documented form."""
    from fastgpt import sample
    m = str(tiny_dir)
    hyphens = [m, "--max-new-tokens", "4", "--num-samples", "2", "--top-k", "none", "--top-p", "0.9",
               "--seed", "3", "--device", "cpu", "--no-cache"]
    assert sample.main(hyphens) == 0
    want = capsys.readouterr().out
    underscores = [m, "--max_new_tokens", "4", "--num_samples=2", "--top_k=none", "--top_p", "0.9",
                   "--seed", "3", "--device", "cpu", "--no_cache"]
    assert sample.main(underscores) == 0
    assert capsys.readouterr().out == want and want.count("---------- sample ") == 2
    import argparse
    ap = argparse.ArgumentParser()
    assert sample._hyphenate(ap, ["--x_y"]) == ["--x_y"]  # not an option of the parser: its own error says so
    ap.add_argument("--x-y")
    assert sample._hyphenate(ap, ["--x_y=a_b", "a_b", "--", "--x_y"]) == ["--x-y=a_b", "a_b", "--", "--x_y"]
    _one_line_exit(sample.main, [m, "--max_new_tokens", "0"], capsys, 2, "--max-new-tokens must be >= 1")
    _one_line_exit(sample.main, [m, "--max_new_tokenz", "5"], capsys, 2, "unrecognized arguments: --max_new_tokenz")


@pytest.mark.parametrize("columns", ["40", "200"])
def test_sample_help_shows_defaults_and_examples(columns, capsys, monkeypatch):
    from fastgpt import sample
    monkeypatch.setenv("COLUMNS", columns)
    with pytest.raises(SystemExit) as e:
        sample.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: python -m fastgpt.sample")
    flat = _unwrapped(out)
    assert "(default: 200)" in flat and "(default: 0.8)" in flat and "examples:" in out and "exit status" in out


def test_selftest_bad_input_is_one_line(capsys):
    from fastgpt import selftest
    _one_line_exit(selftest.main, ["--device", "gpu"], capsys, 2, "--device must be cpu, cuda or cuda:N")
    _one_line_exit(selftest.main, ["--bogus"], capsys, 2, "unrecognized arguments")
    # a filter that matches nothing used to print "VERDICT: PASS — 0/0 rows" and exit 0
    err = _one_line_exit(selftest.main, ["--device", "cpu", "--only", "layernorm"], capsys, 2, "matches no check")
    assert "layer_norm" in err  # it lists the real names
    # a typo among good names was dropped silently; an empty filter ran everything
    _one_line_exit(selftest.main, ["--device", "cpu", "--only", "GPTBlock,nosuch"], capsys, 2, "--only nosuch: matches")
    _one_line_exit(selftest.main, ["--only", ""], capsys, 2, "--only is empty")
    from fastgpt import data
    _one_line_exit(data.main, ["--data", ""], capsys, 2, "--data is empty")   # (it tokenized the working folder)
    if not __import__("torch").cuda.is_available():
        _one_line_exit(selftest.main, ["--device", "cuda"], capsys, 2, "no CUDA device")


def test_ctrl_c_in_a_plain_command_is_one_line(capsys):
    """fastgpt.data and fastgpt.checkpoint printed a KeyboardInterrupt traceback; cli.entry says one line, 130."""
    from fastgpt import cli

    def interrupted():
        raise KeyboardInterrupt
    assert cli.entry(interrupted) == 130
    assert capsys.readouterr().err.endswith(": interrupted\n")


# (a GPU machine's image brings its own numpy, which may break the interpreter: the H200's 2.5.2, above
# requirements-test.txt's numpy<2.4, failed test_ops' interpreted subprocess test with "only 0-dimensional arrays
# can be converted to Python scalars"; this subprocess runs the interpreter too, and the CPU runs check it)
@pytest.mark.skipif(HAS_CUDA, reason="the CPU selftest's interpreter: CPU machines")
def test_selftest_on_the_cpu_turns_the_interpreter_on_itself():
    """With TRITON_INTERPRET unset (as a user runs it), the CPU selftest checks the kernels under the
    interpreter: it said UNAVAILABLE once ``import fastgpt`` had imported triton before it could set it."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTGPT_BACKEND")}
    r = subprocess.run([sys.executable, "-m", "fastgpt.selftest", "--device", "cpu", "--quick", "--only", "layer_norm"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "VERDICT: PASS" in r.stdout, (r.stdout, r.stderr)


def test_bad_attention_dq_setting_is_one_line():
    """A bad FASTGPT_ATTENTION_DQ (read when the kernels are imported) ends selftest with one line and
    status 2 (train, finetune and sample turn it into a usage error the same way)."""
    pytest.importorskip("triton")
    env = {**os.environ, "FASTGPT_ATTENTION_DQ": "atomc", "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "fastgpt.selftest", "--device", "cpu", "--only", "layer_norm"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [
        "python -m fastgpt.selftest: error: FASTGPT_ATTENTION_DQ must be one of ('split', 'atomic'), got 'atomc'"]


def test_train_out_dir_that_cannot_be_a_folder(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    _one_line_exit(train.main, [f"--out_dir={f}", "--device=cpu"], capsys, 2, "exists and is not a folder")
    _one_line_exit(train.main, [f"--out_dir={f / 'sub'}", "--device=cpu"], capsys, 2, "is not a folder")


def test_train_min_lr_above_the_default_lr(tmp_path, capsys):
    """--min_lr above the device's default --lr (the schedule would rise instead of decaying)."""
    _one_line_exit(train.main, [f"--out_dir={tmp_path}", "--device=cpu", "--min_lr=0.5"], capsys, 2,
                   "--min_lr (0.5) must not exceed --lr")


def test_train_resume_with_another_model_config(tmp_path, monkeypatch, capsys):
    """--resume continues the checkpoint's model: a --preset, --dropout, --block_size or --tokenizer that says
    otherwise is refused as a usage error (--preset/--dropout used to be ignored, the others exited 1)."""
    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "t.txt"
    text.write_text("the king is dead, long live the king.\n" * 400)
    out = tmp_path / "o"
    base = [f"--data={text}", f"--out_dir={out}", "--device=cpu", "--preset=tiny", "--tokenizer=byte",
            "--batch_size=2", "--block_size=16", "--eval_iters=1", "--sample_tokens=0", "--warmup_iters=0"]
    assert train.main(base + ["--max_iters=1"]) == 0
    capsys.readouterr()
    resume = [f"--out_dir={out}", "--resume", "--device=cpu", "--max_iters=2"]
    _one_line_exit(train.main, resume + ["--preset=gpt1"], capsys, 2, "holds another architecture")
    _one_line_exit(train.main, resume + ["--dropout=0.2"], capsys, 2, "was trained with dropout 0.0")
    _one_line_exit(train.main, resume + ["--block_size=32"], capsys, 2, "was trained with block_size 16")
    _one_line_exit(train.main, resume + ["--tokenizer=gpt2"], capsys, 2, "trained with the 'byte' tokenizer")
    assert train.main(resume + ["--preset=tiny", "--dropout=0", "--block_size=16"]) == 0  # the same model: fine
    # and the run ends with one summary line: where it got to, and where the model is
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("python -m fastgpt.train: done: trained to step 2 of 2, ") and "val_loss " in last, last
    assert f"model saved to {out / 'model'}" in last


def test_finetune_bad_input_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    from fastgpt import finetune as FT
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps(dict(text=f"w{i % 7}", label=str(i % 2))) + "\n" for i in range(30)))
    f = tmp_path / "file.txt"
    f.write_text("x")
    base = ["--task", str(task), "--init", str(tiny_dir), "--device=cpu", "--out_dir", str(tmp_path / "o")]
    _one_line_exit(FT.main, base[:-2] + [f"--out_dir={f}"], capsys, 2, "exists and is not a folder")
    # a longer --max_len than the model's positions was cut to block_size without a word
    _one_line_exit(FT.main, base + ["--max_len=100"], capsys, 2, "--max_len 100 exceeds the model's context of 32")
    # --preset with a loaded model was ignored without a word
    _one_line_exit(FT.main, base + ["--preset=gpt1"], capsys, 2, "applies only to --init random")
    # a text file as --init: no advice to delete it (that is for --resume's own checkpoints)
    err = _one_line_exit(FT.main, base[:2] + ["--init", str(f)] + base[4:], capsys, 1, "not a readable checkpoint")
    assert "delete" not in err
    _one_line_exit(FT.main, ["--predict", "--init", str(tmp_path / "missing"), "hi"], capsys, 1, "no such folder")
    # a split file with a built-in task was ignored without a word
    _one_line_exit(FT.main, ["--task=movie-reviews", "--val_file=v.jsonl", "--device=cpu"], capsys, 2,
                   "--val_file applies to a --task file")
    # a backend that cannot run here (checked before the run; it used to surface as a traceback mid-step)
    monkeypatch.setenv("FASTGPT_BACKEND", "triton")
    _one_line_exit(FT.main, base, capsys, 2, "FASTGPT_BACKEND must be 'fused' or 'reference'")
    monkeypatch.delenv("FASTGPT_BACKEND")


@pytest.mark.parametrize("prog", ["train", "finetune", "sample"])
def test_a_typo_in_fastgpt_extension_is_a_usage_error(prog, tiny_dir, tmp_path, capsys, monkeypatch):
    """(a mutation audit, 2026-11-30) FASTGPT_EXTENSION=jti turned the C++ extension off with one warning on CUDA
    (none on the CPU), the run going on without it; only selftest refused it. Every program refuses it before any
    work, as a bad FASTGPT_BACKEND is; set but empty it is auto, as FASTGPT_BACKEND is."""
    from fastgpt import extension, sample
    from fastgpt import finetune as FT
    monkeypatch.setenv("FASTGPT_EXTENSION", "jti")
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps(dict(text=f"w{i % 7}", label=str(i % 2))) + "\n" for i in range(30)))
    main, argv = dict(
        train=(train.main, ["--init", str(tiny_dir), "--device=cpu", "--out_dir", str(tmp_path / "o"), "--data",
                            str(task)]),
        finetune=(FT.main, ["--task", str(task), "--init", str(tiny_dir), "--device=cpu", "--out_dir",
                            str(tmp_path / "o")]),
        sample=(sample.main, [str(tiny_dir), "--device=cpu", "--max-new-tokens=1"]))[prog]
    _one_line_exit(main, argv, capsys, 2, "FASTGPT_EXTENSION must be auto, jit, prebuilt or off, got 'jti'")
    assert not (tmp_path / "o").exists()
    monkeypatch.setenv("FASTGPT_EXTENSION", " ")
    assert extension.setting_problem() is None and extension._mode() == "auto"


def test_finetune_resume_refuses_another_init(tiny_dir, tmp_path, capsys):
    from fastgpt import finetune as FT
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps(dict(text=f"w{i % 7}", label=str(i % 2))) + "\n" for i in range(30)))
    out = tmp_path / "o"
    assert FT.main(["--task", str(task), "--init", str(tiny_dir), "--device=cpu", f"--out_dir={out}",
                    "--max_iters=1", "--batch_size=4", "--ckpt_interval=1"]) == 0
    capsys.readouterr()
    resume = [f"--out_dir={out}", "--resume", "--device=cpu", "--max_iters=2"]
    _one_line_exit(FT.main, resume + ["--init=random"], capsys, 2, "continues a fine-tune with init")
    _one_line_exit(FT.main, resume + ["--task_type=pair"], capsys, 2, "continues a fine-tune with task_type classify")


def test_help_has_examples_and_exit_status(capsys):
    from fastgpt import finetune as FT
    for fn in (train.main, FT.main):
        with pytest.raises(SystemExit) as e:
            fn(["--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and "examples:" in out and "exit status" in out
    assert "gpt2-medium" in cli.format_help(train.TrainConfig, "p")  # the preset names, not a module path


def test_python_m_fastgpt_lists_every_command(capsys):
    from fastgpt import __main__ as M
    assert M.main([]) == 0
    out = capsys.readouterr().out
    for name in ("train", "finetune", "sample", "selftest", "checkpoint", "data"):
        assert f"\n  {name} " in out
    with pytest.raises(SystemExit) as e:
        M.main(["sample", "--help"])
    assert e.value.code == 0 and "python -m fastgpt.sample" in capsys.readouterr().out


def test_tokenizing_bar_stays_off_a_pipe(tmp_path, capsys):
    """The tokenizer's progress bar wrote carriage-return litter into non-terminal stderr (and the
    one-line error that followed started after it)."""
    from fastgpt import data
    docs = [("a", "train", "hello world " * 50), ("b", "val", "bye " * 50)]
    data.write_token_dir(tmp_path / "tok", docs, data.get_tokenizer("byte"), source={})
    assert "tokenizing" not in capsys.readouterr().err


def test_interrupt_names_the_checkpoint_or_says_there_is_none(tmp_path, monkeypatch, capsys):
    """An aborted run (Ctrl-C before the loop, or twice) exits 130; it used to advise --resume even when no
    checkpoint existed."""
    from fastgpt import checkpoint as ck
    from fastgpt import finetune as FT

    def abort(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "run", abort)
    monkeypatch.setattr(FT, "run", abort)
    out = tmp_path / "o"
    for main in (train.main, FT.main):
        assert main([f"--out_dir={out}"]) == 130
        assert "interrupted before any checkpoint was written" in capsys.readouterr().err
    ck.save_checkpoint(out, dict(step=3))
    for main in (train.main, FT.main):
        assert main([f"--out_dir={out}"]) == 130
        err = capsys.readouterr().err
        assert f"the last checkpoint is {out / 'ckpt_0000003.pt'}" in err and "--resume" in err


def test_graceful_stop_turns_an_abort_back_into_keyboardinterrupt():
    """A second Ctrl-C raised inside library code can surface as another exception (torch.save's
    writer wraps it); leaving the block, GracefulStop turns it back into the KeyboardInterrupt it
    was. Without an abort, exceptions pass through unchanged."""
    with pytest.raises(KeyboardInterrupt) as e:
        with cli.GracefulStop("prog") as sigs:
            sigs.aborted = True
            raise RuntimeError("writer failed")
    assert isinstance(e.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError, match="plain failure"):
        with cli.GracefulStop("prog"):
            raise RuntimeError("plain failure")


def test_run_main_maps_failures_to_one_line(tmp_path, capsys):
    """cli.run_main, the body of every CLI's main: known failures end with one line and their exit status
    (UsageError always 2), an allocation failure names what to lower, Ctrl-C prints the interrupted line and
    returns 130, an int from the body is the status, anything else propagates with its traceback."""
    class Broken(RuntimeError):
        pass

    def raising(e):
        def body():
            raise e
        return body

    def status(body, **kw):
        with pytest.raises(SystemExit) as ex:
            cli.run_main("prog", body, {Broken: 7}, "lower --x", **kw)
        return ex.value.code, capsys.readouterr().err

    assert status(raising(Broken("disk on fire"))) == (7, "prog: error: disk on fire\n")
    assert status(raising(cli.UsageError("bad --y"))) == (2, "prog: error: bad --y\n")
    code, err = status(raising(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")))
    assert code == 1 and err.startswith("prog: error: out of memory on the GPU (CUDA out of memory.")
    assert err.rstrip().endswith("; lower --x") and err.count("\n") == 1
    with pytest.raises(RuntimeError, match="a bug"):
        cli.run_main("prog", raising(RuntimeError("a bug")), {Broken: 7}, "lower --x")
    # Ctrl-C: one line and 130; with no out_dir to report, plainly "interrupted" and what the body says
    assert _no_escape(lambda: cli.run_main("prog", raising(KeyboardInterrupt()), {}, "lower --x")) == 130
    assert capsys.readouterr().err == "\nprog: interrupted\n"
    assert _no_escape(lambda: cli.run_main("prog", raising(KeyboardInterrupt("after 3 labels")), {}, "")) == 130
    assert capsys.readouterr().err == "\nprog: interrupted after 3 labels\n"
    assert cli.run_main("prog", raising(KeyboardInterrupt()), {}, "", interrupted=(tmp_path, "at the end")) == 130
    assert "nothing to resume" in capsys.readouterr().err
    # (a review) with its metrics.jsonl, --resume starts the run again: said, not "nothing to resume"
    (tmp_path / "metrics.jsonl").write_text("")
    assert cli.run_main("prog", raising(KeyboardInterrupt()), {}, "", interrupted=(tmp_path, "at the end")) == 130
    err = capsys.readouterr().err
    assert f"to start it again from step 0 with its options: prog --resume --out_dir {tmp_path}\n" in err, err
    assert cli.run_main("prog", lambda: 3, {}, "") == 3
    assert cli.run_main("prog", lambda: {"step": 1}, {}, "") == 0


def test_sample_refuses_a_tokenizer_that_is_not_the_models():
    """GPT-1's 40478-token vocabulary (an HF OpenAI-GPT folder records no tokenizer) is not bytes: refused,
    not sampled as meaningless text as before; a padded vocabulary with an explicit tokenizer still works."""
    from fastgpt import cli, sample
    from fastgpt.config import GPTConfig
    gpt1 = GPTConfig(vocab_size=40478, block_size=16, n_layer=1, n_head=2, n_embd=16, norm="post")
    with pytest.raises(cli.UsageError, match="GPT-1's BPE"):
        sample._tokenizer("auto", gpt1)
    with pytest.raises(cli.UsageError, match="--tokenizer byte: a 40478-token vocabulary is GPT-1's BPE"):
        sample._tokenizer("byte", gpt1)
    assert sample._tokenizer("byte", GPTConfig(vocab_size=320, block_size=16, n_layer=1, n_head=2,
                                               n_embd=16)).n_vocab == 256


def test_sample_a_model_with_an_unknown_tokenizer_or_a_bf16_residual_stream(tmp_path, capsys):
    """(a review, 2026-11-28) A model naming a tokenizer fastgpt lacks was a ValueError traceback, and
    --tokenizer could not override it; a model saved with residual_dtype bfloat16 could not be sampled on
    the CPU (fp32, no autocast); --device cpu:0 was blamed on the model's path; a character the output's
    encoding lacks (cp1252) ended the run with the samples lost."""
    import io

    from fastgpt import sample
    from fastgpt.config import GPTConfig
    from fastgpt.model import GPT
    small = dict(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16)
    GPT(GPTConfig(**small, extra=dict(tokenizer="char"))).save_pretrained(tmp_path / "char")
    _one_line_exit(sample.main, [str(tmp_path / "char"), "--device", "cpu"], capsys, 2,
                   "names the tokenizer 'char', which fastgpt does not have; pass --tokenizer gpt2 or byte")
    run = ["--device", "cpu", "--max-new-tokens", "3"]
    assert sample.main([str(tmp_path / "char"), "--tokenizer", "byte"] + run) == 0
    GPT(GPTConfig(**small, residual_dtype="bfloat16", extra=dict(tokenizer="byte"))).save_pretrained(tmp_path / "rd")
    assert sample.main([str(tmp_path / "rd")] + run) == 0
    assert sample.main([str(tmp_path / "rd"), "--device", "cpu:0", "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    out = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")
    assert cli.printable("caf\u00e9 \ufffd \u6771", out) == "caf\u00e9 ? ?"
    assert cli.printable("plain", out) == "plain"


def test_device_option_makes_cuda_n_current(monkeypatch):
    """--device cuda:N is checked against the devices there are and becomes the current device (sample
    times its tokens/s with torch.cuda.synchronize(), which waits on the current device only)."""
    import torch

    from fastgpt import cli
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d).index))
    assert cli.device("cuda:1") == torch.device("cuda:1") and current == [1]
    assert cli.device("cuda") == torch.device("cuda") and current == [1]
    assert cli.device("cpu") == torch.device("cpu") and current == [1]
    with pytest.raises(cli.UsageError, match="only 2 CUDA devices"):
        cli.device("cuda:2")
    with pytest.raises(cli.UsageError, match="must be cpu, cuda or cuda:N"):
        cli.device("tpu")


def _no_escape(call):
    """call(), failing the test (not ending the session) if a KeyboardInterrupt escapes it."""
    try:
        return call()
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a KeyboardInterrupt (a traceback for the user)")


def test_sample_ctrl_c_prints_the_samples_so_far(tiny_dir, capsys, monkeypatch):
    """Ctrl-C while sampling: the text generated so far is printed (it was lost: printed only at the end),
    then one line, exit 130 (it was a traceback)."""
    from fastgpt import model, sample
    argv = [str(tiny_dir), "--num-samples", "2", "--seed", "5", "--device", "cpu"]
    assert sample.main(argv + ["--max-new-tokens", "6"]) == 0
    six = capsys.readouterr().out
    interrupt_on_call(monkeypatch, model, "sample_next", 7)   # Ctrl-C at the seventh token
    assert _no_escape(lambda: sample.main(argv + ["--max-new-tokens", "50"])) == 130
    out, err = capsys.readouterr()
    assert out == six and out.count("---------- sample ") == 2
    assert err == "\npython -m fastgpt.sample: interrupted after 6 of 50 new tokens (the samples so far are printed)\n"


def test_selftest_ctrl_c_is_one_line(capsys, monkeypatch):
    from fastgpt import selftest

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(selftest, "run", ctrl_c)
    assert _no_escape(lambda: selftest.main(["--device", "cpu"])) == 130
    assert capsys.readouterr().err == "\npython -m fastgpt.selftest: interrupted\n"


def test_finetune_offline_error_names_the_offline_option(tmp_path, monkeypatch, capsys):
    """--offline with an empty cache: the error said "FASTGPT_OFFLINE is set", which the user had not done."""
    from fastgpt import finetune as FT
    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTGPT_OFFLINE", raising=False)
    err = _one_line_exit(FT.main, ["--task=movie-reviews", "--offline", "--init=random", "--device=cpu",
                                   f"--out_dir={tmp_path / 'o'}"], capsys, 1, "--offline was given")
    assert "FASTGPT_OFFLINE is set" not in err


def test_run_log_opens_its_file_at_the_first_row(tmp_path):
    """A run that dies before its first row (a long initial evaluation) leaves the earlier metrics.jsonl as
    it was, not truncated to nothing (--resume reads its header to start the run again)."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "header", "config": {}}\n')
    cli.RunLog(path, append=False, bar=False, total=1, initial=0).close()
    assert path.read_text() == '{"type": "header", "config": {}}\n'
    log = cli.RunLog(path, append=False, bar=False, total=1, initial=0)
    log.write(dict(step=1))
    log.close()
    assert path.read_text() == '{"step": 1}\n'
    cli.RunLog(tmp_path / "none.jsonl", append=False, bar=False, total=1, initial=0).close()
    assert not (tmp_path / "none.jsonl").exists()


def test_run_log_first_row_is_whole_or_the_old_file_stays(tmp_path, monkeypatch, capsys):
    """A new run's metrics.jsonl replaces the old one only with its first row whole: a disk that is full at
    that moment leaves the previous file (and its header) as it was, with one warning; later rows append."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "header", "config": {"old": 1}}\n')
    log = cli.RunLog(path, append=False, bar=False, total=1, initial=0)
    monkeypatch.setattr(cli, "write_atomic", lambda p, data: (_ for _ in ()).throw(OSError(28, "No space left")))
    log.write(dict(type="header", config={}))
    log.write(dict(step=1))
    log.close()
    assert path.read_text() == '{"type": "header", "config": {"old": 1}}\n'
    assert capsys.readouterr().err.count("cannot write") == 1
    monkeypatch.undo()
    log = cli.RunLog(path, append=False, bar=False, total=1, initial=0)
    log.write(dict(type="header", config={}))
    log.write(dict(step=1))
    log.close()
    assert path.read_text() == '{"type": "header", "config": {}}\n{"step": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    link = tmp_path / "link.jsonl"                 # a link (into a log folder) stays one; its target is written
    link.symlink_to(path)
    log = cli.RunLog(link, append=False, bar=False, total=1, initial=0)
    log.write(dict(type="header", config={"new": 1}))
    log.close()
    assert link.is_symlink() and path.read_text() == '{"type": "header", "config": {"new": 1}}\n'


def test_write_atomic_syncs_the_bytes_before_the_rename(tmp_path, monkeypatch):
    """meta.json (the mark that a token folder is whole), a metrics header, eval.json: their bytes are
    fsync'ed before the rename, so a power loss just after it cannot leave the new name on an empty file
    (the token files beside meta.json were synced; meta.json was not). Text is UTF-8 whatever the locale."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_size)), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.path.basename(b))),
                                                     real_replace(a, b)))
    cli.write_atomic(tmp_path / "meta.json", '{"n": "\ufffd"}')
    assert events == [("fsync", 12), ("replace", "meta.json")]
    assert (tmp_path / "meta.json").read_bytes() == '{"n": "\ufffd"}'.encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_resume_point_on_an_unreadable_folder_is_one_line(tmp_path, monkeypatch):
    """An out_dir that cannot be read (a network file system gone away) is a CheckpointError naming it,
    for train and finetune alike, not an OSError traceback (under DDP: on one rank)."""
    from fastgpt import checkpoint as ck

    def unreadable(out_dir, say):
        raise PermissionError(13, "Permission denied", str(out_dir))
    monkeypatch.setattr(ck, "load_for_resume", unreadable)
    with pytest.raises(ck.CheckpointError) as e:
        cli.resume_point(tmp_path, print, is_ours=lambda h: True, not_ours="")
    assert str(e.value) == f"--resume: cannot read {tmp_path} (Permission denied)"


def test_rank_0_alone_says_what_every_rank_meets_alike(tmp_path, monkeypatch, capsys):
    """Under torchrun ($WORLD_SIZE > 1) a worker other than rank 0 leaves an options error to rank 0, but
    says what may be its node's own (a --config file it cannot read); a stray $RANK in a single process
    is no worker (it silenced every usage error)."""
    monkeypatch.setenv("RANK", "1")
    _one_line_exit(train.main, ["--bogus=1"], capsys, 2, "unknown option --bogus")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        train.main(["--bogus=1"])
    assert e.value.code == 2 and capsys.readouterr().err == ""
    _one_line_exit(train.main, [f"--config={tmp_path / 'missing.json'}"], capsys, 2, "cannot read it")
    monkeypatch.setenv("RANK", "0")
    _one_line_exit(train.main, ["--bogus=1"], capsys, 2, "unknown option --bogus")


def test_a_collective_broken_by_another_process_is_one_line(tmp_path, monkeypatch, capsys):
    """(a review, 2026-11-29) A rank whose peer died (kill -9, a node lost) printed gloo's RuntimeError with a
    page of traceback; under torchrun it is one line naming the checkpoint to continue from. Outside torchrun,
    or for another RuntimeError, the traceback stays (a bug's is wanted)."""
    from fastgpt import checkpoint as ck
    ck.save_checkpoint(tmp_path, dict(step=3), keep=0)

    def broken():
        raise RuntimeError("[/w/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:22707: "
                           "Connection reset by peer. This is typically caused by a remote peer failing")
    with pytest.raises(RuntimeError):
        cli.run_main("prog", broken, {}, "", interrupted=(tmp_path, "when"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as e:
        cli.run_main("prog", broken, {}, "", interrupted=(tmp_path, "when", ("--device=cpu",)))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith("prog: error: another process of this job failed or was stopped (Read error [127.0.0.1]")
    assert f"the last checkpoint is {tmp_path / 'ckpt_0000003.pt'} (continue with: torchrun" in err
    with pytest.raises(RuntimeError, match="a bug"):
        cli.run_main("prog", lambda: (_ for _ in ()).throw(RuntimeError("a bug")), {}, "")
    monkeypatch.setenv("WORLD_SIZE", "two")   # not torchrun's: the RuntimeError propagates as it was, no error
    with pytest.raises(RuntimeError, match="Connection reset by peer") as e:   # about $WORLD_SIZE raised over it
        cli.run_main("prog", broken, {}, "")
    assert e.value.__context__ is None


def test_data_names_a_bad_data_path_once(tmp_path, capsys):
    """--data naming nothing was said once per tokenizer (gpt2, then byte)."""
    from fastgpt import data
    assert data.main(["--data", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or folder" in err, err


# ----------------------------------------------------------------------------- from a mutation review
# (2026-11-28: each test below failed on a mutant that every other test let through, and passes on the code)

def _sampled_ids(monkeypatch, argv):
    from fastgpt import sample
    rows = []
    monkeypatch.setattr(sample, "_print_samples", lambda tok, r: rows.extend(r))
    assert sample.main(argv) == 0
    return rows


def test_sample_no_cache_builds_no_kv_cache(tiny_dir, monkeypatch):
    import fastgpt.model as fm
    made = []
    real = fm.KVCache
    monkeypatch.setattr(fm, "KVCache", lambda *a, **k: made.append(1) or real(*a, **k))
    base = [str(tiny_dir), "--max-new-tokens", "3", "--device", "cpu"]
    a = _sampled_ids(monkeypatch, base + ["--no-cache"])
    assert made == []
    assert _sampled_ids(monkeypatch, base) == a and made == [1]   # the same tokens, from the cache


def test_sample_draws_only_the_tokenizers_ids(tmp_path, monkeypatch):
    """A byte model whose vocabulary is larger than 256 (the specials of a fine-tune): ids >= 256 would decode to
    nothing, so they are never drawn, even when they are the likeliest."""
    import torch
    from fastgpt import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", n_layer=1, block_size=32, vocab_size=300)
    cfg.extra = dict(tokenizer="byte")
    m = GPT(cfg)
    with torch.no_grad():
        m.transformer.wte.weight[256:300] *= 50.0
    m.save_pretrained(tmp_path / "m")
    rows = _sampled_ids(monkeypatch, [str(tmp_path / "m"), "--max-new-tokens", "12", "--num-samples", "4",
                                      "--temperature", "2", "--top-k", "none", "--device", "cpu"])
    assert max(max(r) for r in rows) < 256


def test_sample_seed_and_greedy(tiny_dir, monkeypatch):
    base = [str(tiny_dir), "--max-new-tokens", "16", "--temperature", "2", "--top-k", "none", "--device", "cpu"]
    one = _sampled_ids(monkeypatch, base + ["--seed", "1"])
    assert _sampled_ids(monkeypatch, base + ["--seed", "1"]) == one
    assert _sampled_ids(monkeypatch, base + ["--seed", "2"]) != one
    greedy = _sampled_ids(monkeypatch, [str(tiny_dir), "--max-new-tokens", "5", "--temperature", "0",
                                        "--device", "cpu", "--num-samples", "2"])
    assert greedy[0] == greedy[1]     # temperature 0 is accepted, and is the argmax


# ----------------------------------------------------------------------------- from a mutation audit (2026-11-29)
# each test names the one-line mutant it kills, which the suite had let through

def test_bool_and_none_values_are_case_insensitive():
    """Mutant: s in _TRUE (case-sensitive): --progress=True / --resume=YES, as Python or shell users write
    them, were usage errors."""
    from dataclasses import dataclass

    @dataclass
    class C:
        flag: bool = cli.opt(False, "a flag")
        n: int | None = cli.opt(3, "a count")
    for v, want in (("True", True), ("YES", True), ("On", True), ("False", False), ("NO", False), ("Off", False)):
        assert cli.parse_args(C, [f"--flag={v}"])[0].flag is want, v
    assert cli.parse_args(C, ["--flag", "True", "--n", "None"])[0] == C(flag=True, n=None)


def test_an_integer_option_refuses_a_fraction_in_scientific_notation():
    """Mutant: _is_sci_int without f.is_integer(): --batch_size=2.5e0 was silently 2 (as --n=3.5 is refused)."""
    from dataclasses import dataclass

    @dataclass
    class C:
        n: int = cli.opt(3, "a count")
    assert cli.parse_args(C, ["--n=1e3"])[0].n == 1000
    for v in ("2.5e0", "1.25E1"):
        with pytest.raises(cli.UsageError, match="--n expects INT"):
            cli.parse_args(C, [f"--n={v}"])


def test_a_resume_keeps_this_commands_runtime_options():
    """Mutant: with_saved_options keeps only the options given on the command line, not the runtime-only ones:
    a --resume then took the saved run's device (a GPU run resumed on a CPU box asked for CUDA), its progress
    bar setting, eval_batch_size and out_dir instead of this command's."""
    cfg = finetune.FinetuneConfig(out_dir="new", device="cpu", eval_batch_size=7, progress=True, resume=True)
    saved = dict(out_dir="/old", device="cuda", eval_batch_size=3, progress=False, resume=False, epochs=9, lr=1e-4)
    got = cli.with_saved_options(cfg, {"resume"}, saved, finetune.RUNTIME_ONLY)
    assert (got.out_dir, got.device, got.eval_batch_size, got.progress, got.resume) == ("new", "cpu", 7, True, True)
    assert (got.epochs, got.lr) == (9, 1e-4)   # the run's own options come from the checkpoint


def test_the_out_dir_lock_is_exclusive_between_two_runs(tmp_path):
    """Mutant: LOCK_SH for LOCK_EX. The existing test holds an exclusive lock of its own, which refuses a shared
    request too; two fastgpt runs each asking for a shared lock both got it and wrote one out_dir together."""
    with cli.OutDirLock() as a, cli.OutDirLock() as b:
        assert a.acquire(tmp_path / "o") is None
        err = b.acquire(tmp_path / "o")
        assert err is not None and "is in use by another run" in err, err


def test_sample_on_the_cpu_runs_in_fp32_whatever_dtype(tiny_dir, monkeypatch, capsys):
    """Mutant: dtype = args.dtype (here --dtype bf16) on the CPU too. --dtype is CUDA's autocast dtype; on the CPU the
    sample runs in fp32 (bf16 autocast there is slower and changes the samples)."""
    from fastgpt import sample
    seen, real = [], cli.autocast_factory
    monkeypatch.setattr(cli, "autocast_factory", lambda device, dtype: seen.append(dtype) or real(device, dtype))
    for extra in ([], ["--dtype", "bf16"]):
        assert sample.main([str(tiny_dir), "--max-new-tokens", "2", "--device", "cpu"] + extra) == 0
    assert seen == ["fp32", "fp32"], seen
    # fp16 on the CPU is refused, as train and finetune refuse it (a review: it ran, rc 0)
    capsys.readouterr()
    _one_line_exit(sample.main, [str(tiny_dir), "--device", "cpu", "--dtype", "fp16"], capsys, 2,
                   "--dtype fp16 needs --device cuda")


def test_the_sample_command_train_prints_works_for_an_out_dir_that_starts_with_a_dash(tmp_path, monkeypatch,
                                                                                      capsys):
    """train's last line says how to sample the model: `python -m fastgpt.sample -run/model` for --out_dir=-run,
    which sample reads as an unknown option (exit 2). The path is now written ./-run/model, and that command
    samples."""
    import shlex
    from fastgpt import sample
    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("the king is dead, long live the king.\n" * 100)
    assert train.main(["--data=t.txt", "--out_dir=-run", "--device=cpu", "--preset=tiny", "--tokenizer=byte",
                       "--batch_size=2", "--block_size=16", "--eval_iters=1", "--sample_tokens=0",
                       "--max_iters=1", "--warmup_iters=0"]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    cmd = last.rsplit("(python -m fastgpt.sample ", 1)[1].rstrip(")")
    assert cmd == "./-run/model", last
    assert sample.main(shlex.split(cmd) + ["--max-new-tokens=2", "--device=cpu"]) == 0
    assert cli.path_arg("a b/-c") == "'a b/-c'" and cli.path_arg("/x/-y") == "/x/-y"


@pytest.mark.filterwarnings("ignore:fastgpt. using the reference path on CUDA")
@pytest.mark.parametrize("capability", [(7, 5), (8, 0)])
def test_auto_dtype_on_cuda_is_bf16_only_where_the_gpu_has_it(capability, monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on a T4 or a V100 as well: it counts emulated bf16 (slow). So
    train and finetune chose bf16 there by default (and sample's --dtype defaulted to it). Auto is now bf16
    from compute capability 8.0, else fp16 (with the loss scaler); an explicit bf16 below 8.0 is a usage error
    naming the capability; fp16 and fp32 are taken as given. (A CUDA device is faked: this runs on the CPU.)"""
    import torch
    native = fake_cuda_capability(monkeypatch, capability)
    auto = "bf16" if native else "fp16"
    assert [cli.cuda_dtype(d) for d in (None, "fp16", "fp32")] == [auto, "fp16", "fp32"]
    if native:
        assert cli.cuda_dtype("bf16") == "bf16"
    else:
        with pytest.raises(cli.UsageError, match=r"^--dtype bf16: this GPU \(compute capability 7\.5\) has no native "
                                                 r"bf16 \(it needs 8\.0 or newer\); use --dtype fp16$"):
            cli.cuda_dtype("bf16")
    # both commands resolve their auto --dtype through it
    monkeypatch.setattr(cli, "device", lambda spec, *a, **k: torch.device("cuda"))
    assert train.resolve(train.TrainConfig(device="cuda"), set()).dtype == auto
    assert train.resolve(train.TrainConfig(device="cuda", dtype="fp32"), {"dtype"}).dtype == "fp32"
    assert finetune._device_and_dtype(finetune.FinetuneConfig(device="cuda")).dtype == auto
    if not native:
        with pytest.raises(cli.UsageError, match="no native bf16"):
            train.resolve(train.TrainConfig(device="cuda", dtype="bf16"), {"dtype"})
        with pytest.raises(cli.UsageError, match="no native bf16"):
            finetune._device_and_dtype(finetune.FinetuneConfig(device="cuda", dtype="bf16"))


def test_selftest_asks_its_own_gpu_for_bf16(monkeypatch):
    """selftest.run(device=cuda:1) with an Ampere current device and a T4 as cuda:1: the bf16 question is
    cuda:1's (torch.cuda.is_bf16_supported asks the current device only). A CUDA pair is faked."""
    import torch

    from fastgpt import selftest
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: (7, 5) if torch.device(device or "cuda:0").index == 1 else (8, 0))
    assert cli.native_bf16() and not cli.native_bf16(torch.device("cuda:1"))
    assert not selftest._native_bf16(torch.device("cuda:1")) and selftest._native_bf16(torch.device("cpu"))


def test_ctrl_c_while_the_package_imports_is_one_line(tmp_path):
    """A Ctrl-C in the first second of python -m fastgpt.X lands while the package imports torch, before any
    of the programs' handlers: it printed a page of import traceback. Now one line, exit 130, as later. A
    sitecustomize raises the KeyboardInterrupt at the import of fastgpt.model (a real SIGINT's timing would
    make the test flaky); imported by anything else (python -c), the interrupt is the importer's."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n\nclass Interrupt:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'fastgpt.model':\n            raise KeyboardInterrupt\n\n"
        "sys.meta_path.insert(0, Interrupt())\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    for argv, prog in ((["-m", "fastgpt.train", "--help"], "python -m fastgpt.train"),
                       (["-m", "fastgpt", "sample"], "python -m fastgpt")):
        p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=120)
        assert (p.returncode, p.stdout, p.stderr) == (130, "", f"{prog}: interrupted\n"), p
    p = subprocess.run([sys.executable, "-c", "import fastgpt"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == -2 and p.stderr.rstrip().endswith("KeyboardInterrupt"), p   # (killed by SIGINT)

# ----------------------------------------------------------------------------- a mutation audit's cases
# (a mutation audit of cli.py, 2026-11-30: each of these passed every test when broken)

@dataclass
class _Cfg2:
    n: int = cli.opt(3, "a count")
    x: float = cli.opt(0.5, "a rate")


def test_a_float_option_refuses_nan():
    """Mutant: the `v != v` check dropped: --lr=nan was taken and the run trained on NaN."""
    for argv in (["--x=nan"], ["--x", "NaN"]):
        with pytest.raises(cli.UsageError, match="--x must be a number, got nan"):
            cli.parse_args(_Cfg2, argv)


def test_an_integer_option_refuses_a_scientific_value_beyond_float_precision():
    """Mutant: _is_sci_int without `abs(f) < 2**53`: --n=1e23 was silently 99999999999999991611392."""
    with pytest.raises(cli.UsageError, match="--n expects INT"):
        cli.parse_args(_Cfg2, ["--n=1e23"])
    assert cli.parse_args(_Cfg2, ["--n=1e15"])[0].n == 10**15


def test_a_misspelt_config_or_help_is_suggested():
    """Mutant: _unknown offers the dataclass's options alone: --confg / --hepl got no suggestion."""
    with pytest.raises(cli.UsageError, match=r"did you mean --config\?"):
        cli.parse_args(_Cfg2, ["--confg=a.json"])
    with pytest.raises(cli.UsageError, match=r"did you mean --help\?"):
        cli.parse_args(_Cfg2, ["--hepl"])


def test_an_argument_parser_can_parse_twice():
    """Mutant: parse_known_args no longer resets _given: a second parse_args on the same parser (an API user,
    a wrapper that parses again) refused its first --only as "given twice"."""
    ap = cli.ArgumentParser(prog="p")
    ap.add_argument("--only")
    assert ap.parse_args(["--only", "a"]).only == "a"
    assert ap.parse_args(["--only", "b"]).only == "b"


def test_a_dash_path_after_double_dash_is_not_blamed(tmp_path, monkeypatch, capsys):
    """Mutant: error() looks past `--`: `p -- -run extra` said "-run is read as an option; put -- before a
    path" although the user did put -- there (the real problem: the extra argument)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-run").mkdir()
    ap = cli.ArgumentParser(prog="p")
    ap.add_argument("path")
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--", "-run", "extra"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: extra" in err and "read as an option" not in err, err


def test_the_out_of_memory_line_is_cut_short():
    """Mutant: out_of_memory without [:160]: a long allocator message made a line of any length."""
    line = cli.out_of_memory(RuntimeError("CUDA out of memory. " + "x" * 1000 + "\nmore"), "lower --batch_size")
    assert line.startswith("out of memory on the GPU (CUDA out of memory. xxx") and len(line) < 250
    assert line.endswith("); lower --batch_size")


def test_where_to_continue_says_when_a_checkpoint_is_written(tmp_path):
    """Mutant: where_to_continue drops ``when``: a peer failure before the first checkpoint no longer said when
    one would have been written (every N steps), the only hint of how much was lost."""
    assert cli.where_to_continue("prog", tmp_path, "one is written every 100 steps") == \
        f"no checkpoint was written in {tmp_path} yet (one is written every 100 steps)"


def test_check_out_dir_refuses_a_folder_it_cannot_write_or_enter(tmp_path, monkeypatch):
    """Mutants: check_out_dir asks os.access for W_OK alone (a folder without x: writing into it fails later, at
    the first checkpoint), or never asks about the parent it would create the folder in. (os.access is faked:
    as root every access check passes, so chmod cannot show it.)"""
    monkeypatch.setattr(cli.os, "access", lambda p, mode: not (mode & os.X_OK))   # writable, not searchable
    with pytest.raises(cli.UsageError, match="the folder is not writable"):
        cli.check_out_dir(tmp_path)
    with pytest.raises(cli.UsageError, match=rf"cannot create it \({tmp_path} is not writable\)"):
        cli.check_out_dir(tmp_path / "a" / "b")   # (the nearest folder that exists is the one asked)
    monkeypatch.setattr(cli.os, "access", lambda p, mode: True)
    cli.check_out_dir(tmp_path / "a" / "b")


class _ClosedPipe:
    """A stdout whose reader is gone: writes are buffered, the flush meets the closed pipe; no file descriptor
    (so entry's /dev/null redirection leaves the test process's own alone)."""
    encoding = "utf-8"

    def write(self, s):
        return len(s)

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise ValueError("no descriptor")


def test_entry_flushes_a_finished_commands_output_and_exits_141_on_a_closed_pipe(monkeypatch):
    """Mutant: entry without the flush after main(): output still buffered when a command returned normally
    (`python -m fastgpt.checkpoint ... | head -0`) met the closed pipe in the interpreter's own flush at exit:
    "Exception ignored ... BrokenPipeError" and status 120 instead of a quiet 141. (The --help paths end in
    SystemExit, whose flush is separate: test_robust's pipe test covers those alone.)"""
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert cli.entry(lambda: print("a line") or 0) == cli.EXIT_BROKEN_PIPE == 141


def test_the_out_dir_lock_names_its_holder_and_leaves_no_folder_it_made(tmp_path):
    """Mutants: the "in use" line without the holder's pid (which process to wait for or stop); the pid file
    not truncated (.lock grows a line with every run); release() leaving a folder it created holding only
    .lock (an aborted run's empty out_dir stays behind, and a later check_no_earlier_run sees a folder)."""
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / ".lock").write_text("999999999\n")   # a previous run's pid
    with cli.OutDirLock() as a, cli.OutDirLock() as b:
        assert a.acquire(tmp_path / "o") is None
        assert (tmp_path / "o" / ".lock").read_text() == f"{os.getpid()}\n"
        err = b.acquire(tmp_path / "o")
        assert err is not None and f"is in use by another run (pid {os.getpid()})" in err, err
    with cli.OutDirLock() as c:
        assert c.acquire(tmp_path / "new" / "run") is None
        assert (tmp_path / "new" / "run" / ".lock").exists()
    assert not (tmp_path / "new" / "run").exists()   # made by acquire, nothing written: removed again
    with cli.OutDirLock() as d:
        assert d.acquire(tmp_path / "kept") is None
        (tmp_path / "kept" / "metrics.jsonl").write_text("{}\n")
    assert (tmp_path / "kept" / "metrics.jsonl").exists()


def test_the_lock_is_lost_when_its_file_has_no_link_left(tmp_path, monkeypatch):
    """Mutant: lost() without `st_nlink > 0`: a .lock removed with its folder whose inode number a new .lock
    reuses (file systems that recycle them) read as still held. (fstat is faked to show the unlinked file.)"""
    with cli.OutDirLock() as a:
        assert a.acquire(tmp_path / "o") is None
        assert a.lost() is None
        real = os.fstat

        def unlinked(fd):
            st = real(fd)
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev, 0, st.st_uid, st.st_gid, st.st_size,
                                   int(st.st_atime), int(st.st_mtime), int(st.st_ctime)))
        monkeypatch.setattr(cli.os, "fstat", unlinked)
        assert "was removed (or replaced)" in a.lost()


def test_ctrl_c_under_torchrun_is_said_by_rank_0_alone(monkeypatch, capsys):
    """Mutant: run_main's KeyboardInterrupt prints on every rank: torchrun passes a Ctrl-C to every worker, and
    N copies of "interrupted" came back."""
    def body():
        raise KeyboardInterrupt
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli.run_main("prog", body, {}, "") == 130
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert cli.run_main("prog", body, {}, "") == 130
    assert capsys.readouterr().err == "\nprog: interrupted\n"


def test_resume_command_under_torchrun_names_the_launcher(monkeypatch):
    """Mutant: resume_command writes --nproc_per_node=WORLD_SIZE whatever $LOCAL_WORLD_SIZE: a 2-node job of 4
    processes was told to continue with `torchrun --nproc_per_node=4` (4 per node: 8 processes)."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cli.resume_command("python -m fastgpt.train", "o", ("--fsdp",)) == \
        "torchrun --nproc_per_node=4 -m fastgpt.train --resume --out_dir o --fsdp"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cli.resume_command("python -m fastgpt.train", "a b") == \
        "torchrun (your options: 4 processes) -m fastgpt.train --resume --out_dir 'a b'"
    monkeypatch.delenv("WORLD_SIZE")
    assert cli.resume_command("python -m fastgpt.train", "o") == "python -m fastgpt.train --resume --out_dir o"


def test_argparse_help_shows_a_default_only_where_there_is_one():
    """Mutant: HelpFormatter shows a flag's False: every store_true option read "(default: False)"."""
    ap = cli.ArgumentParser(prog="p")
    ap.add_argument("--quick", action="store_true", help="smaller shapes")
    ap.add_argument("--n", type=int, default=3, help="a count")
    ap.add_argument("--name", help="a name")
    ap.add_argument("--k", type=int, default=5, help="top k (default: 5, 0 for all)")
    h = ap.format_help()
    assert "(default: False)" not in h and "(default: None)" not in h
    assert "a count (default: 3)" in h and h.count("default: 5") == 1


def test_an_automatic_device_is_cuda_where_there_is_one(monkeypatch):
    """Mutant: device(None) always cpu: a run without --device trained on the CPU of a GPU machine. (CUDA is
    faked: this runs on the CPU.)"""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.device(None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.device(None) == torch.device("cpu")


def test_bool_and_none_values_may_carry_spaces():
    """Mutant: convert without strip(): --flag=" yes" (a quoted shell variable with a space) was a usage error;
    ints and floats took the same spaces (int() and float() strip them)."""
    @dataclass
    class B:
        flag: bool = cli.opt(False, "a flag")
        m: int | None = cli.opt(3, "a count")
    assert cli.parse_args(B, ["--flag= yes ", "--m", " None "])[0] == B(flag=True, m=None)


# ----------------------------------------------------------------------------- from a mutation audit of sample.py
# (2026-11-30: each test below failed on a mutant that every other test let through, and passes on the code)

@pytest.mark.parametrize("value", ["inf", "nan"])
def test_sample_refuses_a_temperature_that_is_not_a_finite_number(value, tiny_dir, capsys):
    """Mutants: _check_args without `!= float("inf")` (S07), or `temperature < 0` for `not (temperature >= 0 ...)`
    (S08, lets NaN through): generate() then raised its ValueError, a traceback instead of the one-line usage
    error and exit 2."""
    from fastgpt import sample
    _one_line_exit(sample.main, [str(tiny_dir), "--device", "cpu", "--max-new-tokens", "2", "--temperature", value],
                   capsys, 2, "--temperature must be >= 0")


def test_sample_takes_top_p_1(tiny_dir, capsys):
    """Mutant S09: `0 < top_p < 1`: --top-p 1 (no nucleus cut: the range is (0, 1], as --help says) was refused."""
    from fastgpt import sample
    assert sample.main([str(tiny_dir), "--device", "cpu", "--max-new-tokens", "2", "--top-p", "1"]) == 0
    assert "2 tokens" in capsys.readouterr().err


def test_sample_refuses_a_byte_model_whose_vocabulary_is_under_256(tmp_path, capsys):
    """Mutant S05: _tokenizer without the `tok.n_vocab > cfg.vocab_size` check: a byte model with a 128-token
    vocabulary then failed inside generate() (n_vocab 256 past the vocabulary: a ValueError traceback)."""
    from fastgpt import GPT, GPTConfig, sample
    GPT(GPTConfig(vocab_size=128, block_size=16, n_layer=1, n_head=2, n_embd=16,
                  extra=dict(tokenizer="byte"))).save_pretrained(tmp_path / "m")
    _one_line_exit(sample.main, [str(tmp_path / "m"), "--device", "cpu", "--max-new-tokens", "2"], capsys, 2,
                   "--tokenizer byte: its 256 tokens do not fit the model's 128-token vocabulary")


def test_sample_without_the_gpt2_bpe_files_offline_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    """Mutant S04: the tokenizer's DataError (its BPE files neither cached nor fetchable) raised as a usage error
    (exit 2) instead of LoadError (exit 1: the model cannot be sampled here, the command line is fine)."""
    from fastgpt import GPT, GPTConfig, sample
    GPT(GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=16,
                  extra=dict(tokenizer="gpt2"))).save_pretrained(tmp_path / "m")
    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("FASTGPT_OFFLINE", "1")
    _one_line_exit(sample.main, [str(tmp_path / "m"), "--device", "cpu", "--max-new-tokens", "2"], capsys, 1,
                   "is not in the cache and FASTGPT_OFFLINE is set")


def test_sample_a_folder_that_is_no_model_is_one_line_exit_1(tmp_path, capsys):
    """Mutants S16 (load() catching only its own errors around load_model) and S15 (the message without "readable").
    A damaged config.json was a traceback; a folder whose only checkpoint is damaged said it has no ckpt_*.pt."""
    from fastgpt import sample
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"n_layer": "many"}')
    err = _one_line_exit(sample.main, [str(tmp_path / "bad"), "--device", "cpu"], capsys, 1,
                         "cannot load a model from it")
    assert str(tmp_path / "bad") in err
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "ckpt_0000001.pt").write_bytes(b"PK\x03\x04" + b"\0" * 300)
    with pytest.raises(SystemExit) as e:   # (a "skipping <file>: ..." line first, then the error)
        sample.main([str(tmp_path / "torn"), "--device", "cpu"])
    last = capsys.readouterr().err.splitlines()[-1]
    assert e.value.code == 1 and last.endswith(": the folder has no config.json and no readable ckpt_*.pt"), last


def test_sample_defaults(tiny_dir, monkeypatch, capsys):
    """Mutants S22-S25: a changed default of --max-new-tokens (200), --top-k (200), --seed (1337) or --num-samples (1)
    passed every test (--help's "(default: 200)" is shown by both --max-new-tokens and --top-k)."""
    from fastgpt import sample
    from fastgpt.model import GPT
    seen, real = [], GPT.generate

    def generate(self, idx, n, generator=None, **kw):
        seen.append(dict(rows=idx.shape[0], prompt=idx.tolist()[0], n=n, top_k=kw.get("top_k"),
                         temperature=kw.get("temperature"), seed=generator.initial_seed()))
        return real(self, idx, 2, generator=generator, **kw)   # (2 of the 200 tokens: the test is the arguments)
    monkeypatch.setattr(GPT, "generate", generate)
    assert sample.main([str(tiny_dir), "--device", "cpu"]) == 0
    assert seen == [dict(rows=1, prompt=[10], n=200, top_k=200, temperature=0.8, seed=1337)], seen


@pytest.mark.parametrize("value", ["none", "None", "ALL", "all"])
def test_sample_top_k_none_or_all_in_any_case_turns_it_off(value, tiny_dir, monkeypatch):
    """Mutants S20 ("all" dropped) and S21 (case-sensitive): --top-k None (as Python spells it, and as train's
    --top_k=None is read) and --top-k all were "invalid integer or 'none' value"."""
    from fastgpt import sample
    from fastgpt.model import GPT
    seen, real = [], GPT.generate
    monkeypatch.setattr(GPT, "generate",
                        lambda self, idx, n, **kw: seen.append(kw["top_k"]) or real(self, idx, n, **kw))
    assert sample.main([str(tiny_dir), "--device", "cpu", "--max-new-tokens", "2", "--top-k", value]) == 0
    assert seen == [None]


def test_sample_headers_only_between_several_samples(tiny_dir, capsys):
    """Mutants S18 (a header above a single sample too) and S19 (samples numbered from 0): one sample is its text
    alone (to pipe it on), several are headed "---------- sample 1", "2", ..."""
    from fastgpt import sample
    base = [str(tiny_dir), "--device", "cpu", "--max-new-tokens", "3", "--prompt", "ab"]
    assert sample.main(base) == 0
    out = capsys.readouterr().out
    assert "----------" not in out and out.startswith("ab")
    assert sample.main(base + ["--num-samples", "3"]) == 0
    heads = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("----------")]
    assert heads == ["---------- sample 1", "---------- sample 2", "---------- sample 3"]


@pytest.mark.parametrize("prompt_len,new,how", [
    (31, 2, "(KV cache, cpu"),                                     # 31 + 2 - 1 = 32 = block_size: all cached
    (32, 1, "(KV cache, cpu"),                                     # a prompt of exactly block_size tokens
    (31, 3, "(KV cache up to 32 tokens of context, then recomputed, cpu"),
    (33, 2, "(no cache: the prompt is longer than block_size, cpu"),
])
def test_sample_says_when_the_kv_cache_serves(prompt_len, new, how, tiny_dir, capsys):
    """Mutants S26 (`len(ids) >= bs`) and S27 (`len(ids) + new > bs`): the throughput line misnamed the decoding at
    the block_size edges (tiny_dir's block_size is 32; a byte prompt of n characters is n tokens)."""
    from fastgpt import sample
    assert sample.main([str(tiny_dir), "--device", "cpu", "--prompt", "a" * prompt_len,
                        "--max-new-tokens", str(new)]) == 0
    err = capsys.readouterr().err
    assert how in err, err

