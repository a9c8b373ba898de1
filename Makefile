# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install, run the whole benchmark on the embedded default (tiny models, CPU)
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: demo test lint dry-run-paper bench clean profiles

# uv installs the stack and byte-compiles it on every core in well under half of pip's time (bench/README.md).
# Compiling matters: where PYTHONDONTWRITEBYTECODE is set, nothing is compiled on first import and every
# job would recompile torch.
# tools/pip_sources.py hands uv the mirrors, wheel folders and constraints that pip is configured with;
# where uv still cannot install (a TLS or login setup only pip knows), pip and compileall take over.
# Like pip, compileall leaves alone files this Python cannot compile (torch ships 3.12-only test helpers).
UV_VERSION := 0.13.9
UV := $(BIN)/uv pip install --python $(BIN)/python --quiet

$(STAMP): requirements.lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	sources="$$($(BIN)/python tools/pip_sources.py)" \
	  && $(UV) --compile-bytecode $$sources -r requirements.lock.txt && $(UV) $$sources --no-deps -e . \
	  || { echo "uv could not install (see above); installing with pip instead" >&2; \
	       $(BIN)/pip install --quiet --no-compile -r requirements.lock.txt \
	       && { $(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true; } \
	       && $(BIN)/pip install --quiet --no-deps -e .; }
	touch $(STAMP)

demo: $(STAMP)
	# No GPU on a laptop: the GPU rules run on the CPU, as many at a time as there are cores.
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --resources gpu=$(CORES)
	$(BIN)/snakemake --report report.html
	@echo "Tables: results/runs/demo/tables/*.parquet and *.tex; figures: results/runs/demo/analysis, results/runs/demo/interpolation"
	@echo "Report: report.html (open it in a browser)"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/snakemake --lint

# Link profiles/slurm and profiles/local into ~/.config/snakemake, so `snakemake --profile slurm` works.
profiles:
	$(PYTHON) tools/install_profiles.py

dry-run-paper: $(STAMP)
	$(BIN)/snakemake -n --quiet rules --configfile config/paper.yaml

bench: $(STAMP)
	$(BIN)/python bench/train_step.py

clean:
	rm -rf results resources logs benchmarks .snakemake report.html
