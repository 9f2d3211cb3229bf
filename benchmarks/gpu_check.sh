#!/usr/bin/env bash
# GPU check of the zoo, on a machine with a CUDA GPU, from the repository root (supersedes gpu_smoke.sh):
#   1. the conformance kit on CUDA (ZOO_TEST_DEVICE=cuda, tests/test_conformance.py);
#   2. one epoch of each MNIST entry with --precision bf16-mixed --accelerator gpu and cheaper
#      evaluation settings (fewer importance samples / bound timesteps / quality samples);
#   3. benchmarks/throughput.py --device cuda (runner vs plain loop, and the runner as it was
#      before the logging change), then benchmarks/memory.py --device cuda if time is left.
# Everything goes to $OUT (default ./gpu_check_out): one log per step, metrics, summary.txt.
# MNIST is read from $ZOO_DATA_DIR (<dir>/mnist/ or <dir>/); without it step 2 is skipped and
# the summary says so. Budget: under 8 minutes on one H100: no step starts after $BUDGET_S
# seconds and none runs past $HARD_S seconds from the start (each step's own timeout is cut to
# what is left), so the script ends within a 10-minute device call even when steps hang.
# Exit status: 0 when every step that ran passed, 1 otherwise.
set -uo pipefail
OUT=${OUT:-./gpu_check_out}
BUDGET_S=${BUDGET_S:-400}          # no new step starts after this many seconds
HARD_S=${HARD_S:-540}              # and every step is stopped by this many seconds after the start
JOBS=${GPU_CHECK_JOBS:-4}          # MNIST trainings run this many at a time (one GPU, 16 cores)
mkdir -p "$OUT/mnist" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
export WANDB_MODE=offline PYTHONUNBUFFERED=1 ZOO_DATA_DIR=${ZOO_DATA_DIR:-../shared/data}
SUMMARY="$OUT/summary.txt"
START=$(date +%s)                  # epoch seconds: the MNIST lanes are child shells
FAILED=0
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }
elapsed() { echo $(($(date +%s) - START)); }
over_budget() { [ "$(elapsed)" -ge "$BUDGET_S" ]; }
step() {  # name, timeout in seconds, command...: runs it, logs to $OUT/logs/name.log, one summary line
  local name=$1 limit=$2; shift 2
  if over_budget; then note "SKIP  $name (budget of ${BUDGET_S}s spent)"; return 0; fi
  local left=$((HARD_S - $(elapsed)))
  [ "$left" -lt "$limit" ] && limit=$left
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  local took=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then note "OK    $name (${took}s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then note "TIME  $name: stopped after ${limit}s"; FAILED=1
  else note "FAIL  $name (exit $rc, ${took}s): $(tail -1 "$OUT/logs/$name.log")"; FAILED=1; fi
  return $rc
}

# ---- 0. environment --------------------------------------------------------------------------------
python3 -c "import zoo_core, importlib.metadata as m; m.distribution('generative-zoo')" 2>/dev/null \
  || python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/logs/install.log" 2>&1 \
  || python3 -m pip install -q --no-deps -e . >> "$OUT/logs/install.log" 2>&1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported(), \
'| lightning', pl.__version__)"
} 2>&1 | tee "$OUT/environment.txt" | sed 's/^/# /' >> "$SUMMARY"
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  note "FAIL  no CUDA device visible to torch: nothing to check"; exit 1
fi

# ---- 1. conformance kit on CUDA ----------------------------------------------------------------------
XDIST=""; python3 -c "import xdist" 2>/dev/null && XDIST="-n 4"
ZOO_TEST_DEVICE=cuda step conformance-cuda 170 python3 -m pytest tests/test_conformance.py -q $XDIST \
  --junitxml="$OUT/conformance-cuda.xml"
note "      $(grep -E '(passed|failed|error)' "$OUT/logs/conformance-cuda.log" | tail -1)"

# ---- 2. one epoch of every MNIST entry, bf16-mixed, on the GPU ----------------------------------------
declare -A EVAL=(
  [gmm-mnist]="--set eval.quality_samples=1000"
  [vae-mnist]="--set eval.iw_samples=50 --set eval.quality_samples=1000"
  [autoencoder-mnist]="--set eval.quality_samples=1000"
  [flow-mnist]="--set eval.quality_samples=1000"
  [gan-mnist]="--set eval.quality_samples=1000"
  [diffusion-mnist]="--set model.bound_timesteps=20 --set eval.quality_samples=200"
  [autoregressive-mnist]="--set eval.quality_samples=500"
  [autoregressive-pixelcnn-mnist]="--set eval.quality_samples=50 --set eval.num_samples=16"
)
HAVE_MNIST=0
for f in "$ZOO_DATA_DIR"/{mnist/,}train-images-idx3-ubyte{.gz,}; do [ -e "$f" ] && HAVE_MNIST=1; done
if [ "$HAVE_MNIST" -eq 1 ]; then
  train_one() {  # entry: one epoch, bf16-mixed, one GPU; copies metrics.json and samples.png into $OUT/mnist
    local entry=$1
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=$((16 / JOBS)) step "mnist-$entry" 150 python3 -m zoo_core train "$entry" --max-epochs 1 \
      --precision bf16-mixed --accelerator gpu --devices 1 --no-progress --runs-dir "$OUT/runs" ${EVAL[$entry]}
    local run; run=$(ls -d "$OUT/runs/$entry"/version_* 2>/dev/null | tail -1)
    if [ -n "$run" ] && [ -f "$run/metrics.json" ]; then
      cp "$run/metrics.json" "$OUT/mnist/$entry.json"; cp "$run/samples.png" "$OUT/mnist/$entry.png" 2>/dev/null
      python3 - "$run/metrics.json" >> "$SUMMARY" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
test = m.get("test", {})
nll = {k: v for k, v in test.items() if k in ("nll_nats", "bits_per_dim")}
sq = {k: v for k, v in test.items() if k in ("sliced_wasserstein", "sliced_wasserstein_data_floor")}
fmt = lambda d: ", ".join(f"{k} {v:.4g}" for k, v in d.items())
print(f"      {m['entry']}: {m['steps']} steps in {m['wall_time_s']:.1f} s ({m['steps'] / max(m['wall_time_s'], 1e-9):.0f} steps/s "
      f"incl. validation); test {fmt(nll) or 'no likelihood'}; {fmt(sq)}")
EOF
    fi
  }
  export -f train_one step note over_budget elapsed
  export OUT SUMMARY BUDGET_S HARD_S START JOBS
  EVAL_DUMP=$(declare -p EVAL); export EVAL_DUMP
  printf '%s\n' gmm-mnist vae-mnist autoencoder-mnist flow-mnist gan-mnist diffusion-mnist autoregressive-mnist \
    autoregressive-pixelcnn-mnist | xargs -P "$JOBS" -I{} bash -c 'eval "$EVAL_DUMP"; FAILED=0; train_one {}; exit $FAILED' \
    || FAILED=1
  # checkpoints are large (flow-mnist: ~130 MB); keep configs, logs, metrics and pictures
  find "$OUT/runs" -name '*.ckpt' -delete 2>/dev/null
else
  note "SKIP  MNIST entries: no MNIST files under ZOO_DATA_DIR=$ZOO_DATA_DIR (<dir>/mnist/ or <dir>/)"
fi

# ---- 3. throughput and memory on CUDA --------------------------------------------------------------
BENCH_ENTRIES="gmm-moons flow-moons"; MEM_ENTRY=flow-moons
[ "$HAVE_MNIST" -eq 1 ] && BENCH_ENTRIES="vae-mnist $BENCH_ENTRIES" && MEM_ENTRY=vae-mnist
# shellcheck disable=SC2086
step throughput-cuda 150 python3 benchmarks/throughput.py --device cuda --entries $BENCH_ENTRIES \
  --repeats 3 --before --json "$OUT/throughput-cuda.json"
sed -n '/^# runner\/plain/,$p' "$OUT/logs/throughput-cuda.log" | sed 's/^/      /' >> "$SUMMARY"
step memory-cuda 90 python3 benchmarks/memory.py --device cuda --entries "$MEM_ENTRY" --repeats 1 \
  --json "$OUT/memory-cuda.json"
grep -E "^$MEM_ENTRY" "$OUT/logs/memory-cuda.log" | sed 's/^/      /' >> "$SUMMARY"

note "# total $(elapsed)s; $( [ $FAILED -eq 0 ] && echo 'every step that ran passed' || echo 'SOME STEPS FAILED')"
exit $FAILED
