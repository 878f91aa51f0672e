#!/usr/bin/env bash
# One command for a GPU machine: install (no downloads), build, GPU tests, benchmarks, summary.
# It expects $PYTHON (default python3) to have torch, triton and the test dependencies of
# requirements-test.txt (pytest, pytest-timeout, transformers, tiktoken, ...) already; its install
# stage installs only fastgpt itself (pip --no-index --no-deps -e ., building the C++/CUDA extension).
#
#   bash benchmarks/gpu_check.sh                      # every stage
#   bash benchmarks/gpu_check.sh --only tests         # one stage: install|tests|bench|selftest
#   bash benchmarks/gpu_check.sh --only attention,gelu   # some benchmark families, in the order named
#   bash benchmarks/gpu_check.sh --only tune          # attention config sweep (never part of "all")
#   bash benchmarks/gpu_check.sh --only host          # host time per fused op, real launches, and a
#                                                     # profile of attention's (never part of "all")
#   bash benchmarks/gpu_check.sh --only extdiag       # the extension's CUDA crash, case by case
#                                                     # (benchmarks/ext_diag.sh; never part of "all")
#   bash benchmarks/gpu_check.sh --out DIR            # where stage results go (default gpu_results/,
#                                                     # relative to the repository root)
#   bash benchmarks/gpu_check.sh --tar FILE           # also pack the results folder into FILE (after each
#                                                     # stage: a run killed from outside keeps what ended)
#
# Each stage has a time budget (seconds; override with BUDGET_<STAGE>=N, e.g.
# BUDGET_BENCH_ATTENTION=300) and writes its JSON/log into the results folder as soon as it
# ends; the whole run has BUDGET_TOTAL (default 570 s from the start, under a 600 s command limit): a stage
# gets at most what is left of it (30 s kept for the table) and is skipped when under 30 s
# remain. The last thing printed is a short table (benchmarks/summary.py). TESTS="tests/test_x.py ..."
# narrows the test stage (default: the files with GPU branches first; TEST_JOBS pytest processes at once,
# default 6, one per file, logs in the results folder's tests/; TEST_SHARDS="FILE=N ..." spreads a file
# over N processes, default "tests/test_attention.py=3", the longest: its shards' logs are NAME.KofN).
# QUICK=1 passes --quick to every benchmark family, QUICK=gelu,train to those named; ATTENTION_SHAPES=0,2
# picks the attention shapes by index (bench_attention.SHAPES). Liger wheels, if carried in .whl/, are
# installed to /tmp/site first (no network needed). Exit status: 0 when every stage run passed, 1 when
# one failed, ran out of its budget or was skipped (the last line names them).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ONLY="all"
RES="gpu_results"
TAR=""
FAMILIES="layernorm gelu dropout_add attention cross_entropy block train"
STAGES="all install tests selftest bench tune host extdiag $FAMILIES"
while [ $# -gt 0 ]; do
  case "$1" in
    --only|--out|--tar)
      [ $# -ge 2 ] || { echo "gpu_check: $1 needs a value (see --help)" >&2; exit 2; }
      case "$1" in --only) ONLY="$2" ;; --out) RES="$2" ;; --tar) TAR="$2" ;; esac
      shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "${ONLY//[ ,]/}" ]; then
  echo "gpu_check: --only is empty; choose from: $STAGES" >&2
  exit 2
fi
for s in ${ONLY//,/ }; do  # a typo would otherwise run nothing but the install, silently
  case " $STAGES " in
    *" $s "*) ;;
    *) echo "gpu_check: unknown stage '$s' in --only; choose from: $STAGES" >&2
       exit 2 ;;
  esac
done
for var in $(env | sed -n 's/^\(BUDGET_[A-Za-z0-9_]*\)=.*/\1/p'); do   # all of them now: a bad one met at its stage would lose the table
  case "${!var}" in
    ''|*[!0-9]*) echo "gpu_check: $var must be a whole number of seconds, got '${!var}'" >&2; exit 2 ;;
  esac
done
TEST_SHARDS=${TEST_SHARDS-tests/test_attention.py=3}
for e in $TEST_SHARDS; do   # FILE=N, N a whole number from 1
  case "$e" in
    ?*=*) case "${e##*=}" in ''|*[!0-9]*|0*) ;; *) continue ;; esac ;;
  esac
  echo "gpu_check: TEST_SHARDS takes FILE=N entries (N a whole number, 1 or more), got '$e'" >&2
  exit 2
done
set -f   # (no file names out of a QUICK='*')
quick_words=${QUICK:-}
QUICK=""   # rebuilt as NAME,NAME from the words checked (a space after a comma had made a family run in full)
for q in ${quick_words//,/ }; do   # a typo would run that family in full, silently
  case " 1 $FAMILIES " in
    *" $q "*) QUICK="$QUICK,$q" ;;
    *) echo "gpu_check: unknown family '$q' in QUICK; choose 1 (all) or from: $FAMILIES" >&2
       exit 2 ;;
  esac
done
set +f
QUICK=${QUICK#,}
PY=${PYTHON:-python3}
# before minutes of building and testing (and before any output folder): every stage past the install
# needs the GPU
if ! $PY -c "import torch" >/dev/null 2>&1; then
  echo "gpu_check: $PY cannot import torch; set PYTHON to the interpreter that has it (e.g. PYTHON=.venv/bin/python)" >&2
  exit 2
fi
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device is visible to $PY (torch.cuda.is_available() is False): this script is for" \
       "a GPU machine; on a CPU run the README's test command" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
mkdir -p "$RES" || exit 2
RES_ABS=$(cd -- "$RES" >/dev/null && pwd)   # for the tests' failure logs (a test may change directory)
DEADLINE=${BUDGET_TOTAL:-570}   # counted from the script's start ($SECONDS): the checks above count too
export PYTHONUNBUFFERED=1

named() {  # named STAGE: is it in --only by its name? (the stages that "all" leaves out)
  local s
  for s in ${ONLY//,/ }; do [ "$s" = "$1" ] && return 0; done
  return 1
}
wants() {  # wants STAGE [FAMILY]: is this stage selected? ("all" anywhere in the list: every stage of all)
  local s
  for s in ${ONLY//,/ }; do
    [ "$s" = "all" ] && return 0
    [ "$s" = "$1" ] && return 0
    [ -n "${2:-}" ] && [ "$s" = "$2" ] && return 0
  done
  return 1
}

FAILED_STAGES=""  # stages that failed, ran out of time or were skipped: the exit status says so
stage() {  # stage NAME BUDGET CMD...: run with a time budget, log to $RES/NAME.log
  local name=$1 budget=$2; shift 2
  local var="BUDGET_${name^^}"; budget=${!var:-$budget}   # (checked at the start)
  if [ "$budget" -le 0 ]; then  # (timeout 0 would mean no limit at all)
    echo "=== [$name] skipped: $var=0"
    echo "{\"stage\": \"$name\", \"rc\": \"skipped\", \"seconds\": 0, \"budget\": 0}" > "$RES/$name.stage.json"
    FAILED_STAGES="$FAILED_STAGES $name(skipped)"
    return
  fi
  local left=$((DEADLINE - SECONDS - 30))  # kept for the SIGKILL grace and the table
  if [ "$left" -lt 30 ]; then
    echo "=== [$name] skipped: ${left}s left of BUDGET_TOTAL"
    echo "{\"stage\": \"$name\", \"rc\": \"skipped\", \"seconds\": 0, \"budget\": 0}" > "$RES/$name.stage.json"
    FAILED_STAGES="$FAILED_STAGES $name(skipped)"
    return
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  echo "=== [$name] budget ${budget}s: $*"
  local t0=$SECONDS
  STAGE_BUDGET=$budget timeout --signal=INT --kill-after=15 "$budget" "$@" 2>&1 | tee "$RES/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && FAILED_STAGES="$FAILED_STAGES $name"
  echo "=== [$name] rc=$rc in $((SECONDS - t0))s"
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0)), \"budget\": $budget}" > "$RES/$name.stage.json"
  pack
}
pack() {  # --tar FILE, written whole after each stage (a temporary file, then a rename); a log still being
  # written (a test process finishing after its stage's SIGINT) makes GNU tar exit 1: the archive stands
  [ -z "$TAR" ] && return 0
  tar --warning=no-file-changed -czf "$TAR.part" "$RES"
  if [ $? -le 1 ]; then mv -f "$TAR.part" "$TAR"; else rm -f "$TAR.part"; return 1; fi
}


if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .cache/fastgpt ]; then export FASTGPT_CACHE=${FASTGPT_CACHE:-$PWD/.cache/fastgpt}; fi

# install always runs (other stages need it); it builds the C++/CUDA extension
# (--no-index: nothing may be fetched; an offline machine would otherwise wait on the index), then says
# whether the module built has its CUDA kernels (pip -q hides setup.py's warning when the build failed, and
# every test process would then JIT-build it)
install_fastgpt() {
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || return
  FASTGPT_EXTENSION=prebuilt $PY -c "import sys, fastgpt.extension as e; r = e.unavailable_reason('cuda')
print('extension:', r or 'fastgpt._C built, with its CUDA kernels'); sys.exit(1 if r else 0)"
}
export -f install_fastgpt
export PY
stage install 240 bash -c install_fastgpt
GPU_TESTS="tests/test_layernorm.py tests/test_gelu.py tests/test_attention.py tests/test_cross_entropy.py
  tests/test_dropout_add.py tests/test_model.py tests/test_ops.py tests/test_train.py tests/test_robust.py
  tests/test_finetune.py tests/test_hf.py"
default_tests() {  # the files with GPU branches first, then the rest; the sm_90 stand-in checks are CPU CI's
  local f
  echo $GPU_TESTS
  for f in tests/test_*.py; do
    case " $(echo $GPU_TESTS) tests/test_compile_sm90.py tests/test_lean_launch.py " in *" $f "*) ;; *) echo "$f" ;; esac
  done
}
test_jobs() {  # the test stage's jobs: FILE, or FILE:K/N for the K-th of a file's N shards (TEST_SHARDS)
  local f e n k
  for f in ${TESTS:-$(default_tests)}; do
    n=1
    for e in $TEST_SHARDS; do [ "${e%=*}" = "$f" ] && n=${e##*=}; done
    if [ "$n" -gt 1 ]; then
      for ((k = 1; k <= n; k++)); do echo "$f:$k/$n"; done
    else
      echo "$f"
    fi
  done
}
job_name() {  # job_name JOB: test_x for tests/test_x.py, test_x.2of3 for its second of three shards
  local name shard; name=$(basename "${1%%:*}" .py)
  case "$1" in *:*) shard=${1#*:}; name="$name.${shard%/*}of${shard#*/}" ;; esac
  echo "$name"
}
test_file() {  # test_file JOB: one pytest process, its log and exit status in $RES/tests/
  local name shard=""; name=$(job_name "$1")
  case "$1" in *:*) shard=${1#*:} ;; esac
  # each failure's report goes to $name.failures as it happens (tests/conftest.py): a file killed at the
  # stage's budget keeps them (run 5's test_attention.py left four F's and no traceback); a shard runs
  # every N-th test of its file (conftest: FASTGPT_TEST_SHARD)
  FASTGPT_TEST_SHARD="$shard" FASTGPT_FAILURE_LOG="$RES_ABS/tests/$name.failures" \
    $PY -m pytest -q -m "not network" -p no:cacheprovider --timeout 120 -rfE "${1%%:*}" > "$RES/tests/$name.log" 2>&1
  echo $? > "$RES/tests/$name.rc"
  echo "--- $1: rc=$(cat "$RES/tests/$name.rc") $(tail -n 1 "$RES/tests/$name.log")"
}
tests_report() {  # each job's failures (pytest's -rfE lines) and the stage's status
  local f name rc=0
  for f in $(test_jobs); do
    name=$(job_name "$f")
    if [ ! -f "$RES/tests/$name.rc" ]; then
      echo "--- $f: not finished"; rc=1
      [ -s "$RES/tests/$name.failures" ] && grep -E "^(=== |E  +[A-Za-z]*Error)" "$RES/tests/$name.failures" | head -n 40
      continue
    fi
    [ "$(cat "$RES/tests/$name.rc")" = 0 ] && continue
    rc=1
    echo "--- $f: rc=$(cat "$RES/tests/$name.rc")"
    grep -E "^(FAILED|ERROR)|Fatal Python error|Segmentation fault|^E  +[A-Za-z]*Error" "$RES/tests/$name.log" | head -n 40
  done
  return $rc
}
run_tests() {  # one pytest process per job (a crash in one cannot hide the others), TEST_JOBS at once:
  # the GPU machine has 16 cores, and each process spends most of its time compiling kernels
  local f
  mkdir -p "$RES/tests"
  rm -f "$RES"/tests/*.rc "$RES"/tests/*.failures
  trap 'echo "--- tests: time budget reached"; kill $(jobs -p) 2>/dev/null; wait; tests_report; exit 124' INT
  for f in $(test_jobs); do
    while [ "$(jobs -rp | wc -l)" -ge "${TEST_JOBS:-6}" ]; do wait -n; done
    test_file "$f" &
  done
  wait
  tests_report
}
if named extdiag; then  # before the tests: it needs ~1-2 min, not their budget
  stage extdiag 240 env PYTHON="$PY" bash benchmarks/ext_diag.sh
fi
if wants tests; then
  export -f run_tests test_file tests_report default_tests test_jobs job_name
  export PY TESTS GPU_TESTS RES RES_ABS TEST_JOBS TEST_SHARDS
  # TEST_JOBS pytest processes share the cores already: 2 compile workers each (kernels/_precompile.py)
  stage tests 300 env FASTGPT_COMPILE_WORKERS="${FASTGPT_COMPILE_WORKERS:-2}" bash -c run_tests
fi
if wants selftest; then
  stage selftest 120 $PY -m fastgpt.selftest --quick
fi
ORDER=""   # the families named in --only first, in that order (a short budget cuts the last), then the rest
for s in ${ONLY//,/ } $FAMILIES; do
  case " $FAMILIES " in *" $s "*) case " $ORDER " in *" $s "*) ;; *) ORDER="$ORDER $s" ;; esac ;; esac
done
for fam in $ORDER; do
  if wants bench "$fam"; then
    q=""
    case ",${QUICK:-}," in *",1,"*|*",$fam,"*) q="--quick" ;; esac
    rm -f "$RES/bench_$fam.json"   # (a crashed stage left the previous run's file, which the table read as new)
    stage "bench_$fam" 240 $PY -m benchmarks --only "$fam" --json "$RES/bench_$fam.json" $q
  fi
done
if named tune; then  # TUNE_ARGS="--kinds dkdv,dq --p 0" narrows it
  stage tune 540 $PY -m benchmarks.tune_attention --json "$RES/tune_attention.json" ${TUNE_ARGS:-}
fi
if named host; then
  stage host 120 bash -c "$PY -m benchmarks.host_overhead --cuda --repeats 5 --number 50 &&
    $PY -m benchmarks.host_overhead --cuda --profile causal_attention --number 200"
fi
$PY benchmarks/summary.py "$RES" || echo "gpu_check: the summary failed; results are in $RES/"
if [ -n "$TAR" ]; then pack && echo "gpu_check: results packed into $TAR"; fi
if [ -n "$FAILED_STAGES" ]; then
  echo "gpu_check: not every stage passed:$FAILED_STAGES"
  exit 1
fi
