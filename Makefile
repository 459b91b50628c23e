# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv with pip and install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Data: $GRADCAM_DATA_ROOT if set, else the offline copy beside the repo, else ./data (download is tried).
DATA_ROOT ?= $(or $(GRADCAM_DATA_ROOT),$(if $(wildcard ../shared/data/cifar10-jpg),../shared/data/cifar10-jpg,data))
PRESET ?= quick

.PHONY: install install-test demo paper test

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

test: install-test
	$(PY) -m pytest -q
