#!/usr/bin/env bash
# Every container of the compose cluster starts here. Spark binds to and advertises SPARK_LOCAL_IP:
# in a container that must be the container's address on the compose network (not loopback), so
# that the master, the workers and the driver in the submit container reach one another.
set -euo pipefail
if [ -z "${SPARK_LOCAL_IP:-}" ]; then
  SPARK_LOCAL_IP=$(hostname -i | awk '{print $1}')
  export SPARK_LOCAL_IP
fi
exec "$@"
