#!/usr/bin/env bash
# Diagnose the extension's crash on CUDA (RESULTS.md: test_op_level_errors_are_clear dies with SIGSEGV
# on the H100, runs 3 and 4; the same calls raise the intended ValueError on the CPU, through a CPU
# build and through a CUDA build of fastgpt._C alike, and through the CUDA dispatch key with CPU
# tensors or with storage-less tensors that claim cuda:0: all seen on the dev machine, 2026-11-27).
# What is left is a real device, so each case below runs in its own process with faulthandler on:
#   G (first) the op's first check (p out of range: a number in its message) on CUDA tensors
#   B  a C++ error from our op on CPU tensors after CUDA is initialised
#   D  a C++ error from torch itself on CUDA tensors (not our .so)
#   E  seed None with p > 0 on CUDA tensors (runs 3-4 suspected it; it raised in run 5)
#   F  E below autograd (our C++ kernel alone, no Python autograd kernel)
# rc=1 with the intended error printed means no crash; rc=139 (or -11 in Python) is the segfault.
# Run 5 (H200, 2026-11-29) read: B, D, E, F raised, G crashed: every message of ours that held a number
# (formatted by c10::str's ostream in our module) crashed, the string-only ones raised; the module built
# there listed no libstdc++ among its NEEDED libraries. csrc/binding.cpp now formats numbers with
# snprintf, so G must raise. Then the dynamic bindings of the throw symbols, the objects that define
# ostream's number inserts (which copy of the C++ runtime: the open question of the root cause; symbols
# bind lazily, so a probe that formats no number cannot show their bindings) and a gdb backtrace of G.
# Run from the repo root after the install (gpu_check.sh --only extdiag); ~1 min.
PY=${PYTHON:-python}
export FASTGPT_EXTENSION=${FASTGPT_EXTENSION:-auto}
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
g++ --version | head -1
command -v nvcc >/dev/null && nvcc --version | tail -1
echo "CUDA_HOME=${CUDA_HOME:-unset}"
# the module load() picks: the prebuilt fastgpt/_C*.so or a JIT build under $TORCH_EXTENSIONS_DIR
SO=$($PY -c "import fastgpt.extension as e; m = e.load(); print(getattr(m, '__file__', '') or '')" 2>/dev/null | tail -1)
echo "module: ${SO:-none loaded}"
[ -n "$SO" ] && [ -e "$SO" ] && readelf -dW "$SO" | grep -E "NEEDED|RPATH|RUNPATH"
PRE='import torch, fastgpt.extension as e; m = e.load(); print("extension:", e.unavailable_reason() or "loaded", getattr(m, "__file__", ""), flush=True); op = torch.ops.fastgpt.bias_dropout_add'
case_() {  # case_ NAME CODE: one process, its last lines and exit status
  echo "=== $1"
  timeout 90 $PY -X faulthandler -c "$PRE
$2" 2>&1 | tail -20
  echo "rc=${PIPESTATUS[0]}"
}
# G first: run 5's crash, the case the fix must turn into an error (a short stage budget cuts the last)
case_ "G p out of range on cuda (a number in the message)" 'x = torch.randn(2, 8, device="cuda"); op(x, None, x, 1.5, None)'
case_ "B cpu tensors after CUDA init" 'torch.zeros(1, device="cuda"); x = torch.randn(2, 8); op(x, None, x, 0.5, None)'
case_ "D torch-internal C++ error on cuda" 'a = torch.ones(2, device="cuda"); torch.ops.aten.add.Tensor(a, torch.ones(3, device="cuda"))'
case_ "E seed None with p > 0 on cuda" 'x = torch.randn(2, 8, device="cuda"); op(x, None, x, 0.5, None)'
case_ "F E below autograd" 'x = torch.randn(2, 8, device="cuda")
with torch._C._AutoDispatchBelowAutograd():
    op.default(x, None, x, 0.5, None)'
echo "=== bindings of the throw symbols in the extension module (before gdb: the stage budget may cut gdb)"
LD_DEBUG=bindings LD_DEBUG_OUTPUT=/tmp/fastgpt_ldb $PY -c "$PRE
x = torch.randn(2, 8, device='cuda')" >/dev/null 2>&1
grep -h "$(basename "${SO:-_C.cpython}")" /tmp/fastgpt_ldb.* 2>/dev/null | grep -E "_Unwind|__cxa_throw|personality|ZTIN3c10" | sed 's/^ *[0-9]*: *//' | head -20
rm -f /tmp/fastgpt_ldb.*
# which loaded objects define ostream's number inserts (the crash's symbols): more than libstdc++ means
# two copies of the C++ runtime in one process, the likely root cause
echo "=== loaded objects that define std::ostream::_M_insert<long> / <double>"
$PY -c "$PRE
x = torch.randn(2, 8, device='cuda')
print('\n'.join(sorted({ln.split()[-1] for ln in open('/proc/self/maps') if '.so' in ln})))" 2>/dev/null \
  | grep "^/" | while read -r lib; do
      nm -D --defined-only "$lib" 2>/dev/null | grep -qE " _ZNSo9_M_insertI[ld]EERSoT_" && echo "  $lib"
    done
echo "=== the same symbols defined inside the extension module itself (a private, unexported C++ runtime)"
[ -n "$SO" ] && nm --defined-only "$SO" 2>/dev/null | grep -E "_M_insertI[ld]E|_ZNSt6locale" | head -5
# the device machines have cuda-gdb (in CUDA's bin/) and no gdb
GDB=$(command -v gdb || command -v cuda-gdb || { [ -x /usr/local/cuda/bin/cuda-gdb ] && echo /usr/local/cuda/bin/cuda-gdb; })
if [ -z "$GDB" ]; then
  echo "=== no backtrace of G: neither gdb nor cuda-gdb is installed"
else
  # gdb gets what is left of the stage's budget (gpu_check.sh passes it as STAGE_BUDGET), less 10 s;
  # its lines pass unbuffered (a tail would lose them all when the budget's SIGINT reaches it)
  left=$(( ${STAGE_BUDGET:-240} - SECONDS - 10 ))
  [ "$left" -lt 10 ] && left=10
  echo "=== $(basename "$GDB") on G (${left}s)"
  timeout "$left" "$GDB" -batch -ex run -ex "bt 40" --args $PY -c "$PRE
x = torch.randn(2, 8, device='cuda'); op(x, None, x, 1.5, None)" 2>&1 | grep --line-buffered -vE "^\[(New|Thread)|libthread_db"
fi
exit 0
