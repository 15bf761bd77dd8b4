#!/usr/bin/env bash
# GPU check of the scale-out work (issue 13) on one lent GPU, in one go (about 5 minutes):
# 1. FSDP2 through accelerate's own CUDA path (1 process: every trainer of tests/fsdp_script.py, fp32 and bf16),
#    compared with the same runs without FSDP; generation memory under FSDP2;
# 2. the CUDA tests that failed in the previous GPU run (benchmarks/gpu/results/run2), fixed test-side since.
# Every part has a hard timeout; logs land in $OUT as they are written. GPU_TINY=1 tries it on a CPU machine.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/benchmarks/gpu/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
export HF_DATASETS_DISABLE_PROGRESS_BARS=1
T0=$(date +%s)
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
note() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$SUMMARY"; }

if [ "${SKIP_WHEELS:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/env.log" 2>&1 || echo "WHEEL INSTALL FAILED" >>"$OUT/env.log"
  export PYTHONPATH=/tmp/site:$ROOT:$ROOT/benchmarks/gpu
else
  export PYTHONPATH=$ROOT:$ROOT/benchmarks/gpu
fi
timeout 60 $PY -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__)" >>"$OUT/env.log" 2>&1
cat "$OUT/env.log" | tail -2 | tee -a "$SUMMARY"
note "env done"

# ---- 1. FSDP2 on the GPU through accelerate (1 process) vs no FSDP ------------------------------------------------
KINDS=${KINDS:-sft,dpo,dpo_adapter,dpo_precomputed,reward,kto,grpo,grpo_adapter,rloo,ppo,rest,env}
export FSDP_TEST_KEEP_GOING=1  # one process: a failing trainer is reported, the others still run
for precision in ${PRECISIONS:-fp32 bf16}; do
  export FSDP_TEST_BF16=$([ $precision = bf16 ] && echo 1 || echo 0)
  timeout "${FSDP_TIMEOUT:-150}" $PY -m accelerate.commands.launch --config_file examples/accelerate/fsdp2.yaml \
    --num_processes 1 tests/fsdp_script.py "$KINDS" "/tmp/scale/fsdp-$precision" 1 >"$OUT/fsdp-$precision.log" 2>&1
  note "fsdp2 $precision rc=$?"
  timeout "${ONE_TIMEOUT:-100}" $PY tests/fsdp_script.py "$KINDS" "/tmp/scale/one-$precision" 1 >"$OUT/one-$precision.log" 2>&1
  note "no-fsdp $precision rc=$?"
  timeout 30 $PY - "$KINDS" "/tmp/scale/fsdp-$precision" "/tmp/scale/one-$precision" <<'PYEOF' | tee -a "$SUMMARY"
import json, os, sys
kinds, a, b = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
for kind in kinds:
    try:
        x, y = (json.load(open(os.path.join(d, f"{kind}.json"))) for d in (a, b))
    except OSError as err:
        print(f"  {kind:16} missing: {err}")
        continue
    diff = max((abs(p - q) for p, q in zip(x["losses"], y["losses"])), default=float("nan"))
    extra = x.get("sampling", {})
    print(f"  {kind:16} fsdp={x['fsdp']} losses {[round(v, 5) for v in x['losses']]} vs {[round(v, 5) for v in y['losses']]}"
          f" max|diff| {diff:.2e} checksum rel {abs(x['checksum'] - y['checksum']) / y['checksum']:.1e} {extra}")
PYEOF
done

# ---- 2. the CUDA tests that failed in the previous GPU run --------------------------------------------------------
TESTS="tests/test_sft.py::test_accumulation_invariance tests/test_dpo.py::test_prefix_sharing_trains_like_the_unshared_run
 tests/test_dpo.py::test_precomputed_reference_matches_copy_and_skips_the_reference_forward
 tests/test_dpo.py::test_lora_reference_is_the_adapter_switched_off
 tests/test_reward.py::test_trl_config_defaults_signature_and_metric_names
 tests/test_online.py::test_gradient_accumulation_equals_one_big_batch tests/test_online_contract.py::test_rloo_kl_is_a_per_token_mean
 tests/test_evaluation.py::test_frontier_probe_does_not_change_ppo_training
 tests/test_evaluation.py::test_frontier_probe_does_not_change_dpo_training
 tests/test_packing.py::test_packed_loss_equals_unpacked_loss tests/test_rest.py::test_rest_improve_with_accumulation_equals_one_big_batch"
[ "${GPU_TINY:-0}" = 1 ] && TESTS="tests/test_reward.py::test_trl_config_defaults_signature_and_metric_names"
OMP_NUM_THREADS=4 DEVICE_PROBE_LOG=$OUT/devices.txt timeout "${TESTS_TIMEOUT:-200}" $PY -m pytest -m "not slow" -vv -rfEs \
  -p no:cacheprovider -p device_probe $TESTS >"$OUT/tests.log" 2>&1
note "tests rc=$? ($(grep -cE ' PASSED' "$OUT/tests.log") PASSED, $(grep -cE ' FAILED' "$OUT/tests.log") FAILED)"
grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | head -20 | tee -a "$SUMMARY"
note "all done"
