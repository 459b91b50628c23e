# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv with pip and install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Data: $GRADCAM_DATA_ROOT if set, else the offline copy beside the repo, else ./data (download is tried).
DATA_ROOT ?= $(or $(GRADCAM_DATA_ROOT),$(if $(wildcard ../shared/data/cifar10-jpg),../shared/data/cifar10-jpg,data))
PRESET ?= quick

.PHONY: install install-test demo paper shapes compare bench gpu-data test test-fast wheel-check docs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/gradcam-repro run --preset $(PRESET) --data-root $(DATA_ROOT)

paper: install
	$(VENV)/bin/gradcam-repro run --preset paper --data-root $(DATA_ROOT)

# The synthetic shapes set (object masks): localisation numbers for `compare`.
shapes: install
	$(VENV)/bin/gradcam-repro run --preset $(PRESET) --dataset shapes --out runs/$(PRESET)-shapes

# Every CAM method x layer, pixel baselines, sanity check and deletion/insertion on runs/$(PRESET)
# (plus localisation when `make shapes` has been run); adds a section to runs/$(PRESET)/REPORT.md.
compare: install
	$(VENV)/bin/gradcam-repro compare runs/$(PRESET) --data-root $(DATA_ROOT) \
		$(if $(wildcard runs/$(PRESET)-shapes/metrics.json),--shapes-run runs/$(PRESET)-shapes)

# A finished paper run is added to the benchmark where it exists. `make bench ACCURACY=1` also trains
# the quick preset's baseline in bf16 and in fp32 (about 15 min on 2 cores; reused once finished).
BENCH_RUNS := $(if $(wildcard runs/paper/metrics.json),--paper-run runs/paper) \
	$(if $(ACCURACY),--accuracy-check runs/bench-accuracy)

bench: install-test
	$(PY) -m benchmarks.bench --data-root $(DATA_ROOT) $(BENCH_RUNS)

# CIFAR-10 cut into .gpu-data/part-N.pt for a lent GPU machine (no network, 64 MiB a call): send one part per
# device call, then run `bash benchmarks/gpu_evidence.sh tree full paper bench` there (docs: speed).
gpu-data: install
	$(PY) -m benchmarks.gpu_evidence pack --data-root $(DATA_ROOT)

# Two workers on the 2 cores (tests/conftest.py says how the work is split); --durations: the CI log names the
# slowest tests (CI should stay under 25 min).
test: install-test
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=15

# The fast tier: every test not marked slow (no training beyond a few batches, no Ray, no child interpreters).
test-fast: install-test
	$(PY) -m pytest -q -n 2 --dist loadscope -m "not slow"

# The built wheel installed in a fresh venv (dependencies borrowed from $(VENV)), run from outside the repo:
# --version and the shapes smoke run, whose REPORT.html must carry the packaged CSS (2-4 min on 2 shared cores).
wheel-check: install-test
	PY=$(PY) bash .ci/wheel_check

# The documentation site (mkdocs.yml, docs/): MkDocs Material + mkdocstrings, built into site/.
docs: $(VENV)/.installed-docs
	$(VENV)/bin/mkdocs build --strict
