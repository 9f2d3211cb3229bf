#!/usr/bin/env bash
# Superseded by benchmarks/gpu_check.sh (conformance on CUDA, every MNIST entry in bf16, throughput);
# kept because README's H200 vae-mnist figure (10 epochs, fp32 and bf16) was measured with it.
# GPU smoke check of the shared runner (run on a CUDA machine from the repository root):
# the default entries on one GPU in fp32 and bf16-mixed, with the figures written to $OUT.
# Needs the MNIST files under $ZOO_DATA_DIR (default: ../shared/data).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export WANDB_MODE=offline PYTHONUNBUFFERED=1 ZOO_DATA_DIR=${ZOO_DATA_DIR:-../shared/data}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || python3 -m pip install -q --no-deps -e .
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, 'cuda', torch.cuda.is_available())"
run() {  # name, then zoo train arguments
  local name=$1; shift
  local start=$EPOCHREALTIME
  python3 -m zoo_core train "$@" --accelerator gpu --devices 1 --no-progress --runs-dir "$OUT/runs" 2>&1 | tail -2
  echo "$name: whole command $(python3 -c "print(round($EPOCHREALTIME - $start, 1))") s"
  cp "$(ls -d "$OUT"/runs/"$1"/version_* | tail -1)/metrics.json" "$OUT/$name.json" 2>/dev/null
}
run gmm-moons-fp32 gmm-moons
run vae-digits-fp32 vae-digits
run vae-mnist-fp32 vae-mnist
run vae-mnist-bf16 vae-mnist --precision bf16-mixed
cp "$(ls -d "$OUT"/runs/vae-mnist/version_* | head -1)/samples.png" "$OUT/vae-mnist-samples.png" 2>/dev/null
rm -rf "$OUT/runs"
