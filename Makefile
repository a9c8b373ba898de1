# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install, run the whole benchmark on the embedded default (tiny models, CPU)
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: demo test lint dry-run-paper bench clean

# pip byte-compiles what it installs on one core (52 of its 113 s here); compileall does the same on
# every core. Like pip, it leaves alone a file this Python cannot compile (torch ships Python 3.12-only
# test helpers), hence `|| true`: such a file fails only if something imports it.
$(STAMP): requirements.lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile -r requirements.lock.txt
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	# No GPU on a laptop: the GPU rules run on the CPU, as many at a time as there are cores.
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --resources gpu=$(CORES)
	@echo "Tables: results/tables/*.parquet and *.tex"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

dry-run-paper: $(STAMP)
	$(BIN)/snakemake -n --quiet rules --configfile config/paper-sdxl.yaml

bench: $(STAMP)
	$(BIN)/python bench/train_step.py

clean:
	rm -rf results resources logs benchmarks .snakemake
