# The two commands a user needs: `make run` and `make test`. Everything else helps them.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PKGS := libs/api libs/core libs/httpapi libs/triton services/registry \
        services/controller services/gateway services/autoscaler cli
SETUP_STAMP := $(VENV)/.setup-stamp
GEN_STAMP := libs/api/src/matrixinfer/api/v1/__init__.py
PROTOS := $(shell find protos -name '*.proto')
PYPROJECTS := $(foreach p,$(PKGS),$(p)/pyproject.toml)

.PHONY: setup test-tools proto test lint typecheck importlint pytest run bench clean compose-tool haproxy-tool promtool-tool bench-tools

AZURITE := .tools/azurite/node_modules/.bin/azurite-blob
AZURITE_VERSION := 3.35.0

# What running needs (the venv with every component and tritonserver, generated
# code); the test-only emulators and validators come with `test-tools`.
setup: $(SETUP_STAMP) $(GEN_STAMP) haproxy-tool

test-tools: $(AZURITE) compose-tool promtool-tool

# docker-compose (Debian's package, Python; `config` needs no Docker engine) lets
# tests/unit/test_deploy.py validate docker-compose.yml. Installed only when missing
# and we are root with apt-get; otherwise that check is skipped with the reason.
compose-tool:
	@if command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends docker-compose >/dev/null) \
	  || echo "could not install docker-compose: its check in tests/unit/test_deploy.py is skipped"; \
	else echo "docker-compose missing (installing it needs root and apt-get): its check in tests/unit/test_deploy.py is skipped"; fi

# promtool (Debian's prometheus package, 2.42) and amtool (prometheus-alertmanager)
# let tests/unit/test_alert_rules.py check and unit-test deploy/prometheus/alerts.yml
# and check deploy/alertmanager/alertmanager.yml. Only the tools are wanted: when no
# policy-rc.d exists, a temporary one keeps the packages' daemons from starting, and
# on systemd hosts their units are disabled. Installed only when missing and we are
# root with apt-get; otherwise those checks are skipped with the reason.
promtool-tool:
	@if command -v promtool >/dev/null && command -v amtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  policy=/usr/sbin/policy-rc.d; made=; \
	  if [ ! -e $$policy ]; then \
	    printf '#!/bin/sh\nexit 101\n' > $$policy && chmod +x $$policy && made=1; fi; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus prometheus-alertmanager >/dev/null) \
	  || echo "could not install promtool/amtool: tests/unit/test_alert_rules.py skips them"; \
	  if [ -n "$$made" ]; then rm -f $$policy; fi; \
	  if [ -d /run/systemd/system ]; then \
	    systemctl disable --now prometheus prometheus-alertmanager >/dev/null 2>&1 || :; fi; \
	else echo "promtool/amtool missing (installing them needs root and apt-get): tests/unit/test_alert_rules.py skips them"; fi

# HAProxy (Debian's package, 2.6) is the gateway's data plane: `make run` needs it.
# Installed only when missing and we are root with apt-get; otherwise `make run`
# stops at once and says the one command to run.
haproxy-tool:
	@if command -v haproxy >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends haproxy >/dev/null) \
	  || echo "could not install haproxy: run \`sudo apt-get install haproxy\`"; \
	else echo "haproxy missing: run \`sudo apt-get install haproxy\` (make run needs it)"; fi

# Azurite (Azure Blob emulator, npm) for the controller's az:// artifact tests.
$(AZURITE):
	npm install --silent --no-audit --no-fund --prefix .tools/azurite azurite@$(AZURITE_VERSION)

$(SETUP_STAMP): constraints.txt requirements-dev.txt $(PYPROJECTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt \
		-r requirements-dev.txt $(foreach p,$(PKGS),-e $(p))
	# The tritonserver binary (Triton 2.51) comes from this wheel and nothing else
	# does: without its dependencies, whose pins (tritonclient ~=2.50, and through
	# it protobuf < 5) would hold the gRPC and protobuf libraries back years.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt nvidia-pytriton
	touch $@

proto $(GEN_STAMP): $(PROTOS) tools/genproto.py $(SETUP_STAMP)
	$(BIN)/python tools/genproto.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

importlint: setup
	$(BIN)/lint-imports

# Every tier. pytest's exit code 5 ("no tests collected") is a failure like any other
# non-zero code, so an empty run can never pass.
pytest: setup test-tools
	$(BIN)/python -m pytest

test: lint typecheck importlint pytest

# The whole platform (registry on SQLite in ./.matrixinfer, controller, autoscaler,
# gateway) with the quickstart model, in the foreground; Ctrl-C stops everything.
run: setup
	$(BIN)/matrixinfer up

# h2load (Debian's nghttp2-client) is bench.gateway's load generator.
bench-tools:
	@if command -v h2load >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends nghttp2-client >/dev/null) \
	  || echo "could not install h2load: run \`sudo apt-get install nghttp2-client\`"; \
	else echo "h2load missing: run \`sudo apt-get install nghttp2-client\` (bench.gateway needs it)"; fi

bench: setup bench-tools
	$(BIN)/python -m bench.registry
	$(BIN)/python -m bench.controller
	$(BIN)/python -m bench.gateway
	$(BIN)/python -m bench.autoscaler
	$(BIN)/python -m bench.cli

clean:
	rm -rf $(VENV) .tools .matrixinfer libs/api/src/matrixinfer/api/v1
