# Two set-up commands (see README): `make demo` and `make test`.
# torch is installed pinned, first, so nothing later pulls a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
# everything a run writes stays inside the work tree
export DS_ACCELERATOR ?= cpu
export RAY_USAGE_STATS_ENABLED := 0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export TOKENIZERS_PARALLELISM := false

.PHONY: install system-deps demo test test-fast bench

install: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[test]'
	touch $@

# the main job end to end on the embedded default: demo data, 2 Ray workers, ZeRO-2, export, evaluation
demo: install
	$(VENV)/bin/rrg train configs/demo.yaml
	$(VENV)/bin/rrg eval configs/demo.yaml --checkpoint latest

# system tools the tests use for real: headless Chromium (HTML report), Java (METEOR, PTB tokenizer),
# SLURM + munge (a one-machine SLURM cluster for the submit tests)
system-deps:
	@command -v chromium >/dev/null && command -v java >/dev/null && command -v slurmctld >/dev/null && command -v munged >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium default-jre-headless slurm-wlm munge >/dev/null; \
	  else echo "install chromium, a Java runtime, SLURM and munge (apt-get install chromium default-jre-headless slurm-wlm munge)"; exit 1; fi; }

# the whole suite, slow end-to-end tests included (CI runs exactly this)
test: install system-deps
	$(PY) -m pytest -v --durations=0 -n 2 --dist loadfile --no-loadscope-reorder

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(VENV)/bin/rrg bench loader configs/demo.yaml
	$(VENV)/bin/rrg bench packing configs/demo.yaml
	$(VENV)/bin/rrg bench train configs/demo.yaml
	$(VENV)/bin/rrg bench checkpoint configs/demo.yaml
	$(VENV)/bin/rrg bench eval configs/demo.yaml
	$(VENV)/bin/rrg bench build configs/demo.yaml
# kg attach on the Ray pool vs one process per core: the R2GenKG demo shards and KG (made when missing)
	$(VENV)/bin/rrg demo-data configs/r2genkg_demo.yaml
	test -f data/r2genkg_demo/shards/assets/kg/asset.json || $(VENV)/bin/rrg kg build configs/r2genkg_demo.yaml
	$(VENV)/bin/rrg bench kg configs/r2genkg_demo.yaml
