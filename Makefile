# jupyter-hpc developer entry points. Run as root on Debian 12 or 13.
VENV      ?= /opt/jupyter-hpc/venv
PYTHON    ?= $(VENV)/bin/python
TESTBED   := bash tests/testbed/testbed.sh
PYTEST_ARGS ?=

.PHONY: testbed demo test unit integration down status install clean-cache

## Bring up the single-node Slurm + Apptainer testbed and the JupyterHub demo.
demo: testbed
	bash tests/testbed/demo.sh start

## Install and start the testbed only (idempotent).
testbed:
	$(TESTBED) up

## Run the whole test suite (brings the testbed up first).
test: testbed
	$(PYTHON) -m pytest -ra $(PYTEST_ARGS) tests

## Unit tests only: no cluster needed, any Python with the test extras.
unit:
	python3 -m pytest -ra $(PYTEST_ARGS) tests/unit

## Reinstall this checkout into the testbed venv (after code changes).
install:
	$(TESTBED) install

status:
	$(TESTBED) status

down:
	-bash tests/testbed/demo.sh stop
	$(TESTBED) down
