# The project image, used by every service of docker-compose.yml: Python 3.11, Java 17 for Spark,
# the pinned stack (pyproject.toml) and the project installed, running as a non-root user.
FROM python:3.11.14-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless make git procps curl \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 lab \
 && mkdir -p /app /mlartifacts && chown lab:lab /app /mlartifacts
WORKDIR /app
USER lab
# Dependencies first (a layer that survives code changes), then the code.
COPY --chown=lab:lab pyproject.toml /app/
RUN python -m venv .venv \
 && .venv/bin/pip install --no-cache-dir --upgrade pip \
 && .venv/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['cluster']))" > /tmp/requirements.txt \
 && .venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt
COPY --chown=lab:lab . /app
RUN .venv/bin/pip install --no-cache-dir --no-deps -e . && touch .venv/.installed
ENV PATH=/app/.venv/bin:$PATH \
    PYSPARK_PYTHON=/app/.venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/app/.venv/bin/python \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["make", "demo"]
