# Two commands: `make run` and `make test`. Everything else is set-up they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test sysdeps lint typecheck pytest bench clean

# pylibfdt has no wheels: it builds libfdt from source and needs swig and a C compiler.
# dtc (device-tree-compiler) lets the tests decode our FDTs with the reference tool.
# chromium: the HTML report is rendered and screenshotted in headless Chromium by the tests.
sysdeps:
	@missing=""; \
	command -v swig >/dev/null || missing="$$missing swig"; \
	command -v dtc  >/dev/null || missing="$$missing device-tree-compiler"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v cc   >/dev/null || missing="$$missing gcc"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/luosim demo

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy

pytest: $(VENV)/.installed-dev
	$(VENV)/bin/pytest -n 2 --dist loadfile

test: sysdeps lint typecheck pytest

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/explore_bench.py

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
