# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates its own virtual environment and installs what it needs.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Programs the interoperability tests talk to (Debian packages).
DEBIAN_PACKAGES := qemu-system-x86 socat systemd wrk
DEBIAN_PROGRAMS := qemu-system-x86_64 socat systemd-socket-activate wrk

.PHONY: all test lint typecheck unit demo demo-upgrade demo-qemu-update bench stress fuzz debian-packages qemu-roots interop-qemu interop-qemu10 clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs the peers the tests use when they are missing and we are root.
debian-packages:
	@missing=""; for p in $(DEBIAN_PROGRAMS); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null; \
	  else \
	    echo "not root: the tests that need$$missing will be skipped"; \
	  fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check fdchannel tests examples bench
	$(VENV)/bin/ruff format --check fdchannel tests examples bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy fdchannel tests bench examples

# One pytest over tests/, the QEMU matrix included: as root the roots are
# built or reused first and named to the tests (see QEMU_CACHE below);
# otherwise a block on stderr and pytest's summary say which rows skipped.
unit: $(STAMP) debian-packages
	$(PY) $(QEMU_CACHE) run --matrix $(FDCHANNEL_QEMU_MATRIX) -- $(PY) -m pytest -p tests.interop.matrix

test: lint typecheck unit

demo: $(STAMP)
	$(PY) examples/live_upgrade.py $(DEMO_ARGS)

# A real HTTP server (uvicorn by default) upgraded 20 times while wrk sends it
# 1000 requests/s; fails on any failed upgrade or request. Another server:
# make demo-upgrade DEMO_UPGRADE_ARGS="--server hypercorn --backend trio"
# (uvicorn, hypercorn, aiohttp, anyio); as PID 1 of a new PID namespace under
# fdchannel run (root): make demo-upgrade DEMO_UPGRADE_ARGS=--pid1
demo-upgrade: $(STAMP) debian-packages
	$(PY) examples/upgrade_demo.py $(DEMO_UPGRADE_ARGS)

# As root the QEMU roots are found (or built) for the qemu-update figure.
bench: $(STAMP)
	$(PY) $(QEMU_CACHE) run --matrix auto -- $(PY) -m bench

# The property tests with 100 times their examples: over a million inputs.
FUZZ_TESTS := tests/test_address.py tests/test_channel.py tests/test_runs.py tests/codecs/test_fuzz.py tests/cli/test_fuzz_args.py tests/test_public_errors.py
fuzz: $(STAMP)
	FDCHANNEL_FUZZ_SCALE=100 $(PY) -m pytest -q $(FUZZ_TESTS)

# 1,000 concurrent peers passing descriptors, 100 concurrent handoffs; nothing may be left.
stress: $(STAMP)
	$(PY) -m bench.stress

# The QEMU matrix: fdchannel against real QEMUs doing cpr-transfer, every
# way, on QEMU 10.0 and 11.1 and across them; part of `make test` when run as
# root. Neither QEMU is in Debian 12: each runs with chroot from a Debian 13
# root (10.0: debootstrap of trixie; 11.1: a `cp -ax` copy of that plus
# trixie-backports), built on first use (about 85 MB downloaded, 820 MiB,
# 1.5 minutes here) into FDCHANNEL_QEMU_CACHE, outside the clone, and reused
# until the archive offers another QEMU: the tests take about 70 s then.
# FDCHANNEL_QEMU_MATRIX: auto (run it when root), skip, or require (fail
# unless it runs). A version-by-test table closes the run. See docs/interop.md.
FDCHANNEL_QEMU_CACHE ?= /var/cache/fdchannel
FDCHANNEL_QEMU_MATRIX ?= auto
QEMU_CACHE := -m tests.interop.qemu_cache --cache $(FDCHANNEL_QEMU_CACHE)
# The cpr-exec test (QEMU 11.1, through `fdchannel probe --cpr-exec`) joins when present.
INTEROP_QEMU_TESTS := tests/interop/test_qemu_versions.py tests/interop/test_qemu_update.py $(wildcard tests/interop/test_qemu_cpr_exec.py)
INTEROP_PYTEST := $(PY) -m pytest -q -p tests.interop.matrix
define need_root
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "make $@ must run as root (debootstrap, mount --bind, chroot); try: sudo make $@" >&2; \
	  exit 1; \
	fi
endef

# Builds or reuses the cached roots and prints the variables naming them
# (the standard library is enough: no virtual environment needed).
qemu-roots:
	$(need_root)
	$(PYTHON) $(QEMU_CACHE) ensure

# The QEMU matrix alone.
interop-qemu: $(STAMP)
	$(need_root)
	$(PY) $(QEMU_CACHE) run --matrix require -- $(INTEROP_PYTEST) $(INTEROP_QEMU_TESTS)

# The QEMU 10.0 column only: one root, no backports.
interop-qemu10: $(STAMP)
	$(need_root)
	$(PY) $(QEMU_CACHE) --versions 10 run --matrix require -- $(INTEROP_PYTEST) tests/interop/test_qemu_versions.py

# A running guest moved live from QEMU 10.0 to QEMU 11.1 by `fdchannel qemu-update`:
# each step, the guest's downtime, and proof that its memory was never copied.
# Runs on the matrix's roots, built or reused as `make test` does (root only).
demo-qemu-update: $(STAMP)
	$(need_root)
	$(PY) $(QEMU_CACHE) run --matrix require -- $(PY) examples/qemu_update_demo.py

clean:
	rm -rf $(VENV) build dist *.egg-info
