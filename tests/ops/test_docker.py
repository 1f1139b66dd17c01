"""docker/: the compose file parses, the Dockerfile keeps its promises, and its entrypoint and healthcheck
commands work — run outside a container (there is no Docker engine here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ops.procs import ServeProcess, cds_clients_json, onco_env
from tests.support.live import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def dockerfile_stages() -> list[list[str]]:
    """Instructions (continuation lines joined) grouped by FROM stage."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def instruction(stage: list[str], name: str) -> list[str]:
    return [line[len(name) + 1:].strip() for line in stage if line.upper().startswith(name + " ")]


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_parses() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    env = {**os.environ, "REDIS_PASSWORD": "example-only"}
    out = subprocess.run([*cli, "-f", str(DOCKER / "compose.yaml"), "config", "-q"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    unset = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    out = subprocess.run([*cli, "-f", str(DOCKER / "compose.yaml"), "config", "-q"], capture_output=True,
                         text=True, timeout=60, env=unset)
    assert out.returncode != 0 and "REDIS_PASSWORD" in out.stderr  # no Redis without a password


def test_compose_stack_shape() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    app = services["onco-exercise"]
    assert app["deploy"]["replicas"] == 2
    assert app["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    env = app["environment"]
    assert env["ONCO_EXERCISE_STORAGE_URL"].startswith("redis://:${REDIS_PASSWORD")  # Redis asks for a password
    assert env["ONCO_EXERCISE_STATE_KEY_FILE"].startswith("/run/secrets/")
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--requirepass" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert "rediss://" in (DOCKER / "compose.yaml").read_text()  # the TLS option is spelled out
    assert env["ONCO_EXERCISE_FHIR_SERVERS"].endswith("http://hapi:8080/fhir}")
    json.loads(env["ONCO_EXERCISE_CDS_CLIENTS"])  # a valid example, not a placeholder
    assert services["hapi"]["image"].startswith("hapiproject/hapi:")
    assert "postgresql://hapi-db:" in services["hapi"]["environment"]["spring.datasource.url"]
    assert services["hapi-db"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    proxy = services["proxy"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    nginx = (DOCKER / "nginx.conf").read_text()
    assert "http://onco-exercise:8000" in nginx and "X-Request-ID" in nginx
    # the proxy outlasts a second signer's wait (the service's default) and one write-back
    from service.config import Settings

    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s", nginx).group(1))
    defaults = Settings()
    assert read_timeout > defaults.sign_wait_seconds + defaults.fhir_timeout_seconds
    assert int(re.search(r"client_header_timeout (\d+)s", nginx).group(1)) <= defaults.header_timeout_seconds
    assert "non_idempotent" not in nginx  # a POST that reached a replica is never replayed to another


def test_dockerfile_promises() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build"
    text = (DOCKER / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    final = stages[-1]
    runs = " ".join(instruction(final, "RUN"))
    for tool in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool not in runs, f"final image must not install {tool}"
    user = instruction(final, "USER")
    assert user and not user[-1].startswith(("root", "0")), "runs as a non-root user"
    env = " ".join(instruction(final, "ENV"))
    assert "ONCO_EXERCISE_HOME=/app" in env
    copies = instruction(final, "COPY")
    assert "terminology /app/terminology" in copies and "profiles /app/profiles" in copies
    assert json.loads(instruction(final, "ENTRYPOINT")[0]) == ["onco-exercise", "serve"]
    health = instruction(final, "HEALTHCHECK")[0]
    # liveness, not readiness: an EHR outage must not mark every replica unhealthy
    assert "/healthz" in health and "/readyz" not in health and "curl" not in health and '"python"' in health
    build = " ".join(instruction(stages[0], "RUN"))
    assert "--require-hashes" in build and "-r /tmp/requirements.lock" in build
    assert "pip install --no-deps --no-build-isolation ." in build
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for needed in ("!service/", "!terminology/", "!profiles/", "!pyproject.toml", "!docker/requirements.lock"):
        assert needed in ignore


def test_entrypoint_and_healthcheck_commands_work_outside_a_container(fhir_base: str, tmp_path: Path) -> None:
    """Run exactly the image's ENTRYPOINT + CMD (port swapped for a free one) and its HEALTHCHECK command."""
    final = dockerfile_stages()[-1]
    entry = json.loads(instruction(final, "ENTRYPOINT")[0])
    cmd = json.loads(instruction(final, "CMD")[0])
    health = json.loads(instruction(final, "HEALTHCHECK")[0].split("CMD", 1)[1].strip())
    port = str(free_port())
    cmd = [port if a == "8000" else "127.0.0.1" if a == "0.0.0.0" else a for a in cmd]
    health = [a.replace(":8000/", f":{port}/") for a in health]
    assert health[0] == "python"
    health[0] = sys.executable

    env = onco_env(tmp_path, fhir_servers=fhir_base, cds_clients=cds_clients_json(), home=str(ROOT))
    proc = ServeProcess(env, tmp_path / "serve.log", argv=[*entry, *cmd], port=int(port))
    try:
        proc.wait_ready()
        assert subprocess.run(health, capture_output=True, timeout=30).returncode == 0
    finally:
        proc.stop()
    assert subprocess.run(health, capture_output=True, timeout=30).returncode != 0  # server gone: unhealthy


def test_the_lock_file_pins_every_dependency_with_hashes() -> None:
    """docker/requirements.lock (pip-compile --generate-hashes) covers pyproject's runtime dependencies, each
    pinned to one version with at least one sha256; the image installs from it with --require-hashes."""
    import tomllib

    from packaging.requirements import Requirement

    lock = (DOCKER / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^ \\]+) \\$", lock, re.M))
    names = {k.lower().replace("_", "-").replace(".", "-"): v for k, v in pins.items()}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        name = req.name.lower().replace("_", "-").replace(".", "-")
        assert name in names, f"{req.name} is not in docker/requirements.lock: run pip-compile again"
        assert req.specifier.contains(names[name], prereleases=True), (req, names[name])
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n#\n", 1)[-1].strip())
    for block in blocks:
        if "==" in block.split("\n", 1)[0]:
            assert "--hash=sha256:" in block, block.split("\n", 1)[0]
