# dancesampler: the front door. Every target is a thin call of a Python entry point.
# `make` alone prints this help.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The venv is rebuilt only when pyproject.toml (the requirements) changes.
REQ_HASH := $(shell $(PYTHON) -c "import hashlib;print(hashlib.sha256(open('pyproject.toml','rb').read()).hexdigest()[:12])")
VENV_OK  := $(VENV)/.requirements-$(REQ_HASH)
# On a Pi, picamera2 comes from apt: the venv must see the system's packages.
VENV_FLAGS := $(shell $(PYTHON) -c "import picamera2" >/dev/null 2>&1 && echo --system-site-packages)
# Debian packages the build needs: pyalsaaudio compiles against libasound2.
SYSTEM_PACKAGES := libasound2-dev gcc

SECONDS ?=
NAME    ?= mymodel
CONFIG  ?= config/train.yaml

.DEFAULT_GOAL := help
.PHONY: help run test test-hw train export default-model check-bundle system-packages clean

help:  ## print this help
	@echo "dancesampler — make TARGET"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: $(VENV_OK).device  ## play live: Pi camera and ALSA where present, else synthetic dancer into a WAV (SECONDS=N to stop)
	$(PY) -m device run $(if $(SECONDS),--seconds $(SECONDS),)

test: $(VENV_OK).all  ## run the whole test suite (what CI runs)
	$(PY) -m pytest

test-hw: $(VENV_OK).device  ## on a Raspberry Pi: the tests that need its camera, sound card and GPIO
	$(PY) -m pytest -m hw tests/hw

train: $(VENV_OK).all  ## train a model on the demo data into runs/NAME (CONFIG=…)
	$(PY) -m train_host train --config $(CONFIG) --out runs/$(NAME)

export: $(VENV_OK).all  ## write the int8 bundle models/NAME.dsb from runs/NAME
	$(PY) -m train_host export runs/$(NAME) --out models/$(NAME).dsb

default-model: $(VENV_OK).all  ## rebuild the shipped factory model models/default.dsb, reproducibly
	$(PY) -m train_host default-model --config config/train.yaml --out models/default.dsb

check-bundle: $(VENV_OK).device  ## validate the configured bundle and run a test inference
	$(PY) -m device check-bundle

system-packages:  ## install (as root) or name the Debian packages the build needs
	@command -v dpkg-query >/dev/null || exit 0; \
	missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
	  echo "make: missing system packages:$$missing — run: sudo apt-get install$$missing" >&2; exit 1; \
	fi

$(VENV_OK):
	@$(MAKE) --no-print-directory system-packages
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

$(VENV_OK).device: $(VENV_OK)
	$(PY) -m pip install -q -e '.[device]'
	touch $@

$(VENV_OK).all: $(VENV_OK)
	$(PY) -m pip install -q -e '.[device,host,dev]'
	touch $@ $(VENV_OK).device

clean:  ## remove the venv and run outputs (never models/ or recorded takes)
	rm -rf $(VENV) out .pytest_cache
