"""End to end against a real Docker engine: the image and docker-compose.yml, as a user runs them.

One throwaway compose project for the whole module (built and started once, removed with its
volume at the end, also after a failure). The tests run in order on that one stack: a graceful
restart, a SIGKILL, the catch-up and its exact sum, the hardening and health, then the commands
run beside the worker. Without an engine they skip, unless REQUIRE_DOCKER=1 makes that a failure.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.oracle import expected_of
from tests.scrape import get, samples_of

pytestmark = pytest.mark.docker

Event = dict[str, Any]
Run = list[Event]  # the log events of one start of the worker container, in order

REPO = Path(__file__).resolve().parent.parent
OFFLINE_BASE_SCRIPT = REPO.parent / "shared" / "docker" / "offline-base-image.sh"
OFFLINE_BASE_IMAGE = "offline/python:3.11-slim-bookworm"

# Smaller and faster than the defaults (1,000,000 numbers at 17,000/s), yet slow enough that the
# worker is still busy through the restart and the kill: about 20 s of work in all.
COUNT = 300_000
RATE = 15_000
SHUTDOWN_TIMEOUT = 5.0  # the worker's default shutdown_timeout


@functools.cache
def _docker_problem() -> str | None:
    """Why the Docker tests cannot run here, or None when an engine and Compose v2 answer."""
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    for command in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` did not answer within 30 s"
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`{' '.join(command)}` failed: {detail}"
    return None


def _require_docker() -> None:
    problem = _docker_problem()
    if problem is None:
        return
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"REQUIRE_DOCKER=1 but no usable Docker engine: {problem}")
    pytest.skip(f"no usable Docker engine ({problem}); set REQUIRE_DOCKER=1 to fail instead")


def _python_image() -> str | None:
    """The base image: $PYTHON_IMAGE, else the local stand-in for python:*-slim where it exists."""
    if os.environ.get("PYTHON_IMAGE"):
        return os.environ["PYTHON_IMAGE"]
    present = subprocess.run(
        ["docker", "image", "inspect", OFFLINE_BASE_IMAGE], capture_output=True, timeout=60
    )
    if present.returncode == 0:
        return OFFLINE_BASE_IMAGE
    if OFFLINE_BASE_SCRIPT.exists():  # builds the stand-in where no registry is reachable
        made = subprocess.run(
            [str(OFFLINE_BASE_SCRIPT)], capture_output=True, text=True, timeout=900, check=True
        )
        return made.stdout.strip().splitlines()[-1]
    return None  # the compose file's default, an official python:3.x-slim


def _compose_env(**settings: str) -> dict[str, str]:
    """The caller's environment without anything that would change what compose runs."""
    # WORKER_IMAGE is the compose file's image tag, not a worker setting: it is kept.
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith(("WORKER_", "COMPOSE_")) or k == "WORKER_IMAGE")
        and k not in ("PYTHON_IMAGE", "GENERATE_COUNT", "METRICS_PORT")
    }
    env.update(settings)
    return env


def _timestamp(event: Event) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def _named(run: Run, name: str, **fields: Any) -> list[Event]:
    return [e for e in run if e["event"] == name and all(e.get(k) == v for k, v in fields.items())]


def _one(run: Run, name: str, **fields: Any) -> Event:
    """The one `name` event of `run`; fails showing the run's log otherwise."""
    found = _named(run, name, **fields)
    log = "\n".join(json.dumps(e) for e in run)
    assert len(found) == 1, f"expected one {name} {fields}, found {len(found)} in:\n{log}"
    return found[0]


def _after(run: Run, name: str) -> Run:
    """The events of `run` after its first `name` event (empty if there is none)."""
    for index, event in enumerate(run):
        if event["event"] == name:
            return run[index + 1 :]
    return []


def _free_port() -> int:
    """A port nothing listens on now, for the host side of the published metrics port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Compose:
    """`docker compose -p PROJECT -f docker-compose.yml ...`, run from the repository's root."""

    def __init__(self, project: str, env: dict[str, str]) -> None:
        self.project = project
        self.env = env
        self.metrics_url = f"http://127.0.0.1:{env.get('METRICS_PORT', '9108')}"

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-p", self.project, "-f", "docker-compose.yml", *args]
        done = subprocess.run(
            command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"`{' '.join(command)}` exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def runs(self) -> list[Run]:
        """The worker container's log events, one list per start (its log survives restarts)."""
        output = self("logs", "--no-color", "--no-log-prefix", "worker").stdout
        runs: list[Run] = []
        for line in output.splitlines():
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event["event"] == "worker_started" or not runs:
                runs.append([])
            runs[-1].append(event)
        return runs

    def wait_for(
        self, what: str, done: Callable[[list[Run]], bool], timeout: float = 60
    ) -> list[Run]:
        """The worker's runs once `done(runs)` holds; fails with the log after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs()
            if done(runs):
                return runs
            if time.monotonic() > deadline:
                log = "\n".join(json.dumps(e) for run in runs for e in run)
                raise AssertionError(f"no {what} within {timeout:.0f} s; worker log:\n{log}")
            time.sleep(0.5)

    def container(self, service: str = "worker") -> str:
        return self("ps", "--all", "--quiet", service).stdout.strip()

    def inspect(self, template: str, service: str = "worker") -> Any:
        """One field of `docker inspect`, decoded from JSON."""
        done = subprocess.run(
            ["docker", "inspect", "--format", "{{json " + template + "}}", self.container(service)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(done.stdout)

    def exit_codes(self, since: float, service: str = "worker") -> list[int]:
        """The exit codes of the service's container since `since`, from the engine's events."""
        container = self.container(service)
        deadline = time.monotonic() + 15
        while True:  # the `die` event can trail the command that stopped the container
            window = ["--since", f"{since:.3f}", "--until", f"{time.time():.3f}"]
            only = ["--filter", f"container={container}", "--filter", "event=die"]
            done = subprocess.run(
                ["docker", "events", "--format", "{{json .}}", *window, *only],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            codes = [
                json.loads(line)["Actor"]["Attributes"]["exitCode"]
                for line in done.stdout.splitlines()
            ]
            if codes or time.monotonic() > deadline:
                return [int(code) for code in codes]
            time.sleep(0.5)


@pytest.fixture(scope="module")
def compose() -> Iterator[Compose]:
    """A fresh project, built and started with `up -d --build`, removed with its volume after."""
    _require_docker()
    settings = {"GENERATE_COUNT": str(COUNT), "WORKER_MAX_RATE": str(RATE)}
    settings["METRICS_PORT"] = str(_free_port())
    image = _python_image()
    if image:
        settings["PYTHON_IMAGE"] = image
    stack = Compose(f"cwtest-{uuid.uuid4().hex[:10]}", _compose_env(**settings))
    try:
        stack("up", "--detach", "--build", timeout=1200)
        yield stack
    finally:
        stack("down", "--volumes", "--remove-orphans", "--timeout", "20", timeout=180, check=False)


def test_compose_defaults_are_the_documented_ones() -> None:
    """Without overrides: 1,000,000 numbers followed at 17,000/s, by hardened containers."""
    _require_docker()
    done = subprocess.run(
        ["docker", "compose", "-f", "docker-compose.yml", "config", "--format", "json"],
        cwd=REPO,
        env=_compose_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    services = json.loads(done.stdout)["services"]
    worker, generate = services["worker"], services["generate"]
    assert worker["build"]["args"]["PYTHON_IMAGE"].startswith("python:3.")
    assert worker["build"]["network"] == "host"
    assert generate["image"] == worker["image"]
    assert generate["command"] == ["generate", "--if-missing", "--count", "1000000"]
    assert worker["environment"]["WORKER_FOLLOW"] == "true"
    assert worker["environment"]["WORKER_MAX_RATE"] == "17000"
    assert worker["environment"]["WORKER_LOG_FORMAT"] == "json"
    assert worker["depends_on"]["generate"]["condition"] == "service_completed_successfully"
    assert worker["restart"] == "unless-stopped"
    assert worker["environment"]["WORKER_METRICS_ADDRESS"] == "0.0.0.0:9108"
    [published] = worker["ports"]
    assert (published["host_ip"], published["published"], published["target"]) == (
        "127.0.0.1",
        "9108",
        9108,
    )
    for service in (worker, generate):
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["volumes"][0]["target"] == "/data"
        assert set(service["logging"]["options"]) == {"max-size", "max-file"}


def test_restart_stops_gracefully_and_resumes_exactly(compose: Compose) -> None:
    """`docker compose restart` sends SIGTERM; the worker saves at X, exits 0 and resumes at X."""
    runs = compose.wait_for(
        "two timer checkpoints",
        lambda runs: bool(runs) and len(_named(runs[-1], "checkpoint_saved", reason="timer")) >= 2,
    )
    timer = _named(runs[0], "checkpoint_saved", reason="timer")
    first, last = timer[0], timer[-1]
    pace = (last["records"] - first["records"]) / max(_timestamp(last) - _timestamp(first), 1.0)
    assert pace < 1.5 * RATE, f"WORKER_MAX_RATE={RATE} did not reach the worker: {pace:.0f}/s"

    restarted_at = time.time()
    compose("restart", "worker", timeout=60)
    runs = compose.wait_for(
        "checkpoint_loaded after the restart",
        lambda runs: len(runs) == 2 and bool(_named(runs[1], "checkpoint_loaded")),
    )
    stopped, resumed = runs
    request = _one(stopped, "shutdown_requested")
    assert request["signal"] == "SIGTERM"
    final = _after(stopped, "shutdown_requested")
    saved = _one(final, "checkpoint_saved")
    assert saved["reason"] == "shutdown"
    assert stopped[-1]["event"] == "worker_stopped"
    assert stopped[-1]["exit_code"] == 0
    assert stopped[-1]["offset"] == saved["offset"]
    assert _timestamp(stopped[-1]) - _timestamp(request) < SHUTDOWN_TIMEOUT
    assert compose.exit_codes(since=restarted_at) == [0]  # the engine saw it exit 0, not 137

    loaded = _one(resumed, "checkpoint_loaded")
    assert (loaded["offset"], loaded["records"], loaded["sum"]) == (
        saved["offset"],
        saved["records"],
        saved["sum"],
    )


def test_sigkill_resumes_from_the_last_timer_checkpoint(compose: Compose) -> None:
    """After `kill -s SIGKILL` and `start`, the worker resumes at its last timer checkpoint."""

    def fresh_checkpoint(runs: list[Run]) -> bool:
        # Kill between two timer writes, so the last write on disk is also the last one logged.
        saved = _named(_after(runs[-1], "checkpoint_loaded"), "checkpoint_saved")
        return bool(saved) and time.time() - _timestamp(saved[-1]) < 0.4

    runs = compose.wait_for("a fresh timer checkpoint", fresh_checkpoint)
    assert not _named(runs[-1], "caught_up"), "the worker finished before the kill; raise COUNT"
    time.sleep(max(0.0, _timestamp(_named(runs[-1], "checkpoint_saved")[-1]) + 0.4 - time.time()))
    killed_at = time.time()
    compose("kill", "--signal", "SIGKILL", "worker")
    assert compose.exit_codes(since=killed_at) == [137]
    compose("start", "worker", timeout=60)

    runs = compose.wait_for(
        "checkpoint_loaded after the kill",
        lambda runs: len(runs) == 3 and bool(_named(runs[2], "checkpoint_loaded")),
    )
    killed, resumed = runs[1], runs[2]
    assert not _named(killed, "shutdown_requested")
    assert not _named(killed, "worker_stopped")
    last_saved = _named(killed, "checkpoint_saved")[-1]
    assert last_saved["reason"] == "timer"
    loaded = _one(resumed, "checkpoint_loaded")
    assert (loaded["offset"], loaded["records"], loaded["sum"]) == (
        last_saved["offset"],
        last_saved["records"],
        last_saved["sum"],
    )


def test_catches_up_with_the_exact_sum_of_the_volume(compose: Compose, tmp_path: Path) -> None:
    """It catches up; result.json holds exactly the sum of the numbers.txt in the volume."""
    runs = compose.wait_for(
        "caught_up", lambda runs: bool(_named(runs[-1], "caught_up")), timeout=180
    )
    caught_up = _one(runs[-1], "caught_up")
    compose("cp", "worker:/data/numbers.txt", str(tmp_path / "numbers.txt"))
    compose("cp", "worker:/data/result.json", str(tmp_path / "result.json"))
    expected = expected_of((tmp_path / "numbers.txt").read_bytes(), following=True)
    result = json.loads((tmp_path / "result.json").read_text())

    assert expected.records == COUNT  # GENERATE_COUNT reached `generate`
    assert (result["sum"], result["records"], result["bad_records"], result["offset"]) == (
        expected.sum,
        expected.records,
        0,
        expected.offset,
    )
    assert (caught_up["sum"], caught_up["offset"]) == (expected.sum, expected.offset)
    # Following: it waits for more input instead of completing and exiting.
    assert not any(_named(run, "completed") for run in runs)
    assert compose.inspect(".State.Running") is True


def test_metrics_are_published_on_the_host(compose: Compose) -> None:
    """The published port serves /metrics: this start's counters, lag 0 once caught up, probes."""
    runs = compose.wait_for(
        "caught_up", lambda runs: bool(_named(runs[-1], "caught_up")), timeout=180
    )
    loaded, caught_up = _one(runs[-1], "checkpoint_loaded"), _one(runs[-1], "caught_up")
    status, text = get(f"{compose.metrics_url}/metrics")
    assert status == 200
    samples = samples_of(text)
    # Counters count what this container's process consumed, from its checkpoint on.
    consumed = caught_up["records"] - loaded["records"]
    assert samples[("checkpoint_worker_records_total", ())] == consumed
    assert samples[("checkpoint_worker_lag_bytes", (("partition", "numbers.txt"),))] == 0
    assert get(f"{compose.metrics_url}/healthz")[0] == 200
    assert get(f"{compose.metrics_url}/readyz") == (200, "ready\n")


def test_runs_hardened_and_turns_healthy(compose: Compose) -> None:
    """Non-root, read-only root filesystem, no capabilities, no new privileges, and healthy."""
    assert compose("exec", "-T", "worker", "id", "-u").stdout.strip() not in ("", "0")
    denied = compose("exec", "-T", "worker", "touch", "/probe", check=False)
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr
    compose("exec", "-T", "worker", "touch", "/tmp/probe")  # the tmpfs is writable
    status = compose("exec", "-T", "worker", "cat", "/proc/1/status").stdout
    assert "CapEff:\t0000000000000000" in status
    assert "NoNewPrivs:\t1" in status
    assert compose.inspect(".HostConfig.ReadonlyRootfs") is True
    assert compose.inspect(".HostConfig.CapDrop") == ["ALL"]
    assert compose.inspect(".Config.User") not in ("", "0", "root")

    deadline = time.monotonic() + 90
    while (health := compose.inspect(".State.Health.Status")) != "healthy":
        assert health == "starting", compose.inspect(".State.Health")
        assert time.monotonic() < deadline, f"still {health} after 90 s"
        time.sleep(1)


def test_status_and_reset_run_beside_the_worker(compose: Compose) -> None:
    """`run --rm worker status` prints the checkpoint; `reset` refuses while the worker runs."""
    runs = compose.runs()
    caught_up = _one(runs[-1], "caught_up")
    compose.wait_for(
        "the caught-up checkpoint",
        lambda runs: bool(_named(runs[-1], "checkpoint_saved", offset=caught_up["offset"])),
    )
    shown = compose("run", "--rm", "--no-deps", "worker", "status").stdout
    rows = dict(line.split(None, 1) for line in shown.splitlines() if line.strip())
    assert rows["offset"] == f"{caught_up['offset']:,}"
    assert rows["records"] == f"{caught_up['records']:,}"
    assert rows["sum"] == str(caught_up["sum"])
    assert rows["percent"] == "100.00%"

    refused = compose("run", "--rm", "--no-deps", "worker", "reset", check=False)
    assert refused.returncode == 1
    assert "in use by a worker" in refused.stdout + refused.stderr
    compose("exec", "-T", "worker", "test", "-f", "/data/checkpoint.json")


def test_a_stop_right_after_a_start_is_graceful_too(compose: Compose) -> None:
    """`docker stop` the instant `docker start` returns, five times: the worker, PID 1, has no
    handlers yet (a signal to PID 1 of default action is dropped), but its entry point holds the
    signal until it listens. Each stop is graceful, with its final checkpoint, exit 0 at once,
    never the grace period's SIGKILL (137)."""
    container = compose.container()
    compose("stop", "worker", timeout=60)
    before = len(compose.runs())
    for trial in range(5):
        subprocess.run(["docker", "start", container], check=True, capture_output=True, timeout=60)
        sent = time.monotonic()
        subprocess.run(["docker", "stop", container], check=True, capture_output=True, timeout=60)
        took = time.monotonic() - sent
        assert compose.inspect(".State.ExitCode") == 0, f"trial {trial}"
        assert took < SHUTDOWN_TIMEOUT, f"trial {trial}: stopped in {took:.1f} s"
    runs = compose.runs()[before:]
    assert len(runs) == 5
    for run in runs:
        assert _one(run, "shutdown_requested")["signal"] == "SIGTERM"
        assert _named(run, "checkpoint_saved")[-1]["reason"] == "shutdown"
        assert run[-1]["event"] == "worker_stopped"
        assert run[-1]["exit_code"] == 0
    compose("start", "worker", timeout=60)
