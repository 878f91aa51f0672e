#!/usr/bin/env bash
# Create .venv (if missing) and install fastgpt with its test dependencies into it.
#   bash scripts/install.sh            # CPU pins of requirements-test.txt (torch 2.13.0, triton 3.6.0, numpy<2.4)
#   PYTHON=python3.12 bash scripts/install.sh   # another interpreter for the venv (3.10 or newer; default python3)
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
$PY -m pip install -q -r requirements-test.txt
$PY -m pip install -q --no-build-isolation --no-deps -e .
echo "fastgpt installed in .venv (activate with: . .venv/bin/activate)"
