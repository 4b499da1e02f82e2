# fabrique-edge: `make demo` runs the simulated trailer line, `make test` the test suite.
# Both work on a fresh clone: they create .venv and install the Debian packages the
# tests need (as root with apt-get; otherwise they print the exact command to run).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT_PACKAGES := systemd mosquitto mosquitto-clients gcc-avr avr-libc simavr libsimavr-dev libelf-dev pkg-config chromium nats-server nginx libnginx-mod-stream

.PHONY: demo test lint bench system-deps venv firmware clean help

help:
	@echo "make demo     a short day at the simulated trailer: 12 visitors, one fault of each kind"
	@echo "make test     install what is missing, build the firmware, run the test suite"
	@echo "make lint     ruff over the tree"
	@echo "make bench    run the benchmarks in bench/ (JSON on stdout)"
	@echo "make clean    remove .venv and build products"

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || { \
	      apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed

firmware: system-deps
	@if [ -f firmware_bridge/firmware/Makefile ]; then $(MAKE) -s -C firmware_bridge/firmware; fi

demo: system-deps venv
	$(BIN)/edge demo --visitors 12 --chaos all

test: system-deps venv firmware
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .

bench: system-deps venv firmware
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .hypothesis
	@if [ -f firmware_bridge/firmware/Makefile ]; then $(MAKE) -s -C firmware_bridge/firmware clean; fi
