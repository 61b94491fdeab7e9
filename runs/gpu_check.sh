#!/usr/bin/env bash
# The GPU acceptance check in one command: bash runs/gpu_check.sh [--strict] [--data DIR] [--out DIR] ...
# (options and sections: runs/gpu_check.py --help). Needs no network and nothing beyond torch: what is
# missing (FA3, Triton, lrzip, packages, the GPU itself) is named in the table, not hit as a crash.
#
# Python: $PGOLF_PYTHON when set; else the first of .venv/bin/python and python3 whose torch sees a
# CUDA device (a GPU machine may come with torch preinstalled and no way to pip install); else, when
# nvidia-smi sees a GPU and there is no .venv yet, `make setup` (it installs the CUDA build of torch);
# else the first Python whose torch imports (the check then says why the GPU sections are skipped);
# else `make setup`.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

has_torch() { "$1" -c "import torch" >/dev/null 2>&1; }
has_cuda() { "$1" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }
gpu_visible() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
setup_venv() {
  echo "gpu_check: running make setup" >&2
  make setup >&2 && [ -x .venv/bin/python ]
}

PY="${PGOLF_PYTHON:-}"
if [ -n "$PY" ] && ! has_torch "$PY"; then
  echo "gpu_check: error: PGOLF_PYTHON=$PY cannot import torch" >&2
  exit 2
fi
if [ -z "$PY" ]; then
  candidates=()
  [ -x .venv/bin/python ] && candidates+=(".venv/bin/python")
  command -v python3 >/dev/null 2>&1 && candidates+=("$(command -v python3)")
  for c in "${candidates[@]}"; do
    if has_cuda "$c"; then PY="$c"; break; fi
  done
  if [ -z "$PY" ] && gpu_visible && [ ! -x .venv/bin/python ]; then
    if setup_venv && has_cuda .venv/bin/python; then PY=".venv/bin/python"; fi
    [ -x .venv/bin/python ] && candidates=(".venv/bin/python" "${candidates[@]}")
  fi
  if [ -z "$PY" ]; then
    for c in "${candidates[@]}"; do
      if has_torch "$c"; then PY="$c"; break; fi
    done
  fi
  if [ -z "$PY" ]; then
    if ! setup_venv; then
      echo "gpu_check: error: no Python with torch, and make setup failed (set PGOLF_PYTHON to one)" >&2
      exit 2
    fi
    PY=".venv/bin/python"
  fi
fi

# This checkout first on the path: pgolf imports whether or not it was pip-installed into $PY.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "gpu_check: python $PY" >&2
exec "$PY" runs/gpu_check.py "$@"
