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

.PHONY: run test test-cuda install install-cuda schema bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	$(PIP) install --quiet --disable-pip-version-check $(TORCH)
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev,docs]'
	$(PIP) install --quiet --disable-pip-version-check --no-deps $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

install: $(STAMP)

# The whole path on a built-in default: every example spec validated and summarised, then a
# small decoder trained on 2-digit addition (about a minute on 2 cores), saved, and asked.
run: $(STAMP)
	$(VENV)/bin/txblocks summary examples/specs/*.yaml --seq-len 128
	$(PY) examples/python/assemble.py
	$(VENV)/bin/txblocks train examples/specs/gpt-tiny.yaml --task addition --steps 2000 \
		--batch-size 64 --lr 3e-3 --threads 1 --out build/gpt-tiny.safetensors
	@for prompt in 12+34= 99+1= 58+67= 7+8=; do \
		$(VENV)/bin/txblocks generate build/gpt-tiny.safetensors --prompt $$prompt \
			--max-new-tokens 4 --eos 10; \
	done
	@echo "the same model with int8 weights (torchao):"
	@$(VENV)/bin/txblocks generate build/gpt-tiny.safetensors --prompt 47+38= --max-new-tokens 4 \
		--eos 10 --quantize int8

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests $(addsuffix /tests,$(PLUGINS))

# On a machine with an NVIDIA GPU: a torch and an xformers that load together (the `cuda`
# extra: xformers 0.0.35 with torch 2.10 and CUDA 12.8), instead of the CPU torch above.
install-cuda: $(PY)
	$(PIP) install --quiet --disable-pip-version-check -e '.[cuda,dev]' 'xformers==0.0.35' 'torch==2.10.*'
	$(PIP) install --quiet --disable-pip-version-check --no-deps $(addprefix -e ,$(PLUGINS))
	$(VENV)/bin/txblocks doctor
	touch $(STAMP)

# The GPU checks: every test marked `cuda` (they skip, saying why, without a GPU).
test-cuda: $(STAMP)
	$(PY) -m pytest -q -m cuda -rs tests $(addsuffix /tests,$(PLUGINS))

# Timings against Hugging Face and x-transformers, by hand (never part of `make test`).
bench: $(STAMP)
	$(PIP) install --quiet --disable-pip-version-check -e '.[bench]'
	$(PY) benchmarks/speed.py --train --compile
	$(PY) benchmarks/speed.py --device cuda
	$(PY) benchmarks/ablations.py
	$(PY) benchmarks/build.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/attention_scaling.py

# The documentation site into site/: the guides, the README, an API reference from the
# docstrings, and pages generated from the live registry (spec reference, component catalogue,
# every example spec with its `txblocks draw` diagram; docs/gen/pages.py). --strict: a broken
# link, anchor or reference fails. tests/test_docs_site.py runs the same build.
docs: $(STAMP)
	$(PIP) install --quiet --disable-pip-version-check -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict

schema: $(STAMP)
	TXBLOCKS_DISABLE_PLUGIN_AUTOLOAD=1 $(VENV)/bin/txblocks schema -o schemas/model.schema.json

clean:
	rm -rf $(VENV) build *.egg-info
