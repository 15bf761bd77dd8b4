# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: demo test floors bench install clean

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

# The oldest versions pyproject.toml allows (each `>=X` pinned to `==X`), in their own venv, on a fast
# subset: proves the floors are true. CI runs it after `make test`.
FLOORS := .venv-floors
FLOOR_TESTS := tests/test_sft.py tests/test_dpo.py tests/test_reward.py tests/test_models.py tests/test_formats.py tests/test_online.py tests/test_report.py
floors:
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install -q --upgrade pip
	$(FLOORS)/bin/python -m pip install -q "torch==2.13.0"
	$(FLOORS)/bin/python .ci/floors.py > $(FLOORS)/constraints.txt
	$(FLOORS)/bin/python -m pip install -q -c $(FLOORS)/constraints.txt -e ".[test]"
	$(FLOORS)/bin/python -m pip list 2>/dev/null | grep -iE "^(transformers|tokenizers|peft|accelerate|datasets|safetensors) "
	$(FLOORS)/bin/python -m pytest -m "not slow" -x -p no:cacheprovider $(FLOOR_TESTS)

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) benchmarks/dpo_memory.py --data long --pairs 8 --max_length 256 --output benchmarks/dpo_memory.md
	$(PY) benchmarks/logits_memory.py --output benchmarks/logits_memory.md
	$(PY) benchmarks/online.py --output benchmarks/online.md
	$(PY) benchmarks/online.py --setting long --output benchmarks/online_long.md
	$(PY) benchmarks/generation.py --output benchmarks/generation.md
	$(PY) benchmarks/ppo_memory.py --output benchmarks/ppo_memory.md
	$(PY) benchmarks/quantized_memory.py --output benchmarks/quantized_memory.md
	$(PY) benchmarks/run.py --output BENCHMARKS.md

clean:
	rm -rf $(VENV) $(FLOORS) runs
