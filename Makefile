# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: demo test bench install clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is installed first and pinned so nothing else can pull a CUDA build.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/posttrain demo --output_dir runs/demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -x

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) benchmarks/dpo_memory.py --data long --pairs 8 --max_length 256 --output benchmarks/dpo_memory.md
	$(PY) benchmarks/logits_memory.py --output benchmarks/logits_memory.md
	$(PY) benchmarks/online.py --output benchmarks/online.md
	$(PY) benchmarks/ppo_memory.py --output benchmarks/ppo_memory.md
	$(PY) benchmarks/run.py --output BENCHMARKS.md

clean:
	rm -rf $(VENV) runs
