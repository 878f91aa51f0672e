"""kernels/_precompile.py: an autotune space compiled by worker processes into Triton's cache first.

What must hold: a worker rebuilds each launch argument so that Triton specialises it exactly as the
parent's, so the autotuner's own compile of every config is then a cache hit (checked for sm_90
through compile_report's stand-in driver, in a child process: no GPU needed); the autotuner hands a
new key's pruned configs to it once; a worker that dies turns it off without an error.
"""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, needs_cuda, needs_triton, standin_env

pytestmark = needs_triton


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int64, torch.uint8])
def test_rebuilt_tensors_specialise_alike(dtype):
    from fastgpt.kernels._precompile import decode, encode, specialisation
    t = torch.zeros(64, dtype=dtype)
    for view in (t, t[1:], t[16:], t.view(8, 8)[:, 1]):
        rebuilt = decode(encode(view))
        assert specialisation(rebuilt) == specialisation(view), (dtype, view.data_ptr() % 16)
    assert specialisation(decode(encode(t[1:]))) != specialisation(t)   # the alignment is kept, not lost


@pytest.mark.parametrize("value", [0, 1, 16, 17, -16, 2**31, 2**40, 2**63, 0.5, None, True, False])
def test_rebuilt_values_specialise_alike(value):
    from fastgpt.kernels._precompile import decode, encode, specialisation
    assert specialisation(decode(encode(value))) == specialisation(value)


def test_other_arguments_are_not_sent():
    from fastgpt.kernels._precompile import encode
    with pytest.raises(TypeError, match="no worker encoding for a str"):
        encode("bf16")


def test_worker_count(monkeypatch):
    from fastgpt.kernels import _precompile as P
    monkeypatch.setenv("FASTGPT_COMPILE_WORKERS", "3")
    assert P.workers() == 3
    monkeypatch.setenv("FASTGPT_COMPILE_WORKERS", "-2")
    assert P.workers() == 0
    monkeypatch.setenv("FASTGPT_COMPILE_WORKERS", "many")
    with pytest.warns(UserWarning, match="FASTGPT_COMPILE_WORKERS='many' is not a whole number"):
        assert P.workers() == 0
    monkeypatch.delenv("FASTGPT_COMPILE_WORKERS")
    for name in ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 24)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(24)), raising=False)
    assert P.workers() == 8                                  # capped
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert P.workers() == 5                                  # 24 CPUs shared by 4 local ranks, less one each
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "24")
    assert P.workers() == 0
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "3")   # mpirun's name for it
    assert P.workers() == 7
    monkeypatch.setattr(os, "cpu_count", lambda: 96)        # a rank pinned to 24 of 96 CPUs: they are its own
    assert P.workers() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert P.workers() == 3


def test_off_without_workers_or_under_the_interpreter(monkeypatch):
    """No process is started where it cannot help: one worker, one config, or the interpreter. (Each case
    alone: otherwise precompile is on, as the first call shows, and would start workers.)"""
    import fastgpt.kernels
    from triton.backends.compiler import GPUTarget

    from fastgpt.kernels import _precompile as P

    class Started(BaseException):   # (precompile passes a non-Exception on)
        pass

    def start(n, target):
        raise Started

    monkeypatch.setattr(P, "_start", start)
    monkeypatch.setattr(P, "_broken", False)
    monkeypatch.setattr(P, "_target", lambda: GPUTarget("cuda", 90, 32))
    monkeypatch.setattr(fastgpt.kernels, "INTERPRET", False)
    fn, configs = _space()
    args = (torch.zeros(64, dtype=torch.bfloat16), 16)
    monkeypatch.setenv("FASTGPT_COMPILE_WORKERS", "4")
    with pytest.raises(Started):
        P.precompile(fn, configs, args, {})
    assert P.precompile(fn, configs[:1], args, {}) == 0
    monkeypatch.setenv("FASTGPT_COMPILE_WORKERS", "1")
    assert P.precompile(fn, configs, args, {}) == 0
    monkeypatch.setenv("FASTGPT_COMPILE_WORKERS", "4")
    monkeypatch.setattr(fastgpt.kernels, "INTERPRET", True)
    assert P.precompile(fn, configs, args, {}) == 0


@pytest.fixture
def enabled(monkeypatch):
    """precompile as on a GPU machine with 2 workers: no interpreter, an sm_90 target, nothing broken yet."""
    import fastgpt.kernels
    from triton.backends.compiler import GPUTarget

    from fastgpt.kernels import _precompile as P
    monkeypatch.setattr(fastgpt.kernels, "INTERPRET", False)
    monkeypatch.setenv("FASTGPT_COMPILE_WORKERS", "2")
    monkeypatch.setattr(P, "_broken", False)
    monkeypatch.setattr(P, "_target", lambda: GPUTarget("cuda", 90, 32))
    yield P
    P.stop()


def _space():
    import types

    import triton
    return types.SimpleNamespace(fn=_space), [triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 128})]


def test_arguments_that_would_specialise_otherwise_are_not_sent(enabled, monkeypatch):
    """The parent compares each rebuilt argument's specialisation with its own: here a rebuild that loses
    the misalignment of a view is caught, and no worker starts."""
    P = enabled
    monkeypatch.setattr(P, "decode", lambda enc: torch.zeros(8, dtype=enc[1]) if enc[0] == "tensor" else enc[1])
    monkeypatch.setattr(P, "_start", lambda n, target: pytest.fail("no worker should start"))
    fn, configs = _space()
    assert P.precompile(fn, configs, (torch.zeros(64, dtype=torch.bfloat16)[1:], 16), {}) == 0


@pytest.mark.parametrize("namespace,name,value", [("runtime", "add_stages_inspection_hook", lambda *a: None),
                                                  ("runtime", "debug", True),
                                                  ("compilation", "instrumentation_mode", "consan"),
                                                  ("compilation", "override", True)])
def test_off_while_triton_is_set_up_in_code(enabled, monkeypatch, namespace, name, value):
    """A Triton setting made in code that the workers would not see (some are outside Triton's cache key:
    the parent would read back kernels its own set-up never made) keeps the workers off."""
    from triton import knobs
    P = enabled
    monkeypatch.setattr(getattr(knobs, namespace), name, value)
    monkeypatch.setattr(P, "_start", lambda n, target: pytest.fail("no worker should start"))
    fn, configs = _space()
    assert P._settings_in_code() == [f"{namespace}.{name}"]
    assert P.precompile(fn, configs, (torch.zeros(64, dtype=torch.bfloat16), 16), {}) == 0


@pytest.mark.timeout(60)
def test_a_worker_that_never_answers_turns_them_off(enabled, monkeypatch):
    """A worker that never says it is ready (an interpreter that ignores -m, say) costs START_TIMEOUT once;
    it is killed, and no later call waits for workers again."""
    import time
    P = enabled
    monkeypatch.setattr(P, "_command", lambda fd: [sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(P, "START_TIMEOUT", 1.0)
    fn, configs = _space()
    t = time.monotonic()
    assert P.precompile(fn, configs, (torch.zeros(64, dtype=torch.bfloat16), 16), {}) == 0
    assert time.monotonic() - t < 20 and P._broken and not P._pool
    monkeypatch.setattr(P, "_start", lambda n, target: pytest.fail("no worker should start again"))
    assert P.precompile(fn, configs, (torch.zeros(64, dtype=torch.bfloat16), 16), {}) == 0


@pytest.mark.timeout(60)
def test_a_worker_that_dies_with_its_jobs_turns_them_off_at_once(enabled, monkeypatch):
    """A worker that reads its jobs and exits (killed, out of memory) is seen at once (its answer pipe closes),
    not after BATCH_TIMEOUT."""
    import time
    P = enabled
    fake = ("import os, pickle, sys; pickle.load(sys.stdin.buffer); out = os.fdopen(int(sys.argv[1]), 'wb'); "
            "pickle.dump('ready', out); out.flush(); pickle.load(sys.stdin.buffer)")
    monkeypatch.setattr(P, "_command", lambda fd: [sys.executable, "-c", fake, str(fd)])
    fn, configs = _space()
    t = time.monotonic()
    assert P.precompile(fn, configs, (torch.zeros(64, dtype=torch.bfloat16), 16), {}) == 0
    assert time.monotonic() - t < 20 and P._broken and not P._pool


SCRIPT = r'''
import os, sys, torch, triton
assert os.environ["FASTGPT_AUTOTUNE"] == "1"    # read as the kernels are defined: whole spaces
from triton.runtime import autotuner
from fastgpt.kernels import _precompile as P
device = sys.argv[1]
if device == "cpu":
    from benchmarks.compile_report import use_standin
    use_standin()                           # sm_90, compile-only; launchers take CPU tensors
import fastgpt.kernels
from fastgpt.kernels import _common, gelu
_common.LEAN_LAUNCH = False
captured = []

class Captured(Exception):
    pass

def capture(self, *args, grid, warmup=False, **kwargs):
    self.nargs = dict(zip(self.arg_names, args))
    captured.append((self, args, kwargs, self.prune_configs(kwargs)))
    raise Captured

tuner_run = _common._Autotuner.run
_common._Autotuner.run = capture
x, b = (torch.randn(*shape, dtype=torch.bfloat16, device=device) for shape in ((256, 3072), (3072,)))
try:
    gelu.bias_gelu_fwd(x, b, "tanh")
except Captured:
    pass
_common._Autotuner.run = tuner_run
fastgpt.kernels.INTERPRET = False           # precompile is off under the interpreter
tuner, args, kwargs, configs = captured[0]
assert len(configs) >= 4, configs

# the autotuner hands a new key's pruned configs over once; a tuned key launches without it
calls = []
real = P.precompile
P.precompile = lambda fn, cfgs, a, kw: calls.append((fn, list(cfgs), a, kw))
autotuner.Autotuner.run = lambda self, *a, **kw: setattr(self, "best_config", self.configs[0])
_common.launch = lambda *a, **kw: None
for _ in range(2):
    tuner.run(*args, grid=(1,), **kwargs)
assert len(calls) == 1 and calls[0][0] is tuner.fn and calls[0][1] == configs, calls
assert len(calls[0][2]) == len(args) and all(a is b for a, b in zip(calls[0][2], args))
P.precompile = real

assert "TRITON_CACHE_DIR" not in os.environ
cache = triton.knobs.cache.dir = sys.argv[2]   # set in code: the workers must get it too
n = P.precompile(tuner.fn, configs, args, kwargs)
print("workers", " ".join(str(p.pid) for p in P._pool))
assert n == len(configs), (n, len(configs))
before = set(os.listdir(cache))
assert len(before) >= len(configs)
for cfg in configs:                          # the autotuner's own compile of each: read from the cache
    tuner.fn.run(*args, grid=(1,), warmup=True, **kwargs, **cfg.all_kwargs())
assert set(os.listdir(cache)) == before, "the parent compiled a config again"
print("cache hits", len(configs))
started = list(P._pool)
os.environ["FASTGPT_PRECOMPILE_TEST"] = "1"   # a changed environment: new workers, which share it
assert P.precompile(tuner.fn, configs, args, kwargs) == len(configs)
assert P._pool[0] is not started[0] and all(p.returncode is not None for p in started)

# a Ctrl-C while the workers compile (as the parent waits for their first answer) reaches the caller, and
# ends the workers: their answers would otherwise be read as the next space's
cache = triton.knobs.cache.dir = sys.argv[3]   # a new folder: new workers, nothing compiled yet
procs = []
P_start, P_receive = P._start, P._receive
def interrupted(p, deadline):
    raise KeyboardInterrupt
def start(n, target):
    P_start(n, target)
    procs.extend(P._pool)
    P._receive = interrupted   # (the jobs are sent next)
P._start = start
try:
    P.precompile(tuner.fn, configs, args, kwargs)
    raise AssertionError("no KeyboardInterrupt")
except KeyboardInterrupt:
    pass
P._start, P._receive = P_start, P_receive
assert procs and not P._pool and not P._broken and all(p.returncode is not None for p in procs)
assert P.precompile(tuner.fn, configs, args, kwargs) == len(configs)   # new workers, in step
before = set(os.listdir(cache))
for cfg in configs:
    tuner.fn.run(*args, grid=(1,), warmup=True, **kwargs, **cfg.all_kwargs())
assert set(os.listdir(cache)) == before, "the parent compiled a config again after the interrupt"
cache = triton.knobs.cache.dir = os.path.join(sys.argv[3], "moved")   # moved in code: workers that share it
os.makedirs(cache)
started = list(P._pool)
assert P.precompile(tuner.fn, configs, args, kwargs) == len(configs) and P._pool[0] is not started[0]
before = set(os.listdir(cache))
for cfg in configs:
    tuner.fn.run(*args, grid=(1,), warmup=True, **kwargs, **cfg.all_kwargs())
assert before and set(os.listdir(cache)) == before, "the parent compiled a config again after the move"
procs = list(P._pool)
P.stop()
assert all(p.returncode is not None for p in procs) and not P._pool
print("interrupted and restarted")

assert P.precompile(tuner.fn, configs, args, kwargs) == len(configs)
P._pool[0].kill()
P._pool[0].wait()
assert P.precompile(tuner.fn, configs, args, kwargs) == 0 and P._broken and not P._pool
assert P.precompile(tuner.fn, configs, args, kwargs) == 0
print("off after a dead worker")
'''


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_workers_compile_what_the_autotuner_then_reads_from_the_cache(tmp_path, device):
    """cpu: the parent compiles for sm_90 through compile_report's stand-in driver, as the workers do;
    cuda: the parent's target and arguments are the real GPU's (the workers still never touch it)."""
    caches = [tmp_path / "triton-cache", tmp_path / "triton-cache-2"]
    for c in caches:
        c.mkdir()
    banner = tmp_path / "site"   # a sitecustomize that prints to stdout: the workers' answers have a pipe of their own
    banner.mkdir()
    (banner / "sitecustomize.py").write_text("print('cluster profile loaded')\n")
    env = standin_env(FASTGPT_COMPILE_WORKERS="2", FASTGPT_AUTOTUNE="1")
    env.pop("TRITON_CACHE_DIR", None)
    env["PYTHONPATH"] = str(banner) + os.pathsep + env["PYTHONPATH"]
    if device == "cuda":   # the GPU visible to the parent
        env.pop("CUDA_VISIBLE_DEVICES")
        if "CUDA_VISIBLE_DEVICES" in os.environ:
            env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    r = subprocess.run([sys.executable, "-c", SCRIPT, device, *map(str, caches)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "cluster profile loaded" in r.stdout   # (the parent's own banner: the sitecustomize is in use)
    for step in ("cache hits", "interrupted and restarted", "off after a dead worker"):
        assert step in r.stdout, r.stdout
    pids = r.stdout.split("workers ")[1].split("\n")[0].split()
    assert len(pids) == 2
    for pid in pids:   # none outlives the process that started it
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


# ----------------------------------------------------------------------------- from a mutation audit (2026-11-30)

def test_worker_count_local_rank_variables(monkeypatch):
    from fastgpt.kernels import _precompile as P
    monkeypatch.delenv("FASTGPT_COMPILE_WORKERS", raising=False)
    names = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 24)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(24)), raising=False)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2(x3)")    # SLURM's form for uneven nodes: skipped, not a crash
    assert P.workers() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")             # torchrun's name is read first, and wins
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    assert P.workers() == 5
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "0")             # a nonsense 0 counts as 1 rank, not a ZeroDivisionError
    assert P.workers() == 8


@pytest.mark.timeout(60)
def test_configs_a_worker_failed_are_counted(enabled, monkeypatch):
    """Three configs over two workers (jobs 0 and 2 to the first, 1 to the second); a worker answers each list of
    jobs with its first compiled and the others failed: 2 compiled, 1 failed, one space, and precompile returns 2."""
    import triton
    P = enabled
    fake = ("import os, pickle, sys; pickle.load(sys.stdin.buffer); out = os.fdopen(int(sys.argv[1]), 'wb'); "
            "pickle.dump('ready', out); out.flush()\n"
            "while True:\n"
            "    try:\n        jobs = pickle.load(sys.stdin.buffer)\n    except EOFError:\n        break\n"
            "    pickle.dump([None] + ['CompilationError: x'] * (len(jobs) - 1), out); out.flush()")
    monkeypatch.setattr(P, "_command", lambda fd: [sys.executable, "-c", fake, str(fd)])
    monkeypatch.setattr(P, "STATS", {"spaces": 0, "configs": 0, "failed": 0, "seconds": 0.0})
    fn, configs = _space()
    configs = configs + [triton.Config({"BLOCK": 256})]
    assert P.precompile(fn, configs, (torch.zeros(64, dtype=torch.bfloat16), 16), {}) == 2
    assert {k: P.STATS[k] for k in ("spaces", "configs", "failed")} == {"spaces": 1, "configs": 2, "failed": 1}
    assert not P._broken

