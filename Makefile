# The README's two commands. Each does its own set-up: a fresh Debian machine with
# Python 3.11 and a RabbitMQ on localhost needs nothing else.
PYTHON ?= python3.11
VENV   ?= .venv
STAMP  := $(VENV)/.installed
TREE   := $(VENV)/.tree
# The editable install is strict: a tree of links under build/ that mypy can
# follow. A module added or removed needs the tree rebuilt, so the list of
# modules is a prerequisite, rewritten only when it changes.
MODULES := $(VENV)/.modules
$(shell mkdir -p $(VENV) && find src shared producer consumer kms_emulator \
  \( -name '*.py' -o -name py.typed \) -not -path '*/__pycache__/*' 2>/dev/null \
  | sort > $(MODULES).new && (cmp -s $(MODULES).new $(MODULES) || mv $(MODULES).new $(MODULES)); \
  rm -f $(MODULES).new)
EDITABLE := -e . --config-settings editable_mode=strict

.PHONY: demo test bench lint clean containers containers-down pika-range

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV) || \
	  { echo "cannot create $(VENV): install python3.11-venv (apt-get install python3.11-venv)" >&2; exit 1; }
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=strict
	@touch $(STAMP)

$(TREE): $(STAMP) $(MODULES)
	$(VENV)/bin/python -m pip install --quiet --no-deps $(EDITABLE)
	@touch $(TREE)

demo: $(TREE)
	$(VENV)/bin/envelope-mq demo

test: $(TREE)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	scripts/containers.sh run -- $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The container engine of the container tests (scripts/containers.sh): a Docker
# engine when one answers, else podman installed and configured (root on Debian).
# `make containers` leaves podman's API socket running and prints its variables.
containers:
	scripts/containers.sh up

containers-down:
	scripts/containers.sh down

bench: $(TREE)
	$(VENV)/bin/python -m pip install --quiet '.[test,bench]' $(EDITABLE)
	$(VENV)/bin/envelope-mq bench --check

# The tests that reach into pika (producer, consumer outlet, header decoder) on the
# oldest and newest pika of the dependency range, each
# in a throwaway venv under /tmp built from the wheel (not part of `make test`).
pika-range:
	PYTHON=$(PYTHON) scripts/pika-range.sh

lint: $(TREE)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
