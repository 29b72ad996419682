# Set-up and entry points. Only the package registries are needed.
# torch is installed first, pinned exactly: an unpinned resolve pulls the CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: setup setup-dev demo test test-slow clean

$(VENV)/.core-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.core-installed
	$(PIP) install -e '.[dev]'
	touch $@

setup: $(VENV)/.core-installed
setup-dev: $(VENV)/.dev-installed

demo: setup
	$(BIN)/rdd3d demo

test: setup-dev
	$(BIN)/python -m pytest

test-slow: setup-dev
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) build src/*.egg-info
