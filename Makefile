# Two entry points for a fresh clone: `make demo` and `make test`. Each sets up .venv first.
# torch is pinned here, in the install path: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: demo test lint venv bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/grpokit demo

lint: venv
	$(PY) -m ruff check grpokit tests

test: lint
	$(PY) -m pytest

# grpokit vs TRL's GRPOTrainer on the same work (about 10 minutes on 2 CPU cores); see benchmarks/README.md
bench: venv
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/vs_trl.py

clean:
	rm -rf $(VENV) .grpokit runs
