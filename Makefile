# The two README commands: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?=

.PHONY: run test lint typecheck rules pytest bench chaos soak quality sysdeps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-install only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

$(VENV)/.installed-quality: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,quality]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/bridge run $(if $(CONFIG),-c $(CONFIG))

# System packages the tests need (ffmpeg as the independent RTP peer, systemd-analyze,
# unshare for the full-disk test, promtool for the alert rules, espeak-ng and sox for
# the speech material).
sysdeps:
	./scripts/install-system-deps

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check bridge tests bench

typecheck: $(VENV)/.installed-test
	$(VENV)/bin/mypy --strict bridge

# The Prometheus alert rules parse, and fire as their unit tests say (promtool comes
# from scripts/install-system-deps).
rules:
	promtool check rules deploy/prometheus/bridge-rules.yml
	promtool test rules deploy/prometheus/bridge-rules.test.yml

pytest: $(VENV)/.installed-test
	$(VENV)/bin/pytest -q

test: sysdeps lint typecheck rules pytest

bench: $(VENV)/.installed-bench
	$(PY) bench/run_all.py

chaos: $(VENV)/.installed-bench
	$(PY) bench/chaos.py

soak: $(VENV)/.installed-bench
	$(PY) bench/soak.py

# The media-quality matrix against a real daemon (docs/audio-quality.md), ~20 min.
# QUALITY_ARGS=--quick for a few cells; QUALITY_ARGS=--rtp-fabrication for 100 RTP calls.
QUALITY_ARGS ?=
quality: sysdeps $(VENV)/.installed-quality
	$(PY) -m bench.quality.run --save $(QUALITY_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
