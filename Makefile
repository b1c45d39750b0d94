# Set-up and everyday commands. Each target creates .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# A CPU build of torch that lies on the local disk; a plain `torch` would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
# First-party plugins, installed (editable) like any third-party plugin. The template is
# not installed: it is a starting point to copy (`txblocks new-plugin NAME`).
PLUGINS := $(wildcard plugins/txblocks-*)

.PHONY: run test install schema bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	$(PIP) install --quiet --disable-pip-version-check $(TORCH)
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'
	$(PIP) install --quiet --disable-pip-version-check --no-deps $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/txblocks summary examples/specs/*.yaml --seq-len 128
	$(PY) examples/python/assemble.py

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests $(addsuffix /tests,$(PLUGINS))

schema: $(STAMP)
	TXBLOCKS_DISABLE_PLUGIN_AUTOLOAD=1 $(VENV)/bin/txblocks schema -o schemas/model.schema.json

clean:
	rm -rf $(VENV) build *.egg-info
