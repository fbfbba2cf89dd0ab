#!/usr/bin/env bash
# Spark's GPU resource discovery for a worker (spark.worker.resource.gpu.discoveryScript): prints
# the visible NVIDIA GPUs' indices as {"name": "gpu", "addresses": ["0", "1", ...]}.
set -euo pipefail
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | awk '{printf "%s\"%s\"", (NR > 1 ? "," : ""), $1}')
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
