"""scripts/install.sh's choice of torch, run against a stand-in interpreter that records its pip calls."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _install(tmp_path, gpu: bool, pip_fails=False, **env):
    """Run a copy of install.sh in a folder whose .venv/bin/python records its arguments; returns (result, calls)."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "install.sh").write_text((ROOT / "scripts" / "install.sh").read_text())
    (tmp_path / "requirements-test.txt").write_text((ROOT / "requirements-test.txt").read_text())
    calls = tmp_path / "calls"
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n'
                                 'case "$*" in *" -r "*) [ -n "$PIP_FAILS" ] && exit 1 ;; esac\nexit 0\n')
    (venv / "python").chmod(0o755)
    bin_ = tmp_path / "bin"   # nvidia-smi: listing a GPU, or absent
    bin_.mkdir()
    if gpu:
        (bin_ / "nvidia-smi").write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3"\n')
        (bin_ / "nvidia-smi").chmod(0o755)
    path = ":".join([str(bin_)] + [p for p in os.environ["PATH"].split(":")
                                   if not (Path(p) / "nvidia-smi").exists()])
    base = {k: v for k, v in os.environ.items() if k not in ("TORCH", "PYTHON")}
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "install.sh")], capture_output=True, text=True,
                       timeout=60, env=dict(base, PATH=path, CALLS=str(calls), PIP_FAILS="1" if pip_fails else "",
                                            **env))
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
    assert "torch==2.11.0 in place of requirements-test.txt's torch==2.13.0" in r.stdout
    (tmp_path / "b").mkdir()   # TORCH chooses another
    r, calls = _install(tmp_path / "b", gpu=True, TORCH="torch==2.10.0")
    assert "-m pip install -q torch==2.10.0 -r .venv/requirements-test.txt" in calls, calls


def test_a_failed_pip_says_what_to_do(tmp_path):
    r, calls = _install(tmp_path, gpu=False, pip_fails=True)
    assert r.returncode == 1 and "-e ." not in calls[-1], calls
    assert "add PyTorch's CPU index" in r.stderr and "PIP_EXTRA_INDEX_URL=" in r.stderr, r.stderr
