# The project image: Python 3.11, Java 17 for Spark, the pinned stack, the project installed.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless make git procps \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 lab
WORKDIR /app
COPY --chown=lab:lab . /app
USER lab
RUN make venv
ENV SPARK_LOCAL_IP=127.0.0.1 PATH=/app/.venv/bin:$PATH
CMD ["make", "demo"]
