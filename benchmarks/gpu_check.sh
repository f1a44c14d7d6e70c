#!/usr/bin/env bash
# The GPU checks, as one script for a CUDA machine (under 8 minutes: each step has a timeout; nothing is
# downloaded: random weights and a generated task). Run from the repository root:
#
#     bash benchmarks/gpu_check.sh [OUT]          # OUT: where results go (default gpu-check/)
#
# 1. pytest -m cuda: every method one step under CUDA autocast bf16/fp16 (tests/test_autocast.py).
# 2. benchmarks/method_cost.py on CUDA: ViT-B/16 at 224 px, batch 64, bf16 autocast, eager and
#    compiled (inductor), a representative set of methods.
# 3. A 2-epoch `snftune train` of SNF-deep on a generated task at 224 px with --amp auto.
set -euo pipefail
OUT=${1:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
SNFTUNE=("$PYTHON" -m snftune)
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
"$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"

echo "== 1/3 pytest -m cuda"
timeout 120 "$PYTHON" -m pytest -q -m cuda tests/test_autocast.py 2>&1 | tail -5 | tee "$OUT/pytest-cuda.txt"

echo "== 2/3 method_cost.py --device cuda, batch 64, bf16: eager, then compiled (inductor)"
COST=("$PYTHON" benchmarks/method_cost.py --device cuda --batch-size 64 --dtypes bf16 --warmup 2 --steps 5)
timeout 60 "${COST[@]}" --methods linear full snf-shallow snf-deep lora adapter vpt-deep bitfit ssf \
    --json "$OUT/method_cost_eager.json" | tee "$OUT/method_cost_eager.txt"
timeout 200 "${COST[@]}" --compile --no-eager --methods linear full snf-deep lora \
    --json "$OUT/method_cost_compiled.json" | tee "$OUT/method_cost_compiled.txt"

echo "== 3/3 snftune train snf-deep, 224 px, --amp auto, 2 epochs"
rm -rf "$OUT/train-snf-deep"
timeout 90 "${SNFTUNE[@]}" train --model vit_base_patch16_224 --pretrained random --method snf-deep \
    --data generated/shapes --img-size 224 --split val200 --eval-split val200 --epochs 2 --warmup-epochs 0 \
    --batch-size 64 --amp auto --workers 4 --no-progress --out "$OUT/train-snf-deep" | tee "$OUT/train.txt"
"$PYTHON" -c "import json; m = json.load(open('$OUT/train-snf-deep/metrics.json')); \
print('autocast', m['autocast'], 'train_loss', m['train_loss'], 'images/s', round(m['timing']['images_per_s']))"
echo "results in $OUT"
