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

.PHONY: venv docs docs-serve demo sweep dashboard mlflow-ui test test-fast test-all bench-ingest bench-train bench-stream bench-scale bench-cifar10-lt bench-equal-budget study study-e200 prior-study cluster-check gpu-check clean

venv: $(VENV)/.installed

# Reinstalled whenever the pins change. pip's cache (~/.cache/pip) makes a rebuild take ~2 minutes.
# conf/spark-env.sh and conf/log4j2.properties go into the venv's Spark: a plain spark-submit binds the
# driver and its UI to loopback and prints warnings and the job's own lines, not Spark's INFO start-up.
$(VENV)/.installed: pyproject.toml conf/spark-env.sh conf/log4j2.properties
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	spark_home=$$($(PY) -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))') && \
	    mkdir -p $$spark_home/conf && cp conf/spark-env.sh conf/log4j2.properties $$spark_home/conf/
	touch $@

DEMO := conf/experiments/digits_lt10.yaml
DEMO_METHOD ?= ldam_drw
MLFLOW_DB := sqlite:///$(abspath $(RUNS))/mlflow/mlflow.db

D := $(RUNS)/demo
# the run id in a job's --result record: $(call RUN_ID,JOB,FILE), read through pipeline/records.py
RUN_ID = $$($(PY) -c 'import sys; from pipeline.records import read_result; print(read_result(*sys.argv[1:]).run_id)' $(1) $(2))

# The whole chain on long-tailed digits: base models, SSP, streaming pseudo-labels, semi-supervised
# models (with and without SSP), then the comparison table. All it writes (data, checkpoints, the MLflow
# store unless MLFLOW_TRACKING_URI names another, the comparison) lives under RUNS: `make demo RUNS=DIR`
# then `make mlflow-ui RUNS=DIR`.
demo: export MLFLOW_TRACKING_URI ?= $(MLFLOW_DB)
demo: DEMO_RUN_DIR := --set train.runtime.run_dir=$(abspath $(RUNS))/train
demo: venv
	@+echo "demo: writes under $(RUNS); MLflow store: $$MLFLOW_TRACKING_URI"
	$(SUBMIT) jobs/ingest.py --config $(DEMO) --out $(D)/digits --overwrite
	$(SUBMIT) jobs/longtail.py --config $(DEMO) --data $(D)/digits --out $(D)/digits-lt10 --overwrite
	$(SUBMIT) jobs/train.py --config $(DEMO) $(DEMO_RUN_DIR) --splits $(D)/digits-lt10 --method ce --result $(D)/base.json
	$(SUBMIT) jobs/train.py --config $(DEMO) $(DEMO_RUN_DIR) --splits $(D)/digits-lt10 --method $(DEMO_METHOD)
	$(SUBMIT) jobs/pretrain.py --config $(DEMO) $(DEMO_RUN_DIR) --splits $(D)/digits-lt10 --result $(D)/pretrain.json
	$(SUBMIT) jobs/train.py --config $(DEMO) $(DEMO_RUN_DIR) --splits $(D)/digits-lt10 --method ce \
	    --pretrained $(call RUN_ID,pretrain,$(D)/pretrain.json)
	rm -rf $(D)/pseudo-labels  # a fresh stream: its checkpoint would otherwise resume the last demo's
	$(SUBMIT) jobs/pseudolabel.py --config $(DEMO) --model $(call RUN_ID,train,$(D)/base.json) \
	    --input $(D)/digits-lt10/unlabeled --out $(D)/pseudo-labels --max-files-per-trigger 1
	$(SUBMIT) jobs/train_semi.py --config $(DEMO) $(DEMO_RUN_DIR) --splits $(D)/digits-lt10 --method ce --pseudo-labels $(D)/pseudo-labels
	$(SUBMIT) jobs/train_semi.py --config $(DEMO) $(DEMO_RUN_DIR) --splits $(D)/digits-lt10 --method ce --pseudo-labels $(D)/pseudo-labels \
	    --pretrained $(call RUN_ID,pretrain,$(D)/pretrain.json)
	$(PY) jobs/compare.py --experiment digits-lt10 --out $(RUNS)/compare/digits-lt10
	@echo "Compare the runs in the MLflow UI ($$MLFLOW_TRACKING_URI): make mlflow-ui RUNS=$(RUNS) serves the store under RUNS (then open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning)"

GRID ?= conf/sweeps/digits_methods.yaml
# A study (methods x imbalance ratios x seeds) as Spark tasks; its grid reads the demo's digits ingest.
sweep: venv
	test -f $(D)/digits/ingest.json || $(SUBMIT) jobs/ingest.py --config $(DEMO) --out $(D)/digits
	$(SUBMIT) jobs/sweep.py --grid $(GRID)

BALANCE ?= $(D)/pseudo-labels/balance
dashboard: venv  # the live pseudo-label balance of a jobs/pseudolabel.py output (BALANCE=OUT/balance)
	$(PY) -m streaming.dashboard --balance $(BALANCE)

mlflow-ui: venv  # then open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (the model-training view)"
	mkdir -p $(RUNS)/mlflow
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --backend-store-uri $(MLFLOW_DB) \
	    --host 127.0.0.1 --port 5000 --workers 1

# The reference pages (docs/, mkdocs.yml) as a site in site/; strict: a broken link, a missing page
# or an unknown anchor fails the build (CI runs it).
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: venv  # the site on http://127.0.0.1:8000, rebuilt as the pages change
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr 127.0.0.1:8000

test: venv
	$(PY) -m pytest -m "not slow" -q

test-fast: venv  # the pure tests (math, config, losses, samplers, schema, policies, safe loading): < 1 min
	$(PY) -m pytest -m "not slow and not spark and not browser and not cluster and not processes" -q

test-all: venv
	$(PY) -m pytest -q

bench-ingest: venv
	$(PY) bench/ingest.py --archive ../shared/data/cifar10-jpeg.tar.gz

bench-train: venv
	$(PY) bench/train.py --archive ../shared/data/cifar10-jpeg.tar.gz

gpu-check: venv  # on a GPU machine: the whole chain (CIFAR-10-LT, 2 epochs) required to run on the GPU, sweep 4 runs/GPU
	$(PY) bench/gpu_check.py --archive ../shared/data/cifar10-jpeg.tar.gz

cluster-check: venv  # a standalone Spark cluster + MLflow server on loopback, the jobs against it
	bash bench/cluster.sh

bench-stream: venv  # streaming pseudo-label throughput and latency on CIFAR-10-LT's unlabeled pool
	$(PY) bench/stream.py --archive ../shared/data/cifar10-jpeg.tar.gz

bench-scale: venv  # how each stage's cost grows, up to a 1,000,000-image, 1,000-class pseudo-label stream (~1 hour)
	$(PY) bench/scale.py --work $(RUNS)/bench-scale

EPOCHS ?= 15
# prior-study: the pools (of 100, 1, -100) a semi-supervised model is trained on, per policy
SEMI_POOLS ?= -100
study: venv  # CIFAR-10-LT through the real jobs: 4 recipes, then SSP, streaming pseudo-labels, semi (EPOCHS=15)
	$(PY) bench/study.py --archive ../shared/data/cifar10-jpeg.tar.gz --epochs $(EPOCHS)

# The semi-supervised chain (base, SSP, semi, semi + SSP; then the distribution-aware policy and the reversed
# pool) at the full 200 epochs, one run at a time, across sittings: rerun to resume (~1.5-4 h a run on 2 CPU cores).
study-e200: venv
	$(PY) bench/study.py --archive ../shared/data/cifar10-jpeg.tar.gz --epochs 200 --parts semi,reversed \
	    --eval-every 5 --carry $(CARRY)

prior-study: venv  # pool-prior estimation, pseudo-label selection (3 pool shapes) and semi runs (SEMI_POOLS) on CIFAR-10-LT
	$(PY) bench/prior_study.py --archive ../shared/data/cifar10-jpeg.tar.gz --epochs $(EPOCHS) --semi=$(SEMI_POOLS)

SUBSET ?= ours
bench-equal-budget: venv  # this project vs the reference code, same budget, 3 seeds each (EPOCHS=15; SUBSET=reference: ours on the reference's images)
	$(PY) bench/equal_budget.py --archive ../shared/data/cifar10-jpeg.tar.gz --epochs $(EPOCHS) --methods ce,ldam_drw --subset $(SUBSET)

METHODS ?= ce,ldam_drw
CARRY ?= bench/carry
# The 200-epoch table on the reference's images, one run at a time, resumable: rerun to continue (finished runs
# are skipped by their record in docs/records/, an interrupted one resumes from its checkpoint). ~4.5 h a run on 2 CPU cores.
bench-cifar10-lt: venv
	$(PY) bench/cifar10_lt.py --archive ../shared/data/cifar10-jpeg.tar.gz --methods $(METHODS) --carry $(CARRY)

clean:
	rm -rf $(RUNS) spark-warehouse metastore_db derby.log
