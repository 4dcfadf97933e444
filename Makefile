# tcomp: two commands from nothing: `make run` (the reproduction) and `make test` (the tests).
# Both create .venv when it is missing, install the package with its dev extras and fetch the
# embedded assets first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tcomp-installed
PROFILE ?= default

.PHONY: help install assets test test-fast run clean-runs

help:
	@echo "make run    - execute the baselines notebook ($(PROFILE) profile) into papermill_runs/"
	@echo "make test   - unit tests + nbval over every notebook in the smoke profile"
	@echo "make assets - fetch and verify the embedded models and data"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,lab]"
	touch $(STAMP)

install: $(STAMP)

assets: $(STAMP)
	$(PY) -m tcomp_utils.assets fetch

test: assets
	TCOMP_PROFILE=smoke $(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest tests -x -q

run: assets
	$(PY) -m tcomp_utils.runner notebooks/00_baselines.ipynb --profile $(PROFILE)

clean-runs:
	rm -rf papermill_runs/*/smoke
