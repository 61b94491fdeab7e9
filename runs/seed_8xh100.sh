#!/usr/bin/env bash
# Reproduce PR #2139 (the seed) on 8xH100: #2014's stack with TTT LoRA LR 1.5e-4 / WD 0.25 and the K=4 peer
# ensemble. pgolf's default peer mode is the legal `causal` variant; PEER_MODE=pr2139 reproduces the submitted
# (non-compliant) ensemble for comparison. Usage: SEED=42 PEER_MODE=causal bash runs/seed_8xh100.sh
set -euo pipefail
SEED=${SEED:-42}
PEER_MODE=${PEER_MODE:-causal}
DATA=${DATA:-data/sp8192-caseops}
[ -f "$DATA/manifest.json" ] || pgolf data download --variant sp8192-caseops --out "$DATA" --train-shards 80
pgolf data check "$DATA"
torchrun --standalone --nproc_per_node=8 -m pgolf run --data "$DATA" --preset seed --seed "$SEED" \
  --peer-mode "$PEER_MODE" --out "runs_out/seed-${PEER_MODE}-${SEED}" --overwrite
