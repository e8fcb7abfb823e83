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
# Debian packages the tests of pull and deploy use: a real OpenSSH server on
# loopback, and rsync; and debootstrap and systemd-nspawn, which boot the box
# in a container with real systemd (tests/platform/test_box.py). Installed
# when run as root (CI); elsewhere named, and those
# tests skip saying why (installing openssh-server starts an sshd on port 22).
TEST_PACKAGES := rsync openssh-client openssh-server debootstrap systemd-container chromium chromium-driver

# $(call ensure_packages,PACKAGES,required|optional): apt-get install the missing
# ones as root; otherwise name them (and fail, when required).
define ensure_packages
command -v dpkg-query >/dev/null || exit 0; \
missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
done; \
[ -z "$$missing" ] && exit 0; \
if [ "$$(id -u)" = 0 ]; then \
  echo "installing system packages:$$missing"; \
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
elif [ "$(2)" = required ]; then \
  echo "make: missing system packages:$$missing; run: sudo apt-get install$$missing" >&2; exit 1; \
else \
  echo "make: note: the SSH, container and browser tests will skip without:$$missing (sudo apt-get install$$missing)" >&2; \
fi
endef

# $(call q,VALUE): VALUE as one shell word, whatever it holds; $(call qs,VALUES):
# each whitespace-separated word as its own. What a person types after make never
# runs as shell (make deploy PI='x; cmd' asks for a box called "x;").
q  = '$(subst ','\'',$(1))'
qs = $(foreach w,$(1),$(call q,$(w)))

SECONDS ?=
NAME    ?= mymodel
CONFIG  ?= config/train.yaml

.DEFAULT_GOAL := help
.PHONY: help run host status test test-hw test-arm64 test-box train export default-model pull-data wheels deploy flash-model provision bench check-bundle system-packages test-packages clean

help:  ## print this help
	@echo "dancesampler — make TARGET"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: $(VENV_OK).device  ## play live: Pi camera and ALSA where present, else synthetic dancer into a WAV (SECONDS=N to stop)
	$(PY) -m device run $(if $(SECONDS),--seconds $(call q,$(SECONDS)),)

host: $(VENV_OK).all  ## install the host tools in .venv: training, export and its checks in both runtimes, evaluation

test: $(VENV_OK).all test-packages  ## run the whole test suite (what CI runs)
	$(PY) -m tests.platform.prepare box
	$(PY) -m pytest

test-box: $(VENV_OK).all test-packages  ## only the box in a container with real systemd (part of make test)
	$(PY) -m tests.platform.prepare box
	$(PY) -m pytest -s -p no:cacheprovider tests/platform/test_box.py

# Debian packages the arm64 platform test uses: a bookworm root, entered with
# systemd-nspawn, its programs run by qemu-user through binfmt_misc.
ARM64_PACKAGES := debootstrap systemd-container qemu-user-static binfmt-support

test-arm64: $(VENV_OK).all  ## the release on Debian bookworm arm64 under qemu: device tests, check-bundle, a short run
	@$(call ensure_packages,$(ARM64_PACKAGES),required)
	@[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
	@command -v update-binfmts >/dev/null && update-binfmts --enable qemu-aarch64 2>/dev/null || true
	$(PY) -m firmware_tools release --wheels
	$(PY) -m tests.platform.prepare arm64
	$(PY) -m pytest -m arm64 -s -p no:cacheprovider tests/platform

test-hw: $(VENV_OK).device  ## on a Raspberry Pi: the tests that need its camera, sound card and GPIO
	$(PY) -m pytest -m hw tests/hw

DATA ?=
train: $(VENV_OK).all  ## train runs/NAME on the takes in DATA=DIR… (none: the synthetic demo takes; CONFIG=…)
	$(PY) -m train_host train --config $(call q,$(CONFIG)) --out $(call q,runs/$(NAME)) $(if $(DATA),--data $(call qs,$(DATA)),)

export: $(VENV_OK).all  ## write the int8 bundle models/NAME.dsb from runs/NAME
	$(PY) -m train_host export $(call q,runs/$(NAME)) --out $(call q,models/$(NAME).dsb)

default-model: $(VENV_OK).all  ## rebuild the shipped factory model models/default.dsb, reproducibly
	$(PY) -m train_host default-model --config config/train.yaml --out models/default.dsb

PI ?=
pull-data: $(VENV_OK).device  ## copy new takes from the box PI=user@host into sessions/, verified (DELETE=1: then remove them there)
	@test -n $(call q,$(PI)) || { echo "make: say which box: make pull-data PI=user@host" >&2; exit 2; }
	$(PY) -m firmware_tools pull-data $(call q,$(PI)) $(if $(DELETE),--delete-after,)

BUNDLE ?= models/$(NAME).dsb
wheels: $(VENV_OK).device  ## fetch the box's aarch64/CPython 3.11 wheels into out/ (needs PyPI; again when the pins change)
	$(PY) -m firmware_tools release --wheels

deploy: $(VENV_OK).device  ## put this tree on the box PI=user@host (several: PI="a b"); rolls back if it does not come up
	@test -n $(call q,$(PI)) || { echo "make: say which box: make deploy PI=user@host" >&2; exit 2; }
	$(PY) -m firmware_tools deploy $(call qs,$(PI))

status: $(VENV_OK).device  ## one row per box PI="a b …": release, voice, state, uptime, takes, last error
	@test -n $(call q,$(PI)) || { echo "make: say which boxes: make status PI=\"user@box1 user@box2\"" >&2; exit 2; }
	$(PY) -m firmware_tools status $(call qs,$(PI))

flash-model: $(VENV_OK).device  ## copy BUNDLE=models/NAME.dsb to the box PI=user@host, checked there first
	@test -n $(call q,$(PI)) || { echo "make: say which box: make flash-model BUNDLE=… PI=user@host" >&2; exit 2; }
	$(PY) -m firmware_tools flash-model $(call q,$(BUNDLE)) $(call qs,$(PI))

provision: $(VENV_OK).device  ## make a fresh Pi PI=user@host ready for deploys (READ_ONLY=1: overlay root)
	@test -n $(call q,$(PI)) || { echo "make: say which box: make provision PI=user@host" >&2; exit 2; }
	$(PY) -m firmware_tools provision $(call qs,$(PI)) $(if $(READ_ONLY),--read-only-root,)

bench: $(VENV_OK).device  ## measure each stage's share of the delay from a move to its sound
	$(PY) -m device bench

check-bundle: $(VENV_OK).device  ## validate the configured bundle and run a test inference
	$(PY) -m device check-bundle

system-packages:  ## install (as root) or name the Debian packages the build needs
	@$(call ensure_packages,$(SYSTEM_PACKAGES),required)

test-packages:  ## install (as root) or name the Debian packages the SSH tests use
	@$(call ensure_packages,$(TEST_PACKAGES),optional)

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
