# Two entry points for a new user (see README):
#   make demo   set up .venv and run the built-in demo (noisy digits -> report)
#   make test   set up .venv and run the test suite
# Setup installs torch==2.13.0 first (a CPU build), then the package with every dependency
# pinned by requirements.lock, so nothing replaces torch with another build.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= demo_out

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[dev,latent]"
	touch $@

demo: setup
	$(BIN)/ambient demo --out $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q --durations=5

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
