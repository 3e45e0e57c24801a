# Versus — every target does its own set-up (`make setup` is idempotent and cheap when done).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Pinned command-line tools from npm (.tools/package.json + its lock): the buf CLI, the KEDA CRD schema models.
TOOLS := .tools
TOOLS_STAMP := $(TOOLS)/node_modules/.installed
BUF := $(TOOLS)/node_modules/.bin/buf
PROTOS ?= protos
# The hashed lock `make setup` installs (locks/: one per role, made by `make locks`).
LOCK ?= locks/dev.txt
# Where pip finds the CPU torch wheel the locks pin (torch==2.13.0+cpu): this machine's wheel directory, or
# elsewhere PyTorch's CPU wheel page, e.g. TORCH_FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/
TORCH_FIND_LINKS ?= $(wildcard /opt/wheels)
PIP_QUIET := --quiet --disable-pip-version-check
FIND_TORCH := $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS))


.PHONY: setup setup-user locks image wheelhouse podman-flags system-deps tools buf-check demo demo-byo demo-shadow lint test test-fast protos bench-vit bench-ranker bench-sd35 bench-vit-backends bench-vit-oip bench-vit-overload bench-perf-analyzer bench-gateway bench-gpu-vit bench-shadow clean help

help:
	@echo "make setup     system packages for the real-component tests (root: apt-get) + make setup-user"
	@echo "make setup-user  the venv from the hashed lock, the two local projects, buf (no root)"
	@echo "make locks     re-make the per-role hashed locks in locks/ (uv pip compile)"
	@echo "make image     build the CPU image with podman (a Debian rootfs made here; no registry)"
	@echo "make demo      build models, start the services, run the demo"
	@echo "make demo-shadow  shadow routes decided on live traffic (Versus vs tritonserver, ~1 min)"
	@echo "make test      linters (ruff, import-linter) + the full test suite"
	@echo "make lint      ruff + the import-linter layer contracts + buf lint/breaking on protos/"
	@echo "make test-fast unit + in-process tests only (-m 'not slow')"
	@echo "make protos    regenerate versus/**/*_pb2*.py(i) from protos/"
	@echo "make bench-vit ViT benchmark -> docs/BENCHMARKS.md"

setup: system-deps setup-user

# Everything that needs no root: the venv and the pinned tools. A component it cannot install (npm, and what
# system-deps installs) is named by the tests that need it, with the command that installs it.
setup-user: $(STAMP)
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory tools; \
	  else echo "warning: no npm: buf is not installed; the contract checks will fail (apt-get install npm)" >&2; fi

tools: $(TOOLS_STAMP)

# npm ci installs exactly the lock; buf's binary arrives in the optional @bufbuild/buf-linux-x64 (or the
# package for this platform). No npm → stop here: the contract checks must not be skipped silently.
$(TOOLS_STAMP): $(TOOLS)/package.json $(TOOLS)/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm is needed to install buf (apt-get install npm)" >&2; exit 1; }
	npm ci --prefix $(TOOLS) --no-audit --no-fund --loglevel=error
	$(BUF) --version >/dev/null
	touch $@

# Real components the tests start themselves, from Debian's packages when missing (root only):
# PostgreSQL (the ranker's PostgreSQL store), Chromium (the report pages in a headless browser) and
# Prometheus (scraping live services; promtool for the alert rules); npm for the pinned tools in .tools/ (buf).
# mmdebstrap, podman and runc build and start the CPU image (make image, tests/test_image.py).
SYSTEM_PACKAGES := postgresql chromium prometheus npm mmdebstrap podman runc
system-deps:
	@missing=""; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	  command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	  for tool in mmdebstrap podman runc; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing$$missing (Debian packages)"; \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
	        || echo "warning: could not install$$missing; the tests that need them will fail, naming them"; \
	    else echo "warning: missing$$missing (not root or no apt-get); the tests that need them will fail"; fi; \
	  fi

# Only hashed pins: the lock with --require-hashes (every transitive pin, one hash per file), then the two local
# projects (editable, --no-deps, built with the lock's setuptools: --require-hashes refuses local projects).
# pip installs uv from its own hashed lines in the lock, and uv the rest (pip takes ~14 min for the dev lock
# here, uv ~15 s); a lock without uv (LOCK=locks/gateway-ranker.txt) is installed by pip alone.
$(STAMP): $(LOCK) pyproject.toml protos/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if grep -q '^uv==' $(LOCK); then \
	  awk '/^uv==/{p=1} p{print; if ($$0 !~ /\\$$/) exit}' $(LOCK) > $(VENV)/uv.lock.txt && \
	  $(VENV)/bin/pip install $(PIP_QUIET) --require-hashes -r $(VENV)/uv.lock.txt && \
	  $(VENV)/bin/uv pip install --quiet --native-tls --python $(PY) --require-hashes $(FIND_TORCH) -r $(LOCK); \
	else $(VENV)/bin/pip install $(PIP_QUIET) --require-hashes $(FIND_TORCH) -r $(LOCK); fi
	$(VENV)/bin/pip install $(PIP_QUIET) --no-deps --no-build-isolation -e ./protos -e .
	$(VENV)/bin/pip check
	touch $(STAMP)

# The per-role locks (scripts/locks.py says which extras each holds); uv comes with the dev lock.
locks: $(STAMP)
	$(PY) scripts/locks.py

# The CPU image, built here with podman on a Debian bookworm rootfs that mmdebstrap makes from Debian's mirror (no
# registry; bookworm's python3 is 3.11, as the locks), from a wheelhouse made on the host: the build needs no
# network. Podman runs with runc and ulimits this machine allows (crun refuses its hybrid cgroups: docs/DEPLOY.md).
IMAGE ?= localhost/versus:0.1.0
BASE_IMAGE := localhost/versus-base:bookworm
ROOTFS := build/rootfs-bookworm.tar
WHEELHOUSE := .wheelhouse/cpu
PODMAN_FLAGS := --runtime runc --ulimit nofile=16384:16384 --ulimit nproc=4096:4096

image: wheelhouse build/base-image.stamp
	podman build $(PODMAN_FLAGS) --network none --build-arg PYTHON_IMAGE=$(BASE_IMAGE) -t $(IMAGE) -f Dockerfile .
	podman image ls $(IMAGE)

podman-flags:
	@echo $(PODMAN_FLAGS)

# The hashed lock's wheels (fetched again only when the lock changes), and our two wheels from the sources as
# they are (.wheelhouse/local, every time).
wheelhouse: $(WHEELHOUSE)/.locked
	rm -rf .wheelhouse/local
	$(PY) scripts/wheels.py .wheelhouse/local

$(WHEELHOUSE)/.locked: locks/image.txt | $(STAMP)
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PY) scripts/wheels.py --lock locks/image.txt $(FIND_TORCH) $(WHEELHOUSE)
	touch $@

$(ROOTFS):
	@command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is not installed (apt-get install mmdebstrap; make setup does, as root)" >&2; exit 1; }
	mkdir -p build
	mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm $(ROOTFS).part.tar
	mv $(ROOTFS).part.tar $@

build/base-image.stamp: $(ROOTFS)
	@command -v podman >/dev/null || { echo "error: podman is not installed (apt-get install podman runc; make setup does, as root)" >&2; exit 1; }
	podman import $(ROOTFS) $(BASE_IMAGE)
	touch $@

demo: setup
	$(VENV)/bin/versus demo

demo-byo: setup  # compare your own deployments: Versus vs tritonserver on the held-out digits
	$(VENV)/bin/versus demo-byo

demo-shadow: setup  # shadow routes on live traffic: Versus' digits ViT mirrored to tritonserver and to a weaker network
	$(VENV)/bin/versus demo shadow

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	@$(MAKE) --no-print-directory buf-check

# The contracts: buf's lint rules (exceptions and their reasons in protos/buf.yaml), then no breaking change
# against the released image protos/buf.baseline.binpb. PROTOS= points it at another copy (tests/test_buf.py).
buf-check:
	@test -x $(BUF) || { echo "error: buf is not installed ($(BUF)): run make setup" >&2; exit 1; }
	cd $(PROTOS) && $(abspath $(BUF)) lint
	cd $(PROTOS) && $(abspath $(BUF)) breaking --against buf.baseline.binpb

test: setup lint
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

protos: setup
	$(PY) scripts/gen_protos.py

bench-vit: setup
	$(PY) bench/vit.py

bench-ranker: setup
	$(PY) bench/ranker.py

bench-sd35: setup
	$(PY) bench/sd35.py

bench-vit-backends: setup
	$(PY) bench/vit_backends.py

bench-vit-oip: setup
	$(PY) bench/vit_oip.py

bench-vit-overload: setup
	$(PY) bench/vit_overload.py

bench-perf-analyzer: setup  # as root: makes a Debian 13 chroot with perf_analyzer on first use
	$(PY) bench/perf_analyzer.py

bench-gateway: setup
	$(PY) bench/gateway.py

bench-shadow: setup
	$(PY) bench/shadow.py

bench-gpu-vit: setup  # on a machine with a CUDA GPU
	$(PY) bench/gpu_vit.py

clean:
	rm -rf $(VENV) .models .pytest_cache $(TOOLS)/node_modules .wheelhouse build
