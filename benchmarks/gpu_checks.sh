#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (about 13 minutes on one H200); each writes into
# OUT_DIR and has its own time limit, so one failure does not stop the others:
#   1. SDXL at real size, random weights: fine-tuning step time and memory with and without
#      consistency, and sampling (benchmarks/latent_gpu.py -> latent_gpu.md);
#      and the UNet's forward latency by batch size (-> latent_forward.md);
#   2. the step-cost benchmark on the GPU at batch 128 and 4096 (benchmarks/step_cost.py ->
#      step_cost_gpu.md, step_cost_gpu_b4096.md);
#   3. the pixel path under mixed precision: `ambient train` on noisy digits with bf16 and fp16,
#      then `ambient evaluate` (evaluate_bf16.json, evaluate_fp16.json);
#   4. the main job, `ambient demo`, on the GPU (demo_report.md).
# Usage, from the repository root with the package importable (pip install -e ".[latent]", or
# PYTHONPATH=src):
#   bash benchmarks/gpu_checks.sh OUT_DIR
set -u
out=${1:?usage: bash benchmarks/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
work=$(mktemp -d)
py=${PYTHON:-python3}
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log its wall time and exit status
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@"
  echo "== $name: exit $? after $((SECONDS - start)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, diffusers, transformers, peft, accelerate as a
print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers',
      transformers.__version__, 'peft', peft.__version__, 'accelerate', a.__version__)"
step latent_gpu 330 $py benchmarks/latent_gpu.py --out "$out/latent_gpu.md"
step latent_forward 120 $py benchmarks/latent_gpu.py --forward-only --forward-batches 1 2 4 16 \
  --out "$out/latent_forward.md"
step step_cost 90 $py benchmarks/step_cost.py --device cuda --rounds 20 --out "$out/step_cost_gpu.md"
step step_cost_b4096 90 $py benchmarks/step_cost.py --device cuda --rounds 10 --batch 4096 \
  --out "$out/step_cost_gpu_b4096.md"
for mp in bf16 fp16; do
  step "train $mp" 60 $py -m ambient.cli train --data digits --sigma-n 0.2 --steps 400 \
    --mixed-precision "$mp" --out "$work/digits_$mp"
  step "evaluate $mp" 60 $py -m ambient.cli evaluate "$work/digits_$mp" --num 500 \
    --out "$out/evaluate_$mp.json"
done
step demo 300 $py -m ambient.cli demo --out "$work/demo"
cp "$work/demo/report.md" "$out/demo_report.md" 2>/dev/null
