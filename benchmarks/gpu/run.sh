#!/usr/bin/env bash
# One GPU check of posttrain: environment, bf16 smoke, the trainer tests on CUDA, posttrain-vs-TRL benchmarks.
# See benchmarks/gpu/README.md. Every part has its own hard `timeout`; logs go to $OUT as they are written
# (8 files at most: env.log smoke.log tests.log tests.xml devices.txt bench_offline.log bench_online.log
# summary.txt). GPU_TINY=1 shrinks every part so the same script can be tried on a CPU-only machine.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/benchmarks/gpu/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
TINY=${GPU_TINY:-0}
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HF_DATASETS_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error
T0=$(date +%s)
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
note() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$SUMMARY"; }

# ---- 1. environment: carried wheels (.whl/), versions, GPU ------------------------------------------------
{
  if [ "${SKIP_WHEELS:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
    echo "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || echo "WHEEL INSTALL FAILED"
  fi
} >"$OUT/env.log" 2>&1
if [ -d /tmp/site ] && [ "${SKIP_WHEELS:-0}" != 1 ]; then
  export PYTHONPATH=/tmp/site:$ROOT:$ROOT/benchmarks/gpu
else
  export PYTHONPATH=$ROOT:$ROOT/benchmarks/gpu
fi
{
  echo "PYTHONPATH=$PYTHONPATH"; uname -a; nproc
  nvidia-smi || echo "(no nvidia-smi)"
  timeout 120 $PY - <<'EOF'
import importlib, importlib.metadata as md, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "transformers", "tokenizers", "huggingface_hub", "accelerate", "peft", "datasets", "pyarrow",
             "dill", "multiprocess", "xxhash", "fsspec", "safetensors", "regex", "trl", "vaderSentiment",
             "pytest", "xdist", "numpy", "pandas"):
    try:
        m = importlib.import_module(name)
        print(f"{name:16} {getattr(m, '__version__', '?'):12} {getattr(m, '__file__', '')}")
    except Exception as err:
        print(f"{name:16} IMPORT FAILED: {type(err).__name__}: {err}")
import torch
print("cuda available", torch.cuda.is_available(), "| torch.version.cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability(),
          "bf16 supported", torch.cuda.is_bf16_supported())
import posttrain
print("posttrain", posttrain.__file__)
EOF
} >>"$OUT/env.log" 2>&1
cat "$OUT/env.log"
grep -q "IMPORT FAILED: .*\(posttrain\|transformers\|datasets\)" "$OUT/env.log" && note "env: an import failed"
note "env done"

# ---- 2. bf16 smoke: SFT, DPO, GRPO steps, autocast and bf16 weights ------------------------------------------
if [ "$TINY" = 1 ]; then SMOKE_ARGS="--tiny"; else SMOKE_ARGS="--model tiny:llama-50m --steps 3 --batch 16"; fi
timeout "${SMOKE_TIMEOUT:-60}" $PY benchmarks/gpu/smoke_bf16.py $SMOKE_ARGS >"$OUT/smoke.log" 2>&1
note "smoke rc=$? ($(grep -c ' ok ' "$OUT/smoke.log") ok)"
grep -E "^  (sft|dpo|grpo)|bf16 smoke" "$OUT/smoke.log" | tee -a "$SUMMARY"

# ---- 3. the trainer tests on CUDA ------------------------------------------------------------------------------
if [ "$TINY" = 1 ]; then
  TESTS="tests/test_losses.py tests/test_reward.py"
else
  TESTS="tests/test_sft.py tests/test_dpo.py tests/test_reward.py tests/test_online.py tests/test_online_contract.py
         tests/test_rl_learning.py tests/test_rest.py tests/test_value_head.py tests/test_losses.py tests/test_models.py
         tests/test_preference_losses.py tests/test_rl_losses.py tests/test_evaluation.py tests/test_kto.py
         tests/test_packing.py"
fi
XDIST=""
if [ "$TINY" != 1 ] && $PY -c "import xdist" 2>/dev/null; then XDIST="-n ${TEST_WORKERS:-8} --dist load"; fi
# -vv (against addopts' -q): one PASSED/FAILED line per test as it ends, so a run cut short still says what ran.
# 2 torch threads per xdist worker: 8 workers on 16 cores.
OMP_NUM_THREADS=${TEST_THREADS:-2} DEVICE_PROBE_LOG=$OUT/devices.txt timeout "${TESTS_TIMEOUT:-180}" \
  $PY -m pytest -m "not slow" -vv -rfEs -p no:cacheprovider -p device_probe $XDIST --timeout "${TEST_TIMEOUT:-120}" \
  --junitxml="$OUT/tests.xml" $TESTS >"$OUT/tests.log" 2>&1
note "tests rc=$? (124 = timed out; log: $(grep -cE ' PASSED' "$OUT/tests.log") PASSED, $(grep -cE ' FAILED' "$OUT/tests.log") FAILED, $(grep -cE ' SKIPPED' "$OUT/tests.log") SKIPPED, $(grep -cE ' ERROR' "$OUT/tests.log") ERROR lines)"
[ -f "$OUT/tests.xml" ] && $PY benchmarks/gpu/junit_summary.py "$OUT/tests.xml" | tee -a "$SUMMARY"
grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | head -40 | tee -a "$SUMMARY"
[ -f "$OUT/devices.txt" ] && grep -v $'\t' "$OUT/devices.txt" | head -20 | tee -a "$SUMMARY"

# ---- 4. posttrain vs TRL ---------------------------------------------------------------------------------------
if [ "$TINY" = 1 ]; then
  OFF="--sizes 5m --batch 4 --steps 1 --warmup 1 --repeats 1 --benchmarks sft,dpo,dpo-prefix"
  ON="--size tiny --steps 1 --warmup 1 --repeats 1 --only grpo"
else
  OFF="--sizes ${BENCH_SIZES:-150m} --batch 32 --bf16 --steps 8 --warmup ${BENCH_WARMUP:-2} --repeats ${BENCH_REPEATS:-2}"
  ON="--size 50m --bf16 --steps 4 --warmup 1 --repeats 2 --only grpo,rloo"
fi
timeout "${OFFLINE_TIMEOUT:-140}" $PY benchmarks/gpu/bench.py offline $OFF >"$OUT/bench_offline.log" 2>&1
note "offline bench rc=$?"
awk '/^\| benchmark \| model \| params/{buf=""; on=1} on{buf=buf $0 "\n"} /^$/{on=0} END{printf "%s", buf}' \
  "$OUT/bench_offline.log" | tee -a "$SUMMARY"; grep -E "^\(ratio|^\(so far" "$OUT/bench_offline.log" | tail -1 | tee -a "$SUMMARY"
timeout "${ONLINE_TIMEOUT:-60}" $PY benchmarks/gpu/bench.py online $ON >"$OUT/bench_online.log" 2>&1
note "online bench rc=$?"
sed -n '/^| benchmark/,/^(ratio/p' "$OUT/bench_online.log" | tee -a "$SUMMARY"
[ "$TINY" = 1 ] || nvidia-smi --query-gpu=name,memory.used,temperature.gpu,clocks.sm --format=csv | tee -a "$SUMMARY"
note "all done"
