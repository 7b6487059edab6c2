# The project's commands. The environment its tools need is set here, not in your shell:
#   make test    install what the tests need (.venv, .venv-checkov, .venv-awscli, .venv/node),
#                then run ruff and the whole test suite (CI runs exactly this; see .ci/run)
#   make test-fast  the everyday subset, in about 3 minutes: ruff and the tests not marked slow
#                (no emulated deploy, no real clusters of processes, no scanners; tests/conftest.py)
#   make test-busy  `make test` while busy processes keep the cores loaded (BUSY=2 of them):
#                no test may depend on how fast the machine is
#   make mutation  mutation testing of the modules tests/mutation.py names (mutmut), with each
#                module's score; about 30 minutes, not part of `make test` (docs/testing.md)
#   make cdktf   only the pinned cdktf CLI, as .venv/bin/cdktf (for deploying)
# Needs: python3 (3.11, with venv), Node.js with npm, Terraform 1.11 on PATH.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.ONESHELL:

# jsii (behind cdktf) prints a Node.js end-of-life banner on Node 20, and the cdktf CLI calls
# HashiCorp's checkpoint service unless told not to.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CHECKPOINT_DISABLE := 1

PYTHON ?= python3
CDKTF_CLI := cdktf-cli@0.21.0
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

.PHONY: test test-fast test-busy mutation cdktf

test: $(VENV)/.dev-installed .venv-checkov/.installed .venv-awscli/.installed $(VENV)/bin/cdktf
	export PATH="$(BIN):$$PATH"
	ruff check .
	ruff format --check .
	# Two test processes, a whole file each: most tests wait on subprocesses, and a file's
	# tests (the emulated deploy's, in order) share its fixtures.
	python -m pytest -q -n 2 --dist loadfile

test-fast: $(VENV)/.dev-installed $(VENV)/bin/cdktf
	export PATH="$(BIN):$$PATH"
	ruff check .
	ruff format --check .
	python -m pytest -q -n 2 -m "not slow"

mutation: $(VENV)/.dev-installed
	export PATH="$(BIN):$$PATH"
	python tests/mutation.py

BUSY ?= 2
test-busy:
	busy() { while :; do :; done; }
	pids=()
	for _ in $$(seq $(BUSY)); do busy & pids+=($$!); done
	trap 'kill "$${pids[@]}"' EXIT
	$(MAKE) test

cdktf: $(VENV)/bin/cdktf

$(VENV)/bin/python:
	$(PYTHON) -c 'import sys; sys.exit(None if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

# Stamps: a changed requirements file reinstalls; an unchanged one costs nothing.
$(VENV)/.dev-installed: requirements-dev.txt requirements.txt requirements-laptop.txt image/requirements.txt pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

# checkov pins many packages of its own: it gets a virtual environment to itself.
.venv-checkov/.installed: requirements-checkov.txt
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet -r requirements-checkov.txt
	touch $@

# The AWS CLI the nodes run, for the emulated deploy: its botocore pin differs from boto3's.
.venv-awscli/.installed: requirements-awscli.txt
	$(PYTHON) -m venv .venv-awscli
	.venv-awscli/bin/pip install --quiet -r requirements-awscli.txt
	touch $@

# The CLI goes into the project's venv, not into npm's global folder (no sudo, no clash with
# another project's version). The wrapper sets what the CLI needs, and a umask under which
# outputs.json and terraform.<stack>.tfstate, which hold the cluster's keys, are private.
$(VENV)/bin/cdktf: | $(VENV)/bin/python
	npm install --prefix $(VENV)/node --no-fund --no-audit --loglevel=error $(CDKTF_CLI)
	printf '%s\n' '#!/bin/sh' \
	  '# Written by `make cdktf`: the pinned cdktf CLI with the environment this project needs.' \
	  '# The venv comes first on PATH: the CLI runs `python main.py` with its interpreter.' \
	  'umask 077' \
	  'bin=$$(cd "$$(dirname "$$0")" && pwd)' \
	  'export PATH="$$bin:$$PATH" JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 CHECKPOINT_DISABLE=1' \
	  'exec "$$bin/../node/node_modules/.bin/cdktf" "$$@"' >$@
	chmod +x $@
