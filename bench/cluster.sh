#!/usr/bin/env bash
# The pipeline on a real Spark standalone cluster on loopback: a master, two workers (1 core each)
# and an MLflow server, all from the pip-installed packages; ingest -> long-tail splits -> SSP
# pre-training -> training (TorchDistributor with local_mode false: 2 processes as barrier tasks on
# the executors). Checks the outputs and the MLflow runs, then stops every process it started, by PID.
#   bash bench/cluster.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${1:-runs/cluster}")
VENV=$PWD/.venv
export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$VENV/bin/python PYSPARK_DRIVER_PYTHON=$VENV/bin/python
export MLFLOW_TRACKING_URI=http://127.0.0.1:5077 MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export SPARK_WORKER_DIR=$WORK/spark-work
rm -rf "$WORK" && mkdir -p "$WORK/pids" "$SPARK_WORKER_DIR"
PIDS=()
start() {  # start NAME COMMAND...: run in the background, log to WORK/NAME.log, remember the PID
  local name=$1; shift
  "$@" > "$WORK/$name.log" 2>&1 &
  PIDS+=($!); echo $! > "$WORK/pids/$name"
}
stop_all() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop_all EXIT
wait_for() {  # wait_for URL SECONDS
  for _ in $(seq "$2"); do curl -sf -o /dev/null "$1" && return 0; sleep 1; done
  echo "no answer from $1" >&2; return 1
}

start master "$VENV/bin/spark-class" org.apache.spark.deploy.master.Master --host 127.0.0.1 --port 7077 --webui-port 18080
wait_for http://127.0.0.1:18080 60
for i in 1 2; do
  start "worker$i" "$VENV/bin/spark-class" org.apache.spark.deploy.worker.Worker spark://127.0.0.1:7077 \
      --host 127.0.0.1 --cores 1 --memory 3g --webui-port "1808$i"
done
start mlflow "$VENV/bin/mlflow" server --backend-store-uri "sqlite:///$WORK/mlflow.db" \
    --artifacts-destination "$WORK/mlartifacts" --host 127.0.0.1 --port 5077 --workers 1
wait_for http://127.0.0.1:5077/health 90
for _ in $(seq 60); do  # both workers registered
  [ "$(curl -s http://127.0.0.1:18080/json/ | "$VENV/bin/python" -c 'import json,sys; print(len([w for w in json.load(sys.stdin)["workers"] if w["state"] == "ALIVE"]))')" = 2 ] && break
  sleep 1
done

SUBMIT=("$VENV/bin/spark-submit" --master spark://127.0.0.1:7077 --driver-java-options -Dlog4j.configurationFile=conf/log4j2.properties)
CONF=conf/experiments/digits_lt10.yaml
"${SUBMIT[@]}" jobs/ingest.py --config $CONF --out "$WORK/digits"
"${SUBMIT[@]}" jobs/longtail.py --config $CONF --data "$WORK/digits" --out "$WORK/digits-lt10"
"${SUBMIT[@]}" jobs/pretrain.py --config $CONF --splits "$WORK/digits-lt10" --epochs 3 --num-processes 2 \
    --experiment cluster --set train.run_dir="$WORK/train" | tee "$WORK/pretrain.out"
PRE=$(grep '^run_id:' "$WORK/pretrain.out" | cut -d' ' -f2)
"${SUBMIT[@]}" jobs/train.py --config $CONF --splits "$WORK/digits-lt10" --method ldam_drw --epochs 3 \
    --num-processes 2 --pretrained "$PRE" --experiment cluster --set train.run_dir="$WORK/train" | tee "$WORK/train.out"

"$VENV/bin/python" - "$WORK" <<'PY'
import json, sys
import mlflow
work = sys.argv[1]
ingest = json.load(open(f"{work}/digits/ingest.json"))
assert ingest["input_records"] == ingest["written"] + ingest["rejected"]["total"] == 1797, ingest
manifest = json.load(open(f"{work}/digits-lt10/manifest.json"))
assert manifest["class_counts"]["labeled"] == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
runs = mlflow.search_runs(experiment_names=["cluster"])
stages = sorted(runs["tags.stage"])
assert stages == ["pretrain", "ssp"], stages
assert set(runs["status"]) == {"FINISHED"} and set(runs["params.provenance.world_size"]) == {"2"}
print("cluster check passed:", len(runs), "runs,", dict(zip(runs["tags.stage"], runs["metrics.final_test_top1"].round(3))))
PY
