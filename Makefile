# Two commands for a newcomer: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8086
DATA   ?= ./cv-storage
ACCESS_KEY ?= cvgateway
SECRET_KEY ?= cvgateway-secret-key
# What clients connect to: 0.0.0.0 is where the gateway listens (every interface), not an address to use.
ENDPOINT = $(if $(filter 0.0.0.0,$(HOST)),http://<this machine's address>:$(PORT) (listening on every interface),http://$(HOST):$(PORT))
# A FUSE mount on this machine reads large objects from their files through this socket (docs/fuse.md).
SOCKET ?= $(DATA)-$(PORT).sock
MOUNT_ENDPOINT = http://$(if $(filter 0.0.0.0,$(HOST)),127.0.0.1,$(HOST)):$(PORT)
# Debian packages the tests and benchmarks start for real.
TEST_APT := fuse3 libfuse2 samba samba-vfs-modules smbclient smbnetfs etcd-server etcd-client nginx wrk rclone curl rsync git
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench install test-deps apt-test-deps clean help

help:
	@echo "make run    start one gateway on $(HOST):$(PORT) with local storage in $(DATA)"
	@echo "make test   install test dependencies (apt + pip) and run the whole test suite"
	@echo "make bench  run the hot-path benchmarks (writes benchmarks/results/)"

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed: installing python3-venv"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev; \
	  $(PYTHON) -m venv $(VENV); }
	@$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	@touch $@

install: $(VENV)/.installed

run: install
	@echo ""
	@echo "  cv-gateway S3 endpoint: $(ENDPOINT)"
	@echo "  access key:  $(ACCESS_KEY)"
	@echo "  secret key:  $(SECRET_KEY)"
	@echo "  region:      us-east-1 (path-style addressing)"
	@echo "  storage:     $(DATA)"
	@echo "  FUSE mount:  GATEWAY_ACCESS_KEY=$(ACCESS_KEY) GATEWAY_SECRET_KEY=$(SECRET_KEY) \\"
	@echo "                 $(BIN)/gateway mount $(MOUNT_ENDPOINT) /mnt/cv --local-socket $(SOCKET)"
	@echo ""
	$(BIN)/gateway serve --host $(HOST) --port $(PORT) --data-dir $(DATA) \
	  --access-key $(ACCESS_KEY) --secret-key $(SECRET_KEY) --local-socket $(SOCKET)

apt-test-deps:
	@missing=""; for p in $(TEST_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.test-installed: $(BIN)/python pyproject.toml docs/example-plugin/pyproject.toml
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/pip install -q -e docs/example-plugin
	@touch $(VENV)/.installed $@

test-deps: apt-test-deps $(VENV)/.test-installed

# Most tests wait on real processes (failover, frozen peers, timeouts) more than they use a core, so two
# workers halve the run on two cores. --dist loadfile keeps a file's tests (and its module fixtures, such as
# a running cluster) in one worker. TEST_WORKERS=0 runs everything in this process, one test at a time.
TEST_WORKERS ?= 2
test: test-deps
	$(BIN)/pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

bench: test-deps
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info benchmarks/results
