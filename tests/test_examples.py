"""The seed's scripts in examples/, run as real processes the way their README says, killed at
random instants and run again; and the worker and the library resuming each other's checkpoints.
Every sum is compared with the oracle's."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service import load_checkpoint, number_stream
from service.errors import CheckpointOfSeveralFiles
from tests.oracle import expected_of, expected_of_file
from tests.processes import WorkerProcess, cli, events_of, unmeasured, worker_env
from tests.test_library import mixed_input

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RESUMING = ["generator_checkpoint.py", "async_checkpoint.py"]
KILLS = 4


class Script:
    """One example running in the background in `cwd`, its stdout read line by line."""

    def __init__(self, name: str, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / name)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def first_line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline()

    def kill(self) -> bool:
        """SIGKILL it; False if it had already ended of itself."""
        self.process.kill()
        code = self.process.wait(timeout=30)
        assert self.process.stdout is not None
        self.process.stdout.close()
        assert code in (0, -signal.SIGKILL)
        return code == -signal.SIGKILL


def run_to_end(name: str, cwd: Path) -> list[str]:
    """Run an example to its end; its output lines (untraced: coverage's tracer would slow
    the library's line-by-line loop several times over)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=cwd,
        env=unmeasured(worker_env()),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def starting_byte(line: str) -> int:
    """The offset in an example's first line, 'starting at byte N with the sum S'."""
    assert line.startswith("starting at byte "), line
    return int(line.split()[3])


def saved(cwd: Path) -> dict[str, Any]:
    loaded = json.loads((cwd / "checkpoint.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def assert_checkpoint_exact(cwd: Path, data: bytes) -> None:
    """The checkpoint's sum and counts are the oracle's for the bytes it says were consumed."""
    checkpoint = saved(cwd)
    offset = checkpoint["offset"]
    assert offset == len(data) or data[offset - 1 : offset] == b"\n", "not at a line start"
    prefix = expected_of(data[:offset])
    assert (checkpoint["sum"], checkpoint["lines"], checkpoint["records"]) == (
        prefix.sum,
        prefix.lines,
        prefix.records,
    )
    assert checkpoint["bad_records"] == prefix.bad_records


def stamp(path: Path) -> int | None:
    """When the file was last replaced (ns), None while there is none."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def wait_for_save(path: Path, before: int | None, timeout: float = 60) -> None:
    """Wait until `path` is saved anew (its stamp differs from `before`)."""
    deadline = time.monotonic() + timeout
    while stamp(path) in (before, None):
        assert time.monotonic() < deadline, f"no save of {path.name} within {timeout} s"
        time.sleep(0.01)


@pytest.fixture
def noisy(tmp_path: Path) -> bytes:
    """numbers.txt of four million lines (a few seconds of a script untraced, so a kill lands
    before its end): records, blanks, CRLFs, bad and over-long lines."""
    data = mixed_input(3, 4_000_000)
    (tmp_path / "numbers.txt").write_bytes(data)
    return data


@pytest.mark.slow
@pytest.mark.parametrize("name", RESUMING)
def test_an_example_killed_at_random_instants_ends_with_the_exact_sum(
    name: str, tmp_path: Path, noisy: bytes
) -> None:
    """SIGKILLs at random instants, then a run to the end: the last line is the oracle's sum,
    and every checkpoint left behind holds the exact sum and counts of its prefix."""
    rng = random.Random(name)
    killed = unmeasured(worker_env())  # a SIGKILL takes the coverage data with it: don't trace
    checkpoint = tmp_path / "checkpoint.json"
    for kill in range(KILLS):
        before = stamp(checkpoint)
        script = Script(name, tmp_path, killed)
        script.first_line()
        if kill == KILLS - 1:  # the last one after a save of its own, so the next run resumes
            wait_for_save(checkpoint, before)
        time.sleep(rng.uniform(0.0, 0.8))
        assert script.kill()
        if checkpoint.exists():
            assert_checkpoint_exact(tmp_path, noisy)
    lines = run_to_end(name, tmp_path)
    assert starting_byte(lines[0]) > 0
    assert lines[-1] == str(expected_of(noisy).sum)
    assert_checkpoint_exact(tmp_path, noisy)


@pytest.mark.slow
def test_generate_numbers_killed_at_random_instants_leaves_a_whole_file(tmp_path: Path) -> None:
    """numbers.txt is never torn by a SIGKILL, and the last line printed is its sum."""
    rng = random.Random(11)
    killed = unmeasured(worker_env())
    kills = 0
    for _ in range(KILLS):
        script = Script("generate_numbers.py", tmp_path, killed)
        time.sleep(rng.uniform(0.05, 0.5))
        kills += script.kill()
        if (tmp_path / "numbers.txt").exists():
            assert expected_of_file(str(tmp_path / "numbers.txt")).records == 1_000_000
    assert kills > 0
    lines = run_to_end("generate_numbers.py", tmp_path)
    expected = expected_of_file(str(tmp_path / "numbers.txt"))
    assert (expected.records, expected.bad_records) == (1_000_000, 0)
    assert lines[-1] == str(expected.sum)


@pytest.mark.parametrize("name", RESUMING)
def test_the_worker_resumes_what_an_example_saved(name: str, tmp_path: Path, noisy: bytes) -> None:
    """An example killed after a save, then the worker: the exact sum, counts and line numbers."""
    script = Script(name, tmp_path, unmeasured(worker_env()))
    script.first_line()
    wait_for_save(tmp_path / "checkpoint.json", None)
    assert script.kill()
    resumed_at = saved(tmp_path)
    done = cli(["run"], tmp_path)
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    loaded = next(e for e in events if e["event"] == "checkpoint_loaded")
    assert (loaded["offset"], loaded["sum"]) == (resumed_at["offset"], resumed_at["sum"])
    expected = expected_of(noisy)
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["sum"], result["records"], result["bad_records"], result["lines"]) == (
        expected.sum,
        expected.records,
        expected.bad_records,
        expected.lines,
    )
    bad_lines = [e["line"] for e in events if e["event"] == "bad_record"]
    after = [line for line in expected.bad_lines if line > resumed_at["lines"]]
    assert bad_lines == after[: len(bad_lines)]
    assert len(bad_lines) == min(100, len(after))


@pytest.mark.parametrize("name", RESUMING)
def test_an_example_resumes_what_the_worker_saved(name: str, tmp_path: Path, noisy: bytes) -> None:
    """The worker killed after a checkpoint, then an example: the exact sum and counts."""
    args = ["--max-rate", "300000", "--checkpoint-interval", "0.1"]
    worker = WorkerProcess(args, tmp_path, unmeasured(worker_env()))
    worker.wait_for("checkpoint_saved", offset=lambda offset: offset > 0)
    worker.kill()
    resumed_at = saved(tmp_path)["offset"]
    lines = run_to_end(name, tmp_path)
    assert starting_byte(lines[0]) == resumed_at
    assert lines[-1] == str(expected_of(noisy).sum)
    assert_checkpoint_exact(tmp_path, noisy)


@pytest.mark.parametrize("name", RESUMING)
def test_an_example_run_again_after_its_last_line_got_its_end(name: str, tmp_path: Path) -> None:
    """An example ends on "2" with no newline and counts it; the line's end comes later
    (nothing more, then a CRLF and more lines): each run again is exact, never an error."""
    numbers = tmp_path / "numbers.txt"
    numbers.write_bytes(b"1\n2")
    assert run_to_end(name, tmp_path)[-1] == "3"
    for more in (b"\n", b"3\r\n-1 \n"):
        with numbers.open("ab") as writer:
            writer.write(more)
        data = numbers.read_bytes()
        assert run_to_end(name, tmp_path)[-1] == str(expected_of(data).sum)
        assert_checkpoint_exact(tmp_path, data)
        assert saved(tmp_path)["offset"] == len(data)


def test_a_worker_checkpoint_of_several_files_is_resumed_file_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A glob's checkpoint needs the file named; each named file resumes to its exact sum."""
    (tmp_path / "data").mkdir()
    contents = {f"data/{n}.txt": mixed_input(seed, 30_000) for seed, n in enumerate("abc")}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    args = ["--input", "data/*.txt", "--max-rate", "20000", "--checkpoint-interval", "0.1"]
    worker = WorkerProcess(args, tmp_path, unmeasured(worker_env()))
    worker.wait_for("checkpoint_saved", records=lambda records: records > 10_000)
    worker.kill()
    monkeypatch.chdir(tmp_path)  # the worker saved the paths it matched, relative to here
    with pytest.raises(CheckpointOfSeveralFiles, match="holds the state of 3 files"):
        load_checkpoint()
    for name, data in contents.items():
        offset, running_sum = load_checkpoint(input=name)
        running_sum += sum(number for _, number in number_stream(name, offset))
        assert running_sum == expected_of(data).sum
