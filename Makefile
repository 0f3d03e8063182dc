# natkit developer tasks (GNU make).
#
#   make run     create the venv, install natkit from the hashed lock, start the server
#   make test    create the venv, install the dev lock, run the whole test suite
#
# Extra pytest arguments: make test PYTEST_ARGS="-k stun -x"

VENV ?= .venv
PY ?= python3
PYTEST_ARGS ?=
SERVE_ARGS ?=
LOCK_ARGS ?=

BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
REQ := requirements

# stamp files live inside the venv, so deleting the venv resets them
STAMP_VENV := $(VENV)/.natkit-venv.stamp
STAMP_INSTALL := $(VENV)/.natkit-install.stamp
STAMP_DEV := $(VENV)/.natkit-dev.stamp

# installs take exact versions and hashes from the lock files only
# (hash-checking mode also fails if a dependency is missing from the lock)
PIP_INSTALL := $(PIP) install --require-hashes --disable-pip-version-check
PIP_SELF := $(PIP) install --no-deps --no-build-isolation --no-index \
	--disable-pip-version-check -e .

# `make lock` resolves against PyPI only: the machine's pip configuration (local
# indexes, find-links, constraints) is switched off for the resolver.
LOCK_ENV := env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL \
	-u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock"
LOCK_FLAGS := --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links --index-url https://pypi.org/simple --quiet $(LOCK_ARGS)

.DEFAULT_GOAL := help
.PHONY: help venv install install-dev run test lint typecheck check lock clean \
	check-python

help:
	@echo "make run          install natkit (hashed lock) and start 'natkit serve'"
	@echo "make test         install the dev lock and run pytest (PYTEST_ARGS=...)"
	@echo "make lint         ruff check and ruff format --check"
	@echo "make typecheck    mypy --strict"
	@echo "make check        lint, typecheck and test"
	@echo "make lock         regenerate requirements/*.lock (LOCK_ARGS=--upgrade)"
	@echo "make clean        remove the venv, caches and build output"

# fail early, with one clear line, on a Python older than 3.11
define CHECK_PYTHON
$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
		>/dev/null 2>&1 || { echo "error: natkit needs Python 3.11 or newer, but" \
		"'$(PY)' is $$($(PY) -V 2>/dev/null || echo 'not found')." \
		"Name another: make PY=python3.12 ..." >&2; exit 1; }
endef

check-python:
	@$(CHECK_PYTHON)

venv: $(STAMP_VENV)

$(STAMP_VENV):
	@$(CHECK_PYTHON)
	$(PY) -m venv $(VENV)
	@touch $@

install: $(STAMP_INSTALL)

# runtime dependencies plus the pinned build backend, then natkit itself; the
# editable install builds with the venv's hatchling and reaches no index
$(STAMP_INSTALL): $(STAMP_VENV) $(REQ)/runtime.lock $(REQ)/build.lock pyproject.toml
	$(PIP_INSTALL) -r $(REQ)/runtime.lock -r $(REQ)/build.lock
	$(PIP_SELF)
	@touch $@

install-dev: $(STAMP_DEV)

$(STAMP_DEV): $(STAMP_VENV) $(REQ)/dev.lock pyproject.toml
	$(PIP_INSTALL) -r $(REQ)/dev.lock
	$(PIP_SELF)
	@touch $@

run: install
	$(BIN)/natkit serve $(SERVE_ARGS)

# pytest exits 5 when it collected no test: that is a failure here too
test: install-dev
	@echo "$(BIN)/pytest $(PYTEST_ARGS)"
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	exit $$rc

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy --strict

check: lint typecheck test

# pip-tools is not part of any lock; install it into the venv by hand to relock
lock:
	@test -x $(BIN)/pip-compile || { echo "error: $(BIN)/pip-compile not found;" \
		"install pip-tools into $(VENV) first: $(PIP) install pip-tools" >&2; \
		exit 1; }
	$(LOCK_ENV) $(BIN)/pip-compile $(LOCK_FLAGS) \
		-o $(REQ)/runtime.lock $(REQ)/runtime.in
	$(LOCK_ENV) $(BIN)/pip-compile $(LOCK_FLAGS) -o $(REQ)/build.lock $(REQ)/build.in
	$(LOCK_ENV) $(BIN)/pip-compile $(LOCK_FLAGS) -o $(REQ)/dev.lock $(REQ)/dev.in
	@# dev.lock must repeat every pin of runtime.lock and build.lock unchanged
	@grep -hE '^[A-Za-z0-9]' $(REQ)/runtime.lock $(REQ)/build.lock | sort -u \
		> $(REQ)/.pins.tmp
	@grep -hE '^[A-Za-z0-9]' $(REQ)/dev.lock | sort -u \
		| comm -23 $(REQ)/.pins.tmp - > $(REQ)/.missing.tmp
	@if [ -s $(REQ)/.missing.tmp ]; then echo "error: dev.lock lacks:" >&2; \
		cat $(REQ)/.missing.tmp >&2; rm -f $(REQ)/.pins.tmp $(REQ)/.missing.tmp; \
		exit 1; fi
	@rm -f $(REQ)/.pins.tmp $(REQ)/.missing.tmp
	@echo "lock files regenerated; dev.lock contains runtime.lock and build.lock"

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis \
		.coverage .coverage.* htmlcov
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +

# --- container image (deploy/image, deploy/hardening, docs/deploy.md) ---------
#
#   make image         build dist/natkit-<version>.oci.tar as root, without a
#                      container daemon (mmdebstrap, chroot); the last line
#                      printed is the image digest
#   make image-check   every rule of deploy/hardening/BENCHMARK.md on that image
#   make image-lock    relock deploy/image/packages.lock to the newest packages
#
# IMAGE_SOURCE sets org.opencontainers.image.source (default: the git remote).

IMAGE_SOURCE ?=
IMAGE_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/natkit/__init__.py)
IMAGE_ARCHIVE := dist/natkit-$(IMAGE_VERSION).oci.tar

.PHONY: image image-check image-lock

image:
	@$(CHECK_PYTHON)
	@$(PY) deploy/image/build.py --source "$(IMAGE_SOURCE)"

image-check:
	@$(CHECK_PYTHON)
	$(PY) deploy/hardening/check.py $(IMAGE_ARCHIVE)

image-lock:
	@$(CHECK_PYTHON)
	$(PY) deploy/image/build.py --lock

# Kubernetes manifests with the built image's digest filled in (dist/k8s/)
K8S_IMAGE ?= natkit
.PHONY: k8s
k8s:
	sh deploy/k8s/render.sh dist/natkit-$(IMAGE_VERSION).oci.digest $(K8S_IMAGE) dist/k8s
