#!/usr/bin/env bash
# The pipeline on a real Spark standalone cluster on loopback: a master, two workers (1 core each)
# and an MLflow server, all from the pip-installed packages.
#  1. Fault: an ingest of 12,000 generated PNGs; one worker (and its executor) is SIGKILLed while the
#     ingest runs; the job must still finish with every file accounted for (written + rejected).
#     The worker is then started again.
#  2. The chain: ingest digits -> long-tail splits -> SSP pre-training -> training (TorchDistributor
#     with local_mode false: 2 processes as barrier tasks on the executors) -> streaming
#     pseudo-labels -> semi-supervised training (2 processes).
# Checks the outputs and the MLflow runs, then stops every process it started, by PID.
#   bash bench/cluster.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${1:-runs/cluster}")
VENV=$PWD/.venv
PY=$VENV/bin/python
export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$PY PYSPARK_DRIVER_PYTHON=$PY
export MLFLOW_TRACKING_URI=http://127.0.0.1:5077 MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export SPARK_WORKER_DIR=$WORK/spark-work
MARK=$WORK/.made-by-bench-cluster  # what this script may delete: a folder an earlier run of it made
if [ -f "$MARK" ]; then
  rm -rf "$WORK"
elif [ -e "$WORK" ] && [ -n "$(ls -A "$WORK")" ]; then
  echo "bench/cluster.sh: $WORK exists and was not made by this script; nothing in it is touched. Give a new or empty folder." >&2
  exit 2
fi
mkdir -p "$WORK/pids" "$SPARK_WORKER_DIR" && touch "$MARK"
declare -A PID
start() {  # start NAME COMMAND...: run in the background, log to WORK/NAME.log, remember the PID
  local name=$1; shift
  "$@" > "$WORK/$name.log" 2>&1 &
  PID[$name]=$!; echo $! > "$WORK/pids/$name"
}
stop_all() {
  for pid in "${PID[@]}"; do pkill -TERM -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all EXIT
wait_for() {  # wait_for URL SECONDS
  for _ in $(seq "$2"); do curl -sf -o /dev/null "$1" && return 0; sleep 1; done
  echo "no answer from $1" >&2; return 1
}
alive_workers() {
  curl -s http://127.0.0.1:18080/json/ | "$PY" -c 'import json,sys; print(len([w for w in json.load(sys.stdin)["workers"] if w["state"] == "ALIVE"]))'
}
start_worker() {  # start_worker N
  start "worker$1" "$VENV/bin/spark-class" org.apache.spark.deploy.worker.Worker spark://127.0.0.1:7077 \
      --host 127.0.0.1 --cores 1 --memory 3g --webui-port "1808$1"
}
wait_workers() {  # wait_workers N: until N workers are ALIVE
  for _ in $(seq 90); do [ "$(alive_workers)" = "$1" ] && return 0; sleep 1; done
  echo "workers alive: $(alive_workers), wanted $1" >&2; return 1
}

start master "$VENV/bin/spark-class" org.apache.spark.deploy.master.Master --host 127.0.0.1 --port 7077 --webui-port 18080
wait_for http://127.0.0.1:18080 60
start_worker 1
start_worker 2
start mlflow "$VENV/bin/mlflow" server --backend-store-uri "sqlite:///$WORK/mlflow.db" \
    --artifacts-destination "$WORK/mlartifacts" --host 127.0.0.1 --port 5077 --workers 1
wait_for http://127.0.0.1:5077/health 90
wait_workers 2

SUBMIT=("$VENV/bin/spark-submit" --master spark://127.0.0.1:7077 --driver-java-options -Dlog4j.configurationFile=conf/log4j2.properties)

# --- 1. a worker dies during ingest -------------------------------------------------------------
"$PY" - "$WORK/pngs" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root, rng = Path(sys.argv[1]), np.random.default_rng(0)
for split, n in (("train", 11000), ("test", 1000)):
    for i in range(n):
        folder = root / split / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
(root / "train/class3/00003.png").write_bytes(b"not a png")  # one bad file: rejected and counted
PY
"${SUBMIT[@]}" --conf spark.ui.port=4077 jobs/ingest.py --dataset imagefolder --source "$WORK/pngs" \
    --out "$WORK/pngs-ingest" --set ingest.files_per_task=250 > "$WORK/fault-ingest.log" 2>&1 &
INGEST=$!
# kill worker 2 (SIGKILL, with its executor) once the ingest has finished some tasks but not all
"$PY" - <<'PY'
import json, time, urllib.request
def get(path):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:4077/api/v1/{path}", timeout=5))
deadline = time.time() + 300
while time.time() < deadline:
    try:
        app = get("applications")[0]["id"]
        done = sum(s["numCompleteTasks"] for s in get(f"applications/{app}/stages?status=active"))
        if done >= 2:
            print(f"ingest running ({done} tasks of the active stage done): killing worker 2", flush=True)
            break
    except Exception:
        pass
    time.sleep(0.2)
else:
    raise SystemExit("the ingest never got going")
PY
pkill -KILL -P "${PID[worker2]}" || true  # its executor
kill -KILL "${PID[worker2]}"
wait "$INGEST" || { tail -50 "$WORK/fault-ingest.log"; echo "the ingest failed after the worker was killed" >&2; exit 1; }
grep -q "lost executor\|Lost executor\|ExecutorLost\|Removed executor\|remove worker\|Removing executor" "$WORK/fault-ingest.log" \
    && echo "the driver saw the executor go" || echo "note: no executor-loss line in the driver log"
"$PY" - "$WORK/pngs-ingest" <<'PY'
import json, sys
import pyarrow.dataset as ds
out = sys.argv[1]
report = json.load(open(f"{out}/ingest.json"))
written = ds.dataset(f"{out}/images", format="parquet").count_rows()
rejected = ds.dataset(f"{out}/_rejected", format="parquet").count_rows()
assert report["input_records"] == 12000 == written + rejected, (report["input_records"], written, rejected)
assert report["written"] == written == 11999 and report["rejected"]["total"] == rejected == 1, report["rejected"]
print(f"fault check passed: 12,000 files in, {written} written + {rejected} rejected after losing a worker")
PY
start_worker 2
wait_workers 2

# --- 2. the chain -------------------------------------------------------------------------------
CONF=conf/experiments/digits_lt10.yaml
SET=(--experiment cluster --set train.runtime.run_dir="$WORK/train")
"${SUBMIT[@]}" jobs/ingest.py --config $CONF --out "$WORK/digits"
"${SUBMIT[@]}" jobs/longtail.py --config $CONF --data "$WORK/digits" --out "$WORK/digits-lt10"
"${SUBMIT[@]}" jobs/pretrain.py --config $CONF --splits "$WORK/digits-lt10" --epochs 3 --num-processes 2 \
    "${SET[@]}" --result "$WORK/pretrain.json"
# the run id in a job's --result record (JOB FILE), read through pipeline/records.py
run_id() { "$PY" -c 'import sys; from pipeline.records import read_result; print(read_result(*sys.argv[1:]).run_id)' "$1" "$2"; }
"${SUBMIT[@]}" jobs/train.py --config $CONF --splits "$WORK/digits-lt10" --method ldam_drw --epochs 3 \
    --num-processes 2 --pretrained "$(run_id pretrain "$WORK/pretrain.json")" "${SET[@]}" --result "$WORK/train.json"
"${SUBMIT[@]}" jobs/pseudolabel.py --config $CONF --model "$(run_id train "$WORK/train.json")" \
    --input "$WORK/digits-lt10/unlabeled" --out "$WORK/pseudo-labels" --result "$WORK/pseudolabel.json"
"${SUBMIT[@]}" jobs/train_semi.py --config $CONF --splits "$WORK/digits-lt10" --method ce --epochs 3 \
    --num-processes 2 --pseudo-labels "$WORK/pseudo-labels" "${SET[@]}" --result "$WORK/semi.json"

"$PY" - "$WORK" <<'PY'
import json, sys
import mlflow
sys.path.insert(0, ".")
from pipeline.pseudolabel.store import read_labels
work = sys.argv[1]
ingest = json.load(open(f"{work}/digits/ingest.json"))
assert ingest["input_records"] == ingest["written"] + ingest["rejected"]["total"] == 1797, ingest
manifest = json.load(open(f"{work}/digits-lt10/manifest.json"))
assert manifest["class_counts"]["labeled"] == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
ids = read_labels(f"{work}/pseudo-labels", columns=["id"]).column("id").to_pylist()
assert len(ids) == len(set(ids)) == manifest["totals"]["unlabeled"], (len(ids), manifest["totals"]["unlabeled"])
runs = mlflow.search_runs(experiment_names=["cluster"])
stages = sorted(runs["tags.stage"])
assert stages == ["pretrain", "pseudolabel", "semi", "ssp"], stages
assert set(runs["status"]) == {"FINISHED"}, runs[["tags.stage", "status"]]
training = runs[runs["tags.stage"] != "pseudolabel"]
assert set(training["params.provenance.world_size"]) == {"2"}
print("cluster check passed:", len(runs), "runs,", dict(zip(runs["tags.stage"], runs["metrics.final_test_top1"].round(3))),
      f"{len(ids)} pseudo-labels")
PY
