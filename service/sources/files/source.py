"""The file source: finds the input's files, keeps each by identity, saves them all together.

Rule 1: a file is a partition keyed by (device, inode) while the worker runs, so a rename keeps
        its position (`file_rotated`). Across restarts a saved file is found again by its inode,
        its generation where known, and its first bytes (read through the very inode the scan
        found, so a rotation in that instant is looked at again, never read twice); one not
        found under any pattern is kept closed, as in rule 2, so it is never read twice if it
        is back, where its generation tells it from a new file given its inode number (else
        its counts are folded into `gone` at once).
Rule 2: following, the patterns are scanned every `poll_interval`: a new file starts at 0
        (`file_discovered`); one renamed out of every pattern is read until it has not grown for
        `close_inactive`, then closed and kept, closed, so it is never read twice (for
        `forget_closed_after`, then folded into `gone`: `file_forgotten`); one deleted is
        finished through its open descriptor and folded into `gone` (`file_removed`).
Rule 3: a save takes every file's state in one step of the event loop (one instant), then
        writes them in one atomic checkpoint; the lock beside it doubles as the heartbeat.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import anyio

from service.core.names import shown
from service.core.parsing import DetailBudget
from service.core.position import Position
from service.errors import InputUnreadable, UsageError
from service.lifecycle.partition import Partition, Reachable, Standing
from service.settings import Settings
from service.sources.files.changes import Change, classify_scan
from service.sources.files.life import REOPENED_BY_NAME, State
from service.sources.files.partition import (
    CHUNK_BYTES,
    READS_AT_ONCE,
    FilePartition,
    FileSlots,
    Shared,
    say_input_changed,
)
from service.sources.files.reading import ChunkBuffers
from service.sources.files.scan import (
    FileKey,
    FilesBeside,
    InputPatterns,
    Match,
    ScanNotes,
    identity_of,
    log_files,
)
from service.storage.atomic import open_regular_file, remove_left_temp_files
from service.storage.checkpoint import (
    IDENTITY_WINDOW,
    Checkpoint,
    CheckpointStore,
    FileState,
    generation_of,
    require_regular_file,
    same_generation,
    total_of,
)
from service.storage.lock import WorkerLock, lock_path_for
from service.telemetry.logs import Logger

__all__ = [
    "FileSource",
    "Pairing",
    "file_entry",
    "input_patterns",
    "match_saved_files",
    "saved_state_of_plain_path",
]

READY_RECHECK_INTERVAL = 0.2  # seconds between looks at whether any input file is there
_LOOK_AGAIN_DELAY = 0.05  # seconds between the scans that must all miss a gone file
_LOOKS_WHILE_MOVING = 5  # scans at most while files move under the start-up scan


def input_patterns(settings: Settings) -> InputPatterns:
    return InputPatterns.of(
        settings.input, settings.exclude, checkpoint=settings.checkpoint, result=settings.result
    )


class _Moved(Exception):
    """The file a scan found under a name is no longer under it: ask again at the next scan."""


def _looks_like(match: Match, state: FileState) -> tuple[bool, bool | None]:
    """Whether the file found as `match` starts with the bytes `state` consumed first, and
    whether it has the generation `state` saved (None when either does not know one); blocking.

    Raises `_Moved` when the name no longer holds that file (renamed since the scan), so a
    rename in that instant is never taken for a file that does not start the same.
    """
    if state.identity is None:
        return True, None  # nothing consumed: nothing to read twice or to miss
    try:
        fd = os.open(match.path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _Moved from None
    except OSError:
        return False, None
    try:
        if os.fstat(fd).st_ino != match.inode:
            raise _Moved
        head = os.pread(fd, min(state.position.offset, IDENTITY_WINDOW), 0)
        generation = generation_of(fd)
    except OSError:
        return False, None
    finally:
        os.close(fd)
    same = same_generation(state.generation, generation)
    return hashlib.sha256(head).hexdigest() == state.identity.head_sha256, same


class Pairing:
    """Saved states paired with the files a scan found (`match_saved_files`)."""

    def __init__(self) -> None:
        self.resumed: list[tuple[FileKey, Match, FileState]] = []
        self.gone: list[FileState] = []  # no file found is theirs
        self.new: dict[FileKey, Match] = {}  # no saved state is theirs
        self.moving: set[FileKey] = set()  # renamed while checked: neither, yet


def saved_state_of_plain_path(saved: tuple[FileState, ...], path: str) -> FileState | None:
    """The state a plain path resumes from: the one saved under its name, else the first saved
    (a checkpoint written before the file was renamed or the setting reworded)."""
    return next((s for s in saved if s.path == path), saved[0] if saved else None)


def match_saved_files(saved: Iterable[FileState], found: dict[FileKey, Match]) -> Pairing:
    """Pair saved states with the files found now (blocking; near-linear, by index).

    A state of format 1 has no inode and is found by its path; any other by its inode, its
    generation where both are known, and its first bytes, the same path first, so a reused inode
    or a remount is never confused. A file of the state's inode and generation whose first bytes
    differ is paired too (without generations, only under the state's own name): rewritten
    (`>`), it is `input_changed` at its first look, not a new file.
    """
    unclaimed = dict(found)
    by_inode: dict[int, list[FileKey]] = {}
    by_path: dict[str, list[FileKey]] = {}
    for key, match in found.items():
        by_inode.setdefault(match.inode, []).append(key)
        by_path.setdefault(match.path, []).append(key)
    pairing = Pairing()
    # A state known only by its path goes last: it never takes a file that a state known by
    # its inode is there for.
    for state in sorted(saved, key=lambda s: s.inode is None):
        if state.inode is None:
            candidates = [k for k in by_path.get(state.path, ()) if k in unclaimed]
        else:
            same_inode = sorted(
                (k for k in by_inode.get(state.inode, ()) if k in unclaimed),
                key=lambda k: unclaimed[k].path != state.path,
            )
            candidates, rewritten, unsure = [], [], []
            for key in same_inode:
                try:
                    head_matches, generation_matches = _looks_like(unclaimed[key], state)
                except _Moved:
                    pairing.moving.add(key)
                    continue
                if generation_matches is False or (
                    state.closed and state.generation is not None and not generation_matches
                ):
                    # The inode number was used again: another file. A closed file, kept
                    # for when it comes back, is only ever known again by its generation.
                    continue
                if head_matches:
                    candidates.append(key)
                elif generation_matches:
                    rewritten.append(key)
                else:
                    unsure.append(key)
            if not candidates:
                # The same file that no longer starts the same: rewritten while the worker was
                # stopped, and renamed maybe. Resumed, its first look says so. Without a
                # generation to tell, only the one under the state's own name is taken for it.
                candidates = rewritten or [k for k in unsure if unclaimed[k].path == state.path][:1]
        if candidates:
            key = candidates[0]
            pairing.resumed.append((key, unclaimed.pop(key), state))
        else:
            pairing.gone.append(state)
    pairing.new = {k: m for k, m in unclaimed.items() if k not in pairing.moving}
    return pairing


def refuse_shared_files(
    settings: Settings, plain_input: Path | None, input_named: str = "input"
) -> None:
    """The checkpoint, its lock, the result and a plain input path are four files: a path that
    names two of them (by itself, a link or a linked directory) would have the worker write
    over its own input or state. That is a usage error, found before anything is written.
    `input_named`: what the input path is called where it was given (`--output`)."""
    named = [
        ("checkpoint", settings.checkpoint),
        ("result", settings.result),
        ("the checkpoint's lock", lock_path_for(settings.checkpoint)),
    ]
    if plain_input is not None:
        named.append((input_named, plain_input))
    # Each path's file once: where its links lead, and what it is if it exists already.
    files = [(what, path, os.path.realpath(path), identity_of(str(path))) for what, path in named]
    for index, (what, _path, real, identity) in enumerate(files):
        for other, other_path, other_real, other_identity in files[index + 1 :]:
            if real == other_real or (identity is not None and identity == other_identity):
                raise UsageError(
                    f"{what} and {other} are the same file ({shown(str(other_path))}): "
                    "give each its own path"
                )
    if plain_input is None:
        _refuse_input_files_as_state(settings)


def _refuse_input_files_as_state(settings: Settings) -> None:
    """A glob's files exclude the checkpoint and the result by name, so a file of numbers that
    a pattern matches, named as either, would be overwritten (or, by `reset`, deleted). One
    that holds no JSON object, as every checkpoint and result does, is such a file."""
    patterns: InputPatterns | None = None
    for what, path in (("checkpoint", settings.checkpoint), ("result", settings.result)):
        identity = identity_of(str(path))
        if identity is None or not _holds_data(path):
            continue
        patterns = patterns or InputPatterns(settings.input, settings.exclude)  # none excluded
        if identity in patterns.scan():
            raise UsageError(
                f"{what} {shown(str(path))} is a file of the input ({patterns.describe()}) and "
                f"holds no {what}: give the {what} a path of its own"
            )


def _holds_data(path: Path) -> bool:
    """Whether `path` is a regular file whose first bytes are not a JSON object's (`{`)."""
    try:
        fd, _ = open_regular_file(path)
    except OSError:
        return False
    try:
        head = os.read(fd, 64).lstrip()
    except OSError:
        return False
    finally:
        os.close(fd)
    return bool(head) and not head.startswith(b"{")


class FileSource:
    """The files of the `input` setting, as partitions, and the checkpoint file they share."""

    def __init__(self, settings: Settings, log: Logger) -> None:
        self.settings = settings
        self.log = log
        self.patterns = input_patterns(settings)
        self.store = CheckpointStore(settings.checkpoint)
        self.lock = WorkerLock(settings.checkpoint)
        self.shared = Shared(
            slots=FileSlots(settings.max_open_files),
            reading=ChunkBuffers(READS_AT_ONCE, CHUNK_BYTES),
            details=DetailBudget(),
        )
        # Dicts for their order and their O(1) removal, however many files there are.
        self.active: dict[FilePartition, None] = {}  # being read, waiting for a slot, or done
        self.dormant: dict[FileState, float] = {}  # renamed out of every pattern: closed at
        self.parked: dict[FilePartition, None] = {}  # caught up, no task: news hands them back
        self.states: dict[FilePartition, FileState] = {}  # each active one's, in their order
        self.gone = Position()  # what files that no longer exist added up to
        self.saved: tuple[tuple[FileState, ...], Position] | None = None
        self.saved_records = 0  # the records the checkpoint on disk holds
        self.saving = anyio.Lock()
        self.waiting_logged = False
        self.loop_logged = False
        self.unreadable_logged: set[str] = set()  # directories said to be unreadable this run
        self.started = False

    def describe(self) -> str:
        return self.patterns.describe()

    # --- start up -----------------------------------------------------------------------------

    def acquire(self) -> None:
        plain = self.patterns.plain_path
        refuse_shared_files(self.settings, plain)
        if plain is not None and identity_of(str(plain)) in log_files():
            raise UsageError(
                f"input {shown(str(plain))} is where the log lines go (stdout or stderr): "
                "each would be read back as a bad record; give the output its own file"
            )
        require_regular_file(self.settings.checkpoint)  # before its lock is made beside it
        self.lock.acquire()

    async def start(self) -> list[Partition]:
        for written in (self.settings.checkpoint, self.settings.result):
            remove_left_temp_files(written)  # an interrupted write's; the real file is intact
        checkpoint = await anyio.to_thread.run_sync(self.store.load)
        if checkpoint is None:
            self.log.info("checkpoint_not_found", checkpoint=shown(str(self.settings.checkpoint)))
            saved: tuple[FileState, ...] = ()
        else:
            self.log.info(
                "checkpoint_loaded", **asdict(checkpoint.position), completed=checkpoint.completed
            )
            saved, self.gone = checkpoint.files, checkpoint.gone
            self.saved_records = checkpoint.position.records
        plain = self.patterns.plain_path
        if plain is not None:
            partitions: list[Partition] = [await self._start_plain(str(plain), saved)]
        else:
            partitions = await self._start_patterns(saved)
        self.started = True
        return partitions

    async def _start_plain(self, path: str, saved: tuple[FileState, ...]) -> FilePartition:
        """One plain path: the file at that path, checked against the checkpoint, opened now.
        A checkpoint that holds other files too (a glob's, or one the library added a file to)
        does not describe this input: its totals would count them (`input_changed`)."""
        resume = saved_state_of_plain_path(saved, path)
        if len(saved) > 1 or self.gone != Position():
            self._other_files_saved(path, len(saved), self.gone != Position())
            resume, self.gone = None, Position()
        partition = FilePartition(
            path, self.settings, self.log, self.shared, resume=resume, plain=True
        )
        self.active[partition] = None
        self.states[partition] = partition.snapshot()
        await partition.open_now()
        return partition

    def _other_files_saved(self, path: str, count: int, gone: bool) -> None:
        """Log the change; raise under `fail`; under `restart` the input is read from 0."""
        files = f"{count} file{'s' if count != 1 else ''}" + (
            " and of files now gone" if gone else ""
        )
        message = (
            f"checkpoint {shown(str(self.settings.checkpoint))} holds the state of {files}, "
            f"not of the one input file {shown(path)} alone"
        )
        say_input_changed(self.log, self.settings, shown(path), "other_files", message)

    async def _start_patterns(self, saved: tuple[FileState, ...]) -> list[Partition]:
        pairing = await self._pair_at_start(saved)
        for state in pairing.gone:
            if state.generation is not None:
                # Renamed out of every pattern while the worker was stopped, or deleted: kept
                # closed, as a file renamed out while it runs is, so it is never read twice if
                # it comes back, which its generation tells from a new file given its inode.
                self._keep_closed(state)
            else:
                # Without a generation a new file given its inode number could pass for it.
                self._fold(state.position)
            if not state.closed:
                self.log.info(
                    "file_removed",
                    path=shown(state.path),
                    reason="missing",
                    **asdict(state.position),
                )
        self._forget_closed()
        partitions = self._adopt(pairing.resumed, pairing.new)
        if not self.active:
            if not self.settings.follow:
                raise InputUnreadable(f"no file matches the input {self.describe()}")
            self._log_waiting()
        return partitions

    async def _pair_at_start(self, saved: tuple[FileState, ...]) -> Pairing:
        """Pair the saved states with the files here, looking again while any seem to move.

        A rename between a scan's listing and its look at a file hides the file from that scan,
        or shows another file under its old name; folding its state then would read it again
        from 0. Another look tells a file that is gone from one that was moving.
        """
        scanned = await self._scan()
        pairing = await anyio.to_thread.run_sync(match_saved_files, saved, scanned)
        looks = 1
        while (pairing.gone and looks == 1) or (pairing.moving and looks < _LOOKS_WHILE_MOVING):
            await anyio.sleep(_LOOK_AGAIN_DELAY)
            scanned = await self._scan()
            claimed = {key for key, _match, _state in pairing.resumed} | set(pairing.new)
            unclaimed = {k: m for k, m in scanned.items() if k not in claimed}
            later = await anyio.to_thread.run_sync(match_saved_files, pairing.gone, unclaimed)
            pairing.resumed += later.resumed
            pairing.gone, pairing.moving = later.gone, later.moving
            pairing.new |= later.new
            looks += 1
        for key in pairing.moving:  # still moving: read from 0 rather than never
            pairing.new[key] = scanned[key]
        return pairing

    def _adopt(
        self, resumed: list[tuple[FileKey, Match, FileState]], new: dict[FileKey, Match]
    ) -> list[Partition]:
        """Partitions for saved files found again (under a new name, maybe) and for new ones."""
        partitions: list[Partition] = []
        for key, match, state in resumed:
            if match.path != state.path:
                self.log.info("file_rotated", path=shown(match.path), old_path=shown(state.path))
            partitions.append(self._add(match, key, replace_closed(state)))
        for key, match in new.items():
            self.log.info("file_discovered", path=shown(match.path), size=match.size)
            partitions.append(self._add(match, key, None))
        return partitions

    async def _scan(self) -> dict[FileKey, Match]:
        """The files of the input now, off the event loop; a `**` loop is said once a run, and
        a directory that cannot be listed once a run for each."""
        notes = ScanNotes()
        found = await anyio.to_thread.run_sync(self.patterns.scan, notes)
        if notes.loops and not self.loop_logged:
            self.loop_logged = True
            self.log.warning(
                "directory_loop",
                path=shown(notes.loops[0]),
                message="a directory reached again through a symbolic link is walked once",
            )
        for directory, reason in notes.unreadable.items():
            if directory not in self.unreadable_logged:
                self.unreadable_logged.add(directory)
                self.log.warning(
                    "directory_unreadable",
                    path=shown(directory),
                    message=f"cannot list {shown(directory)}: {reason}; files in it are not read",
                )
        return found

    def _log_waiting(self) -> None:
        if not self.waiting_logged:
            self.waiting_logged = True
            self.log.info("waiting_for_files", input=self.describe())

    def _add(self, match: Match, key: FileKey, resume: FileState | None) -> FilePartition:
        partition = FilePartition(
            match.path, self.settings, self.log, self.shared, resume=resume, key=key
        )
        partition.size = match.size  # its lag, until it is opened and looked at again
        partition.changed_ns = match.changed_ns
        self.active[partition] = None
        self.states[partition] = partition.snapshot()
        return partition

    def _fold(self, position: Position) -> None:
        self.gone = total_of([self.gone, position])

    def _keep_closed(self, state: FileState) -> None:
        """A saved state that no file under a pattern has now, kept closed from when it was
        closed (so `forget_closed_after` counts across restarts), or from now."""
        now = time.time()
        closed_at = state.closed_at if state.closed and state.closed_at is not None else now
        closed = replace(state, closed=True, closed_at=closed_at)
        self.dormant[closed] = anyio.current_time() - max(0.0, now - closed_at)

    # --- following ----------------------------------------------------------------------------

    async def watch(self, reachable: Reachable) -> None:
        """Files are always within reach (a file that cannot be read is an error of its own),
        but following, no file may match yet, or none any more: not ready while none does."""
        while True:
            if self.started:
                present = any(p.state is not State.WAITING_FOR_FILE for p in self.active)
                reachable(present, "no input file to read (none matches yet, or none any more)")
            await anyio.sleep(READY_RECHECK_INTERVAL)

    async def discover(self) -> list[Partition]:
        if self.patterns.plain_path is not None:
            return []
        found = await self._scan()
        by_key = {p.key: p for p in self.active if p.key is not None}
        fresh = {key: match for key, match in found.items() if key not in by_key}
        woken: list[Partition] = []
        beside = FilesBeside()
        for key, partition in by_key.items():
            match = found.get(key)
            found_as = None if match is None else match.path
            change = classify_scan(partition.path, partition.in_patterns, found_as)
            if change is Change.RENAMED and found_as is not None:
                if found_as != partition.path:
                    self.log.info("file_rotated", path=shown(found_as), old_path=partition.label)
                partition.renamed_to(found_as)
            elif change is Change.RENAMED_OUT:
                # Open, it is read on through its descriptor; not open, only a name reopens it.
                aside = None
                if partition.state in REOPENED_BY_NAME:
                    aside = beside.name_of(partition.path, key)
                if aside is None:
                    partition.renamed_out()
                else:
                    partition.renamed_aside(aside)
            if partition in self.parked and partition.has_news(match):
                del self.parked[partition]
                woken.append(partition)
        # A file renamed while it is checked (`moving`) is neither: the next scan tells.
        self._forget_closed()
        pairing = await anyio.to_thread.run_sync(match_saved_files, list(self.dormant), fresh)
        for _key, _match, state in pairing.resumed:
            del self.dormant[state]
        partitions = woken + self._adopt(pairing.resumed, pairing.new)
        if not self.active:
            self._log_waiting()
        return partitions

    def _forget_closed(self) -> None:
        """Closed files kept longer than `forget_closed_after` are folded like deleted ones:
        the checkpoint stops growing, and such a file, back under a pattern, is read anew."""
        keep_for = self.settings.forget_closed_after
        if keep_for <= 0:
            return
        now = anyio.current_time()
        for state, closed_at in list(self.dormant.items()):
            if now - closed_at >= keep_for:
                del self.dormant[state]
                self._fold(state.position)
                self.log.info("file_forgotten", path=shown(state.path), **asdict(state.position))

    def park(self, partition: Partition) -> None:
        assert isinstance(partition, FilePartition)
        self.parked[partition] = None

    def retire(self, partition: Partition) -> None:
        assert isinstance(partition, FilePartition)
        if partition.state not in (State.CLOSED, State.DELETED):
            return  # done, not followed: its state stays as it is
        del self.active[partition]
        del self.states[partition]
        position = partition.position
        if partition.state is State.DELETED:
            self._fold(position)
            reason = "deleted"
        else:
            self.dormant[partition.snapshot(closed=True)] = anyio.current_time()
            reason = "inactive"
        self.log.info("file_removed", path=partition.label, reason=reason, **asdict(position))

    # --- state --------------------------------------------------------------------------------

    def totals(self) -> Position:
        return total_of(
            [self.gone, *(s.position for s in self.dormant), *(p.position for p in self.active)]
        )

    def input_size(self) -> int:
        """Bytes of every file as last seen (gone and closed ones count what was consumed)."""
        sizes = [p.size if p.size is not None else p.position.offset for p in self.active]
        return self.gone.offset + sum(s.position.offset for s in self.dormant) + sum(sizes)

    def _files(self) -> tuple[FileState, ...]:
        """Every file's state now: new snapshots only of the partitions touched since."""
        for partition in self.active:
            if partition.touched:
                partition.touched = False
                self.states[partition] = partition.snapshot()
        return tuple(self.states.values()) + tuple(self.dormant)

    def changed_since_save(self) -> bool:
        return (self._files(), self.gone) != self.saved

    def standing(self) -> Standing:
        return Standing(max(0, self.totals().records - self.saved_records))

    async def save(self, reason: str, *, completed: bool = False) -> bool:
        """Write every file's state of this instant, off the event loop, one save at a time."""
        async with self.saving:
            files, gone = self._files(), self.gone  # one instant: no await in between
            if reason == "timer" and (files, gone) == self.saved:
                # The save this one waited for (the completion one, say) already wrote this
                # state; writing it again would undo its flag.
                return False
            # Totals, encoding and writing all happen in a thread: their cost grows with files.
            total = await anyio.to_thread.run_sync(self._write, files, gone, completed)
            self.saved = (files, gone)
            self.saved_records = total.records
            self.log.info("checkpoint_saved", **asdict(total), reason=reason)
            return True

    def _write(self, files: tuple[FileState, ...], gone: Position, completed: bool) -> Position:
        """Save the checkpoint of these states (blocking); what they add up to."""
        total = total_of([gone, *(f.position for f in files)])
        self.store.save(Checkpoint(total, self.describe(), None, completed, files=files, gone=gone))
        return total

    def heartbeat(self) -> None:
        if self.lock.heartbeat():
            self.log.warning(
                "lock_file_remade",
                path=str(self.lock.path),
                message="the lock file was removed under this worker; it was made again",
            )

    def report(self) -> dict[str, Any]:
        total = self.totals()
        return {
            **asdict(total),
            "input": self.describe(),
            "files": [file_entry(p.path, p.position, p.size) for p in self.active],
        }

    async def close(self) -> None:
        for partition in self.active:
            await partition.close()
        self.lock.release()


def replace_closed(state: FileState) -> FileState:
    """A saved state to read on from: a closed file found under a pattern is open again."""
    return replace(state, closed=False, closed_at=None)


def file_entry(path: str, position: Position, size: int | None) -> dict[str, Any]:
    """One file as `result.json` and `status --json` list it."""
    return {
        "path": shown(path),
        "offset": position.offset,
        "size": size,
        "records": position.records,
        "bad_records": position.bad_records,
        "sum": position.sum,
    }
