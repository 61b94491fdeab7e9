#!/usr/bin/env bash
# Reproduce PR #2135 (the final record, 1.05651, 3 seeds) on 8xH100: the `pr2135` preset (fixed 2048 training
# context, 2560 eval/TTT context, TTT LoRA on Q/V/O/MLP + head, 32 calibration batches, LQER group 32, no
# AWQ-lite, SmearGate BOS fix off) with the token-only n-gram tilt in pgolf's causal order.
# TILT=stream reproduces #2135's own statistics order (the audit flags it and exits 1); TILT=off: no tilt.
# Usage: for s in 42 314 0; do SEED=$s bash runs/pr2135_8xh100.sh; done
set -euo pipefail
SEED=${SEED:-42}
TILT=${TILT:-causal}
DATA=${DATA:-data/sp8192-caseops}
[ -f "$DATA/manifest.json" ] || pgolf data download --variant sp8192-caseops --out "$DATA" --train-shards 80
pgolf data check "$DATA"
torchrun --standalone --nproc_per_node=8 -m pgolf run --data "$DATA" --preset pr2135 --seed "$SEED" \
  --set "eval.ngram_tilt=$TILT" --out "runs_out/pr2135-${TILT}-${SEED}" --overwrite
pgolf audit "runs_out/pr2135-${TILT}-${SEED}"
