# Two entry points on a fresh machine with Python >= 3.11 and make:
#   make demo   -- create .venv, install, train a small CW-VAE on generated Moving MNIST,
#                  score its open-loop predictions and redraw docs/demo_prediction.png
#   make test   -- create .venv, install with test extras, run the test suite
#   make docs   -- build the documentation site into build/site (make docs SERVE=1 serves it)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv install test demo docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev,data,examples,docs,worldmodels]"

demo: install
	$(BIN)/python examples/demo.py --logdir runs/demo --picture docs/demo_prediction.png

docs: install
ifdef SERVE
	$(BIN)/mkdocs serve
else
	$(BIN)/mkdocs build --strict
endif

test: install
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
