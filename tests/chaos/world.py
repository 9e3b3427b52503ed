"""Part `world`: the world around a running worker, at random instants. HTTP clients that hang up,
reset, stay idle or come in bursts; signals the worker ignores (SIGUSR1...); SIGHUP and SIGQUIT
as the stop signal; stdout's reader going away
(`run | head`); SIGSTOP/SIGCONT with probes timing out meanwhile."""

from __future__ import annotations

import contextlib
import functools
import random
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from service.signals import signal_name
from tests.chaos.checks import (
    bytes_or_none,
    check_on_disk,
    expect_no_traceback,
    expect_shutdown_save,
)
from tests.chaos.inputs import noisy_input, prefix_oracle
from tests.chaos.steps import finish_run, fresh, parallel
from tests.chaos.tally import Tally
from tests.chaos.workers import CHECKPOINT, INPUT, MAX_LINE, PACED, RATE, start_worker
from tests.oracle import expected_of
from tests.processes import RUN, WorkerProcess, unmeasured, worker_env

__all__ = ["part"]

METRICS = ["--metrics-address", "127.0.0.1:0"]
STOPS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
NO_MEANING = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGRTMIN + 2)


def _ready_with_endpoint(
    tally: Tally, label: str, cwd: Path
) -> tuple[WorkerProcess, tuple[str, int]] | None:
    """A paced worker serving metrics, once it is ready, and the endpoint's address; None (a
    violation, the worker killed) when it never listens or never gets ready."""
    worker = start_worker(cwd, [*PACED, *METRICS])
    listening = worker.wait_for_or_none("metrics_listening", timeout=30)
    if listening is None or not worker.wait_ready():
        tally.violation(label, f"no endpoint or never ready: {worker.tail()}")
        worker.kill()
        return None
    host, port = str(listening["address"]).rsplit(":", 1)
    return worker, (host, int(port))


def _scrape(address: tuple[str, int], path: str, timeout: float = 10) -> int:
    """The status of GET `path`; 0 when no answer came within `timeout`."""
    try:
        url = f"http://{address[0]}:{address[1]}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def _hang_up(address: tuple[str, int], rng: random.Random) -> str:
    """A client that asks and goes away before the answer: closed, or reset (RST)."""
    with contextlib.suppress(OSError):
        client = socket.create_connection(address, timeout=5)
        client.sendall(rng.choice([b"GET /metrics", b"HEAD /healthz"]) + b" HTTP/1.1\r\n\r\n")
        reset = rng.random() < 0.5
        if reset:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        return "scrape reset before the answer" if reset else "scrape hung up before the answer"
    return "scrape hung up before the answer"


def _burst(tally: Tally, label: str, address: tuple[str, int], size: int) -> None:
    """`size` scrapes at once: each must be answered within a client's 10 s."""
    statuses: list[int] = []
    start = threading.Barrier(size)

    def one() -> None:
        start.wait()
        statuses.append(_scrape(address, "/metrics"))

    clients = [threading.Thread(target=one) for _ in range(size)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    unanswered = sum(1 for status in statuses if status != 200)
    if unanswered:
        tally.violation(label, f"{unanswered} of a burst of {size} scrapes not answered with 200")


def _hostile_clients(tally: Tally, cwd: Path, lives: int, rng: random.Random) -> None:
    """Lives of a paced worker while clients hang up, reset, idle and burst at random instants,
    and signals it ignores come, each life ended by a stop signal: exit 0, the shutdown save,
    no traceback."""
    label = "world/hostile HTTP clients"
    data = noisy_input(rng, int(RATE * 1.2 * lives))
    (cwd / INPUT).write_bytes(data)
    oracle = prefix_oracle(data)
    for _ in range(lives):
        before = bytes_or_none(cwd / CHECKPOINT)
        started = _ready_with_endpoint(tally, label, cwd)
        if started is None:
            return
        worker, address = started
        idle: list[socket.socket] = []
        deadline = time.monotonic() + rng.uniform(0.3, 1.0)
        while time.monotonic() < deadline and worker.process.poll() is None:
            action = rng.choice(["hang up", "hang up", "idle", "burst", "probe", "signal"])
            if action == "hang up":
                tally.fault(_hang_up(address, rng))
            elif action == "idle":
                with contextlib.suppress(OSError):
                    idle += [socket.create_connection(address, timeout=5) for _ in range(20)]
                tally.fault("idle connections held open (20)")
            elif action == "burst":
                size = rng.choice([50, 100, 200])
                _burst(tally, label, address, size)
                tally.fault(f"burst of {size} concurrent scrapes")
            elif action == "signal":
                ignored = rng.choice(NO_MEANING)
                worker.signal(ignored)
                tally.fault(f"{signal_name(ignored)} to ignore")
            elif _scrape(address, rng.choice(["/healthz", "/readyz", "/metrics"])) == 0:
                tally.violation(label, "a probe went unanswered while the worker ran")
            time.sleep(rng.uniform(0.0, 0.1))
        signum = rng.choice(STOPS)
        sent = worker.signal(signum)
        worker.finish(timeout=30)
        for connection in idle:
            connection.close()
        assert worker.ended is not None
        tally.peak("stop signal to exit under hostile clients (s)", worker.ended - sent)
        tally.fault(f"{signal_name(signum)} graceful stop under hostile clients")
        _expect_graceful(tally, label, worker, cwd, before, signum)
        check_on_disk(tally, label, cwd / CHECKPOINT, oracle)
        if worker.named("completed"):
            break
        tally.restart()
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def _expect_graceful(
    tally: Tally, label: str, worker: WorkerProcess, cwd: Path, before: bytes | None, signum: int
) -> None:
    """Exit 0 after a stop by `signum`, named in `shutdown_requested`, with its shutdown save."""
    expect_no_traceback(tally, label, worker)
    if worker.named("completed"):  # the input ran out first
        if worker.code not in (0, 128 + signum, -signum):
            tally.violation(label, f"exit {worker.code} after completing: {worker.tail()}")
        return
    name = signal.Signals(signum).name
    if worker.code != 0:
        tally.violation(label, f"exit {worker.code} after {name}: {worker.tail()}")
    if not worker.named("shutdown_requested", signal=name):
        tally.violation(label, f"no shutdown_requested signal={name}")
    expect_shutdown_save(tally, label, worker, cwd / CHECKPOINT, before)


def _paused(tally: Tally, cwd: Path, lives: int, rng: random.Random) -> None:
    """SIGSTOP at random instants while probes time out, then SIGCONT: the worker runs on, and
    the next stop signal still ends it gracefully."""
    label = "world/paused with probes timing out"
    data = noisy_input(rng, int(RATE * 2.0 * lives))
    (cwd / INPUT).write_bytes(data)
    oracle = prefix_oracle(data)
    for _ in range(lives):
        before = bytes_or_none(cwd / CHECKPOINT)
        started = _ready_with_endpoint(tally, label, cwd)
        if started is None:
            return
        worker, address = started
        for _pause in range(rng.randint(1, 3)):
            time.sleep(rng.uniform(0.05, 0.4))
            if worker.process.poll() is not None:
                break
            worker.signal(signal.SIGSTOP)
            for _probe in range(rng.randint(1, 4)):
                if _scrape(address, rng.choice(["/healthz", "/metrics"]), timeout=0.2) == 0:
                    tally.fault("probe timed out while the worker was stopped")
            worker.signal(signal.SIGCONT)
            tally.fault("SIGSTOP, then SIGCONT")
        if worker.process.poll() is None and _scrape(address, "/healthz") != 200:
            tally.violation(label, "/healthz not 200 after SIGCONT")
        signum = rng.choice(STOPS)
        worker.signal(signum)
        worker.finish(timeout=30)
        _expect_graceful(tally, label, worker, cwd, before, signum)
        check_on_disk(tally, label, cwd / CHECKPOINT, oracle)
        if worker.named("completed"):
            break
        tally.restart()
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def _closed_stdout(tally: Tally, cwd: Path, lives: int, rng: random.Random) -> None:
    """`run | head -N`: stdout's reader goes away after a random number of lines; the worker
    saves its final checkpoint and exits 0, and the next run resumes from it."""
    label = "world/closed stdout"
    data = noisy_input(rng, int(RATE * 0.8 * lives))
    (cwd / INPUT).write_bytes(data)
    oracle = prefix_oracle(data)
    env = unmeasured(worker_env())
    for _ in range(lives):
        follow = rng.random() < 0.5
        args = [*PACED, "--follow"] if follow else PACED
        worker = subprocess.Popen(
            [*RUN, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert worker.stdout is not None
        lines = rng.randint(1, 30)
        events = [worker.stdout.readline() for _ in range(lines)]
        worker.stdout.close()  # the reader goes away, as `head` does
        closed = time.monotonic()
        try:
            _, stderr = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, stderr = worker.communicate()
            tally.violation(label, f"still running 30 s after its stdout closed ({follow=})")
            return
        tally.fault("stdout closed by its reader" + (" while following" if follow else ""))
        tally.peak("stdout closed to exit (s)", time.monotonic() - closed)
        completed = any(b'"event": "completed"' in line for line in events)
        if worker.returncode != 0:
            tally.violation(label, f"exit {worker.returncode} after its stdout closed")
        if b"Traceback" in stderr:
            tally.violation(label, f"a traceback on stderr:\n{stderr.decode()[-1500:]}")
        # The stop waits for start-up to finish, so even `head -1` leaves a checkpoint.
        saved = check_on_disk(tally, label, cwd / CHECKPOINT, oracle)
        if saved is None:
            tally.violation(label, "no checkpoint on disk after its stdout closed")
        if completed or (saved is not None and saved.get("offset") == len(data)):
            break
        tally.restart()
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def part(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """Hostile HTTP clients, signals, a closed stdout, SIGSTOP/SIGCONT with probes timing out."""
    lives = 3 if short else 25
    scenarios: list[Callable[[Tally, Path, int, random.Random], None]] = [
        _hostile_clients,
        _paused,
        _closed_stdout,
    ]
    jobs = [
        functools.partial(
            scenario,
            tally,
            fresh(root, f"{scenario.__name__.strip('_')}{i}"),
            lives,
            random.Random(rng.randrange(2**32)),
        )
        for i in range(1 if short else 2)
        for scenario in scenarios
    ]
    parallel(tally, jobs)
