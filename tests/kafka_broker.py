"""A real Apache Kafka broker (KRaft, one node) for the tests, from Maven Central's jars.

Rules:
1. The jars are resolved once by Maven (`deploy/kafka/pom.xml`, `mvn
   dependency:copy-dependencies`) into a cache directory git ignores (`deploy/kafka/.jars`, or
   KAFKA_JARS_DIR); later starts reuse them.
2. Every broker has its own temporary directory and free ports, so several checkouts can run
   brokers at the same time on one machine.
3. Two client listeners: PLAINTEXT, and SASL_PLAINTEXT with SCRAM-SHA-256 for the user created at
   format time (`SASL_USER` / `SASL_PASSWORD`).

`python -m tests.kafka_broker fetch` resolves the jars (CI runs it before the tests);
`python -m tests.kafka_broker run` starts a broker and prints its addresses until Ctrl+C.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SASL_PASSWORD",
    "SASL_USER",
    "Broker",
    "BrokerUnavailable",
    "broker_tool",
    "fetch_jars",
    "start_broker",
]

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "deploy" / "kafka" / "pom.xml"
SASL_USER = "worker"
SASL_PASSWORD = "worker-secret"
START_TIMEOUT = 120.0


class BrokerUnavailable(RuntimeError):
    """The broker could not be fetched or started; the message says why in one line."""


def jars_dir() -> Path:
    return Path(os.environ.get("KAFKA_JARS_DIR", REPO / "deploy" / "kafka" / ".jars"))


def fetch_jars() -> Path:
    """The directory of the broker's jars, resolved by Maven on first use."""
    target = jars_dir()
    stamp = target / ".complete"
    if stamp.exists() and stamp.read_bytes() == POM.read_bytes():
        return target
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise BrokerUnavailable("the Kafka tests need `java` (17) and `mvn` on PATH")
    shutil.rmtree(target, ignore_errors=True)
    done = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={target}",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise BrokerUnavailable("mvn could not resolve the Kafka jars: " + " | ".join(tail))
    stamp.write_bytes(POM.read_bytes())
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class Broker:
    """One running broker: its addresses, its directory and its JVM."""

    plaintext: str
    sasl: str
    directory: Path
    process: subprocess.Popen[bytes] | None
    command: tuple[str, ...] = ()

    def _end(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Stop the JVM gracefully and start it again on the same data and ports."""
        with self.stopped():
            pass

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The JVM stopped inside the block (connections refused), started again after it on
        the same data and ports."""
        self._end()
        try:
            yield
        finally:
            self.process = _launch(self.command, self.directory)
            port = int(self.plaintext.rsplit(":", 1)[1])
            _wait_listening(port, self.process, self.directory / "broker.log")

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The JVM stopped (SIGSTOP) inside the block: connections stay open, nothing answers."""
        assert self.process is not None, "a broker started here, not one named from outside"
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the JVM (SIGTERM, then SIGKILL) and remove its directory."""
        self._end()
        shutil.rmtree(self.directory, ignore_errors=True)


def _launch(command: tuple[str, ...], directory: Path) -> subprocess.Popen[bytes]:
    with (directory / "broker.log").open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _properties(directory: Path, ports: dict[str, int], extra: dict[str, str]) -> str:
    listeners = {
        "PLAINTEXT": ports["plain"],
        "SASL_PLAINTEXT": ports["sasl"],
        "CONTROLLER": ports["controller"],
    }
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{ports['controller']}",
        "listeners": ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items()),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{ports['plain']},"
        f"SASL_PLAINTEXT://127.0.0.1:{ports['sasl']}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,"
        "CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-256",
        "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "log.dirs": str(directory / "data"),
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        "auto.create.topics.enable": "false",
        "log.retention.check.interval.ms": "1000",
        **extra,
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def broker_tool(main: str, *args: str, directory: Path) -> list[str]:
    """The command that runs one of Kafka's own tools (`kafka.admin.ConfigCommand`)."""
    return _java(fetch_jars(), main, *args, directory=directory)


def _java(jars: Path, main: str, *args: str, directory: Path) -> list[str]:
    return [
        "java",
        "-Xms256m",
        "-Xmx512m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
        f"-Dkafka.logs.dir={directory / 'logs'}",
        "-cp",
        f"{jars}/*",
        main,
        *args,
    ]


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise BrokerUnavailable("the Kafka broker exited at start: " + " | ".join(tail))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise BrokerUnavailable(f"the Kafka broker did not listen within {START_TIMEOUT:.0f} s")


def start_broker(extra: dict[str, str] | None = None) -> Broker:
    """Format a fresh KRaft log directory and start a broker on free ports; returns when the
    client listeners accept connections."""
    jars = fetch_jars()
    directory = Path(tempfile.mkdtemp(prefix="checkpoint-worker-kafka-"))
    ports = {name: _free_port() for name in ("plain", "sasl", "controller")}
    config = directory / "server.properties"
    config.write_text(_properties(directory, ports, extra or {}))
    scram = f"SCRAM-SHA-256=[name={SASL_USER},password={SASL_PASSWORD}]"
    storage = _java(
        jars,
        "kafka.tools.StorageTool",
        "format",
        "--standalone",
        f"--cluster-id={_cluster_id()}",  # one argument: an id may start with '-'
        "-c",
        str(config),
        "--add-scram",
        scram,
        directory=directory,
    )
    done = subprocess.run(storage, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        raise BrokerUnavailable("kafka StorageTool format failed: " + " | ".join(tail))
    log = directory / "broker.log"
    command = tuple(_java(jars, "kafka.Kafka", str(config), directory=directory))
    process = _launch(command, directory)
    broker = Broker(
        plaintext=f"127.0.0.1:{ports['plain']}",
        sasl=f"127.0.0.1:{ports['sasl']}",
        directory=directory,
        process=process,
        command=command,
    )
    try:
        _wait_listening(ports["plain"], process, log)
        _wait_listening(ports["sasl"], process, log)
    except BaseException:
        broker.stop()
        raise
    return broker


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "fetch"
    try:
        if command == "fetch":
            print(fetch_jars())
            return 0
        if command == "run":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            broker = start_broker()
            print(f"PLAINTEXT {broker.plaintext}\nSASL_PLAINTEXT {broker.sasl}", flush=True)
            try:
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
            finally:
                broker.stop()
            return 0
    except BrokerUnavailable as error:
        print(f"kafka_broker: {error}", file=sys.stderr)
        return 1
    print("usage: python -m tests.kafka_broker [fetch|run]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
