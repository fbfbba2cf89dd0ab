# Copied into this venv's Spark (.venv/.../pyspark/conf/) by `make venv`; spark-submit sources it.
# A plain `spark-submit jobs/NAME.py` then binds its driver and web UI (:4040) to loopback instead
# of every interface. Export SPARK_LOCAL_IP (an address other machines reach) to submit to a
# cluster from this machine or to open the UI to others.
SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
