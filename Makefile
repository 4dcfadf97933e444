# tcomp: from nothing, `make run` (the reproduction), `make test` (the tests), `make lab` (the notebooks).
# Both create .venv when it is missing, install the package with its dev extras and fetch the
# embedded assets first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tcomp-installed
LAB_STAMP := $(VENV)/.tcomp-lab-installed
PROFILE ?= default

SPECS  := $(sort $(wildcard papermill_runs/*.yaml))
SPEC   ?= papermill_runs/budget_axis.yaml
SWEEP_ARGS ?=
WORKERS ?= 2

.PHONY: help install assets test test-fast run verify reproduce sweep figures lab bench book

help:
	@echo "make run    - every table's representative points recomputed and compared with the committed rows, then make figures"
	@echo "make verify - the same on smoke-sized points against the rows committed in papermill_runs/smoke (CI)"
	@echo "make reproduce [SWEEP_ARGS='--workers 4'] - the complete grids of every table, then make figures"
	@echo "make lab    - JupyterLab on notebooks/ with the project's environment"
	@echo "make sweep SPEC=papermill_runs/x.yaml [SWEEP_ARGS='--workers 2'] - one sweep"
	@echo "make figures - rebuild figures/ from the results tables (no model is loaded)"
	@echo "make book   - the notebooks as make run executed them, with README, RESULTS.md and docs/, as a static site in build/book/html"
	@echo "make test   - unit tests + nbval over every notebook in the smoke profile"
	@echo "make assets - fetch and verify the embedded models and data"
	@echo "make bench  - CPU benchmarks (factorization; GPTQ time by phase; quantized inference latency and memory; int8; autoencoder training time; structured pruning time and pruned latency; a training step, default vs fused AdamW and under Dask's malloc setting); tables in benchmarks/results/"

# uv installs in about 20 s what pip takes about 2 minutes for (the same versions); it reads no pip
# configuration, so it is told where pip finds local wheels (here, the CPU build of torch). pip if uv fails.
# --compile-bytecode as pip does: without .pyc files (and with PYTHONDONTWRITEBYTECODE set, as on CI
# machines) every kernel and subprocess compiles transformers and torch again (about 8 s each).
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
INSTALL = $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) $(foreach d,$(FIND_LINKS),--find-links $(d)) torch==2.13.0 -e $(1) \
	|| ($(PY) -m pip install --quiet torch==2.13.0 && $(PY) -m pip install --quiet -e $(1))

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	$(call INSTALL,".[dev]")
	# strip notebook outputs on `git add` (executed copies are build products)
	if git rev-parse --git-dir >/dev/null 2>&1; then $(VENV)/bin/nbstripout --install; fi
	touch $(STAMP)

install: $(STAMP)

assets: $(STAMP)
	$(PY) -m tcomp_utils.assets fetch

# the book's browser test (tests/test_book.py) drives Debian's Chromium
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null) \
		|| { echo "the book's browser test needs Chromium at $(CHROMIUM): apt-get install chromium (as root)"; exit 1; }

# the smoke models are trained once, side by side, before the two pytest workers start (so they never train one twice);
# each worker runs torch on one thread (two workers on 2 cores); --dist loadfile keeps a notebook's cells (one kernel) on one worker; the notebooks (the longest files) first, so that no long one starts last
test: assets $(CHROMIUM)
	$(PY) -m tcomp_utils.reproduce --profile smoke --models-only --workers $(WORKERS)
	TCOMP_PROFILE=smoke OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest notebooks tests --nbval-lax --nbval-current-env \
		-p no:cacheprovider -n $(WORKERS) --dist loadfile --durations=10

test-fast: $(STAMP)
	$(PY) -m pytest tests -x -q -m "not slow"

# the reduced points of every spec (its `reduced:` key), recomputed on $(WORKERS) workers and compared with the
# committed rows (tcomp_utils.reproduce prints what reproduced); the other cells keep their committed rows
run: assets
	$(PY) -m tcomp_utils.reproduce --profile $(PROFILE) --workers $(WORKERS); status=$$?; $(MAKE) figures && exit $$status

# make run's path on smoke-sized points: recompute, compare with papermill_runs/smoke, draw every figure and table
verify: assets
	$(PY) -m tcomp_utils.reproduce --profile smoke --workers $(WORKERS) --runs papermill_runs/smoke --figures

reproduce: assets
	for spec in $(SPECS); do $(PY) -m tcomp_utils.sweep $$spec --profile $(PROFILE) $(SWEEP_ARGS) || exit 1; done
	$(MAKE) figures

# JupyterLab only for make lab: the tests and the reproduction run notebooks without it
$(LAB_STAMP): $(STAMP)
	$(call INSTALL,".[dev,lab]")
	touch $(LAB_STAMP)

lab: assets $(LAB_STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

sweep: assets
	$(PY) -m tcomp_utils.sweep $(SPEC) $(SWEEP_ARGS)

figures: $(STAMP)
	$(PY) -m tcomp_utils.figures

bench: assets
	$(PY) benchmarks/bench_factorize.py --out benchmarks/results
	$(PY) benchmarks/bench_quantize.py --out benchmarks/results
	$(PY) benchmarks/bench_inference.py --out benchmarks/results
	$(PY) benchmarks/bench_autoencoder.py --out benchmarks/results
	$(PY) benchmarks/bench_structured.py --out benchmarks/results
	$(PY) benchmarks/bench_training.py --threads 1 --out benchmarks/results
	$(PY) benchmarks/bench_sweep_malloc.py --out benchmarks/results

book: $(STAMP)
	$(PY) -m tcomp_utils.book
