#!/usr/bin/env bash
# Create .venv (if missing) and install fastgpt with its test dependencies into it.
#   bash scripts/install.sh            # CPU pins of requirements-test.txt (torch 2.13.0, triton 3.6.0, numpy<2.4)
# fastgpt itself is installed editable and without build isolation (which would
# pull a second torch to compile the extension); setuptools>=77 comes first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
PY=.venv/bin/python
$PY -m pip install -q --upgrade pip "setuptools>=77" wheel
$PY -m pip install -q -r requirements-test.txt
$PY -m pip install -q --no-build-isolation --no-deps -e .
echo "fastgpt installed in .venv (activate with: . .venv/bin/activate)"
