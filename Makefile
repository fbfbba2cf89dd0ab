# make demo: set up .venv and run the pipeline on the bundled digits data.
# make test: set up .venv and run the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNS ?= runs
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
SUBMIT := $(VENV)/bin/spark-submit --master local[2] --driver-memory 4g \
    --driver-java-options -Dlog4j.configurationFile=conf/log4j2.properties

.PHONY: venv demo test test-all bench-ingest clean

venv: $(VENV)/.installed

# Reinstalled whenever the pins change. pip's cache (~/.cache/pip) makes a rebuild take ~2 minutes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: venv
	$(SUBMIT) jobs/ingest.py --dataset digits --out $(RUNS)/demo/digits --overwrite
	$(SUBMIT) jobs/longtail.py --data $(RUNS)/demo/digits --out $(RUNS)/demo/digits-lt10 \
	    --imbalance-ratio 10 --imbalance-type exp --labeled-max 100 --val-per-class 5 --seed 0 --overwrite

test: venv
	$(PY) -m pytest -m "not slow" -q

test-all: venv
	$(PY) -m pytest -q

bench-ingest: venv
	$(PY) bench/ingest.py --archive ../shared/data/cifar10-jpeg.tar.gz

clean:
	rm -rf $(RUNS) spark-warehouse metastore_db derby.log
