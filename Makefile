# Two entry points (README): `make demo` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[export,openvino,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ad-demo

test: $(STAMP)
	$(PY) -m pytest -q --timeout 600

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --timeout 600

clean:
	rm -rf runs .pytest_cache
