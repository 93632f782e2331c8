#!/usr/bin/env bash
# One pass over everything that needs a CUDA GPU, sized for a short lease (default budget 520 s):
#   1. install ptft_fast editable into the machine's python (no deps), record device + versions and
#      measure the two ceilings (device-to-device copy GB/s, bf16 matmul TFLOP/s);
#   2. build csrc/ (ptft_fast._C, sm_90a) in the background while the Triton kernel tests run on the GPU;
#   3. the CUDA C++ kernel tests once the build is done;
#   4. end-to-end training step benchmark (BERT-base MLM 128 with every provider incl. torch.compile;
#      then BERT 512, GPT-2 CLM, T5-small span, GPT-2 LoRA, Llama-style 125M without torch.compile;
#      hf+ptft-patch beside hf-liger);
#   5. kernel benchmarks (`ptft bench ops --quick`).
# Every step has a time cap and the whole run a deadline; a failed step does not stop the next. Logs,
# CSVs, PNGs and junit XML go to $WORK and are packed into $OUT/results.tgz after each step, so a run
# cut off at its limit still returns what it did; $OUT/summary.txt has one line per step.
# Test failures print their tracebacks as they happen (PTFT_LIVE_FAILURES=1, tests/conftest.py), so
# a test step cut at its cap still says why; complete test steps list their 25 slowest tests.
# Optional wheels (transformers/peft/liger-kernel/datasketch matching the CPU venv) are installed from
# .whl/ when present. PTFT_COMMIT names the commit the working tree came from (no .git travels).
# E2E_RUNS="bert_mlm@128=ptft:triton,ptft:cuda;gpt2_clm=hf-compile" replaces the two e2e steps by
# one capped run per entry. TRITON_TESTS narrows the Triton tests (pytest node ids).
# STEPS picks a subset (default all): test_triton csrc test_csrc e2e_bert128 e2e_rest bench_ops.
# Usage: OUT=/some/dir [STEPS="test_triton e2e_bert128"] bash benchmarks/run_gpu.sh [budget_s]
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET="${1:-520}"
OUT="${OUT:-/tmp/ptft_gpu_out}"
WORK="${WORK:-/tmp/ptft_gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PTFT_LIVE_FAILURES=1 PTFT_COMMIT="${PTFT_COMMIT:-unknown}"
STEPS="${STEPS:-test_triton csrc test_csrc e2e_bert128 e2e_rest bench_ops}"
T0=$SECONDS
want() { [[ " $STEPS " == *" $1 "* ]]; }

log() { echo "[$((SECONDS - T0))s] $*" | tee -a "$OUT/summary.txt"; }
pack() { tar czf "$OUT/results.tgz" -C "$WORK" . 2>/dev/null; }
left() { echo $((BUDGET - (SECONDS - T0))); }

# step NAME CAP CMD...: run CMD with min(CAP, time left) seconds, log to $WORK/NAME.log
step() {
  local name=$1 cap=$2
  shift 2
  want "$name" || return 0
  local t
  t=$(left)
  ((t < cap)) && cap=$t
  if ((cap < 10)); then
    log "SKIP $name (budget spent)"
    return 0
  fi
  log "start $name (cap ${cap}s)"
  local s=$SECONDS
  timeout -k 5 "$cap" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  log "end   $name rc=$rc in $((SECONDS - s))s"
  grep -E "passed|failed|error|Error|skipped|ratio|MFU" "$WORK/$name.log" | tail -n 4 | sed 's/^/    /' | tee -a "$OUT/summary.txt"
  pack
  return $rc
}

# ---- 1. install, environment, ceilings
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$WORK/wheels.log" 2>&1 && export PYTHONPATH=/tmp/site
fi
PTFT_BUILD_CUDA=0 $PY -m pip install -q --no-deps --no-build-isolation -e . >"$WORK/install.log" 2>&1
log "install rc=$?"
{
  nvidia-smi
  $PY - <<'EOF'
import importlib, sys, torch
print("python", sys.version.split()[0])
for m in ("torch", "triton", "transformers", "peft", "liger_kernel", "ptft_fast"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as exc:
        print(m, "not importable:", exc)
print("cuda", torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
y = torch.empty_like(x)
for _ in range(3):
    y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(20):
    y.copy_(x)
e.record()
e.synchronize()
print(f"ceiling copy GB/s (read+write) {2 * 20 * x.numel() / (s.elapsed_time(e) / 1e3) / 1e9:.0f}")
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn_like(a)
for _ in range(3):
    a @ b
s.record()
for _ in range(10):
    a @ b
e.record()
e.synchronize()
print(f"ceiling bf16 matmul TFLOP/s {10 * 2 * 8192**3 / (s.elapsed_time(e) / 1e3) / 1e12:.0f}")
EOF
} >"$WORK/env.log" 2>&1
grep -E "^(torch|triton|transformers|peft|liger|cuda|ceiling|python)" "$WORK/env.log" | cut -c1-160 | tee -a "$OUT/summary.txt"
pack

XDIST=()
$PY -c "import xdist" 2>/dev/null && XDIST=(-n "${PTFT_XDIST:-6}")
$PY -c "import pytest_timeout" 2>/dev/null && XDIST+=(--timeout "${PTFT_TEST_TIMEOUT:-90}")

# ---- 2. csrc build in the background || Triton kernel tests on the GPU
want csrc && (
  s=$SECONDS
  PTFT_BUILD_CUDA=1 MAX_JOBS=10 TORCH_CUDA_ARCH_LIST="9.0a" timeout -k 5 300 \
    $PY setup.py build_ext --inplace >"$WORK/csrc_build.log" 2>&1
  echo "rc=$? in $((SECONDS - s))s" >"$WORK/csrc_build.done"
) &
BUILD_PID=$!
step test_triton "${PTFT_TRITON_CAP:-150}" $PY -m pytest -p no:cacheprovider -m "not slow" "${XDIST[@]}" ${TRITON_TESTS:-tests/kernels} \
  --junitxml="$WORK/test_triton.xml" -rfE -v --tb=short --durations=25
if want csrc; then
  wait "$BUILD_PID"
  log "csrc build $(cat "$WORK/csrc_build.done" 2>/dev/null)"
  tail -n 5 "$WORK/csrc_build.log" | cut -c1-200 | sed 's/^/    /' | tee -a "$OUT/summary.txt"
fi

# ---- 3. CUDA C++ kernel tests
step test_csrc 90 $PY -m pytest -p no:cacheprovider "${XDIST[@]}" tests/csrc --junitxml="$WORK/test_csrc.xml" \
  -rfE -v --tb=short --durations=25

# ---- 4. end-to-end training step
E2E=(-m ptft_fast.benchmarks.bench_train_e2e --csv "$WORK/train_e2e_cuda.csv")
if [[ -n "${E2E_RUNS:-}" ]]; then
  # E2E_RUNS="ops=providers;ops=providers": one capped run each (its rows are written when it ends)
  i=0
  IFS=';' read -ra runs <<<"$E2E_RUNS"
  for r in "${runs[@]}"; do
    i=$((i + 1))
    STEPS="$STEPS e2e_$i"
    step "e2e_$i" "${E2E_CAP:-120}" $PY "${E2E[@]}" --only "${r%%=*}" --providers "${r#*=}" \
      --plot "$WORK/train_e2e_$i.png"
  done
  STEPS="${STEPS/e2e_bert128/}"
  STEPS="${STEPS/e2e_rest/}"
fi
step e2e_bert128 130 $PY "${E2E[@]}" --only bert_mlm@128 --plot "$WORK/train_e2e_bert128.png" \
  ${E2E_PROVIDERS:+--providers "$E2E_PROVIDERS"}
step e2e_rest 140 $PY "${E2E[@]}" --only bert_mlm@512,gpt2_clm,t5_span,gpt2_lora,llama_clm \
  --providers ptft:torch,ptft:triton,ptft:cuda,hf+ptft-patch,hf-liger --plot "$WORK/train_e2e_rest.png"

# ---- 5. kernel benchmarks
step bench_ops 120 $PY -m ptft_fast bench ops --quick ${OPS_ONLY:+--only "$OPS_ONLY"} --csv "$WORK/ops_cuda.csv" --plot "$WORK/ops_cuda.png"

log "done in $((SECONDS - T0))s"
pack
