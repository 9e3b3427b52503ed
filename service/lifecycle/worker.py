"""The worker's lifecycle, top to bottom: start up, run, shut down. It sees partitions only.

Start up: the source takes its lock, loads the saved state and finds its partitions (files now,
          Kafka partitions later); each one checks it is still what the state consumed.
Run:      one task group: a reader task per partition (ask it for a batch, report bad records,
          pace, wait `poll_interval` when it is caught up), the source's rescans when following,
          the timer (checkpoint, heartbeat, progress) and the signal listener, which only asks
          for shutdown. SIGHUP stops like SIGTERM (no reload), and so does a closed stdout;
          a signal the worker has no use for (SIGUSR1...) is ignored (`service.signals`).
Shut down: the final checkpoint, shielded from cancellation and bounded by `shutdown_timeout`;
          then one summary line. A second signal during shutdown exits at once; a signal
          after the run ended by itself (completed, failed) changes nothing but the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from types import FrameType
from typing import Any, NoReturn

import anyio
import anyio.abc

from service import __version__
from service.core import _kernel
from service.core.names import shown
from service.core.parsing import Parsed
from service.core.position import Pacer, Periodic, Position, RateMeter, percent_done
from service.descriptors import require_descriptors, reserve_descriptors
from service.environment import unknown_worker_variables
from service.errors import BadRecordFound, UnexpectedError, WorkerError
from service.lifecycle.deadline import NOW, ShutdownDeadline
from service.lifecycle.partition import Partition, ReadStatus, Source
from service.settings import Settings, setting_fields
from service.signals import IGNORED_SIGNALS, STOP_SIGNALS, signal_name
from service.storage.checkpoint import require_directory_of, write_json
from service.storage.lock import HEARTBEAT_INTERVAL
from service.telemetry.logs import (
    Logger,
    last_words,
    limit_reader_grace,
    on_output_closed,
    rendered_last_words,
    stop_waiting_for_reader,
)
from service.telemetry.wiring import telemetry_for

__all__ = ["run_worker"]

PROGRESS_INTERVAL = 10.0
# A stop during start-up waits this share of shutdown_timeout for it to finish, then the final
# checkpoint fits in the rest.
_START_UP_SHARE = 0.25
_AT_THE_END = frozenset({ReadStatus.CAUGHT_UP, ReadStatus.PARKED})  # not behind


def _exit_at_once(signum: int, first_untold: int | None = None) -> NoReturn:
    """A second stop signal: end the process now; the checkpoint on disk stays whole. The first
    one's `shutdown_requested` is said here when it came too close before to be logged."""
    code = 128 + signum
    lines: list[tuple[str, str, dict[str, Any]]] = []
    if first_untold is not None:
        lines.append(("shutdown_requested", "info", {"signal": signal_name(first_untold)}))
    lines.append(("worker_stopped", "info", {"exit_code": code, "reason": "second_signal"}))
    last_words(lines, code)


def _exit_at_next_signal(untold: Callable[[], int | None]) -> None:
    """From now on a stop signal ends the process at once; `untold()`: the first one, while its
    `shutdown_requested` is not logged yet."""

    def _exit_now(signum: int, _frame: FrameType | None) -> None:
        _exit_at_once(signum, untold())

    for signum in STOP_SIGNALS:
        signal.signal(signum, _exit_now)
    # Past the CPU-time limit the kernel sends SIGXCPU again each second: not a second stop.
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)


def _shutdown_deadline(seconds: float) -> ShutdownDeadline:
    """The process ends `seconds` after a stop begins, whatever it waits for; its last lines
    say so. The checkpoint on disk is whole at any instant."""
    message = (
        f"shutdown took longer than shutdown_timeout={seconds}s (a stalled disk, or a number "
        "of millions of digits in conversion?); exiting without the final checkpoint; the one "
        "on disk is whole"
    )
    stopped: dict[str, Any] = {"exit_code": 1, "reason": "shutdown_timeout"}
    lines = [("fatal_error", "error", {"message": message}), ("worker_stopped", "info", stopped)]
    return ShutdownDeadline(seconds, STOP_SIGNALS, rendered_last_words(lines, NOW), exit_code=1)


class _Worker:
    def __init__(self, settings: Settings, log: Logger, source: Source) -> None:
        self.settings = settings
        self.log = log
        self.source = source
        self.status_of: dict[Partition, ReadStatus] = {}  # the partitions being read
        self.behind = 0  # of them, those not caught up: no pass over thousands to tell
        self.moved = True  # something was consumed since the last `caught_up`
        self.first_reads = anyio.CapacityLimiter(settings.max_open_files)
        self.first_reads_held: set[Partition] = set()
        self.unstarted = 0  # partitions found, waiting for a turn to start reading
        self.failure: WorkerError | None = None
        self.stop_signal: int | None = None
        self.stop_told = False  # its `shutdown_requested` is written
        self.signals_ignored: set[int] = set()  # each said once
        self.listening = True  # for stop signals: until the run ends by itself
        self.output_closed = False
        self.acquired = False  # the source holds its files (lock, heartbeat)
        self.beating = anyio.Lock()
        self.started = False  # the source holds the state to resume from
        self.completed = False
        self.caught_up_at: Position | None = None
        # Watching from now on: a stop signal starts its countdown the instant it arrives.
        self.deadline = _shutdown_deadline(settings.shutdown_timeout)
        # A stalled log reader gets a quarter of it at most; the final checkpoint, the rest.
        limit_reader_grace(settings.shutdown_timeout / 4)
        self.pacer = Pacer(settings.max_rate)
        self.records_read = 0  # by this process: the progress rate's measure, never falling
        self.rate = RateMeter(0, 0.0)
        self.scope = anyio.CancelScope()  # the whole run's, once it runs
        self.telemetry = telemetry_for(settings)  # metrics endpoint, progress line, or nothing

    # --- start up -----------------------------------------------------------------------------

    async def run(self, early_signals: list[int]) -> None:
        async with anyio.create_task_group() as tasks:
            self.scope = tasks.cancel_scope
            # Listen first, so a signal during start-up is a graceful stop too.
            await tasks.start(self._listen_for_signals, tasks.cancel_scope, early_signals)
            # An input out of reach for too long (a broker outage) ends the run, at start-up too.
            watch = lambda: self.source.watch(self.telemetry.reachable)  # noqa: E731
            tasks.start_soon(self._guarded, watch, tasks.cancel_scope)
            tasks.start_soon(self._guarded, self._beat_while_starting, tasks.cancel_scope)
            partitions: list[Partition] = []

            async def start() -> None:
                require_descriptors()
                self.source.acquire()
                self.acquired = True
                require_directory_of(self.settings.result)
                self.telemetry.open(self.log)  # /readyz says 503 until start-up is done
                partitions.extend(await self.source.start())
                # What start-up built (a partition per file, thousands maybe) lives as long as
                # the run: the collector skips it, so a full collection does not stall the loop.
                gc.freeze()
                self.rate = RateMeter(0, anyio.current_time())
                self.started = True
                for partition in partitions:
                    self._report_position(partition)
                self.telemetry.ready()

            await self._guarded(start, tasks.cancel_scope)
            if self.failure is None and not self.output_closed and self.stop_signal is None:
                tasks.start_soon(self._guarded, self._run_timer, tasks.cancel_scope)
                await self._guarded(lambda: self._read_all(partitions), tasks.cancel_scope)
            tasks.cancel_scope.cancel()

    async def _beat_while_starting(self) -> None:
        """Start-up may wait long (for a broker): the loop turns meanwhile, and says so, to
        `/healthz` and, once the source holds its files, to `healthcheck`."""
        while not self.started:
            self.telemetry.loop_alive()
            if self.acquired:
                await self._heartbeat()
            await anyio.sleep(HEARTBEAT_INTERVAL)

    async def _heartbeat(self) -> None:
        """One heartbeat at a time: the start-up beat's may still be in its thread when the
        timer's first one starts, and two would both make a removed lock file again."""
        async with self.beating:
            await anyio.to_thread.run_sync(self.source.heartbeat)

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

    async def _listen_for_signals(
        self,
        scope: anyio.CancelScope,
        early_signals: list[int],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        # Plain handlers, handed from one to the next by `signal.signal`, which swaps them in one
        # step. The loop's own signal handling would set the default action back when it stops
        # listening, and a stop signal in that instant would kill the process.
        loop = asyncio.get_running_loop()

        signals_received: list[int] = []

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if signals_received and self.listening:
                # A second one while the loop has not yet taken the first in (it may be stuck
                # writing a log line to a reader that does not read): exit now, not after it.
                _exit_at_once(signum, None if self.stop_told else signals_received[0])
            signals_received.append(signum)
            stop_waiting_for_reader()  # the loop may be the one waiting, in a log write
            loop.call_soon_threadsafe(self._request_shutdown, signum, scope)

        def on_ignored_signal(signum: int, _frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self._say_ignored, signum)

        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, on_signal)
        for ignored in IGNORED_SIGNALS:
            signal.signal(ignored, on_ignored_signal)
        try:
            task_status.started()
            # Arrived before this listener took over: the first stops, a second exits at once.
            for signum in early_signals:
                self._request_shutdown(signum, scope)
            if not early_signals:
                await anyio.sleep_forever()
        finally:
            for ignored in IGNORED_SIGNALS:  # the loop may be closed when the next one comes
                signal.signal(ignored, signal.SIG_IGN)
            if self.stop_signal is None:
                self.listening = False  # a signal already on its way to the loop changes nothing
                self.ignore_late_signals()

    def _say_ignored(self, signum: int) -> None:
        if signum not in self.signals_ignored:
            self.signals_ignored.add(signum)
            self.log.warning(
                "signal_ignored",
                signal=signal_name(signum),
                message="the worker goes on reading; stop it with SIGTERM, SIGINT or SIGHUP",
            )

    def ignore_late_signals(self) -> None:
        """The run already ended (completed, failed, stdout closed): its outcome is decided and
        its final checkpoint under way, so a stop signal now only bounds the shutdown."""

        def bound(_signum: int, _frame: FrameType | None) -> None:
            with contextlib.suppress(RuntimeError):  # no new thread during interpreter teardown
                self._bound_shutdown()

        for signum in STOP_SIGNALS:
            signal.signal(signum, bound)

    def _request_shutdown(self, signum: int, scope: anyio.CancelScope) -> None:
        if not self.listening:
            return
        if self.stop_signal is not None:  # a second one, before the first was taken in
            _exit_at_once(signum)
        self.stop_signal = signum
        _exit_at_next_signal(lambda: None if self.stop_told else signum)
        self._bound_shutdown()
        # A second signal before this line is written says it in its last words.
        self.log.info("shutdown_requested", signal=signal_name(signum))
        self.stop_told = True
        if self.started:
            scope.cancel()
            return
        # During start-up: let it finish, so the stop saves its final checkpoint as any stop
        # does; unless it waits long (for a broker): then it ends, the checkpoint as it was.
        grace = self.settings.shutdown_timeout * _START_UP_SHARE
        asyncio.get_running_loop().call_later(grace, self._end_start_up, scope)

    def _end_start_up(self, scope: anyio.CancelScope) -> None:
        if not self.started:
            scope.cancel()

    def stop_for_closed_output(self) -> None:
        """Stdout's reader went away (`run | head`): stop as on SIGTERM, once start-up has
        finished, so the final checkpoint is saved; nobody sees the log any more."""
        if self.output_closed or self.stop_signal is not None:
            return
        self.output_closed = True
        self.log.info("shutdown_requested", reason="stdout_closed")
        if self.started:
            self._bound_shutdown()
            self.scope.cancel()

    def _bound_shutdown(self) -> None:
        self.deadline.begin()

    # --- run ----------------------------------------------------------------------------------

    async def _read_all(self, partitions: list[Partition]) -> None:
        """Read every partition; following, look for new ones every poll_interval."""
        async with anyio.create_task_group() as readers:
            readers.start_soon(self._start_reading, readers, partitions)
            while self.settings.follow:
                await anyio.sleep(self.settings.poll_interval)
                found = await self.source.discover()
                readers.start_soon(self._start_reading, readers, found)
        await self._complete()

    async def _start_reading(
        self, readers: anyio.abc.TaskGroup, partitions: list[Partition]
    ) -> None:
        """A reader task per partition, at most `max_open_files` in their first read at once:
        a task waiting for its turn costs kilobytes, a partition waiting in a list does not."""
        self.unstarted += len(partitions)
        for partition in partitions:
            await self.first_reads.acquire_on_behalf_of(partition)
            self.unstarted -= 1
            self._set_status(partition, ReadStatus.READING)
            reading = functools.partial(self._read_partition, partition)
            readers.start_soon(self._guarded, reading, self.scope)

    def _first_read_done(self, partition: Partition) -> None:
        if partition in self.first_reads_held:
            self.first_reads_held.discard(partition)
            self.first_reads.release_on_behalf_of(partition)

    async def _read_partition(self, partition: Partition) -> None:
        """Ask one partition for batches until it is done or closed."""
        self.first_reads_held.add(partition)
        try:
            await self._ask_until_done(partition)
        finally:
            self._first_read_done(partition)

    async def _ask_until_done(self, partition: Partition) -> None:
        while True:
            before = partition.position
            step = await partition.next_batch()
            consumed = step.consumed or partition.position.since(before)
            self._count(partition, consumed)
            self._report(partition, step.parsed)
            self._set_status(partition, step.status)
            # Paced on what was read, never on totals that arrived with a partition.
            delay = self.pacer.delay_after(max(0, consumed.records), anyio.current_time())
            if delay > 0:
                await anyio.sleep(delay)
            if step.status in (ReadStatus.DONE, ReadStatus.CLOSED):
                await partition.close()
                if step.status is ReadStatus.CLOSED:
                    # Its series goes before the source logs `file_removed`: a scrape after that
                    # line never shows it.
                    self.telemetry.partition_gone(partition)
                self.source.retire(partition)
                self._set_status(partition, None)
                await self._catch_up()
                return
            if step.status is ReadStatus.CAUGHT_UP:
                self._first_read_done(partition)  # a followed partition waits cheaply now
                await self._catch_up()
                await anyio.sleep(self.settings.poll_interval)
            if step.status is ReadStatus.PARKED:
                self._first_read_done(partition)
                await self._catch_up()
                self.source.park(partition)  # no await after it: handed back once this ends
                return

    def _set_status(self, partition: Partition, progress: ReadStatus | None) -> None:
        """Where a partition being read stands (None: no longer read), counting those behind."""
        was = self.status_of.pop(partition, ReadStatus.CAUGHT_UP)
        self.behind -= was not in _AT_THE_END
        if progress is not None:
            self.status_of[partition] = progress
            self.behind += progress not in _AT_THE_END

    def _count(self, partition: Partition, consumed: Position) -> None:
        """Tell telemetry what one batch consumed (never less than nothing) and where it stands."""
        self.moved = self.moved or consumed != Position()
        self.records_read += max(0, consumed.records)
        self.telemetry.consumed(
            max(0, consumed.records), max(0, consumed.bad_records), max(0, consumed.offset)
        )
        self._report_position(partition)

    def _report_position(self, partition: Partition) -> None:
        self.telemetry.partition_gauges(partition, partition.gauges())

    def _report(self, partition: Partition, batch: Parsed) -> None:
        """Log the bad records a batch shows (its source keeps the run's `DetailBudget`); stop
        at a failing one."""
        path = partition.label
        for bad in batch.bad:
            self.log.warning(
                "bad_record", path=path, line=bad.line, offset=bad.offset, reason=bad.reason
            )
        if batch.failed is not None:
            bad = batch.failed
            raise BadRecordFound(
                f"bad record at line {bad.line} (offset {bad.offset}) of {path}: "
                f"{bad.reason.replace('_', ' ')}; on_bad_record=fail stops here"
            )

    async def _catch_up(self) -> None:
        """Following, when every partition is at its end: the result, and `caught_up`."""
        if not self.settings.follow or not self.status_of or self.unstarted or self.behind:
            return
        if not self.moved:
            return  # every partition polls while caught up: no pass over the totals each time
        self.moved = False
        total = self.source.totals()
        if total == self.caught_up_at:
            return
        self.caught_up_at = total
        await self._write_result()
        self.log.info("caught_up", offset=total.offset, records=total.records, sum=total.sum)

    async def _complete(self) -> None:
        total = self.source.totals()
        with anyio.CancelScope(shield=True):  # a stop now must not undo the completion
            await self._save("completed", completed=True)
            await self._write_result()
            self.completed = True
        self._log_progress()
        self.log.info(
            "completed", sum=total.sum, records=total.records, bad_records=total.bad_records
        )

    async def _write_result(self) -> None:
        await anyio.to_thread.run_sync(write_json, self.settings.result, self.source.report())

    async def _run_timer(self) -> None:
        now = anyio.current_time()
        checkpoints = Periodic(self.settings.checkpoint_interval, now)
        heartbeats = Periodic(HEARTBEAT_INTERVAL, now)
        progress = Periodic(PROGRESS_INTERVAL, now)
        # A first beat at once: `healthcheck` finds a worker healthy as soon as it has started.
        await self._heartbeat()
        while True:
            next_due = min(checkpoints.next_due, heartbeats.next_due, progress.next_due)
            await anyio.sleep(max(0.0, next_due - anyio.current_time()))
            now = anyio.current_time()
            if heartbeats.due(now):
                self.telemetry.loop_alive()
                self.telemetry.standing(self.source.standing())
                for partition in list(self.status_of):
                    self._report_position(partition)
                await self._heartbeat()
            if checkpoints.due(now) and self.source.changed_since_save():
                await self._save("timer")
            if progress.due(now):
                self._log_progress()

    async def _save(self, reason: str, *, completed: bool = False) -> None:
        started = anyio.current_time()
        if await self.source.save(reason, completed=completed):
            self.telemetry.checkpoint_saved(reason, anyio.current_time() - started)

    def _log_progress(self) -> None:
        total = self.source.totals()
        size = self.source.input_size()
        self.log.info(
            "progress",
            offset=total.offset,
            records=total.records,
            bad_records=total.bad_records,
            percent=round(percent_done(total.offset, size), 2),
            rate=round(self.rate.rate(self.records_read, anyio.current_time()), 1),
            partitions=sum(len(partition.gauges()) for partition in self.status_of),
        )

    # --- shut down ----------------------------------------------------------------------------

    async def shut_down(self) -> tuple[int, str]:
        """The final checkpoint and the exit code; called once, whatever happened before."""
        code, reason = (0, "completed") if self.completed else (0, "shutdown")
        if self.failure is not None:
            code, reason = self.failure.exit_code, "error"
        # 1. The final checkpoint, unless start-up did not finish, the completion write already
        #    happened, or the failure makes the state meaningless.
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
        # 2. Stop serving metrics and take the progress line off the terminal, then the one
        #    error line, then release the partitions and the lock.
        self.telemetry.close()
        if isinstance(self.failure, UnexpectedError):
            self.log.error("fatal_error", message=self.failure.message, exc_info=self.failure.cause)
        elif self.failure is not None:
            self.log.error("fatal_error", message=self.failure.message)
        with anyio.CancelScope(shield=True):
            await self.source.close()
        return code, reason


class _UnwaitedExecutor(ThreadPoolExecutor):
    """The loop's default executor, where asyncio looks names up (`getaddrinfo`). When the loop
    closes it is not waited for: a broker's name that DNS does not answer holds a thread for
    about 10 s, and by then the run has ended, its last line written; the process exits
    without it (`cli.console`)."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)


def _source_for(settings: Settings, log: Logger) -> Source:
    if settings.source == "kafka":
        from service.sources.kafka.source import KafkaSource

        return KafkaSource(settings, log)
    from service.sources.files.source import FileSource

    return FileSource(settings, log)


async def run_worker(settings: Settings, log: Logger, early_signals: list[int]) -> int:
    """Run the worker to completion or shutdown; return the process exit code.

    `early_signals` are stop signals received before the worker could listen for them.
    """
    _kernel.reuse_freed_memory()  # each chunk reuses the last one's pages instead of new ones
    settings = reserve_descriptors(settings, log)
    source = _source_for(settings, log)
    worker = _Worker(settings, log, source)
    # The collector was off while the modules were imported (`cli.console`): what that built
    # lives as long as the process, set aside so that no pass goes over it.
    gc.freeze()
    gc.enable()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(_UnwaitedExecutor())

    def output_closed() -> None:  # from whichever thread logged
        with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over anyway
            loop.call_soon_threadsafe(worker.stop_for_closed_output)

    on_output_closed(output_closed)
    log.info(
        "worker_started",
        input=source.describe(),
        checkpoint=shown(str(settings.checkpoint)),
        pid=os.getpid(),
        version=__version__,
        follow=settings.follow,
    )
    _say_unknown_variables(log)
    try:
        await worker.run(early_signals)
    finally:
        code, reason = await worker.shut_down()
        on_output_closed(None)  # the loop closes next; the last line may go nowhere
    counters = asdict(source.totals()) if worker.started else {}
    worker.ignore_late_signals()  # the exit code is decided: a signal now cannot change it
    log.info("worker_stopped", exit_code=code, reason=reason, **counters)
    return code


def _say_unknown_variables(log: Logger) -> None:
    """A misspelt `WORKER_*` variable leaves its setting at the default: say so, once each."""
    for variable, meant in unknown_worker_variables({field.name for field in setting_fields()}):
        hint = f"; did you mean {meant}?" if meant else ""
        log.warning(
            "variable_ignored",
            variable=shown(variable),
            message=f"{shown(variable)} names no setting and is ignored{hint}",
            **({"did_you_mean": meant} if meant else {}),
        )
