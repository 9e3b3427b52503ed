"""The worker's lifecycle, top to bottom: start up, run, shut down.

Start up: take the checkpoint's lock, load the checkpoint, open the input and check that it is
          still the input the checkpoint consumed.
Run:      a task group with the reader (read a chunk, cut it into whole lines, parse them in
          threads, commit in order), the timer (checkpoint, heartbeat, progress) and the signal
          listener, which only asks for shutdown.
Shut down: the final checkpoint, shielded from cancellation and bounded by `shutdown_timeout`;
          then one summary line. A second signal during shutdown exits at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import stat
from dataclasses import asdict
from typing import Any

import aiofiles
import anyio
import anyio.abc
from aiofiles.threadpool.binary import AsyncBufferedReader

from . import __version__
from .checkpoint import Checkpoint, CheckpointStore, InputIdentity, identify_input, write_json
from .errors import (
    BadRecordFound,
    InputChanged,
    InputUnreadable,
    UnexpectedError,
    WorkerError,
)
from .files import temp_files_of
from .lock import HEARTBEAT_INTERVAL, WorkerLock
from .logs import Logger
from .parsing import Batch, LineParser, Region, RegionResult
from .settings import Settings
from .shutdown import exit_after, exit_at_next_signal, listen_for_stop_signals, report_failure
from .state import Pacer, Periodic, Position, RateMeter

__all__ = ["run_worker"]

CHUNK_BYTES = 2 * 1024 * 1024
PARSE_THREADS = 2  # regions parsed at once: numpy releases the GIL, so both cores work
PROGRESS_INTERVAL = 10.0
_PACED_BATCHES_PER_SECOND = 10


def _split_for_threads(region: Region, parts: int) -> list[Region]:
    """Cut a region of whole lines into up to `parts` regions of whole lines."""
    data = region.data
    if parts < 2 or len(data) < 2 * 65536:
        return [region]
    pieces: list[Region] = []
    start = 0
    for part in range(1, parts):
        cut = data.find(b"\n", len(data) * part // parts)
        if cut < 0 or cut + 1 >= len(data):
            break
        pieces.append(Region(data[start : cut + 1], region.offset + start))
        start = cut + 1
    pieces.append(Region(data[start:], region.offset + start))
    return pieces


class _Worker:
    def __init__(self, settings: Settings, log: Logger) -> None:
        self.settings = settings
        self.log = log
        self.store = CheckpointStore(settings.checkpoint)
        self.lock = WorkerLock(settings.checkpoint)
        self.input: AsyncBufferedReader | None = None
        self.parser = self._new_parser(Position())
        self.saved: Position | None = None  # what the checkpoint on disk holds
        self.saving = anyio.Lock()
        self.failure: WorkerError | None = None
        self.stop_signal: int | None = None
        self.started = False  # the parser holds the position to resume from
        self.completed = False
        self.caught_up_at: Position | None = None
        self.caught_up_identity: InputIdentity | None = None
        self.shutdown_deadline_set = False
        self.pacer = Pacer(settings.max_rate)
        self.rate = RateMeter(0, 0.0)

    # --- start up -----------------------------------------------------------------------------

    def _new_parser(self, start: Position) -> LineParser:
        return LineParser(
            start,
            max_line_bytes=self.settings.max_line_bytes,
            stop_at_bad=self.settings.on_bad_record == "fail",
        )

    async def start(self) -> None:
        self.lock.acquire()
        for leftover in temp_files_of(self.settings.checkpoint) + temp_files_of(
            self.settings.result
        ):
            with contextlib.suppress(OSError):  # an interrupted write; the real file is intact
                leftover.unlink()

        checkpoint = await anyio.to_thread.run_sync(self.store.load)
        if checkpoint is None:
            self.log.info("checkpoint_not_found", checkpoint=str(self.settings.checkpoint))
            start = Position()
        else:
            start = self.saved = checkpoint.position
            self.log.info("checkpoint_loaded", **asdict(start), completed=checkpoint.completed)
        self.input = await self._open_input()
        if checkpoint is not None:
            start = await self._verify_input(checkpoint)
        self._start_from(start)

    async def _open_input(self) -> AsyncBufferedReader:
        path = self.settings.input
        try:
            handle = await aiofiles.open(path, "rb")
        except FileNotFoundError:
            raise InputUnreadable(
                f"input {path} not found; create it with `checkpoint-worker generate`"
            ) from None
        except OSError as error:
            raise InputUnreadable(f"cannot open input {path}: {error.strerror}") from None
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            await handle.close()
            raise InputUnreadable(f"input {path} is not a regular file")
        return handle

    def _input_fd(self) -> int:
        assert self.input is not None
        return self.input.fileno()

    async def _verify_input(self, checkpoint: Checkpoint) -> Position:
        """The position to resume from: the checkpoint's, or 0 when the input changed (restart)."""
        offset = checkpoint.position.offset
        if offset == 0:
            return checkpoint.position  # nothing consumed, nothing that could have changed
        size = os.fstat(self._input_fd()).st_size
        if size < offset:
            change = InputChanged(
                f"input {self.settings.input} is shorter ({size} bytes) than the checkpoint's "
                f"offset {offset}",
                "truncated",
            )
        else:
            identity = await anyio.to_thread.run_sync(identify_input, self._input_fd(), offset)
            if identity == checkpoint.identity:
                return checkpoint.position
            change = InputChanged(
                f"input {self.settings.input} differs from what the checkpoint consumed "
                f"(first {offset} bytes)",
                "content_changed",
            )
        self._input_changed(change)
        return Position()

    def _input_changed(self, change: InputChanged) -> None:
        """Log the change; raise under `fail`, carry on (from 0) under `restart`."""
        action = self.settings.on_input_change
        # A warning either way: under "fail" the one error line is the fatal_error that follows.
        self.log.warning(
            "input_changed", reason=change.reason, action=action, message=change.message
        )
        if action == "fail":
            raise InputChanged(
                change.message + "; set on_input_change=restart to start over, or `reset`",
                change.reason,
            )

    def _start_from(self, start: Position) -> None:
        self.parser = self._new_parser(start)
        self.caught_up_at = None
        self.rate = RateMeter(start.records, anyio.current_time())
        self.started = True

    # --- run ----------------------------------------------------------------------------------

    async def run(self, early_signals: list[int]) -> None:
        async with anyio.create_task_group() as tasks:
            # Listen first, so a signal during start-up is a graceful stop too.
            stop = functools.partial(self._request_shutdown, scope=tasks.cancel_scope)
            await tasks.start(listen_for_stop_signals, stop, early_signals)
            await self._guarded(self.start, tasks.cancel_scope)
            if self.failure is None:
                tasks.start_soon(self._guarded, self._run_timer, tasks.cancel_scope)
                await self._guarded(self._consume, tasks.cancel_scope)
            tasks.cancel_scope.cancel()

    async def _guarded(self, work: Any, scope: anyio.CancelScope) -> None:
        """Run `work`; a failure is kept for shutdown and stops every task."""
        try:
            await work()
        except WorkerError as error:
            self.failure = self.failure or error
            scope.cancel()
        except Exception as error:  # a defect: still one error line and a clean stop
            self.failure = self.failure or UnexpectedError(error)
            scope.cancel()

    def _request_shutdown(self, signum: int, scope: anyio.CancelScope) -> None:
        self.stop_signal = signum
        exit_at_next_signal()
        self._bound_shutdown()
        self.log.info("shutdown_requested", signal=signal.Signals(signum).name)
        scope.cancel()

    def _bound_shutdown(self) -> None:
        if not self.shutdown_deadline_set:
            self.shutdown_deadline_set = True
            exit_after(self.settings.shutdown_timeout, self.log)

    async def _consume(self) -> None:
        """Read the input to its end (or forever, following), restarting on a changed input."""
        while True:
            try:
                await self._read_input()
                return
            except InputChanged as change:
                self._input_changed(change)
                handle = await self._open_when_present()
                # Swap under the save lock: a save never pairs one file's position with
                # another file's identity.
                async with self.saving:
                    previous, self.input = self.input, handle
                    self._start_from(Position())
                if previous is not None:
                    await previous.close()

    async def _open_when_present(self) -> AsyncBufferedReader:
        while True:
            try:
                return await self._open_input()
            except InputUnreadable:
                if not self.settings.follow:
                    raise
                await anyio.sleep(self.settings.poll_interval)

    async def _read_input(self) -> None:
        assert self.input is not None
        await self.input.seek(self.parser.split_offset)
        while True:
            try:
                chunk = await self.input.read(self._read_size())
            except OSError as error:
                raise InputUnreadable(
                    f"cannot read input {self.settings.input}: {error.strerror}"
                ) from None
            if chunk:
                await self._process(self.parser.split(chunk))
            elif not self.settings.follow:
                await self._apply(self.parser.finish())
                await self._complete()
                return
            else:
                await self._catch_up()
                await self._wait_for_growth()

    def _read_size(self) -> int:
        if self.settings.max_rate <= 0:
            return CHUNK_BYTES
        position = self.parser.position
        bytes_per_record = position.offset / position.lines if position.lines else 8.0
        batch = self.settings.max_rate * bytes_per_record / _PACED_BATCHES_PER_SECOND
        return max(64, min(CHUNK_BYTES, int(batch)))

    async def _process(self, regions: list[Region]) -> None:
        for region in regions:
            pieces = _split_for_threads(region, PARSE_THREADS)
            results = await self._parse(pieces)
            for piece, result in zip(pieces, results, strict=True):
                await self._apply(self.parser.commit(piece, result))
                delay = self.pacer.delay_after(result.records, anyio.current_time())
                if delay > 0:
                    await anyio.sleep(delay)

    async def _parse(self, regions: list[Region]) -> list[RegionResult]:
        if len(regions) == 1 and (regions[0].parsed or len(regions[0].data) < 65536):
            return [self.parser.parse(regions[0])]
        results: list[RegionResult | None] = [None] * len(regions)

        async def parse_one(index: int) -> None:
            # Parsing is pure: if shutdown cancels us, the thread's result is simply dropped.
            # Not abandoned, though: a thread that finishes while the event loop closes writes
            # to its half-closed self-pipe, and SIGPIPE (default for the CLI) kills the process
            # after the final checkpoint with 141 instead of 0. A piece parses in milliseconds.
            results[index] = await anyio.to_thread.run_sync(self.parser.parse, regions[index])

        async with anyio.create_task_group() as parsers:
            for index in range(len(regions)):
                parsers.start_soon(parse_one, index)
        return [r for r in results if r is not None]

    async def _apply(self, batch: Batch) -> None:
        for bad in batch.bad:
            self.log.warning("bad_record", line=bad.line, offset=bad.offset, reason=bad.reason)
        if batch.failed is not None:
            bad = batch.failed
            raise BadRecordFound(
                f"bad record at line {bad.line} (offset {bad.offset}): "
                f"{bad.reason.replace('_', ' ')}; on_bad_record=fail stops here"
            )

    async def _catch_up(self) -> None:
        position = self.parser.position
        if position == self.caught_up_at:
            return
        self.caught_up_at = position
        self.caught_up_identity = await anyio.to_thread.run_sync(
            identify_input, self._input_fd(), position.offset
        )
        await self._write_result(position)
        self.log.info(
            "caught_up", offset=position.offset, records=position.records, sum=position.sum
        )

    async def _wait_for_growth(self) -> None:
        """Poll until the input grows; raise InputChanged if it shrank, moved or vanished."""
        path = self.settings.input
        opened = os.fstat(self._input_fd())
        while True:
            await anyio.sleep(self.settings.poll_interval)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                raise InputChanged(f"input {path} was deleted", "deleted") from None
            except OSError as error:
                raise InputUnreadable(f"cannot stat input {path}: {error.strerror}") from None
            if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
                raise InputChanged(f"input {path} was replaced by another file", "replaced")
            if current.st_size < self.parser.split_offset:
                raise InputChanged(
                    f"input {path} was truncated to {current.st_size} bytes", "truncated"
                )
            if current.st_size > self.parser.split_offset:
                await self._check_consumed_unchanged()
                return

    async def _check_consumed_unchanged(self) -> None:
        """Growth is fine; a rewrite of what was already consumed (same file) is not."""
        if self.caught_up_at is None or self.caught_up_identity is None:
            return
        identity = await anyio.to_thread.run_sync(
            identify_input, self._input_fd(), self.caught_up_at.offset
        )
        if identity != self.caught_up_identity:
            raise InputChanged(
                f"input {self.settings.input} was rewritten: its first "
                f"{self.caught_up_at.offset} bytes are not the ones already consumed",
                "content_changed",
            )

    async def _complete(self) -> None:
        position = self.parser.position
        with anyio.CancelScope(shield=True):  # a stop now must not undo the completion
            await self._save("completed", completed=True)
            await self._write_result(position)
            self.completed = True
        self._log_progress()
        self.log.info(
            "completed",
            sum=position.sum,
            records=position.records,
            bad_records=position.bad_records,
        )

    async def _write_result(self, position: Position) -> None:
        document = {
            "sum": position.sum,
            "records": position.records,
            "bad_records": position.bad_records,
            "offset": position.offset,
            "lines": position.lines,
            "input": str(self.settings.input),
        }
        await anyio.to_thread.run_sync(write_json, self.settings.result, document)

    async def _run_timer(self) -> None:
        now = anyio.current_time()
        checkpoints = Periodic(self.settings.checkpoint_interval, now)
        heartbeats = Periodic(HEARTBEAT_INTERVAL, now)
        progress = Periodic(PROGRESS_INTERVAL, now)
        while True:
            next_due = min(checkpoints.next_due, heartbeats.next_due, progress.next_due)
            await anyio.sleep(max(0.0, next_due - anyio.current_time()))
            now = anyio.current_time()
            if heartbeats.due(now):
                await anyio.to_thread.run_sync(self.lock.heartbeat)
            if checkpoints.due(now) and self.parser.position != self.saved:
                await self._save("timer")
            if progress.due(now):
                self._log_progress()

    def _log_progress(self) -> None:
        position = self.parser.position
        size = os.fstat(self._input_fd()).st_size if self.input is not None else 0
        self.log.info(
            "progress",
            offset=position.offset,
            records=position.records,
            bad_records=position.bad_records,
            percent=round(100.0 * position.offset / size, 2) if size else 100.0,
            rate=round(self.rate.rate(position.records, anyio.current_time()), 1),
        )

    async def _save(self, reason: str, *, completed: bool = False) -> None:
        """Write the checkpoint of the current position (off the event loop, one at a time)."""
        async with self.saving:
            position = self.parser.position
            if reason == "timer" and position == self.saved:
                # The save this one waited for (the completion one, say) already wrote this
                # position; writing it again would undo its flag.
                return
            fd = self._input_fd()

            def write() -> None:
                try:
                    identity = identify_input(fd, position.offset)
                except OSError as error:
                    raise InputUnreadable(
                        f"cannot read input {self.settings.input}: {error.strerror}"
                    ) from None
                checkpoint = Checkpoint(position, str(self.settings.input), identity, completed)
                self.store.save(checkpoint)

            await anyio.to_thread.run_sync(write)
            self.saved = position
            self.log.info("checkpoint_saved", **asdict(position), reason=reason)

    # --- shut down ----------------------------------------------------------------------------

    async def shut_down(self) -> tuple[int, str]:
        """The final checkpoint and the exit code; called once, whatever happened before."""
        code, reason = (0, "completed") if self.completed else (0, "shutdown")
        if self.failure is not None:
            code, reason = self.failure.exit_code, "error"
        # 1. The final checkpoint, unless start-up did not finish, the completion write already
        #    happened, or the failure makes the position meaningless.
        worth_saving = (
            self.started
            and not self.completed
            and (self.failure is None or isinstance(self.failure, BadRecordFound))
        )
        if worth_saving:
            # A save cannot be cancelled mid-fsync: the watchdog ends the process at the
            # timeout instead, and the checkpoint on disk is whole at any instant.
            self._bound_shutdown()
            with anyio.CancelScope(shield=True):
                try:
                    await self._save("shutdown")
                    self._log_progress()
                except WorkerError as error:
                    self.failure = self.failure or error
                    code, reason = error.exit_code, "error"
        # 2. The one error line, then release the input and the lock.
        report_failure(self.log, self.failure)
        if self.input is not None:
            with anyio.CancelScope(shield=True):
                await self.input.close()
        self.lock.release()
        return code, reason


async def run_worker(settings: Settings, log: Logger, early_signals: list[int]) -> int:
    """Run the worker to completion or shutdown; return the process exit code.

    `early_signals` are SIGTERM/SIGINT received before the worker could listen for them.
    """
    log.info(
        "worker_started",
        input=str(settings.input),
        checkpoint=str(settings.checkpoint),
        pid=os.getpid(),
        version=__version__,
        follow=settings.follow,
    )
    worker = _Worker(settings, log)
    try:
        await worker.run(early_signals)
    finally:
        code, reason = await worker.shut_down()
    counters = asdict(worker.parser.position) if worker.started else {}
    log.info("worker_stopped", exit_code=code, reason=reason, **counters)
    return code
