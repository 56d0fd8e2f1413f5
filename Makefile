# Two entry points, each setting up .venv on first use:
#   make repro   install, then rebuild every figure and table (dvc repro) and print the report's path
#   make test    install, then lint and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DVC_NO_ANALYTICS := 1
# Pipeline stages call the `repnext` command, so the environment's bin folder comes first.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test lint determinism lower-bounds clean-venv

setup: $(STAMP)

# The library declares ranges (pyproject.toml); the pipeline installs exactly the versions of requirements.lock.
INSTALL := -c requirements.lock -e '.[pipeline,export,dev]'

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q $(INSTALL)
	touch $@

REPORT := artifacts/report.html

repro: $(STAMP)
	@$(BIN)/python repnext/dvc_lock.py  # a second run says so at once, not at the first stage both need
	@$(BIN)/python repnext/dvc_cache.py  # DVC restores cached outputs unchecked: corrupt objects are rebuilt instead
	$(BIN)/dvc repro
	@echo "Report of every figure and table, by stage: $(CURDIR)/$(REPORT)"

# Rebuild everything twice and compare bytes; only time measurements (files named latency*) are exempt.
determinism: $(STAMP)
	dvc repro -f -q
	find artifacts figures -type f ! -name 'latency*' | sort | xargs md5sum > $(VENV)/determinism-1.md5
	dvc repro -f -q
	find artifacts figures -type f ! -name 'latency*' | sort | xargs md5sum > $(VENV)/determinism-2.md5
	diff $(VENV)/determinism-1.md5 $(VENV)/determinism-2.md5
	@echo "every pipeline output is byte-identical across two 'dvc repro -f' runs"

# The library at the floors of its ranges (requirements-lower.txt), in a second environment: the tests of the code
# that `pip install repnext` brings (models, fusion, statistics, weights, figures, logs, receptive fields).
LOWER := .venv-lower
LOWER_TESTS := tests/models tests/test_reparam.py tests/test_weights.py tests/test_plotting.py \
	tests/analysis/test_stats.py tests/analysis/test_erf.py tests/analysis/test_logs.py

lower-bounds:
	test -x $(LOWER)/bin/python || $(PYTHON) -m venv $(LOWER)
	$(LOWER)/bin/python -m pip install --disable-pip-version-check -q -c requirements-lower.txt -e '.[dev]'
	$(LOWER)/bin/python -m pytest -p no:cacheprovider $(LOWER_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
