# Two commands on a fresh machine (both idempotent):
#   make run    set up .venv, then run the whole pipeline on the embedded corpus
#   make test   set up .venv, then run the test suite
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.pgolf-installed
TORCH_VERSION ?= 2.13.0
# The CPU wheel of torch==2.13.0 comes from local disk in seconds; with a GPU
# present we let pip pick the CUDA build of the same version.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_INDEX := $(if $(HAS_GPU),,--extra-index-url https://download.pytorch.org/whl/cpu)
OUT     ?= out/run

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(VPY) -m pip install -q "torch==$(TORCH_VERSION)" || $(VPY) -m pip install -q $(TORCH_INDEX) "torch==$(TORCH_VERSION)"
	$(VPY) -m pip install -q -e ".[test,plot]"
	$(VPY) -c "import torch, pgolf; print('pgolf ready: torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
	touch $(STAMP)

run: setup
	$(VENV)/bin/pgolf run --out $(OUT) --overwrite

test: setup
	PGOLF_SLOW=1 $(VPY) -m pytest -q tests

bench: setup
	$(VPY) bench/train_throughput.py
	$(VPY) bench/compression.py
	$(VPY) bench/ttt_throughput.py

clean:
	rm -rf $(VENV) out
