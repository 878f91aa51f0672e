"""scripts/install.sh's choice of torch, run against a stand-in interpreter that records its pip calls."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _install(tmp_path, gpu: bool, pip_fails="", reqs=None, **env):
    """Run a copy of install.sh (with requirements-test.txt, or ``reqs``) in a folder whose .venv/bin/python
    records its arguments; returns (result, calls)."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "install.sh").write_text((ROOT / "scripts" / "install.sh").read_text())
    (tmp_path / "requirements-test.txt").write_text(reqs or (ROOT / "requirements-test.txt").read_text())
    calls = tmp_path / "calls"
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(   # PIP_FAILS: "always", or "first" (until PyTorch's CPU index is added)
        '#!/bin/sh\necho "$*${PIP_EXTRA_INDEX_URL:+ [index $PIP_EXTRA_INDEX_URL]}" >> "$CALLS"\n'
        'case "$*" in *" -r "*)\n'
        '  [ "$PIP_FAILS" = always ] && exit 1\n'
        '  [ "$PIP_FAILS" = first ] && [ -z "$PIP_EXTRA_INDEX_URL" ] && exit 1 ;;\nesac\nexit 0\n')
    (venv / "python").chmod(0o755)
    bin_ = tmp_path / "bin"   # nvidia-smi: listing a GPU, or absent
    bin_.mkdir()
    if gpu:
        (bin_ / "nvidia-smi").write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3"\n')
        (bin_ / "nvidia-smi").chmod(0o755)
    path = ":".join([str(bin_)] + [p for p in os.environ["PATH"].split(":")
                                   if not (Path(p) / "nvidia-smi").exists()])
    base = {k: v for k, v in os.environ.items() if k not in ("TORCH", "PYTHON", "PIP_EXTRA_INDEX_URL")}
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "install.sh")], capture_output=True, text=True,
                       timeout=60, env=dict(base, PATH=path, CALLS=str(calls), PIP_FAILS=pip_fails, **env))
    return r, calls.read_text().splitlines() if calls.exists() else []


def test_cpu_machine_installs_the_pins(tmp_path):
    r, calls = _install(tmp_path, gpu=False)
    assert r.returncode == 0, r.stderr
    assert "-m pip install -q -r requirements-test.txt" in calls, calls
    assert calls[-1] == "-m pip install -q --no-build-isolation --no-deps -e ."


def test_gpu_machine_gets_the_torch_whose_triton_is_the_pinned_one(tmp_path):
    """PyPI's torch 2.13.0 requires triton 3.7.1 and the tests pin 3.6.0 (the GPU machines'): on a machine
    with a GPU, install.sh failed with pip's ResolutionImpossible (found installing for another Python,
    2026-11-30). There it installs torch 2.11.0 (its triton pin is 3.6.0) with the other pins."""
    r, calls = _install(tmp_path, gpu=True)
    assert r.returncode == 0, r.stderr
    assert "-m pip install -q torch==2.11.0 -r .venv/requirements-test.txt" in calls, calls
    reqs = (tmp_path / ".venv" / "requirements-test.txt").read_text().splitlines()
    assert "triton==3.6.0" in reqs and not [x for x in reqs if x.startswith("torch")], reqs
    assert "torch==2.11.0 in place of requirements-test.txt's torch pin" in r.stdout
    (tmp_path / "b").mkdir()   # TORCH chooses another
    r, calls = _install(tmp_path / "b", gpu=True, TORCH="torch==2.10.0")
    assert "-m pip install -q torch==2.10.0 -r .venv/requirements-test.txt" in calls, calls


def test_a_cpu_machine_without_the_cpu_wheel_retries_with_the_cpu_index(tmp_path):
    """Where pip cannot meet the pins from what it finds (PyPI's torch 2.13.0 is a CUDA build needing triton
    3.7.1), install.sh tries once more with PyTorch's CPU index (the README's quick start then works on a
    fresh CPU-only machine); where that fails too, it says what to do and exits 1."""
    index = "https://download.pytorch.org/whl/cpu"
    r, calls = _install(tmp_path, gpu=False, pip_fails="first")
    assert r.returncode == 0 and "retrying with PyTorch's CPU index" in r.stderr, (r.stderr, calls)
    assert calls[-2] == f"-m pip install -q -r requirements-test.txt [index {index}]", calls
    assert calls[-1] == "-m pip install -q --no-build-isolation --no-deps -e ."
    (tmp_path / "b").mkdir()
    r, calls = _install(tmp_path / "b", gpu=False, pip_fails="always")
    assert r.returncode == 1 and "-e ." not in calls[-1], calls
    assert "install torch 2.13.0's CPU build" in r.stderr and "TORCH=torch==2.11.0" in r.stderr, r.stderr
    (tmp_path / "c").mkdir()   # a chosen torch that fails is not retried elsewhere
    r, calls = _install(tmp_path / "c", gpu=True, pip_fails="always")
    assert r.returncode == 1 and not any("[index" in c for c in calls), calls


def test_the_torch_line_is_dropped_whatever_its_form(tmp_path):
    """A TORCH in place of the pin: the requirements keep no torch line (a `torch>=` or `torch ==` one stayed,
    two torch requirements for pip), nor fail when that line is the only one."""
    for text, kept in (("torch >= 2.10\ntorchvision\nnumpy<2.4\n", ["torchvision", "numpy<2.4"]),
                       ("torch==2.13.0\n", [])):
        d = tmp_path / str(len(kept))
        d.mkdir()
        r, calls = _install(d, gpu=False, reqs=text, TORCH="torch==2.11.0")
        assert r.returncode == 0, r.stderr
        assert (d / ".venv" / "requirements-test.txt").read_text().split() == kept
