# Two entry points on a fresh machine with Python >= 3.11 and make:
#   make demo   -- create .venv, install, train a small CW-VAE on generated Moving MNIST
#   make test   -- create .venv, install with test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv install test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev,data,examples]"

demo: install
	$(BIN)/python examples/train.py --config demo --logdir runs/demo

test: install
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
