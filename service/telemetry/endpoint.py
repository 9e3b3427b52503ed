"""The HTTP endpoint of `metrics_address`: `/metrics`, `/healthz` and `/readyz`.

Rule 1: it answers from its own threads, never from the event loop: that is what lets `/healthz`
        say 503 while the loop is stalled, and what keeps a slow scrape off the hot path.
Rule 2: it needs only the standard library's sockets, not `http.server` (whose imports would
        add a tenth to a one-second run's start-up): it parses the little of HTTP/1.x that a
        scraper or a probe sends, and answers once per connection. It binds when the worker
        starts; an address it cannot listen on is one error line
        (`ListenFailed`, exit 1). Port 0 binds any free port; `address` says which.
Rule 3: the world's clients cannot hurt the worker. At most `max_connections` are served at once
        (below the descriptor limit: see descriptors.py); the others wait
        in a listen backlog deep enough for a burst of scrapes, outside the process; a client
        whose request is not all there `READ_TIMEOUT` seconds after its first byte is dropped
        (however it trickles); one that sends nothing for that long too, and sooner when every
        slot is taken and another client waits: the one waiting longest for the rest of its
        request makes room (silent or trickling connections cannot starve a probe, which sends
        its request at once); one that hangs up is ignored; any other failure is one log line,
        never a traceback.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from service.descriptors import MAX_CONNECTIONS, http_connections_allowed
from service.errors import ListenFailed
from service.settings import split_address
from service.telemetry.logs import Logger
from service.telemetry.metrics import Metrics

__all__ = ["LISTEN_BACKLOG", "READ_TIMEOUT", "ProbeServer", "serving_on"]

LISTEN_BACKLOG = 1024  # connections the kernel holds while every slot is busy (a scrape burst)
READ_TIMEOUT = 5.0  # seconds a client may take to send its request
SLOT_LOOK_INTERVAL = 0.05  # seconds between looks for a client to hang up on, all slots taken
MAX_REQUEST_LINE = 8192  # bytes in the request line or in one header line
MAX_HEADERS = 100
MAX_LEADING_BLANK_LINES = 8  # empty lines ignored before the request line
_RECEIVE_BYTES = 4096
_PLAIN = "text/plain; charset=utf-8"
_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    metrics: Metrics
    log: Logger

    def __init__(self, address: tuple[str, int], max_connections: int) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        self._unfinished: dict[socket.socket, None] = {}  # request not all there: oldest first
        self._unfinished_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind; where the system can, accept a connection only once its client has written
        (TCP_DEFER_ACCEPT): a client of a burst is never taken for a silent one, and a silent
        one waits in the kernel, holding no slot, for up to `READ_TIMEOUT`."""
        if hasattr(socket, "TCP_DEFER_ACCEPT"):
            with contextlib.suppress(OSError):
                self.socket.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, int(READ_TIMEOUT)
                )
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only when a slot is free: until then the client waits in the backlog, and
        holds none of the worker's descriptors. A client is waiting now, so when every slot is
        taken the connection waiting longest for its request is hung up on to make room."""
        # One client hung up on for each accept, looked for again and again until there is one:
        # the handler of a connection just accepted may not have said yet that it waits for its
        # request, and the accept should not wait out that client's timeout.
        hung_up = False
        while not self.slots.acquire(blocking=False):
            hung_up = hung_up or self._hang_up_on_the_longest_unfinished()
            if self.slots.acquire(timeout=SLOT_LOOK_INTERVAL):
                break
        try:
            return super().get_request()
        except BaseException:
            self.slots.release()
            raise

    def wait_for_bytes(self, connection: socket.socket, seconds: float) -> bool:
        """Until the client has sent more (True) or `seconds` passed (False). Only while it
        sends nothing may its slot be taken back for a client waiting to be served: a request
        already there, not yet read by a busy handler, is never hung up on."""
        readable = select.poll()  # not select(): a descriptor may be past FD_SETSIZE
        readable.register(connection, select.POLLIN)
        if readable.poll(0):
            return True
        with self._unfinished_lock:
            self._unfinished[connection] = None
        try:
            return bool(readable.poll(seconds * 1000))
        finally:
            with self._unfinished_lock:
                self._unfinished.pop(connection, None)

    def _hang_up_on_the_longest_unfinished(self) -> bool:
        """Whether a client was hung up on (none waits for its request: every slot answers)."""
        with self._unfinished_lock:
            oldest = next(iter(self._unfinished), None)
            if oldest is None:
                return False
            del self._unfinished[oldest]
            with contextlib.suppress(OSError):  # already gone: its slot is coming back anyway
                oldest.shutdown(socket.SHUT_RDWR)  # its handler wakes, reads nothing, ends
            return True

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: it will not give the slot back
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up or went silent is no event; anything else is one log line."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        self.log.warning("http_request_failed", error=f"{type(error).__name__}: {error}")


class _Server6(_Server):
    address_family = socket.AF_INET6


def _path_of(target: str) -> str:
    """A request target's path: origin-form (`/metrics?x`) as sent, absolute-form
    (`http://host:9108/metrics`, which a server must accept: RFC 9112) without its scheme and
    authority; the query dropped."""
    target = target.split("?", 1)[0]
    scheme, separator, rest = target.partition("://")
    if separator and scheme.lower() in ("http", "https"):
        target = "/" + rest.partition("/")[2]
    return target


def _refusal_of_request_line(line: bytes) -> tuple[int, bytes] | None:
    """(status, body) for a request line that is not `METHOD target HTTP/1.x`; None for one."""
    words = line.decode("latin-1").split()
    if len(words) != 3 or not _VERSION.fullmatch(words[2]):
        return 400, b"bad request line\n"
    if not words[2].startswith("HTTP/1."):
        return 505, b"HTTP/1.0 and HTTP/1.1 only\n"
    return None


class _Handler(socketserver.StreamRequestHandler):
    """One request per connection: the request line and headers read within their limits,
    GET or HEAD answered, the connection closed."""

    server: _Server
    timeout = READ_TIMEOUT

    def handle(self) -> None:
        head = self._read_head()
        if head is None:
            return  # hung up, or out of time, without a whole request
        if isinstance(head, tuple):
            self._answer(*head)
            return
        method, target, _ = head[0].decode("latin-1").split()  # checked as it came
        if any(b":" not in line for line in head[1:]):
            self._answer(400, b"bad header line\n")
            return
        if method not in ("GET", "HEAD"):
            self._answer(405, b"only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
            return
        self._answer(*self._route(_path_of(target)), head_only=method == "HEAD")

    def _read_head(self) -> list[bytes] | tuple[int, bytes] | None:
        """The request line and header lines, all within `READ_TIMEOUT` of the first byte (a
        client trickling a byte every few seconds cannot hold its slot longer); a (status,
        body) when they break a limit; None when the client hung up or ran out of time first."""
        if not self.server.wait_for_bytes(self.connection, READ_TIMEOUT):
            return None  # silent all along
        deadline = time.monotonic() + READ_TIMEOUT
        lines: list[bytes] = []
        pending = b""
        leading_blank_lines = 0
        while True:
            end = pending.find(b"\n") + 1
            line, pending = (pending[:end], pending[end:]) if end else (b"", pending)
            if len(line or pending) > MAX_REQUEST_LINE:
                if not lines:
                    return 414, b"request line too long\n"
                return 431, b"header line too long\n"
            if line in (b"\r\n", b"\n"):
                if lines:
                    return lines
                # Before the request line: a few are ignored, as RFC 9112 (2.2) asks; a flood
                # of them is a client to drop, not to spend the interpreter on.
                leading_blank_lines += 1
                if leading_blank_lines > MAX_LEADING_BLANK_LINES:
                    return 400, b"bad request\n"
                continue
            if line:
                lines.append(line)
                refused = _refusal_of_request_line(line) if len(lines) == 1 else None
                if refused is not None:  # at once: no header is waited for (`GET /\r\n`)
                    return refused
                if len(lines) > MAX_HEADERS + 1:
                    return 431, b"too many header lines\n"
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not self.server.wait_for_bytes(self.connection, left):
                return None
            received = self.connection.recv(_RECEIVE_BYTES)
            if not received:
                return None
            pending += received

    def _route(self, path: str) -> tuple[int, bytes, str]:
        metrics = self.server.metrics
        if path == "/metrics":
            body, content_type = metrics.exposition()
            return 200, body, content_type
        if path == "/healthz":
            stalled = metrics.stalled_after_a_beat_was_due()
            if stalled is None:
                return 200, b"ok: event loop turning\n", _PLAIN
            return 503, f"stalled: no heartbeat for {stalled:.1f} s\n".encode(), _PLAIN
        if path == "/readyz":
            why = metrics.not_ready_because()
            if why is None:
                return 200, b"ready\n", _PLAIN
            return 503, f"not ready: {why}\n".encode(), _PLAIN
        return 404, b"not found: try /metrics, /healthz or /readyz\n", _PLAIN

    def _answer(
        self,
        status: int,
        body: bytes,
        content_type: str = _PLAIN,
        *,
        head_only: bool = False,
        extra: str = "",
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n"
        ).encode("latin-1")
        self.wfile.write(head if head_only else head + body)


class ProbeServer:
    """The endpoint, serving one `Metrics` from a background thread."""

    def __init__(
        self, address: str, metrics: Metrics, log: Logger, max_connections: int = MAX_CONNECTIONS
    ) -> None:
        host, port = split_address(address)
        kind = _Server6 if ":" in host else _Server
        try:
            self._server = kind((host, port), max_connections)
        except OSError as error:
            reason = error.strerror or str(error)
            raise ListenFailed(
                f"cannot listen on metrics_address {address} (--metrics-address, "
                f"WORKER_METRICS_ADDRESS): {reason}"
            ) from None
        self._server.metrics = metrics
        self._server.log = log
        bound_host, bound_port = self._server.socket.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.address = f"{shown}:{bound_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving, without waiting for the serving thread's next poll (up to 0.5 s): the
        worker is shutting down, and its exit ends the thread anyway."""
        # No thread to be had (a memory limit): the exit closes the socket all the same.
        with contextlib.suppress(RuntimeError):
            threading.Thread(target=self._stop, name="metrics-http-stop", daemon=True).start()

    def _stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serving_on(address: str) -> Callable[[Metrics, Logger], ProbeServer]:
    """What serves `Metrics` on `address`, from the moment the worker opens them."""

    def serve(metrics: Metrics, log: Logger) -> ProbeServer:
        server = ProbeServer(address, metrics, log, http_connections_allowed())
        log.info("metrics_listening", address=server.address)
        return server

    return serve
