"""The shipped alerts in a real Prometheus server (Debian's `prometheus` package), scraping a
real fleet: three Kafka workers of one group, their metrics_address on free ports."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kafka_broker import Broker
from tests.kafka_support import create_topic, kafka_env
from tests.processes import WorkerProcess, cli
from tests.scrape import get

pytestmark = pytest.mark.kafka

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"
SCRAPE_INTERVAL = 1
EVALUATION_INTERVAL = 1
FOR = 3  # every alert's `for`, in the test's copy of the rules


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    """Starts a Prometheus server scraping the given `HOST:PORT` targets as the job
    checkpoint-worker, with the shipped rules (each `for` shortened); yields its address."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("no prometheus binary: apt-get install -y prometheus (.ci/run does)")
    servers: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str]) -> str:
        rules = tmp_path / "alerts.yml"
        rules.write_text(re.sub(r"for: \d+m", f"for: {FOR}s", RULES.read_text()))
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": f"{SCRAPE_INTERVAL}s",
                        "evaluation_interval": f"{EVALUATION_INTERVAL}s",
                    },
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {"job_name": "checkpoint-worker", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        address = f"127.0.0.1:{_free_port()}"
        with (tmp_path / "prometheus.log").open("wb") as log:
            servers.append(
                subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address={address}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 30
        while get_or_none(f"http://{address}/-/ready") != 200:
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)
        return address

    yield start
    for server in servers:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def get_or_none(url: str) -> int | None:
    try:
        return get(url)[0]
    except OSError:
        return None


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector `expr` evaluates to now, from the HTTP API."""
    query = urllib.parse.urlencode({"query": expr})
    status, body = get(f"http://{prometheus}/api/v1/query?{query}")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _poll(prometheus: str, expr: str, timeout: float) -> float:
    """The value of the one-element vector `expr` once it is there and above 0."""
    deadline = time.monotonic() + timeout
    while True:
        result = _query(prometheus, expr)
        if result and float(result[0]["value"][1]) > 0:
            return float(result[0]["value"][1])
        assert time.monotonic() < deadline, f"{expr}: {result}"
        time.sleep(0.5)


def _firing(prometheus: str, name: str = "") -> list[dict[str, Any]]:
    """The alerts firing now (named `name`, if given), from the HTTP API."""
    status, body = get(f"http://{prometheus}/api/v1/alerts")
    assert status == 200, body
    alerts: list[dict[str, Any]] = json.loads(body)["data"]["alerts"]
    return [
        alert
        for alert in alerts
        if alert["state"] == "firing" and name in ("", alert["labels"]["alertname"])
    ]


def test_a_real_prometheus_sees_the_fleet_and_fires_when_a_worker_stops(
    kafka: Broker, tmp_path: Path, prometheus_for: Any
) -> None:
    """Prometheus scrapes three workers of one group: its API gives the group's record rate,
    its lag and the topic's partitions all owned; nothing fires; a worker stopped makes
    CheckpointWorkerDown fire for it within 3 scrapes + `for` + one evaluation, and nothing
    else but CheckpointWorkerMemberGone."""
    topic = create_topic(kafka, 3)
    env = kafka_env(
        kafka,
        topic,
        f"group-{topic}",
        WORKER_FOLLOW="true",
        WORKER_MAX_RATE="2000",
        WORKER_METRICS_ADDRESS="127.0.0.1:0",
        WORKER_CHECKPOINT_INTERVAL="0.5",
    )
    # No bad record: CheckpointWorkerBadRecords would fire at once, and rightly.
    (tmp_path / "numbers.txt").write_text("".join(f"{n}\n" for n in range(200_000)))
    assert cli(["publish", "--lines-per-message", "100"], tmp_path, env).returncode == 0
    workers: list[WorkerProcess] = []
    try:
        for name in "abc":
            (tmp_path / name).mkdir()
            workers.append(WorkerProcess([], tmp_path / name, env))
        targets = [w.wait_for("metrics_listening")["address"] for w in workers]
        for worker in workers:
            worker.wait_for("partitions_assigned", partitions=lambda p: len(p) > 0, timeout=60)
        prometheus = prometheus_for(targets)

        rate = _poll(prometheus, "sum(rate(checkpoint_worker_records_total[5s]))", timeout=30)
        assert 0 < rate <= 3 * 2000 * 1.5
        # The group's lag: each partition's, whichever member reports it.
        lag = _poll(prometheus, "sum(max by (partition) (checkpoint_worker_lag_messages))", 30)
        assert lag <= 2_000  # messages of 100 records: 200,000 records published
        owned = _poll(prometheus, "count(count by (partition) (checkpoint_worker_position))", 30)
        assert owned == _poll(prometheus, "max(checkpoint_worker_topic_partitions)", 30) == 3
        assert _firing(prometheus) == []

        stopped = workers[0]
        stopped.signal(signal.SIGTERM)
        assert stopped.finish(timeout=30) == 0
        deadline = time.monotonic() + 3 * SCRAPE_INTERVAL + FOR + EVALUATION_INTERVAL
        while not _firing(prometheus, "CheckpointWorkerDown"):
            assert time.monotonic() < deadline, _firing(prometheus)
            time.sleep(0.2)
        (down,) = _firing(prometheus, "CheckpointWorkerDown")
        assert down["labels"]["instance"] == targets[0]
        # A member gone fires too once its step of the last 15 minutes saw all three: rightly.
        others = {a["labels"]["alertname"] for a in _firing(prometheus)} - {"CheckpointWorkerDown"}
        assert others <= {"CheckpointWorkerMemberGone"}
    finally:
        for worker in workers:
            worker.kill()
