# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv with pip and install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Data: $GRADCAM_DATA_ROOT if set, else the offline copy beside the repo, else ./data (download is tried).
DATA_ROOT ?= $(or $(GRADCAM_DATA_ROOT),$(if $(wildcard ../shared/data/cifar10-jpg),../shared/data/cifar10-jpg,data))
PRESET ?= quick

.PHONY: install install-test demo paper shapes compare bench test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
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

test: install-test
	$(PY) -m pytest -q
