PYTHON ?= python3
# One venv per Python; CI keeps a second one beside it, e.g.
# `make test PYTHON=python3.12 VENV=.venv-py312`.
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=
PY_VERSION := import sys; print("%d.%d" % sys.version_info[:2])

.PHONY: venv venv-python run test bench check

venv: $(VENV)/.installed

# The venv is built once; the stamp makes `make` reinstall only when a
# requirements file changed since the last successful install.
$(VENV_PYTHON):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "mqsite needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>/dev/null || echo 'missing')." >&2; \
		echo "Point make at a newer one, e.g.: make PYTHON=python3.12 run" >&2; \
		exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(VENV_PYTHON) venv-python
	$(VENV_PYTHON) -m pip install --disable-pip-version-check --quiet -r requirements-dev.txt
	touch $@

# A PYTHON given by hand must be the venv's: an existing venv built with
# another Python would otherwise run silently (and with another Django).
venv-python:
ifneq ($(filter command line environment,$(origin PYTHON)),)
	@[ ! -x $(VENV_PYTHON) ] || [ "$$($(VENV_PYTHON) -c '$(PY_VERSION)')" = "$$($(PYTHON) -c '$(PY_VERSION)' 2>/dev/null)" ] || { \
		echo "$(VENV) has Python $$($(VENV_PYTHON) -c '$(PY_VERSION)'); PYTHON=$(PYTHON) is $$($(PYTHON) --version 2>/dev/null || echo 'missing')." >&2; \
		echo "Remove $(VENV) to rebuild it, or give that Python a venv of its own: make VENV=.venv-other PYTHON=$(PYTHON) ..." >&2; \
		exit 1; }
endif

run: venv
	$(VENV_PYTHON) scripts/run.py

test: venv
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

bench: venv
	$(VENV_PYTHON) bench/run.py

check: venv
	$(VENV_PYTHON) manage.py check
