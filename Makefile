PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv run test bench check

venv: $(VENV)/.installed

# The venv is built once; the stamp makes `make` reinstall only when a
# requirements file changed since the last successful install.
$(VENV_PYTHON):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "mqsite needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>/dev/null || echo 'missing')." >&2; \
		echo "Point make at a newer one, e.g.: make PYTHON=python3.12 run" >&2; \
		exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install --disable-pip-version-check --quiet -r requirements-dev.txt
	touch $@

run: venv
	$(VENV_PYTHON) scripts/run.py

test: venv
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

bench: venv
	$(VENV_PYTHON) bench/run.py

check: venv
	$(VENV_PYTHON) manage.py check
