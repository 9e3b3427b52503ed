"""The compose profile `fleet` on a real Docker engine: a Kafka broker, a one-shot publish,
three workers of one group and Prometheus, run with the compose file users run.

The broker image is the offline stand-in (`deploy/kafka/Dockerfile`: the stand-in base image,
Debian's Java 17, the Maven jars), swapped in through KAFKA_IMAGE as PYTHON_IMAGE swaps the base.
One project for the module, removed with its volumes at the end. Without an engine the tests skip,
unless REQUIRE_DOCKER=1 makes that a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kafka_broker import fetch_jars
from tests.oracle import expected_of
from tests.processes import cli, worker_env
from tests.scrape import get
from tests.test_docker import REPO, Compose, _compose_env, _python_image, _require_docker

pytestmark = [pytest.mark.docker, pytest.mark.kafka]

COUNT = 300_000
RATE = 4_000  # per worker: about 25 s of work for three, long enough to restart and kill one
WORKERS = 3
SERVICES = ("kafka", "publish", "fleet-worker", "prometheus")


def _docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def fleet() -> Iterator[Compose]:
    """The stand-in broker image built, the fleet up with three workers; all removed after."""
    _require_docker()
    base = _python_image()
    assert base, "the fleet test needs the stand-in base image"
    fetch_jars()
    tag = f"checkpoint-kafka-standin:{uuid.uuid4().hex[:10]}"
    _docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "-t",
        tag,
        str(REPO / "deploy" / "kafka"),
        timeout=900,
    )
    settings = {
        "PYTHON_IMAGE": base,
        "WORKER_IMAGE": os.environ.get("WORKER_IMAGE", "checkpoint-worker:local"),
        "KAFKA_IMAGE": tag,
        "FLEET_COUNT": str(COUNT),
        "FLEET_MAX_RATE": str(RATE),
        "PROMETHEUS_PORT": "0",  # any free port of the host's loopback
    }
    stack = Compose(f"cwfleet-{uuid.uuid4().hex[:10]}", _compose_env(**settings))
    try:
        stack(
            "--profile",
            "fleet",
            "up",
            "--detach",
            "--build",
            "--scale",
            f"fleet-worker={WORKERS}",
            *SERVICES,
            timeout=1200,
        )
        yield stack
    finally:
        stack(
            "--profile",
            "fleet",
            "down",
            "--volumes",
            "--remove-orphans",
            "--timeout",
            "20",
            timeout=180,
            check=False,
        )
        subprocess.run(["docker", "image", "rm", tag], capture_output=True, timeout=120)


def _status(stack: Compose) -> dict[str, Any] | None:
    done = stack(
        "--profile",
        "fleet",
        "exec",
        "-T",
        "fleet-worker",
        "checkpoint-worker",
        "status",
        "--json",
        check=False,
    )
    if done.returncode != 0 or not done.stdout.startswith("{"):
        return None
    loaded = json.loads(done.stdout)
    return loaded if isinstance(loaded, dict) else None


def _workers(stack: Compose) -> list[str]:
    return stack("--profile", "fleet", "ps", "--quiet", "fleet-worker").stdout.split()


def _oracle(tmp_path: Path) -> tuple[int, int, int]:
    """What `generate --seed 7` wrote in the publish container, generated again here."""
    output = tmp_path / "numbers.txt"
    done = cli(
        ["generate", "--seed", "7", "--count", str(COUNT), "--output", str(output)],
        tmp_path,
        worker_env(),
    )
    assert done.returncode == 0, done.stderr
    expected = expected_of(output.read_bytes())
    return expected.sum, expected.records, expected.bad_records


def _tails(stack: Compose) -> str:
    """The last log lines of the publish container and of every worker, for a failure."""
    logs = stack("--profile", "fleet", "logs", "--no-color", "--tail", "15", check=False)
    return (logs.stdout + logs.stderr)[-6000:]


def _owns_partitions(container: str) -> bool:
    """Whether the worker's log shows it holding partitions now and committing them."""
    owned = committed = False
    for line in _docker("logs", container).splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "partitions_assigned":
            owned, committed = bool(event["partitions"]), False
        elif event.get("event") in ("partitions_revoked", "commit_rejected"):
            owned = False
        elif event.get("event") == "checkpoint_saved":
            committed = True
    return owned and committed


def _a_worker_owning_partitions(stack: Compose) -> str:
    """A worker holding partitions (a final commit to show), waiting out a rebalance."""
    deadline = time.monotonic() + 120
    while True:
        owning = [worker for worker in _workers(stack) if _owns_partitions(worker)]
        if owning:
            return owning[0]
        assert time.monotonic() < deadline, "no worker held partitions and committed them"
        time.sleep(0.5)


def test_the_fleet_publishes_no_port_and_shares_no_volume(fleet: Compose) -> None:
    """Scaled workers have no published port and no named volume; each has its own /data."""
    config = json.loads(fleet("--profile", "fleet", "config", "--format", "json").stdout)
    worker = config["services"]["fleet-worker"]
    assert not worker.get("ports")
    assert not worker.get("volumes")
    assert worker["environment"]["WORKER_SOURCE"] == "kafka"
    assert config["services"]["kafka"]["image"].startswith("checkpoint-kafka-standin:")
    assert len(_workers(fleet)) == WORKERS


def test_the_prometheus_service_scrapes_every_worker_with_the_shipped_alerts(
    fleet: Compose,
) -> None:
    """The optional Prometheus service, built from Debian's package on the worker's base image,
    finds the three workers, scrapes them, and has the alerts of deploy/prometheus loaded."""
    address = fleet("--profile", "fleet", "port", "prometheus", "9090").stdout.strip()
    deadline = time.monotonic() + 120  # a scrape and a DNS refresh every 15 s
    up: list[Any] = []
    while len(up) < WORKERS:
        assert time.monotonic() < deadline, f"targets up: {up}\n{_tails(fleet)}"
        time.sleep(2)
        query = urllib.parse.urlencode({"query": 'up{job="checkpoint-worker"} == 1'})
        status, body = get(f"http://{address}/api/v1/query?{query}")
        up = json.loads(body)["data"]["result"] if status == 200 else []
    status, body = get(f"http://{address}/api/v1/rules")
    assert status == 200
    names = {
        rule["name"] for group in json.loads(body)["data"]["groups"] for rule in group["rules"]
    }
    assert {"CheckpointWorkerDown", "CheckpointWorkerPartitionUnowned"} <= names


def test_a_restarted_and_a_killed_worker_leave_the_group_total_exact(
    fleet: Compose, tmp_path: Path
) -> None:
    """`docker restart` one worker (SIGTERM, final commit) and `docker kill` another (SIGKILL)
    mid-way: the group's committed totals end equal to the oracle's."""
    deadline = time.monotonic() + 180
    while (report := _status(fleet)) is None or report["records"] == 0:
        assert time.monotonic() < deadline, f"the fleet never committed anything:\n{_tails(fleet)}"
        time.sleep(1)
    # One holding partitions, so its final commit shows; mid-rebalance a worker may hold none.
    restarted = _a_worker_owning_partitions(fleet)
    killed = next(worker for worker in _workers(fleet) if worker != restarted)
    _docker("restart", restarted)
    _docker("kill", killed)
    _docker("start", killed)
    logs = _docker("logs", restarted)
    assert '"reason": "shutdown"' in logs  # the final commit of its partitions
    wanted = _oracle(tmp_path)
    deadline = time.monotonic() + 300
    while True:
        report = _status(fleet)
        if report is not None and report["lag"] == 0 and report["records"] >= wanted[1]:
            break
        assert time.monotonic() < deadline, f"the fleet did not catch up: {report}"
        time.sleep(1)
    assert (int(report["sum"]), report["records"], report["bad_records"]) == wanted
