#!/usr/bin/env bash
# Reproduce PR #2014 (1.05759, 3 seeds) on 8xH100: the `record` preset (asymmetric logit rescale on, TTT LoRA
# LR 1e-4 / WD 0.5, no peer ensemble). Usage: for s in 42 314 0; do SEED=$s bash runs/record_8xh100.sh; done
set -euo pipefail
SEED=${SEED:-42}
DATA=${DATA:-data/sp8192-caseops}
[ -f "$DATA/manifest.json" ] || pgolf data download --variant sp8192-caseops --out "$DATA" --train-shards 80
pgolf data check "$DATA"
torchrun --standalone --nproc_per_node=8 -m pgolf run --data "$DATA" --preset record --seed "$SEED" \
  --out "runs_out/record-${SEED}" --overwrite
