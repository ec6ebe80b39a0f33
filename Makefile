# Two entry points, each doing all the set-up on a fresh machine with Python 3.11:
#   make demo   - create .venv, install, run a short architecture search (SQLite + built-in data)
#   make test   - create .venv, install, lint and run the whole test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned to 2.13.0 (CPU build) in pyproject.toml; newer/unpinned pulls CUDA.
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/mtlsearch search --space search_spaces/quick.yaml --dataset synthetic --n-trials 8

lint: $(BIN)/.installed
	$(BIN)/ruff check mtlsearch tests benchmarks cli.py

test: $(BIN)/.installed lint
	# -n auto: one pytest worker per core, each pinned to its core (tests/conftest.py);
	# --dist loadfile keeps a file on one worker, so module-scoped fixtures are built once.
	$(BIN)/python -m pytest -q -n auto --dist loadfile

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
