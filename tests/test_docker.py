"""docker-compose.yml and the Dockerfile, checked statically (Docker cannot run here): the services
the cluster needs, what they publish, where their secrets come from, and that every file, module,
variable and service they name exists."""
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RAW = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(RAW)  # anchors and merge keys resolved, as compose resolves them
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENV_EXAMPLE = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def app_path(path: str) -> Path:
    """A path inside the image (/app is the project) as a path of this checkout."""
    assert path.startswith("/app/"), path
    return ROOT / path[len("/app/"):]


def command_of(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else command


def test_the_cluster_services_are_all_there():
    assert {"spark-master", "spark-worker-1", "spark-worker-2", "spark-worker-gpu", "mlflow", "postgres",
            "dashboard", "submit"} <= set(SERVICES)
    for name in ("spark-worker-1", "spark-worker-2", "spark-worker-gpu"):
        assert command_of(SERVICES[name])[:3] == ["spark-class", "org.apache.spark.deploy.worker.Worker",
                                                  "spark://spark-master:7077"], name
    master = command_of(SERVICES["spark-master"])
    assert master[1] == "org.apache.spark.deploy.master.Master" and master[master.index("--port") + 1] == "7077"
    defaults = (ROOT / "conf/cluster/spark-defaults.conf").read_text()
    assert re.search(r"^spark\.master\s+spark://spark-master:7077$", defaults, re.M)  # the submit service's master
    assert app_path(SERVICES["submit"]["environment"]["SPARK_CONF_DIR"]).joinpath("spark-defaults.conf").is_file()


def test_the_gpu_worker_reserves_nvidia_devices_and_discovers_them_with_a_script_that_exists():
    gpu = SERVICES["spark-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]  # not started by a plain `docker compose up`
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    opts = dict(o.split("=", 1) for o in gpu["environment"]["SPARK_WORKER_OPTS"].split())
    script = app_path(opts["-Dspark.worker.resource.gpu.discoveryScript"])
    assert script.is_file() and os.access(script, os.X_OK)
    assert gpu["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"  # the shared env is kept


def test_mlflow_is_backed_by_postgres_with_artifacts_in_a_volume():
    command = " ".join(command_of(SERVICES["mlflow"]))
    backend = SERVICES["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql://") and "@postgres:5432/" in backend
    assert "--artifacts-destination /mlartifacts" in command
    assert "mlartifacts:/mlartifacts" in SERVICES["mlflow"]["volumes"]
    assert SERVICES["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cluster"]
    assert any(d.startswith("psycopg2") for d in deps)  # the driver the backend URI needs, in the image
    for name, service in SERVICES.items():
        if "MLFLOW_TRACKING_URI" in service.get("environment", {}):
            assert service["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name


def test_only_the_web_uis_are_published_and_only_on_the_documented_bind_address():
    published = {name: s["ports"] for name, s in SERVICES.items() if "ports" in s}
    assert set(published) == {"mlflow", "spark-master", "dashboard"}
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("${LAB_BIND:-127.0.0.1}:"), f"{name} publishes {port} beyond loopback"
    assert ENV_EXAMPLE["LAB_BIND"] == "127.0.0.1"
    assert "expose" not in RAW and "network_mode" not in RAW


def test_no_secret_has_a_default_and_every_variable_is_documented():
    for match in VARIABLE.finditer(RAW):
        name, kind, default = match.groups()
        assert name in ENV_EXAMPLE, f"${{{name}}} is used in docker-compose.yml but not documented in .env.example"
        if re.search("PASSWORD|SECRET|TOKEN", name):
            assert kind == ":?", f"{name} must be required (${{{name}:?...}}), never defaulted"
            assert ENV_EXAMPLE[name] == "", f".env.example must not carry a value for {name}"
    assert not re.search(r"(?i)password\s*[:=]\s*['\"]?[a-z0-9]", RAW.replace("${POSTGRES_PASSWORD", ""))


def test_every_image_build_volume_and_dependency_refers_to_something_that_exists():
    declared = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        if "build" in service:
            context = ROOT / (service["build"] if isinstance(service["build"], str) else service["build"]["context"])
            assert (context / "Dockerfile").is_file(), name
        else:
            assert re.search(r":\d+(\.\d+)+", service["image"]), f"{name}: image {service['image']} is not pinned"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert not (ROOT / source).resolve().relative_to(ROOT).is_absolute(), volume
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        depends = service.get("depends_on", [])
        for other in depends if isinstance(depends, list) else depends:
            assert other in SERVICES, f"{name} depends on unknown service {other}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_command_names_files_and_modules_that_exist(name):
    command = command_of(SERVICES[name])
    for i, word in enumerate(command):
        if word.endswith(".py") and not word.startswith("-"):
            assert (ROOT / word).is_file(), f"{name}: {word}"
        if word == "-m":
            assert (ROOT / (command[i + 1].replace(".", "/") + ".py")).is_file(), f"{name}: {command[i + 1]}"
        if word.startswith("/app/"):
            assert app_path(word).exists(), f"{name}: {word}"


def test_dockerfile_pins_its_base_runs_as_a_user_and_installs_java_and_the_pinned_project():
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE, re.M).group(1)
    assert re.search(r":\d+\.\d+\.\d+", base), f"base image {base} is not pinned to a release"
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "openjdk-17-jre-headless" in DOCKERFILE
    for source in re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s", DOCKERFILE, re.M):
        assert (ROOT / source).exists(), f"COPY {source}"
    entrypoint = re.search(r'^ENTRYPOINT\s+\["([^"]+)"', DOCKERFILE, re.M).group(1)
    assert os.access(app_path(entrypoint), os.X_OK)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"] + project["optional-dependencies"]["cluster"]:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][^,;\s]*", dep), f"{dep} is not pinned"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "runs" in ignored  # the build context stays small and secret-free


def test_no_secret_is_on_a_command_line():
    """Command lines are visible to every user of the host (ps); secrets travel in the environment."""
    for name, service in SERVICES.items():
        command = " ".join(command_of(service))
        assert "PASSWORD" not in command and "postgresql://" not in command, name


def test_mlflow_allows_the_host_names_its_clients_use():
    """MLflow's security middleware answers 403 to Host headers outside --allowed-hosts: the compose
    clients call http://mlflow:5000, the healthcheck 127.0.0.1:5000."""
    command = command_of(SERVICES["mlflow"])
    allowed = set(command[command.index("--allowed-hosts") + 1].split(","))
    clients = {service["environment"]["MLFLOW_TRACKING_URI"].split("//", 1)[1].rstrip("/")
               for service in SERVICES.values() if "MLFLOW_TRACKING_URI" in service.get("environment", {})}
    assert clients == {"mlflow:5000"} and clients <= allowed
    health = " ".join(SERVICES["mlflow"]["healthcheck"]["test"])
    assert "127.0.0.1:5000" in health and "127.0.0.1:5000" in allowed and "localhost:5000" in allowed


def test_a_real_mlflow_server_with_the_compose_allowed_hosts_answers_the_compose_host_name(tmp_path):
    """The same flag on a real server on loopback: Host: mlflow:5000 is answered, an unknown host is not."""
    import http.client
    import socket
    import subprocess
    import sys
    import time

    command = command_of(SERVICES["mlflow"])
    allowed = command[command.index("--allowed-hosts") + 1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                               str(port), "--workers", "1", "--allowed-hosts", f"{allowed},127.0.0.1:{port}",
                               "--artifacts-destination", str(tmp_path / "a")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def status(host: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
        return conn.getresponse().status

    try:
        deadline = time.time() + 90
        while True:
            try:
                status(f"127.0.0.1:{port}")
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        assert status("mlflow:5000") == 200
        assert status("evil.example:5000") == 403
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
