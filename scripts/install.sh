#!/usr/bin/env bash
# Create .venv (if missing) and install fastgpt with its test dependencies into it.
#   bash scripts/install.sh            # CPU pins of requirements-test.txt (torch 2.13.0, triton 3.6.0, numpy<2.4)
#   PYTHON=python3.12 bash scripts/install.sh   # another interpreter for the venv (3.10 or newer; default python3)
#   TORCH=torch==2.11.0 bash scripts/install.sh # another torch in place of the pin (a CPU build, or a CUDA
#                                               # build that requires the pinned triton 3.6.0: 2.10 or 2.11)
# Where an NVIDIA GPU is visible (nvidia-smi -L), torch is 2.11.0, the CUDA build the GPU figures were
# measured with (benchmarks/RESULTS.md), whose triton pin is the tests' 3.6.0: PyPI's torch 2.13.0 is a
# CUDA build that requires triton 3.7.1, and the two pins cannot both be met. Without a GPU, where pip finds
# no CPU build of torch 2.13.0 (none on disk, no index holding one), it tries once more with PyTorch's CPU index.
# fastgpt itself is installed editable and without build isolation (which would
# pull a second torch to compile the extension); setuptools>=77 comes first.
set -euo pipefail
cd "$(dirname "$0")/.."
# a .venv without a working pip (an interrupted creation, a system without ensurepip) is made again
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import sys; sys.exit(sys.version_info < (3, 10))" 2>/dev/null; then
    echo "install.sh: fastgpt needs Python 3.10 or newer; $PYTHON is $("$PYTHON" --version 2>&1 || echo missing)" \
         "(set PYTHON to another interpreter)" >&2
    exit 2
fi
if ! { [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1; }; then
    rm -rf .venv
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
$PY -m pip install -q --upgrade pip "setuptools>=77" wheel
TORCH=${TORCH:-}
if [ -z "$TORCH" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH="torch==2.11.0"
fi
reqs=requirements-test.txt
if [ -n "$TORCH" ]; then   # requirements-test.txt without its torch line, and this torch
    { grep -Ev '^[[:space:]]*torch[[:space:]]*([=<>!~;[]|$)' requirements-test.txt || true; } > .venv/requirements-test.txt
    reqs=.venv/requirements-test.txt
    echo "install.sh: $TORCH in place of requirements-test.txt's torch pin"
fi
CPU_INDEX=https://download.pytorch.org/whl/cpu
install_reqs() { $PY -m pip install -q ${TORCH:+"$TORCH"} -r "$reqs"; }
if ! install_reqs; then
    # without a GPU and without torch 2.13.0's CPU wheel at hand, pip finds PyPI's CUDA build, which requires
    # triton 3.7.1 against the pinned 3.6.0 (ResolutionImpossible): once more with PyTorch's CPU index
    retried=""
    if [ -z "$TORCH" ] && [[ " ${PIP_EXTRA_INDEX_URL:-} " != *" $CPU_INDEX "* ]]; then
        echo "install.sh: retrying with PyTorch's CPU index ($CPU_INDEX) for torch 2.13.0's CPU build" >&2
        PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL:+$PIP_EXTRA_INDEX_URL }$CPU_INDEX" install_reqs && retried=ok
    fi
    if [ -z "$retried" ]; then
        echo "install.sh: pip could not install the test requirements (above). Where it says ResolutionImpossible:" \
             "PyPI's torch 2.13.0 is a CUDA build that needs triton 3.7.1, not the pinned 3.6.0: install torch" \
             "2.13.0's CPU build (PyTorch's CPU index, $CPU_INDEX), or choose a torch" \
             "(TORCH=torch==2.11.0 bash scripts/install.sh)" >&2
        exit 1
    fi
fi
$PY -m pip install -q --no-build-isolation --no-deps -e .
echo "fastgpt installed in .venv (activate with: . .venv/bin/activate)"
