# Two entry points, each setting up .venv on first use:
#   make repro   install, then rebuild every figure and table (dvc repro)
#   make test    install, then lint and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg

.PHONY: setup repro test lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[pipeline,dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name repnext --display-name "Python (repnext)" > /dev/null
	touch $@

repro: $(STAMP)
	$(BIN)/dvc repro

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
